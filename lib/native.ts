/**
 * Loading the native addon. One backend per process: the mock and the real
 * addon link libraries with the same sonames, so once one is loaded the other
 * cannot be. The real backend is the default; the mock is chosen explicitly,
 * with XEN_VCHAN_BACKEND=mock or {@link useBackend}('mock').
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import bindings from 'bindings';

import { LiveState } from './constants';
import { coded } from './errors';

export { LiveState };

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
  /** Bytes read; 0: nothing yet; -1: the peer is gone and the ring is empty. */
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
  domid: number;
  /** Open handles (event channel, grant, xenstore connections). */
  handles: number;
  /** Grant references in the domain's table. */
  grants: number;
  /** Foreign pages the domain has mapped. */
  mappedPages: number;
  /** Event channel ports in use. */
  ports: number;
  watches: number;
  /** Xenstore nodes the domain owns. */
  nodes: number;
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

const root = path.join(__dirname, '..', '..');
let loaded: Binding | undefined;

const backendError = coded;

/**
 * Where addon NAME is found: a local build first, found by `bindings` (node-gyp's build/Release
 * and build/Debug, and the other places `bindings` knows), so a rebuilt addon is never shadowed;
 * then the prebuilt one that fits this process (see {@link prebuildPath}). Undefined if neither.
 */
export function addonPath(name: string): string | undefined {
  // path: the file's path rather than the loaded module (an option @types/bindings leaves out).
  const options = { bindings: name, module_root: root, path: true };
  try {
    return bindings(options) as string;
  } catch {
    return prebuildPath(name);
  }
}

/**
 * The prebuilt addon NAME for this platform, libc and N-API, if shipped, as node-gyp-build
 * (prebuildify's loader) looks for one addon of several:
 * prebuilds/<platform>-<arch>/<name>[.<tag>...].node whose tags fit this process (napi, glibc or
 * musl), the most specific first.
 */
export function prebuildPath(name: string): string | undefined {
  const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  let files: string[];
  try {
    files = fs.readdirSync(dir);
  } catch {
    return undefined;
  }
  const libc = process.platform !== 'linux' ? undefined : fs.existsSync('/etc/alpine-release') ? 'musl' : 'glibc';
  let best: { file: string; specificity: number } | undefined;
  for (const file of files) {
    const tags = file.split('.');
    if (tags.pop() !== 'node' || tags.shift() !== name) continue;
    let ok = true;
    for (const t of tags) {
      if (t === 'glibc' || t === 'musl') ok &&= t === libc;
      else if (t !== 'napi' && t !== 'node') ok = false; // abi-, uv- or armv-tagged builds are not ours
    }
    if (ok && (!best || tags.length > best.specificity)) best = { file, specificity: tags.length };
  }
  return best && path.join(dir, best.file);
}

/**
 * The mock broker (xenmockd) that belongs with the mock addon this process would load: its
 * libraries start it from ../bin next to themselves, prebuilt or built here.
 */
export function mockBrokerPath(): string {
  return path.join(mockBuildDir(), 'bin', 'xenmockd');
}

/** The directory of the mock's drop-in Xen libraries that belong with the mock addon. */
export function mockLibraryDir(): string {
  return path.join(mockBuildDir(), 'lib');
}

/** Where the mock's libraries (lib/) and broker (bin/) are: next to a prebuilt addon, or built here. */
function mockBuildDir(): string {
  const addon = addonPath('xen_vchan_mock');
  if (addon && addon === prebuildPath('xen_vchan_mock')) return path.join(path.dirname(addon), 'mock');
  return path.join(root, 'native', 'mock', 'build');
}

function loadAddon(name: string): Binding {
  const p = addonPath(name);
  if (!p)
    throw coded(`no ${name}.node in build/ or prebuilds/${process.platform}-${process.arch}/`, 'MODULE_NOT_FOUND');
  // A native addon is loaded with require(), whatever module format this file is compiled to.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(p) as Binding;
}

