'use strict';
// npm install / npm ci, as node-gyp-build's install step does it: use the prebuilt binaries for this
// platform (prebuilds/<platform>-<arch>: both addons, the mock's libraries and its broker) when they
// load here, else build everything from source (make, a C/C++ compiler, python3).
// `npm install --build-from-source` (npm_config_build_from_source=true or =xen-vchan) or
// XEN_VCHAN_BUILD_FROM_SOURCE=1 always builds; so does the sanitizer build (XEN_VCHAN_SANITIZE=1).
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const san = process.env.XEN_VCHAN_SANITIZE === '1';
const fromSource =
  ['true', 'xen-vchan'].includes(process.env.npm_config_build_from_source) ||
  process.env.XEN_VCHAN_BUILD_FROM_SOURCE === '1' ||
  san;

/** Why the prebuilt binaries cannot be used here, or '' if they can. */
function prebuiltProblem() {
  let native;
  try {
    native = require(path.join(root, 'dist', 'cjs', 'native.js'));
  } catch {
    return 'the TypeScript is not built yet (a git checkout)';
  }
  const mock = native.prebuildPath('xen_vchan_mock');
  const real = native.prebuildPath('xen_vchan_real');
  if (!mock || !real) return `no prebuilt binaries for ${process.platform}-${process.arch}`;
  const broker = path.join(path.dirname(mock), 'mock', 'bin', 'xenmockd');
  if (!fs.existsSync(broker)) return `the prebuilt mock broker ${broker} is missing`;
  // Load the mock addon (and with it the mock's libraries) in a child: a glibc too old, or a
  // library missing, shows here rather than at the user's first call. The real addon needs Xen's
  // own libraries, which a machine without Xen does not have: it is checked when used.
  const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(mock)})`], { encoding: 'utf8' });
  if (r.status !== 0) return `the prebuilt mock addon does not load here: ${(r.stderr || '').trim().split('\n')[0]}`;
  return '';
}

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', shell: false });
  if (r.error || r.status !== 0) {
    console.error(
      `xen-vchan: building from source failed (${r.error ? `could not run ${cmd}: ${r.error.message}` : `${cmd} exited ${r.status}`}). ` +
        'It needs make, a C and C++ compiler and python3 (Debian/Ubuntu: apt-get install build-essential python3).',
    );
    process.exit(1);
  }
}

if (!fromSource) {
  const problem = prebuiltProblem();
  if (!problem) {
    console.log(`xen-vchan: using the prebuilt binaries for ${process.platform}-${process.arch}`);
    process.exit(0);
  }
  console.log(`xen-vchan: building from source: ${problem}`);
} else {
  console.log('xen-vchan: building from source, as asked');
}
run('make', ['-s', '-C', 'native/mock', ...(san ? ['SAN=1'] : []), 'all']);
// npm tells lifecycle scripts where its own node-gyp is.
const gyp = process.env.npm_config_node_gyp;
if (gyp) run(process.execPath, [gyp, 'rebuild']);
else run('node-gyp', ['rebuild']);
