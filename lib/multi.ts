/**
 * Many clients at once on one well-known vchan path.
 *
 * A libxenvchan channel has exactly two ends, so a server that wants many clients of one domain
 * at once gives each its own channel. The client asks for one under the well-known path, the
 * server offers it, and the client connects to it as to any vchan. Xenstore layout, under the
 * server's path P (S is the server's domain, C the client domain):
 *
 * ```text
 * P                    ""   S's; C may read
 * P/requests           ""   S's; C may read and write (so it may make nodes under it)
 * P/requests/<id>      ""   one client's request: made by C, which lets S read and remove it
 * P/<id>/ring-ref           the channel offered to the client that asked with <id>, as any vchan
 * P/<id>/event-channel      (S's; C may read)
 * ```
 *
 * A client picks a random <id> (16 lower-case hex digits), makes the node P/requests/<id> and
 * watches it. The server answers each request exactly once: it offers a channel at P/<id> and then
 * removes the request node, or it refuses the request by removing the node alone. So the client,
 * once its node has gone, finds either its channel or nothing (refused: it asks again under a fresh
 * id). Each request is its own node: no other process's write can lose it.
 *
 * The server offers channels while it has room (`maxConnections`), in the order the requests came;
 * the others wait. When more than `backlog` wait, it refuses the oldest (their clients ask again, as
 * the newest). While overloaded (a request has waited over a second, or the backlog overflowed in the
 * last second) the server serves the newest first: the client behind it is surely still there. A channel nobody takes within
 * `acceptTimeout` is withdrawn, within half a second while others wait for room (a client that asked
 * and went, or a flood of requests nobody means to take).
 *
 * Nothing the client domain writes stops the server: a removed queue is made again, nodes that are
 * not well-formed ids are removed and reported as 'clientError'. Xenstore's principal is the domain,
 * not the process: any process of the client domain may remove another's request (that client hears
 * it as a refusal and asks again) or take the channel offered for it (connectMulti hears EBUSY at
 * once and asks again under a fresh id).
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { debuglog } from 'node:util';

import { abortError, checkDomid, checkInt, checkObject, coded, invalidArgType, systemError } from './errors';
import { binding, type Backend, type Binding } from './native';
import {
  attachEntry,
  beginListen,
  checkServerOptions,
  claimPath,
  offerChannel,
  readEntry,
  type ConnectOptions,
  type Offer,
  type OfferOptions,
  type ServerOptions,
  type VchanStream,
  xenstoreFailed,
} from './vchan';
import { leaseShared } from './lease';
import { Xenstore, type XenstoreWatch } from './xenstore';

const debug = debuglog('xen-vchan');

/** The request ids a client writes: 16 lower-case hex digits. */
const ID = /^[0-9a-f]{16}$/;
/** The default backlog: the most requests that wait for room before the oldest are refused. */
export const MULTI_QUEUE_MAX = 128;
/** How often connectMulti asks again after another client took the channel offered to it. */
const MULTI_TAKEN_RETRIES = 3;
/** A request that has waited this long means the server is overloaded: serve the newest first. */
const OVERLOAD_MS = 1000;
/**
 * While requests wait for room, an offered channel nobody takes is withdrawn after four times the
 * time clients have lately taken to take theirs, within these bounds (ms).
 */
const CONTENDED_ACCEPT_MIN_MS = 100;
const CONTENDED_ACCEPT_MAX_MS = 2000;

export interface MultiServerOptions extends ServerOptions {
  /**
   * The most connections at once (offered or connected). Requests beyond it wait (see `backlog`)
   * until one ends. Default 256.
   */
  maxConnections?: number;
  /**
   * The most requests that wait for room; when more wait, the oldest are refused (their clients ask
   * again). Default {@link MULTI_QUEUE_MAX} (128).
   */
  backlog?: number;
  /**
   * Withdraw an offered channel that no client takes within this many ms (while other requests wait
   * for room: within four times what clients have lately taken to attach, 0.1 to 2 s). Default
   * 10000.
   */
  acceptTimeout?: number;
}

