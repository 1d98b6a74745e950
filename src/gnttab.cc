// libxengnttab / libxengntshr binding. Shared or mapped pages are handed to JS
// as external ArrayBuffers (zero copy). An explicit unmap/unshare detaches the
// ArrayBuffer first, so every view over it drops to length 0 before the memory
// goes; a forgotten region is released by the ArrayBuffer's finalizer.
#include <sys/mman.h>
#include "xen.h"

#include <cstring>
#include <unordered_map>
#include <vector>

#include "common.h"

namespace xv {

namespace {

constexpr size_t kPage = 4096;
// One copy call takes at most this many segments (Linux's gntdev copies in batches of 16; this
// bounds the memory one call can make us allocate).
constexpr uint32_t kMaxCopySegments = 1u << 16;

void CheckOpen(Napi::Env env, const Handle* h) {
  if (h->closed()) throw CodedError(env, "ERR_XEN_CLOSED", "The grant handle was closed while its arguments were read");
}

// The device handle, kept open while any region made through it is alive.
struct Region;

struct Dev {
  bool share;  // xengntshr (true) or xengnttab (false)
  void* h;
  std::unordered_map<void*, Region*> regions;  // regions still referenced by an ArrayBuffer
  ~Dev() {
    if (share)
      xengntshr_close(static_cast<xengntshr_handle*>(h));
    else
      xengnttab_close(static_cast<xengnttab_handle*>(h));
  }
};

struct Region {
  std::shared_ptr<Dev> dev;
  void* addr;
  uint32_t count;
  bool released = false;
  int Release() {
    if (released) return 0;
    released = true;
    if (dev->share) return xengntshr_unshare(static_cast<xengntshr_handle*>(dev->h), addr, count);
    return xengnttab_unmap(static_cast<xengnttab_handle*>(dev->h), addr, count);
  }
};

class Grants : public Handle {
 public:
  static constexpr napi_type_tag kTag = {0x3f9d2c1b0a8e7d6cULL, 0x5b4a39281706f5e4ULL};
  static constexpr const char* kName = "grant";
  Grants(std::shared_ptr<Registry> reg, std::shared_ptr<Dev> dev)
      : Handle(std::move(reg), &kTag), dev_(std::move(dev)) {}
  ~Grants() override { Close(); }
  // No new shares or maps. The device closes now unless regions are still alive: each holds it
  // until released (explicitly, or by its ArrayBuffer's finalizer).
  void Close() override {
    if (closed_) return;
    closed_ = true;
    if (registry().tearing_down)
      for (auto& kv : dev_->regions) kv.second->Release();
    weak_ = dev_;
    dev_.reset();
  }
  // The device, while the handle is open or any region keeps it; null once nothing does.
  std::shared_ptr<Dev> dev() const { return dev_ ? dev_ : weak_.lock(); }
  std::shared_ptr<Dev> dev_;
  std::weak_ptr<Dev> weak_;
};

Napi::Value OpenDev(const Napi::CallbackInfo& info, bool share) {
  Napi::Env env = info.Env();
  void* h = share ? static_cast<void*>(xengntshr_open(nullptr, 0)) : static_cast<void*>(xengnttab_open(nullptr, 0));
  if (!h) {
    ThrowErrno(env, errno, share ? "xengntshr_open" : "xengnttab_open",
               share ? "is the xen_gntalloc module loaded and /dev/xen/gntalloc accessible?"
                     : "is the xen_gntdev module loaded and /dev/xen/gntdev accessible?");
  }
  auto dev = std::make_shared<Dev>();
  dev->share = share;
  dev->h = h;
  return WrapHandle(env, new Grants(RegistryOf(info), dev));
}

Napi::Value OpenSharer(const Napi::CallbackInfo& info) { return OpenDev(info, true); }
Napi::Value OpenMapper(const Napi::CallbackInfo& info) { return OpenDev(info, false); }

Napi::Value Close(const Napi::CallbackInfo& info) {
  Unwrap<Grants>(info, true)->Close();
  return info.Env().Undefined();
}

// Wraps a region as an external ArrayBuffer whose finalizer releases it if JS never did.
Napi::ArrayBuffer Expose(Napi::Env env, Grants* g, void* addr, uint32_t count) {
  auto* r = new Region{g->dev_, addr, count};
  napi_value ab;
  napi_status st = napi_create_external_arraybuffer(
      env, addr, static_cast<size_t>(count) * kPage,
      [](napi_env e, void*, void* hint) noexcept {
        Region* rr = static_cast<Region*>(hint);
        auto it = rr->dev->regions.find(rr->addr);
        if (it != rr->dev->regions.end() && it->second == rr) rr->dev->regions.erase(it);
        if (!rr->released) {
          rr->Release();
          napi_adjust_external_memory(e, -static_cast<int64_t>(rr->count * kPage), nullptr);
        }
        delete rr;
      },
      r, &ab);
  if (st != napi_ok) {
    r->Release();
    delete r;
    if (st == napi_no_external_buffers_allowed) {
      throw CodedError(env, "ERR_XEN_NO_EXTERNAL_BUFFERS",
                       "This runtime forbids external ArrayBuffers: use region.read()/region.write() copies instead");
    }
    throw Napi::Error::New(env, "napi_create_external_arraybuffer failed");
  }
  g->dev_->regions[addr] = r;
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(count) * kPage);
  return Napi::ArrayBuffer(env, ab);
}

// share(handle, domid, pages, writable, notifyOffset, notifyPort) -> { refs, buffer }
Napi::Value Share(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Grants* g = Unwrap<Grants>(info);
  if (!g->dev_->share)
    throw CodedError(env, "ERR_INVALID_ARG_TYPE", "The handle argument must be a grant sharer", true);
  uint32_t dom = ArgUint32(info, 1, "domid", kMaxDomid);
  uint32_t pages = ArgUint32(info, 2, "pages", 1u << 20);
  bool writable = info[3].ToBoolean();
  bool notify = info.Length() > 5 && info[4].IsNumber() && info[5].IsNumber();
  if (pages == 0) throw CodedError(env, "ERR_OUT_OF_RANGE", "The value of \"pages\" must be >= 1", false, true);
  std::vector<uint32_t> refs(pages);
  void* addr;
  if (notify) {
    if (pages != 1)
      throw CodedError(env, "ERR_OUT_OF_RANGE", "An unmap notification needs exactly one page", false, true);
    uint32_t off = ArgUint32(info, 4, "notify.offset", kPage - 1), port = ArgUint32(info, 5, "notify.port");
    addr = xengntshr_share_page_notify(static_cast<xengntshr_handle*>(g->dev_->h), dom, &refs[0], writable, off, port);
  } else {
    addr = xengntshr_share_pages(static_cast<xengntshr_handle*>(g->dev_->h), dom, static_cast<int>(pages), refs.data(),
                                 writable);
  }
  if (!addr) ThrowErrno(env, errno, notify ? "xengntshr_share_page_notify" : "xengntshr_share_pages");
  Napi::Object out = Napi::Object::New(env);
  Napi::Array r = Napi::Array::New(env, pages);
  for (uint32_t i = 0; i < pages; i++) r.Set(i, Napi::Number::New(env, refs[i]));
  out.Set("refs", r);
  out.Set("buffer", Expose(env, g, addr, pages));
  return out;
}

// map(handle, domid, refs[], writable, notifyOffset, notifyPort) -> ArrayBuffer
// Reading the refs may run JS (index getters), which may close the handle: every argument is read
// first, and the handle is looked at only afterwards.
Napi::Value Map(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Grants* g = Unwrap<Grants>(info);
  uint32_t dom = ArgUint32(info, 1, "domid", kMaxDomid);
  if (info.Length() < 3 || !info[2].IsArray())
    throw CodedError(env, "ERR_INVALID_ARG_TYPE", "The \"refs\" argument must be an array of grant references", true);
  Napi::Array arr = info[2].As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n == 0 || n > (1u << 20))
    throw CodedError(env, "ERR_OUT_OF_RANGE", "\"refs\" must hold 1 to 1048576 references", false, true);
  std::vector<uint32_t> refs(n);
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value v = arr.Get(i);
    double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0 && d <= UINT32_MAX) || d != static_cast<double>(static_cast<uint32_t>(d)))
      throw CodedError(env, "ERR_OUT_OF_RANGE", "Every grant reference must be an integer from 0 to 4294967295", false,
                       true);
    refs[i] = static_cast<uint32_t>(d);
  }
  int prot = PROT_READ | (info[3].ToBoolean() ? PROT_WRITE : 0);
  bool notify = info.Length() > 5 && info[4].IsNumber() && info[5].IsNumber();
  uint32_t off = 0, port = 0;
  if (notify) {
    if (n != 1) throw CodedError(env, "ERR_OUT_OF_RANGE", "An unmap notification needs exactly one page", false, true);
    off = ArgUint32(info, 4, "notify.offset", kPage - 1);
    port = ArgUint32(info, 5, "notify.port");
  }
  // No JS runs from here on.
  CheckOpen(env, g);
  if (g->dev_->share) throw CodedError(env, "ERR_INVALID_ARG_TYPE", "The handle argument must be a grant mapper", true);
  auto* h = static_cast<xengnttab_handle*>(g->dev_->h);
  // Asked again while it fails with EINTR (why: native/include/xv_retry.h).
  void* addr = XV_MAP_RETRYING(notify ? xengnttab_map_grant_ref_notify(h, dom, refs[0], prot, off, port)
                                      : xengnttab_map_domain_grant_refs(h, n, dom, refs.data(), prot));
  if (!addr) ThrowErrno(env, errno, notify ? "xengnttab_map_grant_ref_notify" : "xengnttab_map_domain_grant_refs");
  return Expose(env, g, addr, n);
}

