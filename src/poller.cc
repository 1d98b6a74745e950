// The poller: uv_poll_t on the environment's loop, calling into JS on each wake-up.
#include "poller.h"

#include <fcntl.h>

#include "evtchn.h"
#include "xen.h"

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
  events_ = events;
}

int Poller::SetEvents(int events) {
  if (!init_ok_) return UV_EBADF;
  if (events == 0) {
    Stop();
    return 0;
  }
  if (active_ && events == events_) return 0;
  int rc = uv_poll_start(&poll_, events, OnPoll);  // on a live poll: changes its events
  if (rc != 0) return rc;
  active_ = true;
  events_ = events;
  return 0;
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
    if (self->cb_) self->SetEvents(self->events_ ? self->events_ : UV_READABLE);
  }
  if (!self->cb_) return;
  self->wakes_++;
  if (self->native && !self->native(status, events)) return;
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

// ---- PortHub ----

std::shared_ptr<PortHub> PortHub::Of(Napi::Env env, const std::shared_ptr<Registry>& reg) {
#ifdef XEN_VCHAN_MOCK
  int key = xenmock_current_domid();
#else
  int key = 0;
#endif
  if (auto hub = reg->hubs[key].lock()) return hub;
  errno = 0;
  xenevtchn_handle* xce = xenevtchn_open(nullptr, 0);
  if (!xce) ThrowErrno(env, errno ? errno : EIO, "xenevtchn_open");
  int fd = xenevtchn_fd(xce);
  // Drained to EAGAIN on each wake-up: never block the loop.
  if (fd < 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
    int e = fd < 0 ? EBADF : errno;
    xenevtchn_close(xce);
    ThrowErrno(env, e, "xenevtchn_fd");
  }
  std::shared_ptr<PortHub> hub(new PortHub(env, reg, xce, fd));
  if (!hub->poll_) ThrowErrno(env, EIO, "uv_poll_init");  // the destructor closed the handle
  reg->hubs[key] = hub;
  return hub;
}

PortHub::PortHub(napi_env env, std::shared_ptr<Registry> reg, ::xenevtchn_handle* xce, int fd)
    : env_(env), reg_(std::move(reg)), xce_(xce), fd_(fd) {
  auto* p = new uv_poll_t;
  if (uv_poll_init(LoopOf(Napi::Env(env)), p, fd) != 0) {
    delete p;
    return;
  }
  p->data = this;
  poll_ = p;
  uv_unref(reinterpret_cast<uv_handle_t*>(poll_));  // until a referenced port is subscribed
  polling_ = uv_poll_start(poll_, UV_READABLE, OnPoll) == 0;
}

PortHub::~PortHub() {
  for (auto& [port, sub] : subs_) Release(sub);
  subs_.clear();
  if (poll_) {
    uv_poll_stop(poll_);
    poll_->data = nullptr;
    // The uv_poll_t outlives us until libuv's close callback; the environment's teardown waits.
    Registry* reg = reg_.get();
    reg->closing_pollers++;
    poll_->data = new std::shared_ptr<Registry>(reg_);
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) {
      auto* keep = static_cast<std::shared_ptr<Registry>*>(h->data);
      Registry* r = keep->get();
      delete reinterpret_cast<uv_poll_t*>(h);
      r->closing_pollers--;
      r->MaybeFinishCleanup();
      delete keep;
    });
  }
  if (xce_) xenevtchn_close(xce_);
  if (gntshr_) xengntshr_close(gntshr_);
  if (gnttab_) xengnttab_close(gnttab_);
  if (xs_) xs_close(xs_);
}

::xs_handle* PortHub::Xs() {
  if (!xs_) xs_ = xs_open(0);
  return xs_;
}

::xengntdev_handle* PortHub::Gntshr(Napi::Env env) {
  if (!gntshr_) {
    errno = 0;
    gntshr_ = xengntshr_open(nullptr, 0);
    if (!gntshr_) ThrowErrno(env, errno ? errno : EIO, "xengntshr_open");
  }
  return gntshr_;
}

::xengntdev_handle* PortHub::Gnttab(Napi::Env env) {
  if (!gnttab_) {
    errno = 0;
    gnttab_ = xengnttab_open(nullptr, 0);
    if (!gnttab_) ThrowErrno(env, errno ? errno : EIO, "xengnttab_open");
  }
  return gnttab_;
}

void PortHub::Release(Sub& s) {
  if (s.cb) napi_delete_reference(env_, s.cb);
  if (s.ctx) napi_async_destroy(env_, s.ctx);
  s.cb = nullptr;
  s.ctx = nullptr;
}

