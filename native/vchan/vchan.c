/*
 * Our libxenvchan: the libxenvchan API over Xen's stable libraries (libxenevtchn,
 * libxengnttab, libxenstore), speaking the vchan wire format (see
 * xen/io/libxenvchan.h), so it interoperates with Xen's own libxenvchan.
 *
 * Built twice, from the same source: into the mock's drop-in libxenvchan.so.4.17
 * (native/mock/Makefile), and into the real addon (binding.gyp), where it runs on
 * whichever Xen release the system has: Xen's own libxenvchan changes soname and
 * struct layout with every release, the wire format and the libraries under it do not.
 *
 * Differences from Xen's implementation, all on the side of safety:
 *  - our own ring index is kept privately and only the peer's is read from the
 *    shared page (once per use); a peer index that claims more than a ring
 *    holds marks the channel broken: calls fail with EPROTO instead of hanging;
 *  - ring orders and grant references are read once at connect and checked;
 *  - a live byte holding anything but 0/1/2 counts as closed;
 *  - send/recv larger than the ring fail with EMSGSIZE rather than returning 0
 *    forever;
 *  - paths are never truncated (Xen's take at most 49 bytes, a 64-byte buffer
 *    holding "<path>/event-channel"): any path xenstore accepts works;
 *  - the server removes its xenstore entry before it withdraws the pages, so a
 *    client never finds an entry whose pages are already gone while the server lives.
 *
 * Extensions (xv_vchan.h): zero-copy reads (a view of the ring, then consume), gathered writes,
 * the claimed attach (no two clients on one channel), single-use channels, the corruption check
 * and the notification request bits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>

#include <libxenvchan.h>
#include <xenstore.h>
#include <xv_protocol.h>
#include <xv_retry.h>

#include <xv_vchan.h>

/* Exported from the mock's shared library; the real addon builds with VCHAN_EXPORT empty and
 * -fvisibility=hidden, so these names stay private to it. */
#ifndef VCHAN_EXPORT
#define VCHAN_EXPORT __attribute__((visibility("default")))
#endif
#define PAGE XV_PAGE_SIZE
#define MIN_ORDER XV_RING_MIN_ORDER
#define MAX_ORDER XV_RING_MAX_ORDER
#define LIVE_OFF offsetof(struct vchan_interface, cli_live)
#define SRV_LIVE_OFF offsetof(struct vchan_interface, srv_live)

struct vchan {
    struct libxenvchan pub;      /* first: callers only ever see this part */
    struct xs_handle *xs;        /* server: while it sets up (publish), when not the caller's */
    struct xs_handle *shared_xs; /* the caller's (xv_vchan_*_on), kept to remove the entry; never closed */
    int shared_event;            /* pub.event is the caller's (xv_vchan_*_on): unbind our port, never close it */
    int shared_gnt;              /* pub.gntshr / pub.gnttab is the caller's: unshare or unmap, never close it */
    int bound;                   /* pub.event_port is bound on pub.event */
    uint32_t rd_cons;            /* our private copies of our own indices */
    uint32_t wr_prod;
    int broken;
};

static struct vchan *V(struct libxenvchan *c)
{
    return (struct vchan *)c;
}

static uint32_t ring_size(const struct libxenvchan_ring *r)
{
    return 1u << r->order;
}

static uint32_t ring_pages(int order)
{
    return order >= XV_PAGE_ORDER ? 1u << (order - XV_PAGE_ORDER) : 0;
}

static uint8_t *own_notify(struct libxenvchan *c)
{
    return c->is_server ? &c->ring->srv_notify : &c->ring->cli_notify;
}
static uint8_t *peer_notify(struct libxenvchan *c)
{
    return c->is_server ? &c->ring->cli_notify : &c->ring->srv_notify;
}

static void request_notify(struct libxenvchan *c, uint8_t bit)
{
    __atomic_fetch_or(peer_notify(c), bit, __ATOMIC_SEQ_CST);
}

static void send_notify(struct libxenvchan *c, uint8_t bit)
{
    uint8_t prev = __atomic_fetch_and(own_notify(c), (uint8_t)~bit, __ATOMIC_SEQ_CST);
    if (prev & bit)
        xenevtchn_notify(c->event, c->event_port);
}

/* Bytes the peer has produced for us, or -1 if its index is impossible. */
static int64_t raw_ready(struct libxenvchan *c)
{
    struct vchan *v = V(c);
    if (v->broken)
        return -1;
    uint32_t prod = __atomic_load_n(&c->read.shr->prod, __ATOMIC_ACQUIRE);
    uint32_t ready = prod - v->rd_cons;
    if (ready > ring_size(&c->read)) {
        v->broken = 1;
        return -1;
    }
    return ready;
}

/* Room left for us to write, or -1 if the peer's index is impossible. */
static int64_t raw_space(struct libxenvchan *c)
{
    struct vchan *v = V(c);
    if (v->broken)
        return -1;
    uint32_t cons = __atomic_load_n(&c->write.shr->cons, __ATOMIC_ACQUIRE);
    uint32_t used = v->wr_prod - cons;
    if (used > ring_size(&c->write)) {
        v->broken = 1;
        return -1;
    }
    return ring_size(&c->write) - used;
}

static int clamp_int(int64_t n)
{
    return n > INT_MAX ? INT_MAX : (int)n;
}

static int fail(int e)
{
    errno = e;
    return -1;
}

static int do_recv(struct libxenvchan *c, void *data, uint32_t n)
{
    struct vchan *v = V(c);
    uint32_t size = ring_size(&c->read), off = v->rd_cons & (size - 1);
    uint32_t first = n < size - off ? n : size - off;
    memcpy(data, (char *)c->read.buffer + off, first);
    if (n > first)
        memcpy((char *)data + first, c->read.buffer, n - first);
    v->rd_cons += n;
    __atomic_store_n(&c->read.shr->cons, v->rd_cons, __ATOMIC_RELEASE);
    send_notify(c, VCHAN_NOTIFY_READ);
    return (int)n;
}

