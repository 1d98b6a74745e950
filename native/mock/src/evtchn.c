/*
 * libxenevtchn.so.1 for the mock hypervisor.
 *
 * Notifications go from handle to handle without the broker ("Event channels" in
 * xenmock_proto.h): a notify sets the peer port's bit in the link the two handles share and, when
 * the bit was clear, writes the peer end's eventfd. The broker binds, links and unbinds, and sends
 * its own events into the handle's own bits.
 *
 * xenevtchn_fd() is an epoll descriptor over the handle's wake eventfds (its own and one per
 * link), so it is pollable as /dev/xen/evtchn is, and its O_NONBLOCK flag is the caller's alone.
 * xenevtchn_pending() takes the bits that woke it and returns one port at a time; masking is kept
 * here, per port, as Linux keeps it in the kernel: a delivered port stays masked until
 * xenevtchn_unmask(), and an event that came meanwhile is delivered again by the unmask.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

#include "client.h"
#include "../../include/xenevtchn.h"

/* What a handle knows of a link (see xenmock_proto.h). */
struct link {
    uint32_t id;
    int end;       /* ours */
    int peer_end;  /* theirs (0 for a handle linked to itself) */
    int wake;      /* our end's eventfd, in the epoll set (-1 until LINKS gave it) */
    int peer_wake; /* theirs, to wake them (-1 until PEER gave it) */
    char *mem;     /* NULL: a dead link, its descriptors closed (kept for reuse: see link_new) */
    int users;     /* ports whose notifications go through it */
    bool live;     /* in the broker's list when last fetched */
    struct link *next;
};

enum route { ROUTE_UNKNOWN = 0, ROUTE_DROP, ROUTE_BROKER, ROUTE_LINK, ROUTE_INVALID };

struct slot {
    bool bound;
    bool masked;  /* delivered, not yet unmasked */
    bool pending; /* an event came while masked */
    uint8_t route;
    uint32_t gen;         /* the xm_evt_gen value the route was learned at */
    uint32_t remote_port; /* ROUTE_LINK */
    struct link *link;    /* ROUTE_LINK */
};

struct xenevtchn_handle {
    int sock;
    pid_t pid;      /* the process that opened it (a forked child's close releases nothing) */
    int ep;         /* xenevtchn_fd() */
    int wake;       /* our own eventfd: the broker's events, links to fetch, ports queued by unmask */
    bool woke_self; /* we wrote WAKE ourselves (ports left queued) since it was last drained */
    const struct xm_evt_gen *gen;
    struct xm_evt_bits *own;
    pthread_mutex_t lock;
    struct slot *slots; /* indexed by port */
    uint32_t nslots;
    uint32_t nbound;
    struct link *links;
    uint32_t epoch;   /* links_epoch when the list was last fetched */
    uint32_t last_id; /* the highest link id fetched */
    int scanning;     /* take() is reading a link's bits: no link is unmapped meanwhile */
    uint32_t *queue;  /* ports taken and not yet returned by xenevtchn_pending() */
    uint32_t qhead, qlen, qcap;
};

#define OWN_TAG ((uint64_t)0)

static struct slot *slot_of(xenevtchn_handle *h, uint32_t port)
{
    return port < h->nslots && h->slots[port].bound ? &h->slots[port] : NULL;
}

static void wake_fd(int fd)
{
    uint64_t one = 1;
    (void)!write(fd, &one, sizeof(one)); /* EAGAIN: already as awake as it can be */
}

static void drain_fd(int fd)
{
    uint64_t v;
    (void)!read(fd, &v, sizeof(v));
}

static struct xm_evt_bits *bits_at(struct link *l, int end)
{
    return &((struct xm_evt_link *)l->mem)->bits[end];
}

static void bit_set(uint64_t *words, uint32_t p)
{
    __atomic_fetch_or(&words[p / 64], (uint64_t)1 << (p % 64), __ATOMIC_SEQ_CST);
}

