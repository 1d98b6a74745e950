/*
 * Event channels, with Xen's semantics:
 *  - an unbound port may be bound only by the domain it was offered to;
 *  - binding an interdomain port marks it pending at once (Xen does, since a
 *    notification may have been sent to the unbound end);
 *  - events coalesce while pending; a delivered port stays masked until the
 *    handle unmasks it (Linux's evtchn driver), and an unmask of a pending
 *    port delivers it again (both kept by the handle itself: see "Event
 *    channels" in xenmock_proto.h: notifications go from handle to handle
 *    through a link's shared bits and eventfds, and the broker only binds,
 *    links and unbinds, and sends its own events);
 *  - closing one end of an interdomain channel returns the other end to
 *    "unbound, offered to the closer", and sends to it are silently dropped;
 *  - static (dom0less) channels are pre-bound and outlive their handles; BIND_STATIC also attaches
 *    to a port allocated or bound on the domain's behalf (xc_evtchn_alloc_unbound), as Linux's
 *    ioctl does, and such a port then outlives its handle too (Linux never closes a static port).
 * Error numbers are the ones Xen's hypercalls and Linux's driver return.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "broker.h"

_Static_assert(MAX_PORTS == XM_EVT_MAX_PORTS, "one port limit for the broker and the handles");

static struct link *links;
static uint32_t last_link_id, last_gen;

static void wake(int fd)
{
    uint64_t one = 1;
    /* EAGAIN: the counter is full, so the handle will wake anyway. */
    (void)!write(fd, &one, sizeof(one));
}

/* The port's generation as its handle sees it (xm_evt_gen). */
static void gen_publish(struct port *pt, uint32_t p)
{
    if (pt->owner && pt->owner->gen)
        __atomic_store_n(&pt->owner->gen->gen[p], pt->gen, __ATOMIC_RELEASE);
}

static void port_touch(struct port *pt, uint32_t p)
{
    if (++last_gen == 0)
        last_gen = 1;
    pt->gen = last_gen;
    gen_publish(pt, p);
}

static struct port *port_of(struct domain *d, uint32_t p)
{
    if (!d || p == 0 || p >= d->ports_cap || d->ports[p].state == PORT_FREE)
        return NULL;
    return &d->ports[p];
}

/* Makes port numbers below WANT valid indices of D's table. */
static int grow_ports(struct domain *d, uint32_t want)
{
    if (want <= d->ports_cap)
        return 0;
    if (want > MAX_PORTS)
        return ENOSPC;
    uint32_t cap = d->ports_cap ? d->ports_cap : 64;
    while (cap < want)
        cap *= 2;
    if (cap > MAX_PORTS)
        cap = MAX_PORTS;
    struct port *n = realloc(d->ports, cap * sizeof(*n));
    if (!n)
        return ENOMEM;
    memset(n + d->ports_cap, 0, (cap - d->ports_cap) * sizeof(*n));
    d->ports = n;
    d->ports_cap = cap;
    return 0;
}

/* The lowest free port, as Xen hands them out. Returns the port or -errno. */
static int alloc_port(struct domain *d)
{
    for (uint32_t p = 1; p < MAX_PORTS; p++) {
        if (p >= d->ports_cap) {
            int err = grow_ports(d, p + 1);
            if (err)
                return -err;
        }
        if (d->ports[p].state == PORT_FREE && d->ports[p].refs == 0)
            return (int)p;
    }
    return -ENOSPC;
}

/* The remote end of P (interdomain), whose handle must look again at where P's notifications go. */
static void touch_remote(struct port *pt)
{
    if (pt->state != PORT_INTERDOMAIN)
        return;
    struct port *rp = port_of(domain_get(pt->remote_dom), pt->remote_port);
    if (rp)
        port_touch(rp, pt->remote_port);
}

