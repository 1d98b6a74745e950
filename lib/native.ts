/**
 * The native surface, declared once and typed: what each part of the addon exports (one object per
 * Xen library, functions over opaque branded handles), and the list of those functions that the
 * compiler checks against the types and a test against the loaded addon. Loading it: addon.ts.
 */

import { LiveState } from './constants';

export { LiveState };
export {
  addonPath,
  asDomain,
  binding,
  currentBackend,
  mockBrokerPath,
  mockLibraryDir,
  prebuildPath,
  useBackend,
} from './addon';

/** Which implementation of Xen's libraries the process uses. */
export type Backend = 'mock' | 'real';

/**
 * An opaque handle the addon returns and takes back (a wrapped, type-tagged native object). Only
 * the addon can make one; the brand keeps handles of different kinds apart in TypeScript.
 */
export type NativeHandle<Kind extends string> = object & { readonly __kind?: Kind };
export type EvtchnHandle = NativeHandle<'evtchn'>;
export type GrantHandle = NativeHandle<'grants'>;
export type XenstoreHandle = NativeHandle<'xenstore'>;
export type VchanHandle = NativeHandle<'vchan'>;
export type HubHoldHandle = NativeHandle<'hubhold'>;
export type PumpHandle = NativeHandle<'pump'>;

/** What vchan.arm() returns: live + 4 * readable + 2^23 * writable (each count below 2^21). */
export function unpackArm(n: number): { live: LiveState; readable: number; writable: number } {
  return { live: (n % 4) as LiveState, readable: Math.floor(n / 4) % 0x200000, writable: Math.floor(n / 0x800000) };
}

/** src/evtchn.cc: libxenevtchn. Ports and domids are numbers; failures throw errno errors. */
export interface EvtchnBinding {
  open(): EvtchnHandle;
  close(h: EvtchnHandle): void;
  bindUnbound(h: EvtchnHandle, remoteDomid: number): number;
  bindInterdomain(h: EvtchnHandle, remoteDomid: number, remotePort: number): number;
  bindVirq(h: EvtchnHandle, virq: number): number;
  bindStatic(h: EvtchnHandle, port: number): number;
  unbind(h: EvtchnHandle, port: number): void;
  notify(h: EvtchnHandle, port: number): void;
  unmask(h: EvtchnHandle, port: number): void;
  restrict(h: EvtchnHandle, domid: number): void;
  /** Every port pending now, without blocking. */
  pending(h: EvtchnHandle): number[];
  /** Starts (callback) or stops (null) watching the handle's fd on the loop. */
  poll(h: EvtchnHandle, callback: (() => void) | null): void;
  ref(h: EvtchnHandle, ref: boolean): void;
  fd(h: EvtchnHandle): number;
}

/** One side of a grant copy: local bytes, or a grant of another domain. */
export type NativeCopySide = Uint8Array | { domid: number; ref: number; offset?: number };

/** src/gnttab.cc: libxengntshr (sharer) and libxengnttab (mapper). */
export interface GrantsBinding {
  openSharer(): GrantHandle;
  openMapper(): GrantHandle;
  close(h: GrantHandle): void;
  share(
    h: GrantHandle,
    domid: number,
    pages: number,
    writable: boolean,
    notifyOffset?: number,
    notifyPort?: number,
  ): { refs: number[]; buffer: ArrayBuffer };
  map(
    h: GrantHandle,
    domid: number,
    refs: number[],
    writable: boolean,
    notifyOffset?: number,
    notifyPort?: number,
  ): ArrayBuffer;
  /** Unmaps or unshares now; the ArrayBuffer is detached first. */
  release(h: GrantHandle, buffer: ArrayBuffer): void;
  /** One GNTST_* status per segment. */
  copy(h: GrantHandle, segments: { source: NativeCopySide; dest: NativeCopySide; length: number }[]): number[];
}