// release(handle, arrayBuffer): unmap or unshare now; the ArrayBuffer is detached first.
Napi::Value Release(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Grants* g = Unwrap<Grants>(info, true);
  if (info.Length() < 2 || !info[1].IsArrayBuffer())
    throw CodedError(env, "ERR_INVALID_ARG_TYPE", "The \"buffer\" argument must be an ArrayBuffer from this handle",
                     true);
  Napi::ArrayBuffer ab = info[1].As<Napi::ArrayBuffer>();
  void* addr = ab.Data();
  std::shared_ptr<Dev> dev = g->dev();
  auto it = dev ? dev->regions.find(addr) : decltype(dev->regions.end()){};
  if (!addr || !dev || it == dev->regions.end()) {
    throw CodedError(env, "ERR_XEN_NOT_MAPPED",
                     "This ArrayBuffer is not a live region of this handle (already released?)");
  }
  Region* r = it->second;
  dev->regions.erase(it); /* the address may be reused by the next mapping */
  ab.Detach();
  int rc = r->Release(); /* the region itself is freed by the ArrayBuffer's finalizer */
  Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(r->count * kPage));
  if (rc < 0) ThrowErrno(env, errno, r->dev->share ? "xengntshr_unshare" : "xengnttab_unmap");
  return env.Undefined();
}

