/**
 * The socket proxy (lib/proxy.ts): socket -> proxyListen -> vchan -> proxyServe -> socket, losing no
 * byte: half-close end to end, connections beyond capacity waiting, failures reported.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterEach, describe, expect, it, vi } from 'vitest';

import {
  connectMulti,
  encodeFrame,
  FrameParser,
  FrameType,
  MAX_DATA,
  proxyListen,
  proxyServe,
  VchanProxy,
  Xenstore,
} from '../dist/cjs/index.js';
import { onMock, root, selfDomid } from './helpers/env';
import { killChild, sleep, uniquePath } from './helpers/util';

const proxies: VchanProxy[] = [];
const servers: net.Server[] = [];
const cleanups: (() => void)[] = [];
afterEach(async () => {
  for (const p of proxies.splice(0)) await Promise.race([new Promise((r) => p.close(() => r(undefined))), sleep(3000)]);
  for (const s of servers.splice(0)) {
    s.close();
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    (s as any).closeAllConnections?.();
  }
  for (const f of cleanups.splice(0)) f();
});

let sockN = 0;
function sockPath(tag: string): string {
  const p = path.join(os.tmpdir(), `xv-${tag}-${process.pid}-${sockN++}.sock`);
  fs.rmSync(p, { force: true });
  cleanups.push(() => fs.rmSync(p, { force: true }));
  return p;
}

/**
 * The service: reads a connection to its end, then writes back what it read and ends, a
 * half-close echo (a reply that a proxy without half-close loses). Every connection it saw is counted.
 */
async function halfCloseEcho(): Promise<{ path: string; open: () => number; seen: () => number }> {
  const p = sockPath('echo');
  let open = 0;
  let seen = 0;
  const s = net.createServer({ allowHalfOpen: true }, (c) => {
    open++;
    seen++;
    c.on('close', () => open--);
    c.on('error', () => undefined);
    const got: Buffer[] = [];
    c.on('data', (d: Buffer) => got.push(d));
    c.on('end', () => c.end(Buffer.concat(got)));
  });
  servers.push(s);
  await new Promise<void>((r) => s.listen(p, r));
  return { path: p, open: () => open, seen: () => seen };
}

/** A proxy pair on this domain: the serving half to TARGET, the listening half at a fresh socket. */
async function proxyPair(
  target: string,
  opts: { maxConnections?: number; raw?: boolean; connectTimeout?: number; tcp?: boolean } = {},
) {
  const vpath = uniquePath('proxy');
  const serve = proxyServe({
    domid: selfDomid,
    path: vpath,
    target: { path: target },
    maxConnections: opts.maxConnections,
    raw: opts.raw,
  });
  proxies.push(serve);
  serve.on('connectionError', () => undefined);
  await once(serve, 'listening');
  const front = sockPath('front');
  const listen = proxyListen({
    domid: selfDomid,
    path: `/local/domain/${selfDomid}/${vpath}`,
    listen: opts.tcp ? { host: '127.0.0.1', port: 0 } : { path: front },
    raw: opts.raw,
    connectTimeout: opts.connectTimeout,
  });
  proxies.push(listen);
  await once(listen, 'listening');
  const port = opts.tcp ? (listen.address() as net.AddressInfo).port : 0;
  return { serve, listen, front, vpath, port };
}

/** Connects to FRONT, writes N random bytes, half-closes, reads to the end: the two digests. */
function exchange(front: string, n: number): Promise<{ sent: string; got: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ path: front, allowHalfOpen: true });
    const sent = createHash('sha256');
    const got = createHash('sha256');
    let bytes = 0;
    c.on('data', (d: Buffer) => {
      got.update(d);
      bytes += d.length;
    });
    c.on('end', () => resolve({ sent: sent.digest('hex'), got: got.digest('hex'), bytes }));
    c.on('error', reject);
    let left = n;
    const pump = () => {
      while (left > 0) {
        const k = Math.min(left, 1 + Math.floor(Math.random() * 256 * 1024));
        const b = randomBytes(k);
        sent.update(b);
        left -= k;
        if (!c.write(b)) return void c.once('drain', pump);
      }
      c.end();
    };
    c.once('connect', pump);
  });
}

