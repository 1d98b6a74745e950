/*
 * xen-vchan's extensions to the libxenvchan API (native/vchan/vchan.c), beside the
 * libxenvchan-compatible functions. Not in Xen's libxenvchan: only for a handle made by ours.
 */
#ifndef XV_VCHAN_H
#define XV_VCHAN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct libxenvchan;

/*
 * Zero-copy reads. xv_vchan_read_view sets *DATA to the ring's own bytes ready at the read cursor
 * and returns how many there are, up to the ring's end (the rest, after a wrap, comes with the next
 * view): 0 when nothing is ready (the peer may still be open: see libxenvchan_is_open), -1 with
 * errno EPROTO when the peer's index is impossible. Nothing is consumed: the bytes stay the
 * caller's to read until xv_vchan_read_consume(C, N) hands N of them (at most what the view
 * returned) back to the peer, notifying it if it asked to be told of reads. The bytes sit in memory
 * the peer can write meanwhile: copy what must not change while it is checked.
 */
int xv_vchan_read_view(struct libxenvchan *c, const void **data);
int xv_vchan_read_consume(struct libxenvchan *c, size_t n);

/*
 * Gathered writes. Copies as much of the COUNT buffers of IOV, in order, as the ring has room for.
 * A copy of a quarter of the ring or more is published as it goes, in pieces of 1/32 of the ring
 * (at least 1 KiB), so that a reader already waiting starts on the first piece while the rest is
 * copied; a smaller one is published whole. The peer is notified only if it asked to be told of
 * writes: at most once per piece, and once in all when it does not ask again meanwhile. Returns the bytes written: 0
 * when the ring is full (ask for room first; no notification is requested here), -1 with errno EPROTO when the peer's
 * index is impossible. Does not look at whether the peer is still there (libxenvchan_is_open).
 */
int xv_vchan_writev(struct libxenvchan *c, const struct iovec *iov, int count);

/*
 * Reads up to SIZE bytes into DATA, as libxenvchan_read of a non-blocking channel, with two
 * differences: it asks the peer for no notification (call libxenvchan_data_ready before sleeping
 * on the descriptor), and it hands the space back in pieces as it copies (as xv_vchan_writev
 * publishes), so that a writer waiting for room starts while the rest is copied. Returns the bytes read, 0 when
 * nothing is ready (the peer may be gone: see libxenvchan_is_open), -1 with errno EPROTO when the
 * peer's index is impossible.
 */
int xv_vchan_read(struct libxenvchan *c, void *data, size_t size);

/*
 * Bits of cli_notify the protocol does not use (it defines 1 and 2, and Xen's libxenvchan only
 * ever sets or clears those two, so others pass through untouched). XV_VCHAN_SINGLE_USE: set by a
 * server that offers a fresh channel per client: "do not take this channel over after its client
 * has left". XV_VCHAN_PROBE: set through one mapping and looked for through another, it tells
 * whether two mappings are of the same page.
 */
#define XV_VCHAN_SINGLE_USE 0x40
#define XV_VCHAN_PROBE 0x80

/* Marks server channel C single-use (see XV_VCHAN_SINGLE_USE). */
void xv_vchan_set_single_use(struct libxenvchan *c);

/*
 * The claimed attach: libxenvchan_client_init, made safe for many clients. RING_REF and PORT are
 * the entry at XS_PATH as the caller read it. The client first maps that control page itself and
 * takes it (compare-and-swap of cli_live to 1: a channel offered and never connected, or one whose
 * client left while its server lives on and which is not single-use), then attaches, then checks
 * that it attached to the very page it took. NULL with errno on failure, and *WHY (if not NULL)
 * says at which step: XV_VCHAN_STEP_MAP (the errno of mapping RING_REF: stale or not ours),
 * XV_VCHAN_STEP_CLAIM (EPROTO: not a vchan layout or live state, WHY->seen the cli_live found;
 * EBUSY: not offered, WHY->seen likewise), XV_VCHAN_STEP_ATTACH (libxenvchan_client_init's errno,
 * or EAGAIN: the entry names another page now: read it again). A claim that fails after it was
 * taken is given back (as it was found when the entry had gone or changed, else as "a client came
 * and went"), and the server is notified.
 */
enum { XV_VCHAN_STEP_MAP = 1, XV_VCHAN_STEP_CLAIM, XV_VCHAN_STEP_ATTACH };
struct xv_vchan_claim_error {
    int step;
    uint8_t seen;
};
struct xentoollog_logger;
struct libxenvchan *xv_vchan_client_claim(struct xentoollog_logger *logger, int domain, const char *xs_path,
                                          uint32_t ring_ref, uint32_t port, struct xv_vchan_claim_error *why);

