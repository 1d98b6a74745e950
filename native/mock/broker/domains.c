/* The domain registry: per-domain state (ports, grant table, counts), created with a domain's first
 * handle and freed once nothing is left of it, and the set of domains destroyed and not introduced
 * again. The bottom room: it calls no other. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "broker.h"

static struct domain *domains[DOMID_FIRST_RESERVED];
uint32_t destroying_domain = XM_NONE;

struct domain *domain_get(uint32_t id)
{
    return id < DOMID_FIRST_RESERVED ? domains[id] : NULL;
}

struct domain *domain_get_or_create(uint32_t id)
{
    if (id >= DOMID_FIRST_RESERVED)
        return NULL;
    if (!domains[id]) {
        struct domain *d = calloc(1, sizeof(*d));
        if (!d)
            return NULL;
        d->id = id;
        for (int i = 0; i < NR_VIRQS; i++)
            d->virq_port[i] = -1;
        domains[id] = d;
    }
    return domains[id];
}

uint32_t domain_ports_in_use(struct domain *d)
{
    uint32_t n = 0;
    for (uint32_t p = 1; d && p < d->ports_cap; p++)
        if (d->ports[p].state != PORT_FREE)
            n++;
    return n;
}

/* A domain exists while one of its processes has a handle open, or it holds ports (static ones). */
bool domain_exists(uint32_t id)
{
    struct domain *d = domain_get(id);
    return d && (d->nconn > 0 || domain_ports_in_use(d) > 0);
}

void domain_free(uint32_t id)
{
    struct domain *d = domains[id];
    if (!d)
        return;
    free(d->ports);
    free(d->grants);
    free(d);
    domains[id] = NULL;
}

/* Domains destroyed and not introduced again since. On Xen a destroyed domain runs nothing more: a
 * handle it asks for after its destruction (a process that connects before its SIGKILL lands, or
 * whose hello is still queued in the socket) must not bring it back, and the toolstack's
 * introduce is what makes the id usable again. */
static uint8_t destroyed[(DOMID_FIRST_RESERVED + 7) / 8];
bool domain_is_destroyed(uint32_t dom)
{
    return dom < DOMID_FIRST_RESERVED && (destroyed[dom / 8] >> (dom % 8)) & 1;
}
void domain_set_destroyed(uint32_t dom, bool on)
{
    if (dom >= DOMID_FIRST_RESERVED)
        return;
    if (on)
        destroyed[dom / 8] |= (uint8_t)(1u << (dom % 8));
    else
        destroyed[dom / 8] &= (uint8_t) ~(1u << (dom % 8));
}

void domain_forget_destroyed(void)
{
    memset(destroyed, 0, sizeof(destroyed));
}

void domain_free_all(void)
{
    for (uint32_t id = 0; id < DOMID_FIRST_RESERVED; id++)
        domain_free(id);
}
