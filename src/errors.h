// Errors shaped like Node's (errno errors with .code/.errno/.syscall; coded TypeError/RangeError)
// and the argument checks every binding uses.
#pragma once

#include <napi.h>
#include <xv_protocol.h>

#include <cerrno>
#include <cstdint>
#include <string>

namespace xv {

// The highest ordinary domain id (xv_protocol.h).
constexpr uint32_t kMaxDomid = XV_MAX_DOMID;

// Errors shaped like Node's: .code, .errno (negative, as libuv's), .syscall.
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& detail = "");
// Why a Xen library could not be loaded (real backend: src/xenstore_loader.cc), or "". Errors with
// ELIBACC carry it.
std::string XenLibraryHint();
[[noreturn]] void ThrowErrno(Napi::Env env, int err, const char* syscall, const std::string& detail = "");
Napi::Error CodedError(Napi::Env env, const char* code, const std::string& msg, bool type_error = false,
                       bool range_error = false);

// Argument checks (TypeScript validates first; these keep C++ safe on its own).
uint32_t ArgUint32(const Napi::CallbackInfo& info, size_t i, const char* name, uint32_t max = UINT32_MAX);
Napi::Uint8Array ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* name);
// The bytes of a Uint8Array as they are NOW. Napi::TypedArray caches its pointer and length when it
// is made, so a buffer detached since (by a getter that ran in between) still looks alive through
// it; use this after any JS may have run. Detached: {nullptr, 0}.
struct Bytes {
  uint8_t* data;
  size_t length;
};
Bytes CurrentBytes(napi_env env, const Napi::Uint8Array& a);
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::Function ArgFunction(const Napi::CallbackInfo& info, size_t i, const char* name);

}  // namespace xv
