/**
 * Grant tables: sharing this domain's pages with another domain, and mapping pages another
 * domain shared with this one. Pages are zero-copy ArrayBuffers; releasing a region detaches
 * its ArrayBuffer first, so no view can touch memory that is gone.
 */
import { checkBoolean, checkDomid, checkInt, checkObject, coded, invalidArgType, outOfRange } from './errors';
import { asDomain, Backend, Binding, binding, type GrantHandle } from './native';

/** The size of one grant page, bytes (Xen's, on x86 and arm64). */
export const PAGE_SIZE = 4096;

/** Clear a byte and/or signal a port when the region goes away, even if the process dies. */
export interface UnmapNotify {
  /** Offset (within the first page) of a byte set to 0. */
  offset: number;
  /** Local event channel port to notify. */
  port: number;
}

/** How a grant device handle is opened. */
export interface GrantOptions {
  /** 'real' (Xen's libxengnttab) or 'mock'; default: the process's backend (see useBackend). */
  backend?: Backend;
  /** Mock only: open the handle as this domain. */
  mockDomid?: number;
}

interface RegionOwner {
  release(buffer: ArrayBuffer): void;
}

/** Pages shared with, or mapped from, another domain. */
abstract class Region {
  readonly #owner: RegionOwner;
  #buffer: ArrayBuffer | null;
  /** The domain at the other end. */
  readonly domid: number;

  protected constructor(owner: RegionOwner, buffer: ArrayBuffer, domid: number) {
    this.#owner = owner;
    this.#buffer = buffer;
    this.domid = domid;
  }

  /** The pages themselves, zero-copy. Detached (byteLength 0) once released. */
  get buffer(): ArrayBuffer {
    if (!this.#buffer) {
      throw coded('The grant region was released', 'ERR_XEN_RELEASED');
    }
    return this.#buffer;
  }

  /** Whether the pages have been released (unshared or unmapped). */
  get released(): boolean {
    return this.#buffer === null;
  }

  /** The pages' size in bytes (0 once released). */
  get byteLength(): number {
    return this.#buffer ? this.#buffer.byteLength : 0;
  }

  /** A copy of LENGTH bytes from OFFSET (for code that must not hold views on shared memory). */
  read(offset = 0, length = this.byteLength - offset): Buffer {
    this.#bounds(offset, length);
    return Buffer.from(new Uint8Array(this.buffer, offset, length));
  }

  /** Copies DATA in at OFFSET. */
  write(data: Uint8Array, offset = 0): void {
    if (!(data instanceof Uint8Array)) throw invalidArgType('data', 'an instance of Buffer or Uint8Array', data);
    this.#bounds(offset, data.byteLength);
    new Uint8Array(this.buffer, offset, data.byteLength).set(data);
  }

  #bounds(offset: number, length: number): void {
    checkInt('offset', offset, 0, this.byteLength);
    checkInt('length', length, 0, this.byteLength - offset);
  }

  /** @internal Gives the pages back and detaches the buffer. */
  protected releaseRegion(): void {
    if (!this.#buffer) return;
    const b = this.#buffer;
    this.#buffer = null;
    this.#owner.release(b);
  }
}

/** Pages of this domain shared with another: hand `refs` to the peer (through xenstore, say). */
export class SharedPages extends Region {
  /** Grant references, one per page. */
  readonly refs: readonly number[];
  /** @internal */
  constructor(owner: RegionOwner, buffer: ArrayBuffer, domid: number, refs: number[]) {
    super(owner, buffer, domid);
    this.refs = Object.freeze(refs);
  }
  /** Ends the sharing (the peer's existing mapping stays valid until it unmaps). Idempotent. */
  unshare(): void {
    this.releaseRegion();
  }
  /** `using shared = sharer.share(...)`: unshares the pages. */
  [Symbol.dispose](): void {
    this.unshare();
  }
}

/** Another domain's pages mapped into this process. */
export class MappedPages extends Region {
  /** @internal */
  constructor(owner: RegionOwner, buffer: ArrayBuffer, domid: number) {
    super(owner, buffer, domid);
  }
  /** Unmaps the pages. Idempotent. */
  unmap(): void {
    this.releaseRegion();
  }
  /** `using mapped = mapper.map(...)`: unmaps the pages. */
  [Symbol.dispose](): void {
    this.unmap();
  }
}

