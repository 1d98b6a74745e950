/**
 * Hostile and unlucky peers (issue 10): a server that publishes garbage or a channel that cannot be
 * used, a client that corrupts the ring as it connects, rings that alias the control page, and the
 * reconnect race. Each peer here is built by hand from the public primitives (grants, event channels,
 * xenstore), so it can say what no libxenvchan would.
 *
 * The shared page (xen/io/libxenvchan.h): left.cons 0, left.prod 4, right.cons 8, right.prod 12,
 * left_order 16, right_order 18, cli_live 20, srv_live 21, cli_notify 22, srv_notify 23, grants 24...
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import * as nodePath from 'node:path';

import { afterEach, describe, expect, it } from 'vitest';

import {
  connect,
  createServer,
  EventChannel,
  GrantMapper,
  GrantSharer,
  VchanServer,
  VchanStream,
  Xenstore,
} from '../dist/cjs/index.js';
import { binding } from '../dist/cjs/native.js';
import { onMock, selfDomid } from './helpers/env';
import { sleep, startPeer, uniquePath } from './helpers/util';

const OFF = {
  leftCons: 0,
  leftProd: 4,
  rightCons: 8,
  rightProd: 12,
  leftOrder: 16,
  rightOrder: 18,
  cliLive: 20,
  srvLive: 21,
  cliNotify: 22,
  grants: 24,
};
/** The bit of cli_notify with which our servers mark a channel single-use (XV_VCHAN_SINGLE_USE, native/vchan/xv_vchan.h). */
const SINGLE_USE = 0x40;
const RACE_CYCLES = Number(process.env.XEN_VCHAN_RACE_CYCLES ?? 500);

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/**
 * A server that offers a channel by hand: one control page with HEADER (orders and grants), an
 * unbound port, and a xenstore entry. `refs` shares extra pages for rings (their refs go after the
 * control page's in the returned list).
 */
async function handmadeServer(
  path: string,
  opts: {
    leftOrder?: number;
    rightOrder?: number;
    grants?: (refs: number[]) => number[];
    ringPages?: number;
    writable?: boolean;
    grantTo?: number;
  },
) {
  const full = `/local/domain/${selfDomid}/${path}`;
  const sharer = new GrantSharer();
  const ev = new EventChannel();
  const xs = new Xenstore();
  const to = opts.grantTo ?? selfDomid;
  const ctl = sharer.share(to, 1, { writable: opts.writable ?? true });
  const rings = opts.ringPages ? sharer.share(to, opts.ringPages) : undefined;
  const page = new DataView(ctl.buffer);
  page.setUint16(OFF.leftOrder, opts.leftOrder ?? 10, true);
  page.setUint16(OFF.rightOrder, opts.rightOrder ?? 11, true);
  page.setUint8(OFF.cliLive, 2);
  page.setUint8(OFF.srvLive, 1);
  const grants = opts.grants ? opts.grants([ctl.refs[0], ...(rings?.refs ?? [])]) : [];
  grants.forEach((g, i) => page.setUint32(OFF.grants + 4 * i, g, true));
  const port = ev.bindUnbound(selfDomid);
  await xs.write(`${full}/ring-ref`, String(ctl.refs[0]));
  await xs.write(`${full}/event-channel`, String(port));
  cleanups.push(async () => {
    await xs.rm(full).catch(() => undefined);
    xs.close();
    try {
      ctl.unshare();
    } catch {
      // already
    }
    rings?.unshare();
    sharer.close();
    ev.close();
  });
  return { full, page, port, ref: ctl.refs[0] };
}

async function entry(path: string, ringRef: string, eventChannel: string): Promise<string> {
  const full = `/local/domain/${selfDomid}/${path}`;
  const xs = new Xenstore();
  await xs.write(`${full}/ring-ref`, ringRef);
  await xs.write(`${full}/event-channel`, eventChannel);
  cleanups.push(async () => {
    await xs.rm(full).catch(() => undefined);
    xs.close();
  });
  return full;
}

