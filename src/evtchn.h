// What other bindings use of an event-channel handle of src/evtchn.cc (src/pump.cc notifies
// through one).
#pragma once

#include <napi.h>

#include <vector>

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
// Appends H's pending ports to OUT, until none is left or OUT holds LIMIT, without blocking (each
// left masked, as xenevtchn_pending() leaves it): in batches, one read of the device each on Linux,
// with no last call to hear EAGAIN. 0, or -1 with errno (the ports taken before it are in OUT).
int TakePending(xenevtchn_handle* h, std::vector<uint32_t>& out, size_t limit);
// Unmasks the N PORTS of H (one write to the device on Linux, where xenevtchn_unmask() is one each).
void UnmaskPorts(xenevtchn_handle* h, const uint32_t* ports, size_t n);

}  // namespace xv
