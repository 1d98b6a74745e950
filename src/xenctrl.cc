// libxenctrl binding: what only the toolstack's domain asks of Xen directly. Today one call,
// xc_evtchn_alloc_unbound: a port in ANOTHER domain's table, offered to a third (or to the
// caller), which is how dom0 sets up a channel a domU then takes with IOCTL_EVTCHN_BIND_STATIC.
//
// libxenctrl's soname changes with every Xen release (libxenctrl.so.4.17, .4.19, ...), so the real
// addon finds it at run time, on first use, and works without it for everything else. The mock
// addon links the mock's libxenctrl, whose broker keeps Xen's rule: a domain other than dom0 may
// allocate only in its own table (EPERM otherwise).
#include <cstdarg>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <string>

#include "common.h"
#include "xen.h"

#ifdef XEN_VCHAN_MOCK
#include <xenctrl.h>
#else
#include <dlfcn.h>
#endif

namespace xv {

namespace {

#ifdef XEN_VCHAN_MOCK

using Interface = xc_interface;
Interface* OpenInterface() { return xc_interface_open(nullptr, nullptr, 0); }
void CloseInterface(Interface* xch) { xc_interface_close(xch); }
int AllocUnbound(Interface* xch, uint32_t dom, uint32_t remote) { return xc_evtchn_alloc_unbound(xch, dom, remote); }
std::string LoadFailure() { return ""; }

#else

// xentoollog's logger, as xentoollog.h lays it out (stable since Xen 4.1). libxenctrl given no
// logger writes every failed hypercall to stderr; this one keeps quiet (the error is thrown).
struct Logger {
  void (*vmessage)(Logger*, int level, int errnoval, const char* context, const char* format, va_list al);
  void (*progress)(Logger*, const char* context, const char* doing, int percent, unsigned long done,
                   unsigned long total);
  void (*destroy)(Logger*);
};
Logger quiet = {[](Logger*, int, int, const char*, const char*, va_list) {},
                [](Logger*, const char*, const char*, int, unsigned long, unsigned long) {}, [](Logger*) {}};

struct Interface;
struct Api {
  Interface* (*open)(Logger*, Logger*, unsigned);
  int (*close)(Interface*);
  int (*alloc_unbound)(Interface*, uint32_t, uint32_t);
};
Api api;
bool loaded = false;
std::string failure;
std::once_flag once;

void Load() {
  // XEN_VCHAN_LIBXENCTRL names the one library to use (a soname or a path); otherwise each
  // release's soname, newest first, then the development symlink (libxen-dev's).
  std::string names[32];
  size_t n = 0;
  const char* only = std::getenv("XEN_VCHAN_LIBXENCTRL");
  if (only && *only) {
    names[n++] = only;
  } else {
    for (int minor = 25; minor >= 4 && n + 1 < std::size(names); minor--)
      names[n++] = "libxenctrl.so.4." + std::to_string(minor);
    names[n++] = "libxenctrl.so";
  }
  std::string tried;
  for (size_t i = 0; i < n; i++) {
    void* lib = dlopen(names[i].c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) continue;  // most names do not exist on a given system: not worth listing
    Api a{reinterpret_cast<decltype(a.open)>(dlsym(lib, "xc_interface_open")),
          reinterpret_cast<decltype(a.close)>(dlsym(lib, "xc_interface_close")),
          reinterpret_cast<decltype(a.alloc_unbound)>(dlsym(lib, "xc_evtchn_alloc_unbound"))};
    if (a.open && a.close && a.alloc_unbound) {
      api = a;
      loaded = true;
      return;
    }
    tried += std::string(tried.empty() ? "" : "; ") + names[i] + " lacks xc_evtchn_alloc_unbound";
    dlclose(lib);
  }
  failure = "Xen's control library libxenctrl could not be loaded (" +
            (tried.empty() ? std::string("none of libxenctrl.so.4.25 .. 4.4 or libxenctrl.so found") : tried) +
            "). It comes with Xen's tools: Debian/Ubuntu apt-get install libxenmisc4.17 (or the release's "
            "libxenmisc), which xen-utils pulls in; XEN_VCHAN_LIBXENCTRL may name the library";
}

Interface* OpenInterface() {
  std::call_once(once, Load);
  if (!loaded) {
    errno = ELIBACC;
    return nullptr;
  }
  return api.open(&quiet, &quiet, 0);
}
void CloseInterface(Interface* xch) { api.close(xch); }
int AllocUnbound(Interface* xch, uint32_t dom, uint32_t remote) { return api.alloc_unbound(xch, dom, remote); }
std::string LoadFailure() {
  std::call_once(once, Load);
  return failure;
}

#endif

// allocUnbound(domid, remoteDomid) -> port: a port in DOMID's table, unbound, offered to
// REMOTEDOMID. Nothing in this process owns it: DOMID takes it with bindStatic (or REMOTEDOMID
// binds it interdomain, and DOMID then takes its end with bindStatic).
Napi::Value AllocUnbound(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t dom = ArgUint32(info, 0, "domid", kMaxDomid);
  uint32_t remote = ArgUint32(info, 1, "remoteDomid", kMaxDomid);
  Interface* xch = OpenInterface();
  if (!xch) {
    int err = errno ? errno : EIO;
    std::string why = LoadFailure();
    ThrowErrno(env, err, "xc_interface_open",
               !why.empty() ? why : "is /dev/xen/privcmd there and may this process open it (root, in dom0)?");
  }
  int port = AllocUnbound(xch, dom, remote);
  int err = errno;
  CloseInterface(xch);
  if (port < 0) {
    std::string hint;
    if (err == EPERM || err == EACCES)
      hint = "only a privileged domain (dom0, or the toolstack's) may allocate a port in another domain's table";
    else if (err == ESRCH)
      hint = "no domain " + std::to_string(dom);
    ThrowErrno(env, err, "xc_evtchn_alloc_unbound", hint);
  }
  return Napi::Number::New(env, port);
}

}  // namespace

void InitXenctrl(Napi::Env env, Napi::Object exports, RegistryPtr* data) {
  ExportFunctions(env, exports, "ctrl", data, {{"allocUnbound", AllocUnbound}});
}

}  // namespace xv
