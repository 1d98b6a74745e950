/** VchanStream: one end of a vchan as a Node Duplex stream. */
import { Duplex } from 'node:stream';
import { debuglog } from 'node:util';

import { checkInt, coded, invalidArgType, systemError } from '../errors';
import { onDomainGone } from '../domains';
import { LiveState } from '../constants';
import { type Binding, unpackArm, type VchanHandle } from '../native';
import { advance, gather, pool, poolRoom, poolTake, type PendingWrite, unshare } from './buffers';
import { IdleTimer } from './idle';
import { readOnread, type VchanOnread } from './onread';
import type { VchanInfo, VchanRingState, VchanStreamOptions } from './options';

/** NODE_DEBUG=xen-vchan: what servers offer, who connects, how streams end. */
const debug = debuglog('xen-vchan');

/** @internal Only lib/vchan makes streams: a VchanStream wraps a native handle it was given. */
export const kInternal = Symbol('xen-vchan internal');

/** @internal A stream option: the channel is static (no xenstore anywhere near it). */
export const kStatic = Symbol('xen-vchan: a static channel');

/**
 * One end of a vchan. Created by a VchanServer ('connection') or by connect().
 *
 * vchan has no half-close: end() writes out what is queued, then closes the whole channel; the
 * peer can still read what was written. The readable side ends when the peer closes or dies,
 * after the data it wrote.
 */
