import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { onMock, root } from './helpers/env';
import { sleep, uniquePath } from './helpers/util';

const cli = path.join(root, 'bin', 'xen-vchan.js');
const procs: { p: ChildProcess; exited: Promise<unknown> }[] = [];

/** Starts the CLI as DOMID. `exited` is taken at once: a process may be gone before anyone awaits it. */
function run(domid: number, args: string[]): ChildProcess & { exited: Promise<unknown> } {
  const p = spawn(process.execPath, [cli, ...args], {
    env: { ...process.env, XEN_MOCK_DOMID: String(domid) },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = once(p, 'exit');
  procs.push({ p, exited });
  return Object.assign(p, { exited });
}

afterEach(async () => {
  for (const { p, exited } of procs.splice(0)) {
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
    await exited;
  }
});

describe.runIf(onMock)('xen-vchan CLI', () => {
  it('listen and connect carry stdin to stdout across domains', async () => {
    const p = uniquePath('cli');
    const server = run(0, ['listen', '--domid', '5', '--path', p]);
    const client = run(5, ['connect', '--domid', '0', '--path', `/local/domain/0/${p}`, '--timeout', '10000']);
    const out: Buffer[] = [];
    server.stdout!.on('data', (d) => out.push(d));
    client.stdin!.end('hello over vchan\n');
    await Promise.all([server.exited, client.exited]);
    expect(Buffer.concat(out).toString()).toBe('hello over vchan\n');
  });

  it('the proxy carries many socket connections at once, each over its own vchan slot', async () => {
    const sock = path.join(os.tmpdir(), `xv-echo-${process.pid}.sock`);
    const echo = net.createServer((c) => c.pipe(c)).listen(sock);
    await once(echo, 'listening');
    const base = uniquePath('proxy');
    const serve = run(0, [
      'proxy',
      '--serve',
      '--domid',
      '5',
      '--path',
      base,
      '--connect',
      `unix:${sock}`,
      '--slots',
      '4',
    ]);
    await sleep(500); // the slots are published
    const port = 20000 + (process.pid % 20000);
    const front = run(5, [
      'proxy',
      '--domid',
      '0',
      '--path',
      `/local/domain/0/${base}`,
      '--listen',
      `tcp:127.0.0.1:${port}`,
    ]);
    // Until it listens (a fixed wait failed on a loaded machine: ECONNREFUSED).
    for (let i = 0; i < 200; i++) {
      const ok = await new Promise<boolean>((resolve) => {
        const probe = net.connect(port, '127.0.0.1');
        probe.once('connect', () => (probe.destroy(), resolve(true)));
        probe.once('error', () => resolve(false));
      });
      if (ok) break;
      await sleep(50);
    }
    const talk = async (i: number) => {
      const c = net.connect(port, '127.0.0.1');
      await once(c, 'connect');
      const msg = randomBytes(100_000 + i);
      const got: Buffer[] = [];
      let n = 0;
      const done = new Promise<void>((resolve) =>
        c.on('data', (d) => {
          got.push(d);
          n += d.length;
          if (n >= msg.length) resolve();
        }),
      );
      c.write(msg);
      await done;
      c.destroy();
      return Buffer.concat(got).equals(msg);
    };
    const results = await Promise.all([0, 1, 2, 3].map(talk));
    expect(results).toEqual([true, true, true, true]);
    front.kill('SIGTERM');
    serve.kill('SIGTERM');
    await Promise.all([front.exited, serve.exited]);
    echo.close();
  });

  it('mock env prints the environment that runs libxenvchan programs on the mock', async () => {
    const p = run(0, ['mock', 'env', '--domid', '5']);
    const out: Buffer[] = [];
    p.stdout!.on('data', (d) => out.push(d));
    await p.exited;
    const text = Buffer.concat(out).toString();
    expect(text).toMatch(/^export LD_LIBRARY_PATH=".*native\/mock\/build\/lib/m);
    expect(text).toMatch(/^export XEN_MOCK_DOMID="5"$/m);
    expect(text).toMatch(/^export XEN_MOCK_DIR=/m);
  });
});

describe('xen-vchan CLI arguments', () => {
  const sh = (args: string[]) =>
    spawnSync(process.execPath, [cli, ...args], {
      env: { ...process.env, XEN_VCHAN_BACKEND: 'mock' },
      encoding: 'utf8',
    });

  it('--version prints the package version; every command has --help', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };
    expect(sh(['--version']).stdout.trim()).toBe(pkg.version);
    for (const cmd of ['listen', 'connect', 'proxy', 'demo', 'mock']) {
      const r = sh([cmd, '--help']);
      expect(r.status, cmd).toBe(0);
      expect(r.stdout, cmd).toContain(`usage: xen-vchan ${cmd}`);
    }
  });

  it('bad arguments exit 2 with a message that says what is wrong, before anything starts', () => {
    const cases: [string[], RegExp][] = [
      [['listen', '--domid', '-1', '--path', 'x'], /--domid must be a domain id from 0 to 32751, not "-1"/],
      [['connect', '--domid', '32752', '--path', '/x'], /--domid must be a domain id from 0 to 32751, not "32752"/],
      [['connect', '--path', '/x'], /--domid is required/],
      [['mock', 'introduce', 'abc'], /mock introduce: the domain must be a domain id from 0 to 32751, not "abc"/],
      [['mock', 'destroy'], /usage: xen-vchan mock/],
      [
        ['listen', '--domid', '5', '--path', 'x', '--read-min', 'lots'],
        /--read-min needs a non-negative integer, not "lots"/,
      ],
      [['listen', '--nope'], /Unknown option '--nope'/],
      [['frobnicate'], /unknown command frobnicate/],
    ];
    for (const [args, msg] of cases) {
      const r = sh(args);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(msg);
    }
  });
});
