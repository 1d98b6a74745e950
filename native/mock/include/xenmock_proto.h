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

#define XM_PROTO_VERSION 2
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
    XM_HELLO = 1, /* a0 kind, a1 domid, a2 pid, a3 version;
                     evtchn: -> fds: the handle's wake eventfd, its xm_evt_gen page (read-only) and its
                     xm_evt_bits for the broker's own events (see "Event channels" below) */

    /* event channels */
    XM_EVTCHN_BIND_UNBOUND = 10, /* a0 remote domid -> r0 port */
    XM_EVTCHN_BIND_INTERDOMAIN,  /* a0 remote domid, a1 remote port -> r0 port */
    XM_EVTCHN_BIND_VIRQ,         /* a0 virq -> r0 port */
    XM_EVTCHN_BIND_STATIC,       /* a0 port -> r0 port */
    XM_EVTCHN_UNBIND,            /* a0 port */
    XM_EVTCHN_NOTIFY,            /* a0 port; no reply (a port whose peer has no handle: the broker keeps it pending) */
    XM_EVTCHN_UNMASK,            /* unused since protocol 2: masking is the handle's own */
    XM_EVTCHN_RESTRICT,          /* a0 domid */
    XM_EVTCHN_PEER,              /* a0 port -> r0 XM_PEER_*, r1 the port's gen; XM_PEER_LINK: r2 link id,
                                    r3 our end (0/1), r4 the remote port, fds: the link's memfd, the
                                    remote end's wake eventfd */
    XM_EVTCHN_LINKS,             /* a0 the highest link id the handle has -> r0 links_epoch, r1 count,
                                    payload {u32 id, u32 end, u32 their end}[count] (every live link of the handle),
                                    fds: the memfds of those with id > a0, in order (at most XM_MAX_FDS;
                                    r2 = 1: more to fetch) */
    XM_EVTCHN_CLOSE,             /* releases every port of the handle now, as closing Linux's evtchn fd does,
                                    so that the next notify of a peer sees them gone (the connection's end
                                    comes later, when the broker reads it) */

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

/*
 * Event channels (protocol 2): notifications go peer to peer, the broker stays the authority.
 *
 * A "link" joins two evtchn handles (or one handle to itself) that have at least one interdomain
 * channel between their ports. It is a memfd both ends map (struct xm_evt_link: one xm_evt_bits
 * per end, end 0's ports in bits[0], end 1's in bits[1]; a handle linked to itself uses bits[0]
 * only), and two eventfds, one per end, that wake that end. Notifying a port whose peer is linked
 * sets the peer port's pending bit in the peer end's bits and, when the bit was clear and the port
 * is not masked there, writes that end's eventfd: one system call, no broker. Until the peer end
 * has its eventfd watched (ready[end]), notifications go through the broker instead. The receiver's
 * epoll watches each link's eventfd; it takes bits with atomic exchanges and checks each against
 * its own table (a port it holds, whose peer is on that link), so a process writing garbage into
 * a link's memory reaches only the channels of that link.
 *
 * Masking is the receiving handle's own state (Linux keeps it in the kernel, per port): a
 * delivered port stays masked until unmask; its mask bit in the shared bits tells notifiers not
 * to wake the handle for it, and the unmask delivers an event that came meanwhile.
 *
 * The broker's own events (the first event after bind_interdomain, VIRQs, unmap notifications,
 * events for a port whose peer has no handle or is not ready) go into the handle's own
 * xm_evt_bits, with its own wake eventfd. The handle's xm_evt_gen page, read-only to it, says when
 * to ask again: gen[port] changes whenever what the port is connected to changes (its peer closed,
 * a new peer bound it, the peer's handle changed), links_epoch whenever the handle gains or loses
 * a link.
 */
#define XM_EVT_MAX_PORTS 131072u
#define XM_EVT_WORDS (XM_EVT_MAX_PORTS / 64)
#define XM_EVT_SUMMARY_WORDS (XM_EVT_WORDS / 64)

struct xm_evt_bits {
    uint64_t summary[XM_EVT_SUMMARY_WORDS]; /* bit w: pend[w] may have bits set */
    uint64_t pend[XM_EVT_WORDS];            /* bit p: port p has an event */
    uint64_t mask[XM_EVT_WORDS];            /* bit p: port p is masked (the receiver's): no wake-up */
    uint64_t again[XM_EVT_WORDS];           /* bit p: another event came while pend[p] was set */
};

struct xm_evt_link {
    uint32_t ready[2]; /* end e watches its eventfd: notifications may come straight through */
    uint32_t pad[14];
    struct xm_evt_bits bits[2];
};

struct xm_evt_gen {
    uint32_t links_epoch;
    uint32_t pad[15];
    uint32_t gen[XM_EVT_MAX_PORTS];
};

/* XM_EVTCHN_PEER's answers: where a notification of the port goes. */
enum xm_peer {
    XM_PEER_DROP = 0,   /* nowhere (unbound, or a peer Xen never had): dropped, as Xen does */
    XM_PEER_BROKER = 1, /* the peer port has no handle: send XM_EVTCHN_NOTIFY, the broker keeps it pending */
    XM_PEER_LINK = 2,   /* set the bit in the link */
};

#define XM_LINK_SIZE ((sizeof(struct xm_evt_link) + 4095) & ~(size_t)4095)
#define XM_GEN_SIZE ((sizeof(struct xm_evt_gen) + 4095) & ~(size_t)4095)
#define XM_OWN_SIZE ((sizeof(struct xm_evt_bits) + 4095) & ~(size_t)4095)

/* Sets port P's pending bit in B; true when the receiver must be woken: the bit was clear and the
 * port is not masked. (Sequentially consistent against the receiver's unmask, which clears the
 * mask bit and then looks at the pending bit: one of the two sees the other.) A second event
 * before the receiver took the first is marked in `again`: Linux puts a port in its ring (and
 * masks it) at the first event, so a second one is pending, and the unmask delivers it again;
 * programs count on that (vchan-socket-proxy waits in select() right after its first wait). */
static inline int xm_evt_raise(struct xm_evt_bits *b, uint32_t p)
{
    uint32_t w = p / 64;
    uint64_t bit = (uint64_t)1 << (p % 64);
    if (__atomic_fetch_or(&b->pend[w], bit, __ATOMIC_SEQ_CST) & bit) {
        __atomic_fetch_or(&b->again[w], bit, __ATOMIC_SEQ_CST);
        return 0;
    }
    __atomic_fetch_or(&b->summary[w / 64], (uint64_t)1 << (w % 64), __ATOMIC_SEQ_CST);
    return !(__atomic_load_n(&b->mask[w], __ATOMIC_SEQ_CST) & bit);
}

#endif
