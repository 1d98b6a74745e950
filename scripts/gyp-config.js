'use strict';
// Values binding.gyp asks for: whether to build the real-Xen addon, whether to sanitize,
// and where the mock libraries are.

const sanitize = process.env.XEN_VCHAN_SANITIZE === '1';
switch (process.argv[2]) {
  case 'real': {
    const force = process.env.XEN_VCHAN_REAL;
    const only = process.env.XEN_VCHAN_ONLY;
    if (only === 'mock') process.stdout.write('0');
    else process.stdout.write(force === '0' ? '0' : '1');
    break;
  }
  case 'mock':
    // prebuildify takes one .node per build: XEN_VCHAN_ONLY=real leaves the mock out.
    process.stdout.write(process.env.XEN_VCHAN_ONLY === 'real' ? '0' : '1');
    break;
  case 'sanitize':
    process.stdout.write(sanitize ? '1' : '0');
    break;
  case 'mock-lib':
    // XEN_VCHAN_MOCK_OUT: another build of the mock (scripts/prebuild.sh's arm64 one).
    process.stdout.write(`native/mock/${process.env.XEN_VCHAN_MOCK_OUT || (sanitize ? 'build-san' : 'build')}/lib`);
    break;
  default:
    throw new Error(`unknown gyp-config query ${process.argv[2]}`);
}