/** src/xenstore.cc: libxenstore; requests run off the event loop and resolve with their results. */
export interface XenstoreBinding {
  open(): XenstoreHandle;
  close(h: XenstoreHandle): void;
  read(h: XenstoreHandle, tx: number, path: string): Promise<Buffer>;
  write(h: XenstoreHandle, tx: number, path: string, data: Uint8Array): Promise<void>;
  mkdir(h: XenstoreHandle, tx: number, path: string): Promise<void>;
  rm(h: XenstoreHandle, tx: number, path: string): Promise<void>;
  directory(h: XenstoreHandle, tx: number, path: string): Promise<string[]>;
  getPermissions(
    h: XenstoreHandle,
    tx: number,
    path: string,
  ): Promise<{ domid: number; read: boolean; write: boolean }[]>;
  /** FLAT: [domid, bits, domid, bits, ...] (bits: 1 read, 2 write). */
  setPermissions(h: XenstoreHandle, tx: number, path: string, flat: number[]): Promise<void>;
  transactionStart(h: XenstoreHandle): Promise<number>;
  transactionEnd(h: XenstoreHandle, tx: number, abort: boolean): Promise<void>;
  watch(h: XenstoreHandle, path: string, token: string): Promise<void>;
  unwatch(h: XenstoreHandle, path: string, token: string): Promise<void>;
  pollWatches(h: XenstoreHandle, callback: (() => void) | null): void;
  /** The watch events queued now, without blocking. */
  readWatches(h: XenstoreHandle): { path: string; token: string }[];
  refWatches(h: XenstoreHandle, ref: boolean): void;
  domainPath(h: XenstoreHandle, domid: number): string;
  isIntroduced(h: XenstoreHandle, domid: number): Promise<boolean>;
}

/** The ring as it is (vchan.peek): diagnostics, no notification requested. */
export interface NativeRingPeek {
  live: LiveState;
  readable: number;
  writable: number;
  /** VCHAN_NOTIFY_* bits we asked the peer to honour (1: on write, 2: on read). */
  oursAsked: number;
  /** The bits the peer asked of us. */
  peerAsked: number;
  /** An event waits on the environment's shared event-channel fd (for any of its ports). */
  eventPending: boolean;
  polling: boolean;
  wakeups: number;
  events: number;
}

