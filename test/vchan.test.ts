import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

import { afterEach, describe, expect, it } from 'vitest';

import {
  connect,
  connectMulti,
  createServer,
  GrantMapper,
  VchanServer,
  VchanStream,
  Xenstore,
} from '../dist/cjs/index.js';
import type { ConnectOptions, ServerOptions } from '../dist/cjs/index.js';
import { binding } from '../dist/cjs/native.js';
import { broker, config, onMock, root, selfDomid } from './helpers/env';
import { snapshot } from './helpers/setup';
import { fdCount, killChild, Peer, randomChunks, sha256, sleep, startPeer, uniquePath } from './helpers/util';

const servers: VchanServer[] = [];
const peers: Peer[] = [];
const streams: VchanStream[] = [];
/** Every stream a test makes is destroyed after it, pass or fail, so one failure cannot cascade. */
function track<T extends VchanStream>(s: T): T {
  streams.push(s);
  s.on('error', () => {});
  return s;
}
afterEach(async () => {
  for (const s of streams.splice(0)) if (!s.destroyed) s.destroy();
  for (const p of peers.splice(0)) {
    killChild(p.child);
    await p.exited;
  }
  for (const s of servers.splice(0)) {
    // The callback runs either way (with ERR_SERVER_NOT_RUNNING for a server the test closed). A
    // failed test may leave a stream open: do not hang the run on it.
    await Promise.race([new Promise((r) => s.close(() => r(undefined))), sleep(5000)]);
  }
});

/** A server (this process) and a client (this process), dom0 <-> dom0 loopback. */
async function pair(
  readMin = 65536,
  writeMin = 65536,
  extra: { server?: Partial<ServerOptions>; client?: Partial<ConnectOptions> } = {},
): Promise<{ server: VchanServer; s: VchanStream; c: VchanStream; path: string }> {
  const path = uniquePath('pair');
  const server = createServer({ domid: selfDomid, path, readMin, writeMin, ...extra.server });
  servers.push(server);
  const accepted = once(server, 'connection');
  server.listen();
  const c = track(
    await connect({ domid: selfDomid, path: `/local/domain/${selfDomid}/${path}`, timeout: 5000, ...extra.client }),
  );
  const [s] = (await accepted) as [VchanStream];
  return { server, s: track(s), c, path };
}

describe('events: one per message, not two', () => {
  it('a request/response exchange wakes each side once per message it receives', async () => {
    // libxenvchan's write asks the peer to notify when it reads, whatever room is left; kept, every
    // message would cost the writer a second wake-up once the peer had read it (400 events on each
    // side here instead of 200). The server answers later, as one doing I/O does: an answer written
    // at once would arrive with the read's notification and hide it.
    const { s, c } = await pair(4096, 4096);
    s.on('data', (d: Buffer) => setTimeout(() => s.write(d), 1));
    const N = 200;
    const before = { c: c.ringState()!.events, s: s.ringState()!.events };
    for (let i = 0; i < N; i++) {
      const echoed = once(c, 'data');
      c.write(`ping ${i}\n`);
      const [d] = (await echoed) as [Buffer];
      expect(d.toString()).toBe(`ping ${i}\n`);
    }
    const cs = c.ringState()!;
    const ss = s.ringState()!;
    expect(cs.events - before.c).toBeGreaterThanOrEqual(N);
    expect(cs.events - before.c).toBeLessThanOrEqual(N + 10);
    expect(ss.events - before.s).toBeLessThanOrEqual(N + 10);
    // Nothing waits for room, so neither side asks the other to say when it reads.
    expect(cs.weAsked & 2).toBe(0);
    expect(ss.weAsked & 2).toBe(0);
    expect(cs.weAsked & 1).toBe(1); // but both want to hear of data
  });

  it('a write that waits for room still asks to be told of the read, and completes', async () => {
    const { s, c } = await pair(1024, 1024);
    const data = randomBytes(64 * 1024);
    const done = new Promise<void>((resolve, reject) => c.write(data, (e) => (e ? reject(e) : resolve())));
    await new Promise((r) => setImmediate(r));
    expect(c.ringState()!.weAsked & 2).toBe(2);
    const got: Buffer[] = [];
    s.on('data', (d: Buffer) => got.push(d));
    await done;
    while (Buffer.concat(got).length < data.length) await sleep(2);
    expect(Buffer.concat(got).equals(data)).toBe(true);
    expect(c.ringState()!.weAsked & 2).toBe(0);
  });
});

