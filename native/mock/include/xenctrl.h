/*
 * The part of libxenctrl (Xen 4.17, VERS_4.17.0) that programs built on libxenvchan use, so that
 * Xen's own vchan-socket-proxy runs on the mock: open/close of an interface handle and the
 * domain-info query, answered from the mock's domain table (the domains introduced in xenstore);
 * and what a toolstack uses to set up a channel on a domain's behalf: xc_evtchn_alloc_unbound.
 *
 * xc_dominfo_t is declared here with its leading fields only. The caller allocates the whole
 * structure (Xen's header declares more fields after these); the mock fills these fields and zeroes
 * nothing else. Their layout is the same in every Xen release from 4.1 to 4.17.
 */
#ifndef XENMOCK_XENCTRL_H
#define XENMOCK_XENCTRL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct xc_interface_core xc_interface;

#define XC_OPENFLAG_DUMMY 1
#define XC_OPENFLAG_NON_REENTRANT 2

typedef struct xc_dominfo {
    uint32_t domid;
    uint32_t ssidref;
    unsigned int dying : 1, crashed : 1, shutdown : 1, paused : 1, blocked : 1, running : 1, hvm : 1, debugged : 1,
        xenstore : 1, hap : 1;
    unsigned int shutdown_reason;
    /* ... further fields in Xen's header, left untouched */
} xc_dominfo_t;

xc_interface *xc_interface_open(void *logger, void *dombuild_logger, unsigned open_flags);
int xc_interface_close(xc_interface *xch);
/* Fills INFO[0..] with up to MAX_DOMS domains whose id is FIRST_DOMID or above, in order; returns
 * how many, or -1 with errno. */
int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms, xc_dominfo_t *info);
/* EVTCHNOP_alloc_unbound: a port in DOM's table, unbound and offered to REMOTE_DOM; no handle of the
 * caller owns it. Returns the port, or -1 with errno (EPERM: the caller is not dom0 and DOM is not
 * itself; ESRCH: no domain DOM). */
int xc_evtchn_alloc_unbound(xc_interface *xch, uint32_t dom, uint32_t remote_dom);

#ifdef __cplusplus
}
#endif

#endif