describe('proxy framing', () => {
  it('frames split and joined across any chunking; every malformed header is EPROTO', () => {
    const frames = [
      encodeFrame(FrameType.HELLO, Buffer.from('{"v":1}')),
      encodeFrame(FrameType.DATA, randomBytes(MAX_DATA)),
      encodeFrame(FrameType.DATA, Buffer.from('x')),
      encodeFrame(FrameType.EOF),
    ];
    const all = Buffer.concat(frames);
    for (const step of [1, 2, 5, 7, 4096, all.length]) {
      const p = new FrameParser();
      const out: [number, number][] = [];
      for (let i = 0; i < all.length; i += step) p.push(all.subarray(i, i + step), (t, b) => out.push([t, b.length]));
      expect(out).toEqual([
        [1, 7],
        [2, MAX_DATA],
        [2, 1],
        [3, 0],
      ]);
    }
    const bad = [
      Buffer.from([9, 0, 0, 0, 0]), // unknown type
      Buffer.from([0, 0, 0, 0, 0]),
      Buffer.from([2, 1, 0, 1, 0]), // DATA over 64 KiB: refused from the header, before any payload
      Buffer.from([2, 0, 0, 0, 0]), // empty DATA
      Buffer.from([3, 1, 0, 0, 0]), // EOF with a payload
      Buffer.from([1, 0xff, 0xff, 0xff, 0xff]),
      Buffer.from([4, 1, 0x10, 0, 0]), // ERROR over 4 KiB
    ];
    for (const b of bad)
      expect(() => new FrameParser().push(b, () => undefined)).toThrow(expect.objectContaining({ code: 'EPROTO' }));
  });

  it('a frame trickled in a byte at a time is copied once, not once per byte (no quadratic work for a peer to cause)', () => {
    const frame = encodeFrame(FrameType.DATA, randomBytes(MAX_DATA));
    const copied = { bytes: 0 };
    const concat = Buffer.concat;
    const spy = vi.spyOn(Buffer, 'concat').mockImplementation((list, total) => {
      const out = concat(list, total);
      copied.bytes += out.length;
      return out;
    });
    try {
      const p = new FrameParser();
      const got: Buffer[] = [];
      for (let i = 0; i < frame.length; i++) p.push(frame.subarray(i, i + 1), (_t, b) => got.push(Buffer.from(b)));
      expect(got).toHaveLength(1);
      expect(got[0]).toEqual(frame.subarray(5));
    } finally {
      spy.mockRestore();
    }
    // Joining the header's bytes is all Buffer.concat does; the payload is gathered once.
    expect(copied.bytes).toBeLessThan(64);
  });

  it('rejects bad options with Node-style codes', () => {
    expect(() => proxyServe(null as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => proxyServe({ domid: 0, path: 'p', target: { port: 70000 } })).toThrow(
      expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }),
    );
    expect(() => proxyListen({ domid: 0, path: 'p', listen: { path: '' } })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }),
    );
  });
});

