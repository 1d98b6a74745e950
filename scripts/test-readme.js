'use strict';
// npm run test:readme: the README's snippets, run as written, on the mock. Code blocks fenced as
// ```js file=NAME are written to NAME in an empty project that has this package installed (a
// link); blocks fenced as ```sh run are then run there with bash -e, in order, each in a process
// group of its own that is killed when the block ends (so `server &` does not outlive it). A block
// fails on a non-zero exit or after 60 s. Blocks fenced any other way are not run.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.join(__dirname, '..');
const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
const blocks = [...readme.matchAll(/^```(\S+)([^\n]*)\n([\s\S]*?)^```$/gm)].map((m) => ({
  lang: m[1],
  info: m[2].trim(),
  code: m[3],
  line: readme.slice(0, m.index).split('\n').length,
}));

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xen-vchan-readme-'));
fs.mkdirSync(path.join(dir, 'node_modules', '.bin'), { recursive: true });
fs.symlinkSync(root, path.join(dir, 'node_modules', 'xen-vchan'));
fs.symlinkSync(path.join(root, 'bin', 'xen-vchan.js'), path.join(dir, 'node_modules', '.bin', 'xen-vchan'));
fs.writeFileSync(path.join(dir, 'package.json'), '{"name":"readme-snippets","private":true}\n');

/** Runs CODE with bash in a process group of its own; resolves with its exit, having killed the group. */
function runBlock(code) {
  return new Promise((resolve) => {
    const child = spawn('bash', ['-ec', code], {
      cwd: dir,
      detached: true, // its own process group: `server &` goes with it
      env: {
        ...process.env,
        XEN_MOCK_DIR: path.join(dir, 'mock'),
        PATH: `${path.join(dir, 'node_modules', '.bin')}:${process.env.PATH}`,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {
        // the group is gone already
      }
      resolve({ code, signal, out });
    });
  });
}

(async () => {
  for (const b of blocks) {
    const file = /^file=(\S+)$/.exec(b.info);
    if (b.lang === 'js' && file) fs.writeFileSync(path.join(dir, file[1]), b.code);
  }
  let ran = 0;
  let failed = 0;
  for (const b of blocks) {
    if (b.lang !== 'sh' || b.info !== 'run') continue;
    ran++;
    const r = await runBlock(b.code);
    const ok = r.code === 0;
    process.stdout.write(`== README.md line ${b.line}: ${ok ? 'ok' : `FAILED (${r.code ?? r.signal})`}\n${r.out}`);
    if (!ok) failed++;
  }
  fs.rmSync(dir, { recursive: true, force: true });
  console.log(`README snippets: ${ran - failed} of ${ran} ran as written`);
  process.exit(failed || ran === 0 ? 1 : 0);
})();
