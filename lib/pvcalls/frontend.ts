/**
 * The PVCalls frontend, in userspace: a domain's POSIX socket calls served by another domain's
 * backend (Linux's pvcalls-back.ko, or PvcallsBackend). connectPvcalls() does the xenbus handshake
 * on device/pvcalls/<dev> (version 1, the commands ring's grant and event channel, Initialised ->
 * Connected) and gives a PvcallsFrontend, whose createConnection() and createServer() are shaped
 * like net's: Duplex sockets over per-socket data rings, and a server that listens and accepts
 * through the backend. Errors the backend returns (negative Linux errnos) become Node errors with
 * their code, errno and syscall ('pvcalls.connect', ...).
 *
 * Version 1 has no shutdown: end() waits until the backend has taken every byte written, and the
 * socket stays open for reading until it is destroyed (RELEASE). The remote end closing shows as
 * the end of the readable side (in_error -ENOTCONN after the last byte).
 */
import { EventEmitter } from 'node:events';
import { constants } from 'node:os';

import { checkDomid, checkInt, checkObject, coded } from '../errors';
import { EventChannel } from '../evtchn';
import { GrantSharer, type SharedPages } from '../grants';
import type { Backend } from '../native';
import { Xenstore } from '../xenstore';
import { DataRing } from './data';
import { FrontRing } from './ring';
import { PvcallsServer, type PvcallsListenOptions, type PvcallsServerEvents } from './server';
import { PvcallsSocket } from './socket';
import {
  AF_INET,
  backendError,
  DATA_INTF,
  decodeResponse,
  encodeInetAddress,
  encodeRequest,
  MAX_RING_ORDER,
  PVCALLS_VERSION,
  type PvcallsRequest,
  SOCK_STREAM,
} from './wire';
import { readState, waitState, XenbusState } from './xenbus';

const E = constants.errno;

export { PvcallsServer, PvcallsSocket, type PvcallsListenOptions, type PvcallsServerEvents };

/** Options of {@link connectPvcalls}. */
export interface PvcallsFrontendOptions {
  /** 'real' (Xen) or 'mock'; default: the process's backend (see useBackend). */
  backend?: Backend;
  /** Mock only: act as this domain. */
  mockDomid?: number;
  /** The device number under device/pvcalls (default 0). */
  dev?: number;
  /** How long to wait for the backend's states, in ms (default 30000). */
  timeout?: number;
  /** The data ring's order for the sockets (default: the backend's max-page-order, at most 4). */
  ringOrder?: number;
}

/** @internal A request as call() takes it: any but its request id. */
export type Request = {
  [K in PvcallsRequest['cmd']]: Omit<Extract<PvcallsRequest, { cmd: K }>, 'reqId'>;
}[PvcallsRequest['cmd']];

/** The events of a {@link PvcallsFrontend}. */
export interface PvcallsFrontendEvents {
  /**
   * The device has closed: close() was called, or the backend left Connected (its sockets were
   * destroyed first, with ECONNRESET).
   */
  close: [];
}

/**
 * A connected PVCalls frontend (from {@link connectPvcalls}): its sockets are made by
 * createConnection() and createServer(); see {@link PvcallsFrontendEvents} for what it emits.
 */
export class PvcallsFrontend extends EventEmitter<PvcallsFrontendEvents> {
  /** The backend's domain. */
  readonly backendDomid: number;
  /** Each socket's data ring is 2^ringOrder pages. */
  readonly ringOrder: number;
  readonly #xs: Xenstore;
  readonly #ev: EventChannel;
  readonly #gs: GrantSharer;
  readonly #front: string;
  readonly #back: string;
  #ring: FrontRing;
  #page: SharedPages;
  #port: number;
  #nextReq = 0;
  #nextId = 1n;
  readonly #pending = new Map<number, (ret: number) => void>();
  readonly #queue: (() => void)[] = [];
  readonly #ports = new Map<number, () => void>();
  /** The sockets open now (connected and accepted; not the servers), and destroyed ones until released. */
  readonly sockets = new Set<PvcallsSocket>();
  #closed = false;
  #closing?: Promise<void>;
  #watch?: Awaited<ReturnType<Xenstore['watch']>>;

  /** @internal use connectPvcalls() */
  constructor(parts: {
    xs: Xenstore;
    ev: EventChannel;
    gs: GrantSharer;
    front: string;
    back: string;
    backendDomid: number;
    page: SharedPages;
    ring: FrontRing;
    port: number;
    ringOrder: number;
  }) {
    super();
    this.#xs = parts.xs;
    this.#ev = parts.ev;
    this.#gs = parts.gs;
    this.#front = parts.front;
    this.#back = parts.back;
    this.backendDomid = parts.backendDomid;
    this.#page = parts.page;
    this.#ring = parts.ring;
    this.#port = parts.port;
    this.ringOrder = parts.ringOrder;
    this.#ports.set(this.#port, () => this.#responses());
    this.#ev.on('event', (p) => this.#ports.get(p)?.());
  }

