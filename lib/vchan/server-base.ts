/**
 * What VchanServer and VchanMultiServer share: net.Server's lifecycle (listen with a callback or
 * an AbortSignal, close once the connections have ended, ref/unref, await using) around what each
 * does to start serving and to stop.
 */
import { EventEmitter } from 'node:events';

import { checkObject, coded, invalidArgType } from '../errors';
import type { VchanStream } from './stream';

/** The events of a vchan server: 'listening', 'connection', 'clientError', 'error', 'close'. */
export interface VchanServerEvents {
  /** The server is serving. */
  listening: [];
  /** A client attached: its stream. */
  connection: [VchanStream];
  /** A client broke the protocol as it connected; that connection is dropped, serving goes on. */
  clientError: [Error];
  /** The server cannot serve (the path held, xenstore gone); it stops listening. */
  error: [Error];
  /** The server has closed and its connections have ended. */
  close: [];
}

/*
 * The hooks a server implements, and what it reads of the base: keyed by symbols this package does
 * not export, so none of them is a method or property a user can reach (or a fuzzer call).
 */
/** @internal */ export const kStart = Symbol('start');
/** @internal */ export const kServe = Symbol('serve');
/** @internal */ export const kTeardown = Symbol('teardown');
/** @internal */ export const kConnected = Symbol('connected');
/** @internal */ export const kFinish = Symbol('finish');
/** @internal */ export const kSetRef = Symbol('setRef');
/** @internal */ export const kStop = Symbol('stop');
/** @internal */ export const kClosed = Symbol('closed');
/** @internal */ export const kRefed = Symbol('refed');

/**
 * The lifecycle both vchan servers share. A subclass says how it starts (claims its path and
 * readies itself: start), what it does once listening (serve), how it gives everything up
 * (teardown), whether it has connections, when it may emit 'close' (finish) and what ref/unref
 * reach (setRef).
 */
export abstract class VchanServerBase extends EventEmitter<VchanServerEvents> {
  #listening = false;
  #starting = false;
  #closed = false;
  #refed = true;

  /** @internal */
  constructor(onConnection?: (s: VchanStream) => void) {
    super();
    if (onConnection !== undefined) {
      if (typeof onConnection !== 'function') throw invalidArgType('onConnection', 'of type function', onConnection);
      this.on('connection', onConnection);
    }
  }

  /** Whether the server is serving (between 'listening' and close() or 'error'). */
  get listening(): boolean {
    return this.#listening;
  }

  /** @internal close() has been called. */
  protected get [kClosed](): boolean {
    return this.#closed;
  }

  /** @internal What ref()/unref() said last (the default: ref). */
  protected get [kRefed](): boolean {
    return this.#refed;
  }

  /**
   * Claims the path and starts serving; 'listening' follows, or 'error' (EADDRINUSE when another
   * server of this domain holds the path). As net.Server's: a callback for 'listening', and an
   * options object whose `signal` closes the server when aborted. ERR_SERVER_ALREADY_LISTEN while
   * listening, ERR_SERVER_NOT_RUNNING once closed.
   */
  listen(cb?: () => void): this;
  listen(options: { signal?: AbortSignal }, cb?: () => void): this;
  listen(optionsOrCb?: { signal?: AbortSignal } | (() => void), cb?: () => void): this {
    if (!beginListen(this, { closed: this.#closed, busy: this.#listening || this.#starting }, optionsOrCb, cb))
      return this;
    this.#starting = true;
    this[kStart]().then(
      () => {
        this.#starting = false;
        if (this.#closed) return;
        this.#listening = true;
        this[kServe]();
      },
      (e: Error) => {
        this.#starting = false;
        this[kStop]();
        if (!this.#closed) this.emit('error', e);
      },
    );
    return this;
  }

  /** @internal Claims the path and readies the server (after close(), gives back what it got). */
  protected abstract [kStart](): Promise<void>;
  /** @internal Listening now: offer, and emit 'listening' (or 'error'). */
  protected abstract [kServe](): void;
  /** @internal Withdraws the offers and gives the path up; connected streams go on. */
  protected abstract [kTeardown](): void;
  /** @internal Whether a client is connected. */
  protected abstract [kConnected](): boolean;
  /** @internal Calls EMITCLOSE once the connections have ended and the path is free. */
  protected abstract [kFinish](emitClose: () => void): void;
  /** @internal Makes what the server holds keep the process alive (ON) or not. */
  protected abstract [kSetRef](on: boolean): void;

  /** @internal Stops serving (close(), or an error the server cannot go on after). */
  protected [kStop](): void {
    this.#listening = false;
    this[kTeardown]();
  }

  /**
   * Stops serving and gives the path up; connected streams are left to finish. 'close' (and CB)
   * come once they have closed and the path is free for another server. As net.Server's: a server
   * that never listened still closes, but CB hears ERR_SERVER_NOT_RUNNING, as does a second close().
   */
  close(cb?: (err?: Error) => void): this {
    if (cb !== undefined && typeof cb !== 'function') throw invalidArgType('cb', 'of type function', cb);
    if (this.#closed) {
      if (cb) process.nextTick(cb, coded('The server is not running', 'ERR_SERVER_NOT_RUNNING'));
      return this;
    }
    const running = this.#listening || this.#starting || this[kConnected]();
    if (cb)
      this.once('close', running ? () => cb() : () => cb(coded('The server is not running', 'ERR_SERVER_NOT_RUNNING')));
    this.#closed = true;
    this[kStop]();
    this[kFinish](() => this.emit('close'));
    return this;
  }

  /** `await using server = createServer(...)`: closes the server (as net.Server's). */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#closed) return;
    await new Promise<void>((resolve) => this.close(() => resolve()));
  }

  /** Keep the process alive while the server listens or has connections (the default). */
  ref(): this {
    this.#refed = true;
    this[kSetRef](true);
    return this;
  }

  /** Let the process exit while the server listens or has connections. */
  unref(): this {
    this.#refed = false;
    this[kSetRef](false);
    return this;
  }
}

/**
 * What every server's listen() does first, as net.Server's: checks the arguments (a callback, or an
 * options object with `signal`), refuses a closed or listening server, registers the callback for
 * 'listening', and makes the signal close the server. False when the signal has already fired (the
 * server then closes on the next tick, and must not start).
 */
function beginListen(
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