static int do_send(struct libxenvchan *c, const void *data, uint32_t n)
{
    struct vchan *v = V(c);
    uint32_t size = ring_size(&c->write), off = v->wr_prod & (size - 1);
    uint32_t first = n < size - off ? n : size - off;
    memcpy((char *)c->write.buffer + off, data, first);
    if (n > first)
        memcpy(c->write.buffer, (const char *)data + first, n - first);
    v->wr_prod += n;
    __atomic_store_n(&c->write.shr->prod, v->wr_prod, __ATOMIC_RELEASE);
    send_notify(c, VCHAN_NOTIFY_WRITE);
    return (int)n;
}

VCHAN_EXPORT int libxenvchan_is_open(struct libxenvchan *c)
{
    if (V(c)->broken)
        return 0;
    uint8_t live = __atomic_load_n(c->is_server ? &c->ring->cli_live : &c->ring->srv_live, __ATOMIC_ACQUIRE);
    if (c->is_server) {
        if (live == XV_LIVE_CLOSED && c->server_persist)
            return XV_LIVE_OPEN;
        return live <= XV_LIVE_WAITING ? live : XV_LIVE_CLOSED;
    }
    return live == XV_LIVE_OPEN ? XV_LIVE_OPEN : XV_LIVE_CLOSED;
}

VCHAN_EXPORT int libxenvchan_fd_for_select(struct libxenvchan *c)
{
    return xenevtchn_fd(c->event);
}

VCHAN_EXPORT int libxenvchan_wait(struct libxenvchan *c)
{
    int port = xenevtchn_pending(c->event);
    if (port < 0)
        return -1;
    xenevtchn_unmask(c->event, (evtchn_port_t)port);
    return 0;
}

VCHAN_EXPORT int libxenvchan_data_ready(struct libxenvchan *c)
{
    request_notify(c, VCHAN_NOTIFY_WRITE);
    int64_t n = raw_ready(c);
    return n < 0 ? 0 : clamp_int(n);
}

VCHAN_EXPORT int libxenvchan_buffer_space(struct libxenvchan *c)
{
    request_notify(c, VCHAN_NOTIFY_READ);
    int64_t n = raw_space(c);
    return n < 0 ? 0 : clamp_int(n);
}

/* Waits until at least WANT bytes can be read (or, with WRITE, written). Returns the amount
 * available, 0 if non-blocking and not enough, or -1 (EPROTO when the ring is corrupt, EPIPE
 * when the peer has gone and nothing is left). */
static int64_t await(struct libxenvchan *c, uint32_t want, int write)
{
    for (;;) {
        int64_t n = write ? raw_space(c) : raw_ready(c);
        if (n < 0)
            return fail(EPROTO);
        if (n >= want && n > 0)
            return n;
        /* Ask the peer to tell us when it has moved, then look again before sleeping. */
        request_notify(c, write ? VCHAN_NOTIFY_READ : VCHAN_NOTIFY_WRITE);
        n = write ? raw_space(c) : raw_ready(c);
        if (n < 0)
            return fail(EPROTO);
        if (n >= want && n > 0)
            return n;
        if (libxenvchan_is_open(c) != XV_LIVE_OPEN && !(c->is_server && libxenvchan_is_open(c) == XV_LIVE_WAITING))
            return fail(V(c)->broken ? EPROTO : EPIPE);
        if (!c->blocking)
            return 0;
        if (libxenvchan_wait(c) < 0)
            return -1;
    }
}

VCHAN_EXPORT int xv_vchan_read_view(struct libxenvchan *c, const void **data)
{
    int64_t ready = raw_ready(c);
    if (ready < 0)
        return fail(EPROTO);
    uint32_t size = ring_size(&c->read), off = V(c)->rd_cons & (size - 1);
    uint32_t n = (uint32_t)ready < size - off ? (uint32_t)ready : size - off;
    *data = (const char *)c->read.buffer + off;
    return (int)n;
}

VCHAN_EXPORT int xv_vchan_read_consume(struct libxenvchan *c, size_t n)
{
    struct vchan *v = V(c);
    int64_t ready = raw_ready(c);
    if (ready < 0)
        return fail(EPROTO);
    if (n > (uint64_t)ready)
        return fail(EINVAL);
    /* Our reads of the bytes are done before the peer may reuse them (release ordering). */
    v->rd_cons += (uint32_t)n;
    __atomic_store_n(&c->read.shr->cons, v->rd_cons, __ATOMIC_RELEASE);
    send_notify(c, VCHAN_NOTIFY_READ);
    return 0;
}

/*
 * A copy of a quarter of the ring or more (the two ends would take turns: one copies while the
 * other waits) is made in pieces of 1/32 of the ring (at least 1 KiB), each published as soon as
 * it is copied, so that a peer waiting on the ring starts on the first piece while we copy the
 * next: the two copies overlap. At a 64 KiB ring with 64 KiB writes (bench/, issue 26) this about
 * doubled a copying reader's throughput and cut both ends' CPU per GB; 4 KiB pieces overlapped no
 * better than none. A smaller copy is published whole: the ends already overlap, and pieces would
 * only cut the reader's chunks (at a 1 MiB ring they cost 'data' and view readers 10-30 %). The
 * peer is still told only what it asked for (send_notify).
 */
static uint32_t piece_for(const struct libxenvchan_ring *r, uint32_t n)
{
    uint32_t size = ring_size(r), p = size / 32;
    if (n < size / 4)
        return n;
    return p < 1024 ? 1024 : p;
}