describe.skipIf(!onMock)('a hostile or broken server: connect() settles with a clear error', () => {
  for (const [what, rr, ec] of [
    ['a ring-ref that is not a number', 'abc', '5'],
    ['ring-ref 0', '0', '5'],
    ['an event channel that is not a number', '8', '-1'],
    ['a ring-ref beyond 32 bits', '99999999999', '5'],
  ] as const) {
    it(`${what}: EPROTO at once`, async () => {
      const full = await entry(uniquePath('garbage'), rr, ec);
      await expect(connect({ domid: selfDomid, path: full })).rejects.toMatchObject({
        code: 'EPROTO',
        errno: -71,
        syscall: 'connect',
      });
    });
  }

  it('a ring-ref no page is granted under: ECONNREFUSED (the entry of a server that is gone)', async () => {
    const full = await entry(uniquePath('stale'), '999999', '5');
    const err = await connect({ domid: selfDomid, path: full }).catch((e) => e);
    expect(err).toMatchObject({ code: 'ECONNREFUSED', errno: -111, syscall: 'connect' });
    expect(err.cause).toMatchObject({ syscall: 'xengnttab_map_grant_ref' });
  });

  it('a page granted to another domain: ECONNREFUSED', async () => {
    const s = await handmadeServer(uniquePath('other'), { grantTo: 7 });
    await expect(connect({ domid: selfDomid, path: s.full })).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });

  it('a read-only control page: ECONNREFUSED', async () => {
    const s = await handmadeServer(uniquePath('ro'), { writable: false });
    await expect(connect({ domid: selfDomid, path: s.full })).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });

  it('orders no vchan has (5 / 99): EPROTO, and the page is left as it was', async () => {
    const s = await handmadeServer(uniquePath('orders'), { leftOrder: 5, rightOrder: 99 });
    await expect(connect({ domid: selfDomid, path: s.full })).rejects.toMatchObject({ code: 'EPROTO' });
    expect(s.page.getUint8(OFF.cliLive)).toBe(2);
  });

  it('an order-20 ring with only 2 valid refs: EPROTO, and the claim is given back (cli_live 0)', async () => {
    // Right ring in the page at 2048, clear of the 256-entry grant list; only 2 of the 256 left refs valid.
    const s = await handmadeServer(uniquePath('short'), {
      leftOrder: 20,
      rightOrder: 11,
      ringPages: 2,
      grants: (r) => r.slice(1),
    });
    const err = await connect({ domid: selfDomid, path: s.full }).catch((e) => e);
    expect(err).toMatchObject({ code: 'EPROTO', syscall: 'connect' });
    expect(err.cause).toMatchObject({ syscall: 'libxenvchan_client_init' });
    expect(s.page.getUint8(OFF.cliLive)).toBe(0);
  });

  it("a ref read from an entry that has gone, now naming another client's offer: ENOENT, and that offer stays offered", async () => {
    // Grant refs are reused: a client that read an entry just withdrawn may map another client's
    // fresh channel under the old ref. Its claim must go back as it was found (cli_live 2), not as a
    // client that came and went (0), or that channel's server ends a connection nobody made.
    const s = await handmadeServer(uniquePath('reused'), {});
    const gone = `/local/domain/${selfDomid}/${uniquePath('gone')}`;
    expect(() => binding().vchan.clientInit(selfDomid, gone, s.ref, s.port)).toThrow(
      expect.objectContaining({ code: 'ENOENT', syscall: 'libxenvchan_client_init' }),
    );
    expect(s.page.getUint8(OFF.cliLive)).toBe(2);
    // And the entry that does name the page still attaches.
    const c = await connect({ domid: selfDomid, path: s.full });
    expect(c).toBeInstanceOf(VchanStream);
    c.destroy();
  });
});

describe.skipIf(!onMock)('a hostile client costs the server that one connection', () => {
  it('an impossible ring index written as it connects: clientError, a new offer, and the next client is served', async () => {
    const path = uniquePath('badcli');
    const full = `/local/domain/${selfDomid}/${path}`;
    const server = createServer({ domid: selfDomid, path });
    cleanups.push(() => new Promise((r) => server.close(() => r(undefined))));
    const clientErrors: Error[] = [];
    server.on('clientError', (e) => clientErrors.push(e));
    server.on('error', (e) => {
      throw e;
    });
    server.listen();
    await once(server, 'listening');
    // The hostile client: claims the page, writes left.prod far beyond any ring, tells the server.
    const xs = new Xenstore();
    const ref = Number(await xs.read(`${full}/ring-ref`));
    const port = Number(await xs.read(`${full}/event-channel`));
    const mapper = new GrantMapper();
    const ev = new EventChannel();
    const m = mapper.map(selfDomid, [ref]);
    const page = new DataView(m.buffer);
    page.setUint32(OFF.leftProd, 0xdead0000, true);
    page.setUint8(OFF.cliLive, 1);
    const local = ev.bindInterdomain(selfDomid, port);
    ev.notify(local);
    for (let i = 0; i < 200 && !clientErrors.length; i++) await sleep(5);
    m.unmap();
    mapper.close();
    ev.close();
    expect(clientErrors[0]).toMatchObject({ code: 'EPROTO' });
    expect(server.listening).toBe(true);
    // The server offered a fresh channel: a well-behaved client is served.
    const accepted = once(server, 'connection');
    const c = await connect({ domid: selfDomid, path: full, timeout: 5000 });
    const [s] = (await accepted) as [VchanStream];
    c.write('hello');
    const [d] = await once(s, 'data');
    expect(String(d)).toBe('hello');
    c.destroy();
    s.destroy();
    xs.close();
  });
});

