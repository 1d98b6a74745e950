/*
 * xenmock.h: control and introspection of the mock hypervisor (libxenmock.so.1).
 *
 * Every process using the mock libraries acts as one Xen domain, chosen by the
 * XEN_MOCK_DOMID environment variable (default 0) when a handle is opened; the
 * shared state lives in a broker (xenmockd) found through XEN_MOCK_DIR. The
 * broker starts on first use and exits once its last client is gone.
 */
#ifndef XENMOCK_H
#define XENMOCK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct xenmock_stats {
    uint32_t domid;
    uint32_t connections;  /* open handles of the domain */
    uint32_t grants;       /* grant references in the domain's table */
    uint32_t mapped_pages; /* foreign pages the domain has mapped */
    uint32_t ports;        /* event channel ports in use */
    uint32_t watches;      /* xenstore watches */
    uint32_t nodes;        /* xenstore nodes the domain owns */
    uint32_t transactions; /* open xenstore transactions */
};

#define XENMOCK_ALL_DOMAINS 0xffffffffu

/* Handles opened by the calling thread from now on act as DOMID (-1: back to XEN_MOCK_DOMID). */
int xenmock_set_thread_domid(int domid);
/* The domain this thread acts as now (its own, else XEN_MOCK_DOMID, else 0); -1 if that is invalid. */
int xenmock_current_domid(void);

/* The directory that names this mock instance (XEN_MOCK_DIR or the per-user default). */
const char *xenmock_dir(void);

/* Fills OUT with up to MAX entries (one per known domain, or only DOMID).
 * Returns the number of domains, or -1 with errno. Starts no broker:
 * returns 0 when none runs. */
int xenmock_stats(uint32_t domid, struct xenmock_stats *out, size_t max);

/* Pre-binds a static event channel pair, as a dom0less device tree does. */
int xenmock_static_evtchn_add(uint32_t domid, uint32_t port, uint32_t remote_domid, uint32_t remote_port);

/* Raises VIRQ in DOMID (delivered where the domain has bound it). */
int xenmock_raise_virq(uint32_t domid, uint32_t virq);

/* Writes DOMID's xenstore entries (/local/domain/DOMID, its data/ directory), as a toolstack
 * creating the domain would; they appear by themselves when a domain opens its first handle. */
int xenmock_introduce_domain(uint32_t domid);
/* Destroys a domain as `xl destroy` does: its handles are cut without the unmap notifications a
 * dying process's kernel would send (a destroyed guest runs no more code), its ports close (their
 * peers become unbound, with no event), processes that live only in it are killed, its xenstore
 * directory is removed and @releaseDomain fires. Pages others have mapped stay mapped. Dom0 cannot
 * be destroyed (EPERM). */
int xenmock_destroy_domain(uint32_t domid);

/* Disconnects every client and clears all state. */
int xenmock_reset(void);

/* Asks the broker to exit now. Returns 0 if none was running. */
int xenmock_shutdown(void);

#ifdef __cplusplus
}
#endif
#endif
