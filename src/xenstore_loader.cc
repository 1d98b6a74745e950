// The real addon's libxenstore, found at run time. Its soname is libxenstore.so.3.0 on Xen 4.14
// and 4.15 and libxenstore.so.4 from 4.16 on; the functions used here are the same in both. Linking
// either would tie the addon to one range of releases, so this file defines the xs_* functions the
// addon and our libxenvchan (native/vchan) call, hidden inside the addon, and forwards them to
// whichever library dlopen finds first. libxenevtchn.so.1 and libxengnttab.so.1 keep one soname and
// are linked normally.
//
// When no libxenstore can be loaded, xs_open fails with ELIBACC and XenLibraryHint() says what to
// install; the other functions are only reachable through a handle from xs_open.
#include <dlfcn.h>

#include <cerrno>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <string>
#include <vector>

#include "common.h"
#include "xen.h"

namespace {

struct XenstoreApi {
  decltype(&xs_open) open;
  decltype(&xs_close) close;
  decltype(&xs_read) read;
  decltype(&xs_write) write;
  decltype(&xs_rm) rm;
  decltype(&xs_mkdir) mkdir;
  decltype(&xs_directory) directory;
  decltype(&xs_get_permissions) get_permissions;
  decltype(&xs_set_permissions) set_permissions;
  decltype(&xs_watch) watch;
  decltype(&xs_unwatch) unwatch;
  decltype(&xs_fileno) fileno;
  decltype(&xs_check_watch) check_watch;
  decltype(&xs_transaction_start) transaction_start;
  decltype(&xs_transaction_end) transaction_end;
  decltype(&xs_get_domain_path) get_domain_path;
  decltype(&xs_is_domain_introduced) is_domain_introduced;
};

// Newest first: a system with both (a partial upgrade) gets the one its tools use.
constexpr const char* kSonames[] = {"libxenstore.so.4", "libxenstore.so.3.0"};

XenstoreApi api;
bool loaded = false;
std::string failure;
std::once_flag once;

template <typename T>
bool Resolve(void* lib, const char* name, T* out, std::string* missing) {
  *out = reinterpret_cast<T>(dlsym(lib, name));
  if (!*out) *missing += std::string(missing->empty() ? "" : ", ") + name;
  return *out != nullptr;
}

void Load() {
  std::string tried;
  // XEN_VCHAN_LIBXENSTORE names the one library to use instead (a soname or a path).
  const char* only = std::getenv("XEN_VCHAN_LIBXENSTORE");
  std::vector<const char*> names(std::begin(kSonames), std::end(kSonames));
  if (only && *only) names.assign(1, only);
  for (const char* soname : names) {
    void* lib = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      tried += std::string(tried.empty() ? "" : "; ") + dlerror();
      continue;
    }
    std::string missing;
    XenstoreApi a{};
    Resolve(lib, "xs_open", &a.open, &missing);
    Resolve(lib, "xs_close", &a.close, &missing);
    Resolve(lib, "xs_read", &a.read, &missing);
    Resolve(lib, "xs_write", &a.write, &missing);
    Resolve(lib, "xs_rm", &a.rm, &missing);
    Resolve(lib, "xs_mkdir", &a.mkdir, &missing);
    Resolve(lib, "xs_directory", &a.directory, &missing);
    Resolve(lib, "xs_get_permissions", &a.get_permissions, &missing);
    Resolve(lib, "xs_set_permissions", &a.set_permissions, &missing);
    Resolve(lib, "xs_watch", &a.watch, &missing);
    Resolve(lib, "xs_unwatch", &a.unwatch, &missing);
    Resolve(lib, "xs_fileno", &a.fileno, &missing);
    Resolve(lib, "xs_check_watch", &a.check_watch, &missing);
    Resolve(lib, "xs_transaction_start", &a.transaction_start, &missing);
    Resolve(lib, "xs_transaction_end", &a.transaction_end, &missing);
    Resolve(lib, "xs_get_domain_path", &a.get_domain_path, &missing);
    Resolve(lib, "xs_is_domain_introduced", &a.is_domain_introduced, &missing);
    if (missing.empty()) {
      api = a;
      loaded = true;
      return;
    }
    tried += std::string(tried.empty() ? "" : "; ") + soname + " lacks " + missing;
    dlclose(lib);
  }
  failure = "Xen's xenstore library could not be loaded (" + tried +
            "). Install it: Debian/Ubuntu apt-get install libxenstore4 (Xen 4.16 and later) or libxenstore3.0 "
            "(Xen 4.14, 4.15); other distributions ship it in their Xen runtime package";
}

bool Ready() {
  std::call_once(once, Load);
  if (!loaded) errno = ELIBACC;
  return loaded;
}

}  // namespace

namespace xv {
std::string XenLibraryHint() {
  std::call_once(once, Load);
  return failure;
}
}  // namespace xv

// The definitions behind xen.h's declarations; hidden (the addon builds with -fvisibility=hidden),
// so they never stand in for a libxenstore another module of the process loads.
extern "C" {

struct xs_handle* xs_open(unsigned long flags) {
  return Ready() ? api.open(flags) : nullptr;
}
void xs_close(struct xs_handle* h) {
  if (h && loaded) api.close(h);
}
void* xs_read(struct xs_handle* h, xs_transaction_t t, const char* path, unsigned int* len) {
  return api.read(h, t, path, len);
}
bool xs_write(struct xs_handle* h, xs_transaction_t t, const char* path, const void* data, unsigned int len) {
  return api.write(h, t, path, data, len);
}
bool xs_rm(struct xs_handle* h, xs_transaction_t t, const char* path) { return api.rm(h, t, path); }
bool xs_mkdir(struct xs_handle* h, xs_transaction_t t, const char* path) { return api.mkdir(h, t, path); }
char** xs_directory(struct xs_handle* h, xs_transaction_t t, const char* path, unsigned int* num) {
  return api.directory(h, t, path, num);
}
struct xs_permissions* xs_get_permissions(struct xs_handle* h, xs_transaction_t t, const char* path,
                                          unsigned int* num) {
  return api.get_permissions(h, t, path, num);
}
bool xs_set_permissions(struct xs_handle* h, xs_transaction_t t, const char* path, struct xs_permissions* perms,
                        unsigned int num) {
  return api.set_permissions(h, t, path, perms, num);
}
bool xs_watch(struct xs_handle* h, const char* path, const char* token) { return api.watch(h, path, token); }
bool xs_unwatch(struct xs_handle* h, const char* path, const char* token) { return api.unwatch(h, path, token); }
int xs_fileno(struct xs_handle* h) { return api.fileno(h); }
char** xs_check_watch(struct xs_handle* h) { return api.check_watch(h); }
xs_transaction_t xs_transaction_start(struct xs_handle* h) { return api.transaction_start(h); }
bool xs_transaction_end(struct xs_handle* h, xs_transaction_t t, bool abort) {
  return api.transaction_end(h, t, abort);
}
char* xs_get_domain_path(struct xs_handle* h, unsigned int domid) { return api.get_domain_path(h, domid); }
bool xs_is_domain_introduced(struct xs_handle* h, unsigned int domid) { return api.is_domain_introduced(h, domid); }

}  // extern "C"
