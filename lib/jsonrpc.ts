/**
 * JSON requests and replies over a byte stream (a VchanStream, or any Duplex): the layer the PCI
 * daemon (pcid) is built on, for protocols of your own too.
 *
 * Each message is one JSON object followed by `\r\n`, as Xen's pcid series and QEMU's QMP frame
 * them; messages are split and joined across any chunking. The client gives every request an `id`
 * (an integer, unique on the channel) that the server echoes unchanged, so many requests can be in
 * flight on one channel and their replies come back in any order. A reply without an `id` (a server
 * that does not echo ids, such as pcid v4) answers the oldest request still unanswered.
 *
 * Both sides enforce a maximum message size (1 MiB by default): a client that gets a longer reply
 * fails every request in flight with EMSGSIZE and closes the channel; a server that gets a longer
 * request closes that channel. Backpressure both ways: a client has at most `maxInFlight` requests
 * on the wire (the rest wait their turn, unwritten), and a server stops reading while it has
 * `concurrency` requests being handled or its replies are not being read.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { debuglog } from 'node:util';

import { abortError, checkInt, checkObject, coded, invalidArgType, systemError } from './errors';

const debug = debuglog('xen-vchan');

/** The default largest message, bytes (the `\r\n` included), as pcid's receive buffer limit. */
export const JSON_MAX_MESSAGE = 1 << 20;
const EOM = Buffer.from('\r\n');

/**
 * Splits a byte stream into `\r\n`-terminated messages, whatever the chunks' boundaries; throws
 * EMSGSIZE as soon as a message is longer than MAX (never buffering more than that).
 */
export class MessageSplitter {
  readonly #max: number;
  #parts: Buffer[] = [];
  #len = 0;

  constructor(max = JSON_MAX_MESSAGE) {
    this.#max = max;
  }

