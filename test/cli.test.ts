import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import { Xenstore } from '../dist/cjs/index.js';

import { config, onMock, root } from './helpers/env';
import { makeFakeSysfs } from './helpers/sysfs';
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

/**
 * The listening half of the proxy in domain 5, for the serving half of dom0 at BASE, on a port the
 * kernel picks (a fixed port collided with other tests' and the ephemeral range: EADDRINUSE); ready
 * once it says where it listens.
 */
async function listeningProxy(
  base: string,
): Promise<{ front: ChildProcess & { exited: Promise<unknown> }; port: number }> {
  const p = spawn(
    process.execPath,
    [cli, 'proxy', '--domid', '0', '--path', `/local/domain/0/${base}`, '--listen', 'tcp:127.0.0.1:0'],
    { env: { ...process.env, XEN_MOCK_DOMID: '5' }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const exited = once(p, 'exit');
  procs.push({ p, exited });
  let err = '';
  const port = await new Promise<number>((resolve, reject) => {
    p.stderr!.on('data', (d: Buffer) => {
      process.stderr.write(d);
      err += d;
      const m = /proxying tcp:127\.0\.0\.1:(\d+) /.exec(err);
      if (m) resolve(Number(m[1]));
    });
    p.once('exit', (code) => reject(new Error(`proxy --listen exited (${code}) before listening: ${err}`)));
  });
  return { front: Object.assign(p, { exited }), port };
}

afterEach(async () => {
  for (const { p, exited } of procs.splice(0)) {
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
    // A proxy with connections still open takes a second signal to go at once.
    const t = setTimeout(() => p.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
  }
});

describe.runIf(onMock)('xen-vchan CLI', () => {
  it('listen and connect carry stdin to stdout across domains', async () => {
    const p = uniquePath('cli');
    const server = run(0, ['listen', '--domid', '5', '--path', p]);
    const client = run(5, ['connect', '--domid', '0', '--path', `/local/domain/0/${p}`, '--timeout', '10000']);
    const out: Buffer[] = [];
    server.stdout!.on('data', (d) => out.push(d));
    const back: Buffer[] = [];
    client.stdout!.on('data', (d) => back.push(d));
    client.stdin!.end('hello over vchan\n');
    // Each direction ends on its own: the exchange is over once the server's stdin has ended too.
    server.stdin!.end('and back\n');
    expect(await Promise.all([server.exited, client.exited])).toEqual([
      [0, null],
      [0, null],
    ]);
    expect(Buffer.concat(out).toString()).toBe('hello over vchan\n');
    expect(Buffer.concat(back).toString()).toBe('and back\n');
  });

  it('the proxy carries more connections than --max at once (the rest wait), each half-closing and reading the whole reply', async () => {
    const sock = path.join(os.tmpdir(), `xv-echo-${process.pid}.sock`);
    fs.rmSync(sock, { force: true });
    // Replies only once the client has ended its side: the reply a proxy without half-close loses.
    const echo = net
      .createServer({ allowHalfOpen: true }, (c) => {
        const got: Buffer[] = [];
        c.on('data', (d: Buffer) => got.push(d)).on('end', () => c.end(Buffer.concat(got)));
      })
      .listen(sock);
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
      '--max',
      '3',
    ]);
    const { front, port } = await listeningProxy(base);
    const talk = async (i: number) => {
      const c = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
      const msg = randomBytes(i === 0 ? 0 : 100 + i * 50_000);
      const got: Buffer[] = [];
      c.on('data', (d: Buffer) => got.push(d));
      c.end(msg);
      await once(c, 'end');
      return Buffer.concat(got).equals(msg);
    };
    const results = await Promise.all([...Array(10).keys()].map(talk));
    expect(results).toEqual(Array(10).fill(true));
    front.kill('SIGTERM');
    serve.kill('SIGTERM');
    await Promise.all([front.exited, serve.exited]);
    echo.close();
  });

  it('proxy: a target that is not there is logged and the client socket closed; a port in use is a clear error', async () => {
    const base = uniquePath('proxyno');
    const missing = path.join(os.tmpdir(), `xv-none-${process.pid}.sock`);
    const serve = spawn(
      process.execPath,
      [cli, 'proxy', '--serve', '--domid', '5', '--path', base, '--connect', `unix:${missing}`],
      {
        env: { ...process.env, XEN_MOCK_DOMID: '0' },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    const serveErr: Buffer[] = [];
    serve.stderr!.on('data', (d: Buffer) => serveErr.push(d));
    procs.push({ p: serve, exited: once(serve, 'exit') });
    const blocker = net.createServer().listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    const busy = (blocker.address() as net.AddressInfo).port;
    const inUse = spawnSync(
      process.execPath,
      [cli, 'proxy', '--domid', '0', '--path', `/local/domain/0/${base}`, '--listen', `tcp:127.0.0.1:${busy}`],
      { env: { ...process.env, XEN_MOCK_DOMID: '5' }, encoding: 'utf8', timeout: 20000 },
    );
    expect(inUse.status).toBe(1);
    expect(inUse.stderr).toMatch(/EADDRINUSE/);
    expect(inUse.stderr).not.toMatch(/at .*\.js:\d+/); // a message, not a stack trace
    blocker.close();
    const { front, port } = await listeningProxy(base);
    let c: net.Socket | undefined;
    for (let i = 0; i < 200 && !c; i++) {
      const s = net.connect(port, '127.0.0.1');
      s.on('error', () => undefined); // the reset this test causes
      const ok = await new Promise<boolean>((r) => (s.once('connect', () => r(true)), s.once('error', () => r(false))));
      if (ok) c = s;
      else await sleep(50);
    }
    if (!c!.destroyed) await new Promise((r) => c!.on('close', r)); // events.once would reject on the reset
    for (let i = 0; i < 200 && !Buffer.concat(serveErr).toString().includes('ENOENT'); i++) await sleep(20);
    expect(Buffer.concat(serveErr).toString()).toMatch(/a connection failed: .*ENOENT/);
    front.kill('SIGTERM');
    await front.exited;
  });

  it('proxy --listen with no serving half: the wait is logged, the client refused at --connect-timeout, one SIGTERM stops it', async () => {
    const base = uniquePath('proxynone');
    const front = spawn(
      process.execPath,
      [
        cli,
        'proxy',
        '--domid',
        '0',
        '--path',
        `/local/domain/0/${base}`,
        '--listen',
        'tcp:127.0.0.1:0',
        '--connect-timeout',
        '2000',
      ],
      { env: { ...process.env, XEN_MOCK_DOMID: '5' }, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const exited = once(front, 'exit');
    procs.push({ p: front, exited });
    let err = '';
    front.stderr!.on('data', (d: Buffer) => (err += d));
    while (!err.includes('proxying')) await sleep(20);
    const port = Number(/proxying tcp:127\.0\.0\.1:(\d+) /.exec(err)![1]);
    // A client that waits: refused (closed) at the timeout, the wait logged first.
    const t0 = Date.now();
    const c = net.connect(port, '127.0.0.1');
    c.on('error', () => undefined);
    c.resume();
    await new Promise((r) => c.once('close', r));
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1500);
    while (!err.includes('ETIMEDOUT')) await sleep(20);
    expect(err).toMatch(
      /1 connection waiting for a channel from domain 0 at .*proxynon.* \(is its proxy --serve running\?\); refused after 2 s/,
    );
    expect(err).toMatch(/a connection failed: .*ETIMEDOUT/);
    // A client that sent its request and half-closed, then gave up: one SIGTERM still stops the proxy.
    const d = net.connect(port, '127.0.0.1');
    d.on('error', () => undefined);
    await once(d, 'connect');
    d.end('GET / HTTP/1.0\r\n\r\n');
    await sleep(300);
    d.destroy();
    front.kill('SIGTERM');
    const [code] = (await Promise.race([exited, sleep(5000).then(() => ['still running'])])) as [unknown];
    expect(code).toBe(0);
  });

  it('pvcalls serve and pvcalls connect: a TCP exchange from domain 5 through the Node backend, 300 KB each way', async () => {
    const x = await import('../dist/cjs/index.js');
    const xs = new x.Xenstore();
    await x.createPvcallsDevice(xs, { frontend: 5, backend: 0 });
    // PVCalls v1 has no shutdown, so the server knows the request's length and answers it whole,
    // then closes: the connection ends when the remote end closes it.
    const payload = randomBytes(300_000);
    const echo = net.createServer({ allowHalfOpen: true }, (c) => {
      const got: Buffer[] = [];
      let n = 0;
      c.on('data', (d: Buffer) => {
        got.push(d);
        n += d.length;
        if (n === payload.length) c.end(Buffer.concat([Buffer.from('got:'), ...got]));
      });
    });
    echo.listen(0, '127.0.0.1');
    await once(echo, 'listening');
    const port = (echo.address() as net.AddressInfo).port;
    const back = spawn(process.execPath, [cli, 'pvcalls', 'serve', '--domid', '5', '--max-sockets', '8'], {
      env: { ...process.env, XEN_MOCK_DOMID: '0' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const backExited = once(back, 'exit');
    procs.push({ p: back, exited: backExited });
    let log = '';
    back.stderr!.on('data', (d: Buffer) => (log += d));
    try {
      while (!log.includes('serving domains 5')) await sleep(20);
      const front = run(5, ['pvcalls', 'connect', `127.0.0.1:${port}`, '--timeout', '10000']);
      const out: Buffer[] = [];
      front.stdout!.on('data', (d: Buffer) => out.push(d));
      front.stdin!.end(payload);
      expect(await front.exited).toEqual([0, null]);
      const all = Buffer.concat(out);
      expect(all.subarray(0, 4).toString()).toBe('got:');
      expect(all.subarray(4).equals(payload)).toBe(true);
      while (!log.includes('frontend 5/0 gone')) await sleep(20);
      expect(log).toMatch(/frontend 5\/0 connected/);
      // Nothing there: the connection fails and the command says so, exit 1.
      const refused = spawnSync(process.execPath, [cli, 'pvcalls', 'connect', '127.0.0.1:1', '--timeout', '10000'], {
        env: { ...process.env, XEN_MOCK_DOMID: '5' },
        input: '',
        encoding: 'utf8',
        timeout: 20000,
      });
      expect(refused.status).toBe(1);
      expect(refused.stderr).toMatch(/pvcalls connect: pvcalls.connect ECONNREFUSED/);
      back.kill('SIGTERM');
      expect(await backExited).toEqual([0, null]);
    } finally {
      echo.close();
      await x.removePvcallsDevice(xs, { frontend: 5, backend: 0 });
      await xs.rm('/local/domain/5/device').catch(() => undefined);
      await xs.rm('/local/domain/0/backend').catch(() => undefined);
      xs.close();
    }
  });

  it('pcid serve and pcid call: a reply per call, exit 1 for a failed one', async () => {
    const sys = makeFakeSysfs();
    try {
      const rel = `data/pcidcli-${process.pid}`;
      const serve = spawn(
        process.execPath,
        [cli, 'pcid', 'serve', '--sysfs', sys.root, '--path', rel, '--client', '0'],
        {
          env: { ...process.env, XEN_MOCK_DOMID: '0' },
          stdio: ['ignore', 'ignore', 'pipe'],
        },
      );
      procs.push({ p: serve, exited: once(serve, 'exit') });
      await new Promise<void>((resolve) =>
        serve.stderr!.on('data', (d: Buffer) => String(d).includes('pcid serving') && resolve()),
      );
      const call = (args: string[]) =>
        spawnSync(process.execPath, [cli, 'pcid', 'call', ...args, '--path', rel], {
          env: { ...process.env, XEN_MOCK_DOMID: '0' },
          encoding: 'utf8',
          timeout: 20000,
        });
      const ok = call(['is_device_assigned', `sbdf=${sys.assigned}`]);
      expect(ok.status).toBe(0);
      expect(JSON.parse(ok.stdout)).toEqual({ result: true, resp: 'is_device_assigned', error: 'okay', id: 1 });
      const bad = call(['make_assignable', 'sbdf=nope', 'rebind=true']);
      expect(bad.status).toBe(1);
      expect(JSON.parse(bad.stdout)).toMatchObject({
        resp: 'make_assignable',
        error: 'failed',
        error_desc: "Can't parse SBDF",
      });
      expect(call(['list_assignable', 'oops']).stderr).toMatch(/arguments are NAME=VALUE/);
    } finally {
      sys.remove();
    }
  });

  it('demo sends exactly --bytes (not a multiple of 64 KiB too), small sizes in KB, and nothing on stderr', async () => {
    // The demo's channels live under data/vchan/5, which xenstore creates on the way (and keeps).
    const xs = new Xenstore();
    const had = await xs.read('/local/domain/0/data/vchan/5').then(
      () => true,
      () => false,
    );
    for (const [bytes, shown] of [
      ['1000000', /sent 1\.0 MB to domain 5/],
      ['100', /sent 100 bytes to domain 5/],
      ['12345', /sent 12 KB to domain 5/],
    ] as const) {
      const r = spawnSync(process.execPath, [cli, 'demo', '--ring', '4096', '--bytes', bytes], {
        env: process.env,
        encoding: 'utf8',
        timeout: 30000,
      });
      expect(r.stderr, bytes).toBe('');
      expect(r.status, bytes).toBe(0);
      expect(r.stdout, bytes).toMatch(shown);
      expect(r.stdout, bytes).toMatch(/domain 5 has left/);
    }
    if (!had) await xs.rm('/local/domain/0/data/vchan/5');
    xs.close();
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
    for (const cmd of ['listen', 'connect', 'proxy', 'demo', 'mock', 'pcid', 'pvcalls']) {
      const r = sh([cmd, '--help']);
      expect(r.status, cmd).toBe(0);
      expect(r.stdout, cmd).toContain(`usage: xen-vchan ${cmd}`);
    }
  });

  // The host's concern: the rig's dom0 mounts this tree and has no compiler.
  it.runIf(config !== 'real')(
    'the install step run again in this tree (as npx does) uses what is built, without rebuilding',
    () => {
      const addon = path.join(root, 'build', 'Release', 'xen_vchan_mock.node');
      const before = fs.statSync(addon).mtimeMs;
      const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'install.js')], {
        encoding: 'utf8',
        env: { ...process.env, XEN_VCHAN_BUILD_FROM_SOURCE: '', npm_config_build_from_source: '' },
      });
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(/xen-vchan: using the (prebuilt binaries|binaries built in this tree)/);
      expect(r.stdout).not.toMatch(/building/);
      expect(fs.statSync(addon).mtimeMs).toBe(before);
    },
  );

  it('bad arguments exit 2 with a message that says what is wrong, before anything starts', () => {
    const cases: [string[], RegExp][] = [
      [['listen', '--domid', '-1', '--path', 'x'], /--domid must be a domain id from 0 to 32751, not "-1"/],
      [['connect', '--domid', '32752', '--path', '/x'], /--domid must be a domain id from 0 to 32751, not "32752"/],
      [['connect', '--path', '/x'], /--domid is required/],
      [['mock', 'introduce', 'abc'], /mock introduce: the domain must be a domain id from 0 to 32751, not "abc"/],
      [['mock', 'destroy'], /usage: xen-vchan mock/],
      [
        ['listen', '--domid', '5', '--path', 'x', '--read-min', 'lots'],
        /--read-min must be a size in bytes from 0 to 1048576, not "lots" \(the ring is the smallest of 1024, 2048, 4096, ... 1048576/,
      ],
      [['listen', '--nope'], /Unknown option '--nope'/],
      [
        ['demo', '--ring', '3'],
        /--ring must be a ring size in bytes: 1024, 2048, 4096, ... 1048576 \(powers of two\), not "3"/,
      ],
      [['demo', '--ring', '99999999999'], /--ring must be a ring size in bytes: .*not "99999999999"/],
      [['frobnicate'], /unknown command frobnicate/],
      [['proxy', '--serve', '--domid', '5', '--path', 'p', '--connect', 'unix:/s', '--slots', '4'], /--slots is gone/],
      [
        ['proxy', '--serve', '--domid', '5', '--path', 'p', '--connect', 'unix:/s', '--max', '0'],
        /--max must be at least 1/,
      ],
      [
        ['proxy', '--serve', '--domid', '5', '--path', 'p', '--connect', 'ftp:x'],
        /--connect must be unix:\/path or tcp:HOST:PORT/,
      ],
      [
        ['proxy', '--domid', '0', '--path', '/p', '--listen', 'unix:/s', '--max', '2'],
        /--connect and --max go with --serve/,
      ],
    ];
    for (const [args, msg] of cases) {
      const r = sh(args);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(msg);
    }
  });
});
