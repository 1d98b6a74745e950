// libxenvchan binding: non-blocking reads into caller buffers, writes from
// them, and each channel's port on the environment's one event-channel handle
// (PortHub), drained and unmasked natively before JS is told. The shared ring structure is public, so every
// read and write first checks the peer's index (XSA-86 style): an impossible
// one becomes EPROTO here instead of libxenvchan's silent hang.
#include <fcntl.h>
#include "xen.h"

#include <poll.h>
#include <sys/mman.h>

#include <algorithm>
#include <climits>
#include <cstddef>

#include <vector>

#include "common.h"
#include "evtchn.h"

namespace xv {

// arm()'s counts are below this (a ring is at most 1 MiB, XV_RING_MAX_ORDER): each fits 21 bits.
constexpr int kArmCountMax = (1 << 21) - 1;
static_assert(XV_RING_MAX_ORDER < 21, "arm() packs ring counts in 21 bits");

namespace {

class Vchan : public Handle {
 public:
  static constexpr napi_type_tag kTag = {0x2d4f6a8b0c1e3a5cULL, 0x7e9f1a2b3c4d5e6fULL};
  static constexpr const char* kName = "Vchan";
  // C's port is bound on HUB's event-channel handle (xv_vchan_*_on).
  Vchan(std::shared_ptr<Registry> reg, struct libxenvchan* c, std::shared_ptr<PortHub> hub)
      : Handle(std::move(reg), &kTag), c_(c), port_(c->event_port), hub_(std::move(hub)) {
    c_->blocking = 0;  // neither init sets it; we never block the event loop
  }
  ~Vchan() override { Close(); }
  void Close() override {
    if (closed_) return;
    closed_ = true;
    hub_->Unsubscribe(port_);
    libxenvchan_close(c_);  // unbinds our port from the hub's handle
    c_ = nullptr;
    hub_.reset();  // the last channel of the environment closes the shared handle
  }
  // A peer that breaks the protocol (xv_vchan_corrupt): EPROTO rather than libxenvchan's hang.
  bool Corrupt() const { return xv_vchan_corrupt(c_) != 0; }
  // The ring view lent to JS (view()), until release() or close detaches it: JS never reads the
  // ring through it once its bytes are handed back to the peer, or once the ring is unmapped.
  void DetachView() {
    if (view_.IsEmpty()) return;
    Napi::ArrayBuffer ab = view_.Value();
    view_.Reset();
    if (!ab.IsDetached()) ab.Detach();
  }
  Napi::Reference<Napi::ArrayBuffer> view_;
  uint32_t view_len_ = 0;
  struct libxenvchan* c_;
  uint32_t port_;
  std::shared_ptr<PortHub> hub_;
};

// Keeps the environment's hub (its event-channel handle, grant devices and xenstore connection)
// open while no channel uses it: a process that connects again soon need not open them again.
class HubHold : public Handle {
 public:
  static constexpr napi_type_tag kTag = {0x5b7d9f1e3a2c4e6aULL, 0x1f3e5d7c9b0a2e4cULL};
  static constexpr const char* kName = "HubHold";
  HubHold(std::shared_ptr<Registry> reg, std::shared_ptr<PortHub> hub)
      : Handle(std::move(reg), &kTag), hub_(std::move(hub)) {}
  ~HubHold() override { Close(); }
  void Close() override {
    closed_ = true;
    hub_.reset();
  }

