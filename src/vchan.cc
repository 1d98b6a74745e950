// libxenvchan binding: non-blocking reads into caller buffers, writes from
// them, and a poller on the channel's event fd that drains and unmasks events
// natively before JS is told. The shared ring structure is public, so every
// read and write first checks the peer's index (XSA-86 style): an impossible
// one becomes EPROTO here instead of libxenvchan's silent hang.
#include <fcntl.h>
#include "xen.h"

#include <poll.h>

#include <vector>

#include "common.h"

namespace xv {

namespace {

class Vchan : public Handle {
 public:
  static constexpr napi_type_tag kTag = {0x2d4f6a8b0c1e3a5cULL, 0x7e9f1a2b3c4d5e6fULL};
  static constexpr const char* kName = "Vchan";
  Vchan(std::shared_ptr<Registry> reg, struct libxenvchan* c) : Handle(std::move(reg), &kTag), c_(c) {
    c_->blocking = 0;  // neither init sets it; we never block the event loop
    int fd = libxenvchan_fd_for_select(c_);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  }
  ~Vchan() override { Close(); }
  void Close() override {
    if (closed_) return;
    closed_ = true;
    if (poller_) poller_->Destroy();
    poller_ = nullptr;
    libxenvchan_close(c_);
    c_ = nullptr;
  }
  // Both peer-owned indices must describe at most a full ring.
  bool Corrupt() const {
    uint32_t rsize = 1u << c_->read.order, wsize = 1u << c_->write.order;
    uint32_t rprod = __atomic_load_n(&c_->read.shr->prod, __ATOMIC_ACQUIRE);
    uint32_t rcons = __atomic_load_n(&c_->read.shr->cons, __ATOMIC_ACQUIRE);
    uint32_t wprod = __atomic_load_n(&c_->write.shr->prod, __ATOMIC_ACQUIRE);
    uint32_t wcons = __atomic_load_n(&c_->write.shr->cons, __ATOMIC_ACQUIRE);
    return rprod - rcons > rsize || wprod - wcons > wsize;
  }
  void Drain() {
    for (;;) {
      int p = xenevtchn_pending(c_->event);
      if (p < 0) break;
      events_++;
      xenevtchn_unmask(c_->event, static_cast<evtchn_port_t>(p));
    }
  }
  uint64_t events_ = 0;  // events drained (diagnostics)
  struct libxenvchan* c_;
  Poller* poller_ = nullptr;
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
  uint32_t dom = ArgUint32(info, 0, "domid", 0x7fef);
  std::string path = ArgString(info, 1, "path");
  uint32_t rmin = ArgUint32(info, 2, "readMin", 1u << 20), wmin = ArgUint32(info, 3, "writeMin", 1u << 20);
  errno = 0;
  struct libxenvchan* c = libxenvchan_server_init(nullptr, static_cast<int>(dom), path.c_str(), rmin, wmin);
  if (!c) ThrowErrno(env, errno ? errno : EIO, "libxenvchan_server_init", path);
  return WrapHandle(env, new Vchan(RegistryOf(info), c));
}

Napi::Value ClientInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t dom = ArgUint32(info, 0, "domid", 0x7fef);
  std::string path = ArgString(info, 1, "path");
  errno = 0;
  struct libxenvchan* c = libxenvchan_client_init(nullptr, static_cast<int>(dom), path.c_str());
  if (!c) ThrowErrno(env, errno ? errno : EIO, "libxenvchan_client_init", path);
  // libxenvchan_client_init marks the client live but sends no event: a server waiting for events
  // (ours, or Xen's own) would learn of a client that only reads at its first write, or never.
  // Tell it now; to a server already past that point it is one spurious wake-up.
  xenevtchn_notify(c->event, static_cast<evtchn_port_t>(c->event_port));
  return WrapHandle(env, new Vchan(RegistryOf(info), c));
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Unwrap<Vchan>(info, true)->Close();
  return info.Env().Undefined();
}

// read(h, target, offset, length) -> bytes read; 0 = nothing yet; -1 = peer gone and ring empty.
Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  auto [ptr, len] = BufferRange(info);
  if (v->Corrupt()) ThrowErrno(env, EPROTO, "libxenvchan_read", "the peer's ring index is impossible");
  int n = libxenvchan_read(v->c_, ptr, len);
  if (n < 0) {
    if (errno == EPROTO) ThrowErrno(env, EPROTO, "libxenvchan_read", "the peer's ring index is impossible");
    return Napi::Number::New(env, -1);
  }
  return Napi::Number::New(env, n);
}

// write(h, source, offset, length) -> bytes written; 0 = ring full. Throws EPIPE once the peer is gone.
Napi::Value Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  auto [ptr, len] = BufferRange(info);
  if (v->Corrupt()) ThrowErrno(env, EPROTO, "libxenvchan_write", "the peer's ring index is impossible");
  if (libxenvchan_is_open(v->c_) != 1) ThrowErrno(env, EPIPE, "libxenvchan_write", "the peer has closed the channel");
  int n = libxenvchan_write(v->c_, ptr, len);
  if (n < 0) ThrowErrno(env, errno == EPROTO ? EPROTO : EPIPE, "libxenvchan_write");
  return Napi::Number::New(env, n);
}

