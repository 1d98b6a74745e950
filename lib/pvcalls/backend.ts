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
import { debuglog } from 'node:util';

import { checkDomid, checkInt, checkObject, invalidArgType } from '../errors';
import { EventChannel } from '../evtchn';
import { GrantMapper, type MappedPages } from '../grants';
import { Xenstore, type XenstoreWatch } from '../xenstore';
import {
  type BackSocket,
  checkPumpKind,
  errnoOf,
  mapRing,
  MIN_RING_ORDER,
  type MappedRing,
  releaseSocket,
  type SocketHost,
  wire,
} from './back-socket';
import { command, type CommandHost } from './back-commands';
import { BackRing, RingCorruptError } from './ring';
import {
  decodeRequest,
  encodeResponse,
  MAX_RING_ORDER,
  PVCALLS_VERSION,
  PvcallsCmd,
  type PvcallsRequest,
} from './wire';
import { readState, XenbusState } from './xenbus';
import type { PvcallsBackendEvents, PvcallsBackendOptions, PvcallsDataPumps } from './back-options';

export type { PvcallsBackendEvents, PvcallsBackendOptions, PvcallsDataPumps } from './back-options';

const debug = debuglog('xen-vchan');

/** Linux's kernel-internal ENOTSUPP, what pvcalls-back answers to a command it does not know. */
export const ENOTSUPP = 524;

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
  /** What its commands act on (made at its first command). */
  commands?: CommandHost;
  /** The frontend's state changes, handled in turn. */
  changes: Promise<void>;
}

/**
 * A PVCalls backend: serves the socket calls of frontends in other domains (as Linux's
 * pvcalls-back does); made by {@link createPvcallsBackend}. See {@link PvcallsBackendEvents}.
 */
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
      dataPump: o.dataPump === undefined ? 'native' : checkPumpKind(o.dataPump),
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
  get dataPumps(): PvcallsDataPumps {
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

  /** Runs REQ of frontend F (see command()); its answer, or a promise of it. */
  #command(f: Frontend, req: PvcallsRequest): number | Promise<number> {
    f.commands ??= {
      sockets: f.sockets,
      maxSockets: this.#o.maxSockets,
      maxPendingAccepts: this.#o.maxPendingAccepts,
      connect: this.#o.connect,
      mapRing: (ref, evtchn) => mapRing(this.#gm, this.#ev, f.domid, ref, evtchn, this.#o.maxRingOrder),
      unmapRing: (r) => this.#unmapRing(r),
      release: (sock) => this.#release(sock),
      wire: (active) => wire(this.#host(f), active, this.#o.dataPump, `${f.domid}/${f.dev}`),
    };
    return command(f.commands, req);
  }

  #release(s: BackSocket): void {
    if (releaseSocket(this.#ev, s) && s.kind === 'active') this.#unmapRing(s);
  }

  /** What the sockets of frontend F need of this backend. */
  #host(f: Frontend): SocketHost {
    return {
      ev: this.#ev,
      notify: (port) => this.#notify(port),
      fail: (e) => this.#fail(f, e),
      onPort: (port, wake) => void this.#ports.set(port, wake),
    };
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

/** Starts a PVCalls backend (see PvcallsBackend). */
export async function createPvcallsBackend(options: PvcallsBackendOptions = {}): Promise<PvcallsBackend> {
  return new PvcallsBackend(options).start();
}