/** src/vchan.cc: our libxenvchan (native/vchan), non-blocking, driven by the poller. */
export interface VchanBinding {
  /** READMIN and WRITEMIN: at least this many bytes per direction (lib/ defaults them). */
  serverInit(domid: number, path: string, readMin: number, writeMin: number): VchanHandle;
  /** RINGREF and PORT as the caller read them from the server's xenstore entry. */
  clientInit(domid: number, path: string, ringRef: number, port: number): VchanHandle;
  /**
   * A channel with no xenstore: its control page at the agreed RINGREF (EADDRNOTAVAIL when the
   * grant table gives another), the static PORT bound on the environment's handle; PORT is notified.
   */
  serverInitStatic(domid: number, ringRef: number, port: number, readMin: number, writeMin: number): VchanHandle;
  /** Attaches to DOMID's channel at RINGREF, binding the static PORT once the page is claimed. */
  clientInitStatic(domid: number, ringRef: number, port: number): VchanHandle;
  close(h: VchanHandle): void;
  /**
   * Bytes read; 0: nothing yet; -1: the peer is gone and the ring is empty. Asks the peer for no
   * notification (arm() does, before sleeping); the space is handed back piece by piece as it is
   * copied (xv_vchan_read).
   */
  read(h: VchanHandle, target: Uint8Array, offset: number, length: number): number;
  /**
   * The ring's own bytes ready at the read cursor, up to the ring's end, as an external ArrayBuffer
   * (zero copy); 0: nothing yet; -1: the peer is gone and the ring is empty. Nothing is consumed
   * until release(); one view at a time (ERR_INVALID_STATE otherwise).
   */
  view(h: VchanHandle): ArrayBuffer | 0 | -1;
  /** Detaches the view and hands its bytes back to the peer (notifying it if it asked). */
  release(h: VchanHandle): void;
  /** Bytes written; 0: the ring is full. Throws EPIPE once the peer is gone. */
  write(h: VchanHandle, source: Uint8Array, offset: number, length: number): number;
  /** Bytes written from CHUNKS, the first from START. */
  writev(h: VchanHandle, chunks: Uint8Array[], start: number): number;
  /**
   * The live state and what can be read and written now; asks the peer to notify us when it
   * writes and, with WANT_WRITABLE (default true: a write of ours waits for room), when it reads.
   * A write that fits withdraws the second request, so finished writes cost the peer no notify.
   * Packed in one number (it runs on every wake-up): {@link unpackArm} reads it.
   */
  arm(h: VchanHandle, wantWritable?: boolean): number;
  peek(h: VchanHandle): NativeRingPeek;
  info(h: VchanHandle): { readSize: number; writeSize: number; port: number; server: boolean };
  /**
   * CALLBACK runs after every wake-up of the channel's port (events drained and unmasked first:
   * the environment's channels share one event-channel handle, one fd and one uv_poll); null stops
   * it. True when an event came before CALLBACK was given: the caller looks soon.
   */
  poll(h: VchanHandle, callback: (() => void) | null): boolean;
  ref(h: VchanHandle, ref: boolean): void;
  /**
   * Keeps the environment's shared channel resources (event-channel handle, grant devices, the
   * xenstore connection set-up uses) for the domain acted as open, channels or not, until unhold().
   */
  hold(): HubHoldHandle;
  unhold(h: HubHoldHandle): void;
}

/** Live resources of one domain in the mock. */
export interface MockDomainStats {
  /** The domain. */
  domid: number;
  /** Open handles (event channel, grant, xenstore connections). */
  handles: number;
  /** Grant references in the domain's table. */
  grants: number;
  /** Foreign pages the domain has mapped. */
  mappedPages: number;
  /** Event channel ports in use. */
  ports: number;
  /** Xenstore watches the domain has set. */
  watches: number;
  /** Xenstore nodes the domain owns. */
  nodes: number;
  /** Xenstore transactions the domain has open. */
  transactions: number;
}

/**
 * src/xenctrl.cc: libxenctrl, for what a toolstack asks of Xen directly. The real addon loads the
 * library (its soname changes with each Xen release) on first use.
 */
export interface CtrlBinding {
  /** xc_evtchn_alloc_unbound: a port in DOMID's table, offered to REMOTE_DOMID, owned by no handle. */
  allocUnbound(domid: number, remoteDomid: number): number;
}

/** What a pump has done (diagnostics and tests). */
export interface NativePumpStats {
  /** Bytes read from the socket into the `in` half, and sent from the `out` half. */
  bytesIn: number;
  bytesOut: number;
  /** Notifications sent to the frontend, and steps run (fd wake-ups and run() calls). */
  notifies: number;
  steps: number;
  /** The socket's remote end closed (in_error is -ENOTCONN); the socket failed (both errors set). */
  eof: boolean;
  failed: boolean;
  open: boolean;
}

/**
 * src/pump.cc: the PVCalls backend's data pump, a socket's data ring <-> the socket's fd in C++
 * (read straight into the ring, sent straight from it; the fd's wake-ups never reach JS).
 */
