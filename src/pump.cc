// The PVCalls backend's data pump: a socket's data ring (struct pvcalls_data_intf and its data
// pages, mapped from the frontend) <-> the socket's file descriptor, in C++. The socket's bytes
// are read straight into the `in` half and sent straight from the `out` half (no copy in between,
// no JavaScript per chunk); the fd's own wake-ups never reach JS. JS calls run() when the
// frontend's event comes, and hears from the poller only when the frontend corrupted its indexes.
//
// Every index the frontend writes is checked before it is used (a claim of more bytes than a half
// holds is corruption: the pump stops and says why); every access to the ring is masked to it.
// The ring's ArrayBuffers are checked before each step: once JS unmaps them (detached), the pump
// stops touching them.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "common.h"
#include "evtchn.h"
#include "xen.h"

namespace xv {

namespace {

// struct pvcalls_data_intf (xen/include/public/io/pvcalls.h): byte offsets on the indexes page.
constexpr size_t kInCons = 0, kInProd = 4, kInError = 8, kOutCons = 64, kOutProd = 68, kOutError = 72;
constexpr size_t kIndexesBytes = 76;
constexpr uint32_t kMaxOrder = 19;  // as lib/pvcalls/wire.ts MAX_RING_ORDER: a half is 2^(order+11) bytes

class Pump : public Handle {
 public:
  static constexpr napi_type_tag kTag = {0x5b1f7c2e94a3d608ULL, 0xe27d4c91b3a86f15ULL};
  static constexpr const char* kName = "PvcallsPump";
  Pump(std::shared_ptr<Registry> reg, napi_env env) : Handle(std::move(reg), &kTag), env_(env) {}
  ~Pump() override { Close(); }
  void Close() override {
    if (closed_) return;
    closed_ = true;
    if (ev_) ClearNativePort(ev_, port_, this);
    StopFd();
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    ReleaseRefs();
  }

  // One step both ways; false when nothing more is to be done by JS, true when JS must look
  // (the frontend corrupted its indexes: message() says how).
  bool Step();
  // Step() from libuv (the fd's poller, the frontend's event), where no handle scope is open.
  bool StepFromLibuv();
  // Takes the bytes the frontend wrote and the pump has not sent (none if the indexes are corrupt),
  // and hands the fd to the caller (-1 if the socket failed: it is closed then). Closes the pump.
  std::pair<std::string, int> Detach();

  napi_env env_;
  napi_ref ev_ref_ = nullptr, idx_ref_ = nullptr, data_ref_ = nullptr;
  Handle* ev_ = nullptr;
  uint32_t port_ = 0;
  uint8_t* idx_ = nullptr;
  uint8_t* in_ = nullptr;
  uint8_t* out_ = nullptr;
  uint32_t size_ = 0;  // bytes in each half
  int fd_ = -1;
  Poller* poller_ = nullptr;
  bool eof_ = false, failed_ = false, corrupt_ = false;
  // Whether the socket may take (writable_) or have (readable_) bytes: false from an EAGAIN until
  // the fd's poller says otherwise, so that a step on the frontend's event does not ask the socket
  // again only to hear EAGAIN (one system call per event in a one-way transfer).
  bool readable_ = true, writable_ = true;
  std::string message_;
  uint64_t bytes_in_ = 0, bytes_out_ = 0, notifies_ = 0, steps_ = 0;