// copy(handle, segments) -> statuses. A segment: { source, dest, length } where source/dest are
// either a Uint8Array (local) or { domid, ref, offset } (a grant).
//
// Two passes. The first reads every property (getters run JS: they may close this handle, detach a
// buffer or unmap the region under it) into plain values; the second, with no JS running, checks the
// handle and every buffer again and only then takes raw pointers for xengnttab_grant_copy.
namespace {
struct CopySide {
  Napi::Uint8Array local;  // empty for a grant
  uint16_t domid = 0, offset = 0;
  uint32_t ref = 0;
};
struct CopySeg {
  uint16_t len = 0;
  CopySide side[2];
};
}  // namespace

Napi::Value Copy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Grants* g = Unwrap<Grants>(info);
  if (info.Length() < 2 || !info[1].IsArray())
    throw CodedError(env, "ERR_INVALID_ARG_TYPE", "The \"segments\" argument must be an array", true);
  Napi::Array arr = info[1].As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n > kMaxCopySegments)
    throw CodedError(env, "ERR_OUT_OF_RANGE", "At most " + std::to_string(kMaxCopySegments) + " segments per copy",
                     false, true);
  static const char* const kSides[2] = {"source", "dest"};
  std::vector<CopySeg> in(n);
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value sv = arr.Get(i);
    if (!sv.IsObject()) throw CodedError(env, "ERR_INVALID_ARG_TYPE", "Each segment must be an object", true);
    Napi::Object s = sv.As<Napi::Object>();
    Napi::Value lv = s.Get("length");
    double len = lv.IsNumber() ? lv.As<Napi::Number>().DoubleValue() : -1;
    if (!(len >= 0 && len <= kPage) || len != static_cast<double>(static_cast<uint32_t>(len)))
      throw CodedError(env, "ERR_OUT_OF_RANGE", "A segment's length must be an integer from 0 to 4096", false, true);
    in[i].len = static_cast<uint16_t>(len);
    for (int k = 0; k < 2; k++) {
      Napi::Value v = s.Get(kSides[k]);
      CopySide& side = in[i].side[k];
      if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint8_array) {
        side.local = v.As<Napi::Uint8Array>();
      } else if (v.IsObject() && !v.IsTypedArray()) {
        Napi::Object f = v.As<Napi::Object>();
        Napi::Value d = f.Get("domid"), r = f.Get("ref"), o = f.Get("offset");
        double dd = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : -1;
        double rr = r.IsNumber() ? r.As<Napi::Number>().DoubleValue() : -1;
        double oo = o.IsUndefined() ? 0 : (o.IsNumber() ? o.As<Napi::Number>().DoubleValue() : -1);
        auto whole = [](double x) { return x == static_cast<double>(static_cast<uint64_t>(x)); };
        if (!(dd >= 0 && dd <= kMaxDomid) || !(rr >= 0 && rr <= UINT32_MAX) || !(oo >= 0 && oo + len <= kPage) ||
            !whole(dd) || !whole(rr) || !whole(oo))
          throw CodedError(env, "ERR_OUT_OF_RANGE", std::string("A segment's ") + kSides[k] + " grant is out of range",
                           false, true);
        side.domid = static_cast<uint16_t>(dd);
        side.ref = static_cast<uint32_t>(rr);
        side.offset = static_cast<uint16_t>(oo);
      } else {
        throw CodedError(env, "ERR_INVALID_ARG_TYPE",
                         std::string("A segment's ") + kSides[k] + " must be a Uint8Array or a grant", true);
      }
    }
  }
  // No JS runs from here on: what the getters did is visible now, and nothing can change it.
  CheckOpen(env, g);
  if (g->dev_->share) throw CodedError(env, "ERR_INVALID_ARG_TYPE", "The handle argument must be a grant mapper", true);
  std::vector<xengnttab_grant_copy_segment_t> segs(n);
  for (uint32_t i = 0; i < n; i++) {
    auto& seg = segs[i];
    std::memset(&seg, 0, sizeof(seg));
    seg.len = in[i].len;
    for (int k = 0; k < 2; k++) {
      CopySide& side = in[i].side[k];
      auto& ptr = k == 0 ? seg.source : seg.dest;
      if (!side.local.IsEmpty()) {
        // A detached buffer (a released region among them) has length 0 now.
        Bytes now = CurrentBytes(env, side.local);
        if (now.length < seg.len)
          throw CodedError(env, "ERR_OUT_OF_RANGE",
                           std::string("A segment's ") + kSides[k] + " buffer is shorter than its length (detached?)",
                           false, true);
        ptr.virt = now.data;
      } else {
        ptr.foreign.domid = side.domid;
        ptr.foreign.ref = side.ref;
        ptr.foreign.offset = side.offset;
        seg.flags |= k == 0 ? GNTCOPY_source_gref : GNTCOPY_dest_gref;
      }
    }
  }
  if (n && xengnttab_grant_copy(static_cast<xengnttab_handle*>(g->dev_->h), n, segs.data()) < 0)
    ThrowErrno(env, errno, "xengnttab_grant_copy");
  Napi::Array out = Napi::Array::New(env, n);
  for (uint32_t i = 0; i < n; i++) out.Set(i, Napi::Number::New(env, segs[i].status));
  return out;
}

}  // namespace

void InitGrants(Napi::Env env, Napi::Object exports, RegistryPtr* data) {
  ExportFunctions(env, exports, "grants", data,
                  {{"openSharer", OpenSharer},
                   {"openMapper", OpenMapper},
                   {"close", Close},
                   {"share", Share},
                   {"map", Map},
                   {"release", Release},
                   {"copy", Copy}});
}

}  // namespace xv
