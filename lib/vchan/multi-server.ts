/**
 * VchanMultiServer: many clients of one domain at once, each on its own channel, all reached
 * through one well-known path (the protocol and its xenstore layout: requests.ts).
 */
import { debuglog } from 'node:util';

import { systemError } from '../errors';
import { type Binding, binding } from '../native';
import { Xenstore, type XenstoreWatch } from '../xenstore';
import { checkMultiOptions, type MultiOptions, type MultiServerOptions } from './options';
import { claimPath, type Offer, offerChannel } from './offer';
import { Backoff } from './backoff';
import { OfferSet } from './offers';
import { makeQueue, publishQueue, RequestQueue } from './requests';
import {
  kClosed,
  kConnected,
  kFinish,
  kRefed,
  kServe,
  kSetRef,
  kStart,
  kStop,
  kTeardown,
  VchanServerBase,
} from './server-base';
import type { VchanServerAddress } from './server';
import type { VchanStream } from './stream';

const debug = debuglog('xen-vchan');

/**
 * A vchan server for many clients of one domain at once, each on its own channel, all reached
 * through one path (the layout is in lib/vchan/requests.ts). Its clients use
 * {@link connectMulti}. Emits 'listening', 'connection' (VchanStream), 'clientError', 'error' and
 * 'close', as {@link VchanServer} does.
 */
export class VchanMultiServer extends VchanServerBase {
  readonly #opts: MultiOptions;
  readonly #b: Binding;
  readonly #offers: OfferSet;
  readonly #streams = new Set<VchanStream>();
  /** The ids connected: a repeated request for one of them (or one offered) is refused. */
  readonly #connectedIds = new Set<string>();
  /** The requests not yet answered. */
  readonly #requests: RequestQueue;
  /** Settles once teardown() has given everything up (the path is free for another server then). */
  #stopped: Promise<void> = Promise.resolve();
  #onDrained: (() => void) | null = null;
  #xs: Xenstore | null = null;
  #watch: XenstoreWatch | null = null;
  #release: (() => void) | null = null;
  #taking = false;
  #takeAgain = false;
  /** An offer failed for want of resources (gntalloc's pages, fds): take no more until one ends. */
  #starved = false;
  /** Starved with no connection of ours to free anything: the next look, after a back-off. */
  readonly #starveRetry = new Backoff(50);
  /** This server's domain. */
  #self = 0;
  /** Backing off after xenstore refused the queue's remaking. */
  readonly #queueRetry = new Backoff(20);

  constructor(options: MultiServerOptions, onConnection?: (s: VchanStream) => void) {
    const opts = checkMultiOptions(options);
    const b = binding(options.backend);
    super(onConnection);
    this.#opts = opts;
    this.#b = b;
    this.#requests = new RequestQueue(this.#opts.backlog);
    this.#offers = new OfferSet(this.#opts.acceptTimeout, this.#opts.path);
  }

  /** Connections now: offered to a client that asked, or connected. */
  get connections(): number {
    return this.#offers.size + this.#streams.size;
  }

  /** Requests waiting for room now (at most `backlog`). */
  get waiting(): number {
    return this.#requests.waiting.size;
  }

  /** Requests refused since the server was made, for want of room to wait (beyond `backlog`). */
  get refused(): number {
    return this.#requests.refused;
  }

  /** The options the server was made with (domid, path, ring sizes, limits). */
  address(): VchanMultiServerAddress {
    const { domid, path, readMin, writeMin, maxConnections, backlog } = this.#opts;
    return { domid, path, readMin, writeMin, maxConnections, backlog };
  }

