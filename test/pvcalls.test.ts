/**
 * PVCalls on the mock: the Node frontend (a domU's socket calls) against the Node backend (served
 * with this machine's sockets), and the backend against a hostile frontend built by hand.
 * On real Xen the frontend runs in the rig's domU (test/xen/domu.test.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as net from 'node:net';
import { constants } from 'node:os';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import * as x from '../dist/cjs/index.js';
import { EventChannel, GrantSharer, Xenstore } from '../dist/cjs/index.js';
import { createPvcallsBackend, type PvcallsBackend } from '../dist/cjs/pvcalls/backend.js';
import { connectPvcalls, type PvcallsFrontend, type PvcallsSocket } from '../dist/cjs/pvcalls/frontend.js';
import { FrontRing } from '../dist/cjs/pvcalls/ring.js';
import * as w from '../dist/cjs/pvcalls/wire.js';
import { createPvcallsDevice, removePvcallsDevice, XenbusState } from '../dist/cjs/pvcalls/xenbus.js';
import { mockAddon } from './helpers/env';
import { killChild, sleep, startPeer } from './helpers/util';

const E = (name: string) => -(constants.errno as Record<string, number>)[name];

/** What the test's toolstack made and the leak check must not see left: the device directories. */
async function removeDevices(xs: Xenstore, frontends: number[]): Promise<void> {
  for (const f of frontends) {
    await removePvcallsDevice(xs, { frontend: f, backend: 0 });
    await xs.rm(`/local/domain/${f}/device`).catch(() => undefined);
  }
  await xs.rm('/local/domain/0/backend').catch(() => undefined);
}

/** A TCP server on this machine's loopback (the backend's network), and its port. */
async function tcpServer(onConn: (s: net.Socket) => void): Promise<{ server: net.Server; port: number }> {
  const server = net.createServer(onConn);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as net.AddressInfo).port };
}

async function connected(s: PvcallsSocket): Promise<PvcallsSocket> {
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  return s;
}

/** A free TCP port on the loopback, for a server the frontend asks the backend for. */
async function freePort(): Promise<number> {
  const { server, port } = await tcpServer(() => undefined);
  await new Promise((r) => server.close(r));
  return port;
}