 private:
  std::shared_ptr<PortHub> hub_;
};

// The (buffer, offset, length) arguments at 1..3, checked: a pointer and a length inside the buffer.
std::pair<uint8_t*, uint32_t> BufferRange(const Napi::CallbackInfo& info) {
  Napi::Uint8Array buf = ArgBytes(info, 1, "buffer");
  uint32_t off = ArgUint32(info, 2, "offset"), len = ArgUint32(info, 3, "length");
  if (static_cast<uint64_t>(off) + len > buf.ByteLength())
    throw CodedError(info.Env(), "ERR_OUT_OF_RANGE", "offset + length is beyond the end of the buffer", false, true);
  return {buf.Data() + off, len};
}

Napi::Value ServerInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t dom = ArgUint32(info, 0, "domid", kMaxDomid);
  std::string path = ArgString(info, 1, "path");
  // At most a ring of the largest order; lib/ supplies the default (DEFAULT_RING_SIZE).
  constexpr uint32_t kMaxRing = 1u << XV_RING_MAX_ORDER;
  uint32_t rmin = ArgUint32(info, 2, "readMin", kMaxRing), wmin = ArgUint32(info, 3, "writeMin", kMaxRing);
  auto reg = RegistryOf(info);
  auto hub = PortHub::Of(env, reg);
  errno = 0;
  struct xv_vchan_handles shared = {hub->handle(), hub->Gntshr(env), nullptr, hub->Xs()};
  errno = 0;
  struct libxenvchan* c = xv_vchan_server_init_on(&shared, static_cast<int>(dom), path.c_str(), rmin, wmin);
  if (!c) ThrowErrno(env, errno ? errno : EIO, "libxenvchan_server_init", path);
  // A VchanServer offers a fresh channel for each client: mark this one not to be taken over.
  xv_vchan_set_single_use(c);
  return WrapHandle(env, new Vchan(reg, c, std::move(hub)));
}

// clientInit(domid, path, ringRef, port): ringRef and port as the caller read them from xenstore.
// The claimed attach (xv_vchan_client_claim: no two clients on one channel). Throws errno errors by
// step: syscall "xengnttab_map_grant_ref" (the entry names no page we may map), "vchan_claim" with
// EPROTO (not a vchan layout) or EBUSY (taken), "libxenvchan_client_init" (its own errno, after the
// claim was given back), and EAGAIN when the entry changed under us (try again).
Napi::Value ClientInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t dom = ArgUint32(info, 0, "domid", kMaxDomid);
  std::string path = ArgString(info, 1, "path");
  uint32_t ref = ArgUint32(info, 2, "ringRef"), port = ArgUint32(info, 3, "port");
  auto reg = RegistryOf(info);
  auto hub = PortHub::Of(env, reg);
  struct xv_vchan_claim_error why = {0, 0};
  errno = 0;
  struct xv_vchan_handles shared = {hub->handle(), nullptr, hub->Gnttab(env), hub->Xs()};
  errno = 0;
  struct libxenvchan* c = xv_vchan_client_claim_on(&shared, static_cast<int>(dom), path.c_str(), ref, port, &why);
  if (c) return WrapHandle(env, new Vchan(reg, c, std::move(hub)));
  int e = errno ? errno : EIO;
  switch (why.step) {
    case XV_VCHAN_STEP_CLAIM:
      if (e == EBUSY)
        ThrowErrno(env, e, "vchan_claim",
                   "the channel at " + path + " is not offered (cli_live=" + std::to_string(why.seen) + ")");
      ThrowErrno(env, e, "vchan_claim",
                 "the page at " + path + "/ring-ref is not a vchan control page (impossible orders or live state)");
    case XV_VCHAN_STEP_MAP:
      ThrowErrno(env, e, "xengnttab_map_grant_ref", path + "/ring-ref");
    default:
      if (e == EAGAIN)
        ThrowErrno(env, e, "libxenvchan_client_init", "the channel at " + path + " was offered again while connecting");
      ThrowErrno(env, e, "libxenvchan_client_init", path);
  }
}

