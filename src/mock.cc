// The mock addon's own functions: introspection and configuration of the mock hypervisor
// (libxenmock), exported as `mock`. Built into xen_vchan_mock only.
#include <vector>

#include "common.h"
#include "xen.h"

namespace xv {

namespace {

Napi::Value MockStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t dom = XENMOCK_ALL_DOMAINS;
  if (info.Length() > 0 && !info[0].IsUndefined()) dom = ArgUint32(info, 0, "domid", kMaxDomid);
  std::vector<struct xenmock_stats> st(1024);
  int n = xenmock_stats(dom, st.data(), st.size());
  if (n < 0) ThrowErrno(env, errno, "xenmock_stats");
  Napi::Array out = Napi::Array::New(env);
  for (int i = 0; i < n && i < static_cast<int>(st.size()); i++) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("domid", st[i].domid);
    o.Set("handles", st[i].connections);
    o.Set("grants", st[i].grants);
    o.Set("mappedPages", st[i].mapped_pages);
    o.Set("ports", st[i].ports);
    o.Set("watches", st[i].watches);
    o.Set("nodes", st[i].nodes);
    o.Set("transactions", st[i].transactions);
    out.Set(static_cast<uint32_t>(i), o);
  }
  return out;
}

Napi::Value MockSetThreadDomid(const Napi::CallbackInfo& info) {
  int dom = -1;
  if (!info[0].IsUndefined() && !info[0].IsNull()) dom = static_cast<int>(ArgUint32(info, 0, "domid", kMaxDomid));
  if (xenmock_set_thread_domid(dom) < 0) ThrowErrno(info.Env(), errno, "xenmock_set_thread_domid");
  return info.Env().Undefined();
}

Napi::Value MockStaticAdd(const Napi::CallbackInfo& info) {
  uint32_t d = ArgUint32(info, 0, "domid", kMaxDomid), p = ArgUint32(info, 1, "port"),
           rd = ArgUint32(info, 2, "remoteDomid", kMaxDomid), rp = ArgUint32(info, 3, "remotePort");
  if (xenmock_static_evtchn_add(d, p, rd, rp) < 0) ThrowErrno(info.Env(), errno, "xenmock_static_evtchn_add");
  return info.Env().Undefined();
}

Napi::Value MockRaiseVirq(const Napi::CallbackInfo& info) {
  uint32_t d = ArgUint32(info, 0, "domid", kMaxDomid), v = ArgUint32(info, 1, "virq", 23);
  if (xenmock_raise_virq(d, v) < 0) ThrowErrno(info.Env(), errno, "xenmock_raise_virq");
  return info.Env().Undefined();
}

Napi::Value MockIntroduce(const Napi::CallbackInfo& info) {
  if (xenmock_introduce_domain(ArgUint32(info, 0, "domid", kMaxDomid)) < 0)
    ThrowErrno(info.Env(), errno, "xenmock_introduce_domain");
  return info.Env().Undefined();
}

Napi::Value MockDestroy(const Napi::CallbackInfo& info) {
  if (xenmock_destroy_domain(ArgUint32(info, 0, "domid", kMaxDomid)) < 0)
    ThrowErrno(info.Env(), errno, "xenmock_destroy_domain");
  return info.Env().Undefined();
}

Napi::Value MockReset(const Napi::CallbackInfo& info) {
  if (xenmock_reset() < 0) ThrowErrno(info.Env(), errno, "xenmock_reset");
  return info.Env().Undefined();
}

Napi::Value MockDir(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), xenmock_dir()); }

}  // namespace

void InitMock(Napi::Env env, Napi::Object exports) {
  Napi::Object mock = Napi::Object::New(env);
  mock.Set("stats", Napi::Function::New(env, MockStats, "stats"));
  mock.Set("setThreadDomid", Napi::Function::New(env, MockSetThreadDomid, "setThreadDomid"));
  mock.Set("staticAdd", Napi::Function::New(env, MockStaticAdd, "staticAdd"));
  mock.Set("raiseVirq", Napi::Function::New(env, MockRaiseVirq, "raiseVirq"));
  mock.Set("reset", Napi::Function::New(env, MockReset, "reset"));
  mock.Set("introduce", Napi::Function::New(env, MockIntroduce, "introduce"));
  mock.Set("destroy", Napi::Function::New(env, MockDestroy, "destroy"));
  mock.Set("dir", Napi::Function::New(env, MockDir, "dir"));
  exports.Set("mock", mock);
}

}  // namespace xv
