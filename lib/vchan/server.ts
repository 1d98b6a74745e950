/**
 * VchanServer: one channel at a time for one client domain, as Xen's libxenvchan serves.
 */
import { debuglog } from 'node:util';

import { type Binding, binding } from '../native';

import { type OfferOptions, type ServerOptions, type StaticChannel, checkServerOptions } from './options';
import { claimPath, claimStatic, type Offer, offerChannel } from './offer';
import { Backoff } from './backoff';
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
import type { VchanStream } from './stream';

const debug = debuglog('xen-vchan');

/** How long a static server waits for its agreed grant reference to be free before 'error'. */
const STATIC_REF_WAIT_MS = 5000;

/**
 * A vchan server: one channel at a time for one client domain, as Xen's libxenvchan serves (any
 * libxenvchan client can connect to it). After a client leaves, the server offers the channel again
 * for the next one. For many clients at once on one path, see {@link VchanMultiServer}. Emits
 * 'listening', 'connection' (VchanStream), 'clientError', 'error' and 'close'.
 *
 * As with a Unix socket path, one server at a time serves a path: listen() on a path that a live
 * server of this domain holds emits 'error' with EADDRINUSE. A path whose server died is free again
 * (its xenstore entry is replaced).
 *
 * A client that breaks the protocol as it connects (a ring index no ring can hold) costs that one
 * connection: the channel is dropped, 'clientError' is emitted (only if someone listens; as
 * http.Server does) and a new channel is offered. 'error' is for the server itself (a path already
 * served, a channel that cannot be offered), after which it stops listening.
 */
export class VchanServer extends VchanServerBase {
  readonly #opts: OfferOptions & ServerOptions;
  readonly #b: Binding;
  #offer: Offer | null = null;
  #current: VchanStream | null = null;
  #release: (() => void) | null = null;
  /** Out of resources for the next offer: it is tried again after a back-off. */
  readonly #retry = new Backoff(50);
  /** When a static channel's offer first found its grant reference taken (0: it did not). */
  #refWaitSince = 0;

  constructor(options: ServerOptions, onConnection?: (s: VchanStream) => void) {
    const opts = checkServerOptions(options);
    const b = binding(options.backend);
    super(onConnection);
    this.#opts = opts;
    this.#b = b;
  }

  /** @internal Claims the path (or the static port) for this server alone. */
  protected async [kStart](): Promise<void> {
    const st = this.#opts.static;
    const release = st
      ? await claimStatic(this.#b, this.#opts.mockDomid, st.port)
      : await claimPath(this.#b, this.#opts.mockDomid, this.#opts.path);
    if (this[kClosed]) return release();
    this.#release = release;
  }

  /** @internal */
  protected [kServe](): void {
    this.#reoffer(true);
  }

  /** The options the server was made with (domid, path, ring sizes). */
  address(): VchanServerAddress {
    const { domid, path, readMin, writeMin } = this.#opts;
    const st = this.#opts.static;
    return { domid, path, readMin, writeMin, ...(st ? { static: { ...st } } : {}) };
  }

  #offerNext(): void {
    const offer = offerChannel(
      this.#b,
      this.#opts,
      (s) => {
        this.#offer = null;
        if (!this[kRefed]) s.unref();
        this.#current = s;
        s.once('close', () => {
          this.#current = null;
          this.#reoffer();
        });
        this.emit('connection', s);
      },
      (e) => {
        this.#offer = null;
        if (this.listenerCount('clientError') > 0) this.emit('clientError', e);
        this.#reoffer();
      },
    );
    this.#offer = offer;
    offer.ref(this[kRefed]);
  }

  /**
   * Offers the channel again for the next client. Out of resources (gntalloc's pages are shared by
   * every process of the domain, fds): it looks again after a back-off (50 ms, doubling to 1 s)
   * while it listens. Any other failure ends the server with 'error'.
   */
  #reoffer(first = false): void {
    if (this[kClosed] || !this.listening) return;
    try {
      this.#offerNext();
      this.#retry.reset();
      this.#refWaitSince = 0;
      if (first) this.emit('listening');
    } catch (e) {
      const code = (e as { code?: string }).code;
      // A static channel's agreed grant reference still held: Linux gives the reference of a page
      // the previous client mapped back only once it is unmapped (up to a second later).
      const refBusy = code === 'EADDRNOTAVAIL' && this.#opts.static !== undefined;
      if (refBusy) this.#refWaitSince ||= Date.now();
      if (refBusy && Date.now() - this.#refWaitSince > STATIC_REF_WAIT_MS) {
        // Held for good (another grant of this domain has it): say so.
      } else if (
        refBusy ||
        (!first &&
          (code === 'ENOSPC' || code === 'ENOMEM' || code === 'EMFILE' || code === 'ENFILE' || code === 'EAGAIN'))
      ) {
        const ms = this.#retry.schedule(() => this.#reoffer(first), this[kRefed]);
        debug('server %s: no channel to offer (%s); again in %d ms', this.#opts.path, code, ms);
        return;
      }
      this[kStop]();
      this.emit('error', e as Error);
    }
  }

  /** @internal Withdraws the offer and gives the path up. */
  protected [kTeardown](): void {
    this.#retry.cancel();
    this.#offer?.cancel();
    this.#offer = null;
    // A static port stays held while a stream still uses it (it is bound on the addon's handle).
    const release = this.#release;
    if (release && this.#current && this.#opts.static) this.#current.once('close', release);
    else release?.();
    this.#release = null;
  }

  /** @internal */
  protected [kConnected](): boolean {
    return this.#current !== null;
  }

  /** @internal 'close' once the connected stream (if any) has closed. */
  protected [kFinish](emitClose: () => void): void {
    const finish = () => process.nextTick(emitClose);
    if (this.#current) this.#current.once('close', finish);
    else finish();
  }

  /** @internal */
  protected [kSetRef](on: boolean): void {
    this.#offer?.ref(on);
    this.#retry.ref(on);
    if (on) this.#current?.ref();
    else this.#current?.unref();
  }
}

/** Like net.createServer: a VchanServer, with an optional 'connection' listener. Call listen(). */
export function createServer(options: ServerOptions, onConnection?: (s: VchanStream) => void): VchanServer {
  return new VchanServer(options, onConnection);
}

/** What VchanServer.address() gives: the options the server was made with. */
export interface VchanServerAddress {
  /** The client's domain. */
  domid: number;
  /** The channel's xenstore path ('' for a static channel). */
  path: string;
  /** The least size of the ring the server reads, bytes. */
  readMin: number;
  /** The least size of the ring the server writes, bytes. */
  writeMin: number;
  /** The static channel, if it is one. */
  static?: StaticChannel;
}