function checkNotify(v: unknown): UnmapNotify | undefined {
  if (v === undefined) return undefined;
  const n = checkObject('options.notify', v);
  return {
    offset: checkInt('options.notify.offset', n.offset, 0, PAGE_SIZE - 1),
    port: checkInt('options.notify.port', n.port, 1, 0x1ffff),
  };
}

abstract class GrantDevice implements RegionOwner {
  /** @internal */
  /** @internal */
  protected readonly b: Binding;
  /** @internal */
  protected h: GrantHandle | null;
  constructor(options: GrantOptions, open: (b: Binding) => GrantHandle) {
    const o = checkObject('options', options);
    this.b = binding(o.backend as Backend | undefined);
    const dom = o.mockDomid === undefined ? undefined : checkDomid('options.mockDomid', o.mockDomid);
    this.h = asDomain(this.b, dom, () => open(this.b));
  }
  /** @internal */
  protected handle(): GrantHandle {
    if (!this.h) {
      throw coded('The grant handle is closed', 'ERR_XEN_CLOSED');
    }
    return this.h;
  }
  /** @internal */
  release(buffer: ArrayBuffer): void {
    this.b.grants.release((this.h ?? this.hClosed)!, buffer);
  }
  private hClosed: GrantHandle | null = null;
  /** Closes the device handle; regions already made stay usable until released. Idempotent. */
  close(): void {
    if (!this.h) return;
    this.hClosed = this.h;
    this.h = null;
    this.b.grants.close(this.hClosed);
  }
  /** `using`: closes the handle, as close() does. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** Shares pages of this domain (/dev/xen/gntalloc). */
export class GrantSharer extends GrantDevice {
  constructor(options: GrantOptions = {}) {
    super(options, (b) => b.grants.openSharer());
  }

  /**
   * Allocates PAGES zeroed pages and grants DOMID access to them.
   * @param options.writable whether the peer may write (default true)
   * @param options.notify clear a byte / signal a port when the sharing ends, even by process death
   */
  share(domid: number, pages: number, options: { writable?: boolean; notify?: UnmapNotify } = {}): SharedPages {
    checkDomid('domid', domid);
    checkInt('pages', pages, 1, 1 << 20);
    const o = checkObject('options', options);
    const writable = checkBoolean('options.writable', o.writable, true);
    const notify = checkNotify(o.notify);
    if (notify && pages !== 1) throw outOfRange('pages', '1 when options.notify is given', pages);
    const r = this.b.grants.share(this.handle(), domid, pages, writable, notify?.offset, notify?.port) as {
      refs: number[];
      buffer: ArrayBuffer;
    };
    return new SharedPages(this, r.buffer, domid, r.refs);
  }
}

/** One segment of a grant copy: each side is local bytes or another domain's grant. */
export interface CopySegment {
  /** Where the bytes come from: local memory, or a page DOMID granted (REF), from OFFSET (default 0). */
  source: Uint8Array | GrantedBytes;
  /** Where they go: local memory, or a page DOMID granted (REF), from OFFSET (default 0). */
  dest: Uint8Array | GrantedBytes;
  /** Bytes to copy; the segment stays within one page. */
  length: number;
}

/** Bytes in a page another domain granted: its DOMID, the grant's REF, OFFSET into the page. */
export interface GrantedBytes {
  /** The granting domain. */
  domid: number;
  /** The grant reference. */
  ref: number;
  /** Bytes into the page (default 0). */
  offset?: number;
}

function copySide(name: string, v: unknown, length: number): CopySegment['source'] {
  if (v instanceof Uint8Array) {
    if (v.byteLength < length)
      throw outOfRange(`${name}.byteLength`, `>= the segment's length (${length})`, v.byteLength);
    return v;
  }
  const o = checkObject(name, v);
  const domid = checkDomid(`${name}.domid`, o.domid);
  const ref = checkInt(`${name}.ref`, o.ref, 0, 0xffffffff);
  const offset = o.offset === undefined ? 0 : checkInt(`${name}.offset`, o.offset, 0, PAGE_SIZE - length);
  return { domid, ref, offset };
}

/** Grant status codes returned per copy segment (0 is success). */
export const GrantStatus = Object.freeze({
  /** The segment was copied. */
  okay: 0,
  /** Xen failed it for a reason it does not name (GNTST_general_error). */
  generalError: -1,
  /** No such domain (GNTST_bad_domain). */
  badDomain: -2,
  /** No such grant, or not granted to us (GNTST_bad_gntref). */
  badGntref: -3,
  /** A bad handle (GNTST_bad_handle). */
  badHandle: -4,
  /** A bad address (GNTST_bad_virt_addr). */
  badVirtAddr: -5,
  /** A bad device address (GNTST_bad_dev_addr). */
  badDevAddr: -6,
  /** No room in the I/O MMU (GNTST_no_device_space). */
  noDeviceSpace: -7,
  /** The grant is read-only, or not ours to use (GNTST_permission_denied). */
  permissionDenied: -8,
  /** The page cannot be used for this (GNTST_bad_page). */
  badPage: -9,
  /** An offset or length outside the page (GNTST_bad_copy_arg). */
  badCopyArg: -10,
  /** The page's address is too large (GNTST_address_too_big). */
  addressTooBig: -11,
  /** Not done now; try again (GNTST_eagain: the page is being paged in, say). */
  eagain: -12,
  /** Xen is out of space for it (GNTST_no_space). */
  noSpace: -13,
});

/** One of the statuses Xen gives a grant operation (see GrantStatus). */
export type GrantStatusCode = (typeof GrantStatus)[keyof typeof GrantStatus];

/** Maps pages other domains shared with this one (/dev/xen/gntdev). */
export class GrantMapper extends GrantDevice {
  constructor(options: GrantOptions = {}) {
    super(options, (b) => b.grants.openMapper());
  }