// serverInitStatic(domid, ringRef, port, readMin, writeMin): a channel with no xenstore, on the
// static PORT (bound here on the hub's handle) with its control page at the agreed RINGREF.
// EADDRNOTAVAIL when the page got another reference (the message says which).
Napi::Value ServerInitStatic(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t dom = ArgUint32(info, 0, "domid", kMaxDomid);
  uint32_t ref = ArgUint32(info, 1, "ringRef"), port = ArgUint32(info, 2, "port");
  constexpr uint32_t kMaxRing = 1u << XV_RING_MAX_ORDER;
  uint32_t rmin = ArgUint32(info, 3, "readMin", kMaxRing), wmin = ArgUint32(info, 4, "writeMin", kMaxRing);
  auto reg = RegistryOf(info);
  auto hub = PortHub::Of(env, reg);
  struct xv_vchan_handles shared = {hub->handle(), hub->Gntshr(env), nullptr, nullptr};
  uint32_t got = 0;
  errno = 0;
  struct libxenvchan* c =
      xv_vchan_server_init_static(&shared, static_cast<int>(dom), ref, port, BindStaticPort, rmin, wmin, &got);
  if (!c) {
    int e = errno ? errno : EIO;
    if (e == EADDRNOTAVAIL)
      ThrowErrno(env, e, "xengntshr_share_page_notify",
                 "the control page was granted as ref " + std::to_string(got) + ", not the agreed ref " +
                     std::to_string(ref) + " (a grant of this domain holds it)");
    if (e == ENOTSUP)
      ThrowErrno(env, e, "ioctl(IOCTL_EVTCHN_BIND_STATIC)", "static event channels need Linux 6.5 or later");
    ThrowErrno(env, e, "libxenvchan_server_init", "static port " + std::to_string(port));
  }
  xv_vchan_set_single_use(c);
  return WrapHandle(env, new Vchan(reg, c, std::move(hub)));
}

// clientInitStatic(domid, ringRef, port): attaches to the channel at the agreed RINGREF of DOMID,
// binding the static PORT only once the page is mapped and claimed. Errors by step as clientInit's:
// "xengnttab_map_grant_ref" (no such page granted to us yet), "vchan_claim" (EBUSY: not offered;
// EPROTO: not a vchan page), then the attach's own.
Napi::Value ClientInitStatic(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t dom = ArgUint32(info, 0, "domid", kMaxDomid);
  uint32_t ref = ArgUint32(info, 1, "ringRef"), port = ArgUint32(info, 2, "port");
  auto reg = RegistryOf(info);
  auto hub = PortHub::Of(env, reg);
  struct xv_vchan_handles shared = {hub->handle(), nullptr, hub->Gnttab(env), nullptr};
  struct xv_vchan_claim_error why = {0, 0};
  errno = 0;
  struct libxenvchan* c = xv_vchan_client_claim_static(&shared, static_cast<int>(dom), ref, port, BindStaticPort, &why);
  if (c) return WrapHandle(env, new Vchan(reg, c, std::move(hub)));
  int e = errno ? errno : EIO;
  std::string what = "ref " + std::to_string(ref) + " of domain " + std::to_string(dom);
  switch (why.step) {
    case XV_VCHAN_STEP_CLAIM:
      if (e == EBUSY)
        ThrowErrno(env, e, "vchan_claim",
                   "the channel at " + what + " is not offered (cli_live=" + std::to_string(why.seen) + ")");
      ThrowErrno(env, e, "vchan_claim", "the page at " + what + " is not a vchan control page");
    case XV_VCHAN_STEP_MAP:
      ThrowErrno(env, e, "xengnttab_map_grant_ref", what);
    default:
      if (e == ENOTSUP)
        ThrowErrno(env, e, "ioctl(IOCTL_EVTCHN_BIND_STATIC)", "static event channels need Linux 6.5 or later");
      ThrowErrno(env, e, "libxenvchan_client_init", what + ", static port " + std::to_string(port));
  }
}

// hold() -> a handle that keeps the hub of the domain acted as open until unhold(handle).
Napi::Value Hold(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto reg = RegistryOf(info);
  return WrapHandle(env, new HubHold(reg, PortHub::Of(env, reg)));
}

