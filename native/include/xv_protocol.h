/*
 * Protocol facts and limits, named once for every C and C++ file of the project: src/ (both
 * addons), native/vchan (our libxenvchan) and native/mock (the libraries and the broker).
 * lib/constants.ts names the same values for TypeScript. The values are Xen's (xen/xen.h,
 * xen/io/xs_wire.h) and the vchan wire protocol's (xen/io/libxenvchan.h and what libxenvchan does
 * with it); the names are ours.
 */
#ifndef XV_PROTOCOL_H
#define XV_PROTOCOL_H

/* Domain ids (xen/xen.h). Ordinary domains are 0 .. XV_MAX_DOMID. */
#define XV_DOMID_FIRST_RESERVED 0x7ff0u
#define XV_DOMID_SELF 0x7ff0u                       /* "the caller's domain", where Xen accepts it */
#define XV_MAX_DOMID (XV_DOMID_FIRST_RESERVED - 1u) /* 32751 */

/* A vchan end's live byte (cli_live, srv_live of struct vchan_interface); libxenvchan_is_open
 * returns the same values. */
#define XV_LIVE_CLOSED 0  /* the end has closed, or never came */
#define XV_LIVE_OPEN 1    /* connected */
#define XV_LIVE_WAITING 2 /* cli_live only: offered, no client yet */

/* Ring geometry. A ring holds 2^order bytes: orders 10 and 11 live inside the shared control page
 * (at XV_INPAGE_RING_OFFSET), orders from XV_PAGE_ORDER up in pages of their own, granted through
 * the page's grant list, which starts right after the 24-byte header. */
#define XV_PAGE_SIZE 4096u
#define XV_PAGE_ORDER 12
#define XV_RING_MIN_ORDER 10
#define XV_RING_MAX_ORDER 20     /* 1 MiB per direction */
#define XV_INPAGE_SMALL_ORDER 10 /* 1 KiB, at offset 1024 */
#define XV_INPAGE_LARGE_ORDER 11 /* 2 KiB, at offset 2048 */
#define XV_INPAGE_RING_OFFSET(order) ((order) == XV_INPAGE_SMALL_ORDER ? 1024u : 2048u)
#define XV_CONTROL_HEADER_SIZE 24u

/* Xenstore path limits (xen/io/xs_wire.h), in bytes without the terminating NUL. */
#define XV_XENSTORE_ABS_PATH_MAX 3072
#define XV_XENSTORE_REL_PATH_MAX 2048

#endif