describe('proxy end to end (socket -> vchan -> socket)', () => {
  it('200 concurrent connections, each half-closing after 0 B to 8 MiB, read the whole reply: SHA-256 both ways', async () => {
    const echo = await halfCloseEcho();
    // No connect timeout: under the rig's emulation the last of 200 connections waits minutes for
    // a channel; this test is about the bytes, the timeout has its own. On real Xen, 12 channels
    // at once (33 granted pages each): gntalloc's limit (1024 pages) is one pool for all of dom0,
    // and the test file running beside this one needs its share of it.
    const maxConnections = onMock ? 64 : 12;
    const { serve, listen, front } = await proxyPair(echo.path, { maxConnections, connectTimeout: 0 });
    const errors: Error[] = [];
    const listenErrors: Error[] = [];
    serve.on('connectionError', (e) => errors.push(e));
    listen.on('connectionError', (e) => listenErrors.push(e));
    // Log-uniform sizes from 1 B to 8 MiB, and the two ends exactly.
    const sizes = Array.from({ length: 200 }, (_, i) =>
      i === 0 ? 0 : i === 1 ? 8 << 20 : Math.floor(Math.exp(Math.random() * Math.log(8 << 20))),
    );
    const settled = await Promise.allSettled(sizes.map((n) => exchange(front, n)));
    const failed = settled.flatMap((r, i) => (r.status === 'rejected' ? [`${i}: ${String(r.reason)}`] : []));
    const why = (e: Error[]) => e.slice(0, 5).map((x) => `${(x as NodeJS.ErrnoException).code}: ${x.message}`);
    expect({ failed, serving: why(errors), listening: why(listenErrors) }).toEqual({
      failed: [],
      serving: [],
      listening: [],
    });
    const results = settled.map((r) => (r as PromiseFulfilledResult<Awaited<ReturnType<typeof exchange>>>).value);
    for (let i = 0; i < sizes.length; i++) {
      expect(results[i].bytes, `connection ${i}`).toBe(sizes[i]);
      expect(results[i].got, `connection ${i}`).toBe(results[i].sent);
    }
    expect(echo.seen()).toBe(200);
    for (let i = 0; i < 300 && serve.connections > 0; i++) await sleep(10);
    expect(serve.connections).toBe(0);
  }, 240_000);

  it('connections beyond the server capacity wait for a channel, none is reset', async () => {
    const echo = await halfCloseEcho();
    const { front } = await proxyPair(echo.path, { maxConnections: 2 });
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => exchange(front, 100_000 + i)));
    results.forEach((r, i) => {
      expect(r.bytes).toBe(100_000 + i);
      expect(r.got).toBe(r.sent);
    });
  });

  it('a missing target: logged on the serving side, reported to the listening side, the socket reset', async () => {
    const gone = sockPath('nothing');
    const { serve, listen, front } = await proxyPair(gone);
    const served: Error[] = [];
    const listened: Error[] = [];
    serve.on('connectionError', (e) => served.push(e));
    listen.on('connectionError', (e) => listened.push(e));
    const c = net.connect({ path: front });
    const [err] = await Promise.race([once(c, 'close').then(() => [null]), once(c, 'error')]);
    void err;
    for (let i = 0; i < 200 && (served.length === 0 || listened.length === 0); i++) await sleep(10);
    expect(served[0]).toMatchObject({ code: 'ENOENT', syscall: 'connect' });
    expect(listened[0]).toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'connect' });
    expect(listened[0].message).toContain(`vchan proxy from unix:${front}: the other side failed`);
    // Listening at tcp:HOST:0, the messages name the port the kernel chose.
    const tcp = await proxyPair(gone, { tcp: true });
    const tcpErrors: Error[] = [];
    tcp.listen.on('connectionError', (e) => tcpErrors.push(e));
    tcp.serve.on('connectionError', () => undefined);
    const t = net.connect(tcp.port, '127.0.0.1');
    t.on('error', () => undefined);
    await new Promise((r) => t.once('close', r));
    for (let i = 0; i < 200 && tcpErrors.length === 0; i++) await sleep(10);
    expect(tcpErrors[0]?.message).toContain(`vchan proxy from tcp:127.0.0.1:${tcp.port}: the other side failed`);
    for (let i = 0; i < 200 && serve.connections + listen.connections > 0; i++) await sleep(10);
    expect(serve.connections + listen.connections).toBe(0);
  });

  it('a socket address in use: an error event with Node’s listen error, no crash', async () => {
    const taken = sockPath('taken');
    const holder = net.createServer();
    servers.push(holder);
    await new Promise<void>((r) => holder.listen(taken, r));
    const p = proxyListen({ domid: selfDomid, path: '/local/domain/0/data/x', listen: { path: taken } });
    const [e] = (await once(p, 'error')) as [NodeJS.ErrnoException];
    expect(e).toMatchObject({ code: 'EADDRINUSE', syscall: 'listen' });
  });

  it('a vchan path another proxy serves: EADDRINUSE', async () => {
    const echo = await halfCloseEcho();
    const { vpath } = await proxyPair(echo.path);
    const again = proxyServe({ domid: selfDomid, path: vpath, target: { path: echo.path } });
    const [e] = (await once(again, 'error')) as [NodeJS.ErrnoException];
    expect(e).toMatchObject({ code: 'EADDRINUSE', syscall: 'listen' });
    again.close();
  });

  it('a socket client that goes away mid-transfer frees its channel at both halves and its target connection', async () => {
    const echo = await halfCloseEcho();
    const { serve, listen, front, vpath } = await proxyPair(echo.path);
    const c = net.connect({ path: front });
    await once(c, 'connect');
    c.write(randomBytes(1 << 20));
    for (let i = 0; i < 200 && serve.connections === 0; i++) await sleep(10);
    expect(serve.connections).toBe(1);
    c.destroy();
    for (let i = 0; i < 300 && serve.connections + listen.connections + echo.open() > 0; i++) await sleep(10);
    expect([serve.connections, listen.connections, echo.open()]).toEqual([0, 0, 0]);
    const xs = new Xenstore();
    expect(await xs.directory(`/local/domain/${selfDomid}/${vpath}`)).toEqual(['requests']);
    xs.close();
  });

  it('a hostile vchan client (no HELLO, garbage, oversize frames, data after EOF) costs only its own connection', async () => {
    const echo = await halfCloseEcho();
    const { serve, front, vpath } = await proxyPair(echo.path);
    const errors: NodeJS.ErrnoException[] = [];
    serve.on('connectionError', (e) => errors.push(e));
    const hello = encodeFrame(FrameType.HELLO, Buffer.from('{"v":1}'));
    const attacks = [
      encodeFrame(FrameType.DATA, Buffer.from('no hello first')),
      encodeFrame(FrameType.HELLO, Buffer.from('{"v":2}')),
      Buffer.concat([hello, Buffer.from([77, 0, 0, 0, 0])]),
      Buffer.concat([hello, Buffer.from([2, 0xff, 0xff, 0xff, 0x7f])]),
      Buffer.concat([hello, encodeFrame(FrameType.EOF), encodeFrame(FrameType.DATA, Buffer.from('late'))]),
      Buffer.concat([hello, hello]),
    ];
    for (const a of attacks) {
      const v = await connectMulti({ domid: selfDomid, path: `/local/domain/${selfDomid}/${vpath}`, timeout: 5000 });
      v.on('error', () => undefined);
      v.on('data', () => undefined);
      v.write(a);
      await once(v, 'close');
    }
    expect(errors.map((e) => e.code)).toEqual(Array(attacks.length).fill('EPROTO'));
    // And it still serves.
    const r = await exchange(front, 12345);
    expect([r.bytes, r.got]).toEqual([12345, r.sent]);
  });

  it('raw mode passes bytes unframed to a plain vchan peer, one connection at a time', async () => {
    // Raw has no half-close: the echo service must not wait for the end, so use a plain echo.
    const plain = sockPath('plain');
    const s = net.createServer((c) => c.pipe(c));
    servers.push(s);
    await new Promise<void>((r) => s.listen(plain, r));
    const { front } = await proxyPair(plain, { raw: true });
    const talk = async (n: number) => {
      const c = net.connect({ path: front });
      const data = randomBytes(n);
      const got: Buffer[] = [];
      let k = 0;
      await new Promise<void>((resolve, reject) => {
        c.on('error', reject);
        c.on('data', (d: Buffer) => {
          got.push(d);
          k += d.length;
          if (k >= n) resolve();
        });
        c.write(data);
      });
      c.destroy();
      return Buffer.concat(got).equals(data);
    };
    expect(await Promise.all([talk(50_000), talk(70_000), talk(1)])).toEqual([true, true, true]);
  });
});

