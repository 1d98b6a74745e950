// Module entry: one registry per environment, closed by an async cleanup hook
// so that a worker thread exiting with open handles releases them and its
// loop closes cleanly.
#include "common.h"

#include "xen.h"

namespace xv {

namespace {

struct InstanceData {
  std::shared_ptr<Registry> reg;
};

void OnCleanup(napi_async_cleanup_hook_handle handle, void* arg) {
  auto* data = static_cast<InstanceData*>(arg);
  Registry& reg = *data->reg;
  reg.cleanup = handle;
  reg.tearing_down = true;
  // Close() may remove entries: iterate over a copy.
  std::vector<Handle*> all(reg.live.begin(), reg.live.end());
  for (Handle* h : all) {
    try {
      h->Close();  // a C callback: nothing may be thrown out of it
    } catch (...) {
    }
  }
  reg.MaybeFinishCleanup();
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new InstanceData{std::make_shared<Registry>()};
  napi_set_instance_data(
      env, data, [](napi_env, void* d, void*) { delete static_cast<InstanceData*>(d); }, nullptr);
  napi_add_async_cleanup_hook(env, OnCleanup, data, &data->reg->cleanup);

#ifdef XEN_VCHAN_MOCK
  exports.Set("backend", Napi::String::New(env, "mock"));
  InitMock(env, exports);
#else
  exports.Set("backend", Napi::String::New(env, "real"));
#endif
  InitEvtchn(env, exports, &data->reg);
  InitGrants(env, exports, &data->reg);
  InitXenstore(env, exports, &data->reg);
  InitVchan(env, exports, &data->reg);
  InitXenctrl(env, exports, &data->reg);
  InitPump(env, exports, &data->reg);
  return exports;
}

}  // namespace xv

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return xv::Init(env, exports); }
NODE_API_MODULE(NODE_GYP_MODULE_NAME, InitModule)
