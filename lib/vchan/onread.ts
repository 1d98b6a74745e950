/**
 * The onread option of a stream: data handed to a callback, copied into one reusable buffer or
 * read in place from the ring, instead of 'data' events.
 */
import { checkObject, coded, invalidArgType, outOfRange } from '../errors';
import type { Binding, VchanHandle } from '../native';

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
 *
 * Which is faster: a view saves the receiver's copy, so it costs the least CPU per byte, and at
 * rings much larger than the writes it moves the most (1 MiB ring, 64 KiB writes: about C
 * libxenvchan's speed, against 0.7x with a buffer). But a view's bytes go back to the peer only when
 * its callback returns, so the peer cannot refill that part meanwhile; the copying form hands the
 * ring back piece by piece as it copies, and at rings no larger than the writes (64 KiB and 64 KiB)
 * it is the faster of the two, about 3x (bench/RESULTS.md).
 */
export type VchanOnread = VchanOnreadBuffer | VchanOnreadView;

/** onread with a buffer: each chunk is copied into it (see VchanOnread). */
export interface VchanOnreadBuffer {
  /** Copies into `buffer` (the default). */
  view?: false;
  /** The buffer to read into, or a function returning it (called before every read). */
  buffer: Uint8Array | (() => Uint8Array);
  /** Called for each chunk with its length and the buffer holding it at offset 0. Return false to pause(). */
  callback: (nread: number, buffer: Uint8Array) => boolean | void;
}

/** onread with views: the callback reads the ring in place (see VchanOnread). */
export interface VchanOnreadView {
  /** Zero copy: the callback reads the ring's own pages (see {@link VchanOnread}). */
  view: true;
  /**
   * Called for each chunk with its length and a view of exactly those bytes (a Buffer; typed as in
   * the copying form, so one callback type serves both). Return false to pause().
   */
  callback: (nread: number, view: Uint8Array) => boolean | void;
}

/** @internal */
export function checkOnread(v: unknown): VchanOnread | undefined {
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

/**
 * One read for an onread consumer: hands what the ring holds to its callback (pausing STREAM when
 * the callback returns false) and returns the bytes handed over (> 0), or what the read returned
 * (0: nothing now; < 0: the peer is gone and the ring empty). COUNTED sees the bytes before the
 * callback does. A view is detached and its bytes given back to the peer when the callback
 * returns or throws, whatever it did, unless it closed the stream (OPEN() false: the ring is gone).
 *
 * @internal
 */
export function readOnread(
  b: Binding,
  h: VchanHandle,
  onread: VchanOnread,
  readSize: number,
  stream: { pause(): unknown },
  counted: (n: number) => void,
  open: () => boolean,
): number {
  if (onread.view === true) {
    const r = b.vchan.view(h);
    if (typeof r === 'number') return r;
    const n = r.byteLength;
    counted(n);
    let more: boolean | void;
    try {
      more = onread.callback.call(undefined, n, Buffer.from(r));
    } finally {
      if (open()) b.vchan.release(h);
    }
    if (more === false) stream.pause();
    return n;
  }
  const buf = typeof onread.buffer === 'function' ? onread.buffer() : onread.buffer;
  if (!(buf instanceof Uint8Array) || buf.byteLength === 0)
    throw coded(
      'options.onread.buffer() must return a non-empty Buffer or Uint8Array',
      'ERR_INVALID_RETURN_VALUE',
      TypeError,
    );
  const n: number = b.vchan.read(h, buf, 0, Math.min(buf.byteLength, readSize));
  if (n <= 0) return n;
  counted(n);
  if (onread.callback.call(undefined, n, buf) === false) stream.pause();
  return n;
}
