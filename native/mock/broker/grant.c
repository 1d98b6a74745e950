/*
 * Grant tables. A share is a memfd from the sharing process, entered in the
 * sharer's grant table page by page; a mapping hands the same memfd to the
 * mapper (a read-only reopening for read-only grants, so PROT_WRITE fails).
 *
 * Unmap notifications follow Linux's gntalloc and gntdev: when a share is
 * unshared or a mapping unmapped, explicitly or because its process died,
 * the notify byte is cleared and the notify port signalled.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker.h"

static uint32_t gntalloc_limit(void)
{
    static uint32_t limit;
    if (!limit) {
        const char *s = getenv("XEN_MOCK_GNTALLOC_LIMIT");
        long v = s ? strtol(s, NULL, 10) : 0;
        limit = v > 0 ? (uint32_t)v : 1024; /* Linux gntalloc's default "limit" */
    }
    return limit;
}

static void share_put(struct share *sh)
{
    if (--sh->refcnt > 0)
        return;
    if (sh->memfd >= 0)
        close(sh->memfd);
    if (sh->rofd >= 0)
        close(sh->rofd);
    free(sh->refs);
    free(sh);
}

/* Clears the notify byte (offset OFF of the area made of PAGES) and signals PORT of domain DOM. */
static void unmap_notify(uint32_t dom, uint32_t off, uint32_t port, struct share **shs, const uint32_t *pages,
                         uint32_t npages)
{
    /* Notifications are the work of the unmapping domain's own kernel: a destroyed domain sends none. */
    bool dead = dom == destroying_domain;
    if (!dead && off != XM_NONE && off / XM_PAGE_SIZE < npages) {
        uint32_t i = off / XM_PAGE_SIZE;
        static const char zero = 0;
        if (pwrite(shs[i]->memfd, &zero, 1, (off_t)pages[i] * XM_PAGE_SIZE + off % XM_PAGE_SIZE) != 1)
            logmsg("unmap notify: cannot clear byte: %s", strerror(errno));
    }
    if (port != XM_NONE) {
        struct domain *d = domain_get(dom);
        if (d) {
            if (!dead)
                evtchn_send(d, port);
            evtchn_port_put(d, port);
        }
    }
}

static int alloc_refs(struct domain *d, struct share *sh)
{
    if (d->grants_used + sh->npages > MAX_GRANT_ENTRIES - FIRST_GRANT_REF)
        return ENOSPC;
    uint32_t want = FIRST_GRANT_REF + d->grants_used + sh->npages;
    if (want > d->grants_cap) {
        uint32_t cap = d->grants_cap ? d->grants_cap : 256;
        while (cap < want)
            cap *= 2;
        if (cap > MAX_GRANT_ENTRIES)
            cap = MAX_GRANT_ENTRIES;
        struct grant_entry *n = realloc(d->grants, cap * sizeof(*n));
        if (!n)
            return ENOMEM;
        memset(n + d->grants_cap, 0, (cap - d->grants_cap) * sizeof(*n));
        d->grants = n;
        d->grants_cap = cap;
    }
    /* The lowest free refs, as before, found from grants_free on: a process holding many grants
     * (10,000 streams) no longer pays a walk over all of them per share. */
    uint32_t k = 0, ref = d->grants_free > FIRST_GRANT_REF ? d->grants_free : FIRST_GRANT_REF;
    for (; ref < d->grants_cap && k < sh->npages; ref++) {
        if (!d->grants[ref].sh) {
            d->grants[ref].sh = sh;
            d->grants[ref].page = k;
            sh->refs[k++] = ref;
        }
    }
    d->grants_free = ref;
    d->grants_used += sh->npages;
    return 0;
}

static void end_share(struct domain *d, struct share *sh)
{
    for (uint32_t i = 0; i < sh->npages; i++) {
        uint32_t ref = sh->refs[i];
        if (d && ref < d->grants_cap && d->grants[ref].sh == sh) {
            d->grants[ref].sh = NULL;
            if (ref < d->grants_free)
                d->grants_free = ref;
        }
    }
    if (d) {
        d->grants_used -= sh->npages;
        d->shared_pages -= sh->npages;
    }
    uint32_t page0 = 0;
    struct share *one[1] = {sh};
    unmap_notify(sh->dom, sh->notify_off, sh->notify_port, one, &page0, 1);
    share_put(sh);
}

/* A handle's shares or mappings by id (open addressing, linear probing): an unshare or unmap finds
 * its own in constant time however many the handle holds (a list walk made closing 10,000 streams of
 * one process quadratic). */
static uint32_t idmap_home(uint32_t id, uint32_t cap)
{
    return (id * 2654435761u) & (cap - 1);
}

