/**
 * The PVCalls backend, in userspace: serves the POSIX socket calls of frontends in other domains
 * with this process's own sockets (so in its network namespace: 127.0.0.1 is this machine's
 * loopback). It watches backend/pvcalls/<frontend>/<dev> under its domain's home for devices a
 * toolstack created, answers the xenbus handshake (versions, max-page-order, function-calls, then
 * InitWait -> Connected once the frontend is Initialised), and serves the commands ring.
 *
 * Nothing a frontend sends is trusted. A request it may not make gets a negative errno in its
 * response: an unknown command (-524, Linux's ENOTSUPP, which Linux's pvcalls-back answers and the
 * spec calls ENOTSUP), a socket id it does not have or one it already has (-EINVAL, -EEXIST), a
 * family, type or address not version 1's (-EAFNOSUPPORT, -EINVAL), a grant that does not map (the
 * mapping's errno), a ring order outside 1 (the spec's minimum) to max-page-order (-EINVAL), more
 * sockets or pending connections than its limits (-ENOBUFS). Indexes that break the ring protocol
 * end that frontend's connection ('frontendError'); other frontends are served throughout.
 *
 * Every request is answered exactly once: a CONNECT whose socket is released while it is in flight
 * is answered (-ECONNABORTED) before the RELEASE is. A socket is half-closed as POSIX TCP is: when
 * the remote end has sent its FIN (in_error -ENOTCONN after its last byte), what the frontend writes
 * still goes to it; RELEASE delivers what the frontend wrote before it, then closes the socket.
 */
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { constants } from 'node:os';
import * as tls from 'node:tls';
import { debuglog } from 'node:util';

import { checkDomid, checkInt, checkObject, invalidArgType } from '../errors';
import { EventChannel, nativeHandleOf } from '../evtchn';
import { GrantMapper, type MappedPages } from '../grants';
import type { Backend, PumpHandle } from '../native';
import { Xenstore, type XenstoreWatch } from '../xenstore';
import { DataRing } from './data';
import { BackRing, RingCorruptError } from './ring';
import {
  AF_INET,
  DATA_INTF,
  decodeInetAddress,
  decodeRequest,
  encodeResponse,
  MAX_RING_ORDER,
  PVCALLS_VERSION,
  PvcallsCmd,
  type PvcallsRequest,
  SOCK_STREAM,
} from './wire';
import { readState, XenbusState } from './xenbus';

const debug = debuglog('xen-vchan');

const E = constants.errno;
/** Linux's kernel-internal ENOTSUPP, what pvcalls-back answers to a command it does not know. */
export const ENOTSUPP = 524;
/** The smallest data ring order the spec allows ("It has to be one at minimum"). */
export const MIN_RING_ORDER = 1;
/** How long a released socket may take to write out what the frontend wrote before RELEASE, ms. */
const RELEASE_LINGER_MS = 10_000;
/** A Node error's code as the negative Linux errno a response carries (-EIO when it has none). */
function errnoOf(err: unknown): number {
  const code = (err as { code?: string }).code;
  const n = code && (E as Record<string, number>)[code];
  return -(n || E.EIO);
}

export interface PvcallsBackendOptions {
  backend?: Backend;
  /** Mock only: serve as this domain. */
  mockDomid?: number;
  /** Sockets one frontend may hold at once (default 128). */
  maxSockets?: number;
  /** Connections waiting for ACCEPT on one listening socket (default 32; LISTEN's backlog is capped to it). */
  maxPendingAccepts?: number;
  /** The largest data ring a frontend may offer, as max-page-order (default 4, as Linux's backend). */
  maxRingOrder?: number;
  /** Serve only the devices of these frontend domains (default: every device under backend/pvcalls). */
  frontends?: number[];
  /**
   * Where a CONNECT goes (default: the address as given, from this process). Lets a backend map
   * a frontend's addresses onto its own, or refuse some, by throwing (the errno goes back).
   */
  connect?: (address: { host: string; port: number }) => net.Socket;
  /**
   * What moves a connected socket's bytes between its data ring and the socket (default 'js'
   * until the native pump has passed the real-Xen rig): 'native' reads from the socket straight into the ring and sends straight from it,
   * in C++, with no JavaScript per chunk (a socket without a file descriptor of its own, such as
   * a TLS socket a connect hook returned, falls back to 'js'); 'js' pumps through the
   * net.Socket's streams.
   */
  dataPump?: 'native' | 'js';
}

