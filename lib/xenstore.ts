/** Xenstore: the hierarchical store domains use to find each other. */
import { EventEmitter } from 'node:events';

import { checkDomid, checkInt, checkObject, checkString, checkXsPath, coded, invalidArgType } from './errors';
import { asDomain, Backend, Binding, binding, type XenstoreHandle } from './native';

/** How a Xenstore connection is opened. */
export interface XenstoreOptions {
  /** 'real' (Xen's libxenstore) or 'mock'; default: the process's backend (see useBackend). */
  backend?: Backend;
  /** Mock only: open the connection as this domain. */
  mockDomid?: number;
}

/** One entry of a node's permissions. The first names the owner and what every other domain may do. */
export interface XsPermission {
  /** The domain this entry is for (the first entry: the node's owner). */
  domid: number;
  /** It may read the node (the first entry: every domain not listed may). */
  read: boolean;
  /** It may write the node (the first entry: every domain not listed may). */
  write: boolean;
}

/** One firing of a watch. */
export interface WatchEvent {
  /** The path that changed (relative if the watch was set on a relative path). */
  path: string;
  /** The watch's token (unique per watch of this connection). */
  token: string;
}

/** Reads and writes, either directly or inside a transaction. */
export interface XenstoreOps {
  /** The value at PATH as UTF-8 text; ENOENT if there is no such node, EACCES if not ours to read. */
  read(path: string): Promise<string>;
  /** The value at PATH as bytes (a value may hold any bytes, up to 4096). */
  readBuffer(path: string): Promise<Buffer>;
  /** Like read(), but undefined instead of ENOENT. */
  tryRead(path: string): Promise<string | undefined>;
  /** Sets PATH to VALUE (at most 4096 bytes), making the node and its missing parents. */
  write(path: string, value: string | Uint8Array): Promise<void>;
  /** Makes PATH (and its missing parents) with an empty value; an existing node is left as it is. */
  mkdir(path: string): Promise<void>;
  /** Removes PATH and everything below it; ENOENT if it is not there. */
  rm(path: string): Promise<void>;
  /** The names of PATH's children. */
  directory(path: string): Promise<string[]>;
  /** PATH's permissions: the owner's entry first (see XsPermission). */
  getPermissions(path: string): Promise<XsPermission[]>;
  /** Sets PATH's permissions (the owner's entry first); EACCES unless we own the node or are dom0. */
  setPermissions(path: string, perms: readonly XsPermission[]): Promise<void>;
}

function bits(p: XsPermission): number {
  return (p.read ? 1 : 0) | (p.write ? 2 : 0);
}

class Ops implements XenstoreOps {
  constructor(
    /** @internal */
    protected readonly b: Binding,
    /** @internal */
    protected readonly handleOf: () => XenstoreHandle,
    /** @internal */
    protected readonly tx: () => number,
  ) {}
  /** The value at PATH as bytes (a value may hold any bytes, up to 4096). */
  async readBuffer(path: string): Promise<Buffer> {
    checkXsPath('path', path);
    return this.b.xenstore.read(this.handleOf(), this.tx(), path);
  }
  /** The value at PATH as UTF-8 text; ENOENT if there is no such node, EACCES if not ours to read. */
  async read(path: string): Promise<string> {
    return (await this.readBuffer(path)).toString('utf8');
  }
  /** Like read(), but undefined instead of ENOENT. */
  async tryRead(path: string): Promise<string | undefined> {
    try {
      return await this.read(path);
    } catch (e) {
      if ((e as { code?: string }).code === 'ENOENT') return undefined;
      throw e;
    }
  }
  /** Sets PATH to VALUE (at most 4096 bytes), making the node and its missing parents. */
  async write(path: string, value: string | Uint8Array): Promise<void> {
    checkXsPath('path', path);
    if (typeof value !== 'string' && !(value instanceof Uint8Array))
      throw invalidArgType('value', 'of type string or an instance of Buffer or Uint8Array', value);
    const data = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
    if (data.byteLength > 4096) throw coded('A xenstore value holds at most 4096 bytes', 'ERR_OUT_OF_RANGE');
    return this.b.xenstore.write(this.handleOf(), this.tx(), path, data);
  }
  /** Makes PATH (and its missing parents) with an empty value; an existing node is left as it is. */
  async mkdir(path: string): Promise<void> {
    checkXsPath('path', path);
    return this.b.xenstore.mkdir(this.handleOf(), this.tx(), path);
  }
  /** Removes PATH and everything below it; ENOENT if it is not there. */
  async rm(path: string): Promise<void> {
    checkXsPath('path', path);
    return this.b.xenstore.rm(this.handleOf(), this.tx(), path);
  }
  /** The names of PATH's children. */
  async directory(path: string): Promise<string[]> {
    checkXsPath('path', path);
    return this.b.xenstore.directory(this.handleOf(), this.tx(), path);
  }
  /** PATH's permissions: the owner's entry first (see XsPermission). */
  async getPermissions(path: string): Promise<XsPermission[]> {
    checkXsPath('path', path);
    return this.b.xenstore.getPermissions(this.handleOf(), this.tx(), path);
  }
  /** Sets PATH's permissions (the owner's entry first); EACCES unless we own the node or are dom0. */
  async setPermissions(path: string, perms: readonly XsPermission[]): Promise<void> {
    checkXsPath('path', path);
    if (!Array.isArray(perms) || perms.length === 0)
      throw invalidArgType('perms', 'a non-empty array of { domid, read, write }', perms);
    const flat: number[] = [];
    perms.forEach((p, i) => {
      const o = checkObject(`perms[${i}]`, p);
      flat.push(checkDomid(`perms[${i}].domid`, o.domid), bits(p));
    });
    return this.b.xenstore.setPermissions(this.handleOf(), this.tx(), path, flat);
  }
}

