/**
 * A vchan with a half-close: xen-vchan's framing protocol over a {@link VchanStream}.
 *
 * A vchan has no half-close: a byte stream that ends in one direction ends the channel. When both
 * ends are this library (the two halves of the proxy, `xen-vchan listen` and `connect`), they speak
 * a small framing protocol over it (as Qubes' qrexec does), in which each direction ends on its
 * own. Frames are a 5-byte header, type (u8) and payload length (u32, little-endian), then the
 * payload:
 *
 * ```text
 * 1 HELLO  {"v":1} (JSON, at most 256 bytes)      the first frame each side sends
 * 2 DATA   1 to 65536 bytes of the connection
 * 3 EOF    no payload: this direction has ended (the socket's FIN)
 * 4 ERROR  {"code":"ECONNREFUSED","message":"..."} (JSON, at most 4096 bytes): the connection failed
 * ```
 *
 * The channel closes once both directions have ended; a frame of another type, longer than its
 * limit, a DATA after EOF or a first frame that is not HELLO v1 fails the connection with EPROTO.
 */
import { constants as osConstants } from 'node:os';
import { Duplex } from 'node:stream';

import { systemError } from './errors';
import type { VchanStream } from './vchan';

/** The frame types of the framing protocol. */
export const FrameType = {
  /** `{"v":1}`: the first frame each side sends. */
  HELLO: 1,
  /** 1 to MAX_DATA bytes of the connection. */
  DATA: 2,
  /** No payload: this direction has ended (the socket's FIN). */
  EOF: 3,
  /** `{"code","message"}`: the connection failed. */
  ERROR: 4,
} as const;
/** The protocol version HELLO carries. */
export const PROXY_VERSION = 1;
/** The largest DATA payload, bytes. */
export const MAX_DATA = 65536;
const HEADER = 5;
const LIMIT: Record<number, number> = { 1: 256, 2: MAX_DATA, 3: 0, 4: 4096 };
/** How long a failed connection's ERROR frame may wait for a peer that reads nothing more, ms. */
const ERROR_LINGER_MS = 5000;

/** One frame of the framing protocol, as bytes. */
export function encodeFrame(type: number, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(HEADER + payload.length);
  b[0] = type;
  b.writeUInt32LE(payload.length, 1);
  b.set(payload, HEADER);
  return b;
}

/**
 * Splits a byte stream into frames, whatever the chunks' boundaries; throws EPROTO on a frame no
 * sender of this protocol makes. A frame is never buffered past its type's limit.
 */
export class FrameParser {
  /** What has come and is not yet a whole frame, as it came: each byte is copied at most once. */
  #chunks: Buffer[] = [];
  #have = 0;

  /**
   * Calls ON for every whole frame in what has come so far, CHUNK included. A frame's header is
   * checked as soon as it is whole (EPROTO), before its payload arrives. The work is linear in
   * the bytes however they are split: a peer trickling a frame a byte at a time costs no more.
   */
  push(chunk: Buffer, on: (type: number, payload: Buffer) => void): void {
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#have += chunk.length;
    }
    while (this.#have >= HEADER) {
      const head = this.#front(HEADER);
      const type = head[0];
      const len = head.readUInt32LE(1);
      const limit = LIMIT[type];
      if (limit === undefined) throw systemError('EPROTO', 'read', `vchan framing: unknown frame type ${type}`);
      if (len > limit || (type === FrameType.DATA && len === 0))
        throw systemError('EPROTO', 'read', `vchan framing: a frame of type ${type} with ${len} bytes`);
      if (this.#have < HEADER + len) return;
      on(type, this.#take(HEADER + len).subarray(HEADER));
    }
  }

  /** The first N bytes (N <= what has come), joining the first chunks into one if they must. */
  #front(n: number): Buffer {
    if (this.#chunks[0].length < n) {
      let k = 0;
      for (let got = 0; got < n; k++) got += this.#chunks[k].length;
      this.#chunks.splice(0, k, Buffer.concat(this.#chunks.slice(0, k)));
    }
    return this.#chunks[0];
  }

  /** Removes and returns the first N bytes (N <= what has come): a view when one chunk holds them. */
  #take(n: number): Buffer {
    this.#have -= n;
    const first = this.#chunks[0];
    if (first.length >= n) {
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    // One pass and one splice: shift() per chunk moves the whole list each time (quadratic in the
    // number of chunks, which a peer sending a byte at a time controls).
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    let k = 0;
    while (off < n) {
      const c = this.#chunks[k];
      const m = Math.min(c.length, n - off);
      c.copy(out, off, 0, m);
      off += m;
      if (m === c.length) k++;
      else this.#chunks[k] = c.subarray(m);
    }
    this.#chunks.splice(0, k);
    return out;
  }
}

function hello(): Buffer {
  return encodeFrame(FrameType.HELLO, Buffer.from(JSON.stringify({ v: PROXY_VERSION })));
}

function errorFrame(e: NodeJS.ErrnoException): Buffer {
  const body = JSON.stringify({ code: e.code ?? 'EIO', message: e.message.slice(0, 1024) });
  return encodeFrame(FrameType.ERROR, Buffer.from(body));
}

/** An error the peer reported in an ERROR frame, as an errno-shaped error of ours. */
function peerError(payload: Buffer, what: string): Error {
  let code = 'EIO';
  let message = '';
  try {
    const j = JSON.parse(payload.toString('utf8')) as { code?: unknown; message?: unknown };
    if (typeof j.code === 'string' && /^E[A-Z0-9]{1,20}$/.test(j.code)) code = j.code;
    if (typeof j.message === 'string') message = j.message;
  } catch {
    // a malformed report is still a report that the connection failed
  }
  const e = new Error(
    `${what}: the other side failed: ${code}${message ? `: ${message}` : ''}`,
  ) as NodeJS.ErrnoException;
  e.code = code;
  const errno = (osConstants.errno as Record<string, number>)[code];
  if (errno !== undefined) e.errno = -errno;
  e.syscall = 'connect';
  return e;
}

