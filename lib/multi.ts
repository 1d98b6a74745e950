/**
 * Many clients at once on one well-known vchan path.
 *
 * A libxenvchan channel has exactly two ends, so a server that wants many clients of one domain
 * at once gives each its own channel. The client asks for one under the well-known path, the
 * server offers it, and the client connects to it as to any vchan. Xenstore layout, under the
 * server's path P (all nodes owned by the server's domain S; C is the client domain):
 *
 * ```text
 * P                   ""                           readable by C
 * P/requests          "<id> <id> ..."              readable and writable by C: the request queue
 * P/<id>/ring-ref     the channel offered to the client that asked with <id>, as any vchan
 * P/<id>/event-channel                             server publishes it (readable by C)
 * ```
 *
 * A client picks a random <id> (16 lower-case hex digits) and appends it to P/requests in a
 * xenstore transaction; the server takes ids off the front of the queue (in a transaction too) as
 * long as it has room (`maxConnections`), offers a channel at P/<id> for each, and removes P/<id>
 * when that connection ends. A client whose request finds the queue full, or no room at the server,
 * waits: nothing is refused or reset. A channel that no client takes within `acceptTimeout` is
 * withdrawn (a client that died between asking and connecting).
 *
 * The server writes only P and its children; the client writes only P/requests. Requests that are
 * not well-formed ids are dropped (and reported as 'clientError'). Nothing the client domain writes
 * stops the server: a queue transaction its writes make give up is a 'clientError' and a back-off,
 * a removed queue is made again. Xenstore's principal is the domain, not the process: any process
 * of the client domain may take the channel offered for another's request; connectMulti then hears
 * EBUSY at once and asks again under a fresh id.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { debuglog } from 'node:util';

import { abortError, checkDomid, checkInt, checkObject, coded, invalidArgType, systemError } from './errors';
import { binding, type Backend, type Binding } from './native';
import {
  checkServerOptions,
  claimPath,
  connect,
  beginListen,
  kOnlyOffer,
  offerChannel,
  type ConnectOptions,
  type Offer,
  type OfferOptions,
  type ServerOptions,
  type VchanStream,
} from './vchan';
import { Xenstore, type XenstoreWatch } from './xenstore';

const debug = debuglog('xen-vchan');

/** The request ids a client writes: 16 lower-case hex digits. */
const ID = /^[0-9a-f]{16}$/;
/** The most requests the queue node holds (17 bytes each, well inside xenstore's 4 KiB value). */
export const MULTI_QUEUE_MAX = 128;
/** How often connectMulti asks again after another client took the channel offered to it. */
const MULTI_TAKEN_RETRIES = 3;

export interface MultiServerOptions extends ServerOptions {
  /**
   * The most connections at once (offered or connected). Clients beyond it wait in the request
   * queue until one ends. Default 256.
   */
  maxConnections?: number;
  /** Withdraw an offered channel that no client takes within this many ms. Default 10000. */
  acceptTimeout?: number;
}

/**
 * A vchan server for many clients of one domain at once, each on its own channel, all reached
 * through one path (the layout is in this module's documentation). Its clients use
 * {@link connectMulti}. Emits 'listening', 'connection' (VchanStream), 'clientError', 'error' and
 * 'close', as {@link VchanServer} does.
 */