/* An event the broker itself sends (or keeps, for a port no handle holds). */
static void raise_port(struct domain *d, uint32_t p)
{
    struct port *pt = port_of(d, p);
    if (!pt)
        return;
    if (!pt->owner || !pt->owner->own) {
        pt->pending = true;
        return;
    }
    if (xm_evt_raise(pt->owner->own, p))
        wake(pt->owner->evfd);
}

/* P now belongs to handle C: its generation, and an event kept while no handle held it. */
static void port_owned(struct port *pt, uint32_t p, struct conn *c)
{
    pt->owner = c;
    port_touch(pt, p);
    touch_remote(pt);
    if (pt->pending && c->own) {
        pt->pending = false;
        if (xm_evt_raise(c->own, p))
            wake(c->evfd);
    }
}

static int end_of(struct link *l, struct conn *c)
{
    return l->end[0] == c ? 0 : 1;
}

/* The link between handles A and B, made when first asked for. */
static struct link *link_get(struct conn *a, struct conn *b)
{
    for (struct link *l = links; l; l = l->next)
        if ((l->end[0] == a && l->end[1] == b) || (l->end[0] == b && l->end[1] == a))
            return l;
    struct link *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->memfd = memfd_create("xenmock-evtchn-link", MFD_CLOEXEC);
    l->wake[0] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    l->wake[1] = a == b ? -1 : eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->memfd < 0 || l->wake[0] < 0 || (a != b && l->wake[1] < 0) || ftruncate(l->memfd, XM_LINK_SIZE) < 0) {
        for (int i = 0; i < 2; i++)
            if (l->wake[i] > 0)
                close(l->wake[i]);
        if (l->memfd >= 0)
            close(l->memfd);
        free(l);
        return NULL;
    }
    l->id = ++last_link_id;
    l->end[0] = a;
    l->end[1] = b;
    l->next = links;
    links = l;
    /* Both ends learn of it (links_epoch) when they next look; until an end watches its eventfd
     * (ready), notifications to it come through the broker. */
    for (int i = 0; i < 2; i++)
        if (l->end[i]->gen)
            __atomic_add_fetch(&l->end[i]->gen->links_epoch, 1, __ATOMIC_RELEASE);
    return l;
}

static int dup_out(int fd, int *out_fds, int *n_out)
{
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0)
        return errno;
    out_fds[(*n_out)++] = d;
    return 0;
}

static void drop_out(int *out_fds, int *n_out)
{
    for (int i = 0; i < *n_out; i++)
        close(out_fds[i]);
    *n_out = 0;
}

int evtchn_conn_open(struct conn *c, int *out_fds, int *n_out)
{
    *n_out = 0;
    int genfd = memfd_create("xenmock-evtchn-gen", MFD_CLOEXEC);
    int ownfd = memfd_create("xenmock-evtchn-own", MFD_CLOEXEC);
    int wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int err = 0, rofd = -1;
    void *g = MAP_FAILED, *o = MAP_FAILED;
    if (genfd < 0 || ownfd < 0 || wakefd < 0 || ftruncate(genfd, XM_GEN_SIZE) < 0 ||
        ftruncate(ownfd, XM_OWN_SIZE) < 0) {
        err = errno;
        goto fail;
    }
    g = mmap(NULL, XM_GEN_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, genfd, 0);
    o = mmap(NULL, XM_OWN_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, ownfd, 0);
    /* The handle gets its generation page through a read-only open: it can never write it. */
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", genfd);
    rofd = open(path, O_RDONLY | O_CLOEXEC);
    if (g == MAP_FAILED || o == MAP_FAILED || rofd < 0) {
        err = errno;
        goto fail;
    }
    close(genfd);
    c->gen = g;
    c->own = o;
    c->evfd = wakefd;
    err = dup_out(wakefd, out_fds, n_out);
    if (!err) {
        out_fds[(*n_out)++] = rofd;
        out_fds[(*n_out)++] = ownfd;
        return 0;
    }
    drop_out(out_fds, n_out);
    close(rofd);
    close(ownfd);
    return err;
fail:
    if (g != MAP_FAILED)
        munmap(g, XM_GEN_SIZE);
    if (o != MAP_FAILED)
        munmap(o, XM_OWN_SIZE);
    if (rofd >= 0)
        close(rofd);
    if (genfd >= 0)
        close(genfd);
    if (ownfd >= 0)
        close(ownfd);
    if (wakefd >= 0)
        close(wakefd);
    return err ? err : ENOMEM;
}

