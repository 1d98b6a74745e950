/**
 * vchan: a byte stream between two domains over shared rings, as a Node Duplex stream, with a
 * server and a client that feel like `net`.
 *
 * Reads and writes never block and never spin: when a ring is empty (or full) the stream asks
 * the peer to notify it and sleeps until the event channel fires. A peer that closes, or whose
 * process dies, ends the stream (its data first); a peer DOMAIN that is destroyed (it sends
 * nothing: see domains.ts) fails it with ECONNRESET; corrupt ring indices fail it with EPROTO.
 */
import { EventEmitter } from 'node:events';
import { Duplex, DuplexOptions } from 'node:stream';

import { checkDomid, checkInt, checkObject, checkXsPath, coded, invalidArgType, outOfRange, systemError } from './errors';
import { onDomainGone } from './domains';
import { asDomain, Backend, Binding, binding } from './native';
import { Xenstore } from './xenstore';

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
 * Like net.Socket's `onread`: incoming data is read into one reusable buffer and handed to a
 * callback instead of being pushed as 'data' events (no allocation per chunk, no pool memory held by
 * the consumer). The stream still emits 'end', 'error' and 'close'; pause() and resume() still work.
 */
export interface VchanOnread {
  /** The buffer to read into, or a function returning it (called before every read). */
  buffer: Uint8Array | (() => Uint8Array);
  /** Called for each chunk with its length and the buffer holding it at offset 0. Return false to pause(). */
  callback: (nread: number, buffer: Uint8Array) => boolean | void;
}

export interface VchanStreamOptions extends Pick<DuplexOptions, 'highWaterMark' | 'readableHighWaterMark' | 'writableHighWaterMark'> {
  /** Read into a reusable buffer instead of emitting 'data' (see VchanOnread). */
  onread?: VchanOnread;
}

function checkOnread(v: unknown): VchanOnread | undefined {
  if (v === undefined) return undefined;
  const o = checkObject('options.onread', v);
  const buf = o.buffer;
  if (!(buf instanceof Uint8Array) && typeof buf !== 'function')
    throw invalidArgType('options.onread.buffer', 'an instance of Buffer, Uint8Array or a function', buf);
  if (buf instanceof Uint8Array && buf.byteLength === 0) throw outOfRange('options.onread.buffer', 'a non-empty buffer', 'an empty one');
  if (typeof o.callback !== 'function') throw invalidArgType('options.onread.callback', 'of type function', o.callback);
  return { buffer: buf as VchanOnread['buffer'], callback: o.callback as VchanOnread['callback'] };
}

/** Ring sizes and the event channel port of an open stream. */
export interface VchanInfo {
  readSize: number;
  writeSize: number;
  port: number;
  server: boolean;
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
  #h: object | null;
  readonly #info: VchanInfo;
  #wantRead = false;
  #readEnded = false;
  #pending: PendingWrite | null = null;
  readonly #domid: number;
  readonly #path: string;
  readonly #onread: VchanOnread | null;
  #unwatchDomain: (() => void) | null = null;

