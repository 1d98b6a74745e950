/** JsonClient: requests with ids on one channel, many in flight, replies in any order. */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { debuglog } from 'node:util';

import { abortError, checkInt, checkObject, coded, invalidArgType, systemError } from '../errors';
import { encodeMessage, isObject, JSON_MAX_MESSAGE, MessageSplitter } from './framing';

const debug = debuglog('xen-vchan');

/** Options of {@link JsonClient}. */
export interface JsonClientOptions {
  /** Largest message either way, bytes. Default 1 MiB. */
  maxMessage?: number;
  /** Requests on the wire at once; the rest wait, unwritten. Default 64. */
  maxInFlight?: number;
  /** Default timeout of each request, ms (ETIMEDOUT). Default none. */
  timeout?: number;
}

/** Options of one {@link JsonClient.request}. */
export interface RequestOptions {
  /** Give up on this request after this many ms (ETIMEDOUT); its reply is dropped if it comes. */
  timeout?: number;
  /** Give up on this request when it aborts (AbortError); its reply is dropped if it comes. */
  signal?: AbortSignal;
}

/** The events of a {@link JsonClient}. */
export interface JsonClientEvents {
  /** The channel failed; every request in flight was rejected with this error first. */
  error: [Error];
  /** A reply that answers no request (its id unknown, or nothing outstanding). */
  unmatched: [unknown];
  /** The channel has closed. */
  close: [];
}

/** What {@link JsonClient.pending} counts. */
export interface JsonClientPending {
  /** Requests written and not yet answered. */
  inFlight: number;
  /** Requests waiting to be written (maxInFlight reached). */
  queued: number;
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

/** The requesting side; see {@link JsonClientEvents} for what it emits. */
export class JsonClient extends EventEmitter<JsonClientEvents> {
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
  get pending(): JsonClientPending {
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
