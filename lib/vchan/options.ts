/**
 * The options of vchan streams, servers and clients, their checks, and the limits on a vchan path.
 */
import { checkDomid, checkInt, checkObject, checkPort, checkXsPath, coded, outOfRange } from '../errors';
import { DEFAULT_RING_SIZE, MAX_RING_SIZE, XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX } from '../constants';
import type { Backend } from '../native';
import type { DuplexOptions } from 'node:stream';

import { checkOnread, type VchanOnread } from './onread';

/** What every stream takes: Node's buffering limits, and how data is handed over. */
export interface VchanStreamOptions extends Pick<
  DuplexOptions,
  'highWaterMark' | 'readableHighWaterMark' | 'writableHighWaterMark'
> {
  /** Read into a reusable buffer instead of emitting 'data' (see VchanOnread). */
  onread?: VchanOnread;
}

/** A stream's ring as it is now (VchanStream.ringState(), for diagnostics). */
export interface VchanRingState {
  /** The channel's live state (see LiveState). */
  open: number;
  /** Bytes waiting to be read. */
  readable: number;
  /** Bytes that can be written now. */
  writable: number;
  /** The notifications this end asked the peer for (1: on write, 2: on read). */
  weAsked: number;
  /** The notifications the peer asked this end for. */
  peerAsked: number;
  /** Whether the stream wants data. */
  wantRead: boolean;
  /** Bytes of a write waiting for ring space. */
  writeWaiting: number;
  /** Whether an event waits to be read. */
  eventPending: boolean;
  /** Whether the stream watches its port. */
  polling: boolean;
  /** Poll callbacks run so far. */
  wakeups: number;
  /** Events taken so far. */
  events: number;
  /** This end's event-channel port. */
  port: number;
}

/** Ring sizes and the event channel port of an open stream. */
export interface VchanInfo {
  /** The ring this end reads, bytes. */
  readSize: number;
  /** The ring this end writes, bytes. */
  writeSize: number;
  /** This end's event-channel port. */
  port: number;
  /** Whether this end is the server's. */
  server: boolean;
}

/** createServer()'s options. */
export interface ServerOptions extends VchanStreamOptions {
  /** The client's domain. */
  domid: number;
  /**
   * Xenstore path of the channel, e.g. `data/vchan/<client>/<name>` (relative to this domain).
   * Required unless `static` is given.
   */
  path?: string;
  /**
   * A channel with no xenstore (dom0less): the static event channel port and the grant
   * reference of the control page that both ends agreed on (see {@link StaticChannel}).
   */
  static?: StaticChannel;
  /** Minimum size of the ring the server reads (client -> server), bytes. Default 64 KiB. */
  readMin?: number;
  /** Minimum size of the ring the server writes (server -> client), bytes. Default 64 KiB. */
  writeMin?: number;
  /** 'real' (Xen) or 'mock'; default: the process's backend (see useBackend). */
  backend?: Backend;
  /** Mock only: act as this domain. */
  mockDomid?: number;
}

/**
 * What the two ends of a static (xenstore-less) channel agree on in advance, each from its own
 * side: PORT is this domain's end of a static event channel (from the device tree, or bound by
 * dom0 for both domains), REF the grant reference of the server's control page. A domain's grants
 * are numbered from 8 upward in the order it makes them (Linux reserves 0-7), so in a dom0less
 * domain whose first grant is the server's page, REF is 8.
 */
export interface StaticChannel {
  /** This domain's end of the static event channel. */
  port: number;
  /** The grant reference of the server's control page. */
  ref: number;
}

/** connect()'s options. */
export interface ConnectOptions extends VchanStreamOptions {
  /** The server's domain. */
  domid: number;
  /**
   * Full xenstore path of the channel, e.g. `/local/domain/0/data/vchan/5/name`. Required unless
   * `static` is given.
   */
  path?: string;
  /**
   * A channel with no xenstore: this domain's static event channel port and the grant reference
   * of the server's control page, as agreed (see {@link StaticChannel}). connect() waits for the
   * server's event on the port (not polling); an event that finds no channel (the spurious one
   * Xen leaves pending on a static channel at boot) is looked past.
   */
  static?: StaticChannel;
  /** Give up after this many milliseconds (ETIMEDOUT). Default: wait forever. */
  timeout?: number;
  /** Abort the wait. */
  signal?: AbortSignal;
  /** 'real' (Xen) or 'mock'; default: the process's backend (see useBackend). */
  backend?: Backend;
  /** Mock only: act as this domain. */
  mockDomid?: number;
}

/** @internal */
export interface OfferOptions extends VchanStreamOptions {
  domid: number;
  path: string;
  static?: StaticChannel;
  readMin: number;
  writeMin: number;
  mockDomid?: number;
}

