// Every Xen library header the addon uses. Xen's own headers (Debian's libxen-dev)
// carry no extern "C" guards, so they are included as C here, once.
#pragma once

extern "C" {
#include <libxenvchan.h>
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xenstore.h>
#include <xv_protocol.h>
#include <xv_retry.h>

#include <xv_vchan.h>
#ifdef XEN_VCHAN_MOCK
#include <xenmock.h>
#endif
}
