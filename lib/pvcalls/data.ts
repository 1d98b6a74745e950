/**
 * A PVCalls socket's data ring (struct pvcalls_data_intf and its data pages): two byte rings with
 * free-running u32 indexes on the indexes page. `in` (the first half of the data pages) carries
 * bytes from the backend to the frontend, `out` (the second half) the other way; each half is
 * 2^(ring_order + 11) bytes. in_error and out_error carry a negative Linux errno from the backend
 * (the remote end closed, a send failed) once it is set.
 *
 * As with the commands ring, the other side is not trusted: an index that claims more bytes than a
 * half holds is corruption (RingCorruptError), and bytes are copied out before they are used.
 */
import { RingCorruptError } from './ring';
import { DATA_INTF, MAX_RING_ORDER } from './wire';

const u32 = (n: number) => n >>> 0;

/** Which end of a data ring a process is: the frontend writes `out` and reads `in`, the backend the reverse. */
export type DataRingSide = 'front' | 'back';

/** One socket's data ring, as either end sees it: bytes in and out, with the peer's indexes checked. */
export class DataRing {
  readonly #idx: Int32Array;
  readonly #in: Uint8Array;
  readonly #out: Uint8Array;
  readonly #side: DataRingSide;
  /** Bytes in each half. */
  readonly size: number;

  /**
   * INDEXES: the indexes page; DATA: the data pages (2^ORDER of them, mapped or shared in order);
   * SIDE: which end this process is.
   */
  constructor(indexes: Uint8Array, data: Uint8Array, order: number, side: DataRingSide) {
    if (!Number.isInteger(order) || order < 0 || order > MAX_RING_ORDER)
      throw new RangeError(`ring order ${order} is not 0..${MAX_RING_ORDER}`);
    const total = 1 << (order + 12);
    if (data.byteLength < total) throw new RangeError(`a ring of order ${order} needs ${total} bytes of data pages`);
    if (indexes.byteLength < DATA_INTF.ref || indexes.byteOffset % 4 !== 0)
      throw new RangeError('the indexes page is too small or not 4-byte aligned');
    this.#idx = new Int32Array(indexes.buffer, indexes.byteOffset, DATA_INTF.ref / 4);
    this.size = total / 2;
    this.#in = data.subarray(0, this.size);
    this.#out = data.subarray(this.size, total);
    this.#side = side;
  }

  #load(field: number): number {
    return u32(Atomics.load(this.#idx, field / 4));
  }

  #store(field: number, v: number): void {
    Atomics.store(this.#idx, field / 4, v | 0);
  }

  /** The half this side reads, and its indexes. */
  #rx() {
    return this.#side === 'front'
      ? { ring: this.#in, prod: DATA_INTF.inProd, cons: DATA_INTF.inCons, name: 'in' }
      : { ring: this.#out, prod: DATA_INTF.outProd, cons: DATA_INTF.outCons, name: 'out' };
  }

  /** The half this side writes, and its indexes. */
  #tx() {
    return this.#side === 'front'
      ? { ring: this.#out, prod: DATA_INTF.outProd, cons: DATA_INTF.outCons, name: 'out' }
      : { ring: this.#in, prod: DATA_INTF.inProd, cons: DATA_INTF.inCons, name: 'in' };
  }

  #queued(prod: number, cons: number, name: string): number {
    const n = u32(prod - cons);
    if (n > this.size)
      throw new RingCorruptError(
        `the ${name} ring claims ${n} bytes queued (prod ${prod}, cons ${cons}); it holds ${this.size}`,
      );
    return n;
  }

  /** Bytes waiting to be read by this side. */
  get readable(): number {
    const r = this.#rx();
    return this.#queued(this.#load(r.prod), this.#load(r.cons), r.name);
  }

  /** Room for bytes this side may write. */
  get writable(): number {
    const t = this.#tx();
    return this.size - this.#queued(this.#load(t.prod), this.#load(t.cons), t.name);
  }

  /** Copies up to MAX waiting bytes out of the ring and frees their room (advances cons). */
  read(max = Infinity): Buffer {
    const r = this.#rx();
    const cons = this.#load(r.cons);
    const n = Math.min(max, this.#queued(this.#load(r.prod), cons, r.name));
    const out = Buffer.allocUnsafe(n); // every byte written below
    const at = cons & (this.size - 1);
    const first = Math.min(n, this.size - at);
    out.set(r.ring.subarray(at, at + first), 0);
    if (first < n) out.set(r.ring.subarray(0, n - first), first);
    this.#store(r.cons, cons + n);
    return out;
  }

  /** Copies as much of SRC as fits into the ring and publishes it (advances prod); returns how much. */
  write(src: Uint8Array): number {
    const t = this.#tx();
    const prod = this.#load(t.prod);
    const n = Math.min(src.byteLength, this.size - this.#queued(prod, this.#load(t.cons), t.name));
    const at = prod & (this.size - 1);
    const first = Math.min(n, this.size - at);
    t.ring.set(src.subarray(0, first), at);
    if (first < n) t.ring.set(src.subarray(first, n), 0);
    this.#store(t.prod, prod + n);
    return n;
  }

  /** in_error: 0, or the negative errno the backend reports for the frontend's reads. */
  get inError(): number {
    return Atomics.load(this.#idx, DATA_INTF.inError / 4);
  }

  /** Sets in_error (the backend does, to report the end of the frontend's reads). */
  set inError(e: number) {
    Atomics.store(this.#idx, DATA_INTF.inError / 4, e);
  }

  /** out_error: 0, or the negative errno the backend reports for the frontend's writes. */
  get outError(): number {
    return Atomics.load(this.#idx, DATA_INTF.outError / 4);
  }

  /** Sets out_error (the backend does, to report a failed send). */
  set outError(e: number) {
    Atomics.store(this.#idx, DATA_INTF.outError / 4, e);
  }
}
