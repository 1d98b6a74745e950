// Registry, handle wrapping, errors, argument checks, the poller and the async runner.
#include "common.h"

#include <cstring>

namespace xv {

Napi::Object WrapHandle(Napi::Env env, Handle* h) {
  Napi::Object obj = Napi::Object::New(env);
  napi_status st = napi_wrap(
      env, obj, h,
      [](napi_env, void* data, void*) {
        // A finalizer is a C callback: nothing may be thrown out of it.
        Handle* hh = static_cast<Handle*>(data);
        try {
          hh->Close();
        } catch (...) {
        }
        delete hh;
      },
      nullptr, nullptr);
  if (st != napi_ok) {
    h->Close();
    delete h;
    throw Napi::Error::New(env, "could not wrap a native handle");
  }
  napi_type_tag_object(env, obj, h->tag());
  return obj;
}

#ifdef XEN_VCHAN_MOCK
// The mock's libraries are linked, never looked for.
std::string XenLibraryHint() { return ""; }
#endif

static std::string ErrName(int err) {
  const char* n = uv_err_name(-err);
  if (n && std::strncmp(n, "Unknown", 7) != 0) return n;
  // Errnos of ours that libuv has no name for.
  if (err == ELIBACC) return "ELIBACC";
  return "E" + std::to_string(err);
}

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& detail) {
  if (err <= 0) err = EIO;
  std::string code = ErrName(err);
  std::string msg = std::string(syscall) + " failed: " + code + " (" + std::strerror(err) + ")";
  if (!detail.empty()) msg += ": " + detail;
  if (err == ELIBACC) {
    std::string hint = XenLibraryHint();
    if (!hint.empty()) msg += ": " + hint;
  }
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

void ThrowErrno(Napi::Env env, int err, const char* syscall, const std::string& detail) {
  throw ErrnoError(env, err, syscall, detail);
}

Napi::Error CodedError(Napi::Env env, const char* code, const std::string& msg, bool type_error, bool range_error) {
  Napi::Error e = type_error    ? Napi::TypeError::New(env, msg)
                  : range_error ? Napi::RangeError::New(env, msg)
                                : Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

uint32_t ArgUint32(const Napi::CallbackInfo& info, size_t i, const char* name, uint32_t max) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) {
    throw CodedError(env, "ERR_INVALID_ARG_TYPE", std::string("The \"") + name + "\" argument must be of type number",
                     true);
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0 && v <= max) || v != static_cast<double>(static_cast<uint64_t>(v))) {
    throw CodedError(env, "ERR_OUT_OF_RANGE",
                     std::string("The value of \"") + name + "\" is out of range. It must be an integer >= 0 and <= " +
                         std::to_string(max) + ". Received " + info[i].ToString().Utf8Value(),
                     false, true);
  }
  return static_cast<uint32_t>(v);
}

Napi::Uint8Array ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw CodedError(info.Env(), "ERR_INVALID_ARG_TYPE",
                     std::string("The \"") + name + "\" argument must be an instance of Buffer or Uint8Array", true);
  }
  return info[i].As<Napi::Uint8Array>();
}

Bytes CurrentBytes(napi_env env, const Napi::Uint8Array& a) {
  napi_typedarray_type type;
  size_t length = 0, offset = 0;
  void* data = nullptr;
  napi_value ab;
  if (napi_get_typedarray_info(env, a, &type, &length, &data, &ab, &offset) != napi_ok || !data) return {nullptr, 0};
  return {static_cast<uint8_t*>(data), length};
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsString()) {
    throw CodedError(info.Env(), "ERR_INVALID_ARG_TYPE", std::string("The \"") + name + "\" argument must be of type string",
                     true);
  }
  return info[i].As<Napi::String>().Utf8Value();
}

Napi::Function ArgFunction(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsFunction()) {
    throw CodedError(info.Env(), "ERR_INVALID_ARG_TYPE",
                     std::string("The \"") + name + "\" argument must be of type function", true);
  }
  return info[i].As<Napi::Function>();
}

// ---- poller ----

static uv_loop_t* LoopOf(Napi::Env env) {
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  return loop;
}

Poller::Poller(Napi::Env env, int fd, Napi::Function cb, Registry* reg) : env_(env), reg_(reg) {
  napi_value name;
  if (napi_create_reference(env, cb, 1, &cb_) != napi_ok ||
      napi_create_string_utf8(env, "XenVchanPoll", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, nullptr, name, &ctx_) != napi_ok) {
    ReleaseJs();
    throw Napi::Error::New(env, "could not set up a poller");
  }
  int rc = uv_poll_init(LoopOf(env), &poll_, fd);
  if (rc != 0) {
    ReleaseJs();
    ThrowErrno(env, -rc, "uv_poll_init");
  }
  init_ok_ = true;
  poll_.data = this;
}

void Poller::SetCallback(Napi::Function cb) {
  napi_ref fresh = nullptr;
  if (napi_create_reference(env_, cb, 1, &fresh) != napi_ok) throw Napi::Error::New(env_, "could not keep the callback");
  if (cb_) napi_delete_reference(env_, cb_);
  cb_ = fresh;
}

void Poller::ReleaseJs() {
  if (cb_) napi_delete_reference(env_, cb_);
  if (ctx_) napi_async_destroy(env_, ctx_);
  cb_ = nullptr;
  ctx_ = nullptr;
}