Napi::Value Unhold(const Napi::CallbackInfo& info) {
  Unwrap<HubHold>(info, true)->Close();
  return info.Env().Undefined();
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Vchan* v = Unwrap<Vchan>(info, true);
  v->DetachView();  // before the ring goes
  v->Close();
  return info.Env().Undefined();
}

// read(h, target, offset, length) -> bytes read; 0 = nothing yet; -1 = peer gone and ring empty.
// Asks the peer for no notification (the stream asks through arm() when it finds the ring empty;
// libxenvchan_read would ask on every read, and every write of the peer would then wake us).
Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  auto [ptr, len] = BufferRange(info);
  if (v->Corrupt()) ThrowErrno(env, EPROTO, "libxenvchan_read", "the peer's ring index is impossible");
  int n = xv_vchan_read(v->c_, ptr, len);
  if (n < 0) ThrowErrno(env, EPROTO, "libxenvchan_read", "the peer's ring index is impossible");
  if (n == 0 && len > 0 && !libxenvchan_is_open(v->c_)) return Napi::Number::New(env, -1);
  return Napi::Number::New(env, n);
}

// view(h) -> an (external) ArrayBuffer over the ring's own bytes that are ready to read at the
// read cursor, up to the ring's end (the rest, after a wrap, comes with the next view); 0 = nothing
// yet; -1 = peer gone and ring empty. Nothing is consumed until release(h); one view at a time.
Napi::Value View(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  if (!v->view_.IsEmpty()) throw CodedError(env, "ERR_INVALID_STATE", "A ring view is still out: release() it first");
  if (v->Corrupt()) ThrowErrno(env, EPROTO, "libxenvchan_read", "the peer's ring index is impossible");
  const void* p = nullptr;
  int n = xv_vchan_read_view(v->c_, &p);
  if (n < 0) ThrowErrno(env, errno, "libxenvchan_read", "the peer's ring index is impossible");
  if (n == 0) return Napi::Number::New(env, libxenvchan_is_open(v->c_) ? 0 : -1);
  napi_value ab;
  napi_status st = napi_create_external_arraybuffer(env, const_cast<void*>(p), n, nullptr, nullptr, &ab);
  if (st == napi_no_external_buffers_allowed)
    throw CodedError(env, "ERR_XEN_NO_EXTERNAL_BUFFERS",
                     "This runtime forbids external ArrayBuffers: read with copies");
  if (st != napi_ok) throw Napi::Error::New(env, "napi_create_external_arraybuffer failed");
  Napi::ArrayBuffer buf(env, ab);
  v->view_ = Napi::Persistent(buf);
  v->view_len_ = static_cast<uint32_t>(n);
  return buf;
}

// release(h): detaches the view, then hands its bytes back to the peer (notifying it if it asked
// to be told of reads), as libxenvchan_read does after its copy.
Napi::Value ReleaseView(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info, true);
  if (v->view_.IsEmpty()) return env.Undefined();  // none out (or closed: close detached it)
  v->DetachView();
  uint32_t n = v->view_len_;
  v->view_len_ = 0;
  if (v->closed()) return env.Undefined();
  if (xv_vchan_read_consume(v->c_, n) < 0) ThrowErrno(env, errno, "libxenvchan_read");
  return env.Undefined();
}

// write(h, source, offset, length) -> bytes written; 0 = ring full. Throws EPIPE once the peer is gone.
Napi::Value Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  auto [ptr, len] = BufferRange(info);
  if (v->Corrupt()) ThrowErrno(env, EPROTO, "libxenvchan_write", "the peer's ring index is impossible");
  if (libxenvchan_is_open(v->c_) != 1) ThrowErrno(env, EPIPE, "libxenvchan_write", "the peer has closed the channel");
  struct iovec iov = {ptr, len};
  int n = xv_vchan_writev(v->c_, &iov, 1);
  if (n < 0) ThrowErrno(env, EPROTO, "libxenvchan_write", "the peer's ring index is impossible");
  return Napi::Number::New(env, n);
}

