// libxenevtchn binding: a handle per xenevtchn_handle; its fd is polled and
// pending ports are drained in one go, each reported to JS.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "xen.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <unordered_map>
#include <vector>

#include "common.h"
#include "evtchn.h"

namespace xv {

namespace {

#ifndef XEN_VCHAN_MOCK
// Linux >= 6.5: bind a static (dom0less) event channel to this fd. Not in any Xen header release.
struct ioctl_evtchn_bind_static {
  unsigned int port;
};
#define XV_IOCTL_EVTCHN_BIND_STATIC _IOC(_IOC_NONE, 'E', 7, sizeof(struct ioctl_evtchn_bind_static))
constexpr const char* kBindStaticCall = "ioctl(IOCTL_EVTCHN_BIND_STATIC)";
#else
constexpr const char* kBindStaticCall = "xenevtchn_bind_static";
#endif

class Evtchn : public Handle {
 public:
  static constexpr napi_type_tag kTag = {0x8c1e0a3b5d7f4e21ULL, 0x9a2b3c4d5e6f7081ULL};
  static constexpr const char* kName = "EventChannel";
  Evtchn(std::shared_ptr<Registry> reg, xenevtchn_handle* h) : Handle(std::move(reg), &kTag), h_(h) {}
  ~Evtchn() override { Close(); }
  void Close() override {
    if (closed_) return;
    closed_ = true;
    if (poller_) poller_->Destroy();
    poller_ = nullptr;
    natives_.clear();
    for_js_.clear();
    xenevtchn_close(h_);
    h_ = nullptr;
  }
  // On a wake-up, before JS: takes the pending ports, runs (unmasked) those native code handles,
  // and keeps the rest for JS's pending(). True when JS has ports to hear of.
  bool DrainNative();