void Poller::Start(int events) {
  if (!init_ok_ || active_) return;  // never re-arm a live poll: no epoll churn on this fd
  int rc = uv_poll_start(&poll_, events, OnPoll);
  if (rc != 0) ThrowErrno(env_, -rc, "uv_poll_start");
  active_ = true;
}

void Poller::Stop() {
  if (init_ok_ && active_) uv_poll_stop(&poll_);
  active_ = false;
}

void Poller::Ref(bool on) {
  referenced_ = on;
  if (!init_ok_) return;
  if (on)
    uv_ref(reinterpret_cast<uv_handle_t*>(&poll_));
  else
    uv_unref(reinterpret_cast<uv_handle_t*>(&poll_));
}

void Poller::Destroy() {
  Stop();
  ReleaseJs();
  if (!init_ok_) {
    delete this;
    return;
  }
  reg_->closing_pollers++;
  uv_close(reinterpret_cast<uv_handle_t*>(&poll_), [](uv_handle_t* h) {
    Poller* self = static_cast<Poller*>(h->data);
    Registry* reg = self->reg_;
    delete self;
    reg->closing_pollers--;
    reg->MaybeFinishCleanup();
  });
}

// Raw N-API on purpose: this runs from libuv, maybe while a worker's environment is being torn
// down, when creating even an Error object fails. Nothing here may throw or abort: a call that
// cannot run is dropped; an exception thrown by the JS callback goes to Node's uncaught-exception
// handling, as it would from any other event callback.
void Poller::OnPoll(uv_poll_t* p, int status, int events) {
  Poller* self = static_cast<Poller*>(p->data);
  if (status < 0) {
    // libuv has stopped this poll (POLLERR on the fd): start it again, or no wake-up would
    // ever come again while we believe we are polling.
    self->active_ = false;
    if (self->cb_) self->Start(UV_READABLE);
  }
  if (!self->cb_) return;
  self->wakes_++;
  if (self->before) self->before();
  napi_env env = self->env_;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn, recv, args[2], result;
  if (napi_get_reference_value(env, self->cb_, &fn) == napi_ok && fn != nullptr &&
      napi_get_global(env, &recv) == napi_ok && napi_create_int32(env, status, &args[0]) == napi_ok &&
      napi_create_int32(env, events, &args[1]) == napi_ok) {
    napi_status st =
        napi_make_callback(env, self->ctx_, recv, fn, 2, args, &result);
    bool pending = false;
    if (st != napi_ok && napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value err;
      if (napi_get_and_clear_last_exception(env, &err) == napi_ok && err != nullptr) {
        napi_valuetype t;
        // A terminating environment reports no real exception value: nothing to hand on then.
        if (napi_typeof(env, err, &t) == napi_ok && t != napi_undefined) napi_fatal_exception(env, err);
      }
    }
  }
  napi_close_handle_scope(env, scope);
}

void Registry::MaybeFinishCleanup() {
  if (tearing_down && closing_pollers == 0 && cleanup) {
    napi_async_cleanup_hook_handle h = cleanup;
    cleanup = nullptr;
    napi_remove_async_cleanup_hook(h);
  }
}

Napi::Value PollArg(const Napi::CallbackInfo& info, Poller*& poller, int fd, Registry& reg,
                    const std::function<void(Poller*)>& setup) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || info[1].IsNull() || info[1].IsUndefined()) {
    if (poller) poller->Stop();
    return env.Undefined();
  }
  Napi::Function cb = ArgFunction(info, 1, "callback");
  if (!poller) {
    if (fd < 0) ThrowErrno(env, errno ? errno : EBADF, "poll");
    poller = new Poller(env, fd, cb, &reg);
    if (setup) setup(poller);
  } else {
    poller->SetCallback(cb);  // a handle changing hands (server -> stream) brings a new callback
  }
  poller->Start(UV_READABLE);
  return env.Undefined();
}

void ExportFunctions(Napi::Env env, Napi::Object exports, const char* name, RegistryPtr* data,
                     std::initializer_list<std::pair<const char*, Napi::Function::Callback>> fns) {
  Napi::Object o = Napi::Object::New(env);
  for (auto& f : fns) o.Set(f.first, Napi::Function::New(env, f.second, f.first, data));
  exports.Set(name, o);
}

// ---- async runner ----

namespace {
class FnWorker : public Napi::AsyncWorker {
 public:
  FnWorker(Napi::Env env, const char* syscall, std::function<int(std::string&)> fn,
           std::function<Napi::Value(Napi::Env, const std::string&)> convert)
      : Napi::AsyncWorker(env, syscall),
        deferred_(Napi::Promise::Deferred::New(env)),
        syscall_(syscall),
        fn_(std::move(fn)),
        convert_(std::move(convert)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { err_ = fn_(out_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (err_) {
      deferred_.Reject(ErrnoError(env, err_, syscall_).Value());
      return;
    }
    try {
      deferred_.Resolve(convert_(env, out_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  const char* syscall_;
  std::function<int(std::string&)> fn_;
  std::function<Napi::Value(Napi::Env, const std::string&)> convert_;
  std::string out_;
  int err_ = 0;
};
}  // namespace

Napi::Value RunAsync(Napi::Env env, const char* syscall, std::function<int(std::string&)> fn,
                     std::function<Napi::Value(Napi::Env, const std::string&)> convert) {
  auto* w = new FnWorker(env, syscall, std::move(fn), std::move(convert));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace xv