VCHAN_EXPORT int xv_vchan_writev(struct libxenvchan *c, const struct iovec *iov, int count)
{
    int64_t space = raw_space(c);
    if (space < 0)
        return fail(EPROTO);
    struct vchan *v = V(c);
    uint64_t want = 0;
    for (int i = 0; i < count && want < (uint64_t)space; i++)
        want += iov[i].iov_len;
    uint32_t size = ring_size(&c->write), total = 0, shown = 0;
    uint32_t piece = piece_for(&c->write, want < (uint64_t)space ? (uint32_t)want : (uint32_t)space);
    for (int i = 0; i < count && total < (uint64_t)space; i++) {
        uint32_t left = (uint32_t)space - total;
        uint32_t n = iov[i].iov_len < left ? (uint32_t)iov[i].iov_len : left;
        const char *src = iov[i].iov_base;
        while (n > 0) {
            uint32_t k = n < piece ? n : piece;
            uint32_t off = (v->wr_prod + total) & (size - 1);
            uint32_t first = k < size - off ? k : size - off;
            memcpy((char *)c->write.buffer + off, src, first);
            if (k > first)
                memcpy(c->write.buffer, src + first, k - first);
            total += k;
            src += k;
            n -= k;
            if (total - shown >= piece && total < (uint64_t)space) {
                shown = total;
                __atomic_store_n(&c->write.shr->prod, v->wr_prod + total, __ATOMIC_RELEASE);
                send_notify(c, VCHAN_NOTIFY_WRITE);
            }
        }
    }
    if (total == 0)
        return 0;
    v->wr_prod += total;
    __atomic_store_n(&c->write.shr->prod, v->wr_prod, __ATOMIC_RELEASE);
    send_notify(c, VCHAN_NOTIFY_WRITE);
    return (int)total;
}

VCHAN_EXPORT int xv_vchan_read(struct libxenvchan *c, void *data, size_t size)
{
    int64_t ready = raw_ready(c);
    if (ready < 0)
        return fail(EPROTO);
    struct vchan *v = V(c);
    uint32_t rsize = ring_size(&c->read), done = 0;
    uint32_t n = size < (uint64_t)ready ? (uint32_t)size : (uint32_t)ready;
    uint32_t piece = piece_for(&c->read, n);
    while (done < n) {
        uint32_t k = n - done < piece ? n - done : piece;
        uint32_t off = v->rd_cons & (rsize - 1);
        uint32_t first = k < rsize - off ? k : rsize - off;
        memcpy((char *)data + done, (const char *)c->read.buffer + off, first);
        if (k > first)
            memcpy((char *)data + done + first, c->read.buffer, k - first);
        done += k;
        /* Our reads of these bytes are done before the peer may reuse them (release ordering). */
        v->rd_cons += k;
        __atomic_store_n(&c->read.shr->cons, v->rd_cons, __ATOMIC_RELEASE);
        send_notify(c, VCHAN_NOTIFY_READ);
    }
    return (int)n;
}

VCHAN_EXPORT int libxenvchan_read(struct libxenvchan *c, void *data, size_t size)
{
    if (size == 0)
        return 0;
    /* As Xen's: a non-blocking read asks to be told of the next write whatever it finds (it goes
     * through data_ready), so a caller that sleeps on the fd after a partial read is woken. */
    if (!c->blocking)
        request_notify(c, VCHAN_NOTIFY_WRITE);
    int64_t n = await(c, 1, 0);
    if (n <= 0)
        return (int)n;
    return do_recv(c, data, (uint32_t)(size < (uint64_t)n ? size : (uint64_t)n));
}

VCHAN_EXPORT int libxenvchan_recv(struct libxenvchan *c, void *data, size_t size)
{
    if (size == 0)
        return 0;
    if (size > ring_size(&c->read))
        return fail(EMSGSIZE);
    int64_t n = await(c, (uint32_t)size, 0);
    if (n <= 0)
        return (int)n;
    return do_recv(c, data, (uint32_t)size);
}

VCHAN_EXPORT int libxenvchan_write(struct libxenvchan *c, const void *data, size_t size)
{
    if (size == 0)
        return 0;
    /* As Xen's: a non-blocking write asks to be told of the next read whatever room it finds (it
     * goes through buffer_space), so a caller that sleeps on the fd after a partial write is woken:
     * without this, Xen's vchan-socket-proxy stalled on the mock. */
    if (!c->blocking)
        request_notify(c, VCHAN_NOTIFY_READ);
    int64_t n = await(c, 1, 1);
    if (n <= 0)
        return (int)n;
    return do_send(c, data, (uint32_t)(size < (uint64_t)n ? size : (uint64_t)n));
}

VCHAN_EXPORT int libxenvchan_send(struct libxenvchan *c, const void *data, size_t size)
{
    if (size == 0)
        return 0;
    if (size > ring_size(&c->write))
        return fail(EMSGSIZE);
    int64_t n = await(c, (uint32_t)size, 1);
    if (n <= 0)
        return (int)n;
    return do_send(c, data, (uint32_t)size);
}

/* ---- setup ---- */

static int order_for(size_t min)
{
    int order = MIN_ORDER;
    while (order <= MAX_ORDER && ((size_t)1 << order) < min)
        order++;
    return order;
}

/* Where a ring of ORDER lives: in the shared page for 10/11, else in its own granted pages. */
static void *in_page(struct vchan_interface *ring, int order)
{
    return (char *)ring + XV_INPAGE_RING_OFFSET(order);
}

