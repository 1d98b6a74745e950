'use strict';
// npm install / npm ci, as node-gyp-build's install step does it: use the prebuilt binaries for this
// platform (prebuilds/<platform>-<arch>: both addons, the mock's libraries and its broker) when they
// load here, else build everything from source (make, a C/C++ compiler, python3).
// `npm install --build-from-source` (npm_config_build_from_source=true or =xen-vchan) or
// XEN_VCHAN_BUILD_FROM_SOURCE=1 always builds (`npm run build:native` sets it); so does the sanitizer
// build (XEN_VCHAN_SANITIZE=1).
//
// In a source checkout the binaries already built there (build/Release, native/mock/build) are used
// when they load and no source is newer: `npx xen-vchan` inside a clone runs this script again, and
// must not spend a minute rebuilding what is there. Whenever it does build, it says why, and one
// build at a time runs in a tree (a second install waits for the first, then uses its result).
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const san = process.env.XEN_VCHAN_SANITIZE === '1';
const fromSource =
  ['true', 'xen-vchan'].includes(process.env.npm_config_build_from_source) ||
  process.env.XEN_VCHAN_BUILD_FROM_SOURCE === '1' ||
  san;

/** Loads the addon at FILE in a child; '' if it loads, else the first line of why not. */
function loadProblem(file) {
  const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(file)})`], { encoding: 'utf8' });
  return r.status === 0 ? '' : (r.stderr || '').trim().split('\n')[0] || `exit ${r.status}`;
}

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
  const p = loadProblem(mock);
  return p ? `the prebuilt mock addon does not load here: ${p}` : '';
}

/** What both addons are compiled from (binding.gyp), beside the mock's own libraries (make's). */
const ADDON_SOURCES = ['src', 'native/vchan', 'native/include', 'native/mock/include', 'binding.gyp'];
const SOURCE_NAME = /\.(c|cc|h|hh|map|gyp|gypi)$/;

/** The addons' source files under P (a file or a directory), with their modification times. */
function* sourcesUnder(p) {
  let st;
  try {
    st = fs.statSync(p);
  } catch {
    return;
  }
  if (!st.isDirectory()) {
    if (SOURCE_NAME.test(p)) yield [p, st.mtimeMs];
    return;
  }
  for (const e of fs.readdirSync(p, { withFileTypes: true }))
    if (!e.isDirectory() || (e.name !== 'build' && e.name !== 'build-san')) yield* sourcesUnder(path.join(p, e.name));
}

/** The first source of the addons modified after the time T (ms), relative to the tree, or ''. */
function sourceNewerThan(t) {
  for (const dir of ADDON_SOURCES)
    for (const [f, m] of sourcesUnder(path.join(root, dir))) if (m > t) return path.relative(root, f);
  return '';
}

/**
 * Why the binaries built in this tree (a source checkout) cannot be used as they are, or '' if
 * they can: both addons and the broker are there, the mock addon loads, and no source is newer.
 */
function builtHereProblem() {
  const built = [
    path.join(root, 'build', 'Release', 'xen_vchan_mock.node'),
    path.join(root, 'build', 'Release', 'xen_vchan_real.node'),
    path.join(root, 'native', 'mock', 'build', 'bin', 'xenmockd'),
  ];
  if (!built.every((f) => fs.existsSync(f))) return 'nothing built in this tree yet';
  // The mock's libraries and broker: make knows (-q: only ask).
  if (spawnSync('make', ['-q', '-s', '-C', 'native/mock', 'all'], { cwd: root, stdio: 'ignore' }).status !== 0)
    return 'the mock is out of date';
  // The addons: node-gyp relinks both on every build, so both are newer than any of their sources.
  const oldest = Math.min(...built.slice(0, 2).map((f) => fs.statSync(f).mtimeMs));
  const changed = sourceNewerThan(oldest);
  if (changed) return `sources changed since the last build (${changed})`;
  const p = loadProblem(built[0]);
  return p ? `the mock addon built here does not load: ${p}` : '';
}

const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/** One build at a time in this tree: a directory made atomically, holding the builder's pid. */
function lock() {
  // Not under build/: node-gyp rebuild removes that directory first.
  const dir = path.join(root, '.xen-vchan-build.lock');
  let told = false;
  for (;;) {
    try {
      fs.mkdirSync(dir);
      fs.writeFileSync(path.join(dir, 'pid'), String(process.pid));
      const release = () => fs.rmSync(dir, { recursive: true, force: true });
      process.on('exit', release);
      return true;
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
    }
    let holder = NaN;
    try {
      holder = Number(fs.readFileSync(path.join(dir, 'pid'), 'utf8'));
    } catch {
      // being written, or being removed
    }
    let alive = false;
    if (Number.isInteger(holder) && holder > 0) {
      try {
        process.kill(holder, 0);
        alive = true;
      } catch (e) {
        alive = e.code === 'EPERM';
      }
    }
    if (Number.isInteger(holder) && !alive) {
      fs.rmSync(dir, { recursive: true, force: true }); // its builder died
      continue;
    }
    if (!told) console.log(`xen-vchan: another build is running in this tree (pid ${holder}); waiting for it`);
    told = true;
    sleep(500);
    if (told && !fs.existsSync(dir)) return false; // it finished: look again at what it built
  }
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

function main() {
  if (!fromSource) {
    const problem = prebuiltProblem();
    if (!problem) {
      console.log(`xen-vchan: using the prebuilt binaries for ${process.platform}-${process.arch}`);
      return;
    }
    const here = builtHereProblem();
    if (!here) {
      console.log('xen-vchan: using the binaries built in this tree (npm run build:native rebuilds them)');
      return;
    }
    if (!lock()) return main(); // another build just finished: use it if it is good
    const again = builtHereProblem();
    if (!again) {
      console.log('xen-vchan: using the binaries built in this tree (npm run build:native rebuilds them)');
      return;
    }
    console.log(`xen-vchan: building from source (about a minute): ${problem}; ${again}`);
  } else {
    while (!lock());
    console.log('xen-vchan: building from source, as asked');
  }
  run('make', ['-s', '-C', 'native/mock', ...(san ? ['SAN=1'] : []), 'all']);
  // npm tells lifecycle scripts where its own node-gyp is.
  // Run by hand (npm run build:native sets it too), fall back on the node-gyp that comes with npm.
  const bundled = path.join(
    path.dirname(process.execPath),
    '..',
    'lib',
    'node_modules',
    'npm',
    'node_modules',
    'node-gyp',
    'bin',
    'node-gyp.js',
  );
  const gyp = process.env.npm_config_node_gyp || (fs.existsSync(bundled) ? bundled : '');
  if (gyp) run(process.execPath, [gyp, 'rebuild']);
  else run('node-gyp', ['rebuild']);
}

// `node scripts/install.js --source-newer-than FILE`: prints the first source of the addons newer
// than FILE (test/xen/run.sh: is a prebuilt addon older than this tree's code?), or nothing.
if (process.argv[2] === '--source-newer-than') {
  const f = process.argv[3];
  if (!f || !fs.existsSync(f)) {
    console.error(`install.js: no file ${f}`);
    process.exit(2);
  }
  console.log(sourceNewerThan(fs.statSync(f).mtimeMs));
} else {
  main();
}
