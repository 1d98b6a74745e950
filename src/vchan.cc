// libxenvchan binding: non-blocking reads into caller buffers, writes from
// them, and a poller on the channel's event fd that drains and unmasks events
// natively before JS is told. The shared ring structure is public, so every
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

namespace xv {

namespace {

// Bits of cli_notify the protocol does not use (it defines 1 and 2, and Xen's libxenvchan only ever
// sets or clears those two, so others pass through untouched). kProbeBit: set through one mapping and
// looked for through the other, it tells whether two mappings are of the same page. kSingleUse: set
// by our servers when they offer a channel: "do not reuse this channel after its client".
constexpr uint8_t kProbeBit = 0x80, kSingleUse = 0x40;

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
  // Both peer-owned indices must describe at most a full ring, and the peer's live byte must hold
  // one of the protocol's states (0 closed, 1 connected, 2 waiting): anything else was written by
  // a peer that breaks the protocol, which libxenvchan would take for a close.
  bool Corrupt() const {
    uint8_t peer_live = __atomic_load_n(c_->is_server ? &c_->ring->cli_live : &c_->ring->srv_live, __ATOMIC_ACQUIRE);
    if (peer_live > XV_LIVE_WAITING) return true;
    uint32_t rsize = 1u << c_->read.order, wsize = 1u << c_->write.order;
    uint32_t rprod = __atomic_load_n(&c_->read.shr->prod, __ATOMIC_ACQUIRE);
    uint32_t rcons = __atomic_load_n(&c_->read.shr->cons, __ATOMIC_ACQUIRE);
    uint32_t wprod = __atomic_load_n(&c_->write.shr->prod, __ATOMIC_ACQUIRE);
    uint32_t wcons = __atomic_load_n(&c_->write.shr->cons, __ATOMIC_ACQUIRE);
    return rprod - rcons > rsize || wprod - wcons > wsize;
  }
  // The channel's event handle has one port, and the kernel masks a port when it queues it, so a
  // wake-up carries at most one event until we unmask: one read, not a second one to hear EAGAIN
  // (a syscall per wake-up, which a PV domain pays through Xen). Anything more left queued keeps
  // the fd readable and wakes us again (level-triggered), as libxenvchan_wait's single read relies on.
  void Drain() {
    int p = xenevtchn_pending(c_->event);
    if (p < 0) return;
    events_++;
    xenevtchn_unmask(c_->event, static_cast<evtchn_port_t>(p));
  }
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
  uint32_t dom = ArgUint32(info, 0, "domid", kMaxDomid);
  std::string path = ArgString(info, 1, "path");
  // At most a ring of the largest order; lib/ supplies the default (DEFAULT_RING_SIZE).
  constexpr uint32_t kMaxRing = 1u << XV_RING_MAX_ORDER;
  uint32_t rmin = ArgUint32(info, 2, "readMin", kMaxRing), wmin = ArgUint32(info, 3, "writeMin", kMaxRing);
  errno = 0;
  struct libxenvchan* c = libxenvchan_server_init(nullptr, static_cast<int>(dom), path.c_str(), rmin, wmin);
  if (!c) ThrowErrno(env, errno ? errno : EIO, "libxenvchan_server_init", path);
  // A VchanServer offers a fresh channel for each client: mark this one not to be reused (see Claim).
  __atomic_fetch_or(&c->ring->cli_notify, kSingleUse, __ATOMIC_SEQ_CST);
  return WrapHandle(env, new Vchan(RegistryOf(info), c));
}

// ---- Connecting: claim the channel before libxenvchan attaches to it ----
//
// libxenvchan_client_init maps whatever ring-ref xenstore names and sets cli_live = 1 unconditionally,
// so a client that reads a stale entry (the previous client's channel, still published while the
// server winds it down) or a busy one attaches to a channel someone else holds, and bytes reach the
// wrong stream. So first: map the control page ourselves and compare-and-swap cli_live to 1. Only the
// one client that wins the swap goes on; then libxenvchan attaches, and a probe bit checks that it
// attached to the very page we claimed. Any failure after the claim gives it back (see GiveBack).
//
// Which channels may be claimed: one offered and never connected (cli_live 2); and one whose client
// has left (cli_live 0) while its server lives on (srv_live 1), unless the server marked it single-use.
// Xen's servers may serve successive clients on one channel (vchan-socket-proxy in server mode waits
// on the same page for the next client); ours never do: a VchanServer offers a fresh channel for
// each client, so a closed channel of ours must never be taken over.

// The ring layout a server published: orders the protocol knows, rings that do not overlap each
// other or the grant list.
bool LayoutOk(unsigned lo, unsigned ro) {
  constexpr unsigned kMin = XV_RING_MIN_ORDER, kMax = XV_RING_MAX_ORDER, kPageShift = XV_PAGE_ORDER;
  if (lo < kMin || lo > kMax || ro < kMin || ro > kMax) return false;
  if (lo < kPageShift && ro < kPageShift && lo == ro) return false;
  auto pages = [](unsigned o) { return o >= kPageShift ? 1u << (o - kPageShift) : 0u; };
  auto in_page_offset = [](unsigned o) { return XV_INPAGE_RING_OFFSET(o); };
  uint32_t grants_end = offsetof(struct vchan_interface, grants) + 4 * (pages(lo) + pages(ro));
  uint32_t first_ring = XV_PAGE_SIZE;
  if (lo < kPageShift) first_ring = in_page_offset(lo);
  if (ro < kPageShift && in_page_offset(ro) < first_ring) first_ring = in_page_offset(ro);
  return grants_end <= first_ring;
}

class Claim {
 public:
  Claim(uint32_t dom, uint32_t port) : dom_(dom), port_(port) {}
  ~Claim() {
    if (claimed_) GiveBack();
    if (page_) xengnttab_unmap(gt_, page_, 1);
    if (gt_) xengnttab_close(gt_);
  }
  // 0, or an errno: of the mapping (the entry is stale or not ours), EPROTO (the page is not a vchan),
  // EBUSY (another client holds it, or its client has gone and the server has not offered it again).
  int Take(uint32_t ref) {
    gt_ = xengnttab_open(nullptr, 0);
    if (!gt_) return errno ? errno : EIO;
    page_ = static_cast<struct vchan_interface*>(xengnttab_map_grant_ref(gt_, dom_, ref, PROT_READ | PROT_WRITE));
    if (!page_) return errno ? errno : EIO;
    unsigned lo = __atomic_load_n(&page_->left_order, __ATOMIC_ACQUIRE);
    unsigned ro = __atomic_load_n(&page_->right_order, __ATOMIC_ACQUIRE);
    if (!LayoutOk(lo, ro)) return EPROTO;
    uint8_t expected = __atomic_load_n(&page_->cli_live, __ATOMIC_ACQUIRE);
    if (expected > XV_LIVE_WAITING) {  // no state of the protocol: a broken or hostile server
      seen_ = expected;
      return EPROTO;
    }
    bool reusable = expected == XV_LIVE_CLOSED && __atomic_load_n(&page_->srv_live, __ATOMIC_ACQUIRE) == 1 &&
                    !(__atomic_load_n(&page_->cli_notify, __ATOMIC_ACQUIRE) & kSingleUse);
    before_ = expected;
    if ((expected == XV_LIVE_WAITING || reusable) &&
        __atomic_compare_exchange_n(&page_->cli_live, &expected, XV_LIVE_OPEN, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST)) {
      claimed_ = true;
      return 0;
    }
    seen_ = expected;
    return EBUSY;
  }
  bool SamePage(struct vchan_interface* other) {
    __atomic_fetch_or(&page_->cli_notify, kProbeBit, __ATOMIC_SEQ_CST);
    bool same = __atomic_load_n(&other->cli_notify, __ATOMIC_SEQ_CST) & kProbeBit;
    __atomic_fetch_and(&page_->cli_notify, static_cast<uint8_t>(~kProbeBit), __ATOMIC_SEQ_CST);
    return same;
  }
  void Keep() { claimed_ = false; }    // libxenvchan holds the channel now
  void Restore() { restore_ = true; }  // give it back untouched (see GiveBack)
  uint8_t seen() const { return seen_; }