static void release(struct vchan *v)
{
    struct libxenvchan *c = &v->pub;
    /* A server's entry goes before its pages: a client that read the entry and then finds the page
     * gone looks again and sees no entry (or the next offer's), never the same entry naming a page
     * that no longer exists, which is what a dead server's stale entry looks like. */
    if (c->xs_path) {
        /* The caller's connection, or one opened again for this: a channel holds no xenstore
         * connection of its own while it lives. */
        struct xs_handle *xs = v->xs ? v->xs : v->shared_xs ? v->shared_xs : xs_open(0);
        if (xs)
            xs_rm(xs, XBT_NULL, c->xs_path);
        if (xs && xs != v->xs && xs != v->shared_xs)
            xs_close(xs);
        free(c->xs_path);
        c->xs_path = NULL;
    }
    if (c->ring) {
        uint32_t lp = ring_pages(c->is_server ? c->read.order : c->write.order);
        uint32_t rp = ring_pages(c->is_server ? c->write.order : c->read.order);
        void *left = c->is_server ? c->read.buffer : c->write.buffer;
        void *right = c->is_server ? c->write.buffer : c->read.buffer;
        if (c->is_server) {
            if (lp && left)
                xengntshr_unshare(c->gntshr, left, lp);
            if (rp && right)
                xengntshr_unshare(c->gntshr, right, rp);
            xengntshr_unshare(c->gntshr, c->ring, 1); /* clears srv_live and notifies */
        } else {
            if (lp && left)
                xengnttab_unmap(c->gnttab, left, lp);
            if (rp && right)
                xengnttab_unmap(c->gnttab, right, rp);
            xengnttab_unmap(c->gnttab, c->ring, 1); /* clears cli_live and notifies */
        }
    }
    if (c->is_server && c->gntshr && !v->shared_gnt)
        xengntshr_close(c->gntshr);
    else if (!c->is_server && c->gnttab && !v->shared_gnt)
        xengnttab_close(c->gnttab);
    if (c->event && v->shared_event) {
        if (v->bound)
            xenevtchn_unbind(c->event, c->event_port);
    } else if (c->event) {
        xenevtchn_close(c->event);
    }
    if (v->xs && v->xs != v->shared_xs)
        xs_close(v->xs);
    free(c->xs_path);
    free(v);
}

VCHAN_EXPORT void libxenvchan_close(struct libxenvchan *c)
{
    if (!c)
        return;
    if (c->ring) {
        /* Say goodbye in our live byte; the unmap notification repeats it for a peer that misses this. */
        __atomic_store_n(c->is_server ? &c->ring->srv_live : &c->ring->cli_live, XV_LIVE_CLOSED, __ATOMIC_RELEASE);
        xenevtchn_notify(c->event, c->event_port);
    }
    release(V(c));
}

static int read_number(struct xs_handle *xs, const char *base, const char *key, uint32_t *out)
{
    char *path;
    if (key ? asprintf(&path, "%s/%s", base, key) < 0 : !(path = strdup(base)))
        return -1;
    unsigned int len;
    char *val = xs_read(xs, XBT_NULL, path, &len);
    int e = errno;
    free(path);
    if (!val) {
        errno = e;
        return -1;
    }
    char *end;
    errno = 0;
    unsigned long n = strtoul(val, &end, 10);
    int bad = errno || end == val || *end || n > UINT32_MAX;
    free(val);
    if (bad) {
        errno = EPROTO;
        return -1;
    }
    *out = (uint32_t)n;
    return 0;
}

static int publish(struct vchan *v, int domain, uint32_t ring_ref)
{
    struct libxenvchan *c = &v->pub;
    char *rr = NULL, *ec = NULL, val[16];
    if (asprintf(&rr, "%s/ring-ref", c->xs_path) < 0 || asprintf(&ec, "%s/event-channel", c->xs_path) < 0) {
        free(rr);
        return -1;
    }
    uint32_t self;
    if (read_number(v->xs, "domid", NULL, &self) < 0) {
        free(rr);
        free(ec);
        return -1;
    }
    struct xs_permissions perms[2] = {{self, XS_PERM_NONE}, {(unsigned)domain, XS_PERM_READ}};
    /* A server killed leaves its entry behind, stale, as on Xen (where nothing could remove it):
     * its clients then hear ECONNREFUSED on every backend alike. */
    int rc = -1;
    for (int attempt = 0; attempt < 100 && rc < 0; attempt++) {
        xs_transaction_t t = xs_transaction_start(v->xs);
        if (!t)
            break;
        snprintf(val, sizeof(val), "%u", ring_ref);
        bool ok = xs_write(v->xs, t, rr, val, (unsigned)strlen(val)) && xs_set_permissions(v->xs, t, rr, perms, 2);
        snprintf(val, sizeof(val), "%u", c->event_port);
        ok = ok && xs_write(v->xs, t, ec, val, (unsigned)strlen(val)) && xs_set_permissions(v->xs, t, ec, perms, 2);
        int e = errno;
        if (!ok) {
            xs_transaction_end(v->xs, t, true);
            errno = e;
            break;
        }
        if (xs_transaction_end(v->xs, t, false))
            rc = 0;
        else if (errno != EAGAIN)
            break;
    }
    int e = errno;
    free(rr);
    free(ec);
    errno = e;
    return rc;
}

/* A static channel's agreement (xv_vchan_*_static): no xenstore; the port, bound by BIND (or
 * already bound when BIND is NULL), and the control page's grant reference. */
struct static_channel {
    uint32_t port;
    uint32_t ring_ref;
    xv_vchan_bind_fn *bind;
    uint32_t *got_ref; /* server: the reference the control page got */
};

static struct libxenvchan *server_init(int domain, const char *xs_path, size_t left_min, size_t right_min,
                                       const struct xv_vchan_handles *shared, const struct static_channel *st);

/* ST's port becomes V's, bound by ST's bind (if any) on V's event handle. From here on the port is
 * the channel's, bound or not: release() unbinds it. -1 with errno when the bind fails. */
static int take_static_port(struct vchan *v, const struct static_channel *st)
{
    struct libxenvchan *c = &v->pub;
    c->event_port = st->port;
    v->bound = 1;
    if (st->bind && st->bind(c->event, st->port) < 0) {
        v->bound = 0;
        return -1;
    }
    return 0;
}

