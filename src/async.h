// Work off the event loop: a blocking call on libuv's thread pool, settled as a Promise.
#pragma once

#include <napi.h>

#include <functional>
#include <string>

namespace xv {

// Runs FN on the thread pool; resolves with CONVERT(result) or rejects with an errno error.
Napi::Value RunAsync(Napi::Env env, const char* syscall, std::function<int(std::string&)> fn,
                     std::function<Napi::Value(Napi::Env, const std::string&)> convert);

}  // namespace xv