interface Frontend {
  domid: number;
  dev: number;
  back: string;
  front: string;
  state: number;
  watch?: XenstoreWatch;
  ring?: BackRing;
  ringMap?: MappedPages;
  port?: number;
  sockets: Map<bigint, BackSocket>;
  /** The frontend's state changes, handled in turn. */
  changes: Promise<void>;
}

type BackSocket = { kind: 'new' } | ActiveSocket | PassiveSocket;

/** A request answered when something happens, or cancelled (-EINTR) when its socket goes. */
interface Waiter<T> {
  fire: (v: T) => void;
  cancel: () => void;
}

interface PassiveSocket {
  kind: 'passive';
  server: net.Server;
  listening: boolean;
  backlog: number;
  /** Connections accepted by this process, waiting for the frontend's ACCEPT. */
  queue: net.Socket[];
  accept?: Waiter<net.Socket>;
  poll?: Waiter<void>;
  /** BIND's result (0 or a negative errno), once Node's listen() has answered. */
  bound?: Promise<number>;
}

interface ActiveSocket {
  kind: 'active';
  ring: DataRing;
  order: number;
  maps: MappedPages[];
  port: number;
  /** The socket; let go (destroyed, its fd duplicated) once a native pump moves its bytes. */
  sock: net.Socket;
  pump?: PumpHandle;
  pending: Buffer[];
  ended: boolean;
  released: boolean;
  /** Answers the CONNECT still in flight on this socket (once). */
  connecting?: (ret: number) => void;
}

export interface PvcallsBackendEvents {
  /** A frontend completed the handshake. */
  connect: [domid: number, dev: number];
  /** A frontend's connection ended (it closed, or broke the protocol). */
  disconnect: [domid: number, dev: number];
  /** A frontend broke the protocol; its connection was closed. */
  frontendError: [err: Error, domid: number, dev: number];
  error: [err: Error];
}

export class PvcallsBackend extends EventEmitter<PvcallsBackendEvents> {
  readonly #o: Required<Omit<PvcallsBackendOptions, 'backend' | 'mockDomid' | 'connect' | 'frontends'>> &
    Pick<PvcallsBackendOptions, 'connect'>;
  readonly #only: Set<number> | null;
  readonly #xs: Xenstore;
  readonly #ev: EventChannel;
  readonly #gm: GrantMapper;
  readonly #frontends = new Map<string, Frontend>();
  /** Event channel port -> what it wakes. */
  readonly #ports = new Map<number, () => void>();
  #watch?: XenstoreWatch;
  #closed = false;
  #scanning: Promise<void> = Promise.resolve();