/** Operations inside a transaction: isolated until it ends. */
export class XenstoreTransaction extends Ops {
  /** @internal */
  constructor(
    b: Binding,
    handleOf: () => XenstoreHandle,
    /** The transaction's id, as xenstored numbers it. */
    readonly id: number,
  ) {
    super(b, handleOf, () => id);
  }
}

/** A watch's events. */
export interface XenstoreWatchEvents {
  /** The node at or below the watch's path changed (or the watch was just set). */
  change: [WatchEvent];
  /** The connection failed: no more events come. */
  error: [Error];
}

/**
 * Watch events for one path, as an async iterator and as 'change' events. A watch fires once
 * when set, then on every change at or below its path.
 */
export class XenstoreWatch extends EventEmitter<XenstoreWatchEvents> implements AsyncIterable<WatchEvent> {
  readonly #queue: WatchEvent[] = [];
  #waiter: ((v: IteratorResult<WatchEvent>) => void) | null = null;
  #closed = false;
  readonly #stop: () => Promise<void>;
  // Xenstore fires every watch once as it is set, and that event can reach us before watch()'s
  // promise has resolved, i.e. before anyone could listen: 'change' events are held until then.
  #held: WatchEvent[] | null = [];

  /** @internal */
  constructor(
    /** The path watched, as given to watch(). */
    readonly path: string,
    /** The token xenstored sends with each of its events. */
    readonly token: string,
    stop: () => Promise<void>,
  ) {
    super();
    this.#stop = stop;
  }

  /** @internal */
  deliver(ev: WatchEvent): void {
    if (this.#closed) return;
    if (this.#held) this.#held.push(ev);
    else this.emit('change', ev);
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = null;
      w({ value: ev, done: false });
    } else {
      this.#queue.push(ev);
      if (this.#queue.length > 10000) this.#queue.shift(); // a consumer that never reads must not grow memory forever
    }
  }

  /** @internal Emits the 'change' events held since the watch was set (see #held). */
  release(): void {
    const held = this.#held;
    this.#held = null;
    if (held && !this.#closed) for (const ev of held) this.emit('change', ev);
  }

  /** @internal */
  end(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = null;
      w({ value: undefined, done: true });
    }
  }

  /** Removes the watch. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.end();
    await this.#stop();
  }

  /** `for await (const ev of watch)`: the events as they come (at most 10,000 kept while unread). */
  [Symbol.asyncIterator](): AsyncIterator<WatchEvent> {
    return {
      next: () => {
        const v = this.#queue.shift();
        if (v) return Promise.resolve({ value: v, done: false });
        if (this.#closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          this.#waiter = resolve;
        });
      },
      return: async () => {
        await this.close();
        return { value: undefined, done: true };
      },
    };
  }
}

let tokenCounter = 0;

/** A connection to xenstored. */
export class Xenstore extends Ops {
  #h: XenstoreHandle | null;
  readonly #watches = new Map<string, XenstoreWatch>();
  #polling = false;
  #refed = true;

  constructor(options: XenstoreOptions = {}) {
    const o = checkObject('options', options);
    const b = binding(o.backend as Backend | undefined);
    const dom = o.mockDomid === undefined ? undefined : checkDomid('options.mockDomid', o.mockDomid);
    const h = asDomain(b, dom, () => b.xenstore.open());
    // The ops base class needs the handle getter before `this` exists; the getter runs only later.
    // eslint-disable-next-line prefer-const
    let self: Xenstore | undefined;
    super(
      b,
      () => self!.#handle(),
      () => 0,
    );
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    self = this;
    this.#h = h;
  }

