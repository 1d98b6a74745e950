/*
 * xen-vchan's extensions to the libxenvchan API (native/vchan/vchan.c), beside the
 * libxenvchan-compatible functions. Not in Xen's libxenvchan: only for a handle made by ours.
 */
#ifndef XV_VCHAN_H
#define XV_VCHAN_H

#include <stddef.h>
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
 * Gathered writes. Copies as much of the COUNT buffers of IOV, in order, as the ring has room for,
 * publishes it with one update of the producer index and notifies the peer once (if it asked to be
 * told of writes). Returns the bytes written: 0 when the ring is full (ask for room first; no
 * notification is requested here), -1 with errno EPROTO when the peer's index is impossible. Does
 * not look at whether the peer is still there (libxenvchan_is_open).
 */
int xv_vchan_writev(struct libxenvchan *c, const struct iovec *iov, int count);

#endif
