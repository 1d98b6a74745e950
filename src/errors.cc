// Errors shaped like Node's, and argument checks.
#include "errors.h"

#include <uv.h>

#include <cstring>

namespace xv {

#ifdef XEN_VCHAN_MOCK
// The mock's libraries are linked, never looked for.
std::string XenLibraryHint() { return ""; }
#endif

static std::string ErrName(int err) {
  const char* n = uv_err_name(-err);
  if (n && std::strncmp(n, "Unknown", 7) != 0) return n;
  // Errnos of ours that libuv has no name for.
  if (err == ELIBACC) return "ELIBACC";
  return "E" + std::to_string(err);
}

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& detail) {
  if (err <= 0) err = EIO;
  std::string code = ErrName(err);
  std::string msg = std::string(syscall) + " failed: " + code + " (" + std::strerror(err) + ")";
  if (!detail.empty()) msg += ": " + detail;
  if (err == ELIBACC) {
    std::string hint = XenLibraryHint();
    if (!hint.empty()) msg += ": " + hint;
  }
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

void ThrowErrno(Napi::Env env, int err, const char* syscall, const std::string& detail) {
  throw ErrnoError(env, err, syscall, detail);
}

Napi::Error CodedError(Napi::Env env, const char* code, const std::string& msg, bool type_error, bool range_error) {
  Napi::Error e = type_error    ? Napi::TypeError::New(env, msg)
                  : range_error ? Napi::RangeError::New(env, msg)
                                : Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

uint32_t ArgUint32(const Napi::CallbackInfo& info, size_t i, const char* name, uint32_t max) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) {
    throw CodedError(env, "ERR_INVALID_ARG_TYPE", std::string("The \"") + name + "\" argument must be of type number",
                     true);
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0 && v <= max) || v != static_cast<double>(static_cast<uint64_t>(v))) {
    throw CodedError(env, "ERR_OUT_OF_RANGE",
                     std::string("The value of \"") + name + "\" is out of range. It must be an integer >= 0 and <= " +
                         std::to_string(max) + ". Received " + info[i].ToString().Utf8Value(),
                     false, true);
  }
  return static_cast<uint32_t>(v);
}

Napi::Uint8Array ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw CodedError(info.Env(), "ERR_INVALID_ARG_TYPE",
                     std::string("The \"") + name + "\" argument must be an instance of Buffer or Uint8Array", true);
  }
  return info[i].As<Napi::Uint8Array>();
}

Bytes CurrentBytes(napi_env env, const Napi::Uint8Array& a) {
  napi_typedarray_type type;
  size_t length = 0, offset = 0;
  void* data = nullptr;
  napi_value ab;
  if (napi_get_typedarray_info(env, a, &type, &length, &data, &ab, &offset) != napi_ok || !data) return {nullptr, 0};
  return {static_cast<uint8_t*>(data), length};
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsString()) {
    throw CodedError(info.Env(), "ERR_INVALID_ARG_TYPE",
                     std::string("The \"") + name + "\" argument must be of type string", true);
  }
  return info[i].As<Napi::String>().Utf8Value();
}

Napi::Function ArgFunction(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsFunction()) {
    throw CodedError(info.Env(), "ERR_INVALID_ARG_TYPE",
                     std::string("The \"") + name + "\" argument must be of type function", true);
  }
  return info[i].As<Napi::Function>();
}

}  // namespace xv