describe.runIf(onMock)('proxy across processes: the listening half killed mid-transfer', () => {
  it('frees its channels at the serving half, its node and its target connections', async () => {
    const echo = await halfCloseEcho();
    const vpath = uniquePath('proxyk');
    const serve = proxyServe({ domid: 5, path: vpath, target: { path: echo.path } });
    proxies.push(serve);
    const serveErrors: string[] = [];
    serve.on('connectionError', (e: Error) => serveErrors.push(e.message));
    await once(serve, 'listening');
    const front = sockPath('kfront');
    const child = spawn(
      process.execPath,
      [
        path.join(root, 'bin', 'xen-vchan.js'),
        'proxy',
        '--domid',
        '0',
        '--path',
        `/local/domain/0/${vpath}`,
        '--listen',
        `unix:${front}`,
      ],
      { env: { ...process.env, XEN_MOCK_DOMID: '5', XEN_VCHAN_BACKEND: 'mock' }, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    cleanups.push(() => killChild(child));
    let childErr = '';
    child.stderr!.on('data', (d: Buffer) => (childErr += d));
    for (let i = 0; i < 400 && !fs.existsSync(front); i++) await sleep(25);
    const socks = [0, 1, 2].map(() => {
      const c = net.connect({ path: front });
      c.on('error', () => undefined);
      c.on('data', () => undefined);
      c.write(randomBytes(4 << 20));
      return c;
    });
    for (let i = 0; i < 400 && serve.connections < 3; i++) await sleep(10);
    // What each half said, should a connection be missing.
    expect(serve.connections, JSON.stringify({ serveErrors, childErr })).toBe(3);
    serveErrors.length = 0;
    const t0 = Date.now();
    killChild(child);
    for (let i = 0; i < 500 && serve.connections + echo.open() > 0; i++) await sleep(10);
    expect([serve.connections, echo.open()]).toEqual([0, 0]);
    expect(Date.now() - t0).toBeLessThan(5000);
    const xs = new Xenstore();
    expect(await xs.directory(`/local/domain/0/${vpath}`)).toEqual(['requests']);
    xs.close();
    for (const c of socks) c.destroy();
  });
});