  /** @internal */
  async watchBackend(): Promise<void> {
    this.#watch = await this.#xs.watch(`${this.#back}/state`);
    this.#watch.on(
      'change',
      () =>
        void readState(this.#xs, this.#back).then((s) => {
          // Anything but Connected: the backend closed the device, or a new backend started over.
          if (s !== XenbusState.Connected)
            this.#lost(backendError(-E.ECONNRESET, 'pvcalls', `the backend left Connected (state ${s})`));
        }),
    );
  }

  #lost(err: Error): void {
    if (this.#closed) return;
    for (const s of this.sockets) s.destroy(err);
    void this.close();
  }

  /** @internal Sends a command; resolves with the backend's ret (0 or a negative errno). */
  call(req: Request): Promise<number> {
    if (this.#closed) return Promise.resolve(-E.ECONNABORTED);
    return new Promise<number>((resolve) => {
      const send = () => {
        const reqId = (this.#nextReq = (this.#nextReq + 1) >>> 0);
        this.#pending.set(reqId, resolve);
        encodeRequest(this.#ring.nextRequest(), { ...req, reqId } as PvcallsRequest);
        if (this.#ring.push()) this.#ev.notify(this.#port);
      };
      if (this.#ring.free > 0 && this.#queue.length === 0) send();
      else this.#queue.push(send);
    });
  }

  #responses(): void {
    let rsps: Uint8Array[];
    try {
      rsps = this.#ring.takeResponses();
    } catch (e) {
      return this.#lost(e as Error);
    }
    for (const slot of rsps) {
      const r = decodeResponse(slot);
      const done = this.#pending.get(r.reqId);
      this.#pending.delete(r.reqId);
      done?.(r.ret);
    }
    while (this.#queue.length && this.#ring.free > 0) this.#queue.shift()!();
  }

  /** @internal A new socket id. */
  newId(): bigint {
    return this.#nextId++;
  }

  /** @internal A data ring for a socket: the indexes page and 2^order data pages, shared with the backend. */
  newDataRing(): { ring: DataRing; pages: SharedPages; port: number; ref: number; unref: () => void } {
    const order = this.ringOrder;
    const pages = this.#gs.share(this.backendDomid, 1 + (1 << order));
    const idx = new DataView(pages.buffer, 0, 4096);
    idx.setUint32(DATA_INTF.ringOrder, order, true);
    pages.refs.slice(1).forEach((ref, i) => idx.setUint32(DATA_INTF.ref + 4 * i, ref, true));
    const ring = new DataRing(
      new Uint8Array(pages.buffer, 0, 4096),
      new Uint8Array(pages.buffer, 4096),
      order,
      'front',
    );
    const port = this.#ev.bindUnbound(this.backendDomid);
    return {
      ring,
      pages,
      port,
      ref: pages.refs[0],
      unref: () => {
        this.#ports.delete(port);
        try {
          this.#ev.unbind(port);
        } catch {
          // closed with the frontend
        }
        pages.unshare();
      },
    };
  }

  /** @internal */
  onPort(port: number, fn: () => void): void {
    this.#ports.set(port, fn);
  }

  /** @internal */
  notify(port: number): void {
    try {
      this.#ev.notify(port);
    } catch {
      // the backend is gone: the socket learns it from its ring or the device's state
    }
  }

  /** A socket connected to HOST:PORT from the backend's side (its network). Emits 'connect'. */
  createConnection(options: { host?: string; port: number }, connectListener?: () => void): PvcallsSocket {
    const o = checkObject('options', options);
    const port = checkInt('options.port', o.port, 0, 65535);
    const host = o.host === undefined ? '127.0.0.1' : String(o.host);
    const addr = encodeInetAddress({ family: AF_INET, port, address: host });
    const s = new PvcallsSocket(this, this.newId());
    if (connectListener) s.once('connect', connectListener);
    void (async () => {
      let ret = await this.call({ cmd: 'SOCKET', id: s.id, domain: AF_INET, type: SOCK_STREAM, protocol: 0 });
      if (ret < 0) return s.destroy(backendError(ret, 'pvcalls.socket'));
      s.created = true;
      const d = this.newDataRing();
      ret = await this.call({ cmd: 'CONNECT', id: s.id, addr, len: 16, flags: 0, ref: d.ref, evtchn: d.port });
      if (ret < 0) {
        d.unref();
        return s.destroy(backendError(ret, 'pvcalls.connect', `${host}:${port}`));
      }
      s.attach(d);
      s.emit('connect');
    })();
    return s;
  }

  /** A server listening, through the backend, on the backend's side. */
  createServer(connectionListener?: (s: PvcallsSocket) => void): PvcallsServer {
    const srv = new PvcallsServer(this);
    if (connectionListener) srv.on('connection', connectionListener);
    return srv;
  }

  /**
   * Releases every socket and closes the device (Closing, then Closed once the backend has).
   * Every call returns the same promise: the device is closed once.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    // Let the RELEASEs go out before the ring does.
    await Promise.race([
      Promise.all([...this.sockets].map((s) => s.released)),
      new Promise((r) => setTimeout(r, 2000)),
    ]);
    this.#closed = true;
    for (const [, done] of this.#pending) done(-E.ECONNABORTED);
    this.#pending.clear();
    await this.#watch?.close();
    await this.#xs.write(`${this.#front}/state`, String(XenbusState.Closing)).catch(() => undefined);
    // The backend passes through Closing (Linux's and ours), or is already Closed or gone.
    await waitState(this.#xs, this.#back, (s) => s >= XenbusState.Closing || s === XenbusState.Unknown, 5000).catch(
      () => undefined,
    );
    await this.#xs.write(`${this.#front}/state`, String(XenbusState.Closed)).catch(() => undefined);
    this.#ev.close();
    this.#page.unshare();
    this.#gs.close();
    this.#xs.close();
    this.emit('close');
  }
}

/**
 * Connects this domain's PVCalls frontend (device/pvcalls/<dev>, which a toolstack created) to its
 * backend: waits for the backend's InitWait, checks version 1, shares the commands ring and an
 * event channel, and waits for Connected.
 */
export async function connectPvcalls(options: PvcallsFrontendOptions = {}): Promise<PvcallsFrontend> {
  const o = checkObject('options', options);
  const dev = o.dev === undefined ? 0 : checkInt('options.dev', o.dev, 0, 1 << 20);
  const timeout = o.timeout === undefined ? 30000 : checkInt('options.timeout', o.timeout, 1, 2 ** 31 - 1);
  // The spec's data rings have order 1 at least.
  const ringOrder =
    o.ringOrder === undefined ? undefined : checkInt('options.ringOrder', o.ringOrder, 1, MAX_RING_ORDER);
  const common = { backend: options.backend, mockDomid: options.mockDomid };
  if (o.mockDomid !== undefined) checkDomid('options.mockDomid', o.mockDomid);
  const xs = new Xenstore(common);
  let ev: EventChannel | undefined;
  let gs: GrantSharer | undefined;
  let page: SharedPages | undefined;
  try {
    const front = `device/pvcalls/${dev}`;
    const back = await xs.tryRead(`${front}/backend`);
    const bid = Number(await xs.tryRead(`${front}/backend-id`));
    if (!back || !Number.isInteger(bid))
      throw coded(`No PVCalls device ${dev} for this domain (${front}: a toolstack creates it)`, 'ERR_XEN_NO_DEVICE');
    // A frontend before us (a process that died, or closed half-way) may have left the device
    // Initialised or Connected, with the backend still on its ring: close it down to Closed first,
    // then start over from Initialising, as a kernel frontend does when it reconnects.
    const mine = await readState(xs, front);
    if (mine !== XenbusState.Initialising && mine !== XenbusState.Unknown) {
      if (mine !== XenbusState.Closed) {
        await xs.write(`${front}/state`, String(XenbusState.Closing));
        await waitState(xs, back, (s) => s >= XenbusState.Closing || s === XenbusState.InitWait, timeout);
        await xs.write(`${front}/state`, String(XenbusState.Closed));
      }
      await xs.write(`${front}/state`, String(XenbusState.Initialising));
    }
    await waitState(xs, back, (s) => s === XenbusState.InitWait, timeout);
    const versions = ((await xs.tryRead(`${back}/versions`)) ?? '').split(',');
    if (!versions.includes(PVCALLS_VERSION))
      throw coded(
        `The PVCalls backend offers versions ${versions.join(',')}, not ${PVCALLS_VERSION}`,
        'ERR_XEN_PROTOCOL',
      );
    const maxOrder = Number((await xs.tryRead(`${back}/max-page-order`)) ?? '0');
    const want = ringOrder ?? Math.min(4, maxOrder);
    if (!(want <= maxOrder) || want < 1)
      throw coded(
        `The backend's max-page-order is ${maxOrder}, below ${Math.max(want, 1)} (the spec's data rings have order 1 at least)`,
        'ERR_OUT_OF_RANGE',
      );
    ev = new EventChannel(common);
    gs = new GrantSharer(common);
    page = gs.share(bid, 1);
    const ring = FrontRing.init(new Uint8Array(page.buffer));
    const port = ev.bindUnbound(bid);
    const ref = page.refs[0];
    await xs.transaction(async (tx) => {
      await tx.write(`${front}/version`, PVCALLS_VERSION);
      await tx.write(`${front}/ring-ref`, String(ref));
      await tx.write(`${front}/port`, String(port));
      await tx.write(`${front}/state`, String(XenbusState.Initialised));
    });
    await waitState(xs, back, (s) => s === XenbusState.Connected || s >= XenbusState.Closing, timeout).then((s) => {
      if (s !== XenbusState.Connected) throw coded(`The PVCalls backend went to state ${s}`, 'ERR_XEN_PROTOCOL');
    });
    await xs.write(`${front}/state`, String(XenbusState.Connected));
    const fe = new PvcallsFrontend({ xs, ev, gs, front, back, backendDomid: bid, page, ring, port, ringOrder: want });
    await fe.watchBackend();
    return fe;
  } catch (e) {
    page?.unshare();
    ev?.close();
    gs?.close();
    xs.close();
    throw e;
  }
}