static void bit_clear(uint64_t *words, uint32_t p)
{
    __atomic_fetch_and(&words[p / 64], ~((uint64_t)1 << (p % 64)), __ATOMIC_SEQ_CST);
}

/* Clears P's bit, saying whether it was set. */
static bool bit_take(uint64_t *words, uint32_t p)
{
    uint64_t bit = (uint64_t)1 << (p % 64);
    if (!(__atomic_load_n(&words[p / 64], __ATOMIC_SEQ_CST) & bit))
        return false;
    return (__atomic_fetch_and(&words[p / 64], ~bit, __ATOMIC_SEQ_CST) & bit) != 0;
}

static uint32_t gen_of(xenevtchn_handle *h, uint32_t port)
{
    return __atomic_load_n(&h->gen->gen[port], __ATOMIC_ACQUIRE);
}

/* A link struct for ID: a dead one is reused rather than freed, because an epoll event taken
 * before the lock was dropped may still name it (it is then only a spurious look at a link). */
static struct link *link_new(xenevtchn_handle *h, uint32_t id, int end, int peer_end, char *mem)
{
    struct link *l = NULL;
    for (struct link *x = h->links; x; x = x->next)
        if (!x->mem && x->users == 0) {
            l = x;
            break;
        }
    if (!l) {
        l = calloc(1, sizeof(*l));
        if (!l)
            return NULL;
        l->next = h->links;
        h->links = l;
    }
    l->id = id;
    l->end = end;
    l->peer_end = peer_end;
    l->wake = l->peer_wake = -1;
    l->mem = mem;
    l->users = 0;
    l->live = true;
    return l;
}

static struct link *link_find(xenevtchn_handle *h, uint32_t id)
{
    for (struct link *l = h->links; l; l = l->next)
        if (l->mem && l->id == id)
            return l;
    return NULL;
}

/* Closes what a link holds once it is gone from the broker and no port of ours uses it; never
 * while take() reads a link's bits (links_reap runs after). */
static void link_release(xenevtchn_handle *h, struct link *l)
{
    if (!l->mem || l->live || l->users > 0 || h->scanning)
        return;
    if (l->wake >= 0) {
        epoll_ctl(h->ep, EPOLL_CTL_DEL, l->wake, NULL);
        close(l->wake);
    }
    if (l->peer_wake >= 0)
        close(l->peer_wake);
    munmap(l->mem, XM_LINK_SIZE);
    l->mem = NULL;
    l->wake = l->peer_wake = -1;
}

static char *map_link(int memfd)
{
    void *m = mmap(NULL, XM_LINK_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    close(memfd);
    return m == MAP_FAILED ? NULL : m;
}

/* Our end's eventfd of L, watched from now on. Edge-triggered: every write the peer makes is one
 * report, so the count is never read back (a system call per wake-up saved; the peer writes once
 * per event that finds its bit clear, so the counter cannot come near its limit), and one written
 * before it is watched is reported too, as epoll reports a descriptor ready when it is added. */
static int link_watch(xenevtchn_handle *h, struct link *l, int wakefd)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = l};
    if (epoll_ctl(h->ep, EPOLL_CTL_ADD, wakefd, &ev) < 0) {
        close(wakefd);
        return -1;
    }
    l->wake = wakefd;
    __atomic_store_n(&((struct xm_evt_link *)l->mem)->ready[l->end], 1, __ATOMIC_SEQ_CST);
    return 0;
}