  /** @internal */
  constructor(b: Binding, handle: object, domid: number, path: string, options: VchanStreamOptions = {}) {
    super({ ...options, allowHalfOpen: false, decodeStrings: true, emitClose: true, autoDestroy: true });
    this.#b = b;
    this.#h = handle;
    this.#domid = domid;
    this.#path = path;
    this.#info = b.vchan.info(handle) as VchanInfo;
    this.#onread = options.onread ?? null;
    // With onread, reading starts at once (as net.Socket's does) and only pause() stops it.
    if (this.#onread) this.#wantRead = true;
    b.vchan.poll(handle, () => this.#onWake());
    // Dom0 is never destroyed; any other peer domain may be, and would say nothing.
    if (domid !== 0) {
      const mockDomid = (options as { mockDomid?: number }).mockDomid;
      this.#unwatchDomain = onDomainGone(b, mockDomid, domid, () => this.#onPeerDomainGone());
    }
  }

  /** The peer's domain was destroyed. If it had closed the channel first, this is the usual end. */
  #onPeerDomainGone(): void {
    this.#unwatchDomain = null;
    if (!this.#h) return;
    let open: number;
    try {
      [open] = this.#b.vchan.state(this.#h) as number[];
    } catch (e) {
      this.destroy(e as Error);
      return;
    }
    if (open !== 1) {
      this.#onWake();
      return;
    }
    this.destroy(systemError('ECONNRESET', -104, 'libxenvchan', `domain ${this.#domid} (the peer) was destroyed`));
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
   * whether the stream wants to read and how many bytes of a write wait for ring space.
   * Does not change anything. Undefined once closed.
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
      }
    | undefined {
    if (!this.#h) return undefined;
    const [open, readable, writable, weAsked, peerAsked, eventPending, polling, wakeups, events] = this.#b.vchan.peek(this.#h) as [
      number,
      number,
      number,
      number,
      number,
      boolean,
      boolean,
      number,
      number,
    ];
    const p = this.#pending;
    const writeWaiting = p ? p.chunks.reduce((n, c) => n + c.byteLength, 0) - p.offset : 0;
    return { open, readable, writable, weAsked, peerAsked, wantRead: this.#wantRead, writeWaiting, eventPending, polling, wakeups, events };
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
    this.#pumpRead();
  }

  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    this.#pending = { chunks: chunks.map((c) => c.chunk), offset: 0, cb };
    this.#pumpWrite();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#pending = { chunks: [chunk], offset: 0, cb };
    this.#pumpWrite();
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
    const p = this.#pending;
    this.#pending = null;
    this.#close();
    if (p) p.cb(err ?? coded('The stream was destroyed', 'ERR_STREAM_DESTROYED'));
    cb(err);
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
    try {
      this.#pumpWrite();
      this.#pumpRead();
      if (this.#h && !this.#readEnded && !this.#wantRead && !this.#pending) this.#checkPeerGone();
    } catch (e) {
      this.destroy(e as Error);
    }
  }

  /** A paused stream still learns that the peer went: once its data is read, the stream ends. */
  #checkPeerGone(): void {
    const [open, ready] = this.#b.vchan.state(this.#h) as number[];
    if (open === 0 && ready === 0) this.#endReadable();
  }

  /** Reads as long as the consumer wants data (or, with FORCE, everything available). */
  #drainReadable(force: boolean): void {
    const onread = this.#onread;
    while (this.#h && (this.#wantRead || force) && !this.#readEnded) {
      if (onread) {
        const buf = typeof onread.buffer === 'function' ? onread.buffer() : onread.buffer;
        if (!(buf instanceof Uint8Array) || buf.byteLength === 0)
          throw Object.assign(new TypeError('options.onread.buffer() must return a non-empty Buffer or Uint8Array'), { code: 'ERR_INVALID_RETURN_VALUE' });
        const n: number = this.#b.vchan.read(this.#h, buf, 0, Math.min(buf.byteLength, this.#info.readSize));
        if (n > 0) {
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
    // Nothing now: ask the peer to notify us when it writes, then look once more.
    const [open, ready] = this.#b.vchan.state(this.#h) as number[];
    if (ready > 0) return false;
    if (open === 0) this.#endReadable();
    return true;
  }

  #pumpRead(): void {
    if (!this.#h || this.#readEnded) return;
    this.#drainReadable(false);
  }

  /** Writes what the ring takes of the pending chunks; completes the write once all are in. */
  #pumpWrite(): void {
    const p = this.#pending;
    if (!p || !this.#h) return;
    let n: number;
    try {
      n = this.#b.vchan.writev(this.#h, p.chunks, p.offset);
    } catch (e) {
      this.#pending = null;
      p.cb(e as Error);
      return;
    }
    // Advance through the chunks by N bytes (p.offset is into the first one).
    let i = 0;
    let off = p.offset + n;
    while (i < p.chunks.length && off >= p.chunks[i].byteLength) off -= p.chunks[i++].byteLength;
    if (i === p.chunks.length) {
      this.#pending = null;
      p.cb();
      return;
    }
    if (i > 0) p.chunks.splice(0, i);
    p.offset = off;
    // Ring full: ask the peer to notify us when it reads, then look once more.
    const [open, , space] = this.#b.vchan.state(this.#h) as number[];
    if (open !== 1) {
      this.#pending = null;
      p.cb(systemError('EPIPE', -32, 'libxenvchan_write', 'the peer has closed the channel'));
      return;
    }
    if (space > 0) this.#pumpWrite();
  }

  /** Destroys the stream (without the orderly end()). */
  [Symbol.dispose](): void {
    this.destroy();
  }
}

export interface ServerOptions extends VchanStreamOptions {
  /** The client's domain. */
  domid: number;
  /** Xenstore path of the channel, e.g. `data/vchan/<client>/<name>` (relative to this domain). */
  path: string;
  /** Minimum size of the ring the server reads (client -> server), bytes. Default 64 KiB. */
  readMin?: number;
  /** Minimum size of the ring the server writes (server -> client), bytes. Default 64 KiB. */
  writeMin?: number;
  backend?: Backend;
  /** Mock only: act as this domain. */
  mockDomid?: number;
}

const MAX_RING = 1 << 20;

/**
 * libxenvchan (Xen's, every version to date) formats "<path>/ring-ref" and "<path>/event-channel"
 * into 64-byte buffers, server and client alike: a longer path is silently truncated, and the
 * client then fails with ENOENT or the server publishes the wrong nodes. Refuse such paths up front,
 * on every backend, so that what works on the mock works on Xen.
 */
export const MAX_VCHAN_PATH = 63 - '/event-channel'.length;

function checkVchanPath(name: string, v: unknown): string {
  const p = checkXsPath(name, v);
  const n = Buffer.byteLength(p);
  if (n > MAX_VCHAN_PATH)
    throw outOfRange(name, `at most ${MAX_VCHAN_PATH} bytes long (libxenvchan keeps "<path>/event-channel" in a 64-byte buffer)`, `${n} bytes`);
  return p;
}

/**
 * A vchan server: one channel at a time for one client domain. After a client leaves, the
 * server offers the channel again for the next one. Emits 'listening', 'connection'
 * (VchanStream), 'error' and 'close'.
 */
export class VchanServer extends EventEmitter<{
  listening: [];
  connection: [VchanStream];
  error: [Error];
  close: [];
}> {
  readonly #b: Binding;
  readonly #opts: Required<Pick<ServerOptions, 'domid' | 'path' | 'readMin' | 'writeMin'>> & ServerOptions;
  #waiting: object | null = null;
  #current: VchanStream | null = null;
  #listening = false;
  #closed = false;
  #refed = true;

  constructor(options: ServerOptions, onConnection?: (s: VchanStream) => void) {
    super();
    const o = checkObject('options', options);
    const domid = checkDomid('options.domid', o.domid);
    const path = checkVchanPath('options.path', o.path);
    const readMin = o.readMin === undefined ? 65536 : checkInt('options.readMin', o.readMin, 0, MAX_RING);
    const writeMin = o.writeMin === undefined ? 65536 : checkInt('options.writeMin', o.writeMin, 0, MAX_RING);
    if (o.mockDomid !== undefined) checkDomid('options.mockDomid', o.mockDomid);
    checkOnread(o.onread);
    this.#b = binding(o.backend as Backend | undefined);
    this.#opts = { ...(options as ServerOptions), domid, path, readMin, writeMin };
    if (onConnection !== undefined) {
      if (typeof onConnection !== 'function') throw invalidArgType('onConnection', 'of type function', onConnection);
      this.on('connection', onConnection);
    }
  }

  get listening(): boolean {
    return this.#listening;
  }

  /** Publishes the channel in xenstore and waits for the client. */
  listen(cb?: () => void): this {
    if (this.#closed) throw coded('The server is closed', 'ERR_SERVER_NOT_RUNNING');
    if (this.#listening) throw coded('The server is already listening', 'ERR_SERVER_ALREADY_LISTEN');
    this.#listening = true;
    if (cb) this.once('listening', cb);
    this.#offer();
    process.nextTick(() => this.emit('listening'));
    return this;
  }

  /** The options the server was made with (domid, path, ring sizes). */
  address(): { domid: number; path: string; readMin: number; writeMin: number } {
    const { domid, path, readMin, writeMin } = this.#opts;
    return { domid, path, readMin, writeMin };
  }

  #offer(): void {
    const o = this.#opts;
    const h = asDomain(this.#b, o.mockDomid, () => this.#b.vchan.serverInit(o.domid, o.path, o.readMin, o.writeMin));
    this.#waiting = h;
    this.#b.vchan.poll(h, () => this.#onWake(h));
    this.#b.vchan.ref(h, this.#refed);
  }

  #onWake(h: object): void {
    if (h !== this.#waiting) return;
    let open: number;
    try {
      [open] = this.#b.vchan.state(h) as number[];
    } catch (e) {
      this.#waiting = null;
      this.#b.vchan.close(h);
      this.emit('error', e as Error);
      return;
    }
    if (open === 2) return; // still waiting for the client
    // Connected (or connected and gone already: the stream will deliver its data and end).
    // The stream takes the poller over as it is (a new callback, same uv_poll): no stop and
    // restart of the poll on this fd between the two owners.
    this.#waiting = null;
    const s = new VchanStream(this.#b, h, this.#opts.domid, this.#opts.path, this.#opts);
    if (!this.#refed) s.unref();
    this.#current = s;
    s.once('close', () => {
      this.#current = null;
      if (!this.#closed) {
        try {
          this.#offer();
        } catch (e) {
          this.emit('error', e as Error);
        }
      }
    });
    this.emit('connection', s);
  }

  /** Stops offering the channel; a connected stream is left to finish. */
  close(cb?: (err?: Error) => void): this {
    if (cb) this.once('close', () => cb());
    if (this.#closed) {
      process.nextTick(() => this.emit('close'));
      return this;
    }
    this.#closed = true;
    this.#listening = false;
    if (this.#waiting) {
      const h = this.#waiting;
      this.#waiting = null;
      this.#b.vchan.close(h);
    }
    const finish = () => process.nextTick(() => this.emit('close'));
    if (this.#current) this.#current.once('close', finish);
    else finish();
    return this;
  }

  ref(): this {
    this.#refed = true;
    if (this.#waiting) this.#b.vchan.ref(this.#waiting, true);
    this.#current?.ref();
    return this;
  }

  unref(): this {
    this.#refed = false;
    if (this.#waiting) this.#b.vchan.ref(this.#waiting, false);
    this.#current?.unref();
    return this;
  }
}

/** Like net.createServer: a VchanServer, with an optional 'connection' listener. Call listen(). */
export function createServer(options: ServerOptions, onConnection?: (s: VchanStream) => void): VchanServer {
  return new VchanServer(options, onConnection);
}

export interface ConnectOptions extends VchanStreamOptions {
  /** The server's domain. */
  domid: number;
  /** Full xenstore path of the channel, e.g. `/local/domain/0/data/vchan/5/name`. */
  path: string;
  /** Give up after this many milliseconds (ETIMEDOUT). Default: wait forever. */
  timeout?: number;
  /** Abort the wait. */
  signal?: AbortSignal;
  backend?: Backend;
  /** Mock only: act as this domain. */
  mockDomid?: number;
}

function abortError(signal: AbortSignal): Error {
  const e = new Error('The operation was aborted', { cause: signal.reason }) as Error & { code: string };
  e.name = 'AbortError';
  e.code = 'ABORT_ERR';
  return e;
}

/**
 * Connects to a vchan server, waiting (with a xenstore watch, not by polling) until the server
 * has published the channel. Rejects with ETIMEDOUT after options.timeout ms, or with an
 * AbortError when options.signal aborts.
 */
export async function connect(options: ConnectOptions): Promise<VchanStream> {
  const o = checkObject('options', options);
  const domid = checkDomid('options.domid', o.domid);
  const path = checkVchanPath('options.path', o.path);
  const timeout = o.timeout === undefined ? undefined : checkInt('options.timeout', o.timeout, 0, 2 ** 31 - 1);
  const signal = o.signal as AbortSignal | undefined;
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalidArgType('options.signal', 'an instance of AbortSignal', signal);
  const mockDomid = o.mockDomid === undefined ? undefined : checkDomid('options.mockDomid', o.mockDomid);
  checkOnread(o.onread);
  const b = binding(o.backend as Backend | undefined);
  if (signal?.aborted) throw abortError(signal);

  const xs = new Xenstore({ backend: b.backend, mockDomid });
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  try {
    const watch = await xs.watch(`${path}/event-channel`);
    const stop = new Promise<never>((_, reject) => {
      if (timeout !== undefined)
        timer = setTimeout(() => reject(systemError('ETIMEDOUT', -110, 'connect', `no vchan server at ${path} after ${timeout} ms`)), timeout);
      if (signal) {
        onAbort = () => reject(abortError(signal));
        signal.addEventListener('abort', onAbort, { once: true });
      }
    });
    stop.catch(() => undefined);
    const it = watch[Symbol.asyncIterator]();
    for (;;) {
      // Each event (the first fires at once) may mean the server is there: try. The iterator queues
      // events, so none is lost while an attempt runs; a server's last step (the permissions of
      // event-channel) fires the watch once more, so an attempt that came too early is retried.
      const next = await Promise.race([it.next(), stop]);
      if (next.done) throw coded('The xenstore watch ended', 'ERR_XEN_CLOSED');
      let h: object;
      try {
        h = asDomain(b, mockDomid, () => b.vchan.clientInit(domid, path));
      } catch (e) {
        const code = (e as { code?: string }).code;
        if (code === 'ENOENT' || code === 'EACCES' || code === 'EINVAL') continue; // not (fully) there yet
        throw e;
      }
      return new VchanStream(b, h, domid, path, options);
    }
  } finally {
    if (timer) clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
    xs.close();
  }
}
