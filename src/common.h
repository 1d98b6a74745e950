// Shared pieces of the addon: the per-environment registry of native handles,
// type-tagged handle objects, errno-shaped errors and argument checks.
#pragma once

#include <napi.h>
#include <uv.h>
#include <xv_protocol.h>

#include <cerrno>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_set>

namespace xv {

// The highest ordinary domain id (xv_protocol.h).
constexpr uint32_t kMaxDomid = XV_MAX_DOMID;

class Handle;

// Every native handle of one environment (main thread or worker). Closed by
// the environment's cleanup hook, so a worker that exits with open handles
// releases them all. Shared with the handles, so it outlives the addon's
// instance data whatever order teardown runs in.
struct Registry {
  std::unordered_set<Handle*> live;
  bool tearing_down = false;
  int closing_pollers = 0;
  napi_async_cleanup_hook_handle cleanup = nullptr;
  void MaybeFinishCleanup();
};

// A native resource owned by a JS handle object. Close() is idempotent.
class Handle {
 public:
  Handle(std::shared_ptr<Registry> reg, const napi_type_tag* tag) : reg_(std::move(reg)), tag_(tag) {
    reg_->live.insert(this);
  }
  virtual ~Handle() { reg_->live.erase(this); }
  virtual void Close() = 0;
  bool closed() const { return closed_; }
  const napi_type_tag* tag() const { return tag_; }
  Registry& registry() { return *reg_; }
  std::shared_ptr<Registry> registry_ptr() { return reg_; }

 protected:
  bool closed_ = false;
  std::shared_ptr<Registry> reg_;
  const napi_type_tag* tag_;
};

// Wraps H into a new, type-tagged JS object whose finalizer closes and frees it.
Napi::Object WrapHandle(Napi::Env env, Handle* h);

// The handle of type T behind info[0], or a TypeError (ERR_INVALID_ARG_TYPE) for anything else,
// and an Error with code ERR_XEN_CLOSED if it was closed (unless allow_closed).
template <typename T>
T* Unwrap(const Napi::CallbackInfo& info, bool allow_closed = false);

// Errors shaped like Node's: .code, .errno (negative, as libuv's), .syscall.
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& detail = "");
// Why a Xen library could not be loaded (real backend: src/xenstore_loader.cc), or "". Errors with
// ELIBACC carry it.
std::string XenLibraryHint();
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall, const std::string& detail = "");
Napi::Error CodedError(Napi::Env env, const char* code, const std::string& msg, bool type_error = false,
                       bool range_error = false);

// Argument checks (TypeScript validates first; these keep C++ safe on its own).
uint32_t ArgUint32(const Napi::CallbackInfo& info, size_t i, const char* name, uint32_t max = UINT32_MAX);
Napi::Uint8Array ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* name);
// The bytes of a Uint8Array as they are NOW. Napi::TypedArray caches its pointer and length when it
// is made, so a buffer detached since (by a getter that ran in between) still looks alive through
// it; use this after any JS may have run. Detached: {nullptr, 0}.
struct Bytes {
  uint8_t* data;
  size_t length;
};
Bytes CurrentBytes(napi_env env, const Napi::Uint8Array& a);
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::Function ArgFunction(const Napi::CallbackInfo& info, size_t i, const char* name);

// A uv_poll_t on the environment's own loop (never the default loop), calling a
// JS function with the poll events. Freed only from libuv's close callback.
class Poller {
 public:
  Poller(Napi::Env env, int fd, Napi::Function cb, Registry* reg);
  ~Poller() = default;
  void Start(int events);  // UV_READABLE / UV_WRITABLE
  void SetCallback(Napi::Function cb);
  void Stop();
  void Ref(bool on);
  void Destroy();  // stops, closes and eventually frees this poller
  // Native work to do on each wake-up before JS is called (e.g. draining an event channel).
  std::function<void()> before;
  bool active() const { return active_; }
  uint64_t wakes() const { return wakes_; }  // callbacks run (diagnostics)

 private:
  static void OnPoll(uv_poll_t* p, int status, int events);
  // Raw N-API handles, released without throwing: Destroy() may run in a finalizer or the cleanup
  // hook of an environment that is going away, where a C++ exception would terminate the process.
  void ReleaseJs();
  uv_poll_t poll_;
  napi_env env_;
  napi_ref cb_ = nullptr;
  napi_async_context ctx_ = nullptr;
  Registry* reg_;
  bool active_ = false;
  bool referenced_ = true;
  bool init_ok_ = false;
  uint64_t wakes_ = 0;
};

// The body of every poll(handle, callback | null) function: info[1] null stops polling; a function
// starts it (creating the poller on FD the first time, and calling SETUP on it then).
Napi::Value PollArg(const Napi::CallbackInfo& info, Poller*& poller, int fd, Registry& reg,
                    const std::function<void(Poller*)>& setup = nullptr);

// Per-module registration helpers.
// DATA (the environment's registry) is passed to every function as its data pointer.
using RegistryPtr = std::shared_ptr<Registry>;
void InitEvtchn(Napi::Env env, Napi::Object exports, RegistryPtr* data);
void InitGrants(Napi::Env env, Napi::Object exports, RegistryPtr* data);
void InitXenstore(Napi::Env env, Napi::Object exports, RegistryPtr* data);
void InitVchan(Napi::Env env, Napi::Object exports, RegistryPtr* data);
// Mock addon only (src/mock.cc).
void InitMock(Napi::Env env, Napi::Object exports);

// Adds the functions to a new object named NAME on EXPORTS.
void ExportFunctions(Napi::Env env, Napi::Object exports, const char* name, RegistryPtr* data,
                     std::initializer_list<std::pair<const char*, Napi::Function::Callback>> fns);

// Per-function data: the registry, so functions can create handles.
inline std::shared_ptr<Registry> RegistryOf(const Napi::CallbackInfo& info) {
  return *static_cast<std::shared_ptr<Registry>*>(info.Data());
}

// Runs FN on the thread pool; resolves with CONVERT(result) or rejects with an errno error.
Napi::Value RunAsync(Napi::Env env, const char* syscall, std::function<int(std::string&)> fn,
                     std::function<Napi::Value(Napi::Env, const std::string&)> convert);

template <typename T>
T* Unwrap(const Napi::CallbackInfo& info, bool allow_closed) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) {
    throw CodedError(env, "ERR_INVALID_ARG_TYPE", "The handle argument must be a native xen-vchan handle", true);
  }
  napi_value obj = info[0];
  bool ok = false;
  napi_check_object_type_tag(env, obj, &T::kTag, &ok);
  if (!ok) {
    throw CodedError(env, "ERR_INVALID_ARG_TYPE", std::string("The handle argument must be a handle of type ") + T::kName,
                     true);
  }
  void* p = nullptr;
  napi_unwrap(env, obj, &p);
  T* h = static_cast<T*>(p);
  if (!h || (!allow_closed && h->closed())) {
    throw CodedError(env, "ERR_XEN_CLOSED", std::string("The ") + T::kName + " handle is closed");
  }
  return h;
}

}  // namespace xv