/* Fetches the broker's list of our links: new ones are mapped and watched, gone ones released. */
static int links_sync(xenevtchn_handle *h)
{
    uint32_t epoch = __atomic_load_n(&h->gen->links_epoch, __ATOMIC_ACQUIRE);
    char *buf = malloc(XM_MAX_PAYLOAD);
    if (!buf)
        return -1;
    int more = 1, rc = 0;
    while (more) {
        struct xm_msg m = {.op = XM_EVTCHN_LINKS, .a = {h->last_id}}, r;
        int fds[XM_MAX_FDS], nfds = XM_MAX_FDS;
        if (xm_call(h->sock, &m, NULL, 0, -1, &r, buf, XM_MAX_PAYLOAD, fds, &nfds) < 0) {
            rc = -1;
            break;
        }
        uint32_t n = r.a[1], after = h->last_id;
        more = r.a[2] != 0;
        if (n * 12 > r.len)
            n = r.len / 12;
        for (struct link *l = h->links; l; l = l->next)
            l->live = false;
        int fi = 0;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t ent[3];
            memcpy(ent, buf + i * 12, sizeof(ent));
            struct link *l = link_find(h, ent[0]);
            if (ent[0] > after && fi + 2 <= nfds) {
                int memfd = fds[fi++], wakefd = fds[fi++];
                if (!l) {
                    char *mem = map_link(memfd);
                    l = mem ? link_new(h, ent[0], (int)ent[1], (int)ent[2], mem) : NULL;
                    if (!l) {
                        if (mem)
                            munmap(mem, XM_LINK_SIZE);
                        close(wakefd);
                        rc = -1;
                        continue;
                    }
                } else {
                    close(memfd);
                }
                if (l->wake < 0)
                    link_watch(h, l, wakefd);
                else
                    close(wakefd);
                if (ent[0] > h->last_id)
                    h->last_id = ent[0];
            }
            if (l)
                l->live = true;
        }
        for (; fi < nfds; fi++)
            close(fds[fi]);
    }
    free(buf);
    if (rc == 0) {
        for (struct link *l = h->links; l; l = l->next)
            link_release(h, l);
        h->epoch = epoch;
    }
    return rc;
}

static void links_reap(xenevtchn_handle *h)
{
    for (struct link *l = h->links; l; l = l->next)
        link_release(h, l);
}

static int queue_push(xenevtchn_handle *h, uint32_t port);
static void wake_self(xenevtchn_handle *h);

static void route_drop(xenevtchn_handle *h, uint32_t port, struct slot *s)
{
    if (s->route == ROUTE_LINK && s->link) {
        struct xm_evt_bits *b = bits_at(s->link, s->link->end);
        bit_clear(b->mask, port);
        /* An event the link holds for PORT goes with the route, taken here: left set, it would
         * swallow the first event of the port's next binding over the same link (a notifier that
         * finds the bit set wakes nobody), and a handle kept across channels meets that link
         * again. Delivered (spurious at worst, as Xen allows) or kept for the unmask. */
        bool had = bit_take(b->pend, port);
        bit_clear(b->again, port);
        if (had && s->masked) {
            s->pending = true;
        } else if (had && queue_push(h, port) == 0) {
            s->masked = true;
            bit_set(h->own->mask, port);
            wake_self(h);
        }
        s->link->users--;
        link_release(h, s->link);
    }
    s->route = ROUTE_UNKNOWN;
    s->link = NULL;
}

/* Asks the broker where PORT's notifications go now. */
static int resolve(xenevtchn_handle *h, uint32_t port, struct slot *s)
{
    route_drop(h, port, s);
    struct xm_msg m = {.op = XM_EVTCHN_PEER, .a = {port}}, r;
    int fds[2], nfds = 2;
    if (xm_call(h->sock, &m, NULL, 0, -1, &r, NULL, 0, fds, &nfds) < 0)
        return -1;
    s->gen = r.a[1];
    if (r.a[0] != XM_PEER_LINK) {
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        s->route = r.a[0] == XM_PEER_BROKER ? ROUTE_BROKER : ROUTE_DROP;
        return 0;
    }
    if (nfds != 2) {
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        errno = EPROTO;
        return -1;
    }
    struct link *l = link_find(h, r.a[2]);
    bool fresh = !l;
    if (!l) {
        char *mem = map_link(fds[0]);
        l = mem ? link_new(h, r.a[2], (int)r.a[3], (int)r.a[5], mem) : NULL;
        if (!l) {
            if (mem)
                munmap(mem, XM_LINK_SIZE);
            close(fds[1]);
            errno = ENOMEM;
            return -1;
        }
    } else {
        close(fds[0]);
    }
    if (l->peer_wake < 0)
        l->peer_wake = fds[1];
    else
        close(fds[1]);
    s->route = ROUTE_LINK;
    s->link = l;
    s->remote_port = r.a[4];
    l->users++;
    if (s->masked)
        bit_set(bits_at(l, l->end)->mask, port);
    /* A link new to us: watch our end of it before anything can come through it. */
    if (fresh || l->wake < 0)
        links_sync(h);
    return 0;
}

