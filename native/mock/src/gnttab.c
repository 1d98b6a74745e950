/*
 * libxengnttab.so.1 for the mock hypervisor: xengnttab_* maps grants,
 * xengntshr_* shares pages.
 *
 * A shared area is a memfd the sharer maps and hands to the broker; a mapper
 * receives the same memfd (read-only when the grant is) and maps the granted
 * pages, so both processes see the same bytes, as with real grant pages.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "client.h"
#include "../../include/xengnttab.h"

#define PAGE XM_PAGE_SIZE

struct region {
    void *addr;
    uint32_t npages;
    uint32_t id; /* broker's share or map id */
    struct region *next;
};

struct xengntdev_handle {
    int sock;
    int kind;
    pthread_mutex_t lock;
    struct region *regions;
    uint32_t mapped, max_grants;
};

static struct xengntdev_handle *dev_open(int kind)
{
    int s = xm_open(kind, -1);
    if (s < 0)
        return NULL;
    struct xengntdev_handle *h = calloc(1, sizeof(*h));
    if (!h) {
        close(s);
        errno = ENOMEM;
        return NULL;
    }
    h->sock = s;
    h->kind = kind;
    h->max_grants = UINT32_MAX;
    pthread_mutex_init(&h->lock, NULL);
    return h;
}

static int dev_close(struct xengntdev_handle *h)
{
    if (!h)
        return 0;
    /* Closing the connection makes the broker unshare/unmap (with notifies) everything left. */
    close(h->sock);
    for (struct region *r = h->regions, *n; r; r = n) {
        n = r->next;
        munmap(r->addr, (size_t)r->npages * PAGE);
        free(r);
    }
    pthread_mutex_destroy(&h->lock);
    free(h);
    return 0;
}

static void add_region(struct xengntdev_handle *h, struct region *r)
{
    r->next = h->regions;
    h->regions = r;
}

static struct region *take_region(struct xengntdev_handle *h, void *addr, uint32_t count)
{
    for (struct region **pp = &h->regions; *pp; pp = &(*pp)->next) {
        if ((*pp)->addr == addr && (*pp)->npages == count) {
            struct region *r = *pp;
            *pp = r->next;
            return r;
        }
    }
    return NULL;
}

/* ---- mapping ---- */

XM_EXPORT xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    (void)logger;
    (void)open_flags;
    return dev_open(XM_KIND_GNTTAB);
}

XM_EXPORT int xengnttab_close(xengnttab_handle *h)
{
    return dev_close(h);
}
XM_EXPORT int xengnttab_fd(xengnttab_handle *h)
{
    return h->sock;
}

/*
 * XEN_MOCK_GNTTAB_EINTR=N: this process's first N mappings fail with EINTR and map nothing. Linux's
 * gntdev in a PV domain does that when a signal (a profiler's SIGPROF, a child's SIGCHLD) is pending
 * while a process's first mapping registers its MMU notifier; the mock has no such moment, so the
 * tests of callers that must ask again set it.
 */