int evtchn_send(struct domain *d, uint32_t p)
{
    struct port *pt = port_of(d, p);
    if (!pt)
        return EINVAL;
    switch (pt->state) {
    case PORT_UNBOUND: return 0; /* nobody listens yet: dropped, as Xen does */
    case PORT_INTERDOMAIN: raise_port(domain_get(pt->remote_dom), pt->remote_port); return 0;
    default: return EINVAL;
    }
}

static void free_port(struct domain *d, uint32_t p)
{
    struct port *pt = &d->ports[p];
    if (pt->state == PORT_INTERDOMAIN) {
        struct domain *rd = domain_get(pt->remote_dom);
        struct port *rp = port_of(rd, pt->remote_port);
        if (rp && rp->state == PORT_INTERDOMAIN && rp->remote_dom == d->id && rp->remote_port == p) {
            rp->state = PORT_UNBOUND;
            rp->remote_dom = d->id;
            rp->remote_port = 0;
            port_touch(rp, pt->remote_port);
        }
    } else if (pt->state == PORT_VIRQ && pt->virq >= 0 && pt->virq < NR_VIRQS) {
        d->virq_port[pt->virq] = -1;
    }
    int refs = pt->refs;
    memset(pt, 0, sizeof(*pt));
    pt->refs = refs;
}

/* Unbinds P from its handle. A static port stays bound in Xen; one still referenced by an
 * unmap notification stays alive, unowned, until that notification has been sent. */
static void close_port(struct domain *d, uint32_t p)
{
    struct port *pt = &d->ports[p];
    pt->owner = NULL;
    if (pt->phantom) {
        memset(pt, 0, sizeof(*pt)); /* Xen never had it */
        return;
    }
    if (pt->is_static || pt->kept || pt->refs > 0) {
        touch_remote(pt); /* its notifications now wait in the broker for the port's next handle */
        return;
    }
    free_port(d, p);
}

int evtchn_port_get(struct domain *d, uint32_t p)
{
    struct port *pt = port_of(d, p);
    if (!pt || !pt->owner)
        return EINVAL;
    pt->refs++;
    return 0;
}

void evtchn_port_put(struct domain *d, uint32_t p)
{
    if (!d || p == 0 || p >= d->ports_cap)
        return;
    struct port *pt = &d->ports[p];
    if (pt->refs > 0 && --pt->refs == 0 && !pt->owner && !pt->is_static && !pt->kept && pt->state != PORT_FREE)
        free_port(d, p);
}

/* Unbinds every port handle C holds (XM_EVTCHN_CLOSE, or its connection's end). */
static void release_ports(struct conn *c)
{
    struct domain *d = domain_get(c->dom);
    for (uint32_t p = 1; d && p < d->ports_cap; p++)
        if (d->ports[p].state != PORT_FREE && d->ports[p].owner == c)
            close_port(d, p);
}

static int bind_new(struct conn *c, struct domain *d, enum port_state st, uint32_t rdom, uint32_t rport, int virq,
                    struct xm_msg *r)
{
    int p = alloc_port(d);
    if (p < 0)
        return -p;
    struct port *pt = &d->ports[p];
    pt->state = st;
    pt->remote_dom = rdom;
    pt->remote_port = rport;
    pt->virq = virq;
    port_owned(pt, (uint32_t)p, c);
    r->a[0] = (uint32_t)p;
    return 0;
}

