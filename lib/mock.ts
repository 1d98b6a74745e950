/**
 * The mock hypervisor, for tests and machines without Xen: introspection, configuration and the
 * environment that runs any libxenvchan program on it.
 */

import { checkDomid, checkInt, coded } from './errors';
import { binding, Binding, mockLibraryDir, type MockDomainStats } from './native';

export type { MockDomainStats };

function mockBinding(): Binding & { mock: NonNullable<Binding['mock']> } {
  const b = binding('mock');
  if (!b.mock) throw coded('The mock backend is not loaded', 'ERR_XEN_MOCK_ONLY');
  return b as Binding & { mock: NonNullable<Binding['mock']> };
}

/** The directory of the mock's drop-in Xen libraries (prebuilt, or built in the package). */
export const mockLibDir = mockLibraryDir();

/** The mock broker's state directory (XEN_MOCK_DIR or the per-user default). */
export function mockDir(): string {
  return mockBinding().mock.dir();
}

/** Per-domain counts of live resources (all known domains, or one). Empty when no broker runs. */
export function mockStats(domid?: number): MockDomainStats[] {
  if (domid !== undefined) checkDomid('domid', domid);
  return mockBinding().mock.stats(domid);
}

/** Pre-binds a static (dom0less) event channel pair, as a device tree would. */
export function mockAddStaticChannel(domid: number, port: number, remoteDomid: number, remotePort: number): void {
  checkDomid('domid', domid);
  checkInt('port', port, 1, 0x1ffff);
  checkDomid('remoteDomid', remoteDomid);
  checkInt('remotePort', remotePort, 1, 0x1ffff);
  mockBinding().mock.staticAdd(domid, port, remoteDomid, remotePort);
}

/** Raises a virtual IRQ in DOMID. */
export function mockRaiseVirq(domid: number, virq: number): void {
  checkDomid('domid', domid);
  checkInt('virq', virq, 0, 23);
  mockBinding().mock.raiseVirq(domid, virq);
}

/** Creates DOMID's xenstore entries (/local/domain/DOMID, its data/ directory), as a toolstack does. */
export function mockIntroduceDomain(domid: number): void {
  checkDomid('domid', domid);
  mockBinding().mock.introduce(domid);
}

/**
 * Destroys DOMID as `xl destroy` does: its handles are cut without the unmap notifications a
 * process's exit would send, its ports close (peers become unbound, with no event), processes
 * living only in it are killed, its xenstore directory goes and `@releaseDomain` fires. Streams
 * of other domains to it then fail with ECONNRESET. Dom0 cannot be destroyed (EPERM).
 */
export function mockDestroyDomain(domid: number): void {
  checkDomid('domid', domid);
  mockBinding().mock.destroy(domid);
}

/** Disconnects every client of the mock and clears its state. */
export function mockReset(): void {
  mockBinding().mock.reset();
}

/**
 * The environment that runs an unmodified libxenvchan program (or Xen's xenstore tools) on the
 * mock: LD_LIBRARY_PATH to the drop-in libraries, XEN_MOCK_DIR, and XEN_MOCK_DOMID if given.
 */
export function mockEnv(domid?: number): Record<string, string> {
  const env: Record<string, string> = {
    LD_LIBRARY_PATH: [mockLibDir, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':'),
  };
  if (process.env.XEN_MOCK_DIR) env.XEN_MOCK_DIR = process.env.XEN_MOCK_DIR;
  if (domid !== undefined) env.XEN_MOCK_DOMID = String(checkDomid('domid', domid));
  return env;
}
