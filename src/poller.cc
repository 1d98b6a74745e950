// The poller: uv_poll_t on the environment's loop, calling into JS on each wake-up.
#include "poller.h"

namespace xv {

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
  if (napi_create_reference(env_, cb, 1, &fresh) != napi_ok)
    throw Napi::Error::New(env_, "could not keep the callback");
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
    napi_status st = napi_make_callback(env, self->ctx_, recv, fn, 2, args, &result);
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

}  // namespace xv