/* Where notifications of C's port P go (XM_EVTCHN_PEER). */
static int peer_of(struct conn *c, struct domain *d, uint32_t p, struct xm_msg *r, int *out_fds, int *n_out)
{
    struct port *pt = port_of(d, p);
    if (!pt || pt->owner != c)
        return ENOTCONN;
    r->a[1] = pt->gen;
    r->a[0] = XM_PEER_DROP;
    if (pt->state == PORT_UNBOUND)
        return 0;
    if (pt->state != PORT_INTERDOMAIN)
        return EINVAL; /* a VIRQ: Xen's EVTCHNOP_send refuses it */
    struct port *rp = port_of(domain_get(pt->remote_dom), pt->remote_port);
    if (!rp || rp->phantom)
        return 0;
    if (!rp->owner || !rp->owner->own) {
        r->a[0] = XM_PEER_BROKER;
        return 0;
    }
    struct link *l = link_get(c, rp->owner);
    if (!l)
        return ENOMEM;
    int mine = end_of(l, c), theirs = l->end[0] == l->end[1] ? 0 : 1 - mine;
    int err = dup_out(l->memfd, out_fds, n_out);
    if (!err)
        err = dup_out(l->wake[theirs], out_fds, n_out);
    if (err) {
        drop_out(out_fds, n_out);
        return err;
    }
    r->a[0] = XM_PEER_LINK;
    r->a[2] = l->id;
    r->a[3] = (uint32_t)mine;
    r->a[4] = pt->remote_port;
    r->a[5] = (uint32_t)theirs;
    return 0;
}

/* Every live link of C (XM_EVTCHN_LINKS), with the memory and wake eventfd of those after AFTER. */
static int links_of(struct conn *c, uint32_t after, struct xm_msg *r, char *rbuf, int *out_fds, int *n_out)
{
    uint32_t n = 0, more = 0;
    r->a[0] = c->gen ? __atomic_load_n(&c->gen->links_epoch, __ATOMIC_ACQUIRE) : 0;
    for (struct link *l = links; l; l = l->next) {
        if (l->end[0] != c && l->end[1] != c)
            continue;
        if ((n + 1) * 12 > XM_MAX_PAYLOAD)
            break;
        int e = end_of(l, c), theirs = l->end[0] == l->end[1] ? 0 : 1 - e;
        if (l->id > after) {
            if (*n_out + 2 > XM_MAX_FDS) {
                more = 1;
                continue;
            }
            int err = dup_out(l->memfd, out_fds, n_out);
            if (!err)
                err = dup_out(l->wake[e], out_fds, n_out);
            if (err) {
                drop_out(out_fds, n_out);
                return err;
            }
        }
        uint32_t ent[3] = {l->id, (uint32_t)e, (uint32_t)theirs};
        memcpy(rbuf + n * 12, ent, sizeof(ent));
        n++;
    }
    r->a[1] = n;
    r->a[2] = more;
    r->len = n * 12;
    return 0;
}