export class VchanStream extends Duplex {
  readonly #b: Binding;
  #h: VchanHandle | null;
  readonly #info: VchanInfo;
  #wantRead = false;
  /**
   * The ring was found empty and the peer asked to notify us when it writes, and no event has come
   * since: a read now would find nothing. Readable calls _read again after each push (on the next
   * tick); this spares that call its two native calls, once per wake-up.
   */
  #sleeping = false;
  #readEnded = false;
  #pending: PendingWrite | null = null;
  /** A write that failed because the peer closed, failing once the readable side has ended. */
  #deferredFail: (() => void) | null = null;
  readonly #domid: number;
  readonly #path: string;
  readonly #onread: VchanOnread | null;
  #unwatchDomain: (() => void) | null = null;
  #bytesRead = 0;
  #bytesWritten = 0;
  readonly #open = (): boolean => this.#h !== null;
  readonly #idle = new IdleTimer(() => this.emit('timeout'), this.#open);
  /** N bytes were taken from the ring (before the consumer sees them). */
  readonly #counted = (n: number): void => {
    this.#idle.active();
    this.#bytesRead += n;
  };

  /** @internal Streams come from createServer() ('connection') and connect(). */
  constructor(
    token: typeof kInternal,
    b: Binding,
    handle: VchanHandle,
    domid: number,
    path: string,
    options: VchanStreamOptions & { [kStatic]?: boolean } = {},
  ) {
    const illegal = 'Illegal constructor: a VchanStream comes from createServer() or connect()';
    if (token !== kInternal) throw coded(illegal, 'ERR_ILLEGAL_CONSTRUCTOR', TypeError);
    // 'close' is emitted by _destroy, with hadError as net.Socket's.
    super({ ...options, allowHalfOpen: false, decodeStrings: true, emitClose: false, autoDestroy: true });
    this.#b = b;
    this.#h = handle;
    this.#domid = domid;
    this.#path = path;
    this.#info = b.vchan.info(handle) as VchanInfo;
    this.#onread = options.onread ?? null;
    // With onread, reading starts at once (as net.Socket's does) and only pause() stops it.
    if (this.#onread) this.#wantRead = true;
    if (b.vchan.poll(handle, () => this.#onWake())) process.nextTick(() => this.#onWake());
    // Dom0 is never destroyed; any other peer domain may be, and would say nothing. A static
    // channel's system may have no xenstore to say it either.
    if (domid !== 0 && !options[kStatic]) {
      const mockDomid = (options as { mockDomid?: number }).mockDomid;
      this.#unwatchDomain = onDomainGone(b, mockDomid, domid, () => this.#onPeerDomainGone());
    }
  }

  /** The peer's domain was destroyed. If it had closed the channel first, this is the usual end. */
  #onPeerDomainGone(): void {
    this.#unwatchDomain = null;
    if (!this.#h) return;
    try {
      const { live } = unpackArm(this.#b.vchan.arm(this.#h, this.#pending !== null));
      if (live !== LiveState.Open) return this.#onWake(); // #onWake throws nothing
    } catch (e) {
      return void this.destroy(e as Error);
    }
    this.destroy(systemError('ECONNRESET', 'libxenvchan', `domain ${this.#domid} (the peer) was destroyed`));
  }

  /** The domain at the other end. */
  get remoteDomid(): number {
    return this.#domid;
  }

  /** The xenstore path of the channel. */
  get path(): string {
    return this.#path;
  }

  /** Ring sizes in bytes and the event channel port. */
  get info(): VchanInfo {
    return { ...this.#info };
  }

  /**
   * The ring as it is now, for diagnostics: bytes waiting to be read, space to write, and the
   * notifications each side has asked for (1: "tell me when you write", 2: "when you read"),
   * whether the stream wants to read and how many bytes of a write wait for ring space, and this
   * end's event-channel port. Does not change anything. Undefined once closed.
   */
  ringState(): VchanRingState | undefined {
    if (!this.#h) return undefined;
    const r = this.#b.vchan.peek(this.#h);
    const p = this.#pending;
    const writeWaiting = p ? p.chunks.reduce((n, c) => n + c.byteLength, 0) - p.offset : 0;
    const { readable, writable, peerAsked, eventPending, polling, wakeups, events } = r;
    const ours = { open: r.live, weAsked: r.oursAsked, wantRead: this.#wantRead, writeWaiting, port: this.#info.port };
    return { ...ours, readable, writable, peerAsked, eventPending, polling, wakeups, events };
  }

  /**
   * As net.Socket's: emit 'timeout' once the stream has been idle (nothing read or written) for
   * MS milliseconds; 0 turns it off. The stream stays open: end or destroy it in the listener.
   * This is how a user notices a peer that vanished without a word (a process of an ocaml-vchan
   * peer, which asks for no unmap notification, or one whose domain keeps another process alive):
   * vchan itself cannot tell such a peer from a quiet one.
   */
  setTimeout(ms: number, cb?: () => void): this {
    checkInt('msecs', ms, 0, 2 ** 31 - 1);
    if (cb !== undefined && typeof cb !== 'function') throw invalidArgType('callback', 'of type function', cb);
    if (cb) {
      if (ms === 0) this.removeListener('timeout', cb);
      else this.once('timeout', cb);
    }
    this.#idle.set(ms);
    return this;
  }

  /** Bytes taken from the ring so far, as net.Socket's bytesRead. */
  get bytesRead(): number {
    return this.#bytesRead;
  }

  /** Bytes put into the ring so far (not counting what still waits for room), as net.Socket's bytesWritten. */
  get bytesWritten(): number {
    return this.#bytesWritten;
  }

  /** The idle timeout set with setTimeout(), or undefined. */
  get timeout(): number | undefined {
    return this.#idle.ms || undefined;
  }

  /** Let the process exit while this stream is open. */
  unref(): this {
    if (this.#h) this.#b.vchan.ref(this.#h, false);
    return this;
  }

  /** Keep the process alive while this stream is open (the default). */
  ref(): this {
    if (this.#h) this.#b.vchan.ref(this.#h, true);
    return this;
  }

  override pause(): this {
    if (this.#onread) this.#wantRead = false;
    return super.pause();
  }

  override resume(): this {
    super.resume();
    if (this.#onread && !this.#wantRead && !this.#readEnded) {
      this.#wantRead = true;
      process.nextTick(() => this.#onWake());
    }
    return this;
  }

  /** @internal Node's stream hook. */
  override _read(): void {
    this.#wantRead = true;
    if (this.#sleeping) return; // the peer's next write wakes us (#onWake)
    try {
      this.#drainReadable(false);
    } catch (e) {
      this.destroy(e as Error);
    }
  }

  /** @internal Node's stream hook. */
  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    const p: PendingWrite = { chunks: gather(chunks), offset: 0, cb };
    this.#pending = p;
    this.#pumpWriteSafe(true);
    if (this.#pending === p) unshare(p); // the gathered buffer is lent for this call alone
  }

  /** @internal Node's stream hook. */
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#pending = { chunks: [chunk], offset: 0, cb };
    this.#pumpWriteSafe(true);
  }

  /** A write never throws out of write(): a failure (EPROTO from a corrupt ring, EPIPE) goes to the
   * write's callback, and so to 'error', as Writable does with any failed write. */
  #pumpWriteSafe(fromWrite = false): void {
    try {
      this.#pumpWrite(fromWrite);
    } catch (e) {
      const p = this.#pending;
      this.#pending = null;
      if (p) this.#failWrite(p, e as Error);
      else this.destroy(e as Error);
    }
  }

  /**
   * Fails write P with ERR. When the peer is gone (EPIPE), what it wrote before it closed is still
   * in the ring, and failing the write now would destroy the stream and lose it: the failure waits
   * until the readable side has ended (everything read), or the stream is destroyed.
   */
  #failWrite(p: PendingWrite, err: Error): void {
    if ((err as NodeJS.ErrnoException).code !== 'EPIPE' || this.readableEnded) return p.cb(err);
    this.#deferredFail = () => p.cb(err);
    this.once('end', () => this.#failDeferred());
  }

  /** @internal Node's stream hook. */
  override _final(cb: (err?: Error | null) => void): void {
    // Everything queued is in the ring now (Node calls _final after the last write callback).
    // Hand over what we can still read, then close: the peer keeps the data we wrote.
    try {
      this.#drainReadable(true);
    } catch {
      // closing anyway
    }
    this.#close();
    this.#endReadable();
    cb();
  }

  /** @internal Node's stream hook. */
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    debug(
      'stream %s: closed (%d bytes read, %d written)%s',
      this.path,
      this.#bytesRead,
      this.#bytesWritten,
      err ? `: ${err.message}` : '',
    );
    const p = this.#pending;
    this.#pending = null;
    this.#deferredFail = null;
    this.#close();
    if (p) p.cb(err ?? coded('The stream was destroyed', 'ERR_STREAM_DESTROYED'));
    cb(err);
    process.nextTick(() => this.emit('close', err !== null && err !== undefined));
  }

  /** The readable side is over. Like net.Socket at EOF, read(0) lets 'end' (and so 'close')
   * come even when nobody consumes the stream, once nothing is buffered. */
  #endReadable(): void {
    if (this.#readEnded) return;
    this.#readEnded = true;
    this.push(null);
    process.nextTick(() => this.read(0));
  }

  #close(): void {
    this.#idle.stop();
    if (this.#unwatchDomain) {
      this.#unwatchDomain();
      this.#unwatchDomain = null;
    }
    if (!this.#h) return;
    const h = this.#h;
    this.#h = null;
    this.#b.vchan.close(h);
  }

  #onWake(): void {
    if (!this.#h) return;
    this.#sleeping = false;
    try {
      // A write failure goes to that write (and an EPIPE waits for the readable side to end).
      this.#pumpWriteSafe();
      this.#drainReadable(false);
      if (this.#h && !this.#readEnded && !this.#wantRead && !this.#pending) this.#checkPeerGone();
    } catch (e) {
      this.destroy(e as Error);
    }
  }

  /** A paused stream still learns that the peer went: once its data is read, the stream ends. */
  #checkPeerGone(): void {
    const { live, readable } = unpackArm(this.#b.vchan.arm(this.#h!, false));
    if (live === LiveState.Closed && readable === 0) this.#endReadable();
  }

  /** Reads as long as the consumer wants data (or, with FORCE, everything available). */
  #drainReadable(force: boolean): void {
    const onread = this.#onread;
    while (this.#h && (this.#wantRead || force) && !this.#readEnded) {
      if (onread) {
        const n = readOnread(this.#b, this.#h, onread, this.#info.readSize, this, this.#counted, this.#open);
        if (n <= 0 && this.#readNothing(n)) return;
        continue;
      }
      const room = Math.min(poolRoom(), this.#info.readSize);
      const n: number = this.#b.vchan.read(this.#h, pool.buf, pool.off, room);
      if (n > 0) {
        this.#counted(n);
        this.#wantRead = this.push(poolTake(n));
        continue;
      }
      if (this.#readNothing(n)) return;
    }
  }

  /** After a read that returned N <= 0: true when reading stops for now, false to read again. */
  #readNothing(n: number): boolean {
    if (n < 0) {
      // The peer is gone and the ring is empty.
      this.#endReadable();
      return true;
    }
    // Nothing now: ask the peer to notify us when it writes (and when it reads only if a write
    // of ours waits for room), then look once more.
    const { live, readable } = unpackArm(this.#b.vchan.arm(this.#h!, this.#pending !== null));
    if (readable > 0) return false;
    if (live === LiveState.Closed) this.#endReadable();
    else this.#sleeping = true;
    return true;
  }

  /**
   * Writes what the ring takes of the pending chunks; completes the write once all are in. A write
   * that went in whole at once (FROMWRITE: called from write() itself) completes on the next tick:
   * its bytes are in the ring already, so a lone write is not delayed, but the writes made in the
   * rest of this tick wait in Writable's buffer and then come in one _writev, one native call and at
   * most one event for all of them, rather than one each.
   */
  #pumpWrite(fromWrite = false): void {
    const p = this.#pending;
    if (!p || !this.#h) return;
    const n: number = this.#b.vchan.writev(this.#h, p.chunks, p.offset);
    if (n > 0) {
      this.#idle.active();
      this.#bytesWritten += n;
    }
    if (advance(p, n)) {
      this.#pending = null;
      if (fromWrite) process.nextTick(p.cb);
      else p.cb();
      return;
    }
    // Ring full: ask the peer to notify us when it reads, then look once more.
    const { live, writable } = unpackArm(this.#b.vchan.arm(this.#h!, true));
    if (live !== LiveState.Open) {
      this.#pending = null;
      this.#failWrite(p, systemError('EPIPE', 'libxenvchan_write', 'the peer has closed the channel'));
      return;
    }
    if (writable > 0) this.#pumpWrite();
  }

  #failDeferred(): void {
    const f = this.#deferredFail;
    this.#deferredFail = null;
    f?.();
  }

  /** Destroys the stream (without the orderly end()). */
  [Symbol.dispose](): void {
    this.destroy();
  }

  /** `await using stream = await connect(...)`: ends the stream and waits until it has closed. */
  override async [Symbol.asyncDispose](): Promise<void> {
    if (this.closed) return;
    await new Promise<void>((resolve) => {
      this.once('close', () => resolve());
      if (this.writableEnded) this.destroy();
      else this.end();
    });
  }
}