  /** @internal Claims the path and publishes the request queue (a dead server's nodes go). */
  protected async [kStart](): Promise<void> {
    const o = this.#opts;
    this.#release = await claimPath(this.#b, o.mockDomid, o.path);
    if (this[kClosed]) return;
    const xs = new Xenstore({ backend: this.#b.backend, mockDomid: o.mockDomid });
    this.#xs = xs;
    if (!this[kRefed]) xs.unref();
    this.#self = Number(await xs.read('domid'));
    await publishQueue(xs, o.path, this.#self, o.domid);
    if (this[kClosed]) return;
    const w = await xs.watch(this.#queue);
    this.#watch = w;
    void (async () => {
      for await (const _ of w) this.#take();
    })();
    debug('multi-server %s: serving domain %d', o.path, o.domid);
  }

  /** @internal */
  protected [kServe](): void {
    this.emit('listening');
    this.#take();
  }

  get #queue(): string {
    return `${this.#opts.path}/requests`;
  }

  /**
   * Reads the requests, answers as many as there is room for (an offer each), refuses the oldest
   * beyond the backlog, and removes the nodes of the requests answered. One pass at a time; a
   * change seen meanwhile makes another.
   */
  #take(): void {
    if (!this.listening || !this.#xs) return;
    if (this.#taking) {
      this.#takeAgain = true;
      return;
    }
    this.#taking = true;
    this.#takeAgain = false;
    this.#pass(this.#xs).then(
      () => {
        this.#taking = false;
        this.#queueRetry.reset();
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
      await xs.transaction((tx) => makeQueue(tx, this.#opts.path, this.#self, this.#opts.domid));
      this.#clientError(systemError('ENOENT', 'accept', `the client domain removed ${queue}; it is there again`));
      names = [];
    }
    if (!this.listening) return;
    const now = Date.now();
    const refuse = this.#requests.update(
      names,
      now,
      (id) => this.#offers.has(id) || this.#connectedIds.has(id),
      (name) =>
        this.#clientError(systemError('EPROTO', 'accept', `a malformed or repeated request ${JSON.stringify(name)}`)),
    );
    if (refuse.length > 0) debug('multi-server %s: refusing %d requests', this.#opts.path, refuse.length);
    const offered: string[] = [];
    const waiting = this.#requests.waiting;
    while (waiting.size > 0 && this.connections < this.#opts.maxConnections && !this.#starved && this.listening) {
      const id = this.#requests.next(now);
      const r = this.#offerTo(id);
      if (r === 'failed') break;
      if (r === 'starved') {
        this.#starve();
        break;
      }
      waiting.delete(id);
      offered.push(id);
    }
    // Each answered request's node goes (the offer, if any, is in place before).
    await Promise.all([
      ...offered.map((id) => this.#removeRequest(id, false)),
      ...refuse.map((id) => this.#removeRequest(id, true)),
    ]);
  }

  async #removeRequest(id: string, refused: boolean): Promise<void> {
    const xs = this.#xs;
    if (!xs) return;
    try {
      await xs.rm(`${this.#queue}/${id}`);
      this.#requests.answered(id, refused, true);
    } catch (e) {
      // Not ours to remove (a node whose maker did not let us): answered all the same. A refusal
      // is tried again on the next pass, as the only way its client can hear it.
      debug('multi-server %s: cannot remove request %s: %s', this.#opts.path, id, (e as Error).message);
      this.#requests.answered(id, refused, false);
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
    if (this[kClosed] || !this.listening) return;
    const code = (e as { code?: string }).code;
    if (code !== 'EAGAIN' && code !== 'ENOSPC' && code !== 'EDQUOT' && code !== 'E2BIG' && code !== 'EINVAL')
      return this.#fatal(e);
    const ms = this.#queueRetry.schedule(() => this.#take(), this[kRefed]);
    this.#clientError(systemError(code, 'accept', `the request queue: ${e.message}; trying again in ${ms} ms`));
  }

  /** While requests wait for room, offers nobody takes are withdrawn sooner (OfferSet.reap). */
  #scheduleReap(): void {
    if (!this.listening) return;
    this.#offers.reap(
      () => this.#requests.waiting.size,
      () => {
        this.#unstarve();
        this.#scheduleReap();
      },
    );
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
      this.#requests.waiting.size,
    );
    if (this.connections > 0 || this.#starveRetry.pending || this[kClosed]) return;
    this.#starveRetry.schedule(() => this.#unstarve(), this[kRefed]);
  }

  /**
   * The server itself cannot go on (xenstore gone, a channel that cannot be offered at all): it
   * stops, and 'error' follows on the next tick, outside the pass that met it (so an 'error' with
   * no listener throws as any EventEmitter's does, rather than vanish in the pass's promise).
   */
  #fatal(e: Error): void {
    if (this[kClosed] || !this.listening) return;
    this[kStop]();
    process.nextTick(() => {
      if (!this[kClosed]) this.emit('error', e);
    });
  }

  /** Resources freed (or worth another look): take requests again. */
  #unstarve(): void {
    if (!this.#starved) return void this.#take();
    this.#starved = false;
    this.#starveRetry.cancel();
    this.#take();
  }

  #offerTo(id: string): 'ok' | 'starved' | 'failed' {
    if (this[kClosed]) return 'failed';
    const path = `${this.#opts.path}/${id}`;
    let offer: Offer;
    try {
      offer = offerChannel(
        this.#b,
        { ...this.#opts, path },
        (s) => this.#connected(id, s),
        (e) => {
          this.#offers.withdraw(id);
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
    offer.ref(this[kRefed]);
    this.#offers.add(id, offer, () => this.#unstarve());
    this.#starveRetry.reset();
    return 'ok';
  }

  #connected(id: string, s: VchanStream): void {
    this.#offers.take(id);
    this.#connectedIds.add(id);
    this.#streams.add(s);
    if (!this[kRefed]) s.unref();
    s.once('close', () => {
      this.#streams.delete(s);
      this.#connectedIds.delete(id);
      if (this.#streams.size === 0) this.#onDrained?.();
      this.#unstarve();
    });
    this.emit('connection', s);
  }

  /** @internal Withdraws every offer and the queue, and gives the path up. */
  protected [kTeardown](): void {
    this.#queueRetry.cancel();
    this.#starveRetry.cancel();
    this.#offers.withdrawAll();
    this.#requests.clear();
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

  /** @internal */
  protected [kConnected](): boolean {
    return this.#streams.size > 0;
  }

  /** @internal 'close', once the connections have ended and the path is given up. */
  protected [kFinish](emitClose: () => void): void {
    void this.#stopped.then(emitClose);
  }

  /** @internal */
  protected [kSetRef](on: boolean): void {
    if (on) this.#xs?.ref();
    else this.#xs?.unref();
    this.#queueRetry.ref(on);
    this.#starveRetry.ref(on);
    this.#offers.ref(on);
    for (const s of this.#streams)
      if (on) s.ref();
      else s.unref();
  }
}

/** A {@link VchanMultiServer}, with an optional 'connection' listener. Call listen(). */
export function createMultiServer(
  options: MultiServerOptions,
  onConnection?: (s: VchanStream) => void,
): VchanMultiServer {
  return new VchanMultiServer(options, onConnection);
}

/** What VchanMultiServer.address() gives: the options the server was made with. */
export interface VchanMultiServerAddress extends Omit<VchanServerAddress, 'static'> {
  /** The most connections at once. */
  maxConnections: number;
  /** The most requests waiting for room. */
  backlog: number;
}