describe.runIf(mockAddon)('PVCalls: the Node frontend (domain 5) and the Node backend (dom0), on the mock', () => {
  let xs: Xenstore;
  let be: PvcallsBackend;
  let fe: PvcallsFrontend;
  const cleanups: (() => unknown)[] = [];

  beforeEach(async () => {
    xs = new Xenstore();
    await createPvcallsDevice(xs, { frontend: 5, backend: 0 });
    be = await createPvcallsBackend({ dataPump: 'native' }); // the JS pump too: the hand-written frontend's test below
    fe = await connectPvcalls({ mockDomid: 5, timeout: 5000 });
  });

  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    await fe.close();
    await be.close();
    await removeDevices(xs, [5]);
    xs.close();
  });

  it('completes the xenbus handshake as version 1 lays it out', async () => {
    const back = '/local/domain/0/backend/pvcalls/5/0';
    const front = '/local/domain/5/device/pvcalls/0';
    expect(await xs.read(`${back}/versions`)).toBe('1');
    expect(await xs.read(`${back}/max-page-order`)).toBe('4');
    expect(await xs.read(`${back}/function-calls`)).toBe('1');
    expect(Number(await xs.read(`${back}/state`))).toBe(XenbusState.Connected);
    expect(Number(await xs.read(`${front}/state`))).toBe(XenbusState.Connected);
    expect(await xs.read(`${front}/version`)).toBe('1');
    expect(Number(await xs.read(`${front}/ring-ref`))).toBeGreaterThanOrEqual(0);
    expect(Number(await xs.read(`${front}/port`))).toBeGreaterThan(0);
    expect(be.connected).toEqual(['5/0']);
    expect(fe.ringOrder).toBe(4);
  });

  it('32 sockets at once, 64 MiB each way on each, SHA-256 on both ends', async () => {
    const MiB = 1 << 20;
    const TOTAL = 64 * MiB;
    const block = randomBytes(MiB);
    const expected = createHash('sha256');
    for (let i = 0; i < 64; i++) expected.update(block);
    const want = expected.digest('hex');
    /** Writes TOTAL bytes (BLOCK again and again) with backpressure. */
    const send = (s: NodeJS.WritableStream) =>
      new Promise<void>((resolve) => {
        let left = 64;
        const pump = () => {
          while (left > 0) {
            left--;
            if (!s.write(block)) return void s.once('drain', pump);
          }
          resolve();
        };
        pump();
      });
    const receive = (s: NodeJS.ReadableStream) =>
      new Promise<string>((resolve) => {
        const h = createHash('sha256');
        let got = 0;
        s.on('data', (d: Buffer) => {
          h.update(d);
          got += d.length;
          if (got === TOTAL) resolve(h.digest('hex'));
        });
      });
    const serverSide: Promise<string>[] = [];
    const { server, port } = await tcpServer((c) => {
      serverSide.push(receive(c));
      void send(c);
    });
    cleanups.push(() => new Promise((r) => server.close(r)));
    const t0 = Date.now();
    const socks = await Promise.all(
      Array.from({ length: 32 }, () => connected(fe.createConnection({ host: '127.0.0.1', port }))),
    );
    const got = await Promise.all(socks.map((s) => Promise.all([receive(s), send(s)]).then(([h]) => h)));
    const sent = await Promise.all(serverSide);
    const secs = (Date.now() - t0) / 1000;
    expect(got).toEqual(Array(32).fill(want));
    expect(sent).toEqual(Array(32).fill(want));
    console.log(
      `PVCalls on the mock: 32 sockets x 64 MiB each way in ${secs.toFixed(1)} s (${((2 * 32 * 64) / secs).toFixed(0)} MiB/s in all)`,
    );
    for (const s of socks) s.destroy();
    await Promise.all(socks.map((s) => s.released));
  }, 300_000);

  it('listens and accepts through the backend: clients on the backend side reach the frontend', async () => {
    const port = await freePort();
    const srv = fe.createServer((c) => c.pipe(c)); // an echo server in domain 5
    await new Promise<void>((resolve, reject) => {
      srv.listen({ host: '127.0.0.1', port, backlog: 8 }, resolve);
      srv.once('error', reject);
    });
    expect(srv.listening).toBe(true);
    const answers = await Promise.all(
      Array.from({ length: 5 }, async (_, i) => {
        const c = net.connect(port, '127.0.0.1');
        await once(c, 'connect');
        const msg = randomBytes(100_000 + i);
        c.write(msg);
        const chunks: Buffer[] = [];
        let n = 0;
        for await (const d of c) {
          chunks.push(d as Buffer);
          n += (d as Buffer).length;
          if (n >= msg.length) break;
        }
        c.destroy();
        return Buffer.concat(chunks).equals(msg);
      }),
    );
    expect(answers).toEqual([true, true, true, true, true]);
    await new Promise<void>((r) => srv.close(() => r()));
    // Released: the port is free again on the backend's side.
    const again = net.createServer().listen(port, '127.0.0.1');
    await once(again, 'listening');
    again.close();
  });

  it('destroy() with bytes still in the ring: the RELEASE waits until the backend has taken them (Linux drops what it finds)', async () => {
    // The remote end reads nothing at first: the loopback's buffers fill, the native pump meets
    // EAGAIN and leaves the ring full.
    let peer!: net.Socket;
    const got: Buffer[] = [];
    const { server, port } = await tcpServer((c) => {
      peer = c;
      c.pause();
      c.on('data', (d: Buffer) => got.push(d));
    });
    cleanups.push(() => new Promise((r) => server.close(r)));
    const s = await connected(fe.createConnection({ host: '127.0.0.1', port }));
    const call = fe.call.bind(fe);
    let resumed = false;
    let releasedBeforeResume: boolean | undefined;
    fe.call = (req) => {
      if (req.cmd === 'RELEASE') releasedBeforeResume = !resumed;
      return call(req);
    };
    const data = Buffer.alloc(32 << 20);
    for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i / 4, i);
    s.write(data);
    for (let i = 0; i < 100 && !peer; i++) await sleep(10);
    await sleep(300);
    s.destroy(); // what is still in the socket's own buffer goes; what is in the ring does not
    await sleep(300);
    expect(releasedBeforeResume).toBe(undefined);
    resumed = true;
    peer.resume();
    await s.released;
    expect(releasedBeforeResume).toBe(false);
    await once(peer, 'end');
    // What arrived is the start of what was written, byte for byte.
    const all = Buffer.concat(got);
    expect(all.length).toBeGreaterThan(0);
    expect(all.equals(data.subarray(0, all.length))).toBe(true);
  });

  it('the remote end closing ends the readable side after the last byte; errors carry errno codes', async () => {
    const { server, port } = await tcpServer((c) => c.end(Buffer.from('last words')));
    cleanups.push(() => new Promise((r) => server.close(r)));
    const s = await connected(fe.createConnection({ host: '127.0.0.1', port }));
    const chunks: Buffer[] = [];
    for await (const d of s) chunks.push(d as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('last words');
    s.destroy();
    const refused = fe.createConnection({ host: '127.0.0.1', port: await freePort() });
    const [err] = await once(refused, 'error');
    expect(err).toMatchObject({ code: 'ECONNREFUSED', errno: -111, syscall: 'pvcalls.connect' });
    // A port already bound on the backend's side.
    const srv = fe.createServer();
    srv.listen({ host: '127.0.0.1', port });
    const [inUse] = await once(srv, 'error');
    expect(inUse).toMatchObject({ code: 'EADDRINUSE', syscall: 'pvcalls.bind' });
    // As net.Server's: close() after the failed listen() passes ERR_SERVER_NOT_RUNNING.
    expect(await new Promise((r) => srv.close(r))).toMatchObject({ code: 'ERR_SERVER_NOT_RUNNING' });
    expect(() => fe.createConnection({ port: 70000 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
  });

  it('a half-close closes one direction only: after the remote FIN the frontend still sends, and a SHUT_WR client gets its whole reply', async () => {
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    // The remote server says hello, half-closes, and reads on until the frontend is done.
    const upload = randomBytes(1 << 20);
    let received: Promise<Buffer> = Promise.resolve(Buffer.alloc(0));
    const server = net.createServer({ allowHalfOpen: true }, (c) => {
      c.end('hello');
      received = (async () => {
        const got: Buffer[] = [];
        for await (const d of c) got.push(d as Buffer);
        return Buffer.concat(got);
      })();
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanups.push(() => new Promise((r) => server.close(r)));
    const s = await connected(
      fe.createConnection({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port }),
    );
    const hello: Buffer[] = [];
    s.on('data', (d: Buffer) => hello.push(d));
    await once(s, 'end');
    expect(Buffer.concat(hello).toString()).toBe('hello');
    s.end(upload);
    await once(s, 'close');
    expect(sha(await received)).toBe(sha(upload));

    // A TCP client that sends its request and SHUT_WRs (HTTP/1.0, nc -N), served by the frontend.
    const reply = randomBytes(1 << 20);
    const srv = fe.createServer((c) => {
      const req: Buffer[] = [];
      c.on('data', (d: Buffer) => req.push(d));
      c.on('end', () => c.end(Buffer.concat([Buffer.from(`${Buffer.concat(req).length}:`), reply])));
    });
    const port = await freePort();
    srv.listen({ host: '127.0.0.1', port });
    await once(srv, 'listening');
    const client = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    await once(client, 'connect');
    client.end('GET / HTTP/1.0\r\n\r\n');
    const back: Buffer[] = [];
    for await (const d of client) back.push(d as Buffer);
    const all = Buffer.concat(back);
    expect(all.subarray(0, 3).toString()).toBe('18:');
    expect(sha(all.subarray(3))).toBe(sha(reply));
    await new Promise<void>((r) => srv.close(() => r()));
  });

  it('the backend closing resets the frontend: its sockets fail with ECONNRESET', async () => {
    const { server, port } = await tcpServer((c) => c.on('data', () => undefined));
    cleanups.push(() => new Promise((r) => server.close(r)));
    const s = await connected(fe.createConnection({ host: '127.0.0.1', port }));
    const failed = once(s, 'error');
    const closed = once(fe, 'close');
    await be.close();
    expect((await failed)[0]).toMatchObject({ code: 'ECONNRESET' });
    await closed;
    // Served again by a new backend: connectPvcalls starts over (from the Closed the last one left).
    be = await createPvcallsBackend();
    fe = await connectPvcalls({ mockDomid: 5, timeout: 5000 });
    const t = await connected(fe.createConnection({ host: '127.0.0.1', port }));
    t.destroy();
  });
});

describe.runIf(mockAddon)('PVCalls: processes killed, domains destroyed (mock)', () => {
  it('a frontend whose domain is destroyed mid-stream: the backend frees its sockets, maps and ports', async () => {
    // A domain of this test's own (destroyed at the end, as the leak check expects it).
    x.mockIntroduceDomain(11);
    const xs = new Xenstore();
    await createPvcallsDevice(xs, { frontend: 11, backend: 0 });
    const be = await createPvcallsBackend();
    let bytes = 0;
    const closedOnServer = new Promise<void>((resolve) => {
      const server = net.createServer((c) => {
        c.on('data', (d) => (bytes += d.length));
        c.on('close', () => {
          server.close();
          resolve();
        });
      });
      server.listen(0, '127.0.0.1', () => {
        peer = startPeer(11, ['pvcalls-stream', String((server.address() as net.AddressInfo).port)]);
      });
    });
    let peer: ReturnType<typeof startPeer> | undefined;
    try {
      while (!peer) await sleep(10);
      expect(await peer.next()).toEqual({ streaming: true });
      while (bytes < 4 << 20) await sleep(20);
      const before = x.mockStats(0)[0];
      expect(before.mappedPages).toBeGreaterThan(0);
      const t0 = Date.now();
      x.mockDestroyDomain(11); // what `xl destroy` does: the process is killed, its xenstore home removed
      await closedOnServer;
      await removePvcallsDevice(xs, { frontend: 11, backend: 0 }); // the toolstack's part
      while (x.mockStats(0)[0].mappedPages > 0 || be.connected.length) await sleep(20);
      console.log(
        `PVCalls: frontend domain destroyed after ${bytes >> 20} MiB; backend clean in ${Date.now() - t0} ms`,
      );
      expect(Date.now() - t0).toBeLessThan(5000);
    } finally {
      if (peer) {
        killChild(peer.child);
        await peer.exited;
      }
      await be.close();
      await removeDevices(xs, [11]);
      xs.close();
    }
  });

  it('a frontend process killed (its domain lives on): the next frontend process resets the device and is served', async () => {
    const xs = new Xenstore();
    await createPvcallsDevice(xs, { frontend: 6, backend: 0 });
    const be = await createPvcallsBackend();
    const conns: net.Socket[] = [];
    const closed: Promise<unknown>[] = [];
    const { server, port } = await tcpServer((c) => {
      conns.push(c);
      closed.push(once(c, 'close'));
      c.on('data', () => undefined);
    });
    const peers: ReturnType<typeof startPeer>[] = [];
    try {
      for (let round = 0; round < 2; round++) {
        const p = startPeer(6, ['pvcalls-stream', String(port)]);
        peers.push(p);
        expect(await p.next()).toEqual({ streaming: true });
        expect(conns).toHaveLength(round + 1);
        killChild(p.child);
        await p.exited;
      }
      // The first process's socket was closed when the second reset the device; the second's
      // is still open (nothing reset it), until the backend closes.
      await closed[0];
      expect(conns[1].destroyed).toBe(false);
    } finally {
      for (const p of peers) killChild(p.child);
      await be.close();
      await Promise.all(closed);
      server.close();
      await removeDevices(xs, [6]);
      xs.close();
    }
  });

  it('a backend killed and started again: the frontend sees ECONNRESET, then connects to the new one', async () => {
    const xs = new Xenstore();
    await createPvcallsDevice(xs, { frontend: 6, backend: 0 });
    const first = startPeer(0, ['pvcalls-backend']);
    let second: ReturnType<typeof startPeer> | undefined;
    let fe: PvcallsFrontend | undefined;
    const { server, port } = await tcpServer((c) => c.on('data', () => undefined));
    try {
      expect(await first.next()).toEqual({ ready: true });
      fe = await connectPvcalls({ mockDomid: 6, timeout: 5000 });
      const s = await connected(fe.createConnection({ host: '127.0.0.1', port }));
      const failed = once(s, 'error');
      killChild(first.child);
      await first.exited;
      second = startPeer(0, ['pvcalls-backend']); // finds the device Connected, starts it over
      expect(await second.next()).toEqual({ ready: true });
      expect((await failed)[0]).toMatchObject({ code: 'ECONNRESET' });
      await fe.close();
      fe = await connectPvcalls({ mockDomid: 6, timeout: 5000 });
      const t = await connected(fe.createConnection({ host: '127.0.0.1', port }));
      t.destroy();
      await t.released;
    } finally {
      await fe?.close();
      for (const p of [first, second]) if (p) killChild(p.child);
      await Promise.all([first.exited, second?.exited]);
      await removeDevices(xs, [6]);
      server.close();
      xs.close();
    }
  });
});

describe.runIf(mockAddon)('PVCalls: a hostile frontend against the Node backend (mock)', () => {
  /** A frontend by hand: the commands ring and event channel shared, and whatever it writes. */
  async function rawFrontend(xs: Xenstore, domid: number) {
    const gs = new GrantSharer({ mockDomid: domid });
    const ev = new EventChannel({ mockDomid: domid });
    const page = gs.share(0, 1);
    const ring = FrontRing.init(new Uint8Array(page.buffer));
    const port = ev.bindUnbound(0);
    const front = `/local/domain/${domid}/device/pvcalls/0`;
    const fxs = new Xenstore({ mockDomid: domid });
    await fxs.write(`${front}/version`, '1');
    await fxs.write(`${front}/ring-ref`, String(page.refs[0]));
    await fxs.write(`${front}/port`, String(port));
    await fxs.write(`${front}/state`, String(XenbusState.Initialised));
    while (Number(await xs.read(`/local/domain/0/backend/pvcalls/${domid}/0/state`)) !== XenbusState.Connected)
      await sleep(10);
    const responses: w.PvcallsResponse[] = [];
    ev.on('event', () => {
      try {
        responses.push(...ring.takeResponses().map(w.decodeResponse));
      } catch {
        // the test corrupts the ring itself in one case
      }
    });
    let reqId = 0;
    return {
      page,
      ring,
      responses,
      gs,
      /** Sends raw 64-byte slots; resolves once as many responses came. */
      async send(slots: Uint8Array[], wait = slots.length): Promise<w.PvcallsResponse[]> {
        const start = responses.length;
        for (const s of slots) ring.nextRequest().set(s);
        if (ring.push()) ev.notify(port);
        for (let i = 0; i < 250 && responses.length < start + wait; i++) await sleep(20);
        return responses.slice(start);
      },
      req(r: Record<string, unknown>): Uint8Array {
        const slot = new Uint8Array(64);
        w.encodeRequest(slot, { reqId: ++reqId, ...r } as w.PvcallsRequest);
        return slot;
      },
      notify() {
        ev.notify(port);
      },
      close() {
        ev.close();
        page.unshare();
        gs.close();
        fxs.close();
      },
    };
  }

  it('answers every request exactly once: a CONNECT released in flight, SOCKET+CONNECT+RELEASE pushed together; ring order 0 refused', async () => {
    const xs = new Xenstore();
    await createPvcallsDevice(xs, { frontend: 7, backend: 0 });
    // Connections that never complete (the hook's sockets are never connected): CONNECTs stay in flight.
    const hung: net.Socket[] = [];
    const be = await createPvcallsBackend({
      connect: () => {
        const sock = new net.Socket();
        hung.push(sock);
        return sock;
      },
    });
    const h = await rawFrontend(xs, 7);
    const ev = new EventChannel({ mockDomid: 7 });
    const rings: { unshare(): void }[] = [];
    /** A data ring of ORDER for one CONNECT: its indexes page's ref. */
    const dataRing = (order: number) => {
      const pages = h.gs.share(0, 1 + (1 << order));
      rings.push(pages);
      const idx = new DataView(pages.buffer);
      idx.setUint32(w.DATA_INTF.ringOrder, order, true);
      pages.refs.slice(1).forEach((r, i) => idx.setUint32(w.DATA_INTF.ref + 4 * i, r, true));
      return pages.refs[0];
    };
    const addr = w.encodeInetAddress({ family: w.AF_INET, port: 9, address: '127.0.0.1' });
    const SOCKET = (id: bigint) => h.req({ cmd: 'SOCKET', id, domain: 2, type: 1, protocol: 0 });
    const CONNECT = (id: bigint, order = 1) =>
      h.req({ cmd: 'CONNECT', id, addr, len: 16, flags: 0, ref: dataRing(order), evtchn: ev.bindUnbound(0) });
    const RELEASE = (id: bigint) => h.req({ cmd: 'RELEASE', id, reuse: 0 });
    const summary = (rs: w.PvcallsResponse[]) => rs.map((r) => `${r.reqId}:${r.cmd}:${r.ret}`).sort();
    try {
      // Pushed together: three requests, three responses, the CONNECT's -ECONNABORTED among them.
      const burst = [SOCKET(1n), CONNECT(1n), RELEASE(1n)];
      const ids = burst.map((b) => new DataView(b.buffer).getUint32(0, true));
      const got = await h.send(burst);
      expect(summary(got)).toEqual([`${ids[0]}:0:0`, `${ids[1]}:1:${E('ECONNABORTED')}`, `${ids[2]}:2:0`].sort());
      // A CONNECT in flight, released later on its own: it is answered then, and only once.
      const first = await h.send([SOCKET(2n), CONNECT(2n)], 1);
      expect(first.map((r) => r.ret)).toEqual([0]);
      await sleep(100);
      expect(h.responses.length).toBe(4);
      const later = await h.send([RELEASE(2n)], 2);
      expect(later.map((r) => [r.cmd, r.ret]).sort()).toEqual([
        [1, E('ECONNABORTED')],
        [2, 0],
      ]);
      // The spec's smallest data ring is order 1: order 0 is refused.
      const zero = await h.send([SOCKET(3n), CONNECT(3n, 0)]);
      expect(zero.map((r) => r.ret)).toEqual([0, E('EINVAL')]);
      await sleep(200);
      expect(h.responses.length).toBe(8); // nothing answered twice
      expect(hung.every((sock) => sock.destroyed)).toBe(true);
      expect(x.mockStats(0)[0].mappedPages).toBe(1); // the command ring only: every data ring unmapped
    } finally {
      for (const r of rings) r.unshare();
      ev.close();
      h.close();
      await be.close();
      await removeDevices(xs, [7]);
      xs.close();
    }
  });

  it('passes through Closing when the frontend closes, as Linux backends do; a frontend ring order of 0 is a RangeError', async () => {
    const xs = new Xenstore();
    await createPvcallsDevice(xs, { frontend: 7, backend: 0 });
    const be = await createPvcallsBackend();
    const h = await rawFrontend(xs, 7);
    const fxs = new Xenstore({ mockDomid: 7 });
    const back = '/local/domain/0/backend/pvcalls/7/0/state';
    const front = '/local/domain/7/device/pvcalls/0/state';
    const seen = async (want: number) => {
      for (let i = 0; i < 250 && Number(await xs.read(back)) !== want; i++) await sleep(10);
      return Number(await xs.read(back));
    };
    try {
      await fxs.write(front, String(XenbusState.Closing));
      expect(await seen(XenbusState.Closing)).toBe(XenbusState.Closing);
      await fxs.write(front, String(XenbusState.Closed));
      expect(await seen(XenbusState.Closed)).toBe(XenbusState.Closed);
      await fxs.write(front, String(XenbusState.Initialising));
      expect(await seen(XenbusState.InitWait)).toBe(XenbusState.InitWait);
      await expect(connectPvcalls({ mockDomid: 6, ringOrder: 0 })).rejects.toMatchObject({
        name: 'RangeError',
        code: 'ERR_OUT_OF_RANGE',
      });
    } finally {
      fxs.close();
      h.close();
      await be.close();
      await removeDevices(xs, [7]);
      xs.close();
    }
  });

  it.each(['native', 'js'] as const)(
    'a data ring written by hand (%s pump): bytes both ways across the wrap, -ENOTCONN after the last byte, RELEASE flushes, a corrupt in_cons drops only that frontend',
    async (dataPump) => {
      const xs = new Xenstore();
      await createPvcallsDevice(xs, { frontend: 7, backend: 0 });
      const be = await createPvcallsBackend({ dataPump });
      const errors: string[] = [];
      be.on('frontendError', (e) => errors.push(e.message));
      const remotes: net.Socket[] = [];
      const got: Buffer[][] = [];
      const { server, port } = await tcpServer((c) => {
        const mine: Buffer[] = [];
        got.push(mine);
        remotes.push(c);
        c.on('data', (d) => mine.push(d));
      });
      const h = await rawFrontend(xs, 7);
      const ev = new EventChannel({ mockDomid: 7 });
      const addr = w.encodeInetAddress({ family: w.AF_INET, port, address: '127.0.0.1' });
      const HALF = 4096; // order 1: 2^(1 + 11) bytes each way
      /** A socket with a data ring of order 1 whose indexes all start at START (near 2^32: both wraps). */
      const open = async (id: bigint, start: number) => {
        const pages = h.gs.share(0, 3);
        const idx = new DataView(pages.buffer, 0, 4096);
        idx.setUint32(w.DATA_INTF.ringOrder, 1, true);
        pages.refs.slice(1).forEach((r, i) => idx.setUint32(w.DATA_INTF.ref + 4 * i, r, true));
        for (const f of [w.DATA_INTF.inCons, w.DATA_INTF.inProd, w.DATA_INTF.outCons, w.DATA_INTF.outProd])
          idx.setUint32(f, start, true);
        const port = ev.bindUnbound(0);
        const n = remotes.length;
        const r = await h.send([
          h.req({ cmd: 'SOCKET', id, domain: 2, type: 1, protocol: 0 }),
          h.req({ cmd: 'CONNECT', id, addr, len: 16, flags: 0, ref: pages.refs[0], evtchn: port }),
        ]);
        expect(r.map((x) => x.ret)).toEqual([0, 0]);
        while (remotes.length === n) await sleep(5);
        const inHalf = new Uint8Array(pages.buffer, 4096, HALF);
        const outHalf = new Uint8Array(pages.buffer, 4096 + HALF, HALF);
        return {
          pages,
          idx,
          remote: remotes[n],
          got: got[n],
          /** Writes BYTES into `out` as a frontend does, then signals. */
          write(bytes: Uint8Array) {
            const prod = idx.getUint32(w.DATA_INTF.outProd, true);
            bytes.forEach((b, i) => (outHalf[(prod + i) % HALF] = b));
            idx.setUint32(w.DATA_INTF.outProd, (prod + bytes.length) >>> 0, true);
            ev.notify(port);
          },
          /** Takes what `in` holds, as a frontend does, then signals. */
          read(): Buffer {
            const prod = idx.getUint32(w.DATA_INTF.inProd, true);
            const cons = idx.getUint32(w.DATA_INTF.inCons, true);
            const n = (prod - cons) >>> 0;
            const out = Buffer.alloc(n);
            for (let i = 0; i < n; i++) out[i] = inHalf[(cons + i) % HALF];
            idx.setUint32(w.DATA_INTF.inCons, prod, true);
            ev.notify(port);
            return out;
          },
          queuedIn: () => (idx.getUint32(w.DATA_INTF.inProd, true) - idx.getUint32(w.DATA_INTF.inCons, true)) >>> 0,
        };
      };
      const until = async (what: () => boolean) => {
        for (let i = 0; i < 500 && !what(); i++) await sleep(10);
        expect(what()).toBe(true);
      };
      try {
        const start = 2 ** 32 - 16; // 16 bytes before both the u32 wrap and the half's end
        const a = await open(1n, start);
        // out: 100 bytes across both wraps reach the remote end as written.
        const sent = randomBytes(100);
        a.write(sent);
        await until(() => Buffer.concat(a.got).length === 100);
        expect(Buffer.concat(a.got)).toEqual(sent);
        expect(a.idx.getUint32(w.DATA_INTF.outCons, true)).toBe((start + 100) >>> 0);
        expect(be.dataPumps).toEqual(dataPump === 'native' ? { native: 1, js: 0 } : { native: 0, js: 1 });
        // in: 5000 bytes, more than the half holds: the backend fills it, waits, then the rest.
        const back = randomBytes(5000);
        a.remote.write(back);
        await until(() => a.queuedIn() === HALF);
        await sleep(50);
        expect(a.queuedIn()).toBe(HALF); // never past a full half
        const first = a.read();
        await until(() => a.queuedIn() === 5000 - HALF);
        expect(Buffer.concat([first, a.read()])).toEqual(back);
        // The remote end's FIN: in_error -ENOTCONN, with nothing left behind it.
        a.remote.end();
        await until(() => a.idx.getInt32(w.DATA_INTF.inError, true) !== 0);
        expect(a.idx.getInt32(w.DATA_INTF.inError, true)).toBe(E('ENOTCONN'));
        expect(a.queuedIn()).toBe(0);
        // Bytes written just before RELEASE (no signal for them) go out before the FIN.
        const last = randomBytes(10);
        const prod = a.idx.getUint32(w.DATA_INTF.outProd, true);
        last.forEach((b, i) => (new Uint8Array(a.pages.buffer, 4096 + HALF, HALF)[(prod + i) % HALF] = b));
        a.idx.setUint32(w.DATA_INTF.outProd, (prod + 10) >>> 0, true);
        const ended = once(a.remote, 'end');
        expect((await h.send([h.req({ cmd: 'RELEASE', id: 1n, reuse: 0 })]))[0].ret).toBe(0);
        await ended;
        expect(Buffer.concat(a.got)).toEqual(Buffer.concat([sent, last]));
        a.pages.unshare();
        // A frontend that claims to have read more than was written, seen when the socket's bytes
        // come (no signal from the frontend): that frontend is dropped, with the reason.
        const b = await open(2n, 0);
        b.idx.setUint32(w.DATA_INTF.inCons, 0xffff0000, true); // 65536 bytes "queued"
        const gone = once(be, 'disconnect');
        b.remote.write('x');
        expect(await gone).toEqual([7, 0]);
        expect(errors).toEqual([expect.stringMatching(/the in ring claims \d+ bytes queued/)]);
        await once(b.remote, 'close');
        b.pages.unshare();
        expect(x.mockStats(0)[0].mappedPages).toBe(0);
      } finally {
        ev.close();
        h.close();
        await be.close();
        server.close();
        await removeDevices(xs, [7]);
        xs.close();
      }
    },
  );

  it('answers every bad request with an errno, drops a frontend that corrupts its ring, and serves another throughout', async () => {
    const xs = new Xenstore();
    await createPvcallsDevice(xs, { frontend: 7, backend: 0 });
    await createPvcallsDevice(xs, { frontend: 6, backend: 0 });
    const be = await createPvcallsBackend({ maxSockets: 4, maxRingOrder: 2 });
    const errors: string[] = [];
    be.on('frontendError', (e, d) => errors.push(`${d}: ${e.message}`));
    const good = await connectPvcalls({ mockDomid: 6, timeout: 5000 });
    const { server, port } = await tcpServer((c) => c.pipe(c));
    const h = await rawFrontend(xs, 7);
    try {
      // A good frontend keeps working while the other one misbehaves.
      const echo = async () => {
        const s = await connected(good.createConnection({ host: '127.0.0.1', port }));
        s.write('ping');
        const [d] = await once(s, 'data');
        s.destroy();
        await s.released;
        return String(d);
      };
      expect(await echo()).toBe('ping');
      const addr = w.encodeInetAddress({ family: w.AF_INET, port, address: '127.0.0.1' });
      const cases: [string, Uint8Array, number][] = [
        // -524: Linux's ENOTSUPP, what its pvcalls-back answers (the spec's ENOTSUP).
        ['random bytes', Object.assign(randomBytes(64), { 4: 200 }), -524],
        ['unknown cmd 7', h.req({ cmd: 'POLL', id: 1n }).fill(7, 4, 5), -524],
        ['SOCKET AF_INET6', h.req({ cmd: 'SOCKET', id: 1n, domain: 10, type: 1, protocol: 0 }), E('EAFNOSUPPORT')],
        ['SOCKET SOCK_DGRAM', h.req({ cmd: 'SOCKET', id: 1n, domain: 2, type: 2, protocol: 0 }), E('EINVAL')],
        [
          'CONNECT on no socket',
          h.req({ cmd: 'CONNECT', id: 99n, addr, len: 16, flags: 0, ref: 1, evtchn: 1 }),
          E('EINVAL'),
        ],
        ['RELEASE of no socket', h.req({ cmd: 'RELEASE', id: 99n, reuse: 0 }), E('EINVAL')],
        ['LISTEN before BIND', h.req({ cmd: 'LISTEN', id: 99n, backlog: 1 }), E('EINVAL')],
        ['ACCEPT on no socket', h.req({ cmd: 'ACCEPT', id: 99n, idNew: 100n, ref: 1, evtchn: 1 }), E('EINVAL')],
        ['POLL on no socket', h.req({ cmd: 'POLL', id: 99n }), E('EINVAL')],
      ];
      for (const [name, slot, want] of cases) {
        const [r] = await h.send([slot]);
        expect({ name, ret: r?.ret }).toEqual({ name, ret: want });
      }
      // Socket ids: a second SOCKET with the same id; more than maxSockets.
      const made = await h.send(
        [1n, 1n, 2n, 3n, 4n, 5n].map((id) => h.req({ cmd: 'SOCKET', id, domain: 2, type: 1, protocol: 0 })),
      );
      expect(made.map((r) => r.ret)).toEqual([0, E('EEXIST'), 0, 0, 0, E('ENOBUFS')]);
      // The same req_id twice: both answered, each with its own result.
      const dup = h.req({ cmd: 'RELEASE', id: 4n, reuse: 0 });
      const twice = await h.send([dup, dup]);
      expect(twice.map((r) => [r.reqId, r.ret])).toEqual([
        [new DataView(dup.buffer).getUint32(0, true), 0],
        [new DataView(dup.buffer).getUint32(0, true), E('EINVAL')],
      ]);
      // CONNECT with a grant that does not exist, an address of another family, a short length.
      const noGrant = await h.send([
        h.req({ cmd: 'CONNECT', id: 1n, addr, len: 16, flags: 0, ref: 999999, evtchn: 1 }),
      ]);
      expect(noGrant[0].ret).toBeLessThan(0);
      const badAddr = await h.send([
        h.req({ cmd: 'CONNECT', id: 1n, addr: new Uint8Array(28).fill(9), len: 16, flags: 0, ref: 0, evtchn: 1 }),
        h.req({ cmd: 'CONNECT', id: 1n, addr, len: 4, flags: 0, ref: 0, evtchn: 1 }),
      ]);
      expect(badAddr.map((r) => r.ret)).toEqual([E('EAFNOSUPPORT'), E('EAFNOSUPPORT')]);
      // A data ring of order 3 where max-page-order is 2.
      const pages = h.gs.share(0, 1 + 8);
      const idx = new DataView(pages.buffer);
      idx.setUint32(w.DATA_INTF.ringOrder, 3, true);
      pages.refs.slice(1).forEach((r, i) => idx.setUint32(w.DATA_INTF.ref + 4 * i, r, true));
      const big = await h.send([
        h.req({ cmd: 'CONNECT', id: 1n, addr, len: 16, flags: 0, ref: pages.refs[0], evtchn: 1 }),
      ]);
      expect(big[0].ret).toBe(E('EINVAL'));
      pages.unshare();
      expect(await echo()).toBe('ping');
      expect(x.mockStats(0)[0].mappedPages).toBe(1 + 1); // the two frontends' command rings, nothing else
      // POLL on a listening socket answers when a connection waits; RELEASE cancels a pending one.
      const lport = await freePort();
      const laddr = w.encodeInetAddress({ family: w.AF_INET, port: lport, address: '127.0.0.1' });
      const listen = await h.send([
        h.req({ cmd: 'SOCKET', id: 9n, domain: 2, type: 1, protocol: 0 }),
        h.req({ cmd: 'BIND', id: 9n, addr: laddr, len: 16 }),
        h.req({ cmd: 'LISTEN', id: 9n, backlog: 4 }),
      ]);
      expect(listen.map((r) => r.ret)).toEqual([0, 0, 0]);
      let answered = false;
      const polled = h.send([h.req({ cmd: 'POLL', id: 9n })]).then((r) => ((answered = true), r));
      await sleep(100);
      expect(answered).toBe(false); // nothing waits to be accepted yet
      const client = net.connect(lport, '127.0.0.1');
      client.on('error', () => undefined);
      expect((await polled).map((r) => [r.cmd, r.ret])).toEqual([[w.PvcallsCmd.POLL, 0]]);
      expect((await h.send([h.req({ cmd: 'POLL', id: 9n })]))[0].ret).toBe(0); // still one waiting
      const release = await h.send([h.req({ cmd: 'RELEASE', id: 9n, reuse: 0 })]);
      expect(release[0].ret).toBe(0);
      client.destroy();
      // One ACCEPT and one POLL at a time per socket: the second gets -EBUSY / -EALREADY (Linux
      // answers -EINTR); a RELEASE answers the waiting ones -EINTR, each once.
      // (Room under maxSockets first: the sockets made above go.)
      const freed = await h.send([1n, 2n, 3n].map((id) => h.req({ cmd: 'RELEASE', id, reuse: 0 })));
      expect(freed.map((r) => r.ret)).toEqual([0, 0, 0]);
      const l2 = w.encodeInetAddress({ family: w.AF_INET, port: await freePort(), address: '127.0.0.1' });
      expect(
        (
          await h.send([
            h.req({ cmd: 'SOCKET', id: 10n, domain: 2, type: 1, protocol: 0 }),
            h.req({ cmd: 'BIND', id: 10n, addr: l2, len: 16 }),
            h.req({ cmd: 'LISTEN', id: 10n, backlog: 4 }),
          ])
        ).map((r) => r.ret),
      ).toEqual([0, 0, 0]);
      const twoPolls = await h.send([h.req({ cmd: 'POLL', id: 10n }), h.req({ cmd: 'POLL', id: 10n })], 1);
      expect(twoPolls.map((r) => r.ret)).toEqual([E('EALREADY')]);
      const evs = new EventChannel({ mockDomid: 7 });
      const acceptRing = h.gs.share(0, 1 + 2);
      const ai = new DataView(acceptRing.buffer);
      ai.setUint32(w.DATA_INTF.ringOrder, 1, true);
      acceptRing.refs.slice(1).forEach((r, i) => ai.setUint32(w.DATA_INTF.ref + 4 * i, r, true));
      const accept = (idNew: bigint) =>
        h.req({ cmd: 'ACCEPT', id: 10n, idNew, ref: acceptRing.refs[0], evtchn: evs.bindUnbound(0) });
      const twoAccepts = await h.send([accept(11n), accept(12n)], 1);
      expect(twoAccepts.map((r) => r.ret)).toEqual([E('EBUSY')]);
      const rel10 = await h.send([h.req({ cmd: 'RELEASE', id: 10n, reuse: 0 })], 3);
      expect(rel10.map((r) => [r.cmd, r.ret]).sort()).toEqual(
        [
          [w.PvcallsCmd.RELEASE, 0],
          [w.PvcallsCmd.ACCEPT, E('EINTR')],
          [w.PvcallsCmd.POLL, E('EINTR')],
        ].sort(),
      );
      await sleep(100);
      expect(h.responses.filter((r) => r.id === 10n)).toHaveLength(8); // 3 + 1 + 1 + 3, none twice
      acceptRing.unshare();
      evs.close();
      // Indexes out of range: req_prod far past anything published. The backend drops this frontend.
      const gone = once(be, 'disconnect');
      new Uint32Array(h.page.buffer)[0] += 1000;
      h.notify();
      expect(await gone).toEqual([7, 0]);
      expect(errors).toEqual([expect.stringMatching(/^7: .*request producer index/)]);
      expect(await echo()).toBe('ping');
      expect(be.connected).toEqual(['6/0']);
    } finally {
      h.close();
      await good.close();
      await be.close();
      server.close();
      await removeDevices(xs, [7, 6]);
      xs.close();
    }
  });
});
