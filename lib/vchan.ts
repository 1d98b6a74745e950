/**
 * vchan: a byte stream between two domains over shared rings, as a Node Duplex stream, with a
 * server and a client that feel like `net`.
 *
 * Reads and writes never block and never spin: when a ring is empty (or full) the stream asks
 * the peer to notify it and sleeps until the event channel fires. A peer that closes, or whose
 * process dies, ends the stream (its data first); a peer DOMAIN that is destroyed (it sends
 * nothing: see domains.ts) fails it with ECONNRESET; corrupt ring indices fail it with EPROTO.
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createServer as createNetServer } from 'node:net';
import { Duplex, DuplexOptions } from 'node:stream';
import { debuglog } from 'node:util';

import {
  abortError,
  checkDomid,
  checkInt,
  checkObject,
  checkPort,
  checkXsPath,
  coded,
  invalidArgType,
  outOfRange,
  systemError,
} from './errors';
import { onDomainGone } from './domains';
import { holdStaticPort } from './evtchn';
import { connectStatic } from './static';
import { DEFAULT_RING_SIZE, LiveState, MAX_RING_SIZE, XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX } from './constants';
import { asDomain, Backend, Binding, binding, unpackArm, type VchanHandle } from './native';
import { leaseShared, type SharedLease } from './lease';
import { Xenstore, type XenstoreWatch } from './xenstore';

/** NODE_DEBUG=xen-vchan: what servers offer, who connects, how streams end. */
const debug = debuglog('xen-vchan');

/*
 * Reads land in a pool shared by every stream of the process: a chunk handed to the consumer is a
 * view of it, never copied again; an idle stream holds no buffer at all. A pool is replaced when
 * less than MIN_READ is left in it (the old one lives on while chunks of it do).
 */
const POOL_SIZE = 256 * 1024;
const MIN_READ = 16 * 1024;
let pool: Buffer | null = null;
let poolOff = 0;

function poolRoom(): number {
  if (!pool || pool.length - poolOff < MIN_READ) {
    pool = Buffer.allocUnsafeSlow(POOL_SIZE);
    poolOff = 0;
  }
  return pool.length - poolOff;
}

/**
 * Like net.Socket's `onread`: incoming data is handed to a callback instead of being pushed as
 * 'data' events (no allocation per chunk, no pool memory held by the consumer). The stream still
 * emits 'end', 'error' and 'close'; pause() and resume() still work.
 *
 * Two ways: with `buffer`, each chunk is copied into that one reusable buffer (as net's); with
 * `view: true`, nothing is copied at all: the callback gets a Buffer over the ring's own shared
 * pages, valid only while the callback runs. When it returns (or throws), the view is detached (its
 * length becomes 0: it can never read memory the peer has been given back, or a ring already
 * unmapped) and its bytes are handed back to the peer. Data that wraps round the ring's end comes
 * as two calls. Copy (`Buffer.from(view)`) whatever outlives the call, including a chunk passed to
 * another stream's write(), which may keep it queued. The bytes sit in memory the peer can write
 * meanwhile: a consumer that must not trust the peer copies what it validates before using it.
 */
export type VchanOnread = VchanOnreadBuffer | VchanOnreadView;

export interface VchanOnreadBuffer {
  /** Copies into `buffer` (the default). */
  view?: false;
  /** The buffer to read into, or a function returning it (called before every read). */
  buffer: Uint8Array | (() => Uint8Array);
  /** Called for each chunk with its length and the buffer holding it at offset 0. Return false to pause(). */
  callback: (nread: number, buffer: Uint8Array) => boolean | void;
}

export interface VchanOnreadView {
  /** Zero copy: the callback reads the ring's own pages (see {@link VchanOnread}). */
  view: true;
  /**
   * Called for each chunk with its length and a view of exactly those bytes (a Buffer; typed as in
   * the copying form, so one callback type serves both). Return false to pause().
   */
  callback: (nread: number, view: Uint8Array) => boolean | void;
}

export interface VchanStreamOptions extends Pick<
  DuplexOptions,
  'highWaterMark' | 'readableHighWaterMark' | 'writableHighWaterMark'
> {
  /** Read into a reusable buffer instead of emitting 'data' (see VchanOnread). */
  onread?: VchanOnread;
}

function checkOnread(v: unknown): VchanOnread | undefined {
  if (v === undefined) return undefined;
  const o = checkObject('options.onread', v);
  if (o.view !== undefined && o.view !== false) {
    if (o.view !== true) throw invalidArgType('options.onread.view', 'of type boolean', o.view);
    if (o.buffer !== undefined)
      throw coded('options.onread takes either buffer or view, not both', 'ERR_INVALID_ARG_VALUE', TypeError);
    if (typeof o.callback !== 'function')
      throw invalidArgType('options.onread.callback', 'of type function', o.callback);
    return { view: true, callback: o.callback as VchanOnreadView['callback'] };
  }
  const buf = o.buffer;
  if (!(buf instanceof Uint8Array) && typeof buf !== 'function')
    throw invalidArgType('options.onread.buffer', 'an instance of Buffer, Uint8Array or a function', buf);
  if (buf instanceof Uint8Array && buf.byteLength === 0)
    throw outOfRange('options.onread.buffer', 'a non-empty buffer', 'an empty one');
  if (typeof o.callback !== 'function') throw invalidArgType('options.onread.callback', 'of type function', o.callback);
  return { buffer: buf as VchanOnreadBuffer['buffer'], callback: o.callback as VchanOnreadBuffer['callback'] };
}