export interface PumpBinding {
  /**
   * A pump over the data ring of ORDER (INDEXES: the indexes page, DATA: its data pages, as mapped)
   * and a duplicate of the socket FD; notifies PORT through EV. ON_CORRUPT runs when a step the fd
   * woke found the frontend's indexes corrupt: call run() to learn how.
   */
  open(
    ev: EvtchnHandle,
    port: number,
    indexes: ArrayBuffer,
    data: ArrayBuffer,
    order: number,
    fd: number,
    onCorrupt: () => void,
  ): PumpHandle;
  /** One step both ways (call it on the frontend's event): what the frontend corrupted, or undefined. */
  run(h: PumpHandle): string | undefined;
  /**
   * Closes the pump; REST: what the frontend wrote that was not sent (empty if its indexes are
   * corrupt); FD: the socket, now the caller's, or -1 if it failed (closed).
   */
  detach(h: PumpHandle): { rest: Buffer; fd: number };
  /** Closes the pump and its socket. */
  close(h: PumpHandle): void;
  stats(h: PumpHandle): NativePumpStats;
}

/** src/mock.cc: the mock's introspection and configuration (mock addon only). */
export interface MockBinding {
  stats(domid?: number): MockDomainStats[];
  /** Handles opened by this thread from now on belong to DOMID (null: the process's own). */
  setThreadDomid(domid: number | null): void;
  staticAdd(domid: number, port: number, remoteDomid: number, remotePort: number): void;
  raiseVirq(domid: number, virq: number): void;
  reset(): void;
  introduce(domid: number): void;
  destroy(domid: number): void;
  dir(): string;
}

/** The raw addon: functions over opaque handles, one object per Xen library (see src/*.cc). */
export interface Binding {
  backend: Backend;
  evtchn: EvtchnBinding;
  grants: GrantsBinding;
  xenstore: XenstoreBinding;
  vchan: VchanBinding;
  ctrl: CtrlBinding;
  pump: PumpBinding;
  mock?: MockBinding;
}

/**
 * The functions each part of the addon exports, as a value: test/native.test.ts checks it against
 * what the loaded addon really exports, and the types below check it against the interfaces, so
 * neither side can gain or lose a function unnoticed.
 */
export const NATIVE_FUNCTIONS = {
  evtchn: [
    'open',
    'close',
    'bindUnbound',
    'bindInterdomain',
    'bindVirq',
    'bindStatic',
    'unbind',
    'notify',
    'unmask',
    'restrict',
    'pending',
    'poll',
    'ref',
    'fd',
  ],
  grants: ['openSharer', 'openMapper', 'close', 'share', 'map', 'release', 'copy'],
  xenstore: [
    'open',
    'close',
    'read',
    'write',
    'mkdir',
    'rm',
    'directory',
    'getPermissions',
    'setPermissions',
    'transactionStart',
    'transactionEnd',
    'watch',
    'unwatch',
    'pollWatches',
    'readWatches',
    'refWatches',
    'domainPath',
    'isIntroduced',
  ],
  vchan: [
    'serverInit',
    'clientInit',
    'serverInitStatic',
    'clientInitStatic',
    'close',
    'read',
    'view',
    'release',
    'write',
    'writev',
    'arm',
    'peek',
    'info',
    'poll',
    'ref',
    'hold',
    'unhold',
  ],
  ctrl: ['allocUnbound'],
  pump: ['open', 'run', 'detach', 'close', 'stats'],
  mock: ['stats', 'setThreadDomid', 'staticAdd', 'raiseVirq', 'reset', 'introduce', 'destroy', 'dir'],
} as const satisfies { [K in keyof Required<Binding>]?: readonly (keyof NonNullable<Binding[K]>)[] };

// Every declared function is listed (the `satisfies` above checks the reverse).
type Unlisted<K extends keyof typeof NATIVE_FUNCTIONS> = Exclude<
  keyof NonNullable<Binding[K]>,
  (typeof NATIVE_FUNCTIONS)[K][number]
>;
const everyFunctionListed: [
  Unlisted<'evtchn'>,
  Unlisted<'grants'>,
  Unlisted<'xenstore'>,
  Unlisted<'vchan'>,
  Unlisted<'ctrl'>,
  Unlisted<'pump'>,
  Unlisted<'mock'>,
] extends [never, never, never, never, never, never, never]
  ? true
  : never = true;
void everyFunctionListed;