static int queue_push(xenevtchn_handle *h, uint32_t port)
{
    if (h->qlen == h->qcap) {
        uint32_t cap = h->qcap ? h->qcap * 2 : 64;
        uint32_t *q = malloc(cap * sizeof(*q));
        if (!q)
            return -1;
        for (uint32_t i = 0; i < h->qlen; i++)
            q[i] = h->queue[(h->qhead + i) % h->qcap];
        free(h->queue);
        h->queue = q;
        h->qcap = cap;
        h->qhead = 0;
    }
    h->queue[(h->qhead + h->qlen) % h->qcap] = port;
    h->qlen++;
    return 0;
}

/* The oldest port taken and not yet returned (the queue is not empty). */
static uint32_t queue_pop(xenevtchn_handle *h)
{
    uint32_t port = h->queue[h->qhead];
    h->qhead = (h->qhead + 1) % h->qcap;
    h->qlen--;
    return port;
}

/* Whether S's route is what the broker last said (xm_evt_gen), asking again if not. */
static bool route_current(xenevtchn_handle *h, uint32_t port, struct slot *s)
{
    if (s->route != ROUTE_UNKNOWN && s->gen == gen_of(h, port))
        return true;
    return resolve(h, port, s) == 0;
}

/* PORT is masked (or unmasked) wherever events for it are set: our own bits and its link's. */
static void mask_shared(xenevtchn_handle *h, uint32_t port, struct slot *s, bool on)
{
    void (*op)(uint64_t *, uint32_t) = on ? bit_set : bit_clear;
    op(h->own->mask, port);
    if (s->route == ROUTE_LINK && s->link)
        op(bits_at(s->link, s->link->end)->mask, port);
}

/* An event for PORT: delivered (queued, and masked) unless masked, when it waits for the unmask. */
static void deliver(xenevtchn_handle *h, uint32_t port, struct slot *s)
{
    if (s->masked) {
        s->pending = true;
        return;
    }
    if (queue_push(h, port) < 0) {
        s->pending = true; /* out of memory: kept for the unmask rather than lost */
        return;
    }
    s->masked = true;
    /* Notifiers must see the mask, or they would wake us for a port we may not deliver. */
    route_current(h, port, s);
    mask_shared(h, port, s, true);
}

/* Takes the bits set in B. From a link (L), only ports of ours whose peer is on L count: anything
 * else there was written by a process that has no channel to that port. */
static void take(xenevtchn_handle *h, struct xm_evt_bits *b, struct link *l)
{
    h->scanning++;
    for (uint32_t sw = 0; sw < XM_EVT_SUMMARY_WORDS; sw++) {
        if (!__atomic_load_n(&b->summary[sw], __ATOMIC_RELAXED))
            continue;
        uint64_t v = __atomic_exchange_n(&b->summary[sw], 0, __ATOMIC_ACQ_REL);
        while (v) {
            uint32_t w = sw * 64 + (uint32_t)__builtin_ctzll(v);
            v &= v - 1;
            uint64_t x = __atomic_exchange_n(&b->pend[w], 0, __ATOMIC_SEQ_CST);
            uint64_t again = x ? __atomic_fetch_and(&b->again[w], ~x, __ATOMIC_SEQ_CST) & x : 0;
            while (x) {
                uint32_t port = w * 64 + (uint32_t)__builtin_ctzll(x);
                x &= x - 1;
                struct slot *s = slot_of(h, port);
                if (!s)
                    continue;
                if (l && (!route_current(h, port, s) || s->route != ROUTE_LINK || s->link != l))
                    continue;
                deliver(h, port, s);
                if (again & ((uint64_t)1 << (port % 64)))
                    s->pending = true; /* the unmask delivers it again, as Linux's would */
            }
        }
    }
    if (--h->scanning == 0)
        links_reap(h);
}