 private:
  // How a claim is given back when the attach fails after it:
  //  - Untouched (the entry was gone, or our page is not the one it names): the channel goes back as
  //    we found it, still offered. Grant references are reused, so a ref read from an entry just
  //    withdrawn can name another client's freshly offered channel by the time it is mapped; that
  //    channel must stay offered to its own client, not look like one a client came to and left.
  //  - Otherwise: cli_live 0, "a client came and went", and the server offers a fresh channel.
  // An event either way: a server that saw the claim looks again.
  void GiveBack() {
    uint8_t now = __atomic_load_n(&page_->cli_live, __ATOMIC_ACQUIRE);
    // (A failed libxenvchan_client_init that had mapped the page cleared the byte already with its
    // unmap notification: then 0 is put back too.)
    if (restore_ ? (now == XV_LIVE_OPEN || now == XV_LIVE_CLOSED) : now == XV_LIVE_OPEN)
      __atomic_compare_exchange_n(&page_->cli_live, &now, restore_ ? before_ : XV_LIVE_CLOSED, false, __ATOMIC_SEQ_CST,
                                  __ATOMIC_SEQ_CST);
    xenevtchn_handle* ev = xenevtchn_open(nullptr, 0);
    if (!ev) return;
    xenevtchn_port_or_error_t local = xenevtchn_bind_interdomain(ev, dom_, port_);
    if (local >= 0) {
      xenevtchn_notify(ev, static_cast<evtchn_port_t>(local));
      xenevtchn_unbind(ev, static_cast<evtchn_port_t>(local));
    }
    xenevtchn_close(ev);
  }
  uint32_t dom_, port_;
  xengnttab_handle* gt_ = nullptr;
  struct vchan_interface* page_ = nullptr;
  bool claimed_ = false;
  uint8_t seen_ = 0;
  uint8_t before_ = XV_LIVE_WAITING;  // cli_live as we found it
  bool restore_ = false;
};

// clientInit(domid, path, ringRef, port): ringRef and port as the caller read them from xenstore.
// Throws errno errors by step: syscall "xengnttab_map_grant_ref" (the entry names no page we may map),
// "vchan_claim" with EPROTO (not a vchan layout) or EBUSY (taken), "libxenvchan_client_init" (its own
// errno, after the claim was given back), and EAGAIN when the entry changed under us (try again).
Napi::Value ClientInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t dom = ArgUint32(info, 0, "domid", kMaxDomid);
  std::string path = ArgString(info, 1, "path");
  uint32_t ref = ArgUint32(info, 2, "ringRef"), port = ArgUint32(info, 3, "port");
  Claim claim(dom, port);
  if (int e = claim.Take(ref)) {
    if (e == EPROTO)
      ThrowErrno(env, e, "vchan_claim",
                 "the page at " + path + "/ring-ref is not a vchan control page (impossible orders or live state)");
    if (e == EBUSY)
      ThrowErrno(env, e, "vchan_claim",
                 "the channel at " + path + " is not offered (cli_live=" + std::to_string(claim.seen()) + ")");
    ThrowErrno(env, e, "xengnttab_map_grant_ref", path + "/ring-ref");
  }
  errno = 0;
  struct libxenvchan* c = libxenvchan_client_init(nullptr, static_cast<int>(dom), path.c_str());
  if (!c) {
    int e = errno ? errno : EIO;
    if (e == ENOENT || e == EACCES) claim.Restore();  // the entry went: ours may be another's page
    ThrowErrno(env, e, "libxenvchan_client_init", path);
  }
  if (!claim.SamePage(c->ring)) {
    claim.Restore();  // we claimed a page the entry no longer names
    libxenvchan_close(c);
    ThrowErrno(env, EAGAIN, "libxenvchan_client_init",
               "the channel at " + path + " was offered again while connecting");
  }
  claim.Keep();
  return WrapHandle(env, new Vchan(RegistryOf(info), c));
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Vchan* v = Unwrap<Vchan>(info, true);
  v->DetachView();  // before the ring goes
  v->Close();
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

// The VCHAN_NOTIFY_* bits we have asked the peer to honour (it clears one as it notifies), and
// those it has asked of us: each side writes its requests into the other's byte.
uint8_t* OursAsked(struct libxenvchan* c) { return c->is_server ? &c->ring->cli_notify : &c->ring->srv_notify; }
uint8_t* PeerAsked(struct libxenvchan* c) { return c->is_server ? &c->ring->srv_notify : &c->ring->cli_notify; }

// Withdraws our request that the peer notify us when it reads (VCHAN_NOTIFY_READ). libxenvchan's
// non-blocking write and buffer_space always leave it set, so without this every message a stream
// writes costs the peer a notify and us a wake-up (a pending read, an unmask, a JS callback) once
// the peer has read it, whether or not anything waits for room: on a request/response channel that
// doubled the events. A stream asks again (arm with wantWritable) only while a write waits for room.
// A peer that reads between our request and this withdrawal notifies once more: harmless.
void WithdrawReadNotify(struct libxenvchan* c) {
  __atomic_fetch_and(OursAsked(c), static_cast<uint8_t>(~VCHAN_NOTIFY_READ), __ATOMIC_SEQ_CST);
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

// arm(h, wantWritable = true) -> {live, readable, writable}: the live state and the bytes that can
// be read and written now, as libxenvchan_data_ready/buffer_space give them, which also ask the
// peer to notify us when it writes and (with wantWritable: a write waits for room) when it reads;
// hence the name: call it before sleeping on the fd.
Napi::Value Arm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Vchan* v = Unwrap<Vchan>(info);
  bool wantWritable = info.Length() < 2 || info[1].IsUndefined() || info[1].ToBoolean().Value();
  if (v->Corrupt()) ThrowErrno(env, EPROTO, "libxenvchan_data_ready", "the peer's ring index is impossible");
  Napi::Object o = Napi::Object::New(env);
  o.Set("live", Napi::Number::New(env, libxenvchan_is_open(v->c_)));
  o.Set("readable", Napi::Number::New(env, libxenvchan_data_ready(v->c_)));
  o.Set("writable", Napi::Number::New(env, libxenvchan_buffer_space(v->c_)));
  if (!wantWritable) WithdrawReadNotify(v->c_);
  return o;
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
  struct pollfd pfd = {libxenvchan_fd_for_select(c), POLLIN, 0};
  bool fd_ready = ::poll(&pfd, 1, 0) == 1;
  Napi::Object o = Napi::Object::New(env);
  o.Set("live", Napi::Number::New(env, libxenvchan_is_open(c)));
  o.Set("readable", Napi::Number::New(env, rprod - rcons));
  o.Set("writable", Napi::Number::New(env, (1u << c->write.order) - (wprod - wcons)));
  o.Set("oursAsked", Napi::Number::New(env, __atomic_load_n(OursAsked(c), __ATOMIC_ACQUIRE)));
  o.Set("peerAsked", Napi::Number::New(env, __atomic_load_n(PeerAsked(c), __ATOMIC_ACQUIRE)));
  o.Set("eventPending", Napi::Boolean::New(env, fd_ready));
  o.Set("polling", Napi::Boolean::New(env, v->poller_ && v->poller_->active()));
  o.Set("wakeups", Napi::Number::New(env, v->poller_ ? static_cast<double>(v->poller_->wakes()) : 0));
  o.Set("events", Napi::Number::New(env, static_cast<double>(v->events_)));
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
                   {"view", View},
                   {"release", ReleaseView},
                   {"write", Write},
                   {"writev", Writev},
                   {"arm", Arm},
                   {"peek", Peek},
                   {"info", Info},
                   {"poll", Poll},
                   {"ref", Ref}});
}

}  // namespace xv
