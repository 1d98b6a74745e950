'use strict';
// npm install / npm ci: build the mock hypervisor libraries, then the addons,
// unless a prebuild for this platform is already there (and no rebuild is asked for).
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const san = process.env.XEN_VCHAN_SANITIZE === '1';

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', shell: false });
  if (r.error) {
    console.error(`xen-vchan: could not run ${cmd}: ${r.error.message}`);
    process.exit(1);
  }
  if (r.status !== 0) process.exit(r.status ?? 1);
}

run('make', ['-s', '-C', 'native/mock', ...(san ? ['SAN=1'] : []), 'all']);

const prebuilt = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'xen_vchan_mock.node');
const built = fs.existsSync(path.join(root, 'build', 'Release', 'xen_vchan_mock.node'));
if (fs.existsSync(prebuilt) && !built && !process.env.XEN_VCHAN_BUILD_FROM_SOURCE && !san) {
  console.log(`xen-vchan: using prebuilt addons in ${path.dirname(prebuilt)}`);
  process.exit(0);
}
// npm tells lifecycle scripts where its own node-gyp is.
const gyp = process.env.npm_config_node_gyp;
if (gyp) run(process.execPath, [gyp, 'rebuild']);
else run('node-gyp', ['rebuild']);