// writev(h, [chunks], startOffset) -> total bytes written from the chunk list (first chunk from startOffset).
// The chunks are all read (index getters may run JS, and may close this channel or detach a chunk)
// before the channel is looked at; the pointers are taken afterwards, with no JS in between.
Napi::Value Writev(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  if (info.Length() < 2 || !info[1].IsArray())
    throw CodedError(env, "ERR_INVALID_ARG_TYPE", "The \"chunks\" argument must be an array", true);
  Napi::Array list = info[1].As<Napi::Array>();
  uint32_t skip = info.Length() > 2 ? ArgUint32(info, 2, "offset") : 0;
  uint32_t count = list.Length();
  std::vector<Napi::Uint8Array> chunks;
  chunks.reserve(count < 1024 ? count : 1024);
  for (uint32_t i = 0; i < count; i++) {
    Napi::Value cv = list.Get(i);
    if (!cv.IsTypedArray() || cv.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw CodedError(env, "ERR_INVALID_ARG_TYPE", "Every chunk must be a Buffer or Uint8Array", true);
    chunks.push_back(cv.As<Napi::Uint8Array>());
  }
  // No JS runs from here on.
  if (v->closed()) throw CodedError(env, "ERR_XEN_CLOSED", "The Vchan handle was closed while its arguments were read");
  if (v->Corrupt()) ThrowErrno(env, EPROTO, "libxenvchan_write", "the peer's ring index is impossible");
  if (libxenvchan_is_open(v->c_) != 1) ThrowErrno(env, EPIPE, "libxenvchan_write", "the peer has closed the channel");
  // All of it in one copy into the ring, one index update and at most one event (xv_vchan_writev).
  std::vector<struct iovec> iov;
  iov.reserve(chunks.size());
  for (uint32_t i = 0; i < chunks.size(); i++) {
    Bytes b = CurrentBytes(env, chunks[i]);
    size_t start = i == 0 ? skip : 0;
    if (start > b.length) break;
    if (b.length > start) iov.push_back({b.data + start, b.length - start});
  }
  int n = xv_vchan_writev(v->c_, iov.data(), static_cast<int>(std::min<size_t>(iov.size(), INT_MAX)));
  if (n < 0) ThrowErrno(env, EPROTO, "libxenvchan_write", "the peer's ring index is impossible");
  return Napi::Number::New(env, n);
}

// arm(h, wantWritable = true) -> live + 4 * readable + 2^23 * writable: the live state and the
// bytes that can be read and written now, as libxenvchan_data_ready/buffer_space give them, which also ask the
// peer to notify us when it writes and (with wantWritable: a write waits for room) when it reads;
// hence the name: call it before sleeping on the fd.
Napi::Value Arm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  bool wantWritable = info.Length() < 2 || info[1].IsUndefined() || info[1].ToBoolean().Value();
  if (v->Corrupt()) ThrowErrno(env, EPROTO, "libxenvchan_data_ready", "the peer's ring index is impossible");
  // One number, not an object: this is called on every wake-up, and an object with three named
  // properties cost more than the ring work itself (lib/native.ts: unpackArm).
  double live = libxenvchan_is_open(v->c_);
  double readable = std::min(libxenvchan_data_ready(v->c_), kArmCountMax);
  double writable = std::min(libxenvchan_buffer_space(v->c_), kArmCountMax);
  if (!wantWritable) xv_vchan_withdraw_read_notify(v->c_);
  return Napi::Number::New(env, live + 4 * readable + 4 * (kArmCountMax + 1.0) * writable);
}