function envBackend(): Backend {
  const v = process.env.XEN_VCHAN_BACKEND;
  if (v === undefined || v === '' || v === 'real') return 'real';
  if (v === 'mock') return 'mock';
  throw backendError(`XEN_VCHAN_BACKEND must be "mock" or "real", not ${JSON.stringify(v)}`, 'ERR_XEN_BACKEND');
}

function load(backend: Backend): Binding {
  if (backend === 'mock') {
    try {
      return loadAddon('xen_vchan_mock');
    } catch (e) {
      throw backendError(
        `The mock addon could not be loaded (${(e as Error).message.split('\n')[0]}). Rebuild it with ` +
          '`npm rebuild xen-vchan --build-from-source` (needs make, a C/C++ compiler and python3).',
        'ERR_XEN_NO_ADDON',
      );
    }
  }
  let binding: Binding;
  try {
    binding = loadAddon('xen_vchan_real');
  } catch (e) {
    const why = (e as Error).message.split('\n')[0];
    // The addon links only libxenevtchn.so.1 and libxengnttab.so.1 (libxenstore is found when first
    // used); both come with every Xen from 4.14 on.
    const fix = /libxen(evtchn|gnttab)\.so/.test(why)
      ? "Install Xen's runtime libraries (Debian/Ubuntu: apt-get install libxenevtchn1 libxengnttab1 libxenstore4; " +
        'elsewhere the Xen tools or libs package).'
      : 'Reinstall it, or build it with `npm rebuild xen-vchan --build-from-source` (needs make, a C/C++ compiler and python3).';
    throw backendError(
      `The real Xen addon could not be loaded (${why}). ${fix} ` +
        'Without Xen, choose the mock explicitly: XEN_VCHAN_BACKEND=mock.',
      'ERR_XEN_NO_ADDON',
    );
  }
  return binding;
}

/**
 * The addon for this process, loading it on first use. Asking for a backend other than the one
 * already loaded throws ERR_XEN_BACKEND_MISMATCH.
 */
export function binding(backend?: Backend): Binding {
  if (backend !== undefined && backend !== 'mock' && backend !== 'real') {
    throw coded(
      `The "backend" option must be "mock" or "real". Received ${String(backend)}`,
      'ERR_INVALID_ARG_VALUE',
      TypeError,
    );
  }
  if (loaded) {
    if (backend && backend !== loaded.backend) {
      throw backendError(
        `This process already uses the ${loaded.backend} backend; one process cannot use both`,
        'ERR_XEN_BACKEND_MISMATCH',
      );
    }
    return loaded;
  }
  const want = backend ?? envBackend();
  if (want === 'real' && !fs.existsSync('/dev/xen/evtchn') && !process.env.XEN_VCHAN_NO_DEVICE_CHECK) {
    // Loading would work, but nothing would: say so now rather than at the first open().
    const hint = fs.existsSync('/proc/xen')
      ? 'load the Xen device drivers: modprobe xen-evtchn xen-gntdev xen-gntalloc'
      : 'this machine is not a Xen domain';
    throw backendError(
      `No /dev/xen/evtchn: ${hint}. To run without Xen, choose the mock explicitly: XEN_VCHAN_BACKEND=mock.`,
      'ERR_XEN_NO_DEVICE',
    );
  }
  loaded = load(want);
  return loaded;
}

/** Chooses the backend for this process before first use (the same as XEN_VCHAN_BACKEND). */
export function useBackend(backend: Backend): void {
  binding(backend);
}

/** The backend in use, or undefined if nothing has been opened yet. */
export function currentBackend(): Backend | undefined {
  return loaded?.backend;
}

/**
 * Runs FN with handles opened as domain DOMID. Mock only: on real Xen a process is in the domain
 * it runs in. Without DOMID, FN runs as is.
 */
export function asDomain<T>(b: Binding, domid: number | undefined, fn: () => T): T {
  if (domid === undefined) return fn();
  if (!b.mock) {
    throw backendError('Acting as another domain is a mock-only option (mockDomid)', 'ERR_XEN_MOCK_ONLY');
  }
  b.mock.setThreadDomid(domid);
  try {
    return fn();
  } finally {
    b.mock.setThreadDomid(null);
  }
}
