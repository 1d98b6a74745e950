// What other bindings use of an event-channel handle of src/evtchn.cc (src/pump.cc notifies
// through one).
#pragma once

#include <napi.h>

#include <functional>
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
// Has native code handle PORT's events on the EventChannel handle EV in place of JS's: on a
// wake-up, before any JS runs, the port is unmasked and HANDLER called (from libuv: no handle
// scope is open); it returns true when JS must hear of the event after all. OWNER (the
// handler's object) replaces any earlier handler of PORT. Unbinding or closing drops it.
void SetNativePort(Handle* ev, uint32_t port, const void* owner, std::function<bool()> handler);
// Drops OWNER's handler of PORT (nothing if another's has replaced it).
void ClearNativePort(Handle* ev, uint32_t port, const void* owner);
// Unmasks the N PORTS of H (one write to the device on Linux, where xenevtchn_unmask() is one each).
void UnmaskPorts(xenevtchn_handle* h, const uint32_t* ports, size_t n);

}  // namespace xv
