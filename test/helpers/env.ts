/**
 * Which backend this run tests, and what it can do:
 *  - mock:            the mock addon (always available)
 *  - real-over-mock:  the real addon (the binary that runs on Xen), with LD_LIBRARY_PATH pointing
 *                     Xen's stable libraries at the mock (XEN_VCHAN_TEST_CONFIG=real-over-mock)
 *  - real:            real Xen (/dev/xen present; dom0 <-> dom0 in the rig)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export const root = path.join(__dirname, '..', '..');
export const config = (process.env.XEN_VCHAN_TEST_CONFIG ??
  (process.env.XEN_VCHAN_BACKEND === 'real' ? 'real' : 'mock')) as 'mock' | 'real-over-mock' | 'real';
/** The mock hypervisor is underneath (either addon). */
export const onMock = config !== 'real';
/** The mock addon is loaded (in-process multi-domain helpers available). */
export const mockAddon = config === 'mock';
/** The domain this process is in. */
export const selfDomid = Number(process.env.XEN_MOCK_DOMID ?? 0);
/** The mock as built in this tree (native/mock/Makefile): lib, bin, stable, stable-4.14, test. */
export const mockBuild = path.join(root, 'native', 'mock', 'build');
/** The same, built with the sanitizers (make SAN=1). */
export const mockBuildSan = path.join(root, 'native', 'mock', 'build-san');
export const broker = path.join(mockBuild, 'bin', 'xenmockd');
export const hasDevXen = fs.existsSync('/dev/xen/evtchn');