describe('as net (bytesRead/bytesWritten, asyncDispose, listen signal, NODE_DEBUG)', () => {
  it('bytesRead and bytesWritten count what went through the ring, both ways', async () => {
    const { s, c } = await pair(1024, 2048);
    expect([s.bytesRead, s.bytesWritten, c.bytesRead, c.bytesWritten]).toEqual([0, 0, 0, 0]);
    const data = randomBytes(100_000);
    const got: Buffer[] = [];
    s.on('data', (d: Buffer) => got.push(d));
    await new Promise<void>((resolve) => c.write(data, () => resolve()));
    while (Buffer.concat(got).length < data.length) await sleep(5);
    expect(c.bytesWritten).toBe(data.length);
    expect(s.bytesRead).toBe(data.length);
    await new Promise<void>((resolve) => s.write('reply', () => resolve()));
    expect(s.bytesWritten).toBe(5);
  });

  it("'close' carries hadError, as net.Socket's: false after an orderly end, true after a failure", async () => {
    const path = uniquePath('haderror');
    const server = createServer({ domid: selfDomid, path });
    const accepted = once(server, 'connection');
    server.listen();
    const c = await connect({ domid: selfDomid, path: `/local/domain/${selfDomid}/${path}`, timeout: 5000 });
    const [s] = (await accepted) as [VchanStream];
    const sClosed = once(s, 'close');
    const cClosed = once(c, 'close');
    s.resume();
    c.end('bye');
    expect(await cClosed).toEqual([false]);
    expect(await sClosed).toEqual([false]);
    server.close();
    // A failure: the stream is destroyed with an error.
    const path2 = uniquePath('haderror2');
    const server2 = createServer({ domid: selfDomid, path: path2 });
    const accepted2 = once(server2, 'connection');
    server2.listen();
    const c2 = await connect({ domid: selfDomid, path: `/local/domain/${selfDomid}/${path2}`, timeout: 5000 });
    const [s2] = (await accepted2) as [VchanStream];
    s2.resume();
    const order: string[] = [];
    c2.on('error', () => order.push('error'));
    // (events.once would reject on the 'error' that comes first.)
    const c2Closed = new Promise<unknown[]>((r) => c2.once('close', (...a: unknown[]) => (order.push('close'), r(a))));
    c2.destroy(Object.assign(new Error('boom'), { code: 'EIO' }));
    expect(await c2Closed).toEqual([true]);
    expect(order).toEqual(['error', 'close']);
    await closed(s2);
    server2.close();
  });

  it('await using: a server closes and a stream ends and closes when their scope ends', async () => {
    const path = uniquePath('dispose');
    let closedServer = false;
    let closedStream = false;
    {
      await using server = createServer({ domid: selfDomid, path });
      server.on('close', () => (closedServer = true));
      const accepted = once(server, 'connection');
      server.listen();
      await using c = await connect({ domid: selfDomid, path: `/local/domain/${selfDomid}/${path}`, timeout: 5000 });
      c.on('close', () => (closedStream = true));
      const [s] = (await accepted) as [VchanStream];
      s.resume();
      s.on('end', () => s.destroy());
    }
    expect(closedStream).toBe(true);
    expect(closedServer).toBe(true);
  });

  it('a write the closed peer never read fails (EPIPE) only after what the peer wrote before closing is read', async () => {
    const path = uniquePath('lastwords');
    const last = randomBytes(1000); // fits the 1 KiB ring: the peer's write completes, then it closes
    const server = createServer({ domid: selfDomid, path, readMin: 1024, writeMin: 1024 }, (s) => {
      s.write(last, () => s.destroy());
    });
    servers.push(server);
    server.listen();
    await once(server, 'listening');
    const c = await connect({ domid: selfDomid, path: `/local/domain/${selfDomid}/${path}`, timeout: 5000 });
    const got: Buffer[] = [];
    const events: string[] = [];
    c.on('data', (d: Buffer) => got.push(d));
    c.on('end', () => events.push('end'));
    c.on('error', (e) => events.push((e as NodeJS.ErrnoException).code ?? 'error'));
    // More than the ring holds, to a peer that never reads it: it waits, then the peer closes.
    c.write(randomBytes(64 * 1024));
    await new Promise((r) => c.once('close', r));
    expect(Buffer.concat(got).equals(last)).toBe(true);
    expect(events).toEqual(['end', 'EPIPE']);
  });

  it('an abort that comes while connect() sets up its watch is not lost (it hung for good)', async () => {
    for (let i = 0; i < 20; i++) {
      const ac = new AbortController();
      const p = connect({
        domid: selfDomid,
        path: `/local/domain/${selfDomid}/${uniquePath('noone')}`,
        signal: ac.signal,
      });
      ac.abort(); // connect() is at its first await now
      await expect(p).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR' });
      const m = new AbortController();
      const q = connectMulti({
        domid: selfDomid,
        path: `/local/domain/${selfDomid}/${uniquePath('noone')}`,
        signal: m.signal,
      });
      m.abort();
      await expect(q).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR' });
    }
  }, 20_000);

  it("listen({signal}) closes the server when the signal aborts, as net's", async () => {
    const ac = new AbortController();
    const server = createServer({ domid: selfDomid, path: uniquePath('signal') });
    server.listen({ signal: ac.signal });
    await once(server, 'listening');
    const closed = once(server, 'close');
    ac.abort();
    await closed;
    expect(() => server.listen({ signal: 5 as never })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    // An already aborted signal: the server closes without listening.
    const again = createServer({ domid: selfDomid, path: uniquePath('signal2') });
    again.listen({ signal: AbortSignal.abort() });
    await once(again, 'close');
  });

  it('NODE_DEBUG=xen-vchan logs offers, connections and closes', () => {
    const path = uniquePath('debug');
    const code = `
      const x = require(${JSON.stringify(root)});
      const server = x.createServer({ domid: ${selfDomid}, path: ${JSON.stringify(path)} }, (s) => { s.destroy(); server.close(); });
      server.listen(async () => { const c = await x.connect({ domid: ${selfDomid}, path: '/local/domain/${selfDomid}/${path}', timeout: 5000 }); c.destroy(); });`;
    const r = spawnSync(process.execPath, ['-e', code], {
      env: { ...process.env, NODE_DEBUG: 'xen-vchan' },
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.stderr).toMatch(/XEN-VCHAN \d+: server .*: offered to domain/);
    expect(r.stderr).toMatch(/XEN-VCHAN \d+: connect .*: attached to domain/);
    expect(r.stderr).toMatch(/XEN-VCHAN \d+: stream .*: closed/);
  });
});

describe('idle timeout (setTimeout, as net.Socket)', () => {
  it("emits 'timeout' after the stream has been idle that long, not while data flows; 0 turns it off", async () => {
    const { s, c } = await pair(1024, 1024);
    s.on('data', () => {});
    let timeouts = 0;
    const t0 = Date.now();
    s.setTimeout(150, () => timeouts++);
    expect(s.timeout).toBe(150);
    // Traffic every 40 ms for 400 ms: never idle for 150 ms.
    for (let i = 0; i < 10; i++) {
      c.write('x');
      await sleep(40);
    }
    expect(timeouts).toBe(0);
    await once(s, 'timeout');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400 + 100);
    expect(timeouts).toBe(1);
    expect(s.destroyed).toBe(false); // as net's: the stream stays open
    s.setTimeout(0);
    expect(s.timeout).toBeUndefined();
    await sleep(250);
    expect(timeouts).toBe(1);
    expect(() => s.setTimeout(-1)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => s.setTimeout(10, 5 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    c.destroy();
    s.destroy();
  });
});

/** Resolves when S has closed (at once if it already has: once() would wait forever). */
function closed(s: VchanStream): Promise<unknown> {
  return s.closed ? Promise.resolve() : once(s, 'close');
}

/** Writes CHUNKS to W, honouring backpressure, then ends it. */
async function writeAll(w: Writable, chunks: Buffer[]): Promise<void> {
  for (const b of chunks) if (!w.write(b)) await once(w, 'drain');
}

/** Hashes the next BYTES bytes of R (without ending or destroying it: breaking a for-await would). */
function readHash(r: Readable, bytes: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    let got = 0;
    const onData = (d: Buffer) => {
      h.update(d);
      got += d.length;
      if (got >= bytes) {
        done();
        if (got === bytes) resolve(h.digest('hex'));
        else reject(new Error(`read ${got} bytes, expected ${bytes}`));
      }
    };
    const onEnd = () => {
      done();
      reject(new Error(`the stream ended after ${got} of ${bytes} bytes`));
    };
    const onError = (e: Error) => {
      done();
      reject(e);
    };
    const done = () => {
      r.off('data', onData).off('end', onEnd).off('error', onError);
      r.pause();
    };
    r.on('data', onData).on('end', onEnd).on('error', onError);
  });
}

const RING_SIZES: [number, number][] = [
  [1024, 2048],
  [2048, 1024],
  [4096, 4096],
  [65536, 65536],
  [1 << 20, 1 << 20],
  [1024, 65536],
];

describe('one event-channel handle and one grant device per process', () => {
  it('100 streams in one process add no event-channel, grant-device or xenstore fd each: a client none, a server its path claim', async () => {
    const n = 100;
    const base = uniquePath('fds');
    await pair(1024, 2048); // the shared handles exist from here on
    const f0 = fdCount();
    const made = [];
    for (let i = 0; i < n; i++) {
      const server = createServer({ domid: selfDomid, path: `${base}-${i}`, readMin: 1024, writeMin: 2048 });
      servers.push(server);
      const accepted = once(server, 'connection');
      server.listen();
      const c = track(
        await connect({ domid: selfDomid, path: `/local/domain/${selfDomid}/${base}-${i}`, timeout: 5000 }),
      );
      const [s] = (await accepted) as [VchanStream];
      made.push({ s: track(s), c });
    }
    // Each pair: the server's path claim; nothing per port, per page or per xenstore entry.
    expect(fdCount() - f0).toBeLessThanOrEqual(n + 2);
    // And every one of them is live: a byte each way on all 100 at once.
    await Promise.all(
      made.map(async ({ s, c }, i) => {
        const got = once(s, 'data');
        c.write(Buffer.from([i]));
        expect(((await got)[0] as Buffer)[0]).toBe(i);
        const back = once(c, 'data');
        s.write(Buffer.from([255 - i]));
        expect(((await back)[0] as Buffer)[0]).toBe(255 - i);
      }),
    );
  }, 120_000);

  it('connects share one xenstore connection and channel handles, kept XEN_VCHAN_LINGER_MS after the last, which never hold the process', async () => {
    const linger = process.env.XEN_VCHAN_LINGER_MS;
    process.env.XEN_VCHAN_LINGER_MS = '500';
    try {
      // On the mock the client acts as domain 5, so the server's channels do not keep the client's
      // event-channel handle and grant device open: only the lingering does.
      const asOther = config === 'mock';
      const clientDom = asOther ? 5 : selfDomid;
      const path = uniquePath('xsshare');
      let accepted: VchanStream | undefined;
      const server = createServer({ domid: clientDom, path }, (st) => {
        accepted = st;
        st.on('data', (d) => st.write(d));
      });
      servers.push(server);
      await once(server.listen(), 'listening');
      const cycle = async () => {
        const c = await connect({
          domid: selfDomid,
          path: `/local/domain/${selfDomid}/${path}`,
          timeout: 5000,
          mockDomid: asOther ? clientDom : undefined,
        });
        const n = fdCount();
        c.write('x');
        await once(c, 'data');
        c.destroy();
        await closed(c).catch(() => undefined);
        await closed(accepted!).catch(() => undefined);
        return n;
      };
      // What the server opens for good with its first channels (lazily) is open from here on.
      await cycle();
      await sleep(800);
      const f0 = fdCount();
      const handles = () => (asOther ? (snapshot()[clientDom]?.handles ?? 0) : 0);
      const h0 = handles();
      const after: number[] = [];
      const between: number[] = [];
      for (let i = 0; i < 20; i++) {
        after.push((await cycle()) - f0);
        between.push(fdCount() - f0);
      }
      // At the broker (the mock, the client another domain): the client's domain holds two xenstore
      // connections (the library's, and the channel set-up's in native/vchan), its event-channel
      // handle and its grant device between connects, nothing more.
      if (asOther) expect(handles() - h0).toBe(4);
      // Opened by the first connect and held between connects, the same ones throughout (opened
      // and closed with each connect they would leave 0 between; opened each time, a growing
      // count). Only an event link's two descriptors may come and go (the mock drops a link lazily).
      expect(Math.min(...between)).toBeGreaterThan(0);
      expect(Math.max(...between) - Math.min(...between)).toBeLessThanOrEqual(2);
      expect(Math.max(...after) - Math.min(...after)).toBeLessThanOrEqual(2);
      // Closed 500 ms after the last use: all of it when the client is another domain; else what
      // the server's channels do not hold themselves (the xenstore connection).
      await sleep(800);
      if (asOther) expect([fdCount() - f0, handles() - h0]).toEqual([0, 0]);
      else expect(fdCount() - f0).toBeLessThan(between[0]);
    } finally {
      if (linger === undefined) delete process.env.XEN_VCHAN_LINGER_MS;
      else process.env.XEN_VCHAN_LINGER_MS = linger;
    }
    // A process whose only handle left is the lingering connection exits at once.
    const path = uniquePath('xsexit');
    const code = `
      const x = require(${JSON.stringify(root)});
      const server = x.createServer({ domid: ${selfDomid}, path: ${JSON.stringify(path)} }, (s) => { s.destroy(); server.close(); });
      server.listen(async () => {
        const c = await x.connect({ domid: ${selfDomid}, path: '/local/domain/${selfDomid}/${path}', timeout: 5000 });
        c.destroy();
        console.log(Date.now());
      });`;
    const r = spawnSync(process.execPath, ['-e', code], {
      env: { ...process.env, XEN_VCHAN_LINGER_MS: '60000' },
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.status).toBe(0);
    expect(Date.now() - Number(r.stdout.trim())).toBeLessThan(10_000);
  });

  it('streams closing and opening (their ports reused) never disturb another stream: its round trips all complete', async () => {
    const { s: ls, c: lc } = await pair(1024, 2048);
    ls.on('data', (d: Buffer) => ls.write(d)); // echo
    let stop = false;
    let trips = 0;
    const longLived = (async () => {
      while (!stop) {
        const msg = randomBytes(1 + (trips % 512));
        const got: Buffer[] = [];
        let len = 0;
        const done = new Promise<void>((resolve, reject) => {
          const t = setTimeout(() => reject(new Error(`round trip ${trips} stalled`)), 5000);
          const on = (d: Buffer) => {
            got.push(d);
            len += d.length;
            if (len >= msg.length) {
              clearTimeout(t);
              lc.off('data', on);
              resolve();
            }
          };
          lc.on('data', on);
        });
        lc.write(msg);
        await done;
        expect(Buffer.concat(got)).toEqual(msg);
        trips++;
        await sleep(1); // paced: the channels cycling beside it get the loop too
      }
    })();
    const ports = new Map<number, number>();
    const cycles = onMock ? 300 : 100;
    for (let i = 0; i < cycles; i++) {
      const { server, s, c } = await pair(1024, 2048);
      ports.set(s.ringState()!.port, (ports.get(s.ringState()!.port) ?? 0) + 1);
      // Data both ways on the fresh channel, then one side closes while the other may have an
      // event in flight (a write just before the close).
      const got = once(s, 'data');
      c.write(Buffer.from('ping'));
      expect(String((await got)[0])).toBe('ping');
      s.write(Buffer.from('pong'));
      c.resume(); // the end is read, so the side that stays open sees it and closes
      s.resume();
      if (i % 2) c.destroy();
      else s.destroy();
      await Promise.all([closed(c), closed(s)].map((p) => p.catch(() => undefined)));
      server.close();
    }
    stop = true;
    await longLived;
    expect(trips).toBeGreaterThan(cycles / 10);
    // Ports were reused (freed ports are handed out again), so the test met what it names.
    expect([...ports.values()].some((k) => k > 1)).toBe(true);
  }, 120_000);
});

describe('VchanStream', () => {
  for (const [rmin, wmin] of RING_SIZES) {
    it(`moves random chunk sizes both ways intact (SHA-256) on rings ${rmin}/${wmin}`, async () => {
      const { s, c } = await pair(rmin, wmin);
      // At least what was asked for, a power of two; both ends agree.
      expect(s.info.readSize).toBeGreaterThanOrEqual(Math.max(rmin, 1024));
      expect(s.info.writeSize).toBeGreaterThanOrEqual(Math.max(wmin, 1024));
      expect(Math.log2(s.info.readSize) % 1).toBe(0);
      expect(c.info.writeSize).toBe(s.info.readSize);
      expect(c.info.readSize).toBe(s.info.writeSize);
      const total = rmin >= 65536 ? 4 << 20 : 1 << 20;
      const up = randomChunks(total, Math.max(rmin, wmin) * 3);
      const down = randomChunks(total, Math.max(rmin, wmin) * 3);
      const [upHash, downHash] = await Promise.all([
        readHash(s, total),
        readHash(c, total),
        writeAll(c, up),
        writeAll(s, down),
      ]);
      expect(upHash).toBe(sha256(Buffer.concat(up)));
      expect(downHash).toBe(sha256(Buffer.concat(down)));
      c.destroy();
      s.destroy();
    });
  }

  it('ringState() shows a full ring, the bytes waiting, and who asked to be notified; undefined once closed', async () => {
    const { s, c } = await pair(4096, 4096);
    const size = s.info.writeSize;
    const data = randomBytes(size * 2 + 1000);
    const written = new Promise<void>((resolve, reject) => s.write(data, (e) => (e ? reject(e) : resolve())));
    await new Promise((r) => setImmediate(r));
    const w = s.ringState()!;
    expect(w).toMatchObject({ open: 1, writable: 0, writeWaiting: data.length - size, polling: true });
    expect(w.weAsked & 2).toBe(2); // "tell me when you read": the writer waits for room
    const r = c.ringState()!;
    expect(r).toMatchObject({ open: 1, readable: size, wantRead: false, writeWaiting: 0 });
    expect(r.peerAsked & 2).toBe(2);
    const got: Buffer[] = [];
    let n = 0;
    const all = new Promise<void>((resolve) =>
      c.on('data', (d: Buffer) => {
        got.push(d);
        if ((n += d.length) === data.length) resolve();
      }),
    );
    await Promise.all([written, all]);
    expect(Buffer.concat(got).equals(data)).toBe(true);
    expect(s.ringState()).toMatchObject({ writable: size, writeWaiting: 0 });
    expect(c.ringState()).toMatchObject({ readable: 0, wantRead: true });
    expect(c.ringState()!.wakeups).toBeGreaterThan(0);
    s.destroy();
    await closed(s);
    expect(s.ringState()).toBeUndefined();
  });

  describe('onread (a reusable buffer instead of data events)', () => {
    it('hands every chunk to the callback in the same buffer, emits no data, and ends', async () => {
      const buffer = Buffer.alloc(10_000);
      const copies: Buffer[] = [];
      const seen = new Set<Uint8Array>();
      const { s, c } = await pair(65536, 65536, {
        server: {
          onread: {
            buffer,
            callback: (n, b) => {
              expect(n).toBeGreaterThan(0);
              expect(n).toBeLessThanOrEqual(buffer.length);
              seen.add(b);
              copies.push(Buffer.from(b.subarray(0, n)));
            },
          },
        },
      });
      let dataEvents = 0;
      s.on('data', () => dataEvents++);
      const ended = once(s, 'end');
      const data = randomBytes(1 << 20);
      await writeAll(c, [data]);
      c.end();
      await ended;
      expect(Buffer.concat(copies).equals(data)).toBe(true);
      expect([...seen]).toEqual([buffer]);
      expect(dataEvents).toBe(0);
      await closed(s);
    });

    it('returning false pauses; resume() goes on; a function may supply the buffer', async () => {
      let calls = 0;
      let got = 0;
      let stop = true;
      const { s, c } = await pair(4096, 4096, {
        client: {
          onread: {
            buffer: () => (calls++, Buffer.allocUnsafe(1000)),
            callback: (n) => {
              got += n;
              if (stop) return false;
            },
          },
        },
      });
      const data = randomBytes(50_000);
      void writeAll(s, [data]);
      await sleep(100);
      expect(got).toBeGreaterThan(0);
      expect(got).toBeLessThanOrEqual(1000); // paused after the first chunk
      expect(c.isPaused()).toBe(true);
      expect(c.ringState()!.readable).toBeGreaterThan(0);
      stop = false;
      c.resume();
      while (got < data.length) await sleep(10);
      expect(got).toBe(data.length);
      expect(calls).toBeGreaterThanOrEqual(50);
    });

    it('refuses a bad onread with ERR_INVALID_ARG_TYPE / ERR_OUT_OF_RANGE; a bad buffer() fails the stream', async () => {
      const base = { domid: selfDomid, path: uniquePath('onread') };
      const cb = () => {};
      expect(() => createServer({ ...base, onread: 5 as never })).toThrow(
        expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
      );
      expect(() => createServer({ ...base, onread: { buffer: 'x', callback: cb } as never })).toThrow(
        expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', name: 'TypeError' }),
      );
      expect(() => createServer({ ...base, onread: { buffer: Buffer.alloc(0), callback: cb } })).toThrow(
        expect.objectContaining({ code: 'ERR_OUT_OF_RANGE', name: 'RangeError' }),
      );
      expect(() => createServer({ ...base, onread: { buffer: Buffer.alloc(1) } as never })).toThrow(
        expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
      );
      await expect(
        connect({
          ...base,
          path: `/local/domain/${selfDomid}/${base.path}`,
          onread: { buffer: Buffer.alloc(0), callback: cb },
        }),
      ).rejects.toMatchObject({
        code: 'ERR_OUT_OF_RANGE',
      });
      const { s, c } = await pair(4096, 4096, { server: { onread: { buffer: () => 'nope' as never, callback: cb } } });
      const failed = once(s, 'error');
      c.write(Buffer.alloc(10));
      const [err] = await failed;
      expect(err).toMatchObject({ code: 'ERR_INVALID_RETURN_VALUE', name: 'TypeError' });
      await closed(s);
    });
  });

  it('writes made in one tick go into the ring in one native call after the first, and arrive whole and in order', async () => {
    const { s, c } = await pair(65536, 65536);
    const native = binding().vchan;
    const writev = native.writev;
    let calls = 0;
    native.writev = (...args: Parameters<typeof writev>) => (calls++, writev(...args));
    try {
      const chunks = Array.from({ length: 200 }, (_, i) => Buffer.alloc(64, i));
      const got: Buffer[] = [];
      let n = 0;
      const all = new Promise<void>((resolve) =>
        c.on('data', (d: Buffer) => {
          got.push(d);
          if ((n += d.length) >= 200 * 64) resolve();
        }),
      );
      for (const chunk of chunks) s.write(chunk);
      // The first goes in at once (a lone write waits for nothing), the other 199 in one call.
      expect(calls).toBe(1);
      await all;
      expect(calls).toBe(2);
      expect(Buffer.concat(got).equals(Buffer.concat(chunks))).toBe(true);
    } finally {
      native.writev = writev;
    }
  });

  it('a corked burst of small writes, many rings long, goes to the addon as one chunk and arrives whole, every callback in order', async () => {
    const { s, c } = await pair(4096, 4096);
    const native = binding().vchan;
    const writev = native.writev;
    const sizes: number[][] = [];
    native.writev = (h, chunks, offset) => (sizes.push(chunks.map((x) => x.byteLength)), writev(h, chunks, offset));
    try {
      // 3,000 writes of 1-100 bytes (about 37 rings of 4 KiB), one large write in the middle.
      const chunks = Array.from({ length: 3000 }, (_, i) => randomBytes(1 + (i % 100)));
      chunks.splice(1500, 0, randomBytes(20000));
      const total = chunks.reduce((n, x) => n + x.length, 0);
      const got: Buffer[] = [];
      let n = 0;
      const all = new Promise<void>((resolve) =>
        c.on('data', (d: Buffer) => {
          got.push(d);
          if ((n += d.length) >= total) resolve();
        }),
      );
      const done: number[] = [];
      s.cork();
      chunks.forEach((chunk, i) => s.write(chunk, () => done.push(i)));
      s.uncork();
      await all;
      await new Promise((r) => setImmediate(r));
      expect(Buffer.concat(got).equals(Buffer.concat(chunks))).toBe(true);
      expect(done).toEqual(chunks.map((_, i) => i));
      // One chunk of all 3,001 (their average is under 1 KiB), passed again while the ring fills.
      expect(sizes[0]).toEqual([total]);
      expect(sizes.length).toBeGreaterThan(total / 4096);
    } finally {
      native.writev = writev;
    }
  });

  it('a gathered write left waiting for room keeps its bytes while another stream gathers (the gathering buffer is shared)', async () => {
    const a = await pair(4096, 4096);
    const b = await pair(4096, 4096);
    const native = binding().vchan;
    const writev = native.writev;
    const sizes: number[][] = [];
    native.writev = (h, chunks, offset) => (sizes.push(chunks.map((x) => x.byteLength)), writev(h, chunks, offset));
    try {
      const received = (c: VchanStream, total: number) =>
        new Promise<Buffer>((resolve) => {
          const got: Buffer[] = [];
          let n = 0;
          c.on('data', (d: Buffer) => {
            got.push(d);
            if ((n += d.length) >= total) resolve(Buffer.concat(got));
          });
        });
      const gotA = received(a.c, 200 * 64);
      const gotB = received(b.c, 200 * 64);
      // Three rings' worth each, gathered at uncork(): A's ring takes 4 KiB and the rest waits; B
      // then gathers its own bytes, in the same tick, before A's peer has read anything.
      for (const [s, byte] of [
        [a.s, 0xa1],
        [b.s, 0xb2],
      ] as const) {
        s.cork();
        for (let i = 0; i < 200; i++) s.write(Buffer.alloc(64, byte));
        s.uncork();
      }
      expect(sizes.slice(0, 2)).toEqual([[200 * 64], [200 * 64]]);
      expect(a.s.ringState()!.writeWaiting).toBeGreaterThan(0);
      expect((await gotA).equals(Buffer.alloc(200 * 64, 0xa1))).toBe(true);
      expect((await gotB).equals(Buffer.alloc(200 * 64, 0xb2))).toBe(true);
    } finally {
      native.writev = writev;
    }
  });

  it('a stream destroyed while its gathered write waits fails that write and leaves the next gathering whole', async () => {
    const a = await pair(4096, 4096);
    const b = await pair(4096, 4096);
    let gotA = 0;
    a.c.on('data', (d: Buffer) => {
      expect(d.every((x) => x === 0xa1)).toBe(true);
      gotA += d.length;
    });
    a.c.on('error', () => {});
    a.c.pause(); // A's peer reads nothing: A's write keeps waiting for room
    const errors: (Error | null | undefined)[] = [];
    a.s.on('error', () => {});
    a.s.cork();
    for (let i = 0; i < 200; i++) a.s.write(Buffer.alloc(64, 0xa1), (e) => errors.push(e));
    a.s.uncork();
    expect(a.s.ringState()!.writeWaiting).toBeGreaterThan(0);
    const closed = once(a.s, 'close');
    a.s.destroy();
    await closed;
    // Every write of the burst heard of it, once, with Node's code for a destroyed stream.
    expect(errors).toHaveLength(200);
    expect(errors.every((e) => (e as NodeJS.ErrnoException | null)?.code === 'ERR_STREAM_DESTROYED')).toBe(true);
    // B gathers into the buffer A's burst was gathered in; what reaches B's peer is B's alone.
    const gotB = new Promise<Buffer>((resolve) => {
      const got: Buffer[] = [];
      let n = 0;
      b.c.on('data', (d: Buffer) => {
        got.push(d);
        if ((n += d.length) >= 200 * 64) resolve(Buffer.concat(got));
      });
    });
    b.s.cork();
    for (let i = 0; i < 200; i++) b.s.write(Buffer.alloc(64, 0xb2));
    b.s.uncork();
    expect((await gotB).equals(Buffer.alloc(200 * 64, 0xb2))).toBe(true);
    // A's peer gets what reached A's ring before the destroy (one ring's worth at most), then its end.
    a.c.resume();
    await once(a.c, 'close');
    expect(gotA).toBeLessThanOrEqual(4096);
  });

  describe('onread with view: the ring itself, zero copy', () => {
    it('every byte arrives through views of the ring, wrapped data as two calls; a view kept is detached', async () => {
      const lengths: number[] = [];
      const hash = createHash('sha256');
      let kept: Uint8Array | undefined;
      let keptLength = 0;
      const { s, c } = await pair(4096, 4096, {
        server: {
          onread: {
            view: true,
            callback: (n, v) => {
              expect(v.length).toBe(n);
              lengths.push(n);
              hash.update(v);
              if (!kept) {
                kept = v;
                keptLength = v.length;
              }
            },
          },
        },
      });
      let dataEvents = 0;
      s.on('data', () => dataEvents++);
      const ended = once(s, 'end');
      // Odd-sized writes through a 4 KiB ring: the data wraps at every place in it.
      const chunks = randomChunks(1 << 20, 3001);
      const data = Buffer.concat(chunks);
      await writeAll(c, chunks);
      c.end();
      await ended;
      expect(hash.digest('hex')).toBe(sha256(data));
      expect(lengths.reduce((a, b) => a + b, 0)).toBe(data.length);
      expect(Math.max(...lengths)).toBeLessThanOrEqual(4096);
      expect(dataEvents).toBe(0);
      // Past its callback a view reads nothing: not the ring the peer writes again, nor freed memory.
      expect(keptLength).toBeGreaterThan(0);
      expect(kept!.length).toBe(0);
      expect(kept!.buffer.byteLength).toBe(0);
      expect(kept![0]).toBeUndefined();
      await closed(s);
    });

    it('returning false pauses with the data left in the ring; resume() goes on', async () => {
      let got = 0;
      let stop = true;
      const { s, c } = await pair(4096, 4096, {
        client: {
          onread: {
            view: true,
            callback: (n) => {
              got += n;
              if (stop) return false;
            },
          },
        },
      });
      const data = randomBytes(50_000);
      void writeAll(s, [data]);
      await sleep(100);
      expect(got).toBeGreaterThan(0);
      expect(got).toBeLessThanOrEqual(4096);
      expect(c.isPaused()).toBe(true);
      expect(c.ringState()!.readable).toBeGreaterThan(0);
      stop = false;
      c.resume();
      while (got < data.length) await sleep(10);
      expect(got).toBe(data.length);
    });

    it('a callback that throws fails the stream with its error; one that destroys the stream mid-view is safe', async () => {
      const boom = new Error('consumer failed');
      const { s, c } = await pair(4096, 4096, {
        server: {
          onread: {
            view: true,
            callback: () => {
              throw boom;
            },
          },
        },
      });
      const failed = once(s, 'error');
      c.write(Buffer.alloc(100, 1));
      expect((await failed)[0]).toBe(boom);
      await closed(s);
      let view: Uint8Array | undefined;
      const b = await pair(4096, 4096, {
        client: {
          onread: {
            view: true,
            callback: (_n, v) => {
              view = v;
              b.c.destroy(); // unmaps the ring while the view is out: the view goes first
              expect(v.length).toBe(0);
            },
          },
        },
      });
      b.s.write(Buffer.alloc(3000, 7));
      await closed(b.c);
      expect(view!.length).toBe(0);
    });

    it('refuses view with anything but true, and view with a buffer', () => {
      const base = { domid: selfDomid, path: uniquePath('onview') };
      const cb = () => {};
      expect(() => createServer({ ...base, onread: { view: 1, callback: cb } as never })).toThrow(
        expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
      );
      expect(() =>
        createServer({ ...base, onread: { view: true, buffer: Buffer.alloc(1), callback: cb } as never }),
      ).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', name: 'TypeError' }));
      expect(() => createServer({ ...base, onread: { view: true } as never })).toThrow(
        expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
      );
    });
  });

  it("a client that only reads is seen at once: 'connection' does not wait for its first write", async () => {
    // Xen's libxenvchan_client_init sends no event; the server would otherwise learn of a quiet
    // client only when it writes (a greeting protocol, server speaks first, would deadlock).
    const path = uniquePath('quiet');
    const server = createServer({ domid: selfDomid, path });
    servers.push(server);
    const accepted = once(server, 'connection');
    server.listen();
    const c = track(await connect({ domid: selfDomid, path: `/local/domain/${selfDomid}/${path}`, timeout: 5000 }));
    const [s] = (await Promise.race([accepted, sleep(3000).then(() => [null])])) as [VchanStream | null];
    expect(s).not.toBeNull();
    track(s!).end('hello, client');
    const [greeting] = await once(c, 'data');
    expect(String(greeting)).toBe('hello, client');
  });

  it('works with stream.pipeline() and async iteration; end() flushes, then the peer sees the end', async () => {
    const { s, c } = await pair(4096, 4096);
    const data = randomBytes(300_000);
    const received: Buffer[] = [];
    const reader = (async () => {
      for await (const d of s) received.push(d as Buffer);
    })();
    await pipeline(Readable.from([data.subarray(0, 100_000), data.subarray(100_000)]), c);
    await reader; // ends because the client closed after flushing
    expect(Buffer.concat(received).equals(data)).toBe(true);
    await closed(s);
  });

  it('an echo server: pipe() both ways', async () => {
    const { s, c } = await pair();
    s.pipe(s);
    const msg = randomBytes(1 << 20);
    const [echo] = await Promise.all([readHash(c, msg.length), writeAll(c, [msg])]);
    expect(echo).toBe(sha256(msg));
    c.end();
    await closed(s);
  });

  it('the server offers the channel again after a client leaves', async () => {
    const path = uniquePath('again');
    const server = createServer({ domid: selfDomid, path });
    servers.push(server);
    server.on('connection', (s) => s.pipe(s));
    server.listen();
    for (let i = 0; i < 3; i++) {
      const c = track(await connect({ domid: selfDomid, path: `/local/domain/${selfDomid}/${path}`, timeout: 5000 }));
      c.write(`hello ${i}`);
      const [d] = await once(c, 'data');
      expect(String(d)).toBe(`hello ${i}`);
      c.end();
      await closed(c);
    }
  });

  it('connect() waits for the server through a watch, honours AbortSignal, and times out with ETIMEDOUT', async () => {
    const path = uniquePath('late');
    const full = `/local/domain/${selfDomid}/${path}`;
    const pending = connect({ domid: selfDomid, path: full, timeout: 10_000 });
    await sleep(200);
    const server = createServer({ domid: selfDomid, path }, (s) => s.end('hi')).listen();
    servers.push(server);
    const c = track(await pending);
    const [d] = await once(c, 'data');
    expect(String(d)).toBe('hi');
    await closed(c);

    const t0 = Date.now();
    await expect(connect({ domid: selfDomid, path: `${full}-none`, timeout: 300 })).rejects.toMatchObject({
      code: 'ETIMEDOUT',
      syscall: 'connect',
    });
    expect(Date.now() - t0).toBeLessThan(3000);

    const ac = new AbortController();
    const aborted = connect({ domid: selfDomid, path: `${full}-none2`, signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    await expect(aborted).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR' });
    await expect(connect({ domid: selfDomid, path: `${full}-x`, signal: AbortSignal.abort() })).rejects.toMatchObject({
      name: 'AbortError',
    });
  });

  it('writing after the peer closed fails with EPIPE; reading ends after the data it sent', async () => {
    const { s, c } = await pair(4096, 4096);
    s.write('last words');
    s.end();
    const got: Buffer[] = [];
    c.on('data', (d) => got.push(d));
    await once(c, 'end');
    expect(Buffer.concat(got).toString()).toBe('last words');
    await closed(c);
  });

  it('a corrupt ring index in the shared page surfaces as EPROTO, not a hang', async () => {
    const { s, c, path } = await pair(4096, 4096);
    // Play the hostile peer: map the channel's control page (granted to this domain) and scribble.
    const xs = new Xenstore();
    const ref = Number(await xs.read(`/local/domain/${selfDomid}/${path}/ring-ref`));
    xs.close();
    const m = new GrantMapper();
    const page = m.map(selfDomid, [ref]);
    const idx = new Uint32Array(page.buffer, 0, 4); // left.cons, left.prod, right.cons, right.prod
    s.on('data', () => {});
    const failed = once(s, 'error');
    idx[1] = idx[0] + 0x40000000; // the client "produced" a gigabyte into a 4 KiB ring
    c.on('error', () => {});
    c.write('wake up'); // any event makes the server look
    const [err] = (await failed) as [NodeJS.ErrnoException];
    expect(err.code).toBe('EPROTO');
    expect(err.syscall).toMatch(/libxenvchan/);
    page.unmap();
    m.close();
    c.destroy();
    await closed(s);
  });

  // On the rig 1,000 took 48-152 s of its 900 s budget; 500 (400 after the baseline) show a leak as well.
  const connectCycles = config === 'real' ? 500 : 10_000;
  it(`${connectCycles.toLocaleString('en')} connect/close cycles leave the fd count and the mock flat`, async () => {
    const path = uniquePath('cycles');
    const server = createServer({ domid: selfDomid, path, readMin: 1024, writeMin: 1024 });
    servers.push(server);
    server.on('connection', (s) => {
      s.resume();
      s.on('error', () => {});
    });
    server.listen();
    const full = `/local/domain/${selfDomid}/${path}`;
    const cycles = connectCycles;
    let fds0 = 0;
    let snap0 = {};
    for (let i = 0; i < cycles; i++) {
      const c = await connect({ domid: selfDomid, path: full, timeout: 5000 });
      c.destroy();
      await closed(c);
      if (i === 99) {
        await sleep(50);
        fds0 = fdCount();
        if (onMock) snap0 = snapshot();
      }
    }
    await sleep(100);
    expect(fdCount()).toBeLessThanOrEqual(fds0 + 2);
    if (onMock) {
      // Wait for the server to re-offer, then compare the mock's books.
      for (let i = 0; i < 100 && JSON.stringify(snapshot()) !== JSON.stringify(snap0); i++) await sleep(20);
      expect(snapshot()).toEqual(snap0);
    }
  }, 300_000);
});

describe.runIf(onMock)('VchanStream across processes and domains (dom0 <-> dom5)', () => {
  /** Our end of a stream whose peer (a domain-5 process, client or server) writes until it dies. */
  async function streamWithHoldingPeer(
    side: 'client' | 'server',
    path: string,
  ): Promise<{ ours: VchanStream; peer: Peer }> {
    let ours: VchanStream;
    let peer: Peer;
    if (side === 'client') {
      const server = createServer({ domid: 5, path });
      servers.push(server);
      const accepted = once(server, 'connection');
      server.listen();
      peer = startPeer(5, ['hold-connect', '0', `/local/domain/0/${path}`]);
      peers.push(peer);
      [ours] = (await accepted) as [VchanStream];
      track(ours);
    } else {
      peer = startPeer(5, ['hold-serve', '0', path]);
      peers.push(peer);
      await peer.next(); // listening
      ours = track(await connect({ domid: 5, path: `/local/domain/5/${path}`, timeout: 10_000 }));
    }
    await peer.next(); // connected
    return { ours, peer };
  }
  for (const [rmin, wmin] of [
    [1024, 2048],
    [65536, 65536],
    [1 << 20, 1 << 20],
  ] as [number, number][]) {
    it(`a dom5 client process and a dom0 server, rings ${rmin}/${wmin}, SHA-256 both ways`, async () => {
      const path = uniquePath('x');
      const total = 2 << 20;
      const server = createServer({ domid: 5, path, readMin: rmin, writeMin: wmin });
      servers.push(server);
      const accepted = once(server, 'connection');
      server.listen();
      const peer = startPeer(5, ['connect', '0', `/local/domain/0/${path}`, String(total)]);
      peers.push(peer);
      const [s] = (await accepted) as [VchanStream];
      track(s);
      const out = randomChunks(total, 200_000);
      const [inHash] = await Promise.all([readHash(s, total), writeAll(s, out)]);
      const done = await peer.next<{ done?: boolean; sent: string; recv: string; error?: string }>();
      if (!done.done) Object.assign(done, await peer.next());
      expect(done.error).toBeUndefined();
      expect(done.sent).toBe(inHash);
      expect(done.recv).toBe(sha256(Buffer.concat(out)));
      s.resume(); // a paused stream does not emit 'end' (as with net.Socket)
      await closed(s);
      expect((await peer.exited).code).toBe(0);
    });
  }

  it('a client whose grant mappings the kernel interrupts (EINTR) asks again, and connects whole', async () => {
    // gntdev in a PV domain fails a process's first mapping with EINTR when a signal is pending
    // (seen on the rig under node --cpu-prof); the mock does it to the peer's first 3 mappings.
    const path = uniquePath('eintr');
    const total = 256 << 10;
    const server = createServer({ domid: 5, path, readMin: 65536, writeMin: 65536 });
    servers.push(server);
    const accepted = once(server, 'connection');
    server.listen();
    const peer = startPeer(5, ['connect', '0', `/local/domain/0/${path}`, String(total)], {
      XEN_MOCK_GNTTAB_EINTR: '3',
    });
    peers.push(peer);
    const [s] = (await accepted) as [VchanStream];
    track(s);
    expect(await peer.next()).toMatchObject({ connected: true });
    const out = randomChunks(total, 50_000);
    const [inHash] = await Promise.all([readHash(s, total), writeAll(s, out)]);
    const done = await peer.next<{ done?: boolean; sent: string; recv: string }>();
    expect(done).toMatchObject({ done: true, sent: inHash, recv: sha256(Buffer.concat(out)) });
    s.resume();
    await closed(s);
    expect((await peer.exited).code).toBe(0);
  });

  it('GrantMapper.map asks again after EINTR; a mapping interrupted every time fails as EINTR', async () => {
    const path = uniquePath('eintr-map');
    const server = createServer({ domid: 5, path });
    servers.push(server);
    server.listen();
    await once(server, 'listening');
    const xs = new Xenstore();
    const ref = await xs.read(`/local/domain/0/${path}/ring-ref`);
    xs.close();
    const some = startPeer(5, ['map', '0', ref], { XEN_MOCK_GNTTAB_EINTR: '99' });
    expect(await some.next()).toEqual({ ok: true });
    const always = startPeer(5, ['map', '0', ref], { XEN_MOCK_GNTTAB_EINTR: '100' });
    expect(await always.next()).toEqual({ code: 'EINTR' });
    await Promise.all([some.exited, always.exited]);
  });

  it('a dom0 client of a dom5 server process', async () => {
    const path = uniquePath('rev');
    const total = 1 << 20;
    const peer = startPeer(5, ['serve', '0', path, '4096', '65536', String(total)]);
    peers.push(peer);
    expect(await peer.next()).toMatchObject({ listening: true });
    const c = track(await connect({ domid: 5, path: `/local/domain/5/${path}`, timeout: 10_000 }));
    const out = randomChunks(total, 50_000);
    const [inHash] = await Promise.all([readHash(c, total), writeAll(c, out)]);
    const done = await peer.next<{ sent: string; recv: string }>();
    expect(done.sent).toBe(inHash);
    expect(done.recv).toBe(sha256(Buffer.concat(out)));
    c.end();
    await closed(c);
    // The peer closes its end and exits by itself; killing it first (afterEach does, for a test that
    // failed) would leave its server's xenstore entry, as a killed server leaves it on Xen.
    expect(await peer.exited).toEqual({ code: 0, signal: null });
  });

  for (const side of ['client', 'server'] as const) {
    it(`SIGKILL of the peer ${side} mid-stream ends our stream within a second and leaves nothing of it`, async () => {
      const path = uniquePath(`kill-${side}`);
      const { ours, peer } = await streamWithHoldingPeer(side, path);
      let bytes = 0;
      ours.on('data', (d) => (bytes += d.length));
      ours.on('error', () => {});
      await sleep(200);
      expect(bytes).toBeGreaterThan(0);
      const t0 = Date.now();
      peer.child.kill('SIGKILL');
      await closed(ours);
      const ms = Date.now() - t0;
      expect(ms).toBeLessThan(1000);
      await peer.exited;
      // The dead domain's grants, ports and handles are gone (its xenstore node too, for a server).
      for (let i = 0; i < 100; i++) {
        const d5 = snapshot()['5'];
        if (!d5 || (d5.grants === 0 && d5.ports === 0 && d5.mappedPages === 0 && d5.handles === 0)) break;
        await sleep(10);
      }
      const d5 = snapshot()['5'];
      expect(d5 === undefined || (d5.grants === 0 && d5.ports === 0 && d5.mappedPages === 0 && d5.handles === 0)).toBe(
        true,
      );
      if (side === 'server') {
        const xs = new Xenstore();
        try {
          // Its entry stays behind, stale, on every backend (as on real Xen, where nothing could
          // remove it); a client that comes now is refused at once, not left waiting.
          expect(await xs.read(`/local/domain/5/${path}/ring-ref`)).toMatch(/^\d+$/);
          await expect(connect({ domid: 5, path: `/local/domain/5/${path}`, timeout: 20_000 })).rejects.toMatchObject({
            code: 'ECONNREFUSED',
            syscall: 'connect',
          });
          // Clean up as a toolstack would.
          await xs.rm(`/local/domain/5/${path}`);
        } finally {
          xs.close();
        }
      }
    });
  }

  for (const side of ['client', 'server'] as const) {
    it(`the peer ${side}'s domain destroyed mid-stream (no unmap notification, no event) fails our stream with ECONNRESET`, async () => {
      const path = uniquePath(`destroy-${side}`);
      const { ours, peer } = await streamWithHoldingPeer(side, path);
      let bytes = 0;
      ours.on('data', (d) => (bytes += d.length));
      const failed = once(ours, 'error');
      const wasClosed = new Promise((resolve) => ours.once('close', resolve));
      await sleep(200);
      expect(bytes).toBeGreaterThan(0);
      const t0 = Date.now();
      const r = spawnSync(broker, ['destroy', '5'], { env: process.env, encoding: 'utf8' });
      const xs = new Xenstore();
      try {
        expect(r.status, r.stderr).toBe(0);
        const [err] = (await failed) as [NodeJS.ErrnoException];
        expect(err).toMatchObject({ code: 'ECONNRESET', errno: -104, syscall: 'libxenvchan' });
        expect(err.message).toMatch(/domain 5/);
        await wasClosed;
        // It fails instead of hanging (about 1 s idle; 6 s was seen under the sanitizer job on a
        // loaded machine): the bound is about liveness, not speed.
        expect(Date.now() - t0).toBeLessThan(10_000);
        expect((await peer.exited).signal).toBe('SIGKILL'); // it lived only in domain 5
        expect(await xs.isDomainIntroduced(5)).toBe(false);
        expect(await xs.tryRead('/local/domain/5/domid')).toBeUndefined();
      } finally {
        // What the toolstack does for the next guest with this id, so later tests find it as before
        // even when this one failed (a destroyed domain stays gone until introduced again).
        spawnSync(broker, ['introduce', '5'], { env: process.env });
        await xs.mkdir('/local/domain/5/data/vchan').catch(() => undefined);
        xs.close();
      }
    });
  }

  it('a third domain can neither read the node, nor map the grant, nor bind the port', async () => {
    const path = uniquePath('third');
    const server = createServer({ domid: 5, path });
    servers.push(server);
    server.listen();
    await once(server, 'listening');
    const xs = new Xenstore();
    const full = `/local/domain/0/${path}`;
    const ref = await xs.read(`${full}/ring-ref`);
    const port = await xs.read(`${full}/event-channel`);
    xs.close();
    const reader = startPeer(7, ['xs-read', `${full}/ring-ref`]);
    expect(await reader.next()).toEqual({ code: 'EACCES' });
    const mapper = startPeer(7, ['map', '0', ref]);
    expect(await mapper.next()).toEqual({ code: 'EINVAL' });
    const binder = startPeer(7, ['bind', '0', port]);
    expect(await binder.next()).toEqual({ code: 'EINVAL' });
    await Promise.all([reader.exited, mapper.exited, binder.exited]);
  });
});
