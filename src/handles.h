// Native handles: the per-environment registry that closes them at teardown, type-tagged JS
// handle objects, and the registration of each module's functions.
#pragma once

#include <napi.h>

#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "errors.h"

namespace xv {

class Handle;
class PortHub;

// Every native handle of one environment (main thread or worker). Closed by
// the environment's cleanup hook, so a worker that exits with open handles
// releases them all. Shared with the handles, so it outlives the addon's
// instance data whatever order teardown runs in.
struct Registry {
  std::unordered_set<Handle*> live;
  bool tearing_down = false;
  int closing_pollers = 0;
  // The shared event-channel handles, while anyone uses them: one per domain acted as (one on Xen;
  // on the mock a handle is its opener's domain's, and a thread may act as several).
  std::unordered_map<int, std::weak_ptr<PortHub>> hubs;
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

// Per-module registration helpers.
// DATA (the environment's registry) is passed to every function as its data pointer.
using RegistryPtr = std::shared_ptr<Registry>;
void InitEvtchn(Napi::Env env, Napi::Object exports, RegistryPtr* data);
void InitGrants(Napi::Env env, Napi::Object exports, RegistryPtr* data);
void InitXenstore(Napi::Env env, Napi::Object exports, RegistryPtr* data);
void InitVchan(Napi::Env env, Napi::Object exports, RegistryPtr* data);
void InitXenctrl(Napi::Env env, Napi::Object exports, RegistryPtr* data);
void InitPump(Napi::Env env, Napi::Object exports, RegistryPtr* data);
// Mock addon only (src/mock.cc).
void InitMock(Napi::Env env, Napi::Object exports);

// Adds the functions to a new object named NAME on EXPORTS.
void ExportFunctions(Napi::Env env, Napi::Object exports, const char* name, RegistryPtr* data,
                     std::initializer_list<std::pair<const char*, Napi::Function::Callback>> fns);

// Per-function data: the registry, so functions can create handles.
inline std::shared_ptr<Registry> RegistryOf(const Napi::CallbackInfo& info) {
  return *static_cast<std::shared_ptr<Registry>*>(info.Data());
}

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
    throw CodedError(env, "ERR_INVALID_ARG_TYPE",
                     std::string("The handle argument must be a handle of type ") + T::kName, true);
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
