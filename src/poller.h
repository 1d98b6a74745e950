// The one poller: a uv_poll_t per handle on the environment's own loop.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "handles.h"

struct xs_handle;

struct xenevtchn_handle;  // xenevtchn.h
struct xengntdev_handle;  // xengnttab.h: xengnttab_handle and xengntshr_handle

namespace xv {

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
  // Native work done on each wake-up in place of the JS call: the JS callback runs only when it
  // returns true (a poller that moves data in C++ and calls JS only for what JS must decide).
  std::function<bool(int status, int events)> native;
  // Watches EVENTS (UV_READABLE | UV_WRITABLE), changing a live poll's events in place; 0 stops.
  // Never throws (it runs from libuv callbacks): returns 0 or a negative libuv error.
  int SetEvents(int events);
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
  int events_ = 0;
  bool referenced_ = true;
  bool init_ok_ = false;
  uint64_t wakes_ = 0;
};

// The body of every poll(handle, callback | null) function: info[1] null stops polling; a function
// starts it (creating the poller on FD the first time, and calling SETUP on it then).
Napi::Value PollArg(const Napi::CallbackInfo& info, Poller*& poller, int fd, Registry& reg,
                    const std::function<void(Poller*)>& setup = nullptr);

// One event-channel handle for the environment's channels (and one of each grant device): one
// descriptor, one uv_poll, however many ports. A wake-up drains every pending port (unmasking each) before any JS runs,
// then calls each woken port's callback once. Made on first use; closed when its last user lets it go.
class PortHub : public std::enable_shared_from_this<PortHub> {
 public:
  // The environment's hub, opening its event-channel handle on first use (errno errors).
  static std::shared_ptr<PortHub> Of(Napi::Env env, const std::shared_ptr<Registry>& reg);
  ~PortHub();
  PortHub(const PortHub&) = delete;
  PortHub& operator=(const PortHub&) = delete;
  ::xenevtchn_handle* handle() const { return xce_; }
  // The environment's grant devices for its channels, opened on first use (errno errors): a
  // server's pages are shared through the one, a client's mapped through the other.
  ::xengntdev_handle* Gntshr(Napi::Env env);
  ::xengntdev_handle* Gnttab(Napi::Env env);
  // The environment's xenstore connection for its channels' set-up and tear-down (publishing and
  // removing a server's entry, a client's look at it), on this thread only: opened on first use,
  // null when it cannot be (the channel then opens its own, and reports why that failed).
  ::xs_handle* Xs();
  int fd() const { return fd_; }
  // CB is called after each wake-up of PORT (replacing any callback it had). True when an event
  // for PORT came before anyone listened: call CB soon.
  bool Subscribe(uint32_t port, Napi::Function cb);
  void Unsubscribe(uint32_t port);  // safe from finalizers and cleanup hooks: never throws
  void Ref(uint32_t port, bool on);
  struct Stats {
    bool subscribed = false;
    uint64_t wakes = 0, events = 0;
  };
  Stats StatsOf(uint32_t port) const;

 private:
  PortHub(napi_env env, std::shared_ptr<Registry> reg, ::xenevtchn_handle* xce, int fd);
  static void OnPoll(uv_poll_t* p, int status, int events);
  void Drain();
  void Call(uint32_t port);
  struct Sub {
    napi_ref cb = nullptr;
    napi_async_context ctx = nullptr;
    bool refed = true;
    bool woken = false;
    uint64_t wakes = 0, events = 0;
  };
  void Release(Sub& s);
  void UpdateRef();
  napi_env env_;
  std::shared_ptr<Registry> reg_;
  ::xenevtchn_handle* xce_;
  ::xengntdev_handle* gntshr_ = nullptr;
  ::xengntdev_handle* gnttab_ = nullptr;
  ::xs_handle* xs_ = nullptr;
  int fd_;
  uv_poll_t* poll_ = nullptr;
  bool polling_ = false;
  size_t refed_ = 0;
  std::unordered_map<uint32_t, Sub> subs_;
  std::unordered_set<uint32_t> early_;  // drained before anyone subscribed
  std::vector<uint32_t> woken_;
  std::vector<uint32_t> drained_;
};

}  // namespace xv