 private:
  uint32_t Load(size_t off) const { return __atomic_load_n(reinterpret_cast<uint32_t*>(idx_ + off), __ATOMIC_ACQUIRE); }
  void Store(size_t off, uint32_t v) { __atomic_store_n(reinterpret_cast<uint32_t*>(idx_ + off), v, __ATOMIC_RELEASE); }
  bool Mapped();
  bool Corrupt(const char* half, uint32_t prod, uint32_t cons);
  void Fail(int err);
  void StopFd() {
    if (poller_) poller_->Destroy();
    poller_ = nullptr;
  }
  void ReleaseRefs() {
    for (napi_ref* r : {&ev_ref_, &idx_ref_, &data_ref_}) {
      if (*r) napi_delete_reference(env_, *r);
      *r = nullptr;
    }
  }
};

// The ring's pages are still mapped: JS unmapping them detaches their ArrayBuffers.
bool Pump::Mapped() {
  for (napi_ref r : {idx_ref_, data_ref_}) {
    napi_value v;
    bool detached = true;
    if (!r || napi_get_reference_value(env_, r, &v) != napi_ok || v == nullptr ||
        napi_is_detached_arraybuffer(env_, v, &detached) != napi_ok || detached)
      return false;
  }
  return true;
}

bool Pump::Corrupt(const char* half, uint32_t prod, uint32_t cons) {
  corrupt_ = true;
  message_ = std::string("the ") + half + " ring claims " + std::to_string(prod - cons) + " bytes queued (prod " +
             std::to_string(prod) + ", cons " + std::to_string(cons) + "); it holds " + std::to_string(size_);
  // Stopped, not destroyed: the poller calls JS next, which asks run() what happened.
  if (poller_) poller_->SetEvents(0);
  return true;
}

// The socket failed: both directions report it to the frontend (a negative errno, as Linux's
// backend does), and what the frontend still writes is dropped, as writes to a dead socket are.
void Pump::Fail(int err) {
  failed_ = true;
  Store(kOutError, static_cast<uint32_t>(-err));
  Store(kInError, static_cast<uint32_t>(-err));
}

bool Pump::Step() {
  if (closed_ || corrupt_) return corrupt_;
  if (!Mapped()) {
    // Unmapped under the pump (the frontend's teardown runs): nothing of it may be touched again.
    StopFd();
    return false;
  }
  steps_++;
  bool moved = false, want_read = false, want_write = false;
  const uint32_t mask = size_ - 1;
  // out -> the socket, sent from the ring's own pages.
  for (;;) {
    uint32_t prod = Load(kOutProd), cons = Load(kOutCons), queued = prod - cons;
    if (queued > size_) return Corrupt("out", prod, cons);
    if (queued == 0) break;
    if (failed_) {
      Store(kOutCons, prod);
      moved = true;
      break;
    }
    if (!writable_) {
      want_write = true;
      break;
    }
    uint32_t at = cons & mask, first = std::min(queued, size_ - at);
    struct iovec iov[2] = {{out_ + at, first}, {out_, queued - first}};
    struct msghdr m = {};
    m.msg_iov = iov;
    m.msg_iovlen = queued > first ? 2 : 1;
    ssize_t n = sendmsg(fd_, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      Store(kOutCons, cons + static_cast<uint32_t>(n));
      bytes_out_ += n;
      moved = true;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      writable_ = false;
      want_write = true;
      break;
    }
    Fail(n < 0 ? errno : EIO);
    moved = true;
  }
  // The socket -> in, read straight into the ring's free room.
  while (!eof_ && !failed_) {
    uint32_t prod = Load(kInProd), cons = Load(kInCons), queued = prod - cons;
    if (queued > size_) return Corrupt("in", prod, cons);
    uint32_t room = size_ - queued;
    if (room == 0) break;  // the frontend's event after it reads brings us back
    if (!readable_) {
      want_read = true;
      break;
    }
    uint32_t at = prod & mask, first = std::min(room, size_ - at);
    struct iovec iov[2] = {{in_ + at, first}, {in_, room - first}};
    ssize_t n = readv(fd_, iov, room > first ? 2 : 1);
    if (n > 0) {
      Store(kInProd, prod + static_cast<uint32_t>(n));
      bytes_in_ += n;
      moved = true;
      continue;
    }
    if (n == 0) {
      // The remote end closed: in_error after its last byte, which is in the ring already.
      eof_ = true;
      Store(kInError, static_cast<uint32_t>(-ENOTCONN));
      moved = true;
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      readable_ = false;
      want_read = true;
      break;
    }
    Fail(errno);
    moved = true;
  }
  if (moved) {
    xenevtchn_handle* xce = ev_ ? EvtchnOf(ev_) : nullptr;
    if (xce && xenevtchn_notify(xce, port_) == 0) notifies_++;  // a failure: the domain is going
  }
  if (poller_) {
    int events = (want_read ? UV_READABLE : 0) | (want_write ? UV_WRITABLE : 0);
    if (poller_->SetEvents(events) != 0) {
      // libuv cannot watch the fd (it never fails for a socket): report it as a socket failure
      // rather than stall.
      if (!failed_) Fail(EIO);
      poller_->SetEvents(0);
      xenevtchn_handle* xce = ev_ ? EvtchnOf(ev_) : nullptr;
      if (xce) xenevtchn_notify(xce, port_);
    }
  }
  return false;
}

bool Pump::StepFromLibuv() {
  napi_handle_scope scope;
  if (napi_open_handle_scope(env_, &scope) != napi_ok) return false;
  bool js = Step();
  napi_close_handle_scope(env_, scope);
  return js;
}

std::pair<std::string, int> Pump::Detach() {
  std::string rest;
  int fd = -1;
  if (!closed_ && Mapped() && !corrupt_) {
    uint32_t prod = Load(kOutProd), cons = Load(kOutCons), queued = prod - cons;
    if (queued <= size_) {
      uint32_t at = cons & (size_ - 1), first = std::min(queued, size_ - at);
      rest.assign(reinterpret_cast<char*>(out_ + at), first);
      rest.append(reinterpret_cast<char*>(out_), queued - first);
      Store(kOutCons, prod);
    }
  }
  if (!failed_) {
    fd = fd_;
    fd_ = -1;
  }
  Close();
  return {rest, fd};
}

Napi::ArrayBuffer ArgArrayBuffer(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsArrayBuffer())
    throw CodedError(info.Env(), "ERR_INVALID_ARG_TYPE",
                     std::string("The \"") + name + "\" argument must be an instance of ArrayBuffer", true);
  Napi::ArrayBuffer ab = info[i].As<Napi::ArrayBuffer>();
  if (ab.IsDetached())
    throw CodedError(info.Env(), "ERR_INVALID_STATE", std::string("The \"") + name + "\" ArrayBuffer is detached");
  return ab;
}

// open(evtchn, port, indexes, data, order, fd, onCorrupt): a pump over the data ring of ORDER
// (INDEXES: the indexes page, DATA: the data pages in order) and a duplicate of the socket FD
// (close-on-exec, non-blocking; the caller closes its own). It runs once at once.
Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Handle* ev = UnwrapEvtchn(info);
  uint32_t port = ArgUint32(info, 1, "port");
  Napi::ArrayBuffer idx = ArgArrayBuffer(info, 2, "indexes");
  Napi::ArrayBuffer data = ArgArrayBuffer(info, 3, "data");
  uint32_t order = ArgUint32(info, 4, "order", kMaxOrder);
  uint32_t fd = ArgUint32(info, 5, "fd", INT32_MAX);
  Napi::Function cb = ArgFunction(info, 6, "onCorrupt");
  size_t total = size_t{1} << (order + 12);
  if (idx.ByteLength() < kIndexesBytes)
    throw CodedError(env, "ERR_OUT_OF_RANGE", "The indexes page is smaller than struct pvcalls_data_intf", false, true);
  if (data.ByteLength() < total)
    throw CodedError(env, "ERR_OUT_OF_RANGE",
                     "A data ring of order " + std::to_string(order) + " needs " + std::to_string(total) + " bytes",
                     false, true);
  int own = fcntl(static_cast<int>(fd), F_DUPFD_CLOEXEC, 0);
  if (own < 0) ThrowErrno(env, errno, "fcntl(F_DUPFD_CLOEXEC)");
  int type = 0;
  socklen_t tl = sizeof type;
  if (getsockopt(own, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 || type != SOCK_STREAM) {
    int err = errno;
    close(own);
    ThrowErrno(env, type == 0 ? err : ENOTSOCK, "getsockopt(SO_TYPE)", "the pump needs a stream socket");
  }
  fcntl(own, F_SETFL, fcntl(own, F_GETFL) | O_NONBLOCK);
  Pump* p = new Pump(RegistryOf(info), env);
  p->fd_ = own;
  Napi::Object obj = WrapHandle(env, p);  // from here the handle owns the pump (and the fd)
  p->ev_ = ev;
  p->port_ = port;
  p->idx_ = static_cast<uint8_t*>(idx.Data());
  p->in_ = static_cast<uint8_t*>(data.Data());
  p->size_ = static_cast<uint32_t>(total / 2);
  p->out_ = p->in_ + p->size_;
  if (napi_create_reference(env, info[0], 1, &p->ev_ref_) != napi_ok ||
      napi_create_reference(env, idx, 1, &p->idx_ref_) != napi_ok ||
      napi_create_reference(env, data, 1, &p->data_ref_) != napi_ok) {
    p->Close();
    throw Napi::Error::New(env, "could not keep the pump's buffers");
  }
  try {
    p->poller_ = new Poller(env, own, cb, &p->registry());
  } catch (...) {
    p->Close();
    throw;
  }
  // The fd's readiness and the frontend's events run a step in C++, with no JS in between: JS
  // hears only of corruption (the poller's callback; run() on its 'event' if one reaches it).
  p->poller_->native = [p](int status, int events) {
    // An error (status < 0) is the socket's to report: let both calls meet it.
    if (status < 0 || (events & UV_READABLE)) p->readable_ = true;
    if (status < 0 || (events & UV_WRITABLE)) p->writable_ = true;
    return p->StepFromLibuv();
  };
  SetNativePort(ev, port, p, [p] { return p->StepFromLibuv(); });
  p->Step();
  return obj;
}

// run(pump): one step both ways (on the frontend's event); the corruption found, or undefined.
Napi::Value Run(const Napi::CallbackInfo& info) {
  Pump* p = Unwrap<Pump>(info, true);
  if (p->Step()) return Napi::String::New(info.Env(), p->message_);
  return info.Env().Undefined();
}

// detach(pump): { rest: Buffer, fd: number }; the pump is closed, the fd (if >= 0) the caller's.
Napi::Value Detach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Pump* p = Unwrap<Pump>(info, true);
  auto [rest, fd] = p->Detach();
  Napi::Object out = Napi::Object::New(env);
  out.Set("rest", Napi::Buffer<char>::Copy(env, rest.data(), rest.size()));
  out.Set("fd", Napi::Number::New(env, fd));
  return out;
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Unwrap<Pump>(info, true)->Close();
  return info.Env().Undefined();
}

Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Pump* p = Unwrap<Pump>(info, true);
  Napi::Object o = Napi::Object::New(env);
  o.Set("bytesIn", Napi::Number::New(env, static_cast<double>(p->bytes_in_)));
  o.Set("bytesOut", Napi::Number::New(env, static_cast<double>(p->bytes_out_)));
  o.Set("notifies", Napi::Number::New(env, static_cast<double>(p->notifies_)));
  o.Set("steps", Napi::Number::New(env, static_cast<double>(p->steps_)));
  o.Set("eof", Napi::Boolean::New(env, p->eof_));
  o.Set("failed", Napi::Boolean::New(env, p->failed_));
  o.Set("open", Napi::Boolean::New(env, !p->closed()));
  return o;
}

}  // namespace

void InitPump(Napi::Env env, Napi::Object exports, RegistryPtr* data) {
  ExportFunctions(env, exports, "pump", data,
                  {{"open", Open}, {"run", Run}, {"detach", Detach}, {"close", Close}, {"stats", Stats}});
}

}  // namespace xv