/** Ring sizes and the event channel port of an open stream. */
export interface VchanInfo {
  readSize: number;
  writeSize: number;
  port: number;
  server: boolean;
}

/**
 * connect()'s option for a channel offered to this client alone (connectMulti's): a channel that
 * another client has taken fails at once with EBUSY instead of waiting for a next offer.
 *
 * @internal
 */
export const kOnlyOffer = Symbol('xen-vchan: the offer is ours alone');

/**
 * How long connect() watches an entry it could not attach to before it calls the entry dead (ms):
 * a live server between two offers changes it well within this.
 */
const ENTRY_STILL_MS = 1000;

/** Only this module makes streams: a VchanStream wraps a native handle it was given. */
const kInternal = Symbol('xen-vchan internal');

/** A stream option: the channel is static (no xenstore anywhere near it). */
const kStatic = Symbol('xen-vchan: a static channel');

/**
 * Writable's queue as the chunks for one native writev. Small chunks are copied into one buffer
 * first: handing the addon an array costs about 150 ns per element (reading and checking each
 * chunk through N-API), copying a 64-byte chunk in JavaScript about 10, so a burst of small
 * writes is cheaper as one chunk. Large chunks go as they are (the copy would cost more).
 */
const GATHER_BELOW = 1024; // average chunk size, bytes
function gather(queue: { chunk: Buffer }[]): Uint8Array[] {
  const count = queue.length;
  let total = 0;
  for (let i = 0; i < count; i++) total += queue[i].chunk.byteLength;
  if (count < 4 || total >= GATHER_BELOW * count) return queue.map((c) => c.chunk);
  const buf = Buffer.allocUnsafe(total);
  let off = 0;
  for (let i = 0; i < count; i++) {
    const c = queue[i].chunk;
    buf.set(c, off);
    off += c.byteLength;
  }
  return [buf];
}