  /**
   * Maps the pages REFS of DOMID, contiguously.
   * @param options.writable map read-write (default true; the grant must allow it)
   * @param options.notify clear a byte / signal a port when unmapped, even by process death
   */
  map(domid: number, refs: readonly number[], options: { writable?: boolean; notify?: UnmapNotify } = {}): MappedPages {
    checkDomid('domid', domid);
    if (!Array.isArray(refs)) throw invalidArgType('refs', 'an array of grant references', refs);
    if (refs.length === 0 || refs.length > 1 << 20) throw outOfRange('refs.length', '>= 1 and <= 1048576', refs.length);
    refs.forEach((r, i) => checkInt(`refs[${i}]`, r, 0, 0xffffffff));
    const o = checkObject('options', options);
    const writable = checkBoolean('options.writable', o.writable, true);
    const notify = checkNotify(o.notify);
    if (notify && refs.length !== 1) throw outOfRange('refs.length', '1 when options.notify is given', refs.length);
    const buf = this.b.grants.map(
      this.handle(),
      domid,
      [...refs],
      writable,
      notify?.offset,
      notify?.port,
    ) as ArrayBuffer;
    return new MappedPages(this, buf, domid);
  }

  /** Copies between local buffers and grants without mapping; returns a status per segment. */
  copy(segments: readonly CopySegment[]): GrantStatusCode[] {
    if (!Array.isArray(segments)) throw invalidArgType('segments', 'an array', segments);
    // Every property is read once, here, into plain values (a getter runs now or never); the
    // addon then checks the handle and the buffers again after the last of them ran.
    const plain = segments.map((seg, i): CopySegment => {
      const o = checkObject(`segments[${i}]`, seg);
      const length = checkInt(`segments[${i}].length`, o.length, 0, PAGE_SIZE);
      return {
        source: copySide(`segments[${i}].source`, o.source, length),
        dest: copySide(`segments[${i}].dest`, o.dest, length),
        length,
      };
    });
    // The addon hands Xen's per-segment status through as it came: one of GrantStatus's codes.
    return this.b.grants.copy(this.handle(), plain) as GrantStatusCode[];
  }
}