/* Our own eventfd fired: links to fetch, the broker's events. */
static void take_own(xenevtchn_handle *h)
{
    drain_fd(h->wake);
    h->woke_self = false;
    if (__atomic_load_n(&h->gen->links_epoch, __ATOMIC_ACQUIRE) != h->epoch)
        links_sync(h);
    take(h, h->own, NULL);
}

/* Whether our own eventfd may have been written since it was last drained: by us (ports left
 * queued), or by the broker, which sets a bit or moves the links epoch before it writes. A write
 * that lands after this says no makes the descriptor readable, and the next call drains it. */
static bool own_stirred(xenevtchn_handle *h)
{
    if (h->woke_self || __atomic_load_n(&h->gen->links_epoch, __ATOMIC_ACQUIRE) != h->epoch)
        return true;
    for (uint32_t sw = 0; sw < XM_EVT_SUMMARY_WORDS; sw++)
        if (__atomic_load_n(&h->own->summary[sw], __ATOMIC_ACQUIRE))
            return true;
    return false;
}

static void wake_self(xenevtchn_handle *h)
{
    h->woke_self = true;
    wake_fd(h->wake);
}

XM_EXPORT xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags)
{
    (void)logger;
    xenevtchn_handle *h = calloc(1, sizeof(*h));
    if (!h) {
        errno = ENOMEM;
        return NULL;
    }
    h->ep = -1;
    h->pid = getpid();
    int fds[3], nfds = 3, e = EPROTO;
    h->sock = xm_open_fds(XM_KIND_EVTCHN, fds, &nfds);
    if (h->sock < 0) {
        e = errno;
        free(h);
        errno = e;
        return NULL;
    }
    void *g = MAP_FAILED, *o = MAP_FAILED;
    if (nfds == 3) {
        h->wake = fds[0];
        g = mmap(NULL, XM_GEN_SIZE, PROT_READ, MAP_SHARED, fds[1], 0);
        o = mmap(NULL, XM_OWN_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fds[2], 0);
        e = errno;
        close(fds[1]);
        close(fds[2]);
        h->ep = epoll_create1((flags & XENEVTCHN_NO_CLOEXEC) ? 0 : EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        if (g != MAP_FAILED && o != MAP_FAILED && h->ep >= 0 && epoll_ctl(h->ep, EPOLL_CTL_ADD, h->wake, &ev) == 0) {
            h->gen = g;
            h->own = o;
            pthread_mutex_init(&h->lock, NULL);
            return h;
        }
        e = errno;
    } else {
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
    }
    if (g != MAP_FAILED)
        munmap(g, XM_GEN_SIZE);
    if (o != MAP_FAILED)
        munmap(o, XM_OWN_SIZE);
    if (h->ep >= 0)
        close(h->ep);
    if (nfds == 3)
        close(h->wake);
    close(h->sock);
    free(h);
    errno = e;
    return NULL;
}

XM_EXPORT int xenevtchn_close(xenevtchn_handle *h)
{
    if (!h)
        return 0;
    /* Closing Linux's evtchn fd unbinds its ports before close() returns: a peer's notify right
     * after must find them unbound (kept pending, for a static port). The broker would only learn of
     * it when it next reads the socket, so ask it now. A child that inherited the handle through
     * fork() holds a reference only, as with Linux's fd: its close releases nothing. */
    if (h->pid == getpid()) {
        struct xm_msg m = {.op = XM_EVTCHN_CLOSE}, r;
        (void)xm_call(h->sock, &m, NULL, 0, -1, &r, NULL, 0, NULL, NULL);
    }
    for (struct link *l = h->links, *n; l; l = n) {
        n = l->next;
        if (l->mem)
            munmap(l->mem, XM_LINK_SIZE);
        if (l->wake >= 0)
            close(l->wake);
        if (l->peer_wake >= 0)
            close(l->peer_wake);
        free(l);
    }
    close(h->sock);
    close(h->ep);
    close(h->wake);
    munmap((void *)h->gen, XM_GEN_SIZE);
    munmap(h->own, XM_OWN_SIZE);
    pthread_mutex_destroy(&h->lock);
    free(h->slots);
    free(h->queue);
    free(h);
    return 0;
}

XM_EXPORT int xenevtchn_fd(xenevtchn_handle *h)
{
    return h->ep;
}

static int slot_add(xenevtchn_handle *h, uint32_t port)
{
    if (port >= XM_EVT_MAX_PORTS) {
        errno = EPROTO;
        return -1;
    }
    if (port >= h->nslots) {
        uint32_t n = h->nslots ? h->nslots : 64;
        while (n <= port)
            n *= 2;
        struct slot *s = realloc(h->slots, n * sizeof(*s));
        if (!s) {
            errno = ENOMEM;
            return -1;
        }
        memset(s + h->nslots, 0, (n - h->nslots) * sizeof(*s));
        h->slots = s;
        h->nslots = n;
    }
    memset(&h->slots[port], 0, sizeof(h->slots[port]));
    h->slots[port].bound = true;
    h->nbound++;
    bit_clear(h->own->mask, port); /* a new port starts unmasked */
    return 0;
}

static void slot_clear(xenevtchn_handle *h, uint32_t port)
{
    struct slot *s = &h->slots[port];
    route_drop(h, port, s);
    bit_clear(h->own->mask, port);
    bit_clear(h->own->pend, port);
    bit_clear(h->own->again, port);
    memset(s, 0, sizeof(*s));
    h->nbound--;
}

static xenevtchn_port_or_error_t bind_call(xenevtchn_handle *h, uint32_t op, uint32_t a0, uint32_t a1)
{
    struct xm_msg m = {.op = op, .a = {a0, a1}}, r;
    /* Held across the call: an event the broker sends at once (bind_interdomain's) finds the port. */
    pthread_mutex_lock(&h->lock);
    int rc = xm_call(h->sock, &m, NULL, 0, -1, &r, NULL, 0, NULL, NULL);
    if (rc == 0 && slot_add(h, r.a[0]) < 0) {
        int e = errno;
        struct xm_msg u = {.op = XM_EVTCHN_UNBIND, .a = {r.a[0]}}, ur;
        xm_call(h->sock, &u, NULL, 0, -1, &ur, NULL, 0, NULL, NULL);
        errno = e;
        rc = -1;
    }
    int e = errno;
    pthread_mutex_unlock(&h->lock);
    errno = e;
    return rc < 0 ? -1 : (xenevtchn_port_or_error_t)r.a[0];
}

XM_EXPORT xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *h, uint32_t domid)
{
    return bind_call(h, XM_EVTCHN_BIND_UNBOUND, domid, 0);
}

