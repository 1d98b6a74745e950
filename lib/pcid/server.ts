/** PcidServer: the daemon, serving each client domain's nodes a channel of its own. */
import { EventEmitter } from 'node:events';
import { debuglog } from 'node:util';

import { MAX_RING_SIZE } from '../constants';
import {
  checkDomid,
  checkInt,
  checkObject,
  checkString,
  invalidArgType,
  invalidArgValue,
  systemError,
} from '../errors';
import { JSON_MAX_MESSAGE, serveJson } from '../jsonrpc';
import type { Backend } from '../native';
import { createServer, type VchanServer, type VchanStream } from '../vchan';
import { Xenstore, type XenstoreWatch } from '../xenstore';
import { handlePcidRequest } from './handler';
import { PciSysfs } from './sysfs';

const debug = debuglog('xen-vchan');

const CLIENT_NODE = /^[A-Za-z0-9_-]{1,64}$/;

/** Options of {@link createPcidServer}. */
export interface PcidServerOptions {
  /** The sysfs to act on. Default `/sys`. */
  sysfsRoot?: string;
  /** The domains served (their clients get a channel; others nothing). Default [0]. */
  clients?: number[];
  /** The xenstore directory, relative to this domain's home. Default `data/pcid` (v4's). */
  path?: string;
  /** Largest message, bytes. Default 1 MiB. */
  maxMessage?: number;
  /** Requests handled at once per client. Default 16. */
  concurrency?: number;
  /**
   * Withdraw a client's channel that is not taken within this many ms; also how long a client
   * waits while this domain is out of grant pages (or fds) before its node is removed
   * (connectPcid: ECONNREFUSED). Default 10000.
   */
  acceptTimeout?: number;
  /**
   * Minimum ring sizes of each client's channel, bytes. Default 0 and 0, as v4: libxenvchan's
   * smallest rings (1 KiB in, 2 KiB out), inside the shared page, so a client costs one granted
   * page (Linux's gntalloc grants 1024 pages to the whole domain by default; 64 KiB rings would cost 33).
   */
  readMin?: number;
  /** Minimum size of each client's ring toward the client, bytes. Default 0 (see readMin). */
  writeMin?: number;
  /** 'real' (Xen) or 'mock'; default: the process's backend (see useBackend). */
  backend?: Backend;
  /** Mock only: act as this domain. */
  mockDomid?: number;
}

/** A server's errors that mean "not now" (grant pages or fds all in use), not "never". */
type Shortage = 'ENOSPC' | 'ENOMEM' | 'EMFILE' | 'ENFILE' | 'EAGAIN';
const SHORTAGE = new Set<string>(['ENOSPC', 'ENOMEM', 'EMFILE', 'ENFILE', 'EAGAIN'] satisfies Shortage[]);

/** The events of a {@link PcidServer}. */
export interface PcidServerEvents {
  /** The server is serving. */
  listening: [];
  /** A client took its channel. */
  connection: [PcidConnection];
  /** A node from a domain not served, a malformed node name, an oversize message: that client only. */
  clientError: [Error];
  /** The server cannot serve (xenstore gone, its directory not writable); it stops. */
  error: [Error];
  /** The server has closed and its clients' channels have ended. */
  close: [];
}

/** The client 'connection' reports. */
export interface PcidConnection {
  /** The client's domain. */
  domid: number;
  /** The client's node (full xenstore path). */
  node: string;
}

/** The pcid server; see {@link PcidServerEvents} for what it emits. */
export class PcidServer extends EventEmitter<PcidServerEvents> {
  /** The sysfs the server acts on (options.sysfsRoot). */
  readonly sysfs: PciSysfs;
  readonly #clients: Set<number>;
  readonly #rel: string;
  readonly #max: number;
  readonly #concurrency: number;
  readonly #acceptTimeout: number;
  readonly #readMin: number;
  readonly #writeMin: number;
  readonly #backend: Backend | undefined;
  readonly #mockDomid: number | undefined;
  /** The driver each device was taken from (make_assignable with rebind). */
  readonly drivers = new Map<string, string>();
  readonly #nodes = new Map<string, { server: VchanServer; stream?: VchanStream; timer?: NodeJS.Timeout }>();
  /** Nodes being removed because no channel could be offered on them, until the removal is done. */
  readonly #dropped = new Set<string>();
  #xs: Xenstore | null = null;
  #watch: XenstoreWatch | null = null;
  #home = '';
  #self = -1;
  #closed = false;

