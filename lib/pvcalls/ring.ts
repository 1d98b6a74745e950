/**
 * Xen's standard shared ring (xen/include/public/io/ring.h) over one shared page, as PVCalls' commands
 * ring uses it: the frontend produces requests and consumes responses, the backend the reverse.
 * Four free-running u32 indexes head the page (req_prod, req_event, rsp_prod, rsp_event); slots of
 * SLOT_SIZE bytes start at 64. The event indexes say when the other side wants an event: a producer
 * notifies only when its new index passes the consumer's event index (RING_PUSH_*_AND_CHECK_NOTIFY),
 * and a consumer that runs dry sets its event index to one past what it has seen, then looks again
 * (RING_FINAL_CHECK_FOR_*), so an event is never lost and never sent when not needed.
 *
 * The page is shared with a domain we do not trust. Every index it gives is checked: a producer
 * index more than a ring ahead of what we consumed, or behind it, is corruption (RingCorruptError),
 * and slot contents are copied out before they are looked at.
 *
 * Indexes are read and written with Atomics, which orders them with the slot bytes around them as
 * the C macros' barriers do (x86 keeps stores in order; Atomics keeps V8 from reordering them).
 */
import { RING_SLOTS, SLOT_SIZE, SRING } from './wire';

/** The peer broke the ring protocol (an index out of range): the connection cannot go on. */
export class RingCorruptError extends Error {
  /** Always ERR_XEN_RING_CORRUPT. */
  readonly code = 'ERR_XEN_RING_CORRUPT';
  /** MESSAGE says which index was out of range, and by how much. */
  constructor(message: string) {
    super(message);
    this.name = 'RingCorruptError';
  }
}

const u32 = (n: number) => n >>> 0;

abstract class RingEnd {
  /** The page's four indexes (req_prod, req_event, rsp_prod, rsp_event). */
  protected readonly idx: Uint32Array;
  /** The whole shared page. */
  protected readonly bytes: Uint8Array;
  /** Slots in the ring (a power of two). */
  readonly size: number;

  /** PAGE: the shared page (at least 64 + SIZE * SLOT_SIZE bytes); SIZE: the slots (a power of two). */
  constructor(page: Uint8Array, size = RING_SLOTS) {
    if (size <= 0 || (size & (size - 1)) !== 0) throw new RangeError(`ring size ${size} is not a power of two`);
    if (page.byteLength < SRING.ring + size * SLOT_SIZE)
      throw new RangeError(`a ring of ${size} slots needs ${SRING.ring + size * SLOT_SIZE} bytes`);
    if (page.byteOffset % 4 !== 0) throw new RangeError('the ring page must be 4-byte aligned');
    this.bytes = page;
    this.idx = new Uint32Array(page.buffer, page.byteOffset, 4);
    this.size = size;
  }

  /** The index at byte offset FIELD (an SRING member), read atomically. */
  protected load(field: number): number {
    return Atomics.load(this.idx, field / 4);
  }

  /** Writes V (mod 2^32) to the index at FIELD, atomically. */
  protected store(field: number, v: number): void {
    Atomics.store(this.idx, field / 4, u32(v));
  }

  /** Slot I (a free-running index: taken mod size), a view of its SLOT_SIZE bytes. */
  protected slot(i: number): Uint8Array {
    const at = SRING.ring + (i & (this.size - 1)) * SLOT_SIZE;
    return this.bytes.subarray(at, at + SLOT_SIZE);
  }

  /** How many the peer has produced past CONS, checked: never more than a ring, never behind. */
  protected available(prodField: number, cons: number, what: string): number {
    const prod = this.load(prodField);
    const n = u32(prod - cons);
    if (n > this.size)
      throw new RingCorruptError(
        `the peer's ${what} index ${prod} is ${n} past ours (${cons}); a ring holds ${this.size}`,
      );
    return n;
  }
}

/** The frontend's end: requests out, responses in (ring.h's front ring). */
export class FrontRing extends RingEnd {
  #reqProdPvt: number;
  #rspCons: number;

  /** Attaches to a ring as it stands (FRONT_RING_ATTACH): init() starts a fresh one. */
  constructor(page: Uint8Array, size = RING_SLOTS) {
    super(page, size);
    this.#reqProdPvt = this.load(SRING.reqProd);
    this.#rspCons = this.load(SRING.rspProd);
  }

