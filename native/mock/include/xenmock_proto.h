/*
 * Wire protocol between the mock Xen client libraries and xenmockd.
 *
 * Every client handle (an evtchn, gnttab, gntshr or xenstore handle) is one
 * SOCK_SEQPACKET connection to the broker, so the broker learns of a handle's
 * end, including the death of its process, the moment the kernel closes the
 * socket. That is what lets unmap-notify work on SIGKILL.
 *
 * A message is a fixed header followed by up to XM_MAX_PAYLOAD bytes.
 * File descriptors (grant memory, event pipes, watch sockets) travel as
 * SCM_RIGHTS ancillary data.
 */
#ifndef XENMOCK_PROTO_H
#define XENMOCK_PROTO_H

#include <stdint.h>

#define XM_PROTO_VERSION 1
#define XM_MAX_PAYLOAD (64 * 1024)
#define XM_MAX_FDS 64
#define XM_PAGE_SIZE 4096u

/* Connection kinds, sent in XM_HELLO. */
enum xm_kind {
    XM_KIND_EVTCHN = 1,
    XM_KIND_GNTTAB = 2,
    XM_KIND_GNTSHR = 3,
    XM_KIND_XS = 4,
    XM_KIND_CTL = 5,
};

enum xm_op {
    XM_HELLO = 1, /* a0 kind, a1 domid, a2 pid, a3 version; fd: evtchn pipe */

    /* event channels */
    XM_EVTCHN_BIND_UNBOUND = 10, /* a0 remote domid -> r0 port */
    XM_EVTCHN_BIND_INTERDOMAIN,  /* a0 remote domid, a1 remote port -> r0 port */
    XM_EVTCHN_BIND_VIRQ,         /* a0 virq -> r0 port */
    XM_EVTCHN_BIND_STATIC,       /* a0 port -> r0 port */
    XM_EVTCHN_UNBIND,            /* a0 port */
    XM_EVTCHN_NOTIFY,            /* a0 port; no reply */
    XM_EVTCHN_UNMASK,            /* a0 port; no reply */
    XM_EVTCHN_RESTRICT,          /* a0 domid */

    /* grants */
    XM_GNT_SHARE = 30, /* a0 grantee, a1 count, a2 writable, a3 notify off (-1), a4 notify port (-1);
                          fd: memfd -> payload u32 refs[count], r0 share id */
    XM_GNT_UNSHARE,    /* a0 share id */
    XM_GNT_MAP,        /* a0 count, a1 writable, a2 notify off (-1), a3 notify port (-1);
                          payload: {u32 domid, u32 ref}[count]
                          -> r0 map id, r1 nfds, fds, payload {u32 fdidx, u32 page}[count] */
    XM_GNT_UNMAP,      /* a0 map id */
    XM_GNT_SET_MAX,    /* a0 max grants */

    /* xenstore: a0 transaction id; payload NUL-separated strings */
    XM_XS_READ = 50,
    XM_XS_WRITE, /* payload: path NUL value (a1 = value length) */
    XM_XS_MKDIR,
    XM_XS_RM,
    XM_XS_DIRECTORY,
    XM_XS_GET_PERMS, /* -> payload {u32 id, u32 perms}[] */
    XM_XS_SET_PERMS, /* payload: path NUL {u32 id, u32 perms}[] (a1 = count) */
    XM_XS_TXN_START, /* -> r0 id */
    XM_XS_TXN_END,   /* a0 id, a1 abort */
    XM_XS_WATCH,     /* payload: path NUL token NUL */
    XM_XS_UNWATCH,
    XM_XS_WATCH_CHANNEL, /* fd: the broker's end of the watch socket pair */
    XM_XS_IS_INTRODUCED, /* a1 domid -> r0 bool */

    /* control and introspection */
    XM_CTL_STATS = 80, /* a0 domid or 0xffffffff for all -> payload struct xm_stats[] */
    XM_CTL_RESET,
    XM_CTL_STATIC_ADD, /* a0 dom, a1 port, a2 remote dom, a3 remote port */
    XM_CTL_RAISE_VIRQ, /* a0 dom, a1 virq */
    XM_CTL_SHUTDOWN,
    XM_CTL_INTRODUCE,            /* a0 dom: write its xenstore entries, as a toolstack creating it would */
    XM_CTL_DESTROY,              /* a0 dom: what `xl destroy` does (see broker/main.c) */
    XM_CTL_EVTCHN_ALLOC_UNBOUND, /* a0 dom, a1 remote dom -> r0 port (xc_evtchn_alloc_unbound; the
                                    caller is the hello's domain) */
};

struct xm_msg {
    uint32_t op;
    int32_t err;   /* reply: 0 or a positive errno */
    uint32_t a[6]; /* request arguments, reply results */
    uint32_t len;  /* payload length */
};

struct xm_stats {
    uint32_t domid;
    uint32_t connections;
    uint32_t grants;       /* grant entries in the domain's table */
    uint32_t mapped_pages; /* foreign pages mapped by the domain */
    uint32_t ports;        /* event channel ports in use */
    uint32_t watches;
    uint32_t nodes; /* xenstore nodes owned by the domain */
    uint32_t transactions;
};

#define XM_NONE 0xffffffffu

#endif