  constructor(options: PcidServerOptions = {}) {
    super();
    const o = checkObject('options', options);
    this.sysfs = new PciSysfs(o.sysfsRoot === undefined ? '/sys' : checkString('options.sysfsRoot', o.sysfsRoot));
    const clients = o.clients === undefined ? [0] : o.clients;
    if (!Array.isArray(clients) || clients.length === 0)
      throw invalidArgType('options.clients', 'a non-empty array of domain ids', clients);
    this.#clients = new Set(clients.map((d, i) => checkDomid(`options.clients[${i}]`, d)));
    this.#rel = o.path === undefined ? 'data/pcid' : checkString('options.path', o.path);
    if (this.#rel.startsWith('/') || this.#rel === '')
      throw invalidArgValue('options.path', 'must be relative to this domain', this.#rel);
    this.#max =
      o.maxMessage === undefined ? JSON_MAX_MESSAGE : checkInt('options.maxMessage', o.maxMessage, 64, 2 ** 30);
    this.#concurrency = o.concurrency === undefined ? 16 : checkInt('options.concurrency', o.concurrency, 1, 65536);
    this.#acceptTimeout =
      o.acceptTimeout === undefined ? 10000 : checkInt('options.acceptTimeout', o.acceptTimeout, 1, 2 ** 31 - 1);
    this.#readMin = o.readMin === undefined ? 0 : checkInt('options.readMin', o.readMin, 0, MAX_RING_SIZE);
    this.#writeMin = o.writeMin === undefined ? 0 : checkInt('options.writeMin', o.writeMin, 0, MAX_RING_SIZE);
    this.#backend = o.backend as Backend | undefined;
    this.#mockDomid = o.mockDomid === undefined ? undefined : checkDomid('options.mockDomid', o.mockDomid);
  }

  /** The full xenstore path clients make their nodes under. */
  get path(): string {
    return this.#home;
  }

  /** Clients now (offered a channel, or connected). */
  get connections(): number {
    return this.#nodes.size;
  }

  /** Recreates the directory and serves; 'listening' follows, or 'error'. */
  listen(cb?: () => void): this {
    if (cb) this.once('listening', cb);
    this.#start().then(
      () => {
        if (!this.#closed) this.emit('listening');
      },
      (e: Error) => {
        if (!this.#closed) this.emit('error', e);
      },
    );
    return this;
  }

  async #start(): Promise<void> {
    const xs = new Xenstore({ backend: this.#backend, mockDomid: this.#mockDomid });
    this.#xs = xs;
    this.#self = Number(await xs.read('domid'));
    this.#home = `/local/domain/${this.#self}/${this.#rel}`;
    const home = this.#home;
    // As v4: remove what a previous server left, then make the directory afresh. Clients of other
    // domains may make their nodes in it (the owner of each is then its maker).
    await xs.transaction(async (tx) => {
      await tx.rm(home).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e; // nothing there, not even its parent
      });
      await tx.mkdir(home);
      await tx.setPermissions(home, [
        { domid: this.#self, read: false, write: false },
        ...[...this.#clients].filter((d) => d !== this.#self).map((domid) => ({ domid, read: true, write: true })),
      ]);
    });
    if (this.#closed) return;
    this.#watch = await xs.watch(home);
    const w = this.#watch;
    void (async () => {
      for await (const ev of w) this.#changed(ev.path);
    })();
    debug('pcid: serving domains %s at %s (sysfs %s)', [...this.#clients].join(','), home, this.sysfs.root);
  }

  #clientError(e: Error): void {
    debug('pcid: %s', e.message);
    if (this.listenerCount('clientError') > 0) this.emit('clientError', e);
  }

  /**
   * A change under the directory. Watch events can be dropped when many come at once (xenstored
   * bounds each connection's queue; so does the mock), so a change that may be a new client rescans
   * the directory rather than trusting the event's path.
   */
  #changed(p: string): void {
    if (this.#closed || !this.#xs) return;
    const prefix = `${this.#home}/`;
    if (p.startsWith(prefix)) {
      const name = p.slice(prefix.length).split('/')[0];
      if (this.#nodes.has(name) || this.#dropped.has(name)) return; // our own writes, or a node being removed
    } else if (p !== this.#home) return;
    void this.#scan();
  }

  #scanning = false;
  #scanAgain = false;

  async #scan(): Promise<void> {
    if (this.#scanning) {
      this.#scanAgain = true;
      return;
    }
    this.#scanning = true;
    try {
      do {
        this.#scanAgain = false;
        const xs = this.#xs;
        if (this.#closed || !xs) return;
        const names = await xs.directory(this.#home).catch(() => [] as string[]);
        for (const name of names)
          if (!this.#nodes.has(name) && !this.#dropped.has(name))
            await this.#consider(name).catch((e: Error) => this.#clientError(e));
      } while (this.#scanAgain);
    } finally {
      this.#scanning = false;
    }
  }

  /** A node a client made: serve it, or remove it (not a name, or a domain not served). */
  async #consider(name: string): Promise<void> {
    const xs = this.#xs;
    if (this.#closed || !xs) return;
    const node = `${this.#home}/${name}`;
    let perms;
    try {
      perms = await xs.getPermissions(node);
    } catch {
      return; // gone already
    }
    if (this.#nodes.has(name) || this.#closed) return;
    if (!CLIENT_NODE.test(name)) {
      await xs.rm(node).catch(() => undefined);
      throw systemError('EINVAL', 'accept', `pcid: a client node named ${JSON.stringify(name.slice(0, 80))}`);
    }
    const owner = perms[0]?.domid ?? this.#self;
    const domid = owner === this.#self ? 0 : owner;
    if (!this.#clients.has(domid)) {
      await xs.rm(node).catch(() => undefined);
      throw systemError('EACCES', 'accept', `pcid: domain ${domid} is not served (node ${name})`);
    }
    try {
      this.#serve(name, domid, Date.now());
    } catch (e) {
      await this.#refuse(name);
      throw e;
    }
  }

  /**
   * No channel for NAME's client (its server's ENTRY, if it has one, is closed): its node goes, so
   * that it hears so (connectPcid: ECONNREFUSED). Until the removal is done the name is not looked
   * at again; after it, a node of that name is a new client's.
   */
  async #refuse(name: string, entry?: { server: VchanServer; timer?: NodeJS.Timeout }): Promise<void> {
    if (entry) {
      if (this.#nodes.get(name) !== entry) return;
      clearTimeout(entry.timer);
      entry.server.close();
      this.#nodes.delete(name);
    }
    const xs = this.#xs;
    if (this.#closed || !xs) return;
    this.#dropped.add(name);
    await xs.rm(`${this.#home}/${name}`).catch(() => undefined);
    this.#dropped.delete(name);
    void this.#scan();
  }

  /**
   * Offers NAME's client its channel. Out of grant pages or fds for now (gntalloc's pages are
   * shared by every process of this domain): the client waits, its node kept, while the offer is
   * made again after a back-off, for up to acceptTimeout from SINCE (its 'clientError' said why
   * once); then its node is removed, and it hears ECONNREFUSED.
   */
  #serve(name: string, domid: number, since: number, retryMs = 0): void {
    const node = `${this.#rel}/${name}`;
    const server = createServer({
      domid,
      path: node,
      readMin: this.#readMin,
      writeMin: this.#writeMin,
      backend: this.#backend,
      mockDomid: this.#mockDomid,
    });
    const entry: { server: VchanServer; stream?: VchanStream; timer?: NodeJS.Timeout } = { server };
    this.#nodes.set(name, entry);
    const drop = () => {
      if (this.#nodes.get(name) !== entry) return;
      if (entry.timer) clearTimeout(entry.timer);
      // Closing the channel (or the offer nobody took) removes the node with it, at once: Xen's
      // libxenvchan and ours remove a server's path. The name is then free: a client that makes
      // the node again, however soon, is a new client, found by the scan that follows (a
      // removal of our own after this point could take the new client's node with it).
      server.close();
      entry.stream?.destroy();
      this.#nodes.delete(name);
      void this.#scan();
    };
    entry.timer = setTimeout(
      () => {
        debug('pcid: client %s never connected', name);
        drop();
      },
      Math.max(1, since + this.#acceptTimeout - Date.now()),
    );
    entry.timer.unref();
    server.on('error', (e: NodeJS.ErrnoException) => {
      if (this.#nodes.get(name) !== entry) return;
      const wait = Math.min(1000, retryMs ? retryMs * 2 : 50);
      if (SHORTAGE.has(e.code ?? '') && !this.#closed && Date.now() + wait - since < this.#acceptTimeout) {
        // Nothing of the offer is in xenstore: the node stays, and its client waits for the next try.
        if (retryMs === 0) this.#clientError(e);
        debug('pcid: no channel for %s yet (%s); again in %d ms', name, e.code, wait);
        clearTimeout(entry.timer);
        server.close();
        entry.timer = setTimeout(() => {
          if (this.#nodes.get(name) !== entry || this.#closed) return;
          this.#nodes.delete(name);
          try {
            this.#serve(name, domid, since, wait);
          } catch (e2) {
            this.#clientError(e2 as Error);
            void this.#refuse(name);
          }
        }, wait);
        entry.timer.unref();
        return;
      }
      this.#clientError(
        retryMs === 0 || !SHORTAGE.has(e.code ?? '')
          ? e
          : systemError(
              e.code as Shortage,
              'accept',
              `pcid: no channel for client ${name} in ${Date.now() - since} ms, its node removed: ${e.message}`,
            ),
      );
      void this.#refuse(name, entry);
    });
    server.on('clientError', (e) => this.#clientError(e));
    server.on('connection', (s) => {
      // One client per node: no further offers.
      server.close();
      if (entry.timer) clearTimeout(entry.timer);
      entry.stream = s;
      s.on('error', () => undefined);
      s.once('close', drop);
      serveJson(s, (req) => handlePcidRequest(this.sysfs, this.drivers, req) as Record<string, unknown>, {
        maxMessage: this.#max,
        concurrency: this.#concurrency,
        malformed: (_text, e) => ({
          resp: 'NA',
          error: 'failed',
          error_desc: `Unsupported request or bad packet: ${e.message}`,
        }),
        onError: (e) => this.#clientError(e),
      });
      this.emit('connection', { domid, node: name });
    });
    server.listen();
  }

  /** Stops serving: withdraws offers, ends every client's channel, removes the directory. */
  close(cb?: () => void): this {
    if (cb) this.once('close', cb);
    if (this.#closed) return this;
    this.#closed = true;
    const xs = this.#xs;
    const w = this.#watch;
    void (async () => {
      await w?.close().catch(() => undefined);
      for (const [, e] of this.#nodes) {
        if (e.timer) clearTimeout(e.timer);
        e.server.close();
        e.stream?.destroy();
      }
      this.#nodes.clear();
      if (xs) {
        await xs.rm(this.#home).catch(() => undefined);
        xs.close();
      }
      this.emit('close');
    })();
    return this;
  }
}

/** A {@link PcidServer}; call listen(). */
export function createPcidServer(options: PcidServerOptions = {}): PcidServer {
  return new PcidServer(options);
}