interface Offered {
  offer: Offer;
  timer: NodeJS.Timeout;
  since: number;
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
  readonly #backlog: number;
  readonly #acceptTimeout: number;
  readonly #offers = new Map<string, Offered>();
  readonly #streams = new Set<VchanStream>();
  /** The ids offered or connected: a repeated request for one of them is never offered again. */
  readonly #ids = new Set<string>();
  /** Requests waiting for room, in the order they came: id -> when first seen. */
  #waiting = new Map<string, number>();
  /** Requests answered (offered or refused) whose node we could not remove: id -> refused. */
  readonly #answered = new Map<string, boolean>();
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
  /** Starved with no connection of ours to free anything: the next look, and its back-off (ms). */
  #starveTimer: NodeJS.Timeout | null = null;
  #starveMs = 0;
  /** The queue's permissions: the server's domain owns it, the client domain may read and write. */
  #queuePerms: { domid: number; read: boolean; write: boolean }[] = [];
  /** Backing off after xenstore refused the queue's remaking: the timer, the delay. */
  #retry: NodeJS.Timeout | null = null;
  #backoff = 0;
  /** Withdraws untaken offers while requests wait for room. */
  #reaper: NodeJS.Timeout | null = null;
  #refused = 0;
  /** When the backlog last overflowed (requests refused for want of room to wait). */
  #overflowAt = -Infinity;
  /** How long clients have lately taken from an offer to attaching (ms, a moving average). */
  #attachMs = 125; // ms: a first guess, until clients have attached

  constructor(options: MultiServerOptions, onConnection?: (s: VchanStream) => void) {
    super();
    this.#opts = checkServerOptions(options);
    const o = this.#opts;
    if (o.static !== undefined)
      throw coded(
        'A multi-server publishes its channels in xenstore: serve a static channel with createServer()',
        'ERR_INVALID_ARG_VALUE',
        TypeError,
      );
    this.#max = o.maxConnections === undefined ? 256 : checkInt('options.maxConnections', o.maxConnections, 1, 65536);
    this.#backlog = o.backlog === undefined ? MULTI_QUEUE_MAX : checkInt('options.backlog', o.backlog, 1, 65536);
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

  /** Requests waiting for room now (at most `backlog`). */
  get waiting(): number {
    return this.#waiting.size;
  }

  /** Requests refused since the server was made, for want of room to wait (beyond `backlog`). */
  get refused(): number {
    return this.#refused;
  }

  /** The options the server was made with (domid, path, ring sizes, limits). */
  address(): {
    domid: number;
    path: string;
    readMin: number;
    writeMin: number;
    maxConnections: number;
    backlog: number;
  } {
    const { domid, path, readMin, writeMin } = this.#opts;
    return { domid, path, readMin, writeMin, maxConnections: this.#max, backlog: this.#backlog };
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
    this.#queuePerms = [
      { domid: self, read: false, write: false },
      { domid: o.domid, read: true, write: true },
    ];
    await xs.transaction(async (tx) => {
      // Whatever a server that died left here (its offers, its clients' requests) goes: we hold the
      // path now. Its clients see their requests go, and ask again.
      await tx.rm(o.path).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e; // nothing there, not even its parent
      });
      await tx.write(o.path, '');
      await tx.setPermissions(o.path, [
        { domid: self, read: false, write: false },
        { domid: o.domid, read: true, write: false },
      ]);
      await this.#makeQueue(tx);
    });
    if (this.#closed) return;
    const w = await xs.watch(this.#queue);
    this.#watch = w;
    void (async () => {
      for await (const _ of w) this.#take();
    })();
    debug('multi-server %s: serving domain %d', o.path, o.domid);
  }

  get #queue(): string {
    return `${this.#opts.path}/requests`;
  }