VCHAN_EXPORT struct libxenvchan *libxenvchan_server_init(struct xentoollog_logger *logger, int domain,
                                                         const char *xs_path, size_t left_min, size_t right_min)
{
    (void)logger;
    return server_init(domain, xs_path, left_min, right_min, NULL, NULL);
}

VCHAN_EXPORT struct libxenvchan *xv_vchan_server_init_on(const struct xv_vchan_handles *h, int domain,
                                                         const char *xs_path, size_t left_min, size_t right_min)
{
    return server_init(domain, xs_path, left_min, right_min, h, NULL);
}

VCHAN_EXPORT struct libxenvchan *xv_vchan_server_init_static(const struct xv_vchan_handles *h, int domain,
                                                             uint32_t ring_ref, uint32_t port, xv_vchan_bind_fn *bind,
                                                             size_t left_min, size_t right_min, uint32_t *got_ref)
{
    struct static_channel st = {port, ring_ref, bind, got_ref};
    return server_init(domain, NULL, left_min, right_min, h, &st);
}

static struct libxenvchan *server_init(int domain, const char *xs_path, size_t left_min, size_t right_min,
                                       const struct xv_vchan_handles *shared, const struct static_channel *st)
{
    if (!xs_path == !st || domain < 0 || (unsigned)domain > XV_MAX_DOMID || (st && !(shared && shared->event))) {
        errno = EINVAL;
        return NULL;
    }
    int lo = order_for(left_min), ro = order_for(right_min);
    if (lo > MAX_ORDER || ro > MAX_ORDER) {
        errno = EINVAL;
        return NULL;
    }
    /* In-page rings where they fit: 1 KiB at offset 1024 and 2 KiB at 2048; a lone in-page ring
     * takes the 2 KiB slot so the grant list (up to 256 refs) stays clear of it. */
    const int small = XV_INPAGE_SMALL_ORDER, large = XV_INPAGE_LARGE_ORDER;
    if (lo <= small && ro <= large) {
        lo = small;
        ro = large;
    } else if (lo <= large && ro <= small) {
        lo = large;
        ro = small;
    } else {
        if (lo < XV_PAGE_ORDER)
            lo = large;
        if (ro < XV_PAGE_ORDER)
            ro = large;
    }
    struct vchan *v = calloc(1, sizeof(*v));
    if (!v)
        return NULL;
    struct libxenvchan *c = &v->pub;
    c->is_server = 1;
    v->shared_event = shared && shared->event;
    v->shared_gnt = shared && shared->gntshr;
    c->event = v->shared_event ? shared->event : xenevtchn_open(NULL, 0);
    c->gntshr = v->shared_gnt ? shared->gntshr : xengntshr_open(NULL, 0);
    if (!c->event || !c->gntshr)
        goto fail;
    if (st) {
        if (take_static_port(v, st) < 0)
            goto fail;
    } else {
        c->xs_path = strdup(xs_path);
        v->shared_xs = shared ? shared->xs : NULL;
        v->xs = v->shared_xs ? v->shared_xs : xs_open(0);
        if (!c->xs_path || !v->xs)
            goto fail;
        int port = xenevtchn_bind_unbound_port(c->event, (uint32_t)domain);
        if (port < 0)
            goto fail;
        c->event_port = (uint32_t)port;
        v->bound = 1;
    }
    uint32_t ring_ref;
    c->ring = xengntshr_share_page_notify(c->gntshr, (uint32_t)domain, &ring_ref, 1, SRV_LIVE_OFF, c->event_port);
    if (!c->ring)
        goto fail;
    if (st) {
        if (st->got_ref)
            *st->got_ref = ring_ref;
        if (ring_ref != st->ring_ref) {
            /* Not the page the client will map: give it back at once (nobody has seen it). */
            xengntshr_unshare(c->gntshr, c->ring, 1);
            c->ring = NULL;
            errno = EADDRNOTAVAIL;
            goto fail;
        }
    }
    struct vchan_interface *ring = c->ring;
    memset(ring, 0, 24);
    ring->left_order = (uint16_t)lo;
    ring->right_order = (uint16_t)ro;
    ring->cli_live = XV_LIVE_WAITING;
    ring->srv_live = XV_LIVE_OPEN;
    ring->cli_notify = VCHAN_NOTIFY_WRITE;
    c->read.order = lo;
    c->write.order = ro;
    c->read.shr = &ring->left;
    c->write.shr = &ring->right;
    uint32_t lp = ring_pages(lo), rp = ring_pages(ro);
    uint32_t refs[512];
    if (lp) {
        c->read.buffer = xengntshr_share_pages(c->gntshr, (uint32_t)domain, (int)lp, refs, 1);
        if (!c->read.buffer)
            goto fail;
    } else {
        c->read.buffer = in_page(ring, lo);
    }
    if (rp) {
        c->write.buffer = xengntshr_share_pages(c->gntshr, (uint32_t)domain, (int)rp, refs + lp, 1);
        if (!c->write.buffer)
            goto fail;
    } else {
        c->write.buffer = in_page(ring, ro);
    }
    memcpy(ring->grants, refs, (lp + rp) * sizeof(uint32_t));
    if (st) {
        /* No entry to publish: the event tells a client waiting on the port to look now (one that
         * is not bound yet finds it pending when it binds). */
        xenevtchn_notify(c->event, c->event_port);
        return c;
    }
    if (publish(v, domain, ring_ref) < 0)
        goto fail;
    /* Not kept: a process with many channels would hold a xenstore connection (an fd) for each. */
    if (v->xs != v->shared_xs)
        xs_close(v->xs);
    v->xs = NULL;
    return c;
fail : {
    /* Nothing is connected yet: release quietly (no live-byte goodbye). release() only gives back
     * rings of order 12 and up that were actually shared. publish() writes all or nothing, so
     * nothing of ours is in xenstore: the path is left as it was (it may be a node the client
     * made, which the caller may offer on again once pages are free). */
    int e = errno;
    free(c->xs_path);
    c->xs_path = NULL;
    release(v);
    errno = e ? e : EIO;
    return NULL;
}
}

