/* Control requests (the CTL handle: xenmockd's commands and the mock-only API): statistics, static
 * channels, VIRQs, reset, introducing and destroying domains, shutdown. Calls down into the
 * connections (to cut a destroyed domain's handles), the rooms and the domain registry. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "broker.h"

bool broker_stopping;

static int destroy_domain(struct conn *req, uint32_t dom);

int ctl_dispatch(struct conn *c, struct xm_msg *m, struct xm_msg *r, char *rbuf)
{
    switch (m->op) {
    case XM_CTL_STATS: {
        size_t n = 0, max = XM_MAX_PAYLOAD / sizeof(struct xm_stats);
        struct xm_stats *out = (struct xm_stats *)rbuf;
        static uint8_t owners[DOMID_FIRST_RESERVED / 8];
        memset(owners, 0, sizeof(owners));
        store_owners(owners);
        for (uint32_t id = 0; id < DOMID_FIRST_RESERVED && n < max; id++) {
            struct domain *d = domain_get(id);
            bool owns = owners[id / 8] & (1u << (id % 8));
            /* Every domain with state or xenstore nodes, or just the one asked for. */
            if (m->a[0] != XM_NONE ? m->a[0] != id : (!d && !owns))
                continue;
            struct xm_stats *s = &out[n++];
            memset(s, 0, sizeof(*s));
            s->domid = id;
            s->nodes = owns ? store_count_nodes(id) : 0;
            s->watches = store_count_watches(id);
            if (d) {
                s->connections = (uint32_t)d->nconn;
                s->grants = d->grants_used;
                s->mapped_pages = d->mapped_pages;
                s->ports = domain_ports_in_use(d);
            }
            for (struct conn *k = conns; k; k = k->next)
                if (k->hello && k->dom == id && k->kind == XM_KIND_XS)
                    s->transactions += (uint32_t)k->ntxns;
        }
        r->len = (uint32_t)(n * sizeof(struct xm_stats));
        return 0;
    }
    case XM_CTL_STATIC_ADD: return evtchn_static_add(m->a[0], m->a[1], m->a[2], m->a[3]);
    case XM_CTL_RAISE_VIRQ: {
        if (m->a[1] >= NR_VIRQS)
            return EINVAL;
        evtchn_raise_virq(m->a[0], m->a[1]);
        return 0;
    }
    case XM_CTL_RESET: {
        logmsg("reset requested by pid %d", (int)c->pid);
        for (struct conn *k = conns, *n; k; k = n) {
            n = k->next;
            if (k != c)
                conn_close(k);
        }
        domain_free_all();
        domain_forget_destroyed();
        store_reset();
        return 0;
    }
    case XM_CTL_INTRODUCE:
        if (m->a[0] >= DOMID_FIRST_RESERVED)
            return EINVAL;
        domain_set_destroyed(m->a[0], false);
        store_domain_introduced(m->a[0]);
        return 0;
    case XM_CTL_DESTROY: return destroy_domain(c, m->a[0]);
    case XM_CTL_EVTCHN_ALLOC_UNBOUND: return evtchn_alloc_unbound(c->dom, m->a[0], m->a[1], r);
    case XM_CTL_SHUTDOWN:
        logmsg("shutdown requested by pid %d", (int)c->pid);
        broker_stopping = true;
        return 0;
    default: return ENOSYS;
    }
}

/* `xl destroy`: the domain stops at once. Its handles are cut without the unmap notifications its
 * kernel would have sent, its ports close (peers become unbound, no event: Xen sends none), every
 * process living only in it is killed, the toolstack removes its xenstore directory, and
 * @releaseDomain fires. What other domains have mapped of its pages stays mapped. */
static int destroy_domain(struct conn *req, uint32_t dom)
{
    if (dom == 0)
        return EPERM;
    if (dom >= DOMID_FIRST_RESERVED)
        return EINVAL;
    struct domain *d = domain_get(dom);
    if (!d && !store_domain_known(dom))
        return ESRCH;
    logmsg("destroying domain %u (asked by pid %d)", dom, (int)req->pid);
    /* Processes with handles in this domain only. */
    pid_t victims[256];
    int nv = 0;
    for (struct conn *k = conns; k; k = k->next) {
        if (!k->hello || k->dom != dom || k->kind == XM_KIND_CTL || k->pid <= 1 || k->pid == req->pid ||
            k->pid == getpid())
            continue;
        bool only = true, seen = false;
        for (struct conn *o = conns; o; o = o->next)
            if (o->hello && o->pid == k->pid && o->kind != XM_KIND_CTL && o->dom != dom)
                only = false;
        for (int i = 0; i < nv; i++)
            seen = seen || victims[i] == k->pid;
        if (only && !seen && nv < (int)(sizeof(victims) / sizeof(victims[0])))
            victims[nv++] = k->pid;
    }
    for (int i = 0; i < nv; i++)
        kill(victims[i], SIGKILL);
    domain_set_destroyed(dom, true);
    destroying_domain = dom;
    for (struct conn *k = conns, *n; k; k = n) {
        n = k->next;
        if (k->hello && k->dom == dom && k->kind != XM_KIND_CTL)
            conn_close(k);
    }
    destroying_domain = XM_NONE;
    /* Static channels belong to the domain, not to a handle: they go with it. */
    if ((d = domain_get(dom)) != NULL)
        evtchn_domain_close_all(d);
    store_domain_destroyed(dom);
    if ((d = domain_get(dom)) != NULL && d->nconn == 0 && d->grants_used == 0 && d->mapped_pages == 0)
        domain_free(dom);
    return 0;
}
