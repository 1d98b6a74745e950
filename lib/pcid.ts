/**
 * The PCI daemon ("pcid"): the JSON protocol of Xen's xl pcid series (v4, 2023; never merged),
 * over vchan, with its concurrency hole closed.
 *
 * libxl in dom0 asks the domain that owns the PCI devices (dom0 itself, or a hardware domain) about
 * them instead of reading sysfs itself. Wire format, as v4: a request `{"cmd":"<name>", ...args}`
 * and a reply `{...payload, "resp":"<name>", "error":"okay"}` or `{"resp":"<name>",
 * "error":"failed", "error_desc":"..."}`, each one JSON object followed by `\r\n`; a message that does
 * not parse (bytes that are not UTF-8 included), or has no `cmd`, gets `"resp":"NA"`. On top of v4: a
 * client-chosen `id` is echoed unchanged (as QMP does: its JSON text as the client wrote it, so even
 * integers beyond 2^53 come back byte for byte), so one channel carries many requests at once,
 * answered in any order.
 *
 * Layout, as v4: the server recreates `/local/domain/<server>/data/pcid` and watches it; each client
 * makes `.../data/pcid/<uuid>` and the server offers that client a channel of its own there. The
 * client's domain is the node's owner (a node a privileged domain makes inherits the server's
 * ownership, and is taken as dom0's, as v4 serves dom0 only); domains the server was not told to
 * serve get nothing. The node goes when the client leaves; a client may make a node of the same
 * name again once it is gone (before, the new node would go with the old).
 *
 * Commands (v4's): list_assignable, make_assignable {sbdf, rebind}, revert_assignable {sbdf, rebind},
 * is_device_assigned {sbdf}, resource_list {sbdf, domid}, reset_device {sbdf}, write_bdf {sbdf,
 * name}. They act on Linux's sysfs under a configurable root (default `/sys`), and never on anything
 * outside it: sbdfs and names are checked against strict patterns, and every path is resolved and
 * must stay inside the root (symlinks included).
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { debuglog } from 'node:util';

import { MAX_DOMID, MAX_RING_SIZE } from './constants';
import { checkDomid, checkInt, checkObject, checkString, invalidArgType, invalidArgValue, systemError } from './errors';
import { JSON_MAX_MESSAGE, JsonClient, serveJson, type RequestOptions } from './jsonrpc';
import type { Backend } from './native';
import { connect, createServer, type VchanServer, type VchanStream } from './vchan';
import { Xenstore, type XenstoreWatch } from './xenstore';

const debug = debuglog('xen-vchan');

/** The commands of pcid v4. */
export const PCID_COMMANDS = [
  'list_assignable',
  'make_assignable',
  'revert_assignable',
  'is_device_assigned',
  'resource_list',
  'reset_device',
  'write_bdf',
] as const;
export type PcidCommand = (typeof PCID_COMMANDS)[number];

/** The pciback files write_bdf may write (what libxl writes a BDF to). */
export const PCIBACK_FILES = ['permissive', 'new_slot', 'remove_slot', 'bind', 'unbind', 'do_flr'] as const;