int evtchn_dispatch(struct conn *c, struct xm_msg *m, struct xm_msg *r, char *rbuf, int *out_fds, int *n_out)
{
    struct domain *d = domain_get(c->dom);
    if (!d)
        return ESRCH;
    uint32_t a0 = m->a[0], a1 = m->a[1];
    switch (m->op) {
    case XM_EVTCHN_BIND_UNBOUND: {
        if (c->restrict_dom != XM_NONE)
            return EACCES;
        uint32_t rdom = a0 == DOMID_SELF ? c->dom : a0;
        if (rdom >= DOMID_FIRST_RESERVED)
            return EINVAL;
        return bind_new(c, d, PORT_UNBOUND, rdom, 0, -1, r);
    }
    case XM_EVTCHN_BIND_INTERDOMAIN: {
        uint32_t rdom = a0 == DOMID_SELF ? c->dom : a0;
        if (c->restrict_dom != XM_NONE && c->restrict_dom != rdom)
            return EACCES;
        if (!domain_exists(rdom))
            return ESRCH;
        struct domain *rd = domain_get(rdom);
        struct port *rp = port_of(rd, a1);
        if (!rp || rp->state != PORT_UNBOUND || rp->remote_dom != c->dom || rp->is_static)
            return EINVAL;
        int err = bind_new(c, d, PORT_INTERDOMAIN, rdom, a1, -1, r);
        if (err)
            return err;
        rd = domain_get(rdom); /* ports of D may have moved; RD's did not, but be plain about it */
        rp = port_of(rd, a1);
        rp->state = PORT_INTERDOMAIN;
        rp->remote_dom = c->dom;
        rp->remote_port = r->a[0];
        port_touch(rp, a1);
        /* Xen marks the new local port pending: events sent while the other end was unbound are not lost. */
        raise_port(d, r->a[0]);
        return 0;
    }
    case XM_EVTCHN_BIND_VIRQ: {
        if (c->restrict_dom != XM_NONE)
            return EACCES;
        if (a0 >= NR_VIRQS)
            return EINVAL;
        if (d->virq_port[a0] >= 0)
            return EEXIST;
        int err = bind_new(c, d, PORT_VIRQ, 0, 0, (int)a0, r);
        if (!err)
            d->virq_port[a0] = (int)r->a[0];
        return err;
    }
    case XM_EVTCHN_BIND_STATIC: {
        /* Linux's IOCTL_EVTCHN_BIND_STATIC (6.5+) attaches the handle to a port Xen already has
         * bound (a dom0less static channel, or one dom0 allocated and bound on the domain's behalf)
         * without a hypercall, and checks nothing with Xen: a port Xen never allocated is "bound"
         * too, and no event ever comes. Past the FIFO ABI's limit: ENOMEM. Bound already through this
         * handle: EISCONN. Bound through another handle: Linux takes it (with a WARN) and BUGs when
         * the process exits; the mock refuses with EBUSY instead. */
        if (c->restrict_dom != XM_NONE)
            return EACCES;
        if (a0 == 0 || a0 >= MAX_PORTS)
            return a0 == 0 ? EINVAL : ENOMEM;
        struct port *pt = port_of(d, a0);
        if (pt && pt->owner == c)
            return EISCONN;
        if (pt && pt->owner)
            return EBUSY;
        if (!pt) {
            int err = grow_ports(d, a0 + 1);
            if (err)
                return err;
            pt = &d->ports[a0];
            memset(pt, 0, sizeof(*pt));
            pt->state = PORT_INTERDOMAIN;
            pt->remote_dom = XM_NONE;
            pt->virq = -1;
            pt->phantom = true;
        }
        pt->kept = !pt->phantom;
        port_owned(pt, a0, c);
        r->a[0] = a0;
        return 0;
    }
    case XM_EVTCHN_UNBIND: {
        struct port *pt = port_of(d, a0);
        if (!pt || pt->owner != c)
            return ENOTCONN;
        close_port(d, a0);
        return 0;
    }
    case XM_EVTCHN_NOTIFY: {
        struct port *pt = port_of(d, a0);
        if (!pt || pt->owner != c)
            return ENOTCONN;
        return evtchn_send(d, a0);
    }
    case XM_EVTCHN_UNMASK: return 0; /* the handle's own business since protocol 2 */
    case XM_EVTCHN_PEER: return peer_of(c, d, a0, r, out_fds, n_out);
    case XM_EVTCHN_LINKS: return links_of(c, a0, r, rbuf, out_fds, n_out);
    case XM_EVTCHN_CLOSE: release_ports(c); return 0;
    case XM_EVTCHN_RESTRICT:
        /* Linux: once only, and never to dom0 or a reserved id. */
        if (c->restrict_dom != XM_NONE)
            return EACCES;
        if (a0 == 0 || a0 >= DOMID_FIRST_RESERVED)
            return EINVAL;
        c->restrict_dom = a0;
        return 0;
    default: return ENOSYS;
    }
}