  /** Starts a fresh ring on PAGE (SHARED_RING_INIT: the event indexes at 1, the rest 0). */
  static init(page: Uint8Array, size = RING_SLOTS): FrontRing {
    page.fill(0, 0, SRING.ring + size * SLOT_SIZE);
    const r = new FrontRing(page, size);
    r.store(SRING.reqEvent, 1);
    r.store(SRING.rspEvent, 1);
    return r;
  }

  /** Requests that may be queued now: a ring's worth, less those whose responses are not consumed. */
  get free(): number {
    return this.size - u32(this.#reqProdPvt - this.#rspCons);
  }

  /** The next request slot to fill (RING_GET_REQUEST at req_prod_pvt); push() publishes it. */
  nextRequest(): Uint8Array {
    if (this.free === 0) throw new RangeError('the ring is full');
    const s = this.slot(this.#reqProdPvt);
    this.#reqProdPvt = u32(this.#reqProdPvt + 1);
    return s;
  }

  /** Publishes the filled requests; true when the backend asked for an event (notify it). */
  push(): boolean {
    const old = this.load(SRING.reqProd);
    const now = this.#reqProdPvt;
    this.store(SRING.reqProd, now);
    const ev = this.load(SRING.reqEvent);
    return u32(now - ev) < u32(now - old);
  }

  /**
   * Takes every response the backend has published, copied out of the ring, and re-arms the
   * event index when there are none left (so the next response brings an event).
   */
  takeResponses(): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (;;) {
      const n = this.available(SRING.rspProd, this.#rspCons, 'response producer');
      if (n > u32(this.#reqProdPvt - this.#rspCons))
        throw new RingCorruptError(
          `the backend published ${n} responses to ${u32(this.#reqProdPvt - this.#rspCons)} requests`,
        );
      for (let i = 0; i < n; i++) {
        out.push(this.slot(this.#rspCons).slice());
        this.#rspCons = u32(this.#rspCons + 1);
      }
      // RING_FINAL_CHECK_FOR_RESPONSES: ask for an event at the next one, then look once more.
      this.store(SRING.rspEvent, this.#rspCons + 1);
      if (this.available(SRING.rspProd, this.#rspCons, 'response producer') === 0) return out;
    }
  }
}

/** The backend's end: requests in, responses out (ring.h's back ring). */
export class BackRing extends RingEnd {
  #reqCons: number;
  #rspProdPvt: number;

  /**
   * Attaches to the ring the frontend initialised (BACK_RING_ATTACH at rsp_prod: every request
   * past the last response is new). A frontend that published requests before it connected does not
   * lose them.
   */
  constructor(page: Uint8Array, size = RING_SLOTS) {
    super(page, size);
    this.#rspProdPvt = this.load(SRING.rspProd);
    this.#reqCons = this.#rspProdPvt;
  }

  /**
   * Takes every request the frontend has published (at most what can still be answered), copied
   * out of the ring, and re-arms the event index when there are none left.
   */
  takeRequests(): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (;;) {
      const n = this.available(SRING.reqProd, this.#reqCons, 'request producer');
      // RING_REQUEST_CONS_OVERFLOW: never more requests outstanding than the ring has slots.
      const room = this.size - u32(this.#reqCons - this.#rspProdPvt);
      const take = Math.min(n, room);
      for (let i = 0; i < take; i++) {
        out.push(this.slot(this.#reqCons).slice());
        this.#reqCons = u32(this.#reqCons + 1);
      }
      if (take < n) return out; // the rest once responses have made room
      this.store(SRING.reqEvent, this.#reqCons + 1);
      if (this.available(SRING.reqProd, this.#reqCons, 'request producer') === 0) return out;
    }
  }

  /** Requests taken and not yet answered. */
  get outstanding(): number {
    return u32(this.#reqCons - this.#rspProdPvt);
  }

  /** The next response slot to fill; push() publishes it. */
  nextResponse(): Uint8Array {
    if (this.outstanding === 0) throw new RangeError('no request waits for a response');
    const s = this.slot(this.#rspProdPvt);
    this.#rspProdPvt = u32(this.#rspProdPvt + 1);
    return s;
  }

  /** Publishes the filled responses; true when the frontend asked for an event (notify it). */
  push(): boolean {
    const old = this.load(SRING.rspProd);
    const now = this.#rspProdPvt;
    this.store(SRING.rspProd, now);
    const ev = this.load(SRING.rspEvent);
    return u32(now - ev) < u32(now - old);
  }
}
