// libxenstore binding. Requests run on the thread pool (xenstored can be slow
// or stall; the event loop must not), watch events arrive through a poller on
// xs_fileno(). The connection stays open until the handle is closed and the
// last request in flight has finished.
#include <fcntl.h>
#include "xen.h"

#include <cstdlib>
#include <cstring>

#include "common.h"

namespace xv {

namespace {

struct Conn {
  struct xs_handle* h;
  ~Conn() { xs_close(h); }
};

class Xs : public Handle {
 public:
  static constexpr napi_type_tag kTag = {0x71c3e5a7091b2d4fULL, 0x6e8a0c2e4f6a8b0dULL};
  static constexpr const char* kName = "Xenstore";
  Xs(std::shared_ptr<Registry> reg, std::shared_ptr<Conn> c) : Handle(std::move(reg), &kTag), conn_(std::move(c)) {}
  ~Xs() override { Close(); }
  void Close() override {
    if (closed_) return;
    closed_ = true;
    if (poller_) poller_->Destroy();
    poller_ = nullptr;
    conn_.reset();  // requests in flight hold their own reference
  }
  std::shared_ptr<Conn> conn_;
  Poller* poller_ = nullptr;
};

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct xs_handle* h = xs_open(0);
  if (!h) {
    int e = errno;
    ThrowErrno(env, e, "xs_open", e == ELIBACC ? "" : "is xenstored running (or /dev/xen/xenbus present)?");
  }
  return WrapHandle(env, new Xs(RegistryOf(info), std::shared_ptr<Conn>(new Conn{h})));
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Unwrap<Xs>(info, true)->Close();
  return info.Env().Undefined();
}

uint32_t ArgTx(const Napi::CallbackInfo& info, size_t i) { return ArgUint32(info, i, "transaction"); }

Napi::Value Undef(Napi::Env env, const std::string&) { return env.Undefined(); }

Napi::Value Read(const Napi::CallbackInfo& info) {
  std::shared_ptr<Conn> c = Unwrap<Xs>(info)->conn_;
  uint32_t t = ArgTx(info, 1);
  std::string path = ArgString(info, 2, "path");
  return RunAsync(
      info.Env(), "xs_read",
      [c, t, path](std::string& out) {
        unsigned len = 0;
        void* v = xs_read(c->h, t, path.c_str(), &len);
        if (!v) return errno ? errno : EIO;
        out.assign(static_cast<char*>(v), len);
        free(v);
        return 0;
      },
      [](Napi::Env env, const std::string& out) { return Napi::Buffer<char>::Copy(env, out.data(), out.size()); });
}

Napi::Value Write(const Napi::CallbackInfo& info) {
  std::shared_ptr<Conn> c = Unwrap<Xs>(info)->conn_;
  uint32_t t = ArgTx(info, 1);
  std::string path = ArgString(info, 2, "path");
  Napi::Uint8Array v = ArgBytes(info, 3, "value");
  std::string value(reinterpret_cast<char*>(v.Data()), v.ByteLength());
  return RunAsync(
      info.Env(), "xs_write",
      [c, t, path, value](std::string&) {
        return xs_write(c->h, t, path.c_str(), value.data(), static_cast<unsigned>(value.size()))
                   ? 0
                   : (errno ? errno : EIO);
      },
      Undef);
}

Napi::Value PathOp(const Napi::CallbackInfo& info, const char* syscall,
                   bool (*fn)(struct xs_handle*, xs_transaction_t, const char*)) {
  std::shared_ptr<Conn> c = Unwrap<Xs>(info)->conn_;
  uint32_t t = ArgTx(info, 1);
  std::string path = ArgString(info, 2, "path");
  return RunAsync(
      info.Env(), syscall,
      [c, t, path, fn](std::string&) { return fn(c->h, t, path.c_str()) ? 0 : (errno ? errno : EIO); }, Undef);
}

Napi::Value Mkdir(const Napi::CallbackInfo& info) { return PathOp(info, "xs_mkdir", xs_mkdir); }
Napi::Value Rm(const Napi::CallbackInfo& info) { return PathOp(info, "xs_rm", xs_rm); }

// Lists come back NUL-separated and are split in the converter.
Napi::Value SplitList(Napi::Env env, const std::string& out) {
  Napi::Array a = Napi::Array::New(env);
  uint32_t n = 0;
  for (size_t pos = 0; pos < out.size();) {
    size_t end = out.find('\0', pos);
    if (end == std::string::npos) end = out.size();
    a.Set(n++, Napi::String::New(env, out.data() + pos, end - pos));
    pos = end + 1;
  }
  return a;
}

Napi::Value Directory(const Napi::CallbackInfo& info) {
  std::shared_ptr<Conn> c = Unwrap<Xs>(info)->conn_;
  uint32_t t = ArgTx(info, 1);
  std::string path = ArgString(info, 2, "path");
  return RunAsync(
      info.Env(), "xs_directory",
      [c, t, path](std::string& out) {
        unsigned n = 0;
        char** v = xs_directory(c->h, t, path.c_str(), &n);
        if (!v) return errno ? errno : EIO;
        for (unsigned i = 0; i < n; i++) {
          out.append(v[i]);
          out.push_back('\0');
        }
        free(v);
        return 0;
      },
      SplitList);
}

Napi::Value GetPerms(const Napi::CallbackInfo& info) {
  std::shared_ptr<Conn> c = Unwrap<Xs>(info)->conn_;
  uint32_t t = ArgTx(info, 1);
  std::string path = ArgString(info, 2, "path");
  return RunAsync(
      info.Env(), "xs_get_permissions",
      [c, t, path](std::string& out) {
        unsigned n = 0;
        struct xs_permissions* p = xs_get_permissions(c->h, t, path.c_str(), &n);
        if (!p) return errno ? errno : EIO;
        out.assign(reinterpret_cast<char*>(p), n * sizeof(*p));
        free(p);
        return 0;
      },
      [](Napi::Env env, const std::string& out) {
        Napi::Array a = Napi::Array::New(env);
        size_t n = out.size() / sizeof(struct xs_permissions);
        for (size_t i = 0; i < n; i++) {
          struct xs_permissions p;
          std::memcpy(&p, out.data() + i * sizeof(p), sizeof(p));
          Napi::Object o = Napi::Object::New(env);
          o.Set("domid", p.id);
          o.Set("read", Napi::Boolean::New(env, p.perms & XS_PERM_READ));
          o.Set("write", Napi::Boolean::New(env, p.perms & XS_PERM_WRITE));
          a.Set(static_cast<uint32_t>(i), o);
        }
        return a;
      });
}

// setPermissions(h, t, path, [domid, bits, domid, bits, ...])
// A request carries at most XENSTORE_PAYLOAD_MAX (4096) bytes: far fewer entries than this fit.
constexpr uint32_t kMaxPerms = 1024;

Napi::Value SetPerms(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Unwrap<Xs>(info);  // type check first; the connection is taken once the arguments are read
  uint32_t t = ArgTx(info, 1);
  std::string path = ArgString(info, 2, "path");
  if (info.Length() < 4 || !info[3].IsArray())
    throw CodedError(env, "ERR_INVALID_ARG_TYPE", "The \"permissions\" argument must be an array", true);
  Napi::Array a = info[3].As<Napi::Array>();
  std::vector<struct xs_permissions> perms;
  uint32_t n = a.Length();
  if (n > 2 * kMaxPerms) throw CodedError(env, "ERR_OUT_OF_RANGE", "Too many permission entries", false, true);
  for (uint32_t i = 0; i + 1 < n; i += 2) {
    // Numbers only: a getter or valueOf could run JS (and close this connection) in between.
    Napi::Value id = a.Get(i), bits = a.Get(i + 1);
    if (!id.IsNumber() || !bits.IsNumber())
      throw CodedError(env, "ERR_INVALID_ARG_TYPE", "Permission entries must be numbers", true);
    double d = id.As<Napi::Number>().DoubleValue(), b = bits.As<Napi::Number>().DoubleValue();
    if (!(d >= 0 && d <= 0xffff) || !(b >= 0 && b <= 3) || d != static_cast<uint32_t>(d) ||
        b != static_cast<uint32_t>(b))
      throw CodedError(env, "ERR_OUT_OF_RANGE", "A permission entry is out of range", false, true);
    perms.push_back({static_cast<unsigned>(d), static_cast<unsigned>(b)});
  }
  std::shared_ptr<Conn> c = Unwrap<Xs>(info)->conn_;  // throws ERR_XEN_CLOSED if a getter closed it
  if (perms.empty())
    throw CodedError(env, "ERR_OUT_OF_RANGE", "At least one permission entry (the owner) is needed", false, true);
  return RunAsync(
      env, "xs_set_permissions",
      [c, t, path, perms](std::string&) mutable {
        return xs_set_permissions(c->h, t, path.c_str(), perms.data(), static_cast<unsigned>(perms.size()))
                   ? 0
                   : (errno ? errno : EIO);
      },
      Undef);
}

Napi::Value TxStart(const Napi::CallbackInfo& info) {
  std::shared_ptr<Conn> c = Unwrap<Xs>(info)->conn_;
  return RunAsync(
      info.Env(), "xs_transaction_start",
      [c](std::string& out) {
        xs_transaction_t t = xs_transaction_start(c->h);
        if (t == XBT_NULL) return errno ? errno : EIO;
        out = std::to_string(t);
        return 0;
      },
      [](Napi::Env env, const std::string& out) { return Napi::Number::New(env, std::stod(out)); });
}

Napi::Value TxEnd(const Napi::CallbackInfo& info) {
  std::shared_ptr<Conn> c = Unwrap<Xs>(info)->conn_;
  uint32_t t = ArgTx(info, 1);
  bool abort = info.Length() > 2 && info[2].ToBoolean();
  return RunAsync(
      info.Env(), "xs_transaction_end",
      [c, t, abort](std::string&) { return xs_transaction_end(c->h, t, abort) ? 0 : (errno ? errno : EIO); }, Undef);
}

Napi::Value WatchOp(const Napi::CallbackInfo& info, bool add) {
  std::shared_ptr<Conn> c = Unwrap<Xs>(info)->conn_;
  std::string path = ArgString(info, 1, "path"), token = ArgString(info, 2, "token");
  return RunAsync(
      info.Env(), add ? "xs_watch" : "xs_unwatch",
      [c, path, token, add](std::string&) {
        bool ok = add ? xs_watch(c->h, path.c_str(), token.c_str()) : xs_unwatch(c->h, path.c_str(), token.c_str());
        return ok ? 0 : (errno ? errno : EIO);
      },
      Undef);
}

Napi::Value Watch(const Napi::CallbackInfo& info) { return WatchOp(info, true); }
Napi::Value Unwatch(const Napi::CallbackInfo& info) { return WatchOp(info, false); }

// pollWatches(h, cb | null): cb() runs when watch events are queued; readWatches() takes them.
Napi::Value PollWatches(const Napi::CallbackInfo& info) {
  Xs* x = Unwrap<Xs>(info);
  // xs_fileno() sets up the watch channel: only ask for it when starting.
  bool start = info.Length() > 1 && info[1].IsFunction();
  errno = 0;
  int fd = (start && !x->poller_) ? xs_fileno(x->conn_->h) : -1;
  return PollArg(info, x->poller_, fd, x->registry());
}

// readWatches(h) -> [{path, token}, ...] without blocking.
Napi::Value ReadWatches(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Xs* x = Unwrap<Xs>(info);
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  for (int i = 0; i < 1024; i++) {
    char** v = xs_check_watch(x->conn_->h);
    if (!v) break;
    Napi::Object ev = Napi::Object::New(env);
    ev.Set("path", Napi::String::New(env, v[XS_WATCH_PATH]));
    ev.Set("token", Napi::String::New(env, v[XS_WATCH_TOKEN]));
    out.Set(n++, ev);
    free(v);
  }
  return out;
}

Napi::Value RefWatches(const Napi::CallbackInfo& info) {
  Xs* x = Unwrap<Xs>(info);
  if (x->poller_) x->poller_->Ref(info.Length() > 1 && info[1].ToBoolean());
  return info.Env().Undefined();
}

Napi::Value DomainPath(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Xs* x = Unwrap<Xs>(info);
  char* p = xs_get_domain_path(x->conn_->h, ArgUint32(info, 1, "domid", kMaxDomid));
  if (!p) ThrowErrno(env, errno, "xs_get_domain_path");
  Napi::String s = Napi::String::New(env, p);
  free(p);
  return s;
}

// isIntroduced(h, domid) -> Promise<boolean>: whether xenstored knows the domain (false once it
// has been destroyed, even while others still map its pages).
Napi::Value IsIntroduced(const Napi::CallbackInfo& info) {
  std::shared_ptr<Conn> c = Unwrap<Xs>(info)->conn_;
  uint32_t domid = ArgUint32(info, 1, "domid", kMaxDomid);
  return RunAsync(
      info.Env(), "xs_is_domain_introduced",
      [c, domid](std::string& out) {
        errno = 0;
        bool yes = xs_is_domain_introduced(c->h, domid);
        // false is also its error return: only an errno tells them apart.
        if (!yes && errno != 0 && errno != ENOENT && errno != ESRCH) return errno;
        out = yes ? "1" : "";
        return 0;
      },
      [](Napi::Env env, const std::string& out) { return Napi::Boolean::New(env, !out.empty()); });
}

}  // namespace

void InitXenstore(Napi::Env env, Napi::Object exports, RegistryPtr* data) {
  ExportFunctions(env, exports, "xenstore", data,
                  {{"open", Open},
                   {"close", Close},
                   {"read", Read},
                   {"write", Write},
                   {"mkdir", Mkdir},
                   {"rm", Rm},
                   {"directory", Directory},
                   {"getPermissions", GetPerms},
                   {"setPermissions", SetPerms},
                   {"transactionStart", TxStart},
                   {"transactionEnd", TxEnd},
                   {"watch", Watch},
                   {"unwatch", Unwatch},
                   {"pollWatches", PollWatches},
                   {"readWatches", ReadWatches},
                   {"refWatches", RefWatches},
                   {"domainPath", DomainPath},
                   {"isIntroduced", IsIntroduced}});
}

}  // namespace xv