describe.skipIf(!onMock)('a ring that aliases the control page', () => {
  it('write() never throws: the stream fails with EPROTO through its error event', async () => {
    // Left ring (the client writes it) of one page whose grant is the control page itself.
    const s = await handmadeServer(uniquePath('alias'), { leftOrder: 12, rightOrder: 11, grants: (r) => [r[0]] });
    const c = await connect({ domid: selfDomid, path: s.full, timeout: 5000 });
    const failed = once(c, 'error');
    // Each write lands on the control page and breaks its indices; the next look sees it.
    expect(() => {
      for (let i = 0; i < 4; i++) c.write(Buffer.alloc(4096, 0xff));
    }).not.toThrow();
    const [err] = await failed;
    expect(err).toMatchObject({ code: 'EPROTO' });
    c.destroy();
  });
});

describe.skipIf(!onMock)('the reconnect race', () => {
  for (const [state, live, srvLive, mark] of [
    ['whose client has left, offered by a server of ours (single-use)', 0, 1, SINGLE_USE],
    ['that another client holds', 1, 1, 0],
    ['whose client has left and whose server has gone', 0, 0, 0],
  ] as const) {
    it(`an entry that still names a channel ${state} is never attached to: connect() waits for the next offer`, async () => {
      const path = uniquePath(`live${live}`);
      const old = await handmadeServer(path, {});
      old.page.setUint8(OFF.cliLive, live);
      old.page.setUint8(OFF.srvLive, srvLive);
      old.page.setUint8(OFF.cliNotify, 1 | mark);
      const pending = connect({ domid: selfDomid, path: old.full, timeout: 5000 });
      await sleep(200);
      expect(old.page.getUint8(OFF.cliLive)).toBe(live); // not taken over
      // The server's next offer: a fresh page under the same path.
      const fresh = await handmadeServer(path, {});
      const c = await pending;
      expect(fresh.page.getUint8(OFF.cliLive)).toBe(1);
      expect(old.page.getUint8(OFF.cliLive)).toBe(live);
      c.destroy();
    });
  }

  it("a channel whose client has left, of a server that serves successive clients on it (as Xen's vchan-socket-proxy), is taken", async () => {
    const s = await handmadeServer(uniquePath('persist'), {});
    s.page.setUint8(OFF.cliLive, 0);
    const c = await connect({ domid: selfDomid, path: s.full, timeout: 5000 });
    expect(s.page.getUint8(OFF.cliLive)).toBe(1);
    c.destroy();
  });

  it('our servers mark the channels they offer single-use', async () => {
    const path = uniquePath('mark');
    const server = createServer({ domid: selfDomid, path });
    cleanups.push(() => new Promise((r) => server.close(() => r(undefined))));
    server.listen();
    await once(server, 'listening');
    const xs = new Xenstore();
    const ref = Number(await xs.read(`/local/domain/${selfDomid}/${path}/ring-ref`));
    xs.close();
    const mapper = new GrantMapper();
    const m = mapper.map(selfDomid, [ref], { writable: false });
    expect(new DataView(m.buffer).getUint8(OFF.cliNotify) & SINGLE_USE).toBe(SINGLE_USE);
    m.unmap();
    mapper.close();
  });

  it(`two client processes, ${RACE_CYCLES} connect/echo/close cycles between them against one server: none refused while it lives`, async () => {
    const path = uniquePath('race2');
    const server: VchanServer = createServer({ domid: 5, path, readMin: 1024, writeMin: 1024 }, (s) => {
      s.on('error', () => {});
      s.pipe(s);
    });
    cleanups.push(() => new Promise((r) => server.close(() => r(undefined))));
    server.listen();
    await once(server, 'listening');
    // In other processes: a client in this one could never run between the steps of the server's
    // own close and its next offer.
    const full = `/local/domain/${selfDomid}/${path}`;
    const each = String(Math.ceil(RACE_CYCLES / 2));
    const peers = [0, 1].map(() => startPeer(5, ['echo-cycles', String(selfDomid), full, each]));
    const reports = await Promise.all(peers.map((p) => p.next<{ failures: string[] }>(600_000)));
    await Promise.all(peers.map((p) => p.exited));
    expect(reports.flatMap((r) => r.failures)).toEqual([]);
  }, 600_000);

  it(`${RACE_CYCLES} connect/close cycles, each client's bytes reach its own 'connection' only`, async () => {
    const path = uniquePath('race');
    const full = `/local/domain/${selfDomid}/${path}`;
    const server: VchanServer = createServer({ domid: selfDomid, path, readMin: 1024, writeMin: 1024 });
    cleanups.push(() => new Promise((r) => server.close(() => r(undefined))));
    const got = new Map<number, string>(); // connection number -> what it received
    let connections = 0;
    server.on('connection', (s) => {
      const n = connections++;
      let text = '';
      s.on('data', (d) => (text += d));
      s.on('error', () => {});
      s.on('close', () => got.set(n, text));
    });
    server.listen();
    await once(server, 'listening');
    const errors: string[] = [];
    const closes: Promise<unknown>[] = [];
    for (let i = 0; i < RACE_CYCLES; i++) {
      const c = await connect({ domid: selfDomid, path: full, timeout: 10_000 });
      closes.push(once(c, 'close'));
      c.on('error', (e) => errors.push(`${i}: ${(e as Error).message}`));
      // The next connect() starts at once, while this channel is still being wound down: the
      // entry it reads may still name this channel.
      c.end(`<${i}>`);
    }
    await Promise.all(closes);
    for (let i = 0; i < 500 && got.size < RACE_CYCLES; i++) await sleep(10);
    expect(errors).toEqual([]);
    expect(connections).toBe(RACE_CYCLES);
    // Every connection got exactly one client's token, and every token arrived once.
    const tokens = [...got.values()];
    expect(tokens.every((t) => /^<\d+>$/.test(t))).toBe(true);
    expect(new Set(tokens).size).toBe(RACE_CYCLES);
  }, 600_000);
});