  async #makeQueue(tx: {
    write(p: string, v: string): Promise<void>;
    setPermissions(p: string, perms: { domid: number; read: boolean; write: boolean }[]): Promise<void>;
  }): Promise<void> {
    await tx.write(this.#queue, '');
    await tx.setPermissions(this.#queue, this.#queuePerms);
  }

  /**
   * Reads the requests, answers as many as there is room for (an offer each), refuses the oldest
   * beyond the backlog, and removes the nodes of the requests answered. One pass at a time; a
   * change seen meanwhile makes another.
   */
  #take(): void {
    if (!this.#listening || !this.#xs) return;
    if (this.#taking) {
      this.#takeAgain = true;
      return;
    }
    this.#taking = true;
    this.#takeAgain = false;
    this.#pass(this.#xs).then(
      () => {
        this.#taking = false;
        this.#backoff = 0;
        this.#scheduleReap();
        if (this.#takeAgain) this.#take();
      },
      (e: Error) => {
        this.#taking = false;
        this.#failed(e);
      },
    );
  }

  /** One pass of #take. */
  async #pass(xs: Xenstore): Promise<void> {
    const queue = this.#queue;
    let names: string[];
    try {
      names = await xs.directory(queue);
    } catch (e) {
      if ((e as { code?: string }).code !== 'ENOENT') throw e;
      // The client domain removed the queue (it may: it can write there), and with it every
      // request in it (their clients hear that as a refusal and ask again): make it again.
      await xs.transaction((tx) => this.#makeQueue(tx));
      this.#clientError(systemError('ENOENT', 'accept', `the client domain removed ${queue}; it is there again`));
      names = [];
    }
    if (!this.#listening) return;
    const present = new Set(names);
    for (const id of this.#waiting.keys()) if (!present.has(id)) this.#waiting.delete(id); // taken back
    for (const id of this.#answered.keys()) if (!present.has(id)) this.#answered.delete(id);
    const now = Date.now();
    const refuse: string[] = [];
    for (const name of names) {
      if (this.#waiting.has(name)) continue;
      const refused = this.#answered.get(name);
      if (refused !== undefined) {
        if (refused) refuse.push(name); // its removal failed: try again
        continue;
      }
      if (!ID.test(name) || this.#ids.has(name)) {
        this.#clientError(systemError('EPROTO', 'accept', `a malformed or repeated request ${JSON.stringify(name)}`));
        refuse.push(name);
        continue;
      }
      this.#waiting.set(name, now);
    }
    // Beyond the backlog, the oldest go: their clients, if still there, ask again as the newest.
    for (const id of this.#waiting.keys()) {
      if (this.#waiting.size <= this.#backlog) break;
      this.#waiting.delete(id);
      refuse.push(id);
      this.#overflowAt = now;
      this.#refused++;
    }
    if (refuse.length > 0) debug('multi-server %s: refusing %d requests', this.#opts.path, refuse.length);
    const offered: string[] = [];
    while (this.#waiting.size > 0 && this.connections < this.#max && !this.#starved && this.#listening) {
      const id = this.#next(now);
      const r = this.#offerTo(id);
      if (r === 'failed') break;
      if (r === 'starved') {
        this.#starve();
        break;
      }
      this.#waiting.delete(id);
      offered.push(id);
    }
    // Each answered request's node goes (the offer, if any, is in place before).
    await Promise.all([
      ...offered.map((id) => this.#removeRequest(id, false)),
      ...refuse.map((id) => this.#removeRequest(id, true)),
    ]);
  }

  /**
   * The request to serve next: the oldest, or the newest while the server is overloaded (the
   * oldest has waited over OVERLOAD_MS, or the backlog overflowed within it).
   */
  #next(now: number): string {
    const it = this.#waiting.entries();
    const [oldest, since] = it.next().value as [string, number];
    if (now - since <= OVERLOAD_MS && now - this.#overflowAt > OVERLOAD_MS) return oldest;
    let newest = oldest;
    for (const [id] of it) newest = id;
    return newest;
  }

  async #removeRequest(id: string, refused: boolean): Promise<void> {
    const xs = this.#xs;
    if (!xs) return;
    try {
      await xs.rm(`${this.#queue}/${id}`);
      this.#answered.delete(id);
    } catch (e) {
      // Not ours to remove (a node whose maker did not let us): answered all the same. A refusal
      // is tried again on the next pass, as the only way its client can hear it.
      debug('multi-server %s: cannot remove request %s: %s', this.#opts.path, id, (e as Error).message);
      this.#answered.set(id, refused);
    }
  }

  #clientError(e: Error): void {
    debug('multi-server %s: %s', this.#opts.path, e.message);
    if (this.listenerCount('clientError') > 0) this.emit('clientError', e);
  }

  /**
   * A pass failed. What the client domain can cause (a storm of conflicting writes makes the
   * queue's remaking give up: EAGAIN; its quota: ENOSPC, EDQUOT) is the client's error: the server
   * backs off (20 ms, doubling to 1 s) and goes on. Anything else (xenstore itself gone) stops the
   * server with 'error'.
   */
  #failed(e: Error): void {
    if (this.#closed || !this.#listening) return;
    const code = (e as { code?: string }).code;
    if (code !== 'EAGAIN' && code !== 'ENOSPC' && code !== 'EDQUOT' && code !== 'E2BIG' && code !== 'EINVAL')
      return this.#fatal(e);
    this.#backoff = Math.min(1000, this.#backoff ? this.#backoff * 2 : 20);
    this.#clientError(
      systemError(code, 'accept', `the request queue: ${e.message}; trying again in ${this.#backoff} ms`),
    );
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = setTimeout(() => {
      this.#retry = null;
      this.#take();
    }, this.#backoff);
    if (!this.#refed) this.#retry.unref();
  }

  /**
   * While requests wait for room, offers nobody has taken for four times what clients lately took
   * (0.1 to 2 s) are withdrawn (their clients, if there, hear it and ask again): a flood of requests
   * that nobody means to take holds the room that long, not for acceptTimeout.
   */
  #scheduleReap(): void {
    if (this.#reaper || this.#waiting.size === 0 || this.#offers.size === 0 || !this.#listening) return;
    let first = Infinity;
    for (const o of this.#offers.values()) first = Math.min(first, o.since);
    const limit = Math.min(
      this.#acceptTimeout,
      Math.max(CONTENDED_ACCEPT_MIN_MS, Math.min(CONTENDED_ACCEPT_MAX_MS, 4 * this.#attachMs)),
    );
    const wait = Math.max(0, first + limit - Date.now());
    this.#reaper = setTimeout(() => {
      this.#reaper = null;
      if (this.#waiting.size === 0) return;
      const old = Date.now() - limit;
      let withdrawn = 0;
      for (const [id, o] of [...this.#offers]) if (o.since <= old && this.#withdraw(id)) withdrawn++;
      if (withdrawn > 0)
        debug('multi-server %s: %d offers untaken while %d wait: withdrawn', this.#opts.path, withdrawn, this.waiting);
      this.#unstarve();
      this.#scheduleReap();
    }, wait);
    this.#reaper.unref();
  }

  /**
   * Out of resources for another channel (grant pages, fds): the requests wait (as requests beyond
   * maxConnections do) until a connection ends and frees what it held. When none of ours holds
   * any, what is short is held by other processes (gntalloc's pages are shared by the whole
   * domain): look again after a back-off (50 ms, doubling to 1 s) rather than give up serving.
   */
  #starve(): void {
    this.#starved = true;
    debug(
      'multi-server %s: out of resources at %d connections; %d requests wait',
      this.#opts.path,
      this.connections,
      this.#waiting.size,
    );
    if (this.connections > 0 || this.#starveTimer || this.#closed) return;
    this.#starveMs = Math.min(1000, this.#starveMs ? this.#starveMs * 2 : 50);
    this.#starveTimer = setTimeout(() => {
      this.#starveTimer = null;
      this.#unstarve();
    }, this.#starveMs);
    if (!this.#refed) this.#starveTimer.unref();
  }

  /**
   * The server itself cannot go on (xenstore gone, a channel that cannot be offered at all): it
   * stops, and 'error' follows on the next tick, outside the pass that met it (so an 'error' with
   * no listener throws as any EventEmitter's does, rather than vanish in the pass's promise).
   */
  #fatal(e: Error): void {
    if (this.#closed || !this.#listening) return;
    this.#stop();
    process.nextTick(() => {
      if (!this.#closed) this.emit('error', e);
    });
  }

  /** Resources freed (or worth another look): take requests again. */
  #unstarve(): void {
    if (!this.#starved) return void this.#take();
    this.#starved = false;
    if (this.#starveTimer) clearTimeout(this.#starveTimer);
    this.#starveTimer = null;
    this.#take();
  }

  #offerTo(id: string): 'ok' | 'starved' | 'failed' {
    if (this.#closed) return 'failed';
    const path = `${this.#opts.path}/${id}`;
    let offer: Offer;
    try {
      offer = offerChannel(
        this.#b,
        { ...this.#opts, path },
        (s) => this.#connected(id, s),
        (e) => {
          this.#withdraw(id);
          this.#clientError(e);
          this.#unstarve();
        },
      );
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === 'ENOSPC' || code === 'ENOMEM' || code === 'EMFILE' || code === 'ENFILE' || code === 'EAGAIN')
        return 'starved';
      this.#fatal(e as Error);
      return 'failed';
    }
    offer.ref(this.#refed);
    const timer = setTimeout(() => {
      debug('multi-server %s: nobody took %s within %d ms', this.#opts.path, id, this.#acceptTimeout);
      this.#withdraw(id);
      this.#unstarve();
    }, this.#acceptTimeout);
    timer.unref();
    this.#offers.set(id, { offer, timer, since: Date.now() });
    this.#ids.add(id);
    this.#starveMs = 0;
    return 'ok';
  }

  /** Withdraws the offer for ID (true), unless its client has just attached (false). */
  #withdraw(id: string, look = true): boolean {
    const o = this.#offers.get(id);
    if (!o) return false;
    const withdrawn = o.offer.cancel(look);
    if (this.#offers.get(id) !== o) return false; // its client attached after all: #connected has it
    this.#offers.delete(id);
    this.#ids.delete(id);
    clearTimeout(o.timer);
    return withdrawn;
  }

  #connected(id: string, s: VchanStream): void {
    const o = this.#offers.get(id);
    if (o) {
      clearTimeout(o.timer);
      this.#attachMs = 0.8 * this.#attachMs + 0.2 * (Date.now() - o.since);
    }
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
    if (this.#reaper) clearTimeout(this.#reaper);
    this.#reaper = null;
    if (this.#starveTimer) clearTimeout(this.#starveTimer);
    this.#starveTimer = null;
    for (const id of [...this.#offers.keys()]) this.#withdraw(id, false);
    this.#waiting.clear();
    this.#answered.clear();
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
        // The requests waiting go with the queue: their clients hear a refusal.
        await xs.rm(this.#queue).catch(() => undefined);
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
    for (const t of [this.#retry, this.#starveTimer])
      if (t && on) t.ref();
      else t?.unref();
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

/** What a request came to: our channel (attached), taken by another client, or refused. */
type Answer = VchanStream | 'taken' | 'refused';

/**
 * Connects to a {@link VchanMultiServer} of domain `domid` at `path` (the full xenstore path):
 * asks for a channel of its own and connects to it. Waits while there is no server yet and while
 * the server has no room; a request the server refuses (at its backlog) or whose channel it
 * withdraws is made again under a fresh id after a short back-off. Bound the wait with
 * options.timeout (ETIMEDOUT) or options.signal (AbortError). EBUSY when another process of this
 * domain takes the channel offered to us three times running; ECONNREFUSED or EPROTO for a channel
 * that cannot be used, as {@link connect}.
 */
export async function connectMulti(options: ConnectOptions): Promise<VchanStream> {
  const o = checkObject('options', options);
  const domid = checkDomid('options.domid', o.domid);
  if (typeof o.path !== 'string') throw invalidArgType('options.path', 'of type string', o.path);
  const timeout = o.timeout === undefined ? undefined : checkInt('options.timeout', o.timeout, 0, 2 ** 31 - 1);
  const signal = o.signal as AbortSignal | undefined;
  if (signal !== undefined && !(signal instanceof AbortSignal))
    throw invalidArgType('options.signal', 'an instance of AbortSignal', signal);
  const mockDomid = o.mockDomid === undefined ? undefined : checkDomid('options.mockDomid', o.mockDomid);
  const b = binding(o.backend as Backend | undefined);
  if (signal?.aborted) throw abortError(signal);
  const base = o.path;
  const queue = `${base}/requests`;
  const lease = leaseShared(b, mockDomid);
  const xs = lease.xs;
  let broken = false;
  let refused = 0;
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const stop = new Promise<never>((_, reject) => {
    if (timeout !== undefined)
      timer = setTimeout(() => {
        const why = refused > 0 ? `; it refused or withdrew ${refused} requests (busy)` : '';
        reject(
          systemError('ETIMEDOUT', 'connect', `no channel from a vchan multi-server at ${base} in ${timeout} ms${why}`),
        );
      }, timeout);
    if (signal) {
      onAbort = () => reject(abortError(signal));
      signal.addEventListener('abort', onAbort, { once: true });
    }
  });
  stop.catch(() => undefined);
  const race = <T>(p: Promise<T>): Promise<T> => Promise.race([p, stop]);
  let node: string | undefined; // our request's node, while it may still be there
  try {
    const self = Number(await race(xs.read('domid')));
    // Our node is ours (its maker owns it); the server's domain may read it and remove it.
    const perms = [
      { domid: self, read: false, write: false },
      { domid, read: true, write: true },
    ];
    for (let taken = 0; ;) {
      const id = await placeRequest(xs, queue, perms, race);
      node = `${queue}/${id}`;
      debug('connectMulti %s: asked as %s', base, id);
      const answer = await awaitAnswer(b, xs, mockDomid, domid, base, id, options, race);
      node = undefined;
      if (typeof answer !== 'string') return answer;
      if (answer === 'taken') {
        // Processes of one domain share its xenstore rights, so another one may take the channel
        // offered for our request: we hear so at once and ask again under a fresh id.
        debug('connectMulti %s: the channel for %s was taken by another client', base, id);
        if (++taken >= MULTI_TAKEN_RETRIES)
          throw systemError('EBUSY', 'connect', `the channels offered to this client at ${base} were taken by another`);
        continue;
      }
      refused++;
      const delay = Math.min(1000, 25 * 2 ** Math.min(refused - 1, 6)) * (0.5 + Math.random() / 2);
      debug('connectMulti %s: request %s refused; asking again in %d ms', base, id, Math.round(delay));
      await race(new Promise((resolve) => setTimeout(resolve, delay)));
    }
  } catch (e) {
    debug('connectMulti %s: %s', base, (e as Error).message);
    broken = xenstoreFailed(e);
    if (node !== undefined) await takeBack(xs, node);
    throw e;
  } finally {
    if (timer) clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
    lease.release(broken);
  }
}

/**
 * Takes our request back: a request the server has answered is gone already; a channel it offered
 * times out there. Bounded: never a hang here.
 */
async function takeBack(xs: Xenstore, node: string): Promise<void> {
  let t: NodeJS.Timeout | undefined;
  await Promise.race([xs.rm(node).catch(() => undefined), new Promise((resolve) => (t = setTimeout(resolve, 5000)))]);
  clearTimeout(t);
}

/**
 * Makes a request's node under QUEUE, under a fresh random id (returned), waiting (on a watch) while
 * there is no queue or it is not ours to write, and backing off while this domain's xenstore quota
 * is spent.
 */
async function placeRequest(
  xs: Xenstore,
  queue: string,
  perms: { domid: number; read: boolean; write: boolean }[],
  race: <T>(p: Promise<T>) => Promise<T>,
): Promise<string> {
  for (let full = 0; ;) {
    // A fresh id for each attempt: one made and removed again may have been seen by the server.
    const id = randomBytes(8).toString('hex');
    const node = `${queue}/${id}`;
    const q = await race(
      xs.tryRead(queue).catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'EACCES') return undefined; // not (yet) ours to read
        throw e;
      }),
    );
    if (q !== undefined) {
      let made = false;
      try {
        await race(xs.write(node, ''));
        made = true;
        await race(xs.setPermissions(node, perms));
        return id;
      } catch (e) {
        const code = (e as { code?: string }).code;
        // Made, and the server (dom0, which needs no permission) has answered it already.
        if (made && code === 'ENOENT') return id;
        if (code === 'ENOSPC' || code === 'EDQUOT') {
          // Our domain's nodes are all spent (by a flood of requests, say): the server's refusals
          // free them. Ask again shortly.
          full++;
          await race(new Promise((resolve) => setTimeout(resolve, Math.min(1000, 25 * 2 ** Math.min(full, 6)))));
          continue;
        }
        if (code !== 'EACCES' && code !== 'ENOENT') {
          if (made) await takeBack(xs, node); // given up (timeout, abort) between the two steps
          throw e;
        }
        if (made) await xs.rm(node).catch(() => undefined); // not for the server to see: start again
      }
    }
    // No queue (no server yet), or not ours to write: wait for it to change.
    const w = await xs.watch(queue); // not raced: a watch made after we gave up would be left behind
    try {
      const it = w[Symbol.asyncIterator]();
      await race(it.next()); // the event every new watch fires at once
      const q2 = await race(xs.tryRead(queue).catch(() => undefined));
      if (q2 === undefined) {
        const next = await race(it.next());
        if (next.done) throw coded('The xenstore watch ended', 'ERR_XEN_CLOSED');
      }
    } finally {
      await w.close().catch(() => undefined);
    }
  }
}

/**
 * Waits for the server's answer to request ID: its node goes, and then the channel offered at
 * BASE/ID is ours to attach to, or there is none (refused, or withdrawn before we got to it).
 */
async function awaitAnswer(
  b: Binding,
  xs: Xenstore,
  mockDomid: number | undefined,
  domid: number,
  base: string,
  id: string,
  options: ConnectOptions,
  race: <T>(p: Promise<T>) => Promise<T>,
): Promise<Answer> {
  const node = `${base}/requests/${id}`;
  const path = `${base}/${id}`;
  const w = await xs.watch(node); // not raced (as above)
  try {
    const it = w[Symbol.asyncIterator]();
    for (;;) {
      const next = await race(it.next());
      if (next.done) throw coded('The xenstore watch ended', 'ERR_XEN_CLOSED');
      if ((await race(xs.tryRead(node).catch(() => ''))) !== undefined) continue; // still waiting
      const entry = await race(readEntry(xs, path));
      if (!entry) return 'refused';
      try {
        return attachEntry(b, mockDomid, domid, path, entry, options);
      } catch (e) {
        const { code, syscall } = e as { code?: string; syscall?: string };
        if (code === 'EBUSY') return 'taken';
        // Withdrawn as we attached (the server removes the entry before the pages): ask again.
        const again = await race(readEntry(xs, path).catch(() => undefined));
        if (!again || again.ref !== entry.ref || again.port !== entry.port) return 'refused';
        // Still there, and unusable: the server's channel is broken.
        const broken = systemError(
          syscall === 'xengnttab_map_grant_ref' ? 'ECONNREFUSED' : 'EPROTO',
          'connect',
          `the channel offered at ${path} cannot be used: ${(e as Error).message}`,
        );
        (broken as Error & { cause?: unknown }).cause = e;
        throw broken;
      }
    }
  } finally {
    await w.close().catch(() => undefined);
  }
}