/* Checks a server's ring layout before trusting it: known orders, no overlap between the two
 * in-page rings or between them and the grant list. */
static int layout_ok(int lo, int ro)
{
    if (lo < MIN_ORDER || lo > MAX_ORDER || ro < MIN_ORDER || ro > MAX_ORDER)
        return 0;
    if (lo < XV_PAGE_ORDER && ro < XV_PAGE_ORDER && lo == ro)
        return 0;
    uint32_t grants_end = XV_CONTROL_HEADER_SIZE + 4 * (ring_pages(lo) + ring_pages(ro));
    uint32_t first_ring = PAGE;
    if (lo < XV_PAGE_ORDER)
        first_ring = XV_INPAGE_RING_OFFSET(lo);
    if (ro < XV_PAGE_ORDER && XV_INPAGE_RING_OFFSET(ro) < first_ring)
        first_ring = XV_INPAGE_RING_OFFSET(ro);
    return grants_end <= first_ring;
}

static struct libxenvchan *client_init(int domain, const char *xs_path, const struct xv_vchan_handles *shared);

VCHAN_EXPORT struct libxenvchan *libxenvchan_client_init(struct xentoollog_logger *logger, int domain,
                                                         const char *xs_path)
{
    (void)logger;
    return client_init(domain, xs_path, NULL);
}

static struct libxenvchan *client_attach(int domain, uint32_t ring_ref, uint32_t remote_port,
                                         const struct xv_vchan_handles *shared, const struct static_channel *st);

static struct libxenvchan *client_init(int domain, const char *xs_path, const struct xv_vchan_handles *shared)
{
    if (!xs_path || domain < 0 || (unsigned)domain > XV_MAX_DOMID) {
        errno = EINVAL;
        return NULL;
    }
    uint32_t ring_ref, remote_port;
    struct xs_handle *xs = shared && shared->xs ? shared->xs : xs_open(0);
    if (!xs)
        return NULL;
    int ok = read_number(xs, xs_path, "ring-ref", &ring_ref) == 0 &&
             read_number(xs, xs_path, "event-channel", &remote_port) == 0;
    int e0 = errno;
    if (!shared || xs != shared->xs)
        xs_close(xs);
    errno = e0;
    if (!ok)
        return NULL;
    return client_attach(domain, ring_ref, remote_port, shared, NULL);
}

/* Attaches to the control page RING_REF of DOMAIN: through REMOTE_PORT (bound interdomain here),
 * or through the static port of ST. */
static struct libxenvchan *client_attach(int domain, uint32_t ring_ref, uint32_t remote_port,
                                         const struct xv_vchan_handles *shared, const struct static_channel *st)
{
    struct vchan *v = calloc(1, sizeof(*v));
    if (!v)
        return NULL;
    struct libxenvchan *c = &v->pub;
    v->shared_event = shared && shared->event;
    v->shared_gnt = shared && shared->gnttab;
    c->event = v->shared_event ? shared->event : xenevtchn_open(NULL, 0);
    c->gnttab = v->shared_gnt ? shared->gnttab : xengnttab_open(NULL, 0);
    if (!c->event || !c->gnttab)
        goto fail;
    if (st) {
        if (take_static_port(v, st) < 0)
            goto fail;
    } else {
        int port = xenevtchn_bind_interdomain(c->event, (uint32_t)domain, remote_port);
        if (port < 0)
            goto fail;
        c->event_port = (uint32_t)port;
        v->bound = 1;
    }
    c->ring = XV_MAP_RETRYING(xengnttab_map_grant_ref_notify(c->gnttab, (uint32_t)domain, ring_ref,
                                                             PROT_READ | PROT_WRITE, LIVE_OFF, c->event_port));
    if (!c->ring)
        goto fail;
    struct vchan_interface *ring = c->ring;
    int lo = __atomic_load_n(&ring->left_order, __ATOMIC_ACQUIRE);
    int ro = __atomic_load_n(&ring->right_order, __ATOMIC_ACQUIRE);
    if (!layout_ok(lo, ro)) {
        errno = EPROTO;
        goto fail;
    }
    c->write.order = lo; /* the client writes the left ring */
    c->read.order = ro;
    c->write.shr = &ring->left;
    c->read.shr = &ring->right;
    uint32_t lp = ring_pages(lo), rp = ring_pages(ro), refs[512];
    for (uint32_t i = 0; i < lp + rp; i++)
        refs[i] = __atomic_load_n(&ring->grants[i], __ATOMIC_RELAXED);
    if (lp) {
        c->write.buffer = XV_MAP_RETRYING(
            xengnttab_map_domain_grant_refs(c->gnttab, lp, (uint32_t)domain, refs, PROT_READ | PROT_WRITE));
        if (!c->write.buffer)
            goto fail;
    } else {
        c->write.buffer = in_page(ring, lo);
    }
    if (rp) {
        c->read.buffer = XV_MAP_RETRYING(
            xengnttab_map_domain_grant_refs(c->gnttab, rp, (uint32_t)domain, refs + lp, PROT_READ | PROT_WRITE));
        if (!c->read.buffer)
            goto fail;
    } else {
        c->read.buffer = in_page(ring, ro);
    }
    /* Our indices start where the server's page says: both are 0 on a fresh channel. */
    v->wr_prod = __atomic_load_n(&ring->left.prod, __ATOMIC_ACQUIRE);
    v->rd_cons = __atomic_load_n(&ring->right.cons, __ATOMIC_ACQUIRE);
    __atomic_store_n(&ring->srv_notify, VCHAN_NOTIFY_WRITE, __ATOMIC_SEQ_CST);
    __atomic_store_n(&ring->cli_live, XV_LIVE_OPEN, __ATOMIC_SEQ_CST);
    /* As Xen's libxenvchan (4.17 and later, checked in Debian's binary): wake the server, so a
     * server waiting for its client learns of it now, not at the client's first write. */
    xenevtchn_notify(c->event, c->event_port);
    return c;
fail : {
    int e = errno;
    release(v);
    errno = e ? e : EIO;
    return NULL;
}
}