  #handle(): XenstoreHandle {
    if (!this.#h) throw coded('The xenstore connection is closed', 'ERR_XEN_CLOSED');
    return this.#h;
  }

  /** "/local/domain/<domid>". */
  domainPath(domid: number): string {
    checkDomid('domid', domid);
    return this.b.xenstore.domainPath(this.#handle(), domid);
  }

  /**
   * Whether xenstored knows domain DOMID: true from its introduction until it is destroyed (a
   * destroyed domain stays false even while other domains still map its pages).
   */
  async isDomainIntroduced(domid: number): Promise<boolean> {
    checkDomid('domid', domid);
    return this.b.xenstore.isIntroduced(this.#handle(), domid);
  }

  /**
   * Runs FN in a transaction and commits it, running FN again (up to options.retries times,
   * default 20) when the commit fails with EAGAIN because something it touched changed, after a
   * random back-off (up to 5 ms, doubling to 200 ms: retrying at once meets the same busy writer
   * again). A throw from FN aborts the transaction.
   */
  async transaction<T>(fn: (tx: XenstoreTransaction) => Promise<T>, options: { retries?: number } = {}): Promise<T> {
    if (typeof fn !== 'function') throw invalidArgType('fn', 'of type function', fn);
    const retries = options.retries === undefined ? 20 : checkInt('options.retries', options.retries, 0, 10000);
    for (let attempt = 0; ; attempt++) {
      const id: number = await this.b.xenstore.transactionStart(this.#handle());
      const tx = new XenstoreTransaction(this.b, () => this.#handle(), id);
      let result: T;
      try {
        result = await fn(tx);
      } catch (e) {
        await this.b.xenstore.transactionEnd(this.#handle(), id, true).catch(() => undefined);
        throw e;
      }
      try {
        await this.b.xenstore.transactionEnd(this.#handle(), id, false);
        return result;
      } catch (e) {
        if ((e as { code?: string }).code !== 'EAGAIN' || attempt >= retries) throw e;
      }
      const ms = Math.random() * Math.min(200, 5 * 2 ** attempt);
      await new Promise((resolve) => setTimeout(resolve, ms));
    }
  }

  /** Watches PATH (or `@releaseDomain` / `@introduceDomain`). */
  async watch(path: string, token?: string): Promise<XenstoreWatch> {
    checkXsPath('path', path, true);
    const tok = token === undefined ? `xv${process.pid}-${++tokenCounter}` : checkString('token', token);
    if (this.#watches.has(tok))
      throw coded(`A watch with token ${tok} is already set on this connection`, 'ERR_XEN_WATCH_EXISTS');
    const w = new XenstoreWatch(path, tok, async () => {
      this.#watches.delete(tok);
      if (this.#h) await this.b.xenstore.unwatch(this.#h, path, tok).catch(() => undefined);
      if (this.#watches.size === 0) this.#stopPolling();
    });
    this.#watches.set(tok, w);
    this.#startPolling();
    try {
      await this.b.xenstore.watch(this.#handle(), path, tok);
    } catch (e) {
      this.#watches.delete(tok);
      w.end();
      if (this.#watches.size === 0) this.#stopPolling();
      throw e;
    }
    // After the caller's continuation has run and attached its listeners.
    setImmediate(() => w.release());
    return w;
  }

  #startPolling(): void {
    if (this.#polling || !this.#h) return;
    this.b.xenstore.pollWatches(this.#h, () => this.#onWatchEvents());
    this.b.xenstore.refWatches(this.#h, this.#refed);
    this.#polling = true;
  }

  #stopPolling(): void {
    if (!this.#polling || !this.#h) return;
    this.b.xenstore.pollWatches(this.#h, null);
    this.#polling = false;
  }

  #onWatchEvents(): void {
    if (!this.#h) return;
    for (const { path, token } of this.b.xenstore.readWatches(this.#h))
      this.#watches.get(token)?.deliver({ path, token });
  }

  /** Keep the process alive while watches are set (the default). */
  ref(): this {
    this.#refed = true;
    if (this.#h && this.#polling) this.b.xenstore.refWatches(this.#h, true);
    return this;
  }

  /** Let the process exit with watches set. */
  unref(): this {
    this.#refed = false;
    if (this.#h && this.#polling) this.b.xenstore.refWatches(this.#h, false);
    return this;
  }

  /** Closes the connection; its watches end. Requests in flight still complete. Idempotent. */
  close(): void {
    if (!this.#h) return;
    for (const w of this.#watches.values()) w.end();
    this.#watches.clear();
    const h = this.#h;
    this.#h = null;
    this.#polling = false;
    this.b.xenstore.close(h);
  }

  /** `using xs = new Xenstore()`: closes the connection. */
  [Symbol.dispose](): void {
    this.close();
  }
}
