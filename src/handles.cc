// Native handles: wrapping, the registry's teardown, module registration.
#include "handles.h"

namespace xv {

Napi::Object WrapHandle(Napi::Env env, Handle* h) {
  Napi::Object obj = Napi::Object::New(env);
  napi_status st = napi_wrap(
      env, obj, h,
      [](napi_env, void* data, void*) {
        // A finalizer is a C callback: nothing may be thrown out of it.
        Handle* hh = static_cast<Handle*>(data);
        try {
          hh->Close();
        } catch (...) {
        }
        delete hh;
      },
      nullptr, nullptr);
  if (st != napi_ok) {
    h->Close();
    delete h;
    throw Napi::Error::New(env, "could not wrap a native handle");
  }
  napi_type_tag_object(env, obj, h->tag());
  return obj;
}

void Registry::MaybeFinishCleanup() {
  if (tearing_down && closing_pollers == 0 && cleanup) {
    napi_async_cleanup_hook_handle h = cleanup;
    cleanup = nullptr;
    napi_remove_async_cleanup_hook(h);
  }
}

void ExportFunctions(Napi::Env env, Napi::Object exports, const char* name, RegistryPtr* data,
                     std::initializer_list<std::pair<const char*, Napi::Function::Callback>> fns) {
  Napi::Object o = Napi::Object::New(env);
  for (auto& f : fns) o.Set(f.first, Napi::Function::New(env, f.second, f.first, data));
  exports.Set(name, o);
}

}  // namespace xv
