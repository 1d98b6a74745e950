/**
 * Loading the native addon. One backend per process: the mock and the real
 * addon link libraries with the same sonames, so once one is loaded the other
 * cannot be. The real backend is the default; the mock is chosen explicitly,
 * with XEN_VCHAN_BACKEND=mock or {@link useBackend}('mock').
 *
 * Where the addons are: a local build (found by `bindings`) or the prebuilt one for this platform,
 * and the mock's broker and libraries that belong with the mock addon.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import bindings from 'bindings';

import { coded } from './errors';
import type { Backend, Binding } from './native';

/** The package's root (dist/cjs/.. /..). */
const root = path.join(__dirname, '..', '..');

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

/** Loads addon NAME (see addonPath): MODULE_NOT_FOUND when there is none. */
export function loadAddon(name: string): Binding {
  const p = addonPath(name);
  if (!p)
    throw coded(`no ${name}.node in build/ or prebuilds/${process.platform}-${process.arch}/`, 'MODULE_NOT_FOUND');
  // A native addon is loaded with require(), whatever module format this file is compiled to.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(p) as Binding;
}

let loaded: Binding | undefined;

const backendError = coded;

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