bool PortHub::Subscribe(uint32_t port, Napi::Function cb) {
  napi_env env = env_;
  auto [it, fresh] = subs_.try_emplace(port);
  Sub& s = it->second;
  napi_ref ref = nullptr;
  if (napi_create_reference(env, cb, 1, &ref) != napi_ok) {
    if (fresh) subs_.erase(it);
    throw Napi::Error::New(Napi::Env(env), "could not keep the callback");
  }
  if (s.cb) napi_delete_reference(env, s.cb);
  s.cb = ref;
  if (!s.ctx) {
    napi_value name;
    if (napi_create_string_utf8(env, "XenVchanPoll", NAPI_AUTO_LENGTH, &name) != napi_ok ||
        napi_async_init(env, nullptr, name, &s.ctx) != napi_ok) {
      Release(s);
      subs_.erase(it);
      throw Napi::Error::New(Napi::Env(env), "could not set up a poller");
    }
  }
  if (fresh && s.refed) {
    refed_++;
    UpdateRef();
  }
  return early_.erase(port) > 0;
}

void PortHub::Unsubscribe(uint32_t port) {
  auto it = subs_.find(port);
  early_.erase(port);
  if (it == subs_.end()) return;
  if (it->second.refed) refed_--;
  Release(it->second);
  subs_.erase(it);
  UpdateRef();
}

void PortHub::Ref(uint32_t port, bool on) {
  auto it = subs_.find(port);
  if (it == subs_.end() || it->second.refed == on) return;
  it->second.refed = on;
  refed_ += on ? 1 : -1;
  UpdateRef();
}

void PortHub::UpdateRef() {
  if (!poll_) return;
  if (refed_ > 0)
    uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
  else
    uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
}

PortHub::Stats PortHub::StatsOf(uint32_t port) const {
  Stats st;
  auto it = subs_.find(port);
  if (it == subs_.end()) return st;
  st.subscribed = polling_;
  st.wakes = it->second.wakes;
  st.events = it->second.events;
  return st;
}

// Every pending port first (the kernel masks a port as it queues it), then all unmasked, before
// any JS runs: a port whose event comes again after its unmask is queued again, and the fd stays
// readable for the next turn. Bounded per turn; the rest wakes us again (level-triggered). A take
// that comes back short of what it asked for found nothing left, so a wake-up costs one read of
// the ports and one write to unmask them on Linux (none on the mock), however many ports woke.
void PortHub::Drain() {
  drained_.clear();
  TakePending(xce_, drained_, 4096);  // an error: what was taken is handled; the fd wakes us again
  UnmaskPorts(xce_, drained_.data(), drained_.size());
  for (uint32_t port : drained_) {
    auto it = subs_.find(port);
    if (it == subs_.end()) {
      early_.insert(port);  // bound, not yet listened to (or just closed: dropped at Unsubscribe)
      continue;
    }
    it->second.events++;
    if (!it->second.woken) {
      it->second.woken = true;
      woken_.push_back(port);
    }
  }
}

// Raw N-API, as Poller::OnPoll: nothing here may throw or abort. A callback may close any channel
// (this one or another) or open new ones: each woken port is looked up again before its call.
void PortHub::Call(uint32_t port) {
  auto it = subs_.find(port);
  if (it == subs_.end() || !it->second.woken) return;
  Sub& s = it->second;
  s.woken = false;
  if (!s.cb) return;
  s.wakes++;
  napi_env env = env_;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn, recv, result;
  if (napi_get_reference_value(env, s.cb, &fn) == napi_ok && fn != nullptr && napi_get_global(env, &recv) == napi_ok) {
    napi_status st = napi_make_callback(env, s.ctx, recv, fn, 0, nullptr, &result);
    bool pending = false;
    if (st != napi_ok && napi_is_exception_pending(env, &pending) == napi_ok && pending) {
      napi_value err;
      if (napi_get_and_clear_last_exception(env, &err) == napi_ok && err != nullptr) {
        napi_valuetype t;
        if (napi_typeof(env, err, &t) == napi_ok && t != napi_undefined) napi_fatal_exception(env, err);
      }
    }
  }
  napi_close_handle_scope(env, scope);
}

void PortHub::OnPoll(uv_poll_t* p, int status, int) {
  auto* self = static_cast<PortHub*>(p->data);
  if (!self) return;
  if (status < 0) {
    // libuv stopped the poll (POLLERR): start it again, or no wake-up would ever come.
    self->polling_ = uv_poll_start(p, UV_READABLE, OnPoll) == 0;
  }
  // A callback may drop the last user of the hub: keep it alive until this turn is done.
  std::shared_ptr<PortHub> keep = self->weak_from_this().lock();
  if (!keep) return;
  self->Drain();
  std::vector<uint32_t> woken;
  woken.swap(self->woken_);
  for (uint32_t port : woken) self->Call(port);
}

}  // namespace xv
