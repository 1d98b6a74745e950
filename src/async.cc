// The async runner: a blocking call on the thread pool, settled as a Promise.
#include "async.h"

#include "errors.h"

namespace xv {

namespace {
class FnWorker : public Napi::AsyncWorker {
 public:
  FnWorker(Napi::Env env, const char* syscall, std::function<int(std::string&)> fn,
           std::function<Napi::Value(Napi::Env, const std::string&)> convert)
      : Napi::AsyncWorker(env, syscall),
        deferred_(Napi::Promise::Deferred::New(env)),
        syscall_(syscall),
        fn_(std::move(fn)),
        convert_(std::move(convert)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { err_ = fn_(out_); }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (err_) {
      deferred_.Reject(ErrnoError(env, err_, syscall_).Value());
      return;
    }
    try {
      deferred_.Resolve(convert_(env, out_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  const char* syscall_;
  std::function<int(std::string&)> fn_;
  std::function<Napi::Value(Napi::Env, const std::string&)> convert_;
  std::string out_;
  int err_ = 0;
};
}  // namespace

Napi::Value RunAsync(Napi::Env env, const char* syscall, std::function<int(std::string&)> fn,
                     std::function<Napi::Value(Napi::Env, const std::string&)> convert) {
  auto* w = new FnWorker(env, syscall, std::move(fn), std::move(convert));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace xv