export class VchanMultiServer extends EventEmitter<{
  listening: [];
  connection: [VchanStream];
  clientError: [Error];
  error: [Error];
  close: [];
}> {
  readonly #b: Binding;
  readonly #opts: OfferOptions & MultiServerOptions;
  readonly #max: number;
  readonly #acceptTimeout: number;
  readonly #offers = new Map<string, { offer: Offer; timer: NodeJS.Timeout }>();
  readonly #streams = new Set<VchanStream>();
  /** The ids offered or connected: a repeated request for one of them is never offered again. */
  readonly #ids = new Set<string>();
  /** Settles once #stop has given everything up (the path is free for another server then). */
  #stopped: Promise<void> = Promise.resolve();
  #onDrained: (() => void) | null = null;
  #xs: Xenstore | null = null;
  #watch: XenstoreWatch | null = null;
  #release: (() => void) | null = null;
  #listening = false;
  #starting = false;
  #closed = false;
  #refed = true;
  #taking = false;
  #takeAgain = false;
  /** An offer failed for want of resources (gntalloc's pages, fds): take no more until one ends. */
  #starved = false;
  /** The queue's permissions: the server's domain owns it, the client domain may read and write. */
  #queuePerms: { domid: number; read: boolean; write: boolean }[] = [];
  /** Backing off after the client domain's writes made a transaction give up: the timer, the delay. */
  #retry: NodeJS.Timeout | null = null;
  #backoff = 0;

  constructor(options: MultiServerOptions, onConnection?: (s: VchanStream) => void) {
    super();
    this.#opts = checkServerOptions(options);
    const o = this.#opts;
    this.#max = o.maxConnections === undefined ? 256 : checkInt('options.maxConnections', o.maxConnections, 1, 65536);
    this.#acceptTimeout =
      o.acceptTimeout === undefined ? 10000 : checkInt('options.acceptTimeout', o.acceptTimeout, 1, 2 ** 31 - 1);
    this.#b = binding(options.backend);
    if (onConnection !== undefined) {
      if (typeof onConnection !== 'function') throw invalidArgType('onConnection', 'of type function', onConnection);
      this.on('connection', onConnection);
    }
  }

  get listening(): boolean {
    return this.#listening;
  }

  /** Connections now: offered to a client that asked, or connected. */
  get connections(): number {
    return this.#offers.size + this.#streams.size;
  }

  /** The options the server was made with (domid, path, ring sizes, limits). */
  address(): { domid: number; path: string; readMin: number; writeMin: number; maxConnections: number } {
    const { domid, path, readMin, writeMin } = this.#opts;
    return { domid, path, readMin, writeMin, maxConnections: this.#max };
  }

  /**
   * Claims the path, publishes the request queue and serves requests; 'listening' follows, or
   * 'error' (EADDRINUSE when another server holds the path).
   */
  listen(cb?: () => void): this;
  listen(options: { signal?: AbortSignal }, cb?: () => void): this;
  listen(optionsOrCb?: { signal?: AbortSignal } | (() => void), cb?: () => void): this {
    if (!beginListen(this, { closed: this.#closed, busy: this.#listening || this.#starting }, optionsOrCb, cb))
      return this;
    this.#starting = true;
    this.#start().then(
      () => {
        this.#starting = false;
        if (this.#closed) return;
        this.#listening = true;
        this.emit('listening');
        this.#take();
      },
      (e: Error) => {
        this.#starting = false;
        this.#stop();
        if (!this.#closed) this.emit('error', e);
      },
    );
    return this;
  }

  async #start(): Promise<void> {
    const o = this.#opts;
    this.#release = await claimPath(this.#b, o.mockDomid, o.path);
    if (this.#closed) return;
    const xs = new Xenstore({ backend: this.#b.backend, mockDomid: o.mockDomid });
    this.#xs = xs;
    if (!this.#refed) xs.unref();
    const self = Number(await xs.read('domid'));
    const queue = `${o.path}/requests`;
    this.#queuePerms = [
      { domid: self, read: false, write: false },
      { domid: o.domid, read: true, write: true },
    ];
    await xs.transaction(async (tx) => {
      // Whatever a server that died left here (its offers, its queue) goes: we hold the path now.
      await tx.rm(o.path).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e; // nothing there, not even its parent
      });
      await tx.write(o.path, '');
      await tx.setPermissions(o.path, [
        { domid: self, read: false, write: false },
        { domid: o.domid, read: true, write: false },
      ]);
      await tx.write(queue, '');
      await tx.setPermissions(queue, this.#queuePerms);
    });
    if (this.#closed) return;
    const w = await xs.watch(queue);
    this.#watch = w;
    void (async () => {
      for await (const _ of w) this.#take();
    })();
    debug('multi-server %s: serving domain %d', o.path, o.domid);
  }

  /** Takes as many requests off the queue as there is room for, and offers each a channel. */
  #take(): void {
    if (!this.#listening || !this.#xs) return;
    if (this.#taking) {
      this.#takeAgain = true;
      return;
    }
    const room = this.#max - this.connections;
    if (room <= 0 || this.#starved) return;
    this.#taking = true;
    const xs = this.#xs;
    const queue = `${this.#opts.path}/requests`;
    let remade = false;
    xs.transaction(
      async (tx) => {
        remade = false;
        const v = await tx.tryRead(queue);
        if (v === undefined) {
          // The client domain removed the queue (it may: it can write there): make it again.
          await tx.write(queue, '');
          await tx.setPermissions(queue, this.#queuePerms);
          remade = true;
          return [];
        }
        const ids = v.split(' ').filter((s) => s !== '');
        if (ids.length === 0) return [];
        const taken = ids.slice(0, room);
        await tx.write(queue, ids.slice(room).join(' '));
        return taken;
      },
      { retries: 1000 },
    ).then(
      (ids) => {
        this.#taking = false;
        this.#backoff = 0;
        if (remade)
          this.#clientError(systemError('ENOENT', 'accept', `the client domain removed ${queue}; it is there again`));
        for (let i = 0; i < ids.length; i++) {
          const r = this.#offerTo(ids[i]);
          if (r === 'failed') return;
          if (r === 'starved') return this.#starve(ids.slice(i));
        }
        if (this.#takeAgain || ids.length > 0) {
          this.#takeAgain = false;
          this.#take();
        }
      },
      (e: Error) => {
        this.#taking = false;
        this.#failed(e, () => this.#take());
      },
    );
  }

  #clientError(e: Error): void {
    debug('multi-server %s: %s', this.#opts.path, e.message);
    if (this.listenerCount('clientError') > 0) this.emit('clientError', e);
  }

  /**
   * A queue transaction failed. What the client domain can cause (a storm of conflicting writes:
   * EAGAIN after the retries; a value it stuffed past xenstore's limits) is the client's error:
   * the server backs off (20 ms, doubling to 1 s) and goes on with AGAIN. Anything else (xenstore
   * itself gone) stops the server with 'error'.
   */
  #failed(e: Error, again: () => void): void {
    if (this.#closed || !this.#listening) return;
    const code = (e as { code?: string }).code;
    if (
      code !== 'EAGAIN' &&
      code !== 'ERR_OUT_OF_RANGE' &&
      code !== 'E2BIG' &&
      code !== 'EINVAL' &&
      code !== 'EDQUOT'
    ) {
      this.#stop();
      this.emit('error', e);
      return;
    }
    this.#backoff = Math.min(1000, this.#backoff ? this.#backoff * 2 : 20);
    this.#clientError(
      systemError(
        code === 'ERR_OUT_OF_RANGE' ? 'E2BIG' : code,
        'accept',
        `the request queue: ${e.message}; trying again in ${this.#backoff} ms`,
      ),
    );
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = setTimeout(() => {
      this.#retry = null;
      again();
    }, this.#backoff);
    if (!this.#refed) this.#retry.unref();
  }

  /**
   * Out of resources for another channel: the requests taken go back to the front of the queue and
   * wait, as requests beyond maxConnections do, until a connection ends and frees what it held.
   */
  #starve(ids: string[]): void {
    this.#starved = true;
    // Judged now: by the time the requests are back in the queue, the connections that held the
    // resources may all have ended (and the next offer would succeed).
    const nothingToWaitFor = this.connections === 0;
    const xs = this.#xs;
    if (!xs || this.#closed) return;
    const queue = `${this.#opts.path}/requests`;
    debug(
      'multi-server %s: out of resources at %d connections; %d requests wait',
      this.#opts.path,
      this.connections,
      ids.length,
    );
    let dropped = 0;
    xs.transaction(
      async (tx) => {
        // Back at the front; what is queued behind them stays as far as the queue's bound allows
        // (only a client domain that wrote past it, or wrote what no client writes, loses any).
        const rest = ((await tx.tryRead(queue)) ?? '').split(' ').filter((x) => ID.test(x) && !ids.includes(x));
        const all = [...ids, ...rest];
        dropped = Math.max(0, all.length - MULTI_QUEUE_MAX);
        await tx.write(queue, all.slice(0, MULTI_QUEUE_MAX).join(' '));
        await tx.setPermissions(queue, this.#queuePerms);
      },
      { retries: 1000 },
    ).then(
      () => {
        if (dropped > 0)
          this.#clientError(
            systemError(
              'ENOBUFS',
              'accept',
              `${dropped} requests past the queue's bound of ${MULTI_QUEUE_MAX} dropped`,
            ),
          );
        // Nothing of ours to wait for: this server cannot offer a single channel.
        if (nothingToWaitFor && !this.#closed) {
          this.#stop();
          this.emit(
            'error',
            systemError('ENOSPC', 'listen', `no resources left for a single channel at ${this.#opts.path}`),
          );
        }
      },
      (e: Error) => this.#failed(e, () => this.#starve(ids)),
    );
  }

  /** Resources freed: take requests again. */
  #unstarve(): void {
    this.#starved = false;
    this.#take();
  }

  #offerTo(id: string): 'ok' | 'dropped' | 'starved' | 'failed' {
    if (this.#closed) return 'failed';
    if (!ID.test(id) || this.#ids.has(id)) {
      if (this.listenerCount('clientError') > 0)
        this.emit(
          'clientError',
          systemError('EPROTO', 'accept', `a malformed or repeated request ${JSON.stringify(id)}`),
        );
      return 'dropped';
    }
    const path = `${this.#opts.path}/${id}`;
    let offer: Offer;
    try {
      offer = offerChannel(
        this.#b,
        { ...this.#opts, path },
        (s) => this.#connected(id, s),
        (e) => {
          this.#withdraw(id);
          if (this.listenerCount('clientError') > 0) this.emit('clientError', e);
          this.#unstarve();
        },
      );
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === 'ENOSPC' || code === 'ENOMEM' || code === 'EMFILE' || code === 'ENFILE' || code === 'EAGAIN')
        return 'starved';
      this.#stop();
      this.emit('error', e as Error);
      return 'failed';
    }
    offer.ref(this.#refed);
    const timer = setTimeout(() => {
      debug('multi-server %s: nobody took %s within %d ms', this.#opts.path, id, this.#acceptTimeout);
      this.#withdraw(id);
      this.#unstarve();
    }, this.#acceptTimeout);
    timer.unref();
    this.#offers.set(id, { offer, timer });
    this.#ids.add(id);
    return 'ok';
  }

  #withdraw(id: string): void {
    const o = this.#offers.get(id);
    if (!o) return;
    this.#offers.delete(id);
    this.#ids.delete(id);
    clearTimeout(o.timer);
    o.offer.cancel();
  }

  #connected(id: string, s: VchanStream): void {
    const o = this.#offers.get(id);
    if (o) clearTimeout(o.timer);
    this.#offers.delete(id);
    this.#streams.add(s);
    if (!this.#refed) s.unref();
    s.once('close', () => {
      this.#streams.delete(s);
      this.#ids.delete(id);
      if (this.#streams.size === 0) this.#onDrained?.();
      this.#unstarve();
    });
    this.emit('connection', s);
  }

  /** Withdraws every offer and the queue, and gives the path up. */
  #stop(): void {
    this.#listening = false;
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = null;
    for (const id of [...this.#offers.keys()]) this.#withdraw(id);
    const xs = this.#xs;
    this.#xs = null;
    const w = this.#watch;
    this.#watch = null;
    const release = this.#release;
    this.#release = null;
    // The claim goes last: a server that takes the path over must not see our nodes go after it
    // has written its own.
    const prev = this.#stopped;
    this.#stopped = (async () => {
      await prev;
      if (xs) {
        await w?.close().catch(() => undefined);
        await xs.rm(`${this.#opts.path}/requests`).catch(() => undefined);
      }
      // The connected clients' nodes live under the path: it stays ours until they have gone.
      if (this.#streams.size > 0) await new Promise<void>((resolve) => (this.#onDrained = resolve));
      this.#onDrained = null;
      if (xs) {
        await xs.rm(this.#opts.path).catch(() => undefined);
        xs.close();
      }
      release?.();
    })();
  }

  /** 'close', once the connections have ended and the path is given up. */
  #finish(): void {
    void this.#stopped.then(() => this.emit('close'));
  }

  /**
   * Stops taking requests and withdraws the offered channels; connected streams are left to
   * finish. Once they have closed, the server removes its nodes and gives the path up, and 'close'
   * (and CB) follow: another server can listen on the path from then on. A second close() passes
   * ERR_SERVER_NOT_RUNNING to its callback.
   */
  close(cb?: (err?: Error) => void): this {
    if (cb !== undefined && typeof cb !== 'function') throw invalidArgType('cb', 'of type function', cb);
    if (this.#closed) {
      if (cb) process.nextTick(cb, coded('The server is not running', 'ERR_SERVER_NOT_RUNNING'));
      return this;
    }
    // As net.Server's: a server that is not running (never listened, or its listen() failed)
    // still closes and emits 'close', but CB hears ERR_SERVER_NOT_RUNNING.
    const running = this.#listening || this.#starting || this.#streams.size > 0;
    if (cb)
      this.once('close', running ? () => cb() : () => cb(coded('The server is not running', 'ERR_SERVER_NOT_RUNNING')));
    this.#closed = true;
    this.#stop();
    this.#finish();
    return this;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#closed) return;
    await new Promise<void>((resolve) => this.close(() => resolve()));
  }

  /** Keep the process alive while the server listens or has connections (the default). */
  ref(): this {
    return this.#setRef(true);
  }

  unref(): this {
    return this.#setRef(false);
  }

  #setRef(on: boolean): this {
    this.#refed = on;
    if (on) this.#xs?.ref();
    else this.#xs?.unref();
    for (const { offer } of this.#offers.values()) offer.ref(on);
    for (const s of this.#streams)
      if (on) s.ref();
      else s.unref();
    return this;
  }
}

/** A {@link VchanMultiServer}, with an optional 'connection' listener. Call listen(). */
export function createMultiServer(
  options: MultiServerOptions,
  onConnection?: (s: VchanStream) => void,
): VchanMultiServer {
  return new VchanMultiServer(options, onConnection);
}

/*
 * The requests of one process go to the queue one at a time: a hundred connects at once then cost
 * a hundred short transactions in a row, not a hundred that conflict with one another.
 */
const placing = new Map<string, Promise<unknown>>();

function serialized<T>(key: string, fn: () => Promise<T>): Promise<T> {
  const prev = placing.get(key) ?? Promise.resolve();
  const next = prev.then(fn, fn);
  const tail = next.catch(() => undefined);
  placing.set(key, tail);
  void tail.then(() => {
    if (placing.get(key) === tail) placing.delete(key);
  });
  return next;
}

/**
 * Connects to a {@link VchanMultiServer} of domain `domid` at `path` (the full xenstore path):
 * asks for a channel of its own and connects to it. Waits while there is no server yet, while the
 * request queue is full and while the server has no room (bound the wait with options.timeout or
 * options.signal); rejects as {@link connect} does.
 */
export async function connectMulti(options: ConnectOptions): Promise<VchanStream> {
  const o = checkObject('options', options);
  checkDomid('options.domid', o.domid);
  if (typeof o.path !== 'string') throw invalidArgType('options.path', 'of type string', o.path);
  const timeout = o.timeout === undefined ? undefined : checkInt('options.timeout', o.timeout, 0, 2 ** 31 - 1);
  const signal = o.signal as AbortSignal | undefined;
  if (signal !== undefined && !(signal instanceof AbortSignal))
    throw invalidArgType('options.signal', 'an instance of AbortSignal', signal);
  const mockDomid = o.mockDomid === undefined ? undefined : checkDomid('options.mockDomid', o.mockDomid);
  const b = binding(o.backend as Backend | undefined);
  if (signal?.aborted) throw abortError(signal);
  const deadline = timeout === undefined ? undefined : Date.now() + timeout;
  const queue = `${o.path}/requests`;
  const xs = new Xenstore({ backend: b.backend, mockDomid });
  let placed = false;
  let id = '';
  try {
    // Processes of one domain share its xenstore rights, so another one may take the channel
    // offered for our request: we hear so at once (EBUSY) and ask again under a fresh id.
    for (let attempt = 1; ; attempt++) {
      id = randomBytes(8).toString('hex');
      placed = false;
      await serialized(`${b.backend} ${mockDomid} ${queue}`, () => placeRequest(xs, queue, id, deadline, signal));
      placed = true;
      debug('connectMulti %s: asked as %s', o.path, id);
      const left = deadline === undefined ? undefined : Math.max(0, deadline - Date.now());
      try {
        return await connect({
          ...options,
          path: `${o.path}/${id}`,
          timeout: left,
          [kOnlyOffer]: true,
        } as ConnectOptions);
      } catch (e) {
        if ((e as { code?: string }).code !== 'EBUSY' || attempt >= MULTI_TAKEN_RETRIES) throw e;
        placed = false; // taken, so not in the queue any more
        debug('connectMulti %s: the channel for %s was taken by another client; asking again', o.path, id);
      }
    }
  } catch (e) {
    debug('connectMulti %s: %s', o.path, (e as Error).message);
    if (placed) {
      // Take the request back if the server has not taken it yet (a taken one times out there).
      // Bounded: a stale id left behind costs the server one offer that times out, never a hang here.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        xs
          .transaction(async (tx) => {
            const v = await tx.tryRead(queue);
            if (v === undefined) return;
            const ids = v.split(' ');
            if (ids.includes(id)) await tx.write(queue, ids.filter((x) => x !== id).join(' '));
          })
          .catch(() => undefined),
        new Promise((resolve) => (timer = setTimeout(resolve, 5000))),
      ]);
      clearTimeout(timer);
    }
    throw e;
  } finally {
    xs.close();
  }
}

/** Appends ID to the queue, waiting (on a watch) while there is no queue or it is full. */
async function placeRequest(
  xs: Xenstore,
  queue: string,
  id: string,
  deadline: number | undefined,
  signal: AbortSignal | undefined,
): Promise<void> {
  const w = await xs.watch(queue);
  const it = w[Symbol.asyncIterator]();
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const stop = new Promise<never>((_, reject) => {
    if (deadline !== undefined)
      timer = setTimeout(
        () => reject(systemError('ETIMEDOUT', 'connect', `no vchan multi-server took a request at ${queue}`)),
        Math.max(0, deadline - Date.now()),
      );
    if (signal) {
      onAbort = () => reject(abortError(signal));
      signal.addEventListener('abort', onAbort, { once: true });
      // Aborted while the watch was being set up: the event has been and gone.
      if (signal.aborted) onAbort();
    }
  });
  stop.catch(() => undefined);
  try {
    for (;;) {
      const next = await Promise.race([it.next(), stop]);
      if (next.done) throw coded('The xenstore watch ended', 'ERR_XEN_CLOSED');
      const done = await Promise.race([
        xs.transaction(
          async (tx) => {
            let v: string | undefined;
            try {
              v = await tx.tryRead(queue);
            } catch (e) {
              if ((e as { code?: string }).code === 'EACCES') return false; // not (yet) ours to read
              throw e;
            }
            if (v === undefined) return false; // no server yet
            const ids = v.split(' ').filter((s) => s !== '');
            if (ids.length >= MULTI_QUEUE_MAX) return false; // full: wait for the server to take some
            await tx.write(queue, [...ids, id].join(' '));
            return true;
          },
          { retries: 1000 },
        ),
        stop,
      ]);
      if (done) return;
    }
  } finally {
    if (timer) clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
    await w.close().catch(() => undefined);
  }
}
