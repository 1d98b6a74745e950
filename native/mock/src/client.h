/* Client side of the broker protocol: private to the mock libraries. */
#ifndef XENMOCK_CLIENT_H
#define XENMOCK_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include "../include/xenmock_proto.h"

#define XM_EXPORT __attribute__((visibility("default")))

/* Domain id that a handle opened now acts as (thread override, else XEN_MOCK_DOMID, else 0). -1 if invalid. */
XM_EXPORT int xm_current_domid(void);

/* Connect to the broker (starting it if needed) and introduce a handle of KIND.
 * PASS_FD, if >= 0, is sent along with the hello. Returns the socket or -1/errno. */
XM_EXPORT int xm_open(int kind, int pass_fd);
/* Like xm_open, keeping the descriptors the broker's hello reply carries (as xm_call's FDS, NFDS). */
XM_EXPORT int xm_open_fds(int kind, int *fds, int *nfds);
/* Like xm_open but never starts a broker: ECONNREFUSED when none runs. */
XM_EXPORT int xm_open_existing(int kind);

/* A synchronous call. REQ->len is set from LEN. On return REP holds the reply
 * header; the payload (at most RCAP bytes) is in RBUF. Received descriptors are
 * stored in FDS (up to *NFDS; *NFDS is updated) or closed when FDS is NULL.
 * Returns 0, or -1 with errno (the broker's error, or a transport error). */
XM_EXPORT int xm_call(int sock, struct xm_msg *req, const void *payload, uint32_t len, int send_fd, struct xm_msg *rep,
                      void *rbuf, uint32_t rcap, int *fds, int *nfds);

/* Fire-and-forget message (notify, unmask). */
XM_EXPORT int xm_post(int sock, uint32_t op, uint32_t a0);

#endif
