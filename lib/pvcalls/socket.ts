/** PvcallsSocket: a connected PVCalls socket, a Duplex over its data ring. */
import { constants } from 'node:os';
import { Duplex } from 'node:stream';

import type { PvcallsFrontend } from './frontend';
import { backendError } from './wire';

const E = constants.errno;
type DataRingOf = ReturnType<PvcallsFrontend['newDataRing']>;

/** A connected PVCalls socket: a Duplex over its data ring. */
export class PvcallsSocket extends Duplex {
  /** The socket's id on the commands ring (named by this frontend). */
  readonly id: bigint;
  /** @internal the backend knows the id (SOCKET succeeded): RELEASE it */
  created = false;
  readonly #fe: PvcallsFrontend;
  #d?: DataRingOf;
  #out: Buffer[] = [];
  #outCb: ((e?: Error | null) => void) | null = null;
  #finalCb: ((e?: Error | null) => void) | null = null;
  #reading = false;
  #releasedResolve!: () => void;
  /** @internal resolves once the backend has released the socket (or it never had it) */
  readonly released = new Promise<void>((r) => (this.#releasedResolve = r));

  /** @internal */
  constructor(fe: PvcallsFrontend, id: bigint) {
    // 'close' is emitted here, with hadError as net.Socket's.
    super({ allowHalfOpen: true, emitClose: false });
    this.#fe = fe;
    this.id = id;
    fe.sockets.add(this);
  }

  /** @internal */
  attach(d: DataRingOf): void {
    this.#d = d;
    this.#fe.onPort(d.port, () => this.#pump());
    this.#pump();
  }

  #pump(): void {
    const d = this.#d;
    if (!d || this.destroyed) return;
    try {
      let notify = false;
      while (this.#out.length && d.ring.writable > 0) {
        const b = this.#out[0];
        const n = d.ring.write(b);
        notify = notify || n > 0;
        if (n === b.length) this.#out.shift();
        else this.#out[0] = b.subarray(n);
      }
      if (d.ring.outError < 0) throw backendError(d.ring.outError, 'pvcalls.write');
      if (this.#out.length === 0 && this.#outCb) {
        const cb = this.#outCb;
        this.#outCb = null;
        cb();
      }
      if (this.#finalCb && d.ring.writable === d.ring.size) {
        const cb = this.#finalCb;
        this.#finalCb = null;
        cb();
      }
      while (this.#reading && d.ring.readable > 0) {
        const u = d.ring.read(); // a copy already: no second one
        const chunk = Buffer.from(u.buffer, u.byteOffset, u.byteLength);
        notify = true;
        if (!this.push(chunk)) this.#reading = false;
      }
      if (this.#reading && d.ring.readable === 0 && d.ring.inError < 0) {
        this.#reading = false;
        if (d.ring.inError === -E.ENOTCONN) this.push(null);
        else throw backendError(d.ring.inError, 'pvcalls.read');
      }
      if (notify) this.#fe.notify(d.port);
    } catch (e) {
      this.destroy(e as Error);
    }
  }

  /** @internal Node's stream hook. */
  override _read(): void {
    this.#reading = true;
    this.#pump();
  }

  /** @internal Node's stream hook. */
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.#out.push(chunk);
    this.#outCb = cb;
    if (this.#d) this.#pump();
    else this.once('connect', () => this.#pump());
  }

  /** @internal Node's stream hook. */
  override _final(cb: (e?: Error | null) => void): void {
    // No shutdown in version 1: done once the backend has taken every byte.
    this.#finalCb = cb;
    if (this.#d) this.#pump();
    else this.once('connect', () => this.#pump());
  }

  /** @internal Node's stream hook. */
  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    const d = this.#d;
    this.#d = undefined;
    const closed = () => process.nextTick(() => this.emit('close', err !== null && err !== undefined));
    if (!this.created) {
      this.#fe.sockets.delete(this);
      d?.unref();
      this.#releasedResolve();
      cb(err);
      closed();
      return;
    }
    // Kept among the frontend's sockets until released: its close() waits for that.
    const release = () =>
      void this.#fe.call({ cmd: 'RELEASE', id: this.id, reuse: 0 }).then(() => {
        this.#fe.sockets.delete(this);
        d?.unref(); // after the backend has unmapped it
        this.#releasedResolve();
      });
    // What was written is in the ring, as a closed TCP socket's unsent bytes are in its send buffer,
    // and reaches the peer as those do: the RELEASE waits until the backend has taken it (Linux's
    // pvcalls-back drops whatever a RELEASE finds in the ring). Not for a destroy with an error,
    // and not past RELEASE_WAIT_MS in which the backend takes nothing.
    if (d && !err) this.#afterDrain(d, release);
    else release();
    cb(err);
    closed();
  }

  /** Calls DONE once the backend has taken everything in D's out ring, or has stopped taking. */
  #afterDrain(d: DataRingOf, done: () => void): void {
    let last = -1;
    let timer: NodeJS.Timeout | undefined;
    const left = () => {
      try {
        return d.ring.outError < 0 ? 0 : d.ring.size - d.ring.writable;
      } catch {
        return 0; // unmapped or corrupt: nothing more to wait for
      }
    };
    const finish = () => {
      clearTimeout(timer);
      this.#fe.onPort(d.port, () => undefined);
      done();
    };
    // On the backend's events: done when it has taken all. On the timer: done when it took
    // nothing since the last tick.
    const onEvent = () => void (left() === 0 && finish());
    const tick = () => {
      const n = left();
      if (n === 0 || n === last) return finish();
      last = n;
      timer = setTimeout(tick, RELEASE_WAIT_MS);
    };
    this.#fe.onPort(d.port, onEvent);
    tick();
  }
}

/** How long a destroyed socket's RELEASE waits for the backend to take more of its out ring. */
const RELEASE_WAIT_MS = 1000;