/*
 * One set of device handles for many channels. As libxenvchan_server_init and
 * xv_vchan_client_claim, but on the caller's handles (each from its xen*_open) instead of handles
 * of the channel's own: a process with many channels then holds one /dev/xen/evtchn descriptor and
 * one grant device descriptor, not one of each per channel. A NULL member is opened for the channel
 * alone, as libxenvchan does. With a shared EVENT the caller demultiplexes xenevtchn_pending() by
 * port (libxenvchan_fd_for_select is EVENT's descriptor) and never uses libxenvchan_wait.
 * libxenvchan_close unbinds the channel's port and unmaps or unshares its pages, and leaves the
 * shared handles open: close every channel made on them before closing them.
 */
struct xenevtchn_handle;
struct xengntdev_handle;
struct xs_handle;
struct xv_vchan_handles {
    struct xenevtchn_handle *event;
    struct xengntdev_handle *gntshr; /* a server's (xengntshr_handle) */
    struct xengntdev_handle *gnttab; /* a client's (xengnttab_handle); a claim maps through it too */
    struct xs_handle *xs;            /* set-up and tear-down's xenstore requests; NULL: one each time */
};
struct libxenvchan *xv_vchan_server_init_on(const struct xv_vchan_handles *h, int domain, const char *xs_path,
                                            size_t left_min, size_t right_min);
struct libxenvchan *xv_vchan_client_claim_on(const struct xv_vchan_handles *h, int domain, const char *xs_path,
                                             uint32_t ring_ref, uint32_t port, struct xv_vchan_claim_error *why);

/*
 * Channels with no xenstore (dom0less systems, where there may be none). The two ends agree in
 * advance on RING_REF, the grant reference of the server's control page, and on PORT, a static
 * event channel (one a device tree declares, or one dom0 bound on both domains' behalf) that BIND
 * attaches to h->event: Linux's IOCTL_EVTCHN_BIND_STATIC, returning the port or -1 with errno.
 * BIND NULL: PORT is bound on h->event already. From the call on, PORT's binding is the
 * channel's: libxenvchan_close (or a failed init) unbinds it from h->event, and a static port
 * stays bound in Xen for the next channel. H's event member is required. Nothing is read from or
 * written to xenstore; once attached, the ring layout and the protocol are libxenvchan's.
 *
 * xv_vchan_server_init_static shares the pages as libxenvchan_server_init does, then checks that
 * the control page got RING_REF: if not, nothing stays shared, *GOT_REF (if not NULL) says which
 * reference it got, and errno is EADDRNOTAVAIL (a grant of this domain holds RING_REF; Linux frees
 * the reference of a page its peer still maps only once the peer unmaps it, up to a second
 * later). Then it notifies PORT: a client waiting on it looks now (one not yet bound finds the
 * event pending when it binds).
 *
 * xv_vchan_client_claim_static maps RING_REF of DOMAIN, claims the channel as xv_vchan_client_claim
 * does (errors by step alike: XV_VCHAN_STEP_MAP when the page is not granted yet), and only then
 * binds PORT and attaches, so that a look that finds no channel leaves the port and any event
 * pending on it alone. A claim that fails after it was taken is put back as it was found.
 */
typedef int xv_vchan_bind_fn(struct xenevtchn_handle *event, uint32_t port);
struct libxenvchan *xv_vchan_server_init_static(const struct xv_vchan_handles *h, int domain, uint32_t ring_ref,
                                                uint32_t port, xv_vchan_bind_fn *bind, size_t left_min,
                                                size_t right_min, uint32_t *got_ref);
struct libxenvchan *xv_vchan_client_claim_static(const struct xv_vchan_handles *h, int domain, uint32_t ring_ref,
                                                 uint32_t port, xv_vchan_bind_fn *bind,
                                                 struct xv_vchan_claim_error *why);

/*
 * 1 when the shared page says something no peer keeping the protocol says: a live byte other than
 * 0, 1 or 2, or a ring index pair claiming more than the ring holds. Xen's libxenvchan would take
 * the first for a close and hang on the second.
 */
int xv_vchan_corrupt(struct libxenvchan *c);

/* The VCHAN_NOTIFY_* bits (and any others) in the byte this end writes its requests into (OURS)
 * or in the one the peer writes its requests into. */
int xv_vchan_asked(struct libxenvchan *c, int ours);

/* Withdraws our request to be told of the peer's reads (nothing of ours waits for room). */
void xv_vchan_withdraw_read_notify(struct libxenvchan *c);

#endif