XM_EXPORT xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *h, uint32_t domid,
                                                               evtchn_port_t remote_port)
{
    return bind_call(h, XM_EVTCHN_BIND_INTERDOMAIN, domid, remote_port);
}

XM_EXPORT xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *h, unsigned int virq)
{
    return bind_call(h, XM_EVTCHN_BIND_VIRQ, virq, 0);
}

XM_EXPORT xenevtchn_port_or_error_t xenevtchn_bind_static(xenevtchn_handle *h, evtchn_port_t port)
{
    return bind_call(h, XM_EVTCHN_BIND_STATIC, port, 0);
}

XM_EXPORT int xenevtchn_unbind(xenevtchn_handle *h, evtchn_port_t port)
{
    pthread_mutex_lock(&h->lock);
    int rc = -1, e = ENOTCONN;
    if (slot_of(h, port)) {
        struct xm_msg m = {.op = XM_EVTCHN_UNBIND, .a = {port}}, r;
        rc = xm_call(h->sock, &m, NULL, 0, -1, &r, NULL, 0, NULL, NULL);
        e = errno;
        if (rc == 0)
            slot_clear(h, port);
    }
    pthread_mutex_unlock(&h->lock);
    errno = e;
    return rc;
}

XM_EXPORT int xenevtchn_notify(xenevtchn_handle *h, evtchn_port_t port)
{
    pthread_mutex_lock(&h->lock);
    struct slot *s = slot_of(h, port);
    int rc = 0, e = 0;
    if (!s) {
        rc = -1;
        e = ENOTCONN; /* what Linux's IOCTL_EVTCHN_NOTIFY says for a port this fd did not bind */
    } else if (!route_current(h, port, s)) {
        rc = -1;
        e = errno;
    } else if (s->route == ROUTE_LINK &&
               __atomic_load_n(&((struct xm_evt_link *)s->link->mem)->ready[s->link->peer_end], __ATOMIC_SEQ_CST)) {
        if (xm_evt_raise(bits_at(s->link, s->link->peer_end), s->remote_port))
            wake_fd(s->link->peer_wake);
    } else if (s->route == ROUTE_LINK || s->route == ROUTE_BROKER) {
        /* The peer has no handle, or does not watch the link yet: the broker delivers it. */
        rc = xm_post(h->sock, XM_EVTCHN_NOTIFY, port);
        e = errno;
    }
    pthread_mutex_unlock(&h->lock);
    errno = e;
    return rc;
}