// peek(h) -> {live, readable, writable, oursAsked, peerAsked, eventPending, polling, wakeups,
// events}: the ring and the event channel as they are, without asking for notifications
// (diagnostics). oursAsked/peerAsked are the VCHAN_NOTIFY_* bits each side has asked the other to
// honour (1: tell me when you write, 2: when you read); eventPending: an event waits on the fd;
// wakeups/events: poll callbacks run and events drained so far.
Napi::Value Peek(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  struct libxenvchan* c = v->c_;
  uint32_t rprod = __atomic_load_n(&c->read.shr->prod, __ATOMIC_ACQUIRE),
           rcons = __atomic_load_n(&c->read.shr->cons, __ATOMIC_ACQUIRE);
  uint32_t wprod = __atomic_load_n(&c->write.shr->prod, __ATOMIC_ACQUIRE),
           wcons = __atomic_load_n(&c->write.shr->cons, __ATOMIC_ACQUIRE);
  struct pollfd pfd = {v->hub_->fd(), POLLIN, 0};
  bool fd_ready = ::poll(&pfd, 1, 0) == 1;
  PortHub::Stats st = v->hub_->StatsOf(v->port_);
  Napi::Object o = Napi::Object::New(env);
  o.Set("live", Napi::Number::New(env, libxenvchan_is_open(c)));
  o.Set("readable", Napi::Number::New(env, rprod - rcons));
  o.Set("writable", Napi::Number::New(env, (1u << c->write.order) - (wprod - wcons)));
  o.Set("oursAsked", Napi::Number::New(env, xv_vchan_asked(c, 1)));
  o.Set("peerAsked", Napi::Number::New(env, xv_vchan_asked(c, 0)));
  o.Set("eventPending", Napi::Boolean::New(env, fd_ready));
  o.Set("polling", Napi::Boolean::New(env, st.subscribed));
  o.Set("wakeups", Napi::Number::New(env, static_cast<double>(st.wakes)));
  o.Set("events", Napi::Number::New(env, static_cast<double>(st.events)));
  return o;
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  Napi::Object o = Napi::Object::New(env);
  o.Set("readSize", Napi::Number::New(env, 1u << v->c_->read.order));
  o.Set("writeSize", Napi::Number::New(env, 1u << v->c_->write.order));
  o.Set("port", Napi::Number::New(env, v->c_->event_port));
  o.Set("server", Napi::Boolean::New(env, v->c_->is_server));
  return o;
}

// poll(h, cb | null) -> true when an event came before cb was given (call it soon): cb() after
// every wake-up of the channel's port; events are drained and unmasked first, every port of the
// environment in one turn (they share one event-channel handle). null stops.
Napi::Value Poll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  if (info.Length() < 2 || info[1].IsNull() || info[1].IsUndefined()) {
    v->hub_->Unsubscribe(v->port_);
    return Napi::Boolean::New(env, false);
  }
  return Napi::Boolean::New(env, v->hub_->Subscribe(v->port_, ArgFunction(info, 1, "callback")));
}

Napi::Value Ref(const Napi::CallbackInfo& info) {
  Vchan* v = Unwrap<Vchan>(info);
  v->hub_->Ref(v->port_, info.Length() > 1 && info[1].ToBoolean());
  return info.Env().Undefined();
}

}  // namespace

void InitVchan(Napi::Env env, Napi::Object exports, RegistryPtr* data) {
  ExportFunctions(env, exports, "vchan", data,
                  {{"serverInit", ServerInit},
                   {"clientInit", ClientInit},
                   {"serverInitStatic", ServerInitStatic},
                   {"clientInitStatic", ClientInitStatic},
                   {"close", Close},
                   {"read", Read},
                   {"view", View},
                   {"release", ReleaseView},
                   {"write", Write},
                   {"writev", Writev},
                   {"arm", Arm},
                   {"peek", Peek},
                   {"info", Info},
                   {"poll", Poll},
                   {"ref", Ref},
                   {"hold", Hold},
                   {"unhold", Unhold}});
}

}  // namespace xv