  xenevtchn_handle* h_;
  Poller* poller_ = nullptr;
  struct NativePort {
    const void* owner;
    std::function<bool()> handler;
  };
  // Ports whose events native code handles in place of JS (SetNativePort).
  std::unordered_map<uint32_t, NativePort> natives_;
  // Ports the native drain took that are JS's: pending() hands them over first.
  std::vector<uint32_t> for_js_;
  std::vector<uint32_t> taken_, mine_;
};

bool Evtchn::DrainNative() {
  if (closed_) return false;
  if (natives_.empty()) return true;  // JS's pending() takes them all
  taken_.clear();
  // An error: what was taken is handled; JS's pending() meets the error (or the fd wakes us again).
  int rc = TakePending(h_, taken_, 4096);
  mine_.clear();
  for (uint32_t p : taken_) (natives_.count(p) ? mine_ : for_js_).push_back(p);
  if (!mine_.empty()) UnmaskPorts(h_, mine_.data(), mine_.size());
  for (uint32_t p : mine_) {
    auto it = natives_.find(p);  // a handler may have dropped it (or another port's)
    if (it == natives_.end()) continue;
    std::function<bool()> handler = it->second.handler;  // it may drop itself while it runs
    if (handler()) for_js_.push_back(p);
    if (closed_) return false;
  }
  return rc < 0 || !for_js_.empty();
}

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  xenevtchn_handle* h = xenevtchn_open(nullptr, 0);
  if (!h) ThrowErrno(env, errno, "xenevtchn_open", "is the xen_evtchn module loaded and /dev/xen/evtchn accessible?");
  int fd = xenevtchn_fd(h);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return WrapHandle(env, new Evtchn(RegistryOf(info), h));
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Unwrap<Evtchn>(info, true)->Close();
  return info.Env().Undefined();
}

Napi::Value Result(Napi::Env env, int rc, const char* syscall) {
  if (rc < 0) ThrowErrno(env, errno, syscall);
  return Napi::Number::New(env, rc);
}

Napi::Value BindUnbound(const Napi::CallbackInfo& info) {
  Evtchn* e = Unwrap<Evtchn>(info);
  return Result(info.Env(), xenevtchn_bind_unbound_port(e->h_, ArgUint32(info, 1, "remoteDomid", XV_DOMID_SELF)),
                "xenevtchn_bind_unbound_port");
}

Napi::Value BindInterdomain(const Napi::CallbackInfo& info) {
  Evtchn* e = Unwrap<Evtchn>(info);
  uint32_t dom = ArgUint32(info, 1, "remoteDomid", XV_DOMID_SELF), port = ArgUint32(info, 2, "remotePort");
  return Result(info.Env(), xenevtchn_bind_interdomain(e->h_, dom, port), "xenevtchn_bind_interdomain");
}

Napi::Value BindVirq(const Napi::CallbackInfo& info) {
  Evtchn* e = Unwrap<Evtchn>(info);
  return Result(info.Env(), xenevtchn_bind_virq(e->h_, ArgUint32(info, 1, "virq")), "xenevtchn_bind_virq");
}

Napi::Value BindStatic(const Napi::CallbackInfo& info) {
  Evtchn* e = Unwrap<Evtchn>(info);
  uint32_t port = ArgUint32(info, 1, "port");
  int rc = BindStaticPort(e->h_, port);
  if (rc < 0 && errno == ENOTSUP)
    ThrowErrno(info.Env(), ENOTSUP, kBindStaticCall, "static event channels need Linux 6.5 or later");
  return Result(info.Env(), rc, kBindStaticCall);
}

Napi::Value Unbind(const Napi::CallbackInfo& info) {
  Evtchn* e = Unwrap<Evtchn>(info);
  uint32_t port = ArgUint32(info, 1, "port");
  if (xenevtchn_unbind(e->h_, port) < 0) ThrowErrno(info.Env(), errno, "xenevtchn_unbind");
  e->natives_.erase(port);  // a port bound again later is not that handler's
  return info.Env().Undefined();
}

Napi::Value Notify(const Napi::CallbackInfo& info) {
  Evtchn* e = Unwrap<Evtchn>(info);
  if (xenevtchn_notify(e->h_, ArgUint32(info, 1, "port")) < 0) ThrowErrno(info.Env(), errno, "xenevtchn_notify");
  return info.Env().Undefined();
}

Napi::Value Unmask(const Napi::CallbackInfo& info) {
  Evtchn* e = Unwrap<Evtchn>(info);
  if (xenevtchn_unmask(e->h_, ArgUint32(info, 1, "port")) < 0) ThrowErrno(info.Env(), errno, "xenevtchn_unmask");
  return info.Env().Undefined();
}

Napi::Value Restrict(const Napi::CallbackInfo& info) {
  Evtchn* e = Unwrap<Evtchn>(info);
  uint32_t dom = ArgUint32(info, 1, "domid", kMaxDomid);
  if (xenevtchn_restrict(e->h_, static_cast<domid_t>(dom)) < 0) ThrowErrno(info.Env(), errno, "xenevtchn_restrict");
  return info.Env().Undefined();
}

// Reads every pending port without blocking; returns them as an array (each stays masked): first
// those a wake-up's native drain took for JS, then any pending since.
Napi::Value Pending(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Evtchn* e = Unwrap<Evtchn>(info);
  Napi::Array out = Napi::Array::New(env);
  std::vector<uint32_t> ports;
  ports.swap(e->for_js_);
  if (TakePending(e->h_, ports, SIZE_MAX) < 0 && ports.empty()) ThrowErrno(env, errno, "xenevtchn_pending");
  for (size_t i = 0; i < ports.size(); i++) out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, ports[i]));
  return out;
}

// poll(handle, callback | null): start or stop watching the fd; callback() runs when ports are pending.
Napi::Value Poll(const Napi::CallbackInfo& info) {
  Evtchn* e = Unwrap<Evtchn>(info);
  return PollArg(info, e->poller_, xenevtchn_fd(e->h_), e->registry(),
                 [e](Poller* p) { p->native = [e](int, int) { return e->DrainNative(); }; });
}

Napi::Value Ref(const Napi::CallbackInfo& info) {
  Evtchn* e = Unwrap<Evtchn>(info);
  bool on = info.Length() > 1 && info[1].ToBoolean();
  if (e->poller_) e->poller_->Ref(on);
  return info.Env().Undefined();
}

Napi::Value Fd(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), xenevtchn_fd(Unwrap<Evtchn>(info)->h_));
}

}  // namespace

Handle* UnwrapEvtchn(const Napi::CallbackInfo& info) { return Unwrap<Evtchn>(info); }

int BindStaticPort(xenevtchn_handle* h, uint32_t port) {
#ifdef XEN_VCHAN_MOCK
  return xenevtchn_bind_static(h, port);
#else
  struct ioctl_evtchn_bind_static b = {port};
  int rc = ioctl(xenevtchn_fd(h), XV_IOCTL_EVTCHN_BIND_STATIC, &b);
  // Kernels before 6.5 do not know the ioctl: the evtchn driver answers ENOSYS, other files ENOTTY.
  if (rc < 0 && (errno == ENOTTY || errno == ENOSYS)) errno = ENOTSUP;
  return rc < 0 ? -1 : static_cast<int>(port);
#endif
}