void evtchn_conn_closed(struct conn *c)
{
    release_ports(c);
    /* Its links go: the other ends' ports were touched above, and they drop the link when they
     * next fetch their list (links_epoch). */
    for (struct link **pp = &links; *pp;) {
        struct link *l = *pp;
        if (l->end[0] != c && l->end[1] != c) {
            pp = &l->next;
            continue;
        }
        *pp = l->next;
        struct conn *other = l->end[0] == c ? l->end[1] : l->end[0];
        if (other != c && other->gen)
            __atomic_add_fetch(&other->gen->links_epoch, 1, __ATOMIC_RELEASE);
        close(l->memfd);
        for (int i = 0; i < 2; i++)
            if (l->wake[i] >= 0)
                close(l->wake[i]);
        free(l);
    }
    if (c->gen)
        munmap(c->gen, XM_GEN_SIZE);
    if (c->own)
        munmap(c->own, XM_OWN_SIZE);
    c->gen = NULL;
    c->own = NULL;
}

int evtchn_static_add(uint32_t dom, uint32_t p, uint32_t rdom, uint32_t rp)
{
    if (p == 0 || rp == 0 || p >= MAX_PORTS || rp >= MAX_PORTS || (dom == rdom && p == rp))
        return EINVAL;
    struct domain *d = domain_get_or_create(dom), *rd = domain_get_or_create(rdom);
    if (!d || !rd)
        return EINVAL;
    int err = grow_ports(d, p + 1);
    if (!err)
        err = grow_ports(rd, rp + 1);
    if (err)
        return err;
    if (d->ports[p].state != PORT_FREE || rd->ports[rp].state != PORT_FREE)
        return EBUSY;
    struct port *a = &d->ports[p], *b = &rd->ports[rp];
    a->state = b->state = PORT_INTERDOMAIN;
    a->is_static = b->is_static = true;
    a->remote_dom = rdom;
    a->remote_port = rp;
    b->remote_dom = dom;
    b->remote_port = p;
    a->virq = b->virq = -1;
    return 0;
}

/* EVTCHNOP_alloc_unbound as xc_evtchn_alloc_unbound makes it, for CALLER: a port in DOM's table,
 * unbound, offered to REMOTE, bound to no handle (DOM takes it with BIND_STATIC, or REMOTE binds
 * it). Xen lets a domain allocate only in its own table unless it is privileged (dom0 here). */
int evtchn_alloc_unbound(uint32_t caller, uint32_t dom, uint32_t remote, struct xm_msg *r)
{
    if (dom == DOMID_SELF)
        dom = caller;
    if (remote == DOMID_SELF)
        remote = caller;
    if (dom >= DOMID_FIRST_RESERVED || remote >= DOMID_FIRST_RESERVED)
        return EINVAL;
    if (caller != 0 && dom != caller)
        return EPERM;
    if (!domain_exists(dom) && !store_domain_known(dom))
        return ESRCH;
    struct domain *d = domain_get_or_create(dom);
    if (!d)
        return ENOMEM;
    int p = alloc_port(d);
    if (p < 0)
        return -p;
    struct port *pt = &d->ports[p];
    memset(pt, 0, sizeof(*pt));
    pt->state = PORT_UNBOUND;
    pt->remote_dom = remote;
    pt->virq = -1;
    r->a[0] = (uint32_t)p;
    return 0;
}

int evtchn_raise_virq(uint32_t dom, uint32_t virq)
{
    struct domain *d = domain_get(dom);
    if (!d || virq >= NR_VIRQS || d->virq_port[virq] < 0)
        return 0;
    raise_port(d, (uint32_t)d->virq_port[virq]);
    return 0;
}

void evtchn_domain_close_all(struct domain *d)
{
    for (uint32_t p = 1; p < d->ports_cap; p++)
        if (d->ports[p].state != PORT_FREE)
            free_port(d, p);
}