/* Room for one more entry (0, or ENOMEM): idmap_put() cannot fail after it. */
static int idmap_reserve(struct idmap *m)
{
    if ((m->len + 1) * 2 <= m->cap)
        return 0;
    uint32_t cap = m->cap ? m->cap * 2 : 16;
    uint32_t *keys = calloc(cap, sizeof(*keys));
    void **vals = calloc(cap, sizeof(*vals));
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return ENOMEM;
    }
    for (uint32_t i = 0; i < m->cap; i++) {
        if (!m->keys[i])
            continue;
        uint32_t j = idmap_home(m->keys[i], cap);
        while (keys[j])
            j = (j + 1) & (cap - 1);
        keys[j] = m->keys[i];
        vals[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return 0;
}

static void idmap_put(struct idmap *m, uint32_t id, void *val)
{
    uint32_t i = idmap_home(id, m->cap);
    while (m->keys[i])
        i = (i + 1) & (m->cap - 1);
    m->keys[i] = id;
    m->vals[i] = val;
    m->len++;
}

/* Removes ID's entry and returns its value (NULL: none). Entries after it in its run move back, so
 * that no lookup stops early at the hole. */
static void *idmap_take(struct idmap *m, uint32_t id)
{
    if (!m->cap || !id)
        return NULL;
    uint32_t mask = m->cap - 1, i = idmap_home(id, m->cap);
    while (m->keys[i] != id) {
        if (!m->keys[i])
            return NULL;
        i = (i + 1) & mask;
    }
    void *val = m->vals[i];
    m->keys[i] = 0;
    m->len--;
    for (uint32_t j = (i + 1) & mask; m->keys[j]; j = (j + 1) & mask) {
        uint32_t home = idmap_home(m->keys[j], m->cap);
        /* The entry at J stays if its home lies cyclically in (I, J]. */
        bool stays = i < j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays)
            continue;
        m->keys[i] = m->keys[j];
        m->vals[i] = m->vals[j];
        m->keys[j] = 0;
        i = j;
    }
    return val;
}

/* Empties M, handing each value to F. */
static void idmap_drain(struct idmap *m, void (*f)(struct conn *, void *), struct conn *c)
{
    for (uint32_t i = 0; i < m->cap; i++)
        if (m->keys[i])
            f(c, m->vals[i]);
    free(m->keys);
    free(m->vals);
    *m = (struct idmap){0};
}

static int do_share(struct conn *c, struct xm_msg *m, int fd, struct xm_msg *r, char *rbuf)
{
    uint32_t grantee = m->a[0], count = m->a[1], noff = m->a[3], nport = m->a[4];
    struct domain *d = domain_get(c->dom);
    if (fd < 0 || !d || count == 0 || count > XM_MAX_PAYLOAD / 4 || grantee >= DOMID_FIRST_RESERVED)
        return EINVAL;
    if (noff != XM_NONE && (count != 1 || noff >= XM_PAGE_SIZE))
        return EINVAL;
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size < (uint64_t)count * XM_PAGE_SIZE)
        return EINVAL;
    if (d->shared_pages + count > gntalloc_limit())
        return ENOSPC; /* gntalloc's page limit */
    if (nport != XM_NONE && evtchn_port_get(d, nport) != 0)
        return EINVAL;
    struct share *sh = calloc(1, sizeof(*sh));
    uint32_t *refs = calloc(count, sizeof(uint32_t));
    int err = ENOMEM;
    if (!sh || !refs || idmap_reserve(&c->held))
        goto fail;
    sh->refs = refs;
    sh->npages = count;
    err = alloc_refs(d, sh);
    if (err)
        goto fail;
    sh->id = ++c->next_id;
    sh->owner = c;
    sh->dom = c->dom;
    sh->grantee = grantee;
    sh->memfd = fd;
    sh->rofd = -1;
    sh->writable = m->a[2] != 0;
    sh->notify_off = noff;
    sh->notify_port = nport;
    sh->refcnt = 1;
    idmap_put(&c->held, sh->id, sh);
    d->shared_pages += count;
    memcpy(rbuf, refs, count * sizeof(uint32_t));
    r->len = count * (uint32_t)sizeof(uint32_t);
    r->a[0] = sh->id;
    return 0;
fail:
    if (nport != XM_NONE)
        evtchn_port_put(d, nport);
    free(refs);
    free(sh);
    close(fd);
    return err;
}

static struct mapping *mapping_new(uint32_t count)
{
    struct mapping *mp = calloc(1, sizeof(*mp));
    if (!mp)
        return NULL;
    mp->sh = calloc(count, sizeof(*mp->sh));
    mp->page = calloc(count, sizeof(*mp->page));
    if (!mp->sh || !mp->page) {
        free(mp->sh);
        free(mp->page);
        free(mp);
        return NULL;
    }
    return mp;
}

static void mapping_free(struct mapping *mp)
{
    for (uint32_t i = 0; i < mp->count; i++)
        share_put(mp->sh[i]);
    free(mp->sh);
    free(mp->page);
    free(mp);
}