/* ---- Extensions (xv_vchan.h): single use, the claimed attach, the corruption check ---- */

VCHAN_EXPORT void xv_vchan_set_single_use(struct libxenvchan *c)
{
    __atomic_fetch_or(&c->ring->cli_notify, XV_VCHAN_SINGLE_USE, __ATOMIC_SEQ_CST);
}

/*
 * libxenvchan_client_init maps whatever ring-ref xenstore names and sets cli_live = 1
 * unconditionally, so a client that reads a stale entry (the previous client's channel, still
 * published while the server winds it down) or a busy one attaches to a channel someone else
 * holds, and bytes reach the wrong stream. So a claim comes first: map the control page ourselves
 * and compare-and-swap cli_live to 1. Only the one client that wins the swap goes on; then
 * libxenvchan_client_init attaches, and a probe bit checks that it attached to the very page
 * claimed. A failure after the claim gives it back (claim_give_back).
 *
 * Which channels may be claimed: one offered and never connected (cli_live 2); and one whose
 * client has left (cli_live 0) while its server lives on (srv_live 1), unless the server marked it
 * single-use. Xen's servers may serve successive clients on one channel (vchan-socket-proxy in
 * server mode waits on the same page for the next client); ours never do.
 */
struct claim {
    uint32_t dom, port;
    xengnttab_handle *gt;
    int own_gt; /* gt is ours to close (the caller lent none) */
    struct vchan_interface *page;
    int claimed;    /* cli_live is ours to give back */
    int restore;    /* give it back as it was (see claim_give_back) */
    uint8_t before; /* cli_live as we found it */
    int quiet;      /* a static channel's: no port of the server's to bind, the claim goes back as found */
};

/* 0, or an errno: of the mapping (the entry is stale or not ours), EPROTO (the page is not a
 * vchan), EBUSY (another client holds it, or its client has gone and the server has not offered
 * it again); *SEEN is the cli_live found. */
static int claim_take(struct claim *k, const struct xv_vchan_handles *shared, uint32_t ref, uint8_t *seen)
{
    /* The caller's grant device when it lends one: the claim's mapping is a second map of the
     * ring page beside libxenvchan's, unmapped before we return. */
    k->gt = shared && shared->gnttab ? (xengnttab_handle *)shared->gnttab : NULL;
    if (!k->gt) {
        k->gt = xengnttab_open(NULL, 0);
        k->own_gt = 1;
    }
    if (!k->gt)
        return errno ? errno : EIO;
    k->page = XV_MAP_RETRYING(xengnttab_map_grant_ref(k->gt, k->dom, ref, PROT_READ | PROT_WRITE));
    if (!k->page)
        return errno ? errno : EIO;
    int lo = __atomic_load_n(&k->page->left_order, __ATOMIC_ACQUIRE);
    int ro = __atomic_load_n(&k->page->right_order, __ATOMIC_ACQUIRE);
    if (!layout_ok(lo, ro))
        return EPROTO;
    uint8_t expected = __atomic_load_n(&k->page->cli_live, __ATOMIC_ACQUIRE);
    *seen = expected;
    if (expected > XV_LIVE_WAITING) /* no state of the protocol: a broken or hostile server */
        return EPROTO;
    int reusable = expected == XV_LIVE_CLOSED && __atomic_load_n(&k->page->srv_live, __ATOMIC_ACQUIRE) == 1 &&
                   !(__atomic_load_n(&k->page->cli_notify, __ATOMIC_ACQUIRE) & XV_VCHAN_SINGLE_USE);
    k->before = expected;
    if ((expected == XV_LIVE_WAITING || reusable) &&
        __atomic_compare_exchange_n(&k->page->cli_live, &expected, XV_LIVE_OPEN, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST)) {
        k->claimed = 1;
        return 0;
    }
    *seen = expected;
    return EBUSY;
}

/* Whether OTHER (libxenvchan's mapping) is the page we claimed: a bit set through one mapping is
 * looked for through the other. */
static int claim_same_page(struct claim *k, struct vchan_interface *other)
{
    __atomic_fetch_or(&k->page->cli_notify, XV_VCHAN_PROBE, __ATOMIC_SEQ_CST);
    int same = (__atomic_load_n(&other->cli_notify, __ATOMIC_SEQ_CST) & XV_VCHAN_PROBE) != 0;
    __atomic_fetch_and(&k->page->cli_notify, (uint8_t)~XV_VCHAN_PROBE, __ATOMIC_SEQ_CST);
    return same;
}

/*
 * How a claim is given back when the attach fails after it:
 *  - restore (the entry was gone, or our page is not the one it names): the channel goes back as
 *    we found it, still offered. Grant references are reused, so a ref read from an entry just
 *    withdrawn can name another client's freshly offered channel by the time it is mapped; that
 *    channel must stay offered to its own client, not look like one a client came to and left.
 *  - otherwise: cli_live 0, "a client came and went", and the server offers a fresh channel.
 * An event either way: a server that saw the claim looks again.
 */
