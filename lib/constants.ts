/**
 * Protocol facts and limits, named once for TypeScript; native/include/xv_protocol.h names the
 * same for C and C++. The values are Xen's (xen/xen.h, xen/io/xs_wire.h) and the vchan wire
 * protocol's; the names are ours.
 */

/** The first domain id Xen reserves (DOMID_FIRST_RESERVED); also DOMID_SELF, where Xen takes it. */
export const DOMID_FIRST_RESERVED = 0x7ff0;
/** Xen domain ids: 0 to 32751 (DOMID_FIRST_RESERVED - 1). */
export const MAX_DOMID = DOMID_FIRST_RESERVED - 1;

/** A vchan end's live byte (cli_live/srv_live of the shared page), as libxenvchan_is_open reports it. */
export enum LiveState {
  /** The other end has closed, or never came. */
  Closed = 0,
  /** Both ends are connected. */
  Open = 1,
  /** Server only: the channel is offered and no client has connected yet. */
  Waiting = 2,
}

/** The largest vchan ring, in bytes, per direction (ring order 20). */
export const MAX_RING_SIZE = 1 << 20;
/** The ring size a server asks for in each direction when not told (readMin/writeMin). */
export const DEFAULT_RING_SIZE = 64 * 1024;

/** Xenstore's longest absolute path, in bytes (XENSTORE_ABS_PATH_MAX). */
export const XENSTORE_ABS_PATH_MAX = 3072;
/** Xenstore's longest relative path, in bytes (XENSTORE_REL_PATH_MAX). */
export const XENSTORE_REL_PATH_MAX = 2048;