static int fd_for(struct share *sh, bool writable)
{
    if (writable)
        return sh->memfd;
    if (sh->rofd < 0) {
        char path[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", sh->memfd);
        sh->rofd = open(path, O_RDONLY | O_CLOEXEC);
    }
    return sh->rofd;
}

static int do_map(struct conn *c, struct xm_msg *m, const char *pl, struct xm_msg *r, char *rbuf, int *out_fds,
                  int *n_out)
{
    uint32_t count = m->a[0], noff = m->a[2], nport = m->a[3];
    bool writable = m->a[1] != 0;
    struct domain *d = domain_get(c->dom);
    if (!d || count == 0 || count > XM_MAX_PAYLOAD / 8 || m->len != count * 8)
        return EINVAL;
    if (noff != XM_NONE && noff >= count * XM_PAGE_SIZE)
        return EINVAL;
    struct mapping *mp = idmap_reserve(&c->held) ? NULL : mapping_new(count);
    if (!mp)
        return ENOMEM;
    const uint32_t *req = (const uint32_t *)pl;
    uint32_t *rep = (uint32_t *)rbuf;
    int nfds = 0, err = 0;
    r->a[1] = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t gdom = req[2 * i], ref = req[2 * i + 1];
        struct domain *gd = domain_get(gdom);
        if (!gd) {
            err = EINVAL;
            r->a[1] = (uint32_t)-2; /* GNTST_bad_domain */
            break;
        }
        struct share *sh = ref < gd->grants_cap ? gd->grants[ref].sh : NULL;
        if (!sh) {
            err = EINVAL;
            r->a[1] = (uint32_t)-3; /* GNTST_bad_gntref */
            break;
        }
        /* Only the grantee may map, writable only if granted so. An unprivileged domain cannot map its
         * own grants: on the real rig a domU's vchan to itself fails at client_init while dom0's works. */
        if (sh->grantee != c->dom || (writable && !sh->writable) || (gdom == c->dom && c->dom != 0)) {
            err = EINVAL;
            r->a[1] = (uint32_t)-8; /* GNTST_permission_denied */
            break;
        }
        int fd = fd_for(sh, writable);
        if (fd < 0) {
            err = errno;
            break;
        }
        int idx = -1;
        for (int k = 0; k < nfds; k++)
            if (out_fds[k] == fd)
                idx = k;
        if (idx < 0) {
            if (nfds == XM_MAX_FDS) {
                err = E2BIG;
                break;
            }
            idx = nfds;
            out_fds[nfds++] = fd;
        }
        rep[2 * i] = (uint32_t)idx;
        rep[2 * i + 1] = gd->grants[ref].page;
        mp->sh[i] = sh;
        mp->page[i] = gd->grants[ref].page;
        sh->refcnt++;
        mp->count = i + 1;
    }
    if (!err && nport != XM_NONE && evtchn_port_get(d, nport) != 0)
        err = EINVAL;
    if (err) {
        mapping_free(mp);
        return err;
    }
    /* The broker keeps its descriptors: send duplicates (the caller closes them after sending). */
    for (int k = 0; k < nfds; k++)
        out_fds[k] = dup(out_fds[k]);
    *n_out = nfds;
    mp->id = ++c->next_id;
    mp->notify_off = noff;
    mp->notify_port = nport;
    idmap_put(&c->held, mp->id, mp);
    d->mapped_pages += count;
    r->a[0] = mp->id;
    r->a[1] = 0;
    r->len = count * 8;
    return 0;
}

static void end_mapping(struct conn *c, struct mapping *mp)
{
    struct domain *d = domain_get(c->dom);
    if (d)
        d->mapped_pages -= mp->count;
    unmap_notify(c->dom, mp->notify_off, mp->notify_port, mp->sh, mp->page, mp->count);
    mapping_free(mp);
}

int grant_dispatch(struct conn *c, struct xm_msg *m, const char *pl, int in_fd, struct xm_msg *r, char *rbuf,
                   int *out_fds, int *n_out)
{
    bool shr = c->kind == XM_KIND_GNTSHR;
    if (m->op == XM_GNT_SHARE && shr)
        return do_share(c, m, in_fd, r, rbuf);
    if (in_fd >= 0)
        close(in_fd);
    switch (m->op) {
    case XM_GNT_UNSHARE: {
        struct share *sh = shr ? idmap_take(&c->held, m->a[0]) : NULL;
        if (!sh)
            return EINVAL;
        end_share(domain_get(c->dom), sh);
        return 0;
    }
    case XM_GNT_MAP:
        if (shr)
            return EINVAL;
        return do_map(c, m, pl, r, rbuf, out_fds, n_out);
    case XM_GNT_UNMAP: {
        struct mapping *mp = shr ? NULL : idmap_take(&c->held, m->a[0]);
        if (!mp)
            return EINVAL;
        end_mapping(c, mp);
        return 0;
    }
    default: return ENOSYS;
    }
}

static void drop_share(struct conn *c, void *sh)
{
    end_share(domain_get(c->dom), sh);
}

static void drop_mapping(struct conn *c, void *mp)
{
    end_mapping(c, mp);
}

void grant_conn_closed(struct conn *c)
{
    idmap_drain(&c->held, c->kind == XM_KIND_GNTSHR ? drop_share : drop_mapping, c);
}
