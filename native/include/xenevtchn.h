/*
 * xenevtchn.h for the mock hypervisor: the libxenevtchn.so.1 API (VERS_1.0,
 * VERS_1.1 restrict) plus the mock's static event channel binding.
 * Declarations follow Xen's documented, stable ABI; no Xen header is needed.
 */
#ifndef XENEVTCHN_H
#define XENEVTCHN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef XENMOCK_HAVE_XEN_TYPES
#define XENMOCK_HAVE_XEN_TYPES
typedef uint32_t evtchn_port_t;
typedef uint16_t domid_t;
#endif

typedef int xenevtchn_port_or_error_t;
typedef struct xenevtchn_handle xenevtchn_handle;
struct xentoollog_logger;

#define XENEVTCHN_NO_CLOEXEC (1 << 0)

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags);
int xenevtchn_close(xenevtchn_handle *xce);
int xenevtchn_fd(xenevtchn_handle *xce);
int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port);
xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *xce, uint32_t domid);
xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid, evtchn_port_t remote_port);
xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce, unsigned int virq);
int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port);
xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce);
int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port);
int xenevtchn_restrict(xenevtchn_handle *xce, domid_t domid);

/* Mock only (no Xen release has it): binds a static (dom0less) event channel
 * that the mock's configuration pre-bound for this domain. On real Xen the
 * addon issues IOCTL_EVTCHN_BIND_STATIC on xenevtchn_fd() instead. */
#define XENMOCK_HAVE_BIND_STATIC 1
xenevtchn_port_or_error_t xenevtchn_bind_static(xenevtchn_handle *xce, evtchn_port_t port);

/* Mock only: takes up to MAX pending ports into PORTS (each masked, as xenevtchn_pending() leaves
 * it) and returns how many, 0 when none is pending; never blocks, whatever the descriptor's mode.
 * A return below MAX means nothing else was pending when it looked: a caller need not call again
 * to hear EAGAIN, and xenevtchn_fd() polls readable again for anything that comes later. -1 with
 * errno on failure. On Linux the addon reads /dev/xen/evtchn, which hands over every queued port
 * in one read, instead. */
#define XENMOCK_HAVE_PENDING_MANY 1
int xenmock_evtchn_pending_many(xenevtchn_handle *xce, evtchn_port_t *ports, unsigned int max);

#ifdef __cplusplus
}
#endif
#endif