#ifndef XEN_VCHAN_MOCK
// Whether xenevtchn_fd() is Linux's device, read and written directly below; cleared for good at
// the first EINVAL (the library is not Linux's: another kernel's, or the mock's under the real
// addon, as npm test's real-over-mock run has it).
static std::atomic<bool> g_device_io{true};
#endif

// Up to MAX pending ports of H into PORTS: how many (0: none), or -1 with errno; fewer than MAX
// means none was left when it looked.
static int PendingPorts(xenevtchn_handle* h, uint32_t* ports, int max) {
#ifdef XEN_VCHAN_MOCK
  return xenmock_evtchn_pending_many(h, ports, static_cast<unsigned>(max));
#else
  // Linux's evtchn device hands over as many queued ports as fit in one read (at most a page's
  // worth), and fewer than asked for only when none is left: xenevtchn_pending() reads one per
  // call, and one more to hear EAGAIN. A descriptor that cannot be read so (EINVAL: not Linux's
  // device) gets the library's call, port by port.
  if (max > 1024) max = 1024;
  if (g_device_io.load(std::memory_order_relaxed)) {
    ssize_t r = read(xenevtchn_fd(h), ports, static_cast<size_t>(max) * sizeof(uint32_t));
    if (r >= 0) return static_cast<int>(r / static_cast<ssize_t>(sizeof(uint32_t)));
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    if (errno != EINVAL) return -1;
    g_device_io.store(false, std::memory_order_relaxed);  // every handle of the process is alike
  }
  int n = 0;
  for (; n < max; n++) {
    int p = xenevtchn_pending(h);
    if (p < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return n > 0 ? n : -1;
    }
    ports[n] = static_cast<uint32_t>(p);
  }
  return n;
#endif
}

int TakePending(xenevtchn_handle* h, std::vector<uint32_t>& out, size_t limit) {
  constexpr size_t kBatch = 256;
  while (out.size() < limit) {
    size_t at = out.size(), want = std::min(kBatch, limit - at);
    out.resize(at + want);
    int n = PendingPorts(h, out.data() + at, static_cast<int>(want));
    out.resize(at + static_cast<size_t>(n > 0 ? n : 0));  // a shrink: errno stays
    if (n < 0) return -1;
    if (static_cast<size_t>(n) < want) break;  // none left when it looked: no call to hear EAGAIN
  }
  return 0;
}

void UnmaskPorts(xenevtchn_handle* h, const uint32_t* ports, size_t n) {
#ifndef XEN_VCHAN_MOCK
  // The device unmasks every port of a write (at most a page's worth per write), as
  // xenevtchn_unmask() writes one; ports this descriptor did not bind are ignored, as there.
  int fd = xenevtchn_fd(h);
  size_t done = 0;
  while (done < n && g_device_io.load(std::memory_order_relaxed)) {
    size_t k = n - done < 1024 ? n - done : 1024;
    if (write(fd, ports + done, k * sizeof(uint32_t)) < 0) break;
    done += k;
  }
  ports += done;
  n -= done;
#endif
  // The mock unmasks in shared memory, without a system call: one call per port costs nothing more.
  for (size_t i = 0; i < n; i++) xenevtchn_unmask(h, ports[i]);
}

xenevtchn_handle* EvtchnOf(Handle* h) { return h->closed() ? nullptr : static_cast<Evtchn*>(h)->h_; }

void SetNativePort(Handle* ev, uint32_t port, const void* owner, std::function<bool()> handler) {
  if (ev->closed()) return;
  static_cast<Evtchn*>(ev)->natives_[port] = {owner, std::move(handler)};
}

void ClearNativePort(Handle* ev, uint32_t port, const void* owner) {
  if (ev->closed()) return;
  auto& natives = static_cast<Evtchn*>(ev)->natives_;
  auto it = natives.find(port);
  if (it != natives.end() && it->second.owner == owner) natives.erase(it);
}

void InitEvtchn(Napi::Env env, Napi::Object exports, RegistryPtr* data) {
  ExportFunctions(env, exports, "evtchn", data,
                  {{"open", Open},
                   {"close", Close},
                   {"bindUnbound", BindUnbound},
                   {"bindInterdomain", BindInterdomain},
                   {"bindVirq", BindVirq},
                   {"bindStatic", BindStatic},
                   {"unbind", Unbind},
                   {"notify", Notify},
                   {"unmask", Unmask},
                   {"restrict", Restrict},
                   {"pending", Pending},
                   {"poll", Poll},
                   {"ref", Ref},
                   {"fd", Fd}});
}

}  // namespace xv