/* A bound port that is not masked, for a spurious event (see xenevtchn_pending), or NULL. */
static struct slot *any_unmasked(xenevtchn_handle *h, uint32_t *port)
{
    for (uint32_t p = 1; p < h->nslots; p++)
        if (h->slots[p].bound && !h->slots[p].masked) {
            *port = p;
            return &h->slots[p];
        }
    return NULL;
}

/* What a look at the epoll set found (N events in EV): each link's bits taken (its eventfd is
 * edge-triggered: see link_watch), then our own eventfd drained and its bits taken. Links first:
 * fetching the list (our own eventfd) may release one an event names. */
static void absorb(xenevtchn_handle *h, struct epoll_event *ev, int n)
{
    bool own = false;
    for (int i = 0; i < n; i++) {
        struct link *l = ev[i].data.ptr;
        if (!l) {
            own = true;
        } else if (l->mem && l->wake >= 0) {
            take(h, bits_at(l, l->end), l);
        }
    }
    if (own)
        take_own(h);
}

XM_EXPORT xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *h)
{
    pthread_mutex_lock(&h->lock);
    /* Whether this call took a wake-up. A wake-up may come for an event already taken (a notifier
     * sets its bit, the bits are taken on another wake-up, then its eventfd write lands), so the
     * descriptor can poll readable with nothing left. Linux never does that, and programs that
     * poll, then call a blocking xenevtchn_pending() (libxenvchan_wait in a select() loop), would
     * hang there. Such a call gets a spurious event on one of the handle's unmasked ports
     * instead: Xen allows spurious events, and every consumer looks at its ring on an event. */
    bool woke = false;
    for (;;) {
        if (h->qlen > 0) {
            uint32_t port = queue_pop(h);
            /* xenevtchn_fd() stays readable exactly while ports wait: with the queue empty, our
             * own eventfd is drained (and what it may have announced taken); with ports left, it
             * is written again. */
            if (h->qlen == 0 && own_stirred(h))
                take_own(h);
            if (h->qlen > 0)
                wake_self(h);
            if (!slot_of(h, port))
                continue; /* unbound since it was taken */
            pthread_mutex_unlock(&h->lock);
            return (xenevtchn_port_or_error_t)port;
        }
        struct epoll_event ev[16];
        int n = epoll_wait(h->ep, ev, 16, 0);
        if (n == 0) {
            int fl = fcntl(h->ep, F_GETFL);
            if (fl >= 0 && (fl & O_NONBLOCK)) {
                pthread_mutex_unlock(&h->lock);
                errno = EAGAIN;
                return -1;
            }
            uint32_t any;
            struct slot *s = woke ? any_unmasked(h, &any) : NULL;
            if (s) {
                deliver(h, any, s);
                continue;
            }
            pthread_mutex_unlock(&h->lock);
            n = epoll_wait(h->ep, ev, 16, -1);
            int e = errno;
            pthread_mutex_lock(&h->lock);
            errno = e;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            pthread_mutex_unlock(&h->lock);
            errno = e;
            return -1;
        }
        woke = true;
        absorb(h, ev, n);
    }
}