// writev(h, [chunks], startOffset) -> total bytes written from the chunk list (first chunk from startOffset).
Napi::Value Writev(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  if (info.Length() < 2 || !info[1].IsArray()) throw CodedError(env, "ERR_INVALID_ARG_TYPE", "The \"chunks\" argument must be an array", true);
  Napi::Array chunks = info[1].As<Napi::Array>();
  uint32_t skip = info.Length() > 2 ? ArgUint32(info, 2, "offset") : 0;
  if (v->Corrupt()) ThrowErrno(env, EPROTO, "libxenvchan_write", "the peer's ring index is impossible");
  if (libxenvchan_is_open(v->c_) != 1) ThrowErrno(env, EPIPE, "libxenvchan_write", "the peer has closed the channel");
  double total = 0;
  for (uint32_t i = 0; i < chunks.Length(); i++) {
    Napi::Value cv = chunks.Get(i);
    if (!cv.IsTypedArray() || cv.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw CodedError(env, "ERR_INVALID_ARG_TYPE", "Every chunk must be a Buffer or Uint8Array", true);
    Napi::Uint8Array b = cv.As<Napi::Uint8Array>();
    size_t start = i == 0 ? skip : 0;
    if (start > b.ByteLength()) break;
    size_t want = b.ByteLength() - start;
    if (!want) continue;
    int n = libxenvchan_write(v->c_, b.Data() + start, want);
    if (n < 0) ThrowErrno(env, errno == EPROTO ? EPROTO : EPIPE, "libxenvchan_write");
    total += n;
    if (static_cast<size_t>(n) < want) break;
  }
  return Napi::Number::New(env, total);
}

// state(h) -> [isOpen, dataReady, bufferSpace]; dataReady/bufferSpace also ask the peer to notify us.
Napi::Value State(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  if (v->Corrupt()) ThrowErrno(env, EPROTO, "libxenvchan_data_ready", "the peer's ring index is impossible");
  Napi::Array a = Napi::Array::New(env, 3);
  a.Set(0u, Napi::Number::New(env, libxenvchan_is_open(v->c_)));
  a.Set(1u, Napi::Number::New(env, libxenvchan_data_ready(v->c_)));
  a.Set(2u, Napi::Number::New(env, libxenvchan_buffer_space(v->c_)));
  return a;
}

// peek(h) -> [isOpen, bytesReadable, bytesWritable, oursAsked, peerAsked, eventPending, polling,
// wakeups, events]: the ring and the event channel as they are, without asking for notifications
// (diagnostics). oursAsked/peerAsked are the VCHAN_NOTIFY_* bits each side has asked the other to
// honour (1: tell me when you write, 2: when you read); eventPending: an event waits on the fd;
// wakeups/events: poll callbacks run and events drained so far.
Napi::Value Peek(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  struct libxenvchan* c = v->c_;
  uint32_t rprod = __atomic_load_n(&c->read.shr->prod, __ATOMIC_ACQUIRE), rcons = __atomic_load_n(&c->read.shr->cons, __ATOMIC_ACQUIRE);
  uint32_t wprod = __atomic_load_n(&c->write.shr->prod, __ATOMIC_ACQUIRE), wcons = __atomic_load_n(&c->write.shr->cons, __ATOMIC_ACQUIRE);
  uint8_t* ours = c->is_server ? &c->ring->cli_notify : &c->ring->srv_notify;
  uint8_t* theirs = c->is_server ? &c->ring->srv_notify : &c->ring->cli_notify;
  struct pollfd pfd = {libxenvchan_fd_for_select(c), POLLIN, 0};
  bool fd_ready = ::poll(&pfd, 1, 0) == 1;
  Napi::Array a = Napi::Array::New(env, 9);
  a.Set(0u, Napi::Number::New(env, libxenvchan_is_open(c)));
  a.Set(1u, Napi::Number::New(env, rprod - rcons));
  a.Set(2u, Napi::Number::New(env, (1u << c->write.order) - (wprod - wcons)));
  a.Set(3u, Napi::Number::New(env, __atomic_load_n(ours, __ATOMIC_ACQUIRE)));
  a.Set(4u, Napi::Number::New(env, __atomic_load_n(theirs, __ATOMIC_ACQUIRE)));
  a.Set(5u, Napi::Boolean::New(env, fd_ready));
  a.Set(6u, Napi::Boolean::New(env, v->poller_ && v->poller_->active()));
  a.Set(7u, Napi::Number::New(env, v->poller_ ? static_cast<double>(v->poller_->wakes()) : 0));
  a.Set(8u, Napi::Number::New(env, static_cast<double>(v->events_)));
  return a;
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

// poll(h, cb | null): cb() after every wake-up; events are drained and unmasked first.
Napi::Value Poll(const Napi::CallbackInfo& info) {
  Vchan* v = Unwrap<Vchan>(info);
  return PollArg(info, v->poller_, libxenvchan_fd_for_select(v->c_), v->registry(), [v](Poller* p) {
    p->before = [v]() {
      if (!v->closed()) v->Drain();
    };
  });
}

Napi::Value Ref(const Napi::CallbackInfo& info) {
  Vchan* v = Unwrap<Vchan>(info);
  if (v->poller_) v->poller_->Ref(info.Length() > 1 && info[1].ToBoolean());
  return info.Env().Undefined();
}

}  // namespace

void InitVchan(Napi::Env env, Napi::Object exports, RegistryPtr* data) {
  ExportFunctions(env, exports, "vchan", data,
                  {{"serverInit", ServerInit},
                   {"clientInit", ClientInit},
                   {"close", Close},
                   {"read", Read},
                   {"write", Write},
                   {"writev", Writev},
                   {"state", State},
                   {"peek", Peek},
                   {"info", Info},
                   {"poll", Poll},
                   {"ref", Ref}});
}

}  // namespace xv