interface PendingWrite {
  chunks: Uint8Array[];
  offset: number; // into chunks[0]
  cb: (err?: Error | null) => void;
}

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
  #idleMs = 0;
  #bytesRead = 0;
  #bytesWritten = 0;
  #idleTimer: NodeJS.Timeout | null = null;
  #lastActive = 0;

  /** @internal Streams come from createServer() ('connection') and connect(). */
  constructor(
    token: typeof kInternal,
    b: Binding,
    handle: VchanHandle,
    domid: number,
    path: string,
    options: VchanStreamOptions & { [kStatic]?: boolean } = {},
  ) {
    if (token !== kInternal) {
      throw coded(
        'Illegal constructor: a VchanStream comes from createServer() or connect()',
        'ERR_ILLEGAL_CONSTRUCTOR',
        TypeError,
      );
    }
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
    let live: LiveState;
    try {
      ({ live } = unpackArm(this.#b.vchan.arm(this.#h, this.#pending !== null)));
    } catch (e) {
      this.destroy(e as Error);
      return;
    }
    if (live !== LiveState.Open) {
      this.#onWake();
      return;
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
  ringState():
    | {
        open: number;
        readable: number;
        writable: number;
        weAsked: number;
        peerAsked: number;
        wantRead: boolean;
        writeWaiting: number;
        eventPending: boolean;
        polling: boolean;
        wakeups: number;
        events: number;
        port: number;
      }
    | undefined {
    if (!this.#h) return undefined;
    const {
      live: open,
      readable,
      writable,
      oursAsked: weAsked,
      peerAsked,
      eventPending,
      polling,
      wakeups,
      events,
    } = this.#b.vchan.peek(this.#h);
    const p = this.#pending;
    const writeWaiting = p ? p.chunks.reduce((n, c) => n + c.byteLength, 0) - p.offset : 0;
    return {
      open,
      readable,
      writable,
      weAsked,
      peerAsked,
      wantRead: this.#wantRead,
      writeWaiting,
      eventPending,
      polling,
      wakeups,
      events,
      port: this.#info.port,
    };
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
    this.#idleMs = ms;
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idleTimer = null;
    this.#active();
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
    return this.#idleMs || undefined;
  }

  /** Something was read or written: the idle clock starts again (the timer re-arms lazily). */
  #active(): void {
    if (!this.#idleMs) return;
    this.#lastActive = performance.now();
    if (!this.#idleTimer && this.#h) this.#armIdle(this.#idleMs);
  }

  #armIdle(delay: number): void {
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = null;
      if (!this.#h || !this.#idleMs) return;
      const idle = performance.now() - this.#lastActive;
      if (idle >= this.#idleMs - 1) this.emit('timeout');
      else this.#armIdle(this.#idleMs - idle);
    }, delay);
    this.#idleTimer.unref();
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

  override _read(): void {
    this.#wantRead = true;
    if (this.#sleeping) return; // the peer's next write wakes us (#onWake)
    try {
      this.#pumpRead();
    } catch (e) {
      this.destroy(e as Error);
    }
  }

  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    this.#pending = { chunks: gather(chunks), offset: 0, cb };
    this.#pumpWriteSafe(true);
  }

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
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idleTimer = null;
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
      this.#pumpRead();
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
      if (onread && onread.view === true) {
        const r = this.#b.vchan.view(this.#h);
        if (typeof r === 'number') {
          if (this.#readNothing(r)) return;
          continue;
        }
        const n = r.byteLength;
        this.#active();
        this.#bytesRead += n;
        let more: boolean | void;
        try {
          more = onread.callback.call(undefined, n, Buffer.from(r));
        } finally {
          // Detached and given back to the peer whatever the callback did (even close us).
          if (this.#h) this.#b.vchan.release(this.#h);
        }
        if (more === false) this.pause();
        continue;
      }
      if (onread) {
        const buf = typeof onread.buffer === 'function' ? onread.buffer() : onread.buffer;
        if (!(buf instanceof Uint8Array) || buf.byteLength === 0)
          throw coded(
            'options.onread.buffer() must return a non-empty Buffer or Uint8Array',
            'ERR_INVALID_RETURN_VALUE',
            TypeError,
          );
        const n: number = this.#b.vchan.read(this.#h, buf, 0, Math.min(buf.byteLength, this.#info.readSize));
        if (n > 0) {
          this.#active();
          this.#bytesRead += n;
          if (onread.callback.call(undefined, n, buf) === false) this.pause();
          continue;
        }
        if (this.#readNothing(n)) return;
        continue;
      }
      const room = Math.min(poolRoom(), this.#info.readSize);
      const buf = pool!;
      const n: number = this.#b.vchan.read(this.#h, buf, poolOff, room);
      if (n > 0) {
        this.#active();
        this.#bytesRead += n;
        const chunk = buf.subarray(poolOff, poolOff + n);
        poolOff += n;
        this.#wantRead = this.push(chunk);
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

  #pumpRead(): void {
    if (!this.#h || this.#readEnded) return;
    this.#drainReadable(false);
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
      this.#active();
      this.#bytesWritten += n;
    }
    // Advance through the chunks by N bytes (p.offset is into the first one).
    let i = 0;
    let off = p.offset + n;
    while (i < p.chunks.length && off >= p.chunks[i].byteLength) off -= p.chunks[i++].byteLength;
    if (i === p.chunks.length) {
      this.#pending = null;
      if (fromWrite) process.nextTick(p.cb);
      else p.cb();
      return;
    }
    if (i > 0) p.chunks.splice(0, i);
    p.offset = off;
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

export interface ServerOptions extends VchanStreamOptions {
  /** The client's domain. */
  domid: number;
  /**
   * Xenstore path of the channel, e.g. `data/vchan/<client>/<name>` (relative to this domain).
   * Required unless `static` is given.
   */
  path?: string;
  /**
   * A channel with no xenstore (dom0less): the static event channel port and the grant
   * reference of the control page that both ends agreed on (see {@link StaticChannel}).
   */
  static?: StaticChannel;
  /** Minimum size of the ring the server reads (client -> server), bytes. Default 64 KiB. */
  readMin?: number;
  /** Minimum size of the ring the server writes (server -> client), bytes. Default 64 KiB. */
  writeMin?: number;
  backend?: Backend;
  /** Mock only: act as this domain. */
  mockDomid?: number;
}

/** How long a static server waits for its agreed grant reference to be free before 'error'. */
const STATIC_REF_WAIT_MS = 5000;

/**
 * What the two ends of a static (xenstore-less) channel agree on in advance, each from its own
 * side: PORT is this domain's end of a static event channel (from the device tree, or bound by
 * dom0 for both domains), REF the grant reference of the server's control page. A domain's grants
 * are numbered from 8 upward in the order it makes them (Linux reserves 0-7), so in a dom0less
 * domain whose first grant is the server's page, REF is 8.
 */
export interface StaticChannel {
  port: number;
  ref: number;
}

/**
 * The longest vchan path, in bytes: what xenstore itself takes for an absolute path (3072 bytes)
 * less the "/event-channel" the channel's entry adds. A relative path (resolved against the
 * domain's home, /local/domain/<domid>) may be up to 2048 - 14 = 2034 bytes. Our vchan, built into
 * both addons, never truncates a path.
 */
export const MAX_VCHAN_PATH = XENSTORE_ABS_PATH_MAX - '/event-channel'.length;
const MAX_RELATIVE_VCHAN_PATH = XENSTORE_REL_PATH_MAX - '/event-channel'.length;

/**
 * The longest path Xen's own C libxenvchan handles, in bytes, in every release to date: it formats
 * "<path>/event-channel" into a 64-byte buffer and silently truncates a longer one (its client then
 * fails with ENOENT, its server publishes the wrong entry). Keep paths this short when the other
 * end of a channel uses Xen's libxenvchan (vchan-socket-proxy, Qubes' tools, a C program); between
 * two ends of this library any path up to {@link MAX_VCHAN_PATH} works.
 */
export const XEN_LIBXENVCHAN_MAX_PATH = 63 - '/event-channel'.length;

function checkVchanPath(name: string, v: unknown): string {
  const p = checkXsPath(name, v);
  const n = Buffer.byteLength(p);
  const max = p.startsWith('/') ? MAX_VCHAN_PATH : MAX_RELATIVE_VCHAN_PATH;
  if (n > max)
    throw outOfRange(name, `at most ${max} bytes long (xenstore's limit, less "/event-channel")`, `${n} bytes`);
  return p;
}

/**
 * One channel offered to one client: calls ONSTREAM with the stream once a client attaches, or
 * ONBROKEN when a client breaks the protocol as it connects (the channel is then gone). cancel()
 * withdraws a channel no client has taken yet. Shared by VchanServer and VchanMultiServer.
 *
 * @internal
 */
export interface Offer {
  /**
   * Withdraws the channel: true if it was withdrawn. With LOOK, not if a client has attached to it
   * meanwhile (its notification not read yet): the stream then goes to ONSTREAM as usual.
   */
  cancel(look?: boolean): boolean;
  ref(on: boolean): void;
}

/** @internal */
export interface OfferOptions extends VchanStreamOptions {
  domid: number;
  path: string;
  static?: StaticChannel;
  readMin: number;
  writeMin: number;
  mockDomid?: number;
}

/** @internal */
export function offerChannel(
  b: Binding,
  o: OfferOptions,
  onStream: (s: VchanStream) => void,
  onBroken: (e: Error) => void,
): Offer {
  const st = o.static;
  let h: VchanHandle | null = asDomain(b, o.mockDomid, () =>
    st
      ? b.vchan.serverInitStatic(o.domid, st.ref, st.port, o.readMin, o.writeMin)
      : b.vchan.serverInit(o.domid, o.path, o.readMin, o.writeMin),
  );
  debug('server %s: offered to domain %d', o.path, o.domid);
  const wake = (): void => {
    if (h === null) return;
    const handle = h;
    let live: LiveState;
    try {
      ({ live } = unpackArm(b.vchan.arm(handle)));
    } catch (e) {
      // The client broke the ring as it connected: this channel is lost.
      h = null;
      b.vchan.close(handle);
      onBroken(e as Error);
      return;
    }
    if (live === LiveState.Waiting) return; // still waiting for the client
    // Connected (or connected and gone already: the stream will deliver its data and end).
    // The stream takes the poller over as it is (a new callback, same uv_poll): no stop and
    // restart of the poll on this fd between the two owners.
    h = null;
    debug('server %s: domain %d connected', o.path, o.domid);
    onStream(new VchanStream(kInternal, b, handle, o.domid, o.path, st ? { ...o, [kStatic]: true } : o));
  };
  if (b.vchan.poll(h, wake)) process.nextTick(wake);
  return {
    cancel(look = false): boolean {
      if (look) wake();
      if (h === null) return false;
      b.vchan.close(h);
      h = null;
      return true;
    },
    ref(on: boolean): void {
      if (h !== null) b.vchan.ref(h, on);
    },
  };
}

/**
 * Makes PATH (a vchan path of this domain) ours for as long as this process lives, as binding a
 * Unix socket path would: EADDRINUSE while another server (in any process of this domain) holds it.
 *
 * The claim is an abstract Unix socket named after the path: the kernel frees it when its holder
 * exits, however it exits, so a server that died leaves nothing that blocks the next one (its stale
 * xenstore entry is simply rewritten). Servers of one domain see each other's claims when they share
 * a network namespace (on the mock: when they share the mock's directory).
 *
 * @internal
 */
export async function claimPath(b: Binding, mockDomid: number | undefined, path: string): Promise<() => void> {
  let abs = path;
  if (!path.startsWith('/')) {
    const xs = new Xenstore({ backend: b.backend, mockDomid });
    try {
      abs = `/local/domain/${await xs.read('domid')}/${path}`;
    } catch {
      // no readable domid: claim the path as written
    } finally {
      xs.close();
    }
  }
  const release = await lockName(b, abs, `another vchan server of this domain serves ${abs}`, path);
  debug('server %s: claimed (%s)', path, abs);
  return release;
}

/**
 * Makes static PORT of this domain (MOCKDOMID on the mock) a server's, as claimPath does a path:
 * EADDRINUSE while another server of this domain has it, EBUSY while an EventChannel or a client
 * of this process has it bound. No xenstore is asked.
 *
 * @internal
 */
export async function claimStatic(b: Binding, mockDomid: number | undefined, port: number): Promise<() => void> {
  const hold = holdStaticPort(b, mockDomid, port);
  try {
    const release = await lockName(
      b,
      `static port ${mockDomid ?? 'self'} ${port}`,
      `another vchan server of this domain serves static port ${port}`,
    );
    return () => {
      release();
      hold.release();
    };
  } catch (e) {
    hold.release();
    throw e;
  }
}

/** Holds the abstract Unix socket named after KEY while this process lives (EADDRINUSE: MESSAGE). */
async function lockName(b: Binding, key: string, message: string, path?: string): Promise<() => void> {
  const scope = b.mock ? `mock ${b.mock.dir()}` : 'xen';
  const name = `\0xen-vchan/${createHash('sha256').update(`${scope}\n${key}`).digest('hex').slice(0, 40)}`;
  const lock = createNetServer((c) => c.destroy());
  await new Promise<void>((resolve, reject) => {
    lock.once('error', (e: NodeJS.ErrnoException) => {
      if (e.code !== 'EADDRINUSE') return reject(e);
      const err = systemError('EADDRINUSE', 'listen', message);
      if (path !== undefined) (err as Error & { path?: string }).path = path;
      reject(err);
    });
    lock.listen(name, () => resolve());
  });
  lock.unref();
  return () => lock.close();
}

/**
 * A vchan server: one channel at a time for one client domain, as Xen's libxenvchan serves (any
 * libxenvchan client can connect to it). After a client leaves, the server offers the channel again
 * for the next one. For many clients at once on one path, see {@link VchanMultiServer}. Emits
 * 'listening', 'connection' (VchanStream), 'clientError', 'error' and 'close'.
 *
 * As with a Unix socket path, one server at a time serves a path: listen() on a path that a live
 * server of this domain holds emits 'error' with EADDRINUSE. A path whose server died is free again
 * (its xenstore entry is replaced).
 *
 * A client that breaks the protocol as it connects (a ring index no ring can hold) costs that one
 * connection: the channel is dropped, 'clientError' is emitted (only if someone listens; as
 * http.Server does) and a new channel is offered. 'error' is for the server itself (a path already
 * served, a channel that cannot be offered), after which it stops listening.
 */
export class VchanServer extends EventEmitter<{
  listening: [];
  connection: [VchanStream];
  clientError: [Error];
  error: [Error];
  close: [];
}> {
  readonly #b: Binding;
  readonly #opts: OfferOptions & ServerOptions;
  #offer: Offer | null = null;
  #current: VchanStream | null = null;
  #release: (() => void) | null = null;
  /** Out of resources for the next offer: when it is tried again, and the back-off (ms). */
  #retry: NodeJS.Timeout | null = null;
  #retryMs = 0;
  /** When a static channel's offer first found its grant reference taken (0: it did not). */
  #refWaitSince = 0;
  #listening = false;
  #starting = false;
  #closed = false;
  #refed = true;

  constructor(options: ServerOptions, onConnection?: (s: VchanStream) => void) {
    super();
    this.#opts = checkServerOptions(options);
    this.#b = binding(options.backend);
    if (onConnection !== undefined) {
      if (typeof onConnection !== 'function') throw invalidArgType('onConnection', 'of type function', onConnection);
      this.on('connection', onConnection);
    }
  }

  get listening(): boolean {
    return this.#listening;
  }

  /**
   * Claims the path and offers the channel; 'listening' follows, or 'error' (EADDRINUSE when
   * another server holds the path). As net.Server's: a callback, and an options object whose
   * `signal` closes the server when aborted.
   */
  listen(cb?: () => void): this;
  listen(options: { signal?: AbortSignal }, cb?: () => void): this;
  listen(optionsOrCb?: { signal?: AbortSignal } | (() => void), cb?: () => void): this {
    if (!beginListen(this, { closed: this.#closed, busy: this.#listening || this.#starting }, optionsOrCb, cb))
      return this;
    this.#starting = true;
    void this.#start();
    return this;
  }

  async #start(): Promise<void> {
    let release: () => void;
    try {
      const st = this.#opts.static;
      release = st
        ? await claimStatic(this.#b, this.#opts.mockDomid, st.port)
        : await claimPath(this.#b, this.#opts.mockDomid, this.#opts.path);
    } catch (e) {
      this.#starting = false;
      if (!this.#closed) this.emit('error', e as Error);
      return;
    }
    this.#starting = false;
    if (this.#closed) return release();
    this.#release = release;
    this.#listening = true;
    this.#reoffer(true);
  }

  /** The options the server was made with (domid, path, ring sizes). */
  address(): { domid: number; path: string; readMin: number; writeMin: number; static?: StaticChannel } {
    const { domid, path, readMin, writeMin } = this.#opts;
    const st = this.#opts.static;
    return { domid, path, readMin, writeMin, ...(st ? { static: { ...st } } : {}) };
  }

  #offerNext(): void {
    const offer = offerChannel(
      this.#b,
      this.#opts,
      (s) => {
        this.#offer = null;
        if (!this.#refed) s.unref();
        this.#current = s;
        s.once('close', () => {
          this.#current = null;
          this.#reoffer();
        });
        this.emit('connection', s);
      },
      (e) => {
        this.#offer = null;
        if (this.listenerCount('clientError') > 0) this.emit('clientError', e);
        this.#reoffer();
      },
    );
    this.#offer = offer;
    offer.ref(this.#refed);
  }

  /**
   * Offers the channel again for the next client. Out of resources (gntalloc's pages are shared by
   * every process of the domain, fds): it looks again after a back-off (50 ms, doubling to 1 s)
   * while it listens. Any other failure ends the server with 'error'.
   */
  #reoffer(first = false): void {
    if (this.#closed || !this.#listening) return;
    try {
      this.#offerNext();
      this.#retryMs = 0;
      this.#refWaitSince = 0;
      if (first) this.emit('listening');
    } catch (e) {
      const code = (e as { code?: string }).code;
      // A static channel's agreed grant reference still held: Linux gives the reference of a page
      // the previous client mapped back only once it is unmapped (up to a second later).
      const refBusy = code === 'EADDRNOTAVAIL' && this.#opts.static !== undefined;
      if (refBusy) this.#refWaitSince ||= Date.now();
      if (refBusy && Date.now() - this.#refWaitSince > STATIC_REF_WAIT_MS) {
        // Held for good (another grant of this domain has it): say so.
      } else if (
        refBusy ||
        (!first &&
          (code === 'ENOSPC' || code === 'ENOMEM' || code === 'EMFILE' || code === 'ENFILE' || code === 'EAGAIN'))
      ) {
        this.#retryMs = Math.min(1000, this.#retryMs ? this.#retryMs * 2 : 50);
        debug('server %s: no channel to offer (%s); again in %d ms', this.#opts.path, code, this.#retryMs);
        this.#retry = setTimeout(() => {
          this.#retry = null;
          this.#reoffer(first);
        }, this.#retryMs);
        if (!this.#refed) this.#retry.unref();
        return;
      }
      this.#stop();
      this.emit('error', e as Error);
    }
  }

  /** Withdraws the offer and gives the path up. */
  #stop(): void {
    this.#listening = false;
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = null;
    this.#offer?.cancel();
    this.#offer = null;
    // A static port stays held while a stream still uses it (it is bound on the addon's handle).
    const release = this.#release;
    if (release && this.#current && this.#opts.static) this.#current.once('close', release);
    else release?.();
    this.#release = null;
  }

  /**
   * Stops offering the channel and gives the path up; a connected stream is left to finish.
   * 'close' (and CB) come once that stream has closed. As net.Server's: a second close() passes
   * ERR_SERVER_NOT_RUNNING to its callback and emits nothing.
   */
  close(cb?: (err?: Error) => void): this {
    if (cb !== undefined && typeof cb !== 'function') throw invalidArgType('cb', 'of type function', cb);
    if (this.#closed) {
      if (cb) process.nextTick(cb, coded('The server is not running', 'ERR_SERVER_NOT_RUNNING'));
      return this;
    }
    // As net.Server's: a server that is not running (never listened, or its listen() failed)
    // still closes and emits 'close', but CB hears ERR_SERVER_NOT_RUNNING.
    const running = this.#listening || this.#starting || this.#current !== null;
    if (cb)
      this.once('close', running ? () => cb() : () => cb(coded('The server is not running', 'ERR_SERVER_NOT_RUNNING')));
    this.#closed = true;
    this.#stop();
    const finish = () => process.nextTick(() => this.emit('close'));
    if (this.#current) this.#current.once('close', finish);
    else finish();
    return this;
  }

  /** `await using server = createServer(...)`: closes the server (as net.Server's). */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#closed) return;
    await new Promise<void>((resolve) => this.close(() => resolve()));
  }

  ref(): this {
    this.#refed = true;
    this.#offer?.ref(true);
    this.#current?.ref();
    this.#retry?.ref();
    return this;
  }

  unref(): this {
    this.#refed = false;
    this.#offer?.ref(false);
    this.#current?.unref();
    this.#retry?.unref();
    return this;
  }
}

/** @internal The checked options of a server (single or multi). */
export function checkServerOptions<O extends ServerOptions>(options: O): OfferOptions & O {
  const o = checkObject('options', options);
  const domid = checkDomid('options.domid', o.domid);
  const { path, st } = checkPathOrStatic(o);
  const readMin =
    o.readMin === undefined ? DEFAULT_RING_SIZE : checkInt('options.readMin', o.readMin, 0, MAX_RING_SIZE);
  const writeMin =
    o.writeMin === undefined ? DEFAULT_RING_SIZE : checkInt('options.writeMin', o.writeMin, 0, MAX_RING_SIZE);
  if (o.mockDomid !== undefined) checkDomid('options.mockDomid', o.mockDomid);
  checkOnread(o.onread);
  return { ...options, domid, path, readMin, writeMin, ...(st ? { static: st } : {}) };
}

/** A channel's options.path, or its options.static (then path is ''): one of the two, checked. */
function checkPathOrStatic(o: Record<string, unknown>): { path: string; st: StaticChannel | undefined } {
  const st = o.static === undefined ? undefined : checkStaticChannel('options.static', o.static);
  if (st && o.path !== undefined)
    throw coded(
      'options.path and options.static cannot be used together: a static channel has no xenstore path',
      'ERR_INCOMPATIBLE_OPTION_PAIR',
      TypeError,
    );
  return { path: st ? '' : checkVchanPath('options.path', o.path), st };
}

/** @internal A checked StaticChannel (a copy: later changes to the caller's object do nothing). */
export function checkStaticChannel(name: string, v: unknown): StaticChannel {
  const o = checkObject(name, v);
  return { port: checkPort(`${name}.port`, o.port), ref: checkInt(`${name}.ref`, o.ref, 0, 0xffffffff) };
}

/**
 * What every server's listen() does first, as net.Server's: checks the arguments (a callback, or an
 * options object with `signal`), refuses a closed or listening server, registers the callback for
 * 'listening', and makes the signal close the server. False when the signal has already fired (the
 * server then closes on the next tick, and must not start).
 *
 * @internal
 */
export function beginListen(
  server: EventEmitter & { close(): unknown },
  state: { closed: boolean; busy: boolean },
  optionsOrCb: { signal?: AbortSignal } | (() => void) | undefined,
  cb: (() => void) | undefined,
): boolean {
  let signal: AbortSignal | undefined;
  if (typeof optionsOrCb === 'function' || optionsOrCb === undefined) {
    cb = optionsOrCb ?? cb;
  } else {
    const o = checkObject('options', optionsOrCb) as { signal?: unknown };
    if (o.signal !== undefined && !(o.signal instanceof AbortSignal))
      throw invalidArgType('options.signal', 'an instance of AbortSignal', o.signal);
    signal = o.signal as AbortSignal | undefined;
  }
  if (cb !== undefined && typeof cb !== 'function') throw invalidArgType('cb', 'of type function', cb);
  if (state.closed) throw coded('The server is closed', 'ERR_SERVER_NOT_RUNNING');
  if (state.busy) throw coded('The server is already listening', 'ERR_SERVER_ALREADY_LISTEN');
  if (signal?.aborted) {
    process.nextTick(() => server.close());
    return false;
  }
  if (cb) server.once('listening', cb);
  if (signal) {
    const onAbort = () => server.close();
    signal.addEventListener('abort', onAbort, { once: true });
    server.once('close', () => signal.removeEventListener('abort', onAbort));
  }
  return true;
}

/** Like net.createServer: a VchanServer, with an optional 'connection' listener. Call listen(). */
export function createServer(options: ServerOptions, onConnection?: (s: VchanStream) => void): VchanServer {
  return new VchanServer(options, onConnection);
}

export interface ConnectOptions extends VchanStreamOptions {
  /** The server's domain. */
  domid: number;
  /**
   * Full xenstore path of the channel, e.g. `/local/domain/0/data/vchan/5/name`. Required unless
   * `static` is given.
   */
  path?: string;
  /**
   * A channel with no xenstore: this domain's static event channel port and the grant reference
   * of the server's control page, as agreed (see {@link StaticChannel}). connect() waits for the
   * server's event on the port (not polling); an event that finds no channel (the spurious one
   * Xen leaves pending on a static channel at boot) is looked past.
   */
  static?: StaticChannel;
  /** Give up after this many milliseconds (ETIMEDOUT). Default: wait forever. */
  timeout?: number;
  /** Abort the wait. */
  signal?: AbortSignal;
  backend?: Backend;
  /** Mock only: act as this domain. */
  mockDomid?: number;
}

function connectError(code: 'ECONNREFUSED' | 'EPROTO' | 'EBUSY', message: string, cause: unknown): Error {
  const e = systemError(code, 'connect', message);
  (e as Error & { cause?: unknown }).cause = cause;
  return e;
}

/** A decimal xenstore value as Xen writes it (no sign, no spaces), 1 to 2^32-1; else undefined. */
function parseEntryNumber(v: string): number | undefined {
  if (!/^[0-9]{1,10}$/.test(v)) return undefined;
  const n = Number(v);
  return n > 0 && n <= 0xffffffff ? n : undefined;
}

/**
 * The channel a server publishes at PATH: its control page's grant and its event channel port.
 * Undefined while either is missing or not yet readable by us; EPROTO for an entry that no server
 * could have written (a client must not guess what a garbage entry means).
 *
 * @internal
 */
export async function readEntry(xs: Xenstore, path: string): Promise<{ ref: number; port: number } | undefined> {
  let rr: string | undefined;
  let ec: string | undefined;
  try {
    rr = await xs.tryRead(`${path}/ring-ref`);
    ec = await xs.tryRead(`${path}/event-channel`);
  } catch (e) {
    if ((e as { code?: string }).code === 'EACCES') return undefined;
    throw e;
  }
  if (rr === undefined || ec === undefined) return undefined;
  const ref = parseEntryNumber(rr);
  const port = parseEntryNumber(ec);
  if (ref === undefined || port === undefined)
    throw connectError(
      'EPROTO',
      `the vchan entry at ${path} is malformed (ring-ref ${JSON.stringify(rr)}, event-channel ${JSON.stringify(ec)})`,
      undefined,
    );
  return { ref, port };
}

/**
 * Attaches to the channel ENTRY (read from PATH) at once: the stream, or the system error as it
 * came. For a client that knows the offer is its own (connectMulti's).
 *
 * @internal
 */
export function attachEntry(
  b: Binding,
  mockDomid: number | undefined,
  domid: number,
  path: string,
  entry: { ref: number; port: number },
  options: VchanStreamOptions,
): VchanStream {
  const h = asDomain(b, mockDomid, () => b.vchan.clientInit(domid, path, entry.ref, entry.port));
  debug('connect %s: attached to domain %d (ring-ref %d, port %d)', path, domid, entry.ref, entry.port);
  return new VchanStream(kInternal, b, h, domid, path, options);
}

/**
 * Connects to a vchan server, waiting (with a xenstore watch, not by polling) until the server
 * offers the channel. A client only ever attaches to a channel that is offered and that no other
 * client has taken: while the server is busy with another client, connect() waits for its next
 * offer (bound it with options.timeout).
 *
 * Rejects with ETIMEDOUT after options.timeout ms; with an AbortError when options.signal aborts;
 * with ECONNREFUSED when the published entry names a page this domain cannot map (the entry of a
 * server that is gone, or a page granted to another domain); with EPROTO when the entry or the
 * channel behind it is malformed (no server could have written it). Either of the last two carries
 * the underlying system error as `cause`.
 */
export async function connect(options: ConnectOptions): Promise<VchanStream> {
  const o = checkObject('options', options);
  const domid = checkDomid('options.domid', o.domid);
  const { path, st } = checkPathOrStatic(o);
  const timeout = o.timeout === undefined ? undefined : checkInt('options.timeout', o.timeout, 0, 2 ** 31 - 1);
  const signal = o.signal as AbortSignal | undefined;
  if (signal !== undefined && !(signal instanceof AbortSignal))
    throw invalidArgType('options.signal', 'an instance of AbortSignal', signal);
  const mockDomid = o.mockDomid === undefined ? undefined : checkDomid('options.mockDomid', o.mockDomid);
  checkOnread(o.onread);
  const b = binding(o.backend as Backend | undefined);
  if (signal?.aborted) throw abortError(signal);
  if (st)
    return connectStatic(
      b,
      { domid, static: st, timeout, signal, mockDomid },
      (h) => new VchanStream(kInternal, b, h, domid, '', { ...options, [kStatic]: true }),
    );

  const lease = leaseShared(b, mockDomid);
  const xs = lease.xs;
  let watch: XenstoreWatch | undefined;
  let broken = false;
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  try {
    watch = await xs.watch(`${path}/event-channel`);
    const stop = new Promise<never>((_, reject) => {
      if (timeout !== undefined)
        timer = setTimeout(
          () => reject(systemError('ETIMEDOUT', 'connect', `no vchan server at ${path} after ${timeout} ms`)),
          timeout,
        );
      if (signal) {
        onAbort = () => reject(abortError(signal));
        signal.addEventListener('abort', onAbort, { once: true });
        // Aborted while the watch was being set up: the event has been and gone.
        if (signal.aborted) onAbort();
      }
    });
    stop.catch(() => undefined);
    const it = watch[Symbol.asyncIterator]();
    let lookNow = false;
    for (;;) {
      // Each event (the first fires at once) may mean a channel is offered: try. The iterator queues
      // events, so none is lost while an attempt runs.
      if (!lookNow) {
        const next = await Promise.race([it.next(), stop]);
        if (next.done) throw coded('The xenstore watch ended', 'ERR_XEN_CLOSED');
      }
      lookNow = false;
      const entry = await Promise.race([readEntry(xs, path), stop]);
      if (!entry) continue; // not (fully) published yet
      try {
        const h = asDomain(b, mockDomid, () => b.vchan.clientInit(domid, path, entry.ref, entry.port));
        debug('connect %s: attached to domain %d (ring-ref %d, port %d)', path, domid, entry.ref, entry.port);
        return new VchanStream(kInternal, b, h, domid, path, options);
      } catch (e) {
        const { code, syscall } = e as { code?: string; syscall?: string };
        // Taken by another client, or its client has gone and the server has not offered it again
        // yet: the server's next offer rewrites the entry, and fires the watch.
        if (code === 'EBUSY' || code === 'EAGAIN') {
          // (EAGAIN is also "the entry changed under us": only EBUSY says another client holds it.)
          if (code === 'EBUSY' && (options as { [kOnlyOffer]?: boolean })[kOnlyOffer])
            throw connectError('EBUSY', `the channel offered to this client at ${path} was taken by another`, e);
          debug('connect %s: %s, waiting for the next offer', path, code);
          continue;
        }
        if (syscall === 'libxenvchan_client_init' && (code === 'ENOENT' || code === 'EACCES')) continue; // withdrawn meanwhile
        // A live server between two offers removes its entry, then withdraws the pages, then offers
        // the next channel, often under the same grant ref and port: an attach that failed on an
        // entry that still reads the same may have met that churn, which fires the watch. An
        // entry that stays still is the server's own: a dead server's, or a broken one.
        const again = await Promise.race([readEntry(xs, path).catch(() => undefined), stop]);
        if (!again || again.ref !== entry.ref || again.port !== entry.port) continue;
        const churn = await Promise.race([
          it.next().then(() => true),
          stop,
          new Promise<false>((resolve) => setTimeout(() => resolve(false), ENTRY_STILL_MS).unref()),
        ]);
        if (churn) {
          lookNow = true; // the event is taken: look at the entry again without waiting for another
          continue;
        }
        if (syscall === 'xengnttab_map_grant_ref')
          throw connectError(
            'ECONNREFUSED',
            `no vchan server offers ${path}: its ring-ref ${entry.ref} cannot be mapped ` +
              '(the entry of a server that is gone, or a page not granted to this domain)',
            e,
          );
        if (code === 'EPROTO' || syscall === 'libxenvchan_client_init')
          throw connectError('EPROTO', `the vchan at ${path} cannot be used: ${(e as Error).message}`, e);
        throw e;
      }
    }
  } catch (e) {
    broken = xenstoreFailed(e);
    throw e;
  } finally {
    if (timer) clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
    releaseWithWatch(lease, watch, broken);
  }
}

/**
 * Whether E came from the xenstore connection itself (a request that failed, or the connection
 * closed): a shared connection that produced it is not leased again.
 *
 * @internal
 */
export function xenstoreFailed(e: unknown): boolean {
  const { code, syscall } = (e ?? {}) as { code?: unknown; syscall?: unknown };
  return code === 'ERR_XEN_CLOSED' || (typeof syscall === 'string' && syscall.startsWith('xs_'));
}

/**
 * Removes WATCH (if set) from the leased connection, which outlives this use, then gives the lease
 * back.
 *
 * @internal
 */
export function releaseWithWatch(lease: SharedLease, watch: XenstoreWatch | undefined, broken: boolean): void {
  if (watch === undefined) return lease.release(broken);
  watch.close().then(
    () => lease.release(broken),
    () => lease.release(true),
  );
}