/**
 * The longest vchan path, in bytes: what xenstore itself takes for an absolute path (3072 bytes)
 * less the "/event-channel" the channel's entry adds. A relative path (resolved against the
 * domain's home, /local/domain/<domid>) may be up to 2048 - 14 = 2034 bytes. Our vchan, built into
 * both addons, never truncates a path.
 */
export const MAX_VCHAN_PATH = XENSTORE_ABS_PATH_MAX - '/event-channel'.length;
const MAX_RELATIVE_VCHAN_PATH = XENSTORE_REL_PATH_MAX - '/event-channel'.length;

/**
 * The longest path Xen's own C libxenvchan handles, in bytes, in every release to date: it formats
 * "<path>/event-channel" into a 64-byte buffer and silently truncates a longer one (its client then
 * fails with ENOENT, its server publishes the wrong entry). Keep paths this short when the other
 * end of a channel uses Xen's libxenvchan (vchan-socket-proxy, Qubes' tools, a C program); between
 * two ends of this library any path up to {@link MAX_VCHAN_PATH} works.
 */
export const XEN_LIBXENVCHAN_MAX_PATH = 63 - '/event-channel'.length;

function checkVchanPath(name: string, v: unknown): string {
  const p = checkXsPath(name, v);
  const n = Buffer.byteLength(p);
  const max = p.startsWith('/') ? MAX_VCHAN_PATH : MAX_RELATIVE_VCHAN_PATH;
  if (n > max)
    throw outOfRange(name, `at most ${max} bytes long (xenstore's limit, less "/event-channel")`, `${n} bytes`);
  return p;
}

/** @internal The checked options of a server (single or multi). */
export function checkServerOptions<O extends ServerOptions>(options: O): OfferOptions & O {
  const o = checkObject('options', options);
  const domid = checkDomid('options.domid', o.domid);
  const { path, st } = checkPathOrStatic(o);
  const readMin =
    o.readMin === undefined ? DEFAULT_RING_SIZE : checkInt('options.readMin', o.readMin, 0, MAX_RING_SIZE);
  const writeMin =
    o.writeMin === undefined ? DEFAULT_RING_SIZE : checkInt('options.writeMin', o.writeMin, 0, MAX_RING_SIZE);
  if (o.mockDomid !== undefined) checkDomid('options.mockDomid', o.mockDomid);
  checkOnread(o.onread);
  return { ...options, domid, path, readMin, writeMin, ...(st ? { static: st } : {}) };
}

/** @internal A channel's options.path, or its options.static (then path is ''): one of the two, checked. */
export function checkPathOrStatic(o: Record<string, unknown>): { path: string; st: StaticChannel | undefined } {
  const st = o.static === undefined ? undefined : checkStaticChannel('options.static', o.static);
  if (st && o.path !== undefined)
    throw coded(
      'options.path and options.static cannot be used together: a static channel has no xenstore path',
      'ERR_INCOMPATIBLE_OPTION_PAIR',
      TypeError,
    );
  return { path: st ? '' : checkVchanPath('options.path', o.path), st };
}

/** @internal A checked StaticChannel (a copy: later changes to the caller's object do nothing). */
export function checkStaticChannel(name: string, v: unknown): StaticChannel {
  const o = checkObject(name, v);
  return { port: checkPort(`${name}.port`, o.port), ref: checkInt(`${name}.ref`, o.ref, 0, 0xffffffff) };
}

/** The default backlog: the most requests that wait for room before the oldest are refused. */
export const MULTI_QUEUE_MAX = 128;

/** createMultiServer()'s options: a server's, and its limits. */
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

/** @internal A multi-server's checked options. */
export type MultiOptions = OfferOptions &
  MultiServerOptions & { maxConnections: number; backlog: number; acceptTimeout: number };

/** @internal */
export function checkMultiOptions(options: MultiServerOptions): MultiOptions {
  const o = checkServerOptions(options);
  if (o.static !== undefined)
    throw coded(
      'A multi-server publishes its channels in xenstore: serve a static channel with createServer()',
      'ERR_INVALID_ARG_VALUE',
      TypeError,
    );
  return {
    ...o,
    maxConnections:
      o.maxConnections === undefined ? 256 : checkInt('options.maxConnections', o.maxConnections, 1, 65536),
    backlog: o.backlog === undefined ? MULTI_QUEUE_MAX : checkInt('options.backlog', o.backlog, 1, 65536),
    acceptTimeout:
      o.acceptTimeout === undefined ? 10000 : checkInt('options.acceptTimeout', o.acceptTimeout, 1, 2 ** 31 - 1),
  };
}