  constructor(options: PvcallsBackendOptions = {}) {
    super();
    const o = checkObject('options', options);
    this.#o = {
      maxSockets: o.maxSockets === undefined ? 128 : checkInt('options.maxSockets', o.maxSockets, 1, 1 << 20),
      maxPendingAccepts:
        o.maxPendingAccepts === undefined ? 32 : checkInt('options.maxPendingAccepts', o.maxPendingAccepts, 1, 65535),
      maxRingOrder:
        o.maxRingOrder === undefined
          ? 4
          : checkInt('options.maxRingOrder', o.maxRingOrder, MIN_RING_ORDER, MAX_RING_ORDER),
      connect: options.connect,
      dataPump: o.dataPump === undefined ? 'js' : checkPumpKind(o.dataPump),
    };
    if (o.frontends !== undefined && !Array.isArray(o.frontends))
      throw invalidArgType('options.frontends', 'an array of domain ids', o.frontends);
    this.#only =
      o.frontends === undefined
        ? null
        : new Set((o.frontends as unknown[]).map((d, i) => checkDomid(`options.frontends[${i}]`, d)));
    const common = { backend: options.backend, mockDomid: options.mockDomid };
    this.#xs = new Xenstore(common);
    this.#ev = new EventChannel(common);
    this.#gm = new GrantMapper(common);
    this.#ev.on('event', (p) => this.#ports.get(p)?.());
  }

  /** Starts serving: handles the devices there are now and every one created later. */
  async start(): Promise<this> {
    this.#watch = await this.#xs.watch('backend/pvcalls');
    this.#watch.on('change', () => this.#rescan());
    this.#rescan();
    await this.#scanning;
    return this;
  }

  /**
   * The connected sockets by what pumps their bytes: 'native' (src/pump.cc) or 'js' (options.dataPump
   * 'js', or a socket with no file descriptor of its own, such as a TLS socket from a connect hook).
   */
  get dataPumps(): { native: number; js: number } {
    const n = { native: 0, js: 0 };
    for (const f of this.#frontends.values())
      for (const s of f.sockets.values())
        if (s.kind === 'active' && !s.connecting && !s.released) n[s.pump ? 'native' : 'js']++;
    return n;
  }

  /** The frontends connected now, as "domid/dev". */
  get connected(): string[] {
    return [...this.#frontends.values()].filter((f) => f.ring).map((f) => `${f.domid}/${f.dev}`);
  }

  #rescan(): void {
    this.#scanning = this.#scanning.then(() => this.#scan()).catch((e) => void this.emit('error', e as Error));
  }

  async #scan(): Promise<void> {
    if (this.#closed) return;
    const seen = new Set<string>();
    for (const d of (await this.#xs.directory('backend/pvcalls').catch(() => [])).filter(
      (n) => /^\d+$/.test(n) && (this.#only === null || this.#only.has(Number(n))),
    ))
      for (const dev of (await this.#xs.directory(`backend/pvcalls/${d}`).catch(() => [])).filter((n) =>
        /^\d+$/.test(n),
      )) {
        const key = `${d}/${dev}`;
        seen.add(key);
        if (!this.#frontends.has(key)) await this.#add(Number(d), Number(dev));
      }
    for (const [key, f] of this.#frontends) if (!seen.has(key)) await this.#remove(f);
  }

  async #add(domid: number, dev: number): Promise<void> {
    const back = `backend/pvcalls/${domid}/${dev}`;
    const front = await this.#xs.tryRead(`${back}/frontend`);
    if (!front) return; // not written yet: the next change brings it
    const f: Frontend = {
      domid,
      dev,
      back,
      front,
      state: XenbusState.Initialising,
      sockets: new Map(),
      changes: Promise.resolve(),
    };
    this.#frontends.set(`${domid}/${dev}`, f);
    await this.#xs.write(`${back}/versions`, PVCALLS_VERSION);
    await this.#xs.write(`${back}/max-page-order`, String(this.#o.maxRingOrder));
    await this.#xs.write(`${back}/function-calls`, '1');
    await this.#setState(f, XenbusState.InitWait);
    f.watch = await this.#xs.watch(`${front}/state`);
    // One change at a time: two looks at the same Initialised state must not connect twice.
    f.watch.on('change', () => {
      f.changes = f.changes.then(() => this.#frontendChanged(f)).catch((e) => this.#fail(f, e as Error));
    });
  }

  async #remove(f: Frontend): Promise<void> {
    this.#frontends.delete(`${f.domid}/${f.dev}`);
    await f.watch?.close();
    this.#disconnect(f);
  }

  async #setState(f: Frontend, s: number): Promise<void> {
    f.state = s;
    await this.#xs.write(`${f.back}/state`, String(s)).catch(() => undefined);
  }

  async #frontendChanged(f: Frontend): Promise<void> {
    if (!this.#frontends.has(`${f.domid}/${f.dev}`)) return;
    const fs = await readState(this.#xs, f.front);
    if (fs === XenbusState.Initialised && f.state === XenbusState.InitWait) await this.#connect(f);
    else if (fs === XenbusState.Closing) {
      // The frontend is closing: drop what it had and pass through Closing, as Linux's backends
      // do; the frontend says Closed next.
      this.#disconnect(f);
      if (f.state !== XenbusState.Closing && f.state !== XenbusState.Closed)
        await this.#setState(f, XenbusState.Closing);
    } else if (fs === XenbusState.Closed || fs === XenbusState.Unknown) {
      this.#disconnect(f);
      if (f.state !== XenbusState.Closed) await this.#setState(f, XenbusState.Closed);
    } else if (fs === XenbusState.Initialising && (f.state === XenbusState.Closed || f.state === XenbusState.Closing)) {
      this.#disconnect(f);
      await this.#setState(f, XenbusState.InitWait); // the frontend starts over
    }
  }

  async #connect(f: Frontend): Promise<void> {
    const version = await this.#xs.tryRead(`${f.front}/version`);
    if (version !== PVCALLS_VERSION) throw new Error(`frontend ${f.domid} asks for version ${version}`);
    const ref = Number(await this.#xs.read(`${f.front}/ring-ref`));
    const port = Number(await this.#xs.read(`${f.front}/port`));
    if (!Number.isInteger(ref) || ref < 0 || !Number.isInteger(port) || port <= 0)
      throw new Error(`frontend ${f.domid} gave ring-ref ${ref}, port ${port}`);
    f.ringMap = this.#gm.map(f.domid, [ref]);
    f.ring = new BackRing(new Uint8Array(f.ringMap.buffer));
    f.port = this.#ev.bindInterdomain(f.domid, port);
    this.#ports.set(f.port, () => this.#serve(f));
    await this.#setState(f, XenbusState.Connected);
    this.emit('connect', f.domid, f.dev);
    this.#serve(f); // requests published before the event channel was bound
  }

  /** Drops everything FRONTEND had: its sockets, its rings, its event channels. */
  #disconnect(f: Frontend): void {
    const had = f.ring !== undefined;
    for (const s of f.sockets.values()) this.#release(s);
    f.sockets.clear();
    if (f.port !== undefined) {
      this.#ports.delete(f.port);
      try {
        this.#ev.unbind(f.port);
      } catch {
        // already gone with the domain
      }
    }
    f.ringMap?.unmap();
    f.ring = f.ringMap = f.port = undefined;
    if (had) this.emit('disconnect', f.domid, f.dev);
  }

  #fail(f: Frontend, err: Error): void {
    if (!this.#frontends.has(`${f.domid}/${f.dev}`)) return;
    this.emit('frontendError', err, f.domid, f.dev);
    this.#disconnect(f);
    void this.#setState(f, XenbusState.Closing);
  }

  #serve(f: Frontend): void {
    if (!f.ring) return;
    let reqs: Uint8Array[];
    try {
      reqs = f.ring.takeRequests();
    } catch (e) {
      if (e instanceof RingCorruptError) return this.#fail(f, e);
      throw e;
    }
    for (const slot of reqs) {
      const req = decodeRequest(slot);
      const id = 'id' in req ? req.id : 0n;
      const answer = (ret: number) => this.#respond(f, req.reqId, req.cmd, ret, id);
      if (typeof req.cmd === 'number') {
        answer(-ENOTSUPP);
        continue;
      }
      let r: number | Promise<number>;
      try {
        r = this.#command(f, req as PvcallsRequest);
      } catch (e) {
        r = errnoOf(e);
      }
      if (typeof r === 'number') answer(r);
      else r.then(answer, (e) => answer(errnoOf(e)));
    }
  }

  #respond(f: Frontend, reqId: number, cmd: string | number, ret: number, id: bigint): void {
    debug('pvcalls backend %d/%d: %s id %s (req %d) -> %d', f.domid, f.dev, cmd, id, reqId, ret);
    if (!f.ring || !this.#frontends.has(`${f.domid}/${f.dev}`)) return;
    const code = typeof cmd === 'number' ? cmd : PvcallsCmd[cmd as keyof typeof PvcallsCmd];
    encodeResponse(f.ring.nextResponse(), { reqId, cmd: code, ret, id });
    if (f.ring.push() && f.port !== undefined) this.#notify(f.port);
    // Room made: requests held back for want of response slots can be taken now.
    queueMicrotask(() => this.#serve(f));
  }

  #notify(port: number): void {
    try {
      this.#ev.notify(port);
    } catch {
      // the frontend's domain is gone; its teardown follows
    }
  }

  #command(f: Frontend, req: PvcallsRequest): number | Promise<number> {
    const s = f.sockets.get(req.id);
    switch (req.cmd) {
      case 'SOCKET':
        if (s) return -E.EEXIST;
        if (req.domain !== AF_INET) return -E.EAFNOSUPPORT;
        if (req.type !== SOCK_STREAM || req.protocol !== 0) return -E.EINVAL;
        if (f.sockets.size >= this.#o.maxSockets) return -E.ENOBUFS;
        f.sockets.set(req.id, { kind: 'new' });
        return 0;
      case 'CONNECT': {
        if (s?.kind !== 'new') return -E.EINVAL;
        const a = decodeInetAddress(req.addr, req.len);
        if (!a) return -E.EAFNOSUPPORT;
        const ring = this.#mapRing(f, req.ref, req.evtchn);
        let sock: net.Socket;
        try {
          // Half-open, as TCP is: the remote end's FIN does not end what the frontend still writes.
          sock = this.#o.connect
            ? this.#o.connect({ host: a.address, port: a.port })
            : net.connect({ port: a.port, host: a.address, allowHalfOpen: true });
        } catch (e) {
          this.#unmapRing(ring); // the hook refused: its errno goes back
          throw e;
        }
        const active = this.#activate(f, req.id, ring, sock);
        return new Promise<number>((resolve) => {
          // One answer, whichever comes first: the connection, its failure, or a RELEASE.
          active.connecting = (ret) => {
            active.connecting = undefined;
            sock.off('error', onError);
            sock.off('connect', onConnect);
            resolve(ret);
          };
          const onError = (e: Error) => {
            // As with POSIX, the socket stays the frontend's until it releases it.
            const answer = active.connecting;
            active.connecting = undefined;
            this.#release(active);
            f.sockets.set(req.id, { kind: 'new' });
            answer?.(errnoOf(e));
          };
          const onConnect = () => {
            active.connecting?.(0);
            this.#wire(f, active);
          };
          sock.once('error', onError);
          sock.once('connect', onConnect);
        });
      }
      case 'RELEASE':
        if (!s) return -E.EINVAL;
        this.#release(s);
        f.sockets.delete(req.id);
        return 0;
      case 'BIND': {
        if (s?.kind !== 'new') return -E.EINVAL;
        const a = decodeInetAddress(req.addr, req.len);
        if (!a) return -E.EAFNOSUPPORT;
        // Node binds only by listening: connections that come before LISTEN are refused (reset).
        // The socket is passive at once, so a LISTEN right behind this BIND waits for it.
        const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true });
        const passive: PassiveSocket = { kind: 'passive', server, listening: false, backlog: 0, queue: [] };
        f.sockets.set(req.id, passive);
        passive.bound = new Promise<number>((resolve) => {
          server.once('error', (e) => {
            if (f.sockets.get(req.id) === passive) f.sockets.set(req.id, { kind: 'new' });
            passive.bound = undefined;
            resolve(errnoOf(e));
          });
          server.listen({ host: a.address, port: a.port, backlog: this.#o.maxPendingAccepts }, () => {
            server.removeAllListeners('error');
            server.on('error', () => undefined);
            server.on('connection', (c) => this.#incoming(passive, c));
            passive.bound = undefined;
            resolve(0);
          });
        });
        return passive.bound;
      }
      case 'LISTEN': {
        if (s?.kind !== 'passive' || s.listening) return -E.EINVAL;
        const listen = (bound: number) => {
          if (bound < 0 || s.listening || f.sockets.get(req.id) !== s) return -E.EINVAL;
          s.listening = true;
          s.backlog = Math.max(1, Math.min(req.backlog || 1, this.#o.maxPendingAccepts));
          return 0;
        };
        return s.bound ? s.bound.then(listen) : listen(0);
      }
      case 'ACCEPT': {
        // Pipelined behind a BIND still in progress (and the LISTEN waiting for it): after them.
        if (s?.kind === 'passive' && s.bound) return s.bound.then(() => this.#command(f, req));
        if (s?.kind !== 'passive' || !s.listening) return -E.EINVAL;
        if (s.accept) return -E.EBUSY; // one ACCEPT at a time per socket
        if (f.sockets.has(req.idNew)) return -E.EEXIST;
        if (f.sockets.size >= this.#o.maxSockets) return -E.ENOBUFS;
        const ring = this.#mapRing(f, req.ref, req.evtchn);
        f.sockets.set(req.idNew, { kind: 'new' }); // reserved while it waits
        return new Promise<number>((resolve) => {
          const fire = (c: net.Socket) => {
            s.accept = undefined;
            const active = this.#activate(f, req.idNew, ring, c);
            this.#wire(f, active);
            c.resume();
            resolve(0);
          };
          const cancel = () => {
            s.accept = undefined;
            this.#unmapRing(ring);
            f.sockets.delete(req.idNew);
            resolve(-E.EINTR);
          };
          const next = s.queue.shift();
          if (next) fire(next);
          else s.accept = { fire, cancel };
        });
      }
      case 'POLL': {
        if (s?.kind === 'passive' && s.bound) return s.bound.then(() => this.#command(f, req));
        if (s?.kind !== 'passive' || !s.listening) return -E.EINVAL;
        if (s.queue.length) return 0;
        if (s.poll) return -E.EALREADY;
        return new Promise<number>((resolve) => {
          s.poll = { fire: () => resolve(0), cancel: () => resolve(-E.EINTR) };
        });
      }
    }
  }

  #incoming(s: PassiveSocket, c: net.Socket): void {
    debug(
      'pvcalls backend: incoming connection (listening %s, queued %d, accept %s)',
      s.listening,
      s.queue.length,
      !!s.accept,
    );
    c.on('error', () => undefined);
    if (!s.listening || s.queue.length >= s.backlog) {
      c.resetAndDestroy();
      return;
    }
    if (s.accept) return s.accept.fire(c);
    s.queue.push(c);
    const p = s.poll;
    s.poll = undefined;
    p?.fire();
  }

  /** Maps the data ring a frontend offers: its indexes page, then the pages it names. */
  #mapRing(f: Frontend, ref: number, evtchn: number): MappedRing {
    const maps: MappedPages[] = [];
    try {
      const idx = this.#gm.map(f.domid, [ref]);
      maps.push(idx);
      const view = new DataView(idx.buffer);
      const order = view.getUint32(DATA_INTF.ringOrder, true);
      if (order < MIN_RING_ORDER || order > this.#o.maxRingOrder)
        throw Object.assign(new Error('ring order'), { code: 'EINVAL' });
      const refs = Array.from({ length: 1 << order }, (_, i) => view.getUint32(DATA_INTF.ref + 4 * i, true));
      const data = this.#gm.map(f.domid, refs);
      maps.push(data);
      const ring = new DataRing(new Uint8Array(idx.buffer), new Uint8Array(data.buffer), order, 'back');
      const port = this.#ev.bindInterdomain(f.domid, evtchn);
      return { ring, order, maps, port };
    } catch (e) {
      for (const m of maps) m.unmap();
      throw e;
    }
  }

  #unmapRing(r: MappedRing): void {
    this.#ports.delete(r.port);
    try {
      this.#ev.unbind(r.port);
    } catch {
      // gone with the domain
    }
    for (const m of r.maps) m.unmap();
  }

  #activate(f: Frontend, id: bigint, r: MappedRing, sock: net.Socket): ActiveSocket {
    const a: ActiveSocket = {
      kind: 'active',
      ...r,
      sock,
      pending: [],
      ended: false,
      released: false,
    };
    f.sockets.set(id, a);
    return a;
  }

  /** Moves bytes between the socket and the data ring, both ways, with backpressure. */
  #wire(f: Frontend, a: ActiveSocket): void {
    const fd = this.#o.dataPump === 'native' ? socketFd(a.sock) : -1;
    debug('pvcalls backend %d/%d: socket on port %d, %s pump', f.domid, f.dev, a.port, fd >= 0 ? 'native' : 'js');
    if (fd >= 0) {
      try {
        return this.#wireNative(f, a, fd);
      } catch {
        // No pump (out of file descriptors for its duplicate, say): the socket is still whole.
      }
    }
    this.#wireJs(f, a);
  }

  /**
   * The pump in C++ (src/pump.cc) over a duplicate of the socket's fd; the net.Socket is let go.
   * The frontend's events run one step; the socket's wake-ups never reach JavaScript.
   */
  #wireNative(f: Frontend, a: ActiveSocket, fd: number): void {
    const { b, h } = nativeHandleOf(this.#ev);
    const step = () => {
      const pump = a.pump;
      const corrupt = pump && b.pump.run(pump);
      if (corrupt) this.#fail(f, new RingCorruptError(corrupt));
    };
    a.pump = b.pump.open(h, a.port, a.maps[0].buffer, a.maps[1].buffer, a.order, fd, step);
    a.sock.destroy(); // closes its own fd; the pump's duplicate keeps the connection
    this.#ports.set(a.port, step);
  }

  /** The pump in JavaScript, through the net.Socket's streams. */
  #wireJs(f: Frontend, a: ActiveSocket): void {
    const { ring, sock, port } = a;
    let draining = false;
    const pump = () => {
      if (a.released) return;
      try {
        // Socket -> in.
        let wrote = false;
        while (a.pending.length && ring.writable > 0) {
          const b = a.pending[0];
          const n = ring.write(b);
          wrote = wrote || n > 0;
          if (n === b.length) a.pending.shift();
          else a.pending[0] = b.subarray(n);
        }
        if (a.pending.length === 0) {
          if (a.ended && ring.inError === 0) {
            ring.inError = -E.ENOTCONN; // the remote end closed: after the last byte
            wrote = true;
          } else if (!a.ended) sock.resume();
        }
        // out -> socket. The ring's room is given back (and the frontend told) before the socket
        // write, so the frontend refills the ring while this process writes to the socket.
        const chunks: Uint8Array[] = [];
        while (!draining && ring.readable > 0) chunks.push(ring.read());
        if (wrote || chunks.length) this.#notify(port);
        for (const chunk of chunks)
          if (!sock.write(chunk) && !draining) {
            draining = true;
            sock.once('drain', () => {
              draining = false;
              pump();
            });
          }
      } catch (e) {
        if (e instanceof RingCorruptError) return this.#fail(f, e);
        throw e;
      }
    };
    this.#ports.set(port, pump);
    sock.on('data', (d: Buffer) => {
      a.pending.push(d);
      sock.pause();
      pump();
    });
    sock.on('end', () => {
      a.ended = true;
      pump();
    });
    sock.on('error', (e) => {
      if (a.released) return;
      a.ended = true;
      a.pending.length = 0;
      ring.outError = errnoOf(e);
      ring.inError = errnoOf(e);
      this.#notify(port);
    });
    pump();
  }

  #release(s: BackSocket): void {
    if (s.kind === 'active') {
      if (s.released) return;
      s.released = true;
      if (s.connecting) {
        // Released before it connected: the CONNECT still gets its one answer.
        s.connecting(-E.ECONNABORTED);
        s.sock.destroy();
      } else if (s.pump) {
        const { b } = nativeHandleOf(this.#ev);
        const { rest, fd } = b.pump.detach(s.pump);
        s.pump = undefined;
        // The socket failed (-1): nothing more goes out.
        if (fd >= 0) linger(new net.Socket({ fd, readable: false, writable: true, allowHalfOpen: true }), [rest]);
      } else {
        let rest: Buffer[] = [];
        try {
          while (s.ring.readable > 0) rest.push(s.ring.read());
        } catch {
          rest = []; // corrupt indexes: nothing of it is trusted
        }
        if (s.sock.destroyed || !s.sock.writable) s.sock.destroy();
        else linger(s.sock, rest);
      }
      this.#unmapRing(s);
    } else if (s.kind === 'passive') {
      s.accept?.cancel();
      s.poll?.cancel();
      s.accept = s.poll = undefined;
      for (const c of s.queue) c.destroy();
      s.queue.length = 0;
      s.server.close();
    }
  }

  /** Stops serving: every frontend's sockets and rings are released, and the backend's states set Closed. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#scanning;
    await this.#watch?.close();
    for (const f of [...this.#frontends.values()]) {
      await this.#remove(f);
      await this.#setState(f, XenbusState.Closed);
    }
    this.#ev.close();
    this.#gm.close();
    this.#xs.close();
  }
}

/** A data ring mapped from a frontend, and its event channel. */
interface MappedRing {
  ring: DataRing;
  order: number;
  maps: MappedPages[];
  port: number;
}

function checkPumpKind(v: unknown): 'native' | 'js' {
  if (v === 'native' || v === 'js') return v;
  throw invalidArgType('options.dataPump', "'native' or 'js'", v);
}

/**
 * The fd a native pump may take over from SOCK: its own connection's, with nothing buffered in
 * Node yet; -1 for a socket whose bytes are not the connection's (TLS) or that has no fd.
 */
function socketFd(sock: net.Socket): number {
  if (sock instanceof tls.TLSSocket || sock.readableLength > 0 || sock.writableLength > 0) return -1;
  const fd = (sock as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/**
 * A released socket: what the frontend wrote before RELEASE goes out, then the FIN; a remote end
 * that reads nothing more does not keep it past RELEASE_LINGER_MS.
 */
function linger(sock: net.Socket, rest: Uint8Array[]): void {
  sock.on('error', () => undefined);
  for (const b of rest) if (b.length) sock.write(b);
  const t = setTimeout(() => sock.destroy(), RELEASE_LINGER_MS).unref();
  sock.end(() => {
    clearTimeout(t);
    sock.destroy();
  });
}

/** Starts a PVCalls backend (see PvcallsBackend). */
export async function createPvcallsBackend(options: PvcallsBackendOptions = {}): Promise<PvcallsBackend> {
  return new PvcallsBackend(options).start();
}