/* Mock only: see xenevtchn.h. One look at the links per call (another only while each look fills
 * its list), no write to our own eventfd per port taken, and never a block: what the single-port
 * call costs per port (a poll, an eventfd write, and a last poll that hears nothing) it costs per
 * wake-up. */
XM_EXPORT int xenmock_evtchn_pending_many(xenevtchn_handle *h, evtchn_port_t *ports, unsigned int max)
{
    pthread_mutex_lock(&h->lock);
    unsigned int got = 0;
    bool look = true;
    while (got < max) {
        if (h->qlen > 0) {
            uint32_t port = queue_pop(h);
            if (slot_of(h, port))
                ports[got++] = port; /* else unbound since it was taken */
            continue;
        }
        if (!look)
            break;
        struct epoll_event ev[16];
        int n = epoll_wait(h->ep, ev, 16, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            pthread_mutex_unlock(&h->lock);
            errno = e;
            return got > 0 ? (int)got : -1;
        }
        /* A full list may have left some out: look again once these are handed over. */
        look = n == 16;
        absorb(h, ev, n);
    }
    /* As xenevtchn_pending(): the descriptor stays readable exactly while ports wait. */
    if (h->qlen == 0 && own_stirred(h))
        take_own(h);
    if (h->qlen > 0)
        wake_self(h);
    pthread_mutex_unlock(&h->lock);
    return (int)got;
}

XM_EXPORT int xenevtchn_unmask(xenevtchn_handle *h, evtchn_port_t port)
{
    /* Like a write to /dev/xen/evtchn: ports this handle did not bind are ignored. */
    pthread_mutex_lock(&h->lock);
    struct slot *s = slot_of(h, port);
    if (s && s->masked) {
        s->masked = false;
        mask_shared(h, port, s, false);
        /* What came while masked: kept here, or left pending in the bits (no one woke us for it). */
        bool pending = s->pending;
        pending |= bit_take(h->own->pend, port);
        bit_clear(h->own->again, port);
        if (s->route == ROUTE_LINK && s->link) {
            pending |= bit_take(bits_at(s->link, s->link->end)->pend, port);
            bit_clear(bits_at(s->link, s->link->end)->again, port);
        }
        s->pending = false;
        if (pending) {
            deliver(h, port, s);
            wake_self(h);
        }
    }
    pthread_mutex_unlock(&h->lock);
    return 0;
}

XM_EXPORT int xenevtchn_restrict(xenevtchn_handle *h, domid_t domid)
{
    struct xm_msg m = {.op = XM_EVTCHN_RESTRICT, .a = {domid}}, r;
    pthread_mutex_lock(&h->lock);
    int rc = xm_call(h->sock, &m, NULL, 0, -1, &r, NULL, 0, NULL, NULL);
    int e = errno;
    pthread_mutex_unlock(&h->lock);
    errno = e;
    return rc;
}
