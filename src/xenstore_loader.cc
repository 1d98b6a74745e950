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

// Every libxenstore function the addon and our libxenvchan call: one list, for the table of
// pointers, their lookup and (by hand, below) the forwarders.
#define XV_XENSTORE_FUNCTIONS(X) \
  X(xs_open)                     \
  X(xs_close)                    \
  X(xs_read)                     \
  X(xs_write)                    \
  X(xs_rm)                       \
  X(xs_mkdir)                    \
  X(xs_directory)                \
  X(xs_get_permissions)          \
  X(xs_set_permissions)          \
  X(xs_watch)                    \
  X(xs_unwatch)                  \
  X(xs_fileno)                   \
  X(xs_check_watch)              \
  X(xs_transaction_start)        \
  X(xs_transaction_end)          \
  X(xs_get_domain_path)          \
  X(xs_is_domain_introduced)

struct XenstoreApi {
#define XV_FIELD(name) decltype(&::name) name;
  XV_XENSTORE_FUNCTIONS(XV_FIELD)
#undef XV_FIELD
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
#define XV_RESOLVE(name) Resolve(lib, #name, &a.name, &missing);
    XV_XENSTORE_FUNCTIONS(XV_RESOLVE)
#undef XV_RESOLVE
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
  return Ready() ? api.xs_open(flags) : nullptr;
}
void xs_close(struct xs_handle* h) {
  if (h && loaded) api.xs_close(h);
}
void* xs_read(struct xs_handle* h, xs_transaction_t t, const char* path, unsigned int* len) {
  return api.xs_read(h, t, path, len);
}
bool xs_write(struct xs_handle* h, xs_transaction_t t, const char* path, const void* data, unsigned int len) {
  return api.xs_write(h, t, path, data, len);
}
bool xs_rm(struct xs_handle* h, xs_transaction_t t, const char* path) { return api.xs_rm(h, t, path); }
bool xs_mkdir(struct xs_handle* h, xs_transaction_t t, const char* path) { return api.xs_mkdir(h, t, path); }
char** xs_directory(struct xs_handle* h, xs_transaction_t t, const char* path, unsigned int* num) {
  return api.xs_directory(h, t, path, num);
}
struct xs_permissions* xs_get_permissions(struct xs_handle* h, xs_transaction_t t, const char* path,
                                          unsigned int* num) {
  return api.xs_get_permissions(h, t, path, num);
}
bool xs_set_permissions(struct xs_handle* h, xs_transaction_t t, const char* path, struct xs_permissions* perms,
                        unsigned int num) {
  return api.xs_set_permissions(h, t, path, perms, num);
}
bool xs_watch(struct xs_handle* h, const char* path, const char* token) { return api.xs_watch(h, path, token); }
bool xs_unwatch(struct xs_handle* h, const char* path, const char* token) { return api.xs_unwatch(h, path, token); }
int xs_fileno(struct xs_handle* h) { return api.xs_fileno(h); }
char** xs_check_watch(struct xs_handle* h) { return api.xs_check_watch(h); }
xs_transaction_t xs_transaction_start(struct xs_handle* h) { return api.xs_transaction_start(h); }
bool xs_transaction_end(struct xs_handle* h, xs_transaction_t t, bool abort) {
  return api.xs_transaction_end(h, t, abort);
}
char* xs_get_domain_path(struct xs_handle* h, unsigned int domid) { return api.xs_get_domain_path(h, domid); }
bool xs_is_domain_introduced(struct xs_handle* h, unsigned int domid) { return api.xs_is_domain_introduced(h, domid); }

}  // extern "C"