describe('API misuse gets coded errors, never an uncaught exception', () => {
  it('close(cb) takes a function; a second close() passes ERR_SERVER_NOT_RUNNING to its callback', async () => {
    const server = createServer({ domid: selfDomid, path: uniquePath('close') });
    expect(() => server.close(42 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => server.listen(42 as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    server.listen();
    let closes = 0;
    server.on('close', () => closes++);
    await new Promise<void>((r) => server.close(() => r()));
    const second = await new Promise<Error | undefined>((r) => server.close((e) => r(e)));
    expect(second).toMatchObject({ code: 'ERR_SERVER_NOT_RUNNING' });
    await sleep(10);
    expect(closes).toBe(1);
  });

  it('a VchanStream cannot be constructed directly', () => {
    const Ctor = VchanStream as unknown as new (...a: unknown[]) => unknown;
    expect(() => new Ctor({}, {}, 0, 'x')).toThrow(
      expect.objectContaining({ name: 'TypeError', code: 'ERR_ILLEGAL_CONSTRUCTOR' }),
    );
  });
});

// Under the sanitizer job ASan keeps freed memory in quarantine: RSS says nothing there.
const sanitized = (process.env.LD_PRELOAD ?? '').includes('asan');
describe.skipIf(!onMock || sanitized)('memory', () => {
  // Measured (issue 10, item 8): RSS grows by ~45 MB over the first 8,000 cycles and is flat after;
  // heapUsed stays at ~3.5 MB. That growth is V8's young generation reaching its 32 MiB cap, not
  // native memory. With it capped (below) and V8's committed heap subtracted, what is left grows for
  // a few thousand cycles (allocator arenas warming up, more of them when the machine is loaded) and
  // then by ~0.5 KiB per cycle or less: 2.3 MB over cycles 6,000 to 10,000 on a loaded machine.
  // A leak grows memory in every window; a warm-up (allocator arenas, caches) or a burst of load on
  // a shared machine shows in one. The test fails only if both windows grow past the bound: 6 MB per
  // 3,000 cycles, so a leak of 2 KiB per cycle or more fails it. (Once, in CI with two test files
  // running at once, the one window then measured grew 11.6 MB; idle, windows grow 0.3-2 MB.)
  it("connect/close cycles hold native memory flat (RSS less V8's heap: no two 3,000-cycle windows both grow 6 MB)", async () => {
    const script = nodePath.join(__dirname, 'helpers', 'cycles.js');
    // Asynchronously: a worker blocked in spawnSync for minutes on a loaded machine misses vitest's
    // own RPC deadlines ("Timeout calling onTaskUpdate").
    const child = spawn(
      process.execPath,
      ['--expose-gc', '--max-semi-space-size=1', script, '2000', '3000', uniquePath('mem')],
      {
        env: process.env,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const [code] = (await once(child, 'exit')) as [number | null];
    expect(code, stderr).toBe(0);
    const pts = stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { cycle: number; rss: number; native: number });
    expect(pts).toHaveLength(3);
    const mb = (n: number) => (n / 1048576).toFixed(1);
    const grew = [pts[1].native - pts[0].native, pts[2].native - pts[1].native].map((n) => n / 1048576);
    const text = `native ${pts.map((p) => mb(p.native)).join(' -> ')} MB at cycles ${pts.map((p) => p.cycle).join(', ')}`;
    expect(Math.min(...grew), text).toBeLessThan(6);
  }, 300_000);
});