static void claim_give_back(struct claim *k)
{
    uint8_t now = __atomic_load_n(&k->page->cli_live, __ATOMIC_ACQUIRE);
    /* (A failed libxenvchan_client_init that had mapped the page cleared the byte already with its
     * unmap notification: then 0 is put back too.) */
    if (k->restore ? (now == XV_LIVE_OPEN || now == XV_LIVE_CLOSED) : now == XV_LIVE_OPEN)
        __atomic_compare_exchange_n(&k->page->cli_live, &now, k->restore ? k->before : XV_LIVE_CLOSED, 0,
                                    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    if (k->quiet)
        return; /* the server was never told of the claim: nothing to look at again */
    xenevtchn_handle *ev = xenevtchn_open(NULL, 0);
    if (!ev)
        return;
    xenevtchn_port_or_error_t local = xenevtchn_bind_interdomain(ev, k->dom, k->port);
    if (local >= 0) {
        xenevtchn_notify(ev, (evtchn_port_t)local);
        xenevtchn_unbind(ev, (evtchn_port_t)local);
    }
    xenevtchn_close(ev);
}

static void claim_end(struct claim *k)
{
    if (k->claimed)
        claim_give_back(k);
    if (k->page)
        xengnttab_unmap(k->gt, k->page, 1);
    if (k->gt && k->own_gt)
        xengnttab_close(k->gt);
}

static struct libxenvchan *client_claim(const struct xv_vchan_handles *shared, int domain, const char *xs_path,
                                        uint32_t ring_ref, uint32_t port, struct xv_vchan_claim_error *why,
                                        const struct static_channel *st);

VCHAN_EXPORT struct libxenvchan *xv_vchan_client_claim(struct xentoollog_logger *logger, int domain,
                                                       const char *xs_path, uint32_t ring_ref, uint32_t port,
                                                       struct xv_vchan_claim_error *why)
{
    (void)logger;
    return client_claim(NULL, domain, xs_path, ring_ref, port, why, NULL);
}

VCHAN_EXPORT struct libxenvchan *xv_vchan_client_claim_on(const struct xv_vchan_handles *h, int domain,
                                                          const char *xs_path, uint32_t ring_ref, uint32_t port,
                                                          struct xv_vchan_claim_error *why)
{
    return client_claim(h, domain, xs_path, ring_ref, port, why, NULL);
}

VCHAN_EXPORT struct libxenvchan *xv_vchan_client_claim_static(const struct xv_vchan_handles *h, int domain,
                                                              uint32_t ring_ref, uint32_t port, xv_vchan_bind_fn *bind,
                                                              struct xv_vchan_claim_error *why)
{
    struct static_channel st = {port, ring_ref, bind, NULL};
    if (!h || !h->event) {
        if (why)
            why->step = 0;
        errno = EINVAL;
        return NULL;
    }
    return client_claim(h, domain, NULL, ring_ref, port, why, &st);
}

static struct libxenvchan *client_claim(const struct xv_vchan_handles *shared, int domain, const char *xs_path,
                                        uint32_t ring_ref, uint32_t port, struct xv_vchan_claim_error *why,
                                        const struct static_channel *st)
{
    struct xv_vchan_claim_error w = {0, 0};
    if (!xs_path == !st || domain < 0 || (unsigned)domain > XV_MAX_DOMID) {
        if (why)
            *why = w;
        errno = EINVAL;
        return NULL;
    }
    struct claim k = {.dom = (uint32_t)domain, .port = port, .before = XV_LIVE_WAITING, .quiet = st != NULL};
    struct libxenvchan *c = NULL;
    int e = claim_take(&k, shared, ring_ref, &w.seen);
    if (e) {
        w.step = k.page ? XV_VCHAN_STEP_CLAIM : XV_VCHAN_STEP_MAP;
        goto out;
    }
    errno = 0;
    /* A static channel's port is bound only now, with the page in hand: an attempt that finds no
     * page leaves the port alone, and an event for it pending for whoever waits on it. */
    c = st ? client_attach(domain, ring_ref, 0, shared, st) : client_init(domain, xs_path, shared);
    w.step = XV_VCHAN_STEP_ATTACH;
    if (!c) {
        e = errno ? errno : EIO;
        if (st || e == ENOENT || e == EACCES)
            k.restore = 1; /* the entry went: the page we claimed may be another client's now */
        goto out;
    }
    if (!claim_same_page(&k, c->ring)) {
        k.restore = 1; /* we claimed a page the entry no longer names */
        libxenvchan_close(c);
        c = NULL;
        e = EAGAIN;
        goto out;
    }
    k.claimed = 0; /* libxenvchan holds the channel now */
    w.step = 0;
out:
    claim_end(&k);
    if (why)
        *why = w;
    if (!c)
        errno = e;
    return c;
}

VCHAN_EXPORT int xv_vchan_corrupt(struct libxenvchan *c)
{
    uint8_t peer_live = __atomic_load_n(c->is_server ? &c->ring->cli_live : &c->ring->srv_live, __ATOMIC_ACQUIRE);
    if (peer_live > XV_LIVE_WAITING)
        return 1;
    uint32_t rprod = __atomic_load_n(&c->read.shr->prod, __ATOMIC_ACQUIRE);
    uint32_t rcons = __atomic_load_n(&c->read.shr->cons, __ATOMIC_ACQUIRE);
    uint32_t wprod = __atomic_load_n(&c->write.shr->prod, __ATOMIC_ACQUIRE);
    uint32_t wcons = __atomic_load_n(&c->write.shr->cons, __ATOMIC_ACQUIRE);
    return rprod - rcons > ring_size(&c->read) || wprod - wcons > ring_size(&c->write);
}

VCHAN_EXPORT int xv_vchan_asked(struct libxenvchan *c, int ours)
{
    return __atomic_load_n(ours ? peer_notify(c) : own_notify(c), __ATOMIC_ACQUIRE);
}

VCHAN_EXPORT void xv_vchan_withdraw_read_notify(struct libxenvchan *c)
{
    __atomic_fetch_and(peer_notify(c), (uint8_t)~VCHAN_NOTIFY_READ, __ATOMIC_SEQ_CST);
}
