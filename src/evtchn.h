// What other bindings use of an event-channel handle of src/evtchn.cc (src/pump.cc notifies
// through one).
#pragma once

#include <napi.h>

#include "handles.h"

struct xenevtchn_handle;

namespace xv {

// The EventChannel handle in info[0] (a TypeError, or ERR_XEN_CLOSED, for anything else).
Handle* UnwrapEvtchn(const Napi::CallbackInfo& info);
// Its libxenevtchn handle; null once the handle is closed.
xenevtchn_handle* EvtchnOf(Handle* h);
// Binds static (dom0less) PORT on H: IOCTL_EVTCHN_BIND_STATIC (the mock: xenevtchn_bind_static).
// PORT, or -1 with errno (ENOTSUP on a kernel without the ioctl). The shape of xv_vchan_bind_fn.
int BindStaticPort(xenevtchn_handle* h, uint32_t port);

}  // namespace xv
