// The one poller: a uv_poll_t per handle on the environment's own loop.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cstdint>
#include <functional>

#include "handles.h"

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

}  // namespace xv
