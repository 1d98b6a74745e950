/** PcidClient: libxl's side of pcid, many requests at once on one channel of its own. */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';

import { checkDomid, checkInt, checkObject, checkString, invalidArgType, systemError } from '../errors';
import { JsonClient, type RequestOptions } from '../jsonrpc';
import type { Backend } from '../native';
import { connect, type VchanStream } from '../vchan';
import { Xenstore } from '../xenstore';
import type { PcidCommand, PcidReply } from './handler';
import type { PciResources } from './sysfs';

/** A reply with `error: "failed"`: code ERR_PCID_FAILED, the reply as `.reply`. */
export class PcidError extends Error {
  /** Always ERR_PCID_FAILED. */
  readonly code = 'ERR_PCID_FAILED';
  constructor(
    /** The server's reply, as it came (its error_desc says why). */
    readonly reply: PcidReply,
  ) {
    super(`pcid ${reply.resp}: ${reply.error_desc ?? reply.error}`);
    this.name = 'PcidError';
  }
}

/** connectPcid()'s options. */
export interface PcidConnectOptions {
  /** The server's domain. Default 0. */
  domid?: number;
  /** The server's directory, relative to its home. Default `data/pcid`. */
  path?: string;
  /** Give up connecting after this many ms. Default 10000. */
  timeout?: number;
  /** Abort the connect (an AbortError). */
  signal?: AbortSignal;
  /** Default timeout of each request, ms. Default none. */
  requestTimeout?: number;
  /** Largest message either way, bytes. Default 1 MiB (JSON_MAX_MESSAGE). */
  maxMessage?: number;
  /** Requests on the wire at once. Default 64. */
  maxInFlight?: number;
  /** 'real' (Xen) or 'mock'; default: the process's backend (see useBackend). */
  backend?: Backend;
  /** Mock only: act as this domain. */
  mockDomid?: number;
}

/** The events of a {@link PcidClient}. */
export interface PcidClientEvents {
  /** The channel has closed (close(), the server gone, or an error: every pending request was rejected). */
  close: [];
}

/** A pcid client: one channel of its own, many requests at once on it. */
export class PcidClient extends EventEmitter<PcidClientEvents> {
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

  /** The sbdfs of the devices pciback holds (list_assignable). */
  async listAssignable(options?: RequestOptions): Promise<string[]> {
    return (await this.call('list_assignable', {}, options)).devices as string[];
  }

  /** Unbinds SBDF from its driver and gives it to pciback; REBIND: remember the driver to give it back to. */
  async makeAssignable(sbdf: string, rebind = true, options?: RequestOptions): Promise<void> {
    await this.call('make_assignable', { sbdf, rebind }, options);
  }

  /** Takes SBDF from pciback; REBIND: binds it to the driver it had before. */
  async revertAssignable(sbdf: string, rebind = true, options?: RequestOptions): Promise<void> {
    await this.call('revert_assignable', { sbdf, rebind }, options);
  }

  /** Whether pciback holds SBDF (is_device_assigned). */
  async isDeviceAssigned(sbdf: string, options?: RequestOptions): Promise<boolean> {
    return (await this.call('is_device_assigned', { sbdf }, options)).result as boolean;
  }

  /** SBDF's memory ranges ("start end flags", as sysfs's resource file) and IRQs, for domain DOMID. */
  async resourceList(sbdf: string, domid: number, options?: RequestOptions): Promise<PciResources> {
    return (await this.call('resource_list', { sbdf, domid }, options)).resources as PciResources;
  }

  /** Resets SBDF through sysfs (its reset file; failed when the kernel has none). */
  async resetDevice(sbdf: string, options?: RequestOptions): Promise<void> {
    await this.call('reset_device', { sbdf }, options);
  }

  /** Writes SBDF to pciback's file NAME (one of PCIBACK_FILES). */
  async writeBdf(sbdf: string, name: string, options?: RequestOptions): Promise<void> {
    await this.call('write_bdf', { sbdf, name }, options);
  }

  /** Ends the channel; the server removes the node. */
  close(): void {
    this.#stream.end();
  }

  /** `await using c = await connectPcid()`: ends the channel and waits until it has closed. */
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
