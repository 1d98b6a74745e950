/**
 * Loading the native addon. One backend per process: the mock and the real
 * addon link libraries with the same sonames, so once one is loaded the other
 * cannot be. The real backend is the default; the mock is chosen explicitly,
 * with XEN_VCHAN_BACKEND=mock or {@link useBackend}('mock').
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Which implementation of Xen's libraries the process uses. */
export type Backend = 'mock' | 'real';

/* eslint-disable @typescript-eslint/no-explicit-any */
/** The raw addon: functions over opaque handle objects (see src/*.cc). */
export interface Binding {
  backend: Backend;
  evtchn: Record<string, (...args: any[]) => any>;
  grants: Record<string, (...args: any[]) => any>;
  xenstore: Record<string, (...args: any[]) => any>;
  vchan: Record<string, (...args: any[]) => any>;
  mock?: Record<string, (...args: any[]) => any>;
}
/* eslint-enable @typescript-eslint/no-explicit-any */

const root = path.join(__dirname, '..', '..');
let loaded: Binding | undefined;

function backendError(message: string, code: string): Error {
  const err = new Error(message) as Error & { code: string };
  err.code = code;
  return err;
}

function loadAddon(name: string): Binding {
  // A local build wins over a prebuild (as node-gyp-build does), so a rebuilt addon is never shadowed.
  const local = path.join(root, 'build', 'Release', `${name}.node`);
  const prebuilt = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, `${name}.node`);
  if (!fs.existsSync(local) && fs.existsSync(prebuilt)) return require(prebuilt) as Binding;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const bindings = require('bindings') as (opts: { bindings: string; module_root: string }) => Binding;
  return bindings({ bindings: `${name}.node`, module_root: root });
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
        `The mock addon could not be loaded (${(e as Error).message}). Rebuild it with \`npm rebuild xen-vchan\` ` +
          '(needs make, a C/C++ compiler and python3).',
        'ERR_XEN_NO_ADDON',
      );
    }
  }
  let binding: Binding;
  try {
    binding = loadAddon('xen_vchan_real');
  } catch (e) {
    throw backendError(
      `The real Xen addon is not available (${(e as Error).message.split('\n')[0]}). On a Xen domain install Xen's ` +
        'development files (Debian/Ubuntu: apt-get install libxen-dev) and run `npm rebuild xen-vchan`. ' +
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
    const err = new TypeError(`The "backend" option must be "mock" or "real". Received ${String(backend)}`);
    (err as TypeError & { code: string }).code = 'ERR_INVALID_ARG_VALUE';
    throw err;
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
