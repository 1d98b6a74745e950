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

import { checkDomid, checkInt, checkObject, checkXsPath, coded, invalidArgType, systemError } from './errors';
import { onDomainGone } from './domains';
import { asDomain, Backend, Binding, binding } from './native';
import { Xenstore } from './xenstore';

const MIN_POOL = 64 * 1024;

export interface VchanStreamOptions extends Pick<DuplexOptions, 'highWaterMark' | 'readableHighWaterMark' | 'writableHighWaterMark'> {}

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
  #pool: Buffer;
  #poolOff = 0;
  #wantRead = false;
  #readEnded = false;
  #pending: PendingWrite | null = null;
  readonly #domid: number;
  readonly #path: string;
  #unwatchDomain: (() => void) | null = null;

  /** @internal */
  constructor(b: Binding, handle: object, domid: number, path: string, options: VchanStreamOptions = {}) {
    super({ ...options, allowHalfOpen: false, decodeStrings: true, emitClose: true, autoDestroy: true });
    this.#b = b;
    this.#h = handle;
    this.#domid = domid;
    this.#path = path;
    this.#info = b.vchan.info(handle) as VchanInfo;
    this.#pool = Buffer.allocUnsafe(Math.max(MIN_POOL, this.#info.readSize));
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

  #takePool(n: number): Buffer {
    if (this.#pool.length - this.#poolOff < n) {
      this.#pool = Buffer.allocUnsafe(Math.max(MIN_POOL, this.#info.readSize));
      this.#poolOff = 0;
    }
    return this.#pool;
  }

  /** Reads as long as the consumer wants data (or, with FORCE, everything available). */
  #drainReadable(force: boolean): void {
    const want = Math.min(this.#info.readSize, MIN_POOL);
    while (this.#h && (this.#wantRead || force) && !this.#readEnded) {
      const pool = this.#takePool(Math.min(want, 16 * 1024));
      const room = Math.min(pool.length - this.#poolOff, this.#info.readSize);
      const n: number = this.#b.vchan.read(this.#h, pool, this.#poolOff, room);
      if (n > 0) {
        const chunk = pool.subarray(this.#poolOff, this.#poolOff + n);
        this.#poolOff += n;
        this.#wantRead = this.push(chunk);
        continue;
      }
      if (n < 0) {
        // The peer is gone and the ring is empty.
        this.#endReadable();
        return;
      }
      // Nothing now: ask the peer to notify us when it writes, then look once more.
      const [open, ready] = this.#b.vchan.state(this.#h) as number[];
      if (ready > 0) continue;
      if (open === 0) this.#endReadable();
      return;
    }
  }

  #pumpRead(): void {
    if (!this.#h || this.#readEnded) return;
    this.#drainReadable(false);
  }

  #pumpWrite(): void {
    const p = this.#pending;
    if (!p || !this.#h) return;
    for (;;) {
      let n: number;
      try {
        n = this.#b.vchan.writev(this.#h, p.chunks, p.offset);
      } catch (e) {
        this.#pending = null;
        p.cb(e as Error);
        return;
      }
      // Advance through the chunks by N bytes.
      let left = n;
      while (left > 0 && p.chunks.length) {
        const avail = p.chunks[0].byteLength - p.offset;
        if (left >= avail) {
          left -= avail;
          p.chunks.shift();
          p.offset = 0;
        } else {
          p.offset += left;
          left = 0;
        }
      }
      while (p.chunks.length && p.chunks[0].byteLength === p.offset) {
        p.chunks.shift();
        p.offset = 0;
      }
      if (!p.chunks.length) {
        this.#pending = null;
        p.cb();
        return;
      }
      // Ring full: ask the peer to notify us when it reads, then look once more.
      const [open, , space] = this.#b.vchan.state(this.#h) as number[];
      if (open !== 1) {
        this.#pending = null;
        p.cb(systemError('EPIPE', -32, 'libxenvchan_write', 'the peer has closed the channel'));
        return;
      }
      if (space === 0) return;
    }
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
    const path = checkXsPath('options.path', o.path);
    const readMin = o.readMin === undefined ? 65536 : checkInt('options.readMin', o.readMin, 0, MAX_RING);
    const writeMin = o.writeMin === undefined ? 65536 : checkInt('options.writeMin', o.writeMin, 0, MAX_RING);
    if (o.mockDomid !== undefined) checkDomid('options.mockDomid', o.mockDomid);
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
    this.#waiting = null;
    this.#b.vchan.poll(h, null);
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
  const path = checkXsPath('options.path', o.path);
  const timeout = o.timeout === undefined ? undefined : checkInt('options.timeout', o.timeout, 0, 2 ** 31 - 1);
  const signal = o.signal as AbortSignal | undefined;
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalidArgType('options.signal', 'an instance of AbortSignal', signal);
  const mockDomid = o.mockDomid === undefined ? undefined : checkDomid('options.mockDomid', o.mockDomid);
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
      // Each event (the first fires at once) may mean the server is there: try.
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
