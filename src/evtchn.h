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

}  // namespace xv