/**
 * The framing protocol over one channel, as a Duplex with a half-close (allowHalfOpen): what is
 * written goes out as DATA frames, end() sends EOF, the peer's DATA is what is read and its EOF is
 * 'end'. The channel closes once both directions have ended, after everything written has gone
 * into the ring (the peer still reads it after the close); 'close' follows. destroy(err) tells the
 * peer in an ERROR frame; a peer's ERROR, a protocol violation, and a channel that closes before
 * both directions have ended fail the stream (ECONNRESET for the last: data may be missing).
 */
export class FramedStream extends Duplex {
  readonly #v: VchanStream;
  readonly #what: string;
  readonly #parser = new FrameParser();
  #greeted = false;
  #sentEof = false;
  #gotEof = false;
  #peerFull = false;
  /** The failure came from the channel or the peer: nothing to tell the peer. */
  #quiet = false;

  /** WHAT names the connection in error messages. */
  constructor(v: VchanStream, what = 'vchan framing') {
    super({ allowHalfOpen: true, autoDestroy: true, emitClose: true });
    this.#v = v;
    this.#what = what;
    v.write(hello());
    v.on('data', (chunk: Buffer) => {
      if (this.destroyed) return;
      try {
        this.#parser.push(chunk, (type, payload) => this.#onFrame(type, payload));
      } catch (e) {
        this.destroy(e as Error);
      }
    });
    v.on('error', (e) => this.#fail(e));
    v.on('close', () => {
      // After both ends of data the stream ends on its own, once its reader has had everything.
      if (this.destroyed || (this.#sentEof && this.#gotEof)) return;
      this.#fail(
        systemError(
          'ECONNRESET',
          'read',
          this.#gotEof
            ? `${this.#what}: the peer closed the channel before all we sent had reached it`
            : `${this.#what}: the channel closed before the peer's end of data`,
        ),
      );
    });
  }

  /** The channel underneath. */
  get channel(): VchanStream {
    return this.#v;
  }

  /** Fails the stream with an error the channel or the peer gave: the peer is not told. */
  #fail(e: Error): void {
    this.#quiet = true;
    this.destroy(e);
  }

  #onFrame(type: number, payload: Buffer): void {
    if (this.destroyed) return;
    if (!this.#greeted) {
      let ok = false;
      try {
        ok = type === FrameType.HELLO && (JSON.parse(payload.toString()) as { v?: unknown }).v === PROXY_VERSION;
      } catch {
        // not JSON
      }
      if (!ok)
        throw systemError('EPROTO', 'read', `${this.#what}: the peer does not speak xen-vchan's framing protocol v1`);
      this.#greeted = true;
      return;
    }
    switch (type) {
      case FrameType.DATA:
        if (this.#gotEof) throw systemError('EPROTO', 'read', `${this.#what}: data after EOF`);
        // A copy: the parser's buffer may be a pooled chunk the channel reuses.
        if (!this.push(Buffer.from(payload)) && !this.#peerFull) {
          this.#peerFull = true;
          this.#v.pause();
        }
        break;
      case FrameType.EOF:
        if (this.#gotEof) throw systemError('EPROTO', 'read', `${this.#what}: a second EOF`);
        this.#gotEof = true;
        this.push(null);
        this.#maybeDone();
        break;
      case FrameType.ERROR:
        this.#fail(peerError(payload, this.#what));
        break;
      default:
        throw systemError('EPROTO', 'read', `${this.#what}: a HELLO after HELLO`);
    }
  }

  /** Both directions have ended: the channel closes once what is queued is in the ring. */
  #maybeDone(): void {
    if (this.#sentEof && this.#gotEof && !this.#v.writableEnded) this.#v.end();
  }

  /** @internal Node's stream hook. */
  override _read(): void {
    if (this.#peerFull) {
      this.#peerFull = false;
      this.#v.resume();
    }
  }

  /** @internal Node's stream hook. */
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    let ok = true;
    for (let off = 0; off < chunk.length; off += MAX_DATA)
      ok = this.#v.write(encodeFrame(FrameType.DATA, chunk.subarray(off, off + MAX_DATA)));
    if (ok) cb();
    else this.#v.once('drain', () => cb());
  }

  /** @internal Node's stream hook. */
  override _final(cb: (err?: Error | null) => void): void {
    this.#sentEof = true;
    this.#v.write(encodeFrame(FrameType.EOF));
    this.#maybeDone();
    cb();
  }

  /** @internal Node's stream hook. */
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const v = this.#v;
    if (!err) {
      // Both directions ended: the channel is ending on its own; 'close' waits for it.
      if (v.closed) cb(null);
      else v.once('close', () => cb(null));
      if (!v.writableEnded) v.end();
      return;
    }
    if (this.#quiet || !v.writable) {
      v.destroy();
    } else {
      // Our side failed, or the peer broke the protocol: the peer hears why, after what is
      // queued; a peer that reads nothing more does not hold the channel open past a few seconds.
      v.end(errorFrame(err as NodeJS.ErrnoException));
      const t = setTimeout(() => v.destroy(), ERROR_LINGER_MS).unref();
      v.once('close', () => clearTimeout(t));
    }
    // What still comes is dropped: reading on lets the channel end (it may be paused).
    v.resume();
    cb(err);
  }
}