const SBDF = /^([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$/;
const DRIVER = /^[A-Za-z0-9_.-]{1,64}$/;
const CLIENT_NODE = /^[A-Za-z0-9_-]{1,64}$/;

/** A failed command: its reply carries `error: "failed"` and this message as `error_desc`. */
class CommandError extends Error {}

/** An sbdf in v4's text form (`%04x:%02x:%02x.%01x`), or a CommandError. */
function parseSbdf(v: unknown): string {
  if (v === undefined) throw new CommandError("No mandatory parameter 'sbdf'");
  if (typeof v !== 'string' || !SBDF.test(v)) throw new CommandError("Can't parse SBDF");
  return v.toLowerCase();
}

function parseBool(v: unknown, name: string): boolean {
  if (v === undefined) throw new CommandError(`No mandatory parameter '${name}'`);
  if (typeof v !== 'boolean') throw new CommandError(`Parameter '${name}' must be a boolean`);
  return v;
}

/**
 * Linux's PCI sysfs under ROOT, confined to it: every path is resolved (symlinks followed) and used
 * only if it stays inside the root; files are written, never created.
 */
export class PciSysfs {
  readonly root: string;
  readonly #real: string;

  constructor(root = '/sys') {
    this.root = path.resolve(root);
    this.#real = fs.realpathSync(this.root);
  }

  /** ROOT/REL resolved, or a CommandError when it does not exist or leads outside the root. */
  #resolve(rel: string): string {
    const p = path.join(this.root, rel);
    let real: string;
    try {
      real = fs.realpathSync(p);
    } catch (e) {
      throw new CommandError(`${rel}: ${(e as NodeJS.ErrnoException).code ?? 'ENOENT'}`);
    }
    if (real !== this.#real && !real.startsWith(`${this.#real}/`))
      throw new CommandError(`${rel} leads outside the sysfs root`);
    return real;
  }

  #exists(rel: string): boolean {
    try {
      this.#resolve(rel);
      return true;
    } catch {
      return false;
    }
  }

  #read(rel: string): string {
    return fs.readFileSync(this.#resolve(rel), 'utf8');
  }

  /** Writes TEXT to an existing file (sysfs attributes are never created). */
  #write(rel: string, text: string): void {
    const real = this.#resolve(rel);
    let fd: number;
    try {
      fd = fs.openSync(real, fs.constants.O_WRONLY | fs.constants.O_TRUNC | fs.constants.O_NOFOLLOW);
    } catch (e) {
      throw new CommandError(`${rel}: ${(e as NodeJS.ErrnoException).code}`);
    }
    try {
      fs.writeSync(fd, text);
    } catch (e) {
      throw new CommandError(`write ${text} to ${rel}: ${(e as NodeJS.ErrnoException).code}`);
    } finally {
      fs.closeSync(fd);
    }
  }

  get #pciback(): string {
    return 'bus/pci/drivers/pciback';
  }

  #needPciback(): void {
    if (!this.#exists(this.#pciback)) throw new CommandError('pciback driver is not loaded');
  }

  /** The devices bound to pciback (what can be passed through to a guest). */
  listAssignable(): string[] {
    this.#needPciback();
    return fs
      .readdirSync(this.#resolve(this.#pciback))
      .filter((n) => SBDF.test(n))
      .sort();
  }

  isAssigned(sbdf: string): boolean {
    this.#needPciback();
    try {
      fs.lstatSync(path.join(this.#resolve(this.#pciback), sbdf));
      return true;
    } catch {
      return false;
    }
  }

  #device(sbdf: string): string {
    const rel = `bus/pci/devices/${sbdf}`;
    this.#resolve(rel); // exists, inside the root
    return rel;
  }

  /** The name of the driver SBDF is bound to, or undefined. */
  driverOf(sbdf: string): string | undefined {
    const link = path.join(this.root, this.#device(sbdf), 'driver');
    let target: string;
    try {
      target = fs.readlinkSync(link);
    } catch {
      return undefined;
    }
    const name = path.basename(target);
    if (!DRIVER.test(name)) throw new CommandError(`${sbdf}: a driver name that cannot be right`);
    // It must be one of the PCI drivers under the root.
    this.#resolve(`bus/pci/drivers/${name}`);
    return name;
  }

  #hasSlot(sbdf: string): boolean {
    let text: string;
    try {
      text = this.#read(`${this.#pciback}/slots`);
    } catch {
      return false;
    }
    return text.split('\n').some((l) => l.trim().toLowerCase() === sbdf);
  }

  /** Unbinds SBDF from its driver and binds it to pciback; returns the driver it had. */
  makeAssignable(sbdf: string): string | undefined {
    this.#device(sbdf);
    this.#needPciback();
    if (this.isAssigned(sbdf)) return undefined;
    const driver = this.driverOf(sbdf);
    if (driver !== undefined) this.#write(`bus/pci/drivers/${driver}/unbind`, sbdf);
    if (!this.#hasSlot(sbdf)) this.#write(`${this.#pciback}/new_slot`, sbdf);
    this.#write(`${this.#pciback}/bind`, sbdf);
    return driver;
  }

  /** Unbinds SBDF from pciback (and its slot), and binds it to DRIVER if given. */
  revertAssignable(sbdf: string, driver: string | undefined): void {
    this.#device(sbdf);
    this.#needPciback();
    if (this.isAssigned(sbdf)) {
      this.#write(`${this.#pciback}/unbind`, sbdf);
      if (this.#hasSlot(sbdf)) this.#write(`${this.#pciback}/remove_slot`, sbdf);
    }
    if (driver !== undefined) {
      if (!DRIVER.test(driver)) throw new CommandError(`a driver name that cannot be right`);
      this.#write(`bus/pci/drivers/${driver}/bind`, sbdf);
    }
  }

  /** Function-level reset through pciback, else the device's own reset attribute. */
  reset(sbdf: string): void {
    const dev = this.#device(sbdf);
    if (this.#exists(`${this.#pciback}/do_flr`)) return this.#write(`${this.#pciback}/do_flr`, sbdf);
    if (this.#exists(`${dev}/reset`)) return this.#write(`${dev}/reset`, '1');
    throw new CommandError(`The kernel doesn't support reset from sysfs for PCI device ${sbdf}`);
  }

  /** The memory and I/O ranges (`0x<start> 0x<end> 0x<flags>`, as v4) and the legacy IRQ. */
  resources(sbdf: string): { iomem: string[]; irqs: number[] } {
    const dev = this.#device(sbdf);
    const iomem: string[] = [];
    for (const line of this.#read(`${dev}/resource`).split('\n')) {
      const m = /^0x([0-9a-f]+) 0x([0-9a-f]+) 0x([0-9a-f]+)$/i.exec(line.trim());
      if (!m) continue;
      const [start, end, flags] = m.slice(1).map((h) => BigInt(`0x${h}`));
      if (start !== 0n) iomem.push(`0x${start.toString(16)} 0x${end.toString(16)} 0x${flags.toString(16)}`);
    }
    const irqs: number[] = [];
    if (this.#exists(`${dev}/irq`)) {
      const irq = Number.parseInt(this.#read(`${dev}/irq`).trim(), 10);
      if (Number.isInteger(irq) && irq > 0) irqs.push(irq);
    }
    return { iomem, irqs };
  }

  /** Writes SBDF to one of pciback's files (PCIBACK_FILES). */
  writeBdf(sbdf: string, name: string): void {
    this.#device(sbdf);
    this.#needPciback();
    this.#write(`${this.#pciback}/${name}`, sbdf);
  }
}

/** What a pcid reply looks like. */
export interface PcidReply {
  resp: string;
  error: 'okay' | 'failed';
  error_desc?: string;
  id?: unknown;
  [k: string]: unknown;
}

/**
 * Answers one pcid request against SYSFS: the v4 reply shapes. DRIVERS remembers the driver a
 * device was taken from (make_assignable with rebind) for revert_assignable.
 */
export function handlePcidRequest(
  sysfs: PciSysfs,
  drivers: Map<string, string>,
  req: Record<string, unknown>,
): PcidReply {
  const cmd = req.cmd;
  if (typeof cmd !== 'string') return { resp: 'NA', error: 'failed', error_desc: 'Unsupported request or bad packet' };
  const ok = (payload: Record<string, unknown> = {}): PcidReply => ({ ...payload, resp: cmd, error: 'okay' });
  try {
    switch (cmd as PcidCommand) {
      case 'list_assignable':
        return ok({ devices: sysfs.listAssignable() });
      case 'is_device_assigned':
        return ok({ result: sysfs.isAssigned(parseSbdf(req.sbdf)) });
      case 'make_assignable': {
        const sbdf = parseSbdf(req.sbdf);
        const rebind = parseBool(req.rebind, 'rebind');
        const was = sysfs.makeAssignable(sbdf);
        if (rebind && was !== undefined) drivers.set(sbdf, was);
        else if (!rebind) drivers.delete(sbdf);
        return ok();
      }
      case 'revert_assignable': {
        const sbdf = parseSbdf(req.sbdf);
        const rebind = parseBool(req.rebind, 'rebind');
        sysfs.revertAssignable(sbdf, rebind ? drivers.get(sbdf) : undefined);
        if (rebind) drivers.delete(sbdf);
        return ok();
      }
      case 'resource_list': {
        const sbdf = parseSbdf(req.sbdf);
        if (req.domid === undefined) throw new CommandError("No mandatory parameter 'domid'");
        if (typeof req.domid !== 'number' || !Number.isInteger(req.domid) || req.domid < 0 || req.domid > MAX_DOMID)
          throw new CommandError("Parameter 'domid' must be a domain id");
        return ok({ resources: sysfs.resources(sbdf) });
      }
      case 'reset_device':
        sysfs.reset(parseSbdf(req.sbdf));
        return ok();
      case 'write_bdf': {
        const sbdf = parseSbdf(req.sbdf);
        if (req.name === undefined) throw new CommandError("No mandatory parameter 'name'");
        if (typeof req.name !== 'string' || !(PCIBACK_FILES as readonly string[]).includes(req.name))
          throw new CommandError(`Parameter 'name' must be one of ${PCIBACK_FILES.join(', ')}`);
        sysfs.writeBdf(sbdf, req.name);
        return ok();
      }
      default:
        return { resp: cmd, error: 'failed', error_desc: 'Unsupported command' };
    }
  } catch (e) {
    if (e instanceof CommandError) return { resp: cmd, error: 'failed', error_desc: e.message };
    debug('pcid: %s failed: %s', cmd, (e as Error).message);
    return { resp: cmd, error: 'failed', error_desc: (e as Error).message };
  }
}

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
  writeMin?: number;
  backend?: Backend;
  /** Mock only: act as this domain. */
  mockDomid?: number;
}

/** A server's errors that mean "not now" (grant pages or fds all in use), not "never". */
type Shortage = 'ENOSPC' | 'ENOMEM' | 'EMFILE' | 'ENFILE' | 'EAGAIN';
const SHORTAGE = new Set<string>(['ENOSPC', 'ENOMEM', 'EMFILE', 'ENFILE', 'EAGAIN'] satisfies Shortage[]);

/**
 * The pcid server. Emits 'listening', 'connection' ({domid, node}), 'clientError' (a node from a
 * domain not served, a malformed node name, an oversize message: that client only), 'error' and
 * 'close'.
 */
export class PcidServer extends EventEmitter<{
  listening: [];
  connection: [{ domid: number; node: string }];
  clientError: [Error];
  error: [Error];
  close: [];
}> {
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

/** A reply with `error: "failed"`: code ERR_PCID_FAILED, the reply as `.reply`. */
export class PcidError extends Error {
  readonly code = 'ERR_PCID_FAILED';
  constructor(readonly reply: PcidReply) {
    super(`pcid ${reply.resp}: ${reply.error_desc ?? reply.error}`);
    this.name = 'PcidError';
  }
}

export interface PcidConnectOptions {
  /** The server's domain. Default 0. */
  domid?: number;
  /** The server's directory, relative to its home. Default `data/pcid`. */
  path?: string;
  /** Give up connecting after this many ms. Default 10000. */
  timeout?: number;
  signal?: AbortSignal;
  /** Default timeout of each request, ms. Default none. */
  requestTimeout?: number;
  maxMessage?: number;
  /** Requests on the wire at once. Default 64. */
  maxInFlight?: number;
  backend?: Backend;
  /** Mock only: act as this domain. */
  mockDomid?: number;
}

/** A pcid client: one channel of its own, many requests at once on it. */
export class PcidClient extends EventEmitter<{ close: [] }> {
  readonly #rpc: JsonClient;
  readonly #stream: VchanStream;
  /** The client's node (full xenstore path). */
  readonly node: string;

  /** @internal */
  constructor(stream: VchanStream, node: string, opts: PcidConnectOptions) {
    super();
    this.#stream = stream;
    this.node = node;
    this.#rpc = new JsonClient(stream, {
      maxMessage: opts.maxMessage,
      maxInFlight: opts.maxInFlight,
      timeout: opts.requestTimeout,
    });
    this.#rpc.on('error', () => undefined); // each request gets the error
    this.#rpc.on('close', () => this.emit('close'));
  }

  /**
   * Sends CMD (one of pcid v4's commands, or any other name a server may know) with ARGS; resolves
   * with the whole reply, rejects with PcidError when it failed.
   */
  async call(
    cmd: PcidCommand | (string & Record<never, never>),
    args: Record<string, unknown> = {},
    options?: RequestOptions,
  ): Promise<PcidReply> {
    if (typeof cmd !== 'string') throw invalidArgType('cmd', 'of type string', cmd);
    const reply = (await this.#rpc.request({ cmd, ...args }, options)) as PcidReply;
    if (reply.error !== 'okay') throw new PcidError(reply);
    return reply;
  }

  async listAssignable(options?: RequestOptions): Promise<string[]> {
    return (await this.call('list_assignable', {}, options)).devices as string[];
  }

  async makeAssignable(sbdf: string, rebind = true, options?: RequestOptions): Promise<void> {
    await this.call('make_assignable', { sbdf, rebind }, options);
  }

  async revertAssignable(sbdf: string, rebind = true, options?: RequestOptions): Promise<void> {
    await this.call('revert_assignable', { sbdf, rebind }, options);
  }

  async isDeviceAssigned(sbdf: string, options?: RequestOptions): Promise<boolean> {
    return (await this.call('is_device_assigned', { sbdf }, options)).result as boolean;
  }

  async resourceList(
    sbdf: string,
    domid: number,
    options?: RequestOptions,
  ): Promise<{ iomem: string[]; irqs: number[] }> {
    return (await this.call('resource_list', { sbdf, domid }, options)).resources as {
      iomem: string[];
      irqs: number[];
    };
  }

  async resetDevice(sbdf: string, options?: RequestOptions): Promise<void> {
    await this.call('reset_device', { sbdf }, options);
  }

  async writeBdf(sbdf: string, name: string, options?: RequestOptions): Promise<void> {
    await this.call('write_bdf', { sbdf, name }, options);
  }

  /** Ends the channel; the server removes the node. */
  close(): void {
    this.#stream.end();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#stream.destroyed) return;
    const closed = new Promise((r) => this.#stream.once('close', r));
    this.close();
    await closed;
  }
}

/** The reason connectPcid aborts its connect with when the server removes the client's node. */
const WITHDRAWN = Symbol('withdrawn');

/**
 * Connects to the pcid server of domain `domid` (default 0): makes a node of its own under the
 * server's directory, as v4's clients do, and connects to the channel offered there.
 * Fails with ECONNREFUSED when no server serves this domain, or when the server removes the node
 * without offering a channel.
 */
export async function connectPcid(options: PcidConnectOptions = {}): Promise<PcidClient> {
  const o = checkObject('options', options) as PcidConnectOptions;
  const domid = o.domid === undefined ? 0 : checkDomid('options.domid', o.domid);
  const rel = o.path === undefined ? 'data/pcid' : checkString('options.path', o.path);
  const timeout = o.timeout === undefined ? 10000 : checkInt('options.timeout', o.timeout, 0, 2 ** 31 - 1);
  const node = `/local/domain/${domid}/${rel}/${randomUUID()}`;
  const xs = new Xenstore({ backend: o.backend, mockDomid: o.mockDomid });
  try {
    // The node and its permissions in one go: the server sees it whole. Its owner (this domain)
    // tells the server who asks; the server may write the channel's entries under it.
    const self = Number(await xs.read('domid'));
    try {
      await xs.transaction(
        async (tx) => {
          await tx.mkdir(node);
          await tx.setPermissions(node, [
            { domid: self, read: false, write: false },
            ...(domid === self ? [] : [{ domid, read: true, write: true }]),
          ]);
          // Clients arriving together conflict on the directory: each round, one of them wins.
        },
        { retries: 1000 },
      );
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === 'ENOENT' || code === 'EACCES')
        throw systemError(
          'ECONNREFUSED',
          'connect',
          `no pcid server of domain ${domid} serves this domain (${code} at ${node})`,
        );
      throw e;
    }
    // A server that cannot offer a channel (out of grant pages, say) or is closing removes the
    // node: then the client hears so at once, not when its timeout runs out.
    const withdrawn = new AbortController();
    const onAbort = () => withdrawn.abort(o.signal?.reason);
    o.signal?.addEventListener('abort', onAbort, { once: true });
    const gone = await xs.watch(node);
    gone.on('change', () => {
      void xs.tryRead(node).then(
        (v) => v === undefined && !withdrawn.signal.aborted && withdrawn.abort(WITHDRAWN),
        () => undefined,
      );
    });
    let stream: VchanStream;
    try {
      stream = await connect({
        domid,
        path: node,
        timeout,
        signal: o.signal?.aborted ? o.signal : withdrawn.signal,
        backend: o.backend,
        mockDomid: o.mockDomid,
      });
    } catch (e) {
      await xs.rm(node).catch(() => undefined);
      if (withdrawn.signal.reason === WITHDRAWN)
        throw systemError(
          'ECONNREFUSED',
          'connect',
          `the pcid server of domain ${domid} withdrew ${node} without offering a channel ` +
            "(it could not make one, or it is closing; its 'clientError' event says why)",
        );
      throw e;
    } finally {
      o.signal?.removeEventListener('abort', onAbort);
      await gone.close().catch(() => undefined);
    }
    return new PcidClient(stream, node, o);
  } finally {
    xs.close();
  }
}