  /** Calls ON with every whole message (without its `\r\n`) in what has come so far. */
  push(chunk: Buffer, on: (message: Buffer) => void): void {
    let buf = chunk;
    // A `\r` that ended the previous chunk may pair with a `\n` that starts this one.
    let from = 0;
    if (this.#len > 0) {
      const last = this.#parts[this.#parts.length - 1];
      if (last[last.length - 1] === 0x0d && buf[0] === 0x0a) {
        const whole = Buffer.concat(this.#parts, this.#len);
        this.#parts = [];
        this.#len = 0;
        this.#emit(whole.subarray(0, whole.length - 1), on);
        from = 1;
      }
    }
    for (;;) {
      const i = buf.indexOf(EOM, from);
      if (i < 0) break;
      const piece = buf.subarray(from, i);
      if (this.#len > 0) {
        const whole = Buffer.concat([...this.#parts, piece], this.#len + piece.length);
        this.#parts = [];
        this.#len = 0;
        this.#emit(whole, on);
      } else {
        this.#emit(piece, on);
      }
      from = i + 2;
    }
    if (from < buf.length) {
      buf = buf.subarray(from);
      if (this.#len + buf.length > this.#max) throw tooBig(this.#len + buf.length, this.#max);
      this.#parts.push(buf);
      this.#len += buf.length;
    }
  }

  /** Bytes held of a message not yet whole. */
  get pending(): number {
    return this.#len;
  }

  #emit(message: Buffer, on: (message: Buffer) => void): void {
    if (message.length + 2 > this.#max) throw tooBig(message.length + 2, this.#max);
    on(message);
  }
}

function tooBig(n: number, max: number): Error {
  return systemError('EMSGSIZE', 'read', `a JSON message of more than ${max} bytes (${n} so far)`);
}

/** A message as bytes: JSON and `\r\n`; EMSGSIZE when longer than MAX. */
export function encodeMessage(msg: unknown, max = JSON_MAX_MESSAGE): Buffer {
  const b = Buffer.from(`${JSON.stringify(msg)}\r\n`);
  if (b.length > max) throw systemError('EMSGSIZE', 'write', `a JSON message of ${b.length} bytes (most: ${max})`);
  return b;
}

/**
 * The JSON text of the last top-level "id" member of TEXT (a JSON object that JSON.parse took), as
 * the sender wrote it; undefined when there is none. A reply echoes this text, so that an id comes
 * back byte for byte: numbers beyond 2^53 and strings with escapes included.
 */
export function rawIdText(text: string): string | undefined {
  let depth = 0;
  let found: string | undefined;
  let i = 0;
  const n = text.length;
  /** The index just past the string that starts at J (a '"'). */
  const endOfString = (j: number) => {
    for (j++; j < n; j++) {
      const c = text.charCodeAt(j);
      if (c === 0x5c) j++;
      else if (c === 0x22) return j + 1;
    }
    return n;
  };
  /** The index just past the value that starts at J (depth 1), skipping nested values. */
  const endOfValue = (j: number) => {
    let d = 0;
    for (; j < n; j++) {
      const c = text[j];
      if (c === '"') {
        j = endOfString(j) - 1;
        if (d === 0) return j + 1;
      } else if (c === '{' || c === '[') d++;
      else if (c === '}' || c === ']') {
        if (d === 0) return j;
        if (--d === 0) return j + 1;
      } else if (c === ',' && d === 0) return j;
    }
    return n;
  };
  let expectKey = false;
  while (i < n) {
    const c = text[i];
    if (c === '"') {
      const end = endOfString(i);
      if (depth === 1 && expectKey) {
        const key = JSON.parse(text.slice(i, end)) as string;
        let j = end;
        while (j < n && text[j] !== ':') j++;
        j++;
        while (j < n && /\s/.test(text[j])) j++;
        const vEnd = endOfValue(j);
        if (key === 'id') found = text.slice(j, vEnd).trimEnd();
        i = vEnd;
        expectKey = false;
        continue;
      }
      i = end;
      continue;
    }
    if (c === '{') {
      depth++;
      if (depth === 1) expectKey = true;
    } else if (c === '}' || c === ']') depth--;
    else if (c === '[') depth++;
    else if (c === ',' && depth === 1) expectKey = true;
    i++;
  }
  return found;
}

/** The reply REPLY as bytes, its `id` member the sender's own text RAWID. */
function encodeReply(reply: Record<string, unknown>, rawId: string, max: number): Buffer {
  const { id: _ours, ...rest } = reply;
  const body = JSON.stringify(rest);
  const b = Buffer.from(`${body.length > 2 ? `${body.slice(0, -1)},` : '{'}"id":${rawId}}\r\n`);
  if (b.length > max) throw systemError('EMSGSIZE', 'write', `a JSON message of ${b.length} bytes (most: ${max})`);
  return b;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export interface JsonClientOptions {
  /** Largest message either way, bytes. Default 1 MiB. */
  maxMessage?: number;
  /** Requests on the wire at once; the rest wait, unwritten. Default 64. */
  maxInFlight?: number;
  /** Default timeout of each request, ms (ETIMEDOUT). Default none. */
  timeout?: number;
}

export interface RequestOptions {
  /** Give up on this request after this many ms (ETIMEDOUT); its reply is dropped if it comes. */
  timeout?: number;
  signal?: AbortSignal;
}

interface Pending {
  id: number;
  msg: Record<string, unknown>;
  resolve: (v: Record<string, unknown>) => void;
  reject: (e: Error) => void;
  timer?: NodeJS.Timeout;
  onAbort?: () => void;
  signal?: AbortSignal;
  done: boolean;
  written: boolean;
}

/**
 * The requesting side. Emits 'error' when the channel fails (every request in flight is rejected
 * with that error first), 'unmatched' for a reply that answers nothing, and 'close'.
 */
export class JsonClient extends EventEmitter<{ error: [Error]; unmatched: [unknown]; close: [] }> {
  readonly #stream: Duplex;
  readonly #max: number;
  readonly #maxInFlight: number;
  readonly #timeout: number | undefined;
  readonly #splitter: MessageSplitter;
  /** Written and not yet answered (abandoned ones too, until answered: id-less replies go in order). */
  readonly #sent = new Map<number, Pending>();
  readonly #queue: Pending[] = [];
  #nextId = 1;
  #inFlight = 0;
  #blocked = false;
  #failed: Error | null = null;

  constructor(stream: Duplex, options: JsonClientOptions = {}) {
    super();
    const o = checkObject('options', options);
    this.#max =
      o.maxMessage === undefined ? JSON_MAX_MESSAGE : checkInt('options.maxMessage', o.maxMessage, 64, 2 ** 30);
    this.#maxInFlight = o.maxInFlight === undefined ? 64 : checkInt('options.maxInFlight', o.maxInFlight, 1, 65536);
    this.#timeout = o.timeout === undefined ? undefined : checkInt('options.timeout', o.timeout, 0, 2 ** 31 - 1);
    this.#stream = stream;
    this.#splitter = new MessageSplitter(this.#max);
    stream.on('data', (chunk: Buffer) => {
      try {
        this.#splitter.push(chunk, (m) => this.#reply(m));
      } catch (e) {
        this.#fail(e as Error);
      }
    });
    stream.on('error', (e) => this.#fail(e));
    stream.on('close', () => {
      this.#fail(coded('The channel closed', 'ERR_XEN_CLOSED'));
      this.emit('close');
    });
    stream.on('drain', () => {
      this.#blocked = false;
      this.#pump();
    });
  }

  /** Requests written and not yet answered, and requests waiting to be written. */
  get pending(): { inFlight: number; queued: number } {
    return { inFlight: this.#inFlight, queued: this.#queue.length };
  }

  /**
   * Sends MSG (an object; its `id` is set here) and resolves with the reply object. Rejects with
   * ETIMEDOUT, AbortError, EMSGSIZE (a request or reply too long) or the channel's error.
   */
  request<T extends Record<string, unknown> = Record<string, unknown>>(
    msg: Record<string, unknown>,
    options: RequestOptions = {},
  ): Promise<T> {
    if (!isObject(msg)) return Promise.reject(invalidArgType('msg', 'an object', msg));
    const o = checkObject('options', options);
    const timeout = o.timeout === undefined ? this.#timeout : checkInt('options.timeout', o.timeout, 0, 2 ** 31 - 1);
    const signal = o.signal as AbortSignal | undefined;
    if (signal !== undefined && !(signal instanceof AbortSignal))
      return Promise.reject(invalidArgType('options.signal', 'an instance of AbortSignal', signal));
    if (this.#failed) return Promise.reject(this.#failed);
    if (signal?.aborted) return Promise.reject(abortError(signal));
    return new Promise<T>((resolve, reject) => {
      const p: Pending = {
        id: this.#nextId++,
        msg,
        resolve: resolve as (v: Record<string, unknown>) => void,
        reject,
        done: false,
        written: false,
        signal,
      };
      if (timeout !== undefined)
        p.timer = setTimeout(
          () => this.#settle(p, systemError('ETIMEDOUT', 'request', `no reply within ${timeout} ms`)),
          timeout,
        );
      if (signal) {
        p.onAbort = () => this.#settle(p, abortError(signal));
        signal.addEventListener('abort', p.onAbort, { once: true });
      }
      this.#queue.push(p);
      this.#pump();
    });
  }

  /** Writes queued requests while the window and the stream have room. */
  #pump(): void {
    while (!this.#blocked && this.#queue.length > 0 && this.#inFlight < this.#maxInFlight) {
      const p = this.#queue.shift()!;
      if (p.done) continue;
      let bytes: Buffer;
      try {
        bytes = encodeMessage({ ...p.msg, id: p.id }, this.#max);
      } catch (e) {
        this.#settle(p, e as Error);
        continue;
      }
      this.#sent.set(p.id, p);
      p.written = true;
      this.#inFlight++;
      // Requests given up on stay here until answered (a reply without an id answers the oldest),
      // but not without bound: past that, the oldest given up on are forgotten.
      if (this.#sent.size > 4 * this.#maxInFlight)
        for (const [id, q] of this.#sent) {
          if (this.#sent.size <= 2 * this.#maxInFlight) break;
          if (q.done) this.#sent.delete(id);
        }
      if (!this.#stream.write(bytes)) this.#blocked = true;
    }
  }

  #reply(raw: Buffer): void {
    let msg: unknown;
    try {
      msg = JSON.parse(raw.toString('utf8'));
    } catch {
      debug('json client: a reply that is not JSON (%d bytes)', raw.length);
      this.emit('unmatched', raw.toString('utf8'));
      return;
    }
    let p: Pending | undefined;
    if (isObject(msg) && typeof msg.id === 'number') p = this.#sent.get(msg.id);
    else if (isObject(msg) && msg.id === undefined) p = this.#sent.values().next().value; // in order
    if (!p || !isObject(msg)) {
      this.emit('unmatched', msg);
      return;
    }
    this.#sent.delete(p.id);
    if (!p.done) {
      const reply = { ...msg };
      this.#settle(p, null, reply);
    }
    this.#pump();
  }

  #settle(p: Pending, err: Error | null, value?: Record<string, unknown>): void {
    if (p.done) return;
    p.done = true;
    if (p.written) this.#inFlight--;
    if (p.timer) clearTimeout(p.timer);
    if (p.onAbort) p.signal?.removeEventListener('abort', p.onAbort);
    if (err) p.reject(err);
    else p.resolve(value!);
    // One that was never written leaves no trace; a written one stays in #sent until answered.
  }

  #fail(e: Error): void {
    if (this.#failed) return;
    this.#failed = e;
    for (const p of [...this.#sent.values(), ...this.#queue]) this.#settle(p, e);
    this.#sent.clear();
    this.#queue.length = 0;
    if (!this.#stream.destroyed) this.#stream.destroy();
    if ((e as { code?: string }).code !== 'ERR_XEN_CLOSED' && this.listenerCount('error') > 0) this.emit('error', e);
  }

  /** Ends the channel: requests in flight fail with ERR_XEN_CLOSED. */
  close(): void {
    this.#stream.end();
    this.#stream.destroy();
  }
}

export interface JsonServeOptions {
  /** Largest message either way, bytes: a longer request closes the channel. Default 1 MiB. */
  maxMessage?: number;
  /** Requests handled at once; reading stops while this many are. Default 16. */
  concurrency?: number;
  /**
   * The reply to a message that is not a JSON object (TEXT as received); undefined sends none.
   * Default: none.
   */
  malformed?: (text: string, error: Error) => Record<string, unknown> | undefined;
  /** Called when the channel fails (an oversize request, a write error). */
  onError?: (e: Error) => void;
}

/**
 * Serves JSON requests on STREAM: HANDLER gets each request object and returns (or resolves with)
 * the reply object; the request's `id`, if any, is echoed in it. A handler that throws gets the
 * reply `{ error: message }` (protocols with their own error shape catch it themselves).
 */
export function serveJson(
  stream: Duplex,
  handler: (request: Record<string, unknown>) => Record<string, unknown> | Promise<Record<string, unknown>>,
  options: JsonServeOptions = {},
): { close(): void } {
  if (typeof handler !== 'function') throw invalidArgType('handler', 'of type function', handler);
  const o = checkObject('options', options);
  const max = o.maxMessage === undefined ? JSON_MAX_MESSAGE : checkInt('options.maxMessage', o.maxMessage, 64, 2 ** 30);
  const concurrency = o.concurrency === undefined ? 16 : checkInt('options.concurrency', o.concurrency, 1, 65536);
  const malformed = o.malformed as JsonServeOptions['malformed'];
  const onError = o.onError as JsonServeOptions['onError'];
  const splitter = new MessageSplitter(max);
  const waiting: Buffer[] = [];
  let active = 0;
  let replyBlocked = false;
  let failed = false;

  const fail = (e: Error) => {
    if (failed) return;
    failed = true;
    debug('json server: %s', e.message);
    onError?.(e);
    stream.destroy();
  };
  const flow = () => {
    if (failed) return;
    while (waiting.length > 0 && active < concurrency && !replyBlocked) handle(waiting.shift()!);
    if (active < concurrency && !replyBlocked && waiting.length === 0) stream.resume();
    else stream.pause();
  };
  /** Sends REPLY; RAWID, the request's id as its sender wrote it, goes back in it unchanged. */
  const send = (reply: Record<string, unknown>, rawId?: string) => {
    if (failed || stream.destroyed) return;
    const encode = (r: Record<string, unknown>) =>
      rawId === undefined ? encodeMessage(r, max) : encodeReply(r, rawId, max);
    let bytes: Buffer;
    try {
      bytes = encode(reply);
    } catch (e) {
      bytes = encode({ error: (e as Error).message });
    }
    if (!stream.write(bytes) && !replyBlocked) {
      replyBlocked = true;
      stream.once('drain', () => {
        replyBlocked = false;
        flow();
      });
    }
  };
  // Replies to messages without an id (a client that does not send them matches replies by order,
  // as pcid v4's do) leave in the order the messages came; replies with ids leave when ready.
  const inOrder: { reply?: Record<string, unknown>; ready: boolean }[] = [];
  const flushInOrder = () => {
    while (inOrder.length > 0 && inOrder[0].ready) {
      const r = inOrder.shift()!.reply;
      if (r) send(r);
    }
  };
  const handle = (raw: Buffer) => {
    let text = '';
    let msg: unknown;
    try {
      // Bytes that are not UTF-8 make a bad message, never one decoded with U+FFFD in their place.
      try {
        text = strictUtf8.decode(raw);
      } catch {
        throw new SyntaxError('not valid UTF-8');
      }
      try {
        msg = JSON.parse(text);
      } catch {
        // (V8's own message quotes the sender's text; ours does not.)
        throw new SyntaxError('not valid JSON');
      }
      if (!isObject(msg)) throw new SyntaxError('not a JSON object');
    } catch (e) {
      inOrder.push({ reply: malformed?.(text, e as Error), ready: true });
      flushInOrder();
      return;
    }
    const request = msg;
    const rawId = request.id === undefined ? undefined : rawIdText(text);
    const slot: { reply?: Record<string, unknown>; ready: boolean } | null =
      request.id === undefined ? { ready: false } : null;
    if (slot) inOrder.push(slot);
    const reply = (r: Record<string, unknown>) => {
      if (!slot) return send(r, rawId);
      slot.reply = r;
      slot.ready = true;
      flushInOrder();
    };
    active++;
    Promise.resolve()
      .then(() => handler(request))
      .then(
        (r) => reply(isObject(r) ? r : { result: r }),
        (e: Error) => reply({ error: e instanceof Error ? e.message : String(e) }),
      )
      .finally(() => {
        active--;
        flow();
      });
  };

  stream.on('data', (chunk: Buffer) => {
    try {
      splitter.push(chunk, (m) => waiting.push(m));
    } catch (e) {
      fail(e as Error);
      return;
    }
    flow();
  });
  stream.on('error', (e) => fail(e));
  return {
    close() {
      stream.end();
    },
  };
}
