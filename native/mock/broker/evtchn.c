/*
 * Event channels, with Xen's semantics:
 *  - an unbound port may be bound only by the domain it was offered to;
 *  - binding an interdomain port marks it pending at once (Xen does, since a
 *    notification may have been sent to the unbound end);
 *  - events coalesce while pending; a delivered port stays masked until the
 *    handle unmasks it (Linux's evtchn driver), and an unmask of a pending
 *    port delivers it again;
 *  - closing one end of an interdomain channel returns the other end to
 *    "unbound, offered to the closer", and sends to it are silently dropped;
 *  - static (dom0less) channels are pre-bound and outlive their handles; BIND_STATIC also attaches
 *    to a port allocated or bound on the domain's behalf (xc_evtchn_alloc_unbound), as Linux's
 *    ioctl does, and such a port then outlives its handle too (Linux never closes a static port).
 * Error numbers are the ones Xen's hypercalls and Linux's driver return.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"

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

static void deliver(struct port *pt, uint32_t p)
{
    if (!pt->pending || pt->masked || !pt->owner || pt->owner->evfd < 0)
        return;
    ssize_t n = write(pt->owner->evfd, &p, sizeof(p));
    if (n == (ssize_t)sizeof(p)) {
        pt->pending = false;
        pt->masked = true;
    }
    /* A full pipe (a client that never reads) leaves the event pending; the next unmask retries. */
}

static void raise_port(struct domain *d, uint32_t p)
{
    struct port *pt = port_of(d, p);
    if (!pt || pt->pending)
        return; /* coalesced */
    pt->pending = true;
    deliver(pt, p);
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
    if (pt->is_static || pt->kept || pt->refs > 0)
        return;
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
    pt->owner = c;
    r->a[0] = (uint32_t)p;
    return 0;
}

int evtchn_dispatch(struct conn *c, struct xm_msg *m, struct xm_msg *r)
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
        pt->owner = c;
        pt->masked = false;
        pt->kept = !pt->phantom;
        r->a[0] = a0;
        deliver(pt, a0);
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
    case XM_EVTCHN_UNMASK: {
        struct port *pt = port_of(d, a0);
        if (pt && pt->owner == c) {
            pt->masked = false;
            deliver(pt, a0);
        }
        return 0;
    }
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
    struct domain *d = domain_get(c->dom);
    for (uint32_t p = 1; d && p < d->ports_cap; p++)
        if (d->ports[p].state != PORT_FREE && d->ports[p].owner == c)
            close_port(d, p);
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
