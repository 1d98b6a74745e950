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
// Takes up to MAX pending ports of H into PORTS without blocking (each left masked, as
// xenevtchn_pending() leaves it): how many, 0 when none is pending, -1 with errno. A return below
// MAX means none was left when it looked, so a drain needs no last call to hear EAGAIN.
int PendingPorts(xenevtchn_handle* h, uint32_t* ports, int max);
// Unmasks the N PORTS of H (one write to the device on Linux, where xenevtchn_unmask() is one each).
void UnmaskPorts(xenevtchn_handle* h, const uint32_t* ports, size_t n);

}  // namespace xv