static int eintr_injected(void)
{
    static int left = -1; /* -1: not read from the environment yet */
    int n = __atomic_load_n(&left, __ATOMIC_ACQUIRE);
    if (n < 0) {
        const char *s = getenv("XEN_MOCK_GNTTAB_EINTR");
        int want = s ? atoi(s) : 0;
        int unset = -1;
        __atomic_compare_exchange_n(&left, &unset, want < 0 ? 0 : want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    for (n = __atomic_load_n(&left, __ATOMIC_ACQUIRE); n > 0;)
        if (__atomic_compare_exchange_n(&left, &n, n - 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return 1;
    return 0;
}

/* Asks the broker for COUNT (domid, ref) pages and maps them contiguously.
 * *GNTST receives a grant status for callers that want one (grant copy). */
static void *map_refs(xengnttab_handle *h, uint32_t count, const uint32_t *domids, uint32_t domid, const uint32_t *refs,
                      int prot, uint32_t notify_off, uint32_t notify_port, int *gntst)
{
    if (gntst)
        *gntst = GNTST_general_error;
    if (count == 0 || count > XM_MAX_PAYLOAD / 8 || (prot & ~(PROT_READ | PROT_WRITE))) {
        errno = EINVAL;
        return NULL;
    }
    if (!gntst && eintr_injected()) {
        errno = EINTR;
        return NULL;
    }
    uint32_t *req = malloc((size_t)count * 8);
    uint32_t *rep = malloc((size_t)count * 8);
    struct region *reg = malloc(sizeof(*reg));
    void *area = MAP_FAILED;
    int fds[XM_MAX_FDS], nfds = 0, e = 0;
    struct xm_msg r = {0};
    if (!req || !rep || !reg) {
        e = ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < count; i++) {
        req[2 * i] = domids ? domids[i] : domid;
        req[2 * i + 1] = refs[i];
    }
    pthread_mutex_lock(&h->lock);
    if (h->mapped + count > h->max_grants || h->mapped + count < h->mapped) {
        pthread_mutex_unlock(&h->lock);
        e = ENOMEM;
        goto out;
    }
    struct xm_msg m = {.op = XM_GNT_MAP, .a = {count, (prot & PROT_WRITE) ? 1 : 0, notify_off, notify_port}};
    nfds = XM_MAX_FDS;
    int rc = xm_call(h->sock, &m, req, count * 8, -1, &r, rep, count * 8, fds, &nfds);
    e = errno;
    pthread_mutex_unlock(&h->lock);
    if (rc < 0) {
        if (gntst && r.err)
            *gntst = (int16_t)r.a[1];
        goto out;
    }
    area = mmap(NULL, (size_t)count * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) {
        e = errno;
        goto undo;
    }
    /* One mmap per run of consecutive pages from the same memfd (a whole ring is one run). */
    for (uint32_t i = 0; i < count;) {
        uint32_t fi = rep[2 * i], pg = rep[2 * i + 1], j = i + 1;
        if (fi >= (uint32_t)nfds) {
            e = EPROTO;
            goto undo;
        }
        while (j < count && rep[2 * j] == fi && rep[2 * j + 1] == pg + (j - i))
            j++;
        void *want = (char *)area + (size_t)i * PAGE;
        void *got = mmap(want, (size_t)(j - i) * PAGE, prot, MAP_SHARED | MAP_FIXED, fds[fi], (off_t)pg * PAGE);
        if (got == MAP_FAILED) {
            e = errno == EACCES ? EPERM : errno;
            goto undo;
        }
        i = j;
    }
    reg->addr = area;
    reg->npages = count;
    reg->id = r.a[0];
    pthread_mutex_lock(&h->lock);
    add_region(h, reg);
    h->mapped += count;
    pthread_mutex_unlock(&h->lock);
    reg = NULL;
    if (gntst)
        *gntst = GNTST_okay;
    goto out;
undo:
    if (area != MAP_FAILED) {
        munmap(area, (size_t)count * PAGE);
        area = MAP_FAILED;
    }
    {
        struct xm_msg u = {.op = XM_GNT_UNMAP, .a = {r.a[0]}}, ur;
        pthread_mutex_lock(&h->lock);
        xm_call(h->sock, &u, NULL, 0, -1, &ur, NULL, 0, NULL, NULL);
        pthread_mutex_unlock(&h->lock);
    }
out:
    /* The mappings hold the memory; the descriptors are no longer needed either way. */
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    free(req);
    free(rep);
    free(reg);
    if (area == MAP_FAILED) {
        errno = e ? e : EINVAL;
        return NULL;
    }
    return area;
}

XM_EXPORT void *xengnttab_map_grant_ref(xengnttab_handle *h, uint32_t domid, uint32_t ref, int prot)
{
    return map_refs(h, 1, NULL, domid, &ref, prot, XM_NONE, XM_NONE, NULL);
}

XM_EXPORT void *xengnttab_map_grant_refs(xengnttab_handle *h, uint32_t count, uint32_t *domids, uint32_t *refs,
                                         int prot)
{
    return map_refs(h, count, domids, 0, refs, prot, XM_NONE, XM_NONE, NULL);
}

XM_EXPORT void *xengnttab_map_domain_grant_refs(xengnttab_handle *h, uint32_t count, uint32_t domid, uint32_t *refs,
                                                int prot)
{
    return map_refs(h, count, NULL, domid, refs, prot, XM_NONE, XM_NONE, NULL);
}

XM_EXPORT void *xengnttab_map_grant_ref_notify(xengnttab_handle *h, uint32_t domid, uint32_t ref, int prot,
                                               uint32_t notify_offset, evtchn_port_t notify_port)
{
    return map_refs(h, 1, NULL, domid, &ref, prot, notify_offset, notify_port, NULL);
}

XM_EXPORT int xengnttab_unmap(xengnttab_handle *h, void *start, uint32_t count)
{
    pthread_mutex_lock(&h->lock);
    struct region *r = take_region(h, start, count);
    if (!r) {
        pthread_mutex_unlock(&h->lock);
        errno = EINVAL;
        return -1;
    }
    /* The broker performs the unmap notification (clear byte, send event) first. */
    struct xm_msg m = {.op = XM_GNT_UNMAP, .a = {r->id}}, rep;
    int rc = xm_call(h->sock, &m, NULL, 0, -1, &rep, NULL, 0, NULL, NULL);
    int e = errno;
    h->mapped -= r->npages;
    pthread_mutex_unlock(&h->lock);
    munmap(r->addr, (size_t)r->npages * PAGE);
    free(r);
    errno = e;
    return rc;
}

XM_EXPORT int xengnttab_set_max_grants(xengnttab_handle *h, uint32_t nr_grants)
{
    pthread_mutex_lock(&h->lock);
    h->max_grants = nr_grants;
    pthread_mutex_unlock(&h->lock);
    return 0;
}

/* Copies through temporary mappings; each segment gets its own status, as the hypercall gives. */
XM_EXPORT int xengnttab_grant_copy(xengnttab_handle *h, uint32_t count, xengnttab_grant_copy_segment_t *segs)
{
    for (uint32_t i = 0; i < count; i++) {
        xengnttab_grant_copy_segment_t *s = &segs[i];
        int src_foreign = s->flags & GNTCOPY_source_gref, dst_foreign = s->flags & GNTCOPY_dest_gref;
        if ((src_foreign && (uint32_t)s->source.foreign.offset + s->len > PAGE) ||
            (dst_foreign && (uint32_t)s->dest.foreign.offset + s->len > PAGE)) {
            s->status = GNTST_bad_copy_arg;
            continue;
        }
        void *src_map = NULL, *dst_map = NULL;
        int st = GNTST_okay;
        const char *src = s->source.virt;
        char *dst = s->dest.virt;
        if (src_foreign) {
            uint32_t ref = s->source.foreign.ref;
            src_map = map_refs(h, 1, NULL, s->source.foreign.domid, &ref, PROT_READ, XM_NONE, XM_NONE, &st);
            src = src_map ? (char *)src_map + s->source.foreign.offset : NULL;
        }
        if (st == GNTST_okay && dst_foreign) {
            uint32_t ref = s->dest.foreign.ref;
            dst_map = map_refs(h, 1, NULL, s->dest.foreign.domid, &ref, PROT_READ | PROT_WRITE, XM_NONE, XM_NONE, &st);
            dst = dst_map ? (char *)dst_map + s->dest.foreign.offset : NULL;
        }
        if (st == GNTST_okay && src && dst)
            memmove(dst, src, s->len);
        s->status = (int16_t)st;
        if (src_map)
            xengnttab_unmap(h, src_map, 1);
        if (dst_map)
            xengnttab_unmap(h, dst_map, 1);
    }
    return 0;
}

/* ---- sharing ---- */

XM_EXPORT xengntshr_handle *xengntshr_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    (void)logger;
    (void)open_flags;
    return dev_open(XM_KIND_GNTSHR);
}

XM_EXPORT int xengntshr_close(xengntshr_handle *h)
{
    return dev_close(h);
}
XM_EXPORT int xengntshr_fd(xengntshr_handle *h)
{
    return h->sock;
}

static void *share(xengntshr_handle *h, uint32_t domid, int count, uint32_t *refs, int writable, uint32_t notify_off,
                   uint32_t notify_port)
{
    if (count <= 0 || (size_t)count > XM_MAX_PAYLOAD / 4 || !refs) {
        errno = EINVAL;
        return NULL;
    }
    size_t len = (size_t)count * PAGE;
    int fd = memfd_create("xen-grant", MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    void *area = MAP_FAILED;
    struct region *reg = malloc(sizeof(*reg));
    int e = ENOMEM;
    if (!reg || ftruncate(fd, (off_t)len) < 0)
        goto fail;
    area = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (area == MAP_FAILED)
        goto fail;
    struct xm_msg m = {.op = XM_GNT_SHARE, .a = {domid, (uint32_t)count, writable ? 1 : 0, notify_off, notify_port}}, r;
    pthread_mutex_lock(&h->lock);
    int rc = xm_call(h->sock, &m, NULL, 0, fd, &r, refs, (uint32_t)count * 4, NULL, NULL);
    e = errno;
    if (rc == 0) {
        reg->addr = area;
        reg->npages = (uint32_t)count;
        reg->id = r.a[0];
        add_region(h, reg);
    }
    pthread_mutex_unlock(&h->lock);
    if (rc < 0)
        goto fail;
    close(fd);
    return area;
fail:
    if (area != MAP_FAILED)
        munmap(area, len);
    close(fd);
    free(reg);
    errno = e;
    return NULL;
}

XM_EXPORT void *xengntshr_share_pages(xengntshr_handle *h, uint32_t domid, int count, uint32_t *refs, int writable)
{
    return share(h, domid, count, refs, writable, XM_NONE, XM_NONE);
}

XM_EXPORT void *xengntshr_share_page_notify(xengntshr_handle *h, uint32_t domid, uint32_t *ref, int writable,
                                            uint32_t notify_offset, evtchn_port_t notify_port)
{
    return share(h, domid, 1, ref, writable, notify_offset, notify_port);
}

XM_EXPORT int xengntshr_unshare(xengntshr_handle *h, void *start, uint32_t count)
{
    pthread_mutex_lock(&h->lock);
    struct region *r = take_region(h, start, count);
    if (!r) {
        pthread_mutex_unlock(&h->lock);
        errno = EINVAL;
        return -1;
    }
    struct xm_msg m = {.op = XM_GNT_UNSHARE, .a = {r->id}}, rep;
    int rc = xm_call(h->sock, &m, NULL, 0, -1, &rep, NULL, 0, NULL, NULL);
    int e = errno;
    pthread_mutex_unlock(&h->lock);
    munmap(r->addr, (size_t)r->npages * PAGE);
    free(r);
    errno = e;
    return rc;
}
