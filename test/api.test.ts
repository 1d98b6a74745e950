import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import * as x from '../dist/cjs/index.js';
import { EventChannel, GrantMapper, GrantSharer, GrantStatus, Xenstore } from '../dist/cjs/index.js';
import { config, mockAddon, onMock, root, selfDomid } from './helpers/env';
import { snapshot } from './helpers/setup';
import { sleep, startPeer } from './helpers/util';

function nextEvent(ch: EventChannel, ms = 2000): Promise<number | null> {
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      ch.off('event', on);
      resolve(null);
    }, ms);
    const on = (p: number) => {
      clearTimeout(t);
      ch.off('event', on);
      resolve(p);
    };
    ch.on('event', on);
  });
}

describe('EventChannel', () => {
  it('binds unbound/interdomain ports, delivers events both ways, coalesces, and closes idempotently', async () => {
    const a = new EventChannel();
    const b = new EventChannel();
    const pa = a.bindUnbound(selfDomid);
    const first = nextEvent(b);
    const pb = b.bindInterdomain(selfDomid, pa);
    expect(await first).toBe(pb); // Xen marks a freshly bound port pending
    const got = nextEvent(a);
    b.notify(pb);
    expect(await got).toBe(pa);
    // Notifies sent before the receiver runs coalesce: one delivery, plus at most one more for
    // the event that arrived while the port was masked (it is delivered again after the unmask).
    let count = 0;
    const counter = () => count++;
    b.on('event', counter);
    a.notify(pa);
    a.notify(pa);
    a.notify(pa);
    await sleep(100);
    expect(count).toBeGreaterThanOrEqual(1);
    expect(count).toBeLessThanOrEqual(2);
    b.off('event', counter);
    expect(a.ports).toEqual([pa]);
    a.unbind(pa);
    expect(a.ports).toEqual([]);
    b.notify(pb); // the other end is unbound now: dropped, no error
    a.close();
    a.close();
    b.close();
    expect(a.open).toBe(false);
    expect(() => a.notify(pa)).toThrow(expect.objectContaining({ code: 'ERR_XEN_CLOSED' }));
  });

  it('with autoUnmask: false a delivered port stays masked until unmask()', async () => {
    const a = new EventChannel();
    const b = new EventChannel({ autoUnmask: false });
    const pa = a.bindUnbound(selfDomid);
    const first = nextEvent(b);
    const pb = b.bindInterdomain(selfDomid, pa);
    expect(await first).toBe(pb);
    a.notify(pa);
    a.notify(pa);
    a.notify(pa);
    expect(await nextEvent(b, 200)).toBe(null); // masked
    const again = nextEvent(b);
    b.unmask(pb);
    expect(await again).toBe(pb); // the three held-back notifies arrive as one event
    b.unmask(pb);
    expect(await nextEvent(b, 200)).toBe(null);
    a.close();
    b.close();
  });

  it('reports system errors with code, errno and syscall', () => {
    const a = new EventChannel();
    try {
      a.bindInterdomain(selfDomid, 4000);
      expect.unreachable();
    } catch (e) {
      expect(e).toMatchObject({ code: 'EINVAL', errno: -22, syscall: 'xenevtchn_bind_interdomain' });
    }
    expect(() => a.notify(4000)).toThrow(expect.objectContaining({ code: 'ENOTCONN', syscall: 'xenevtchn_notify' }));
    a.close();
  });

  it('restrict() limits the handle to one domain', () => {
    const a = new EventChannel();
    expect(() => a.restrict(0)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    a.restrict(5);
    expect(() => a.bindUnbound(5)).toThrow(expect.objectContaining({ code: 'EACCES' }));
    expect(() => a.restrict(6)).toThrow(expect.objectContaining({ code: 'EACCES' }));
    a.close();
  });

  it.runIf(mockAddon)('binds a VIRQ and receives it', async () => {
    const a = new EventChannel();
    const p = a.bindVirq(3);
    expect(() => a.bindVirq(3)).toThrow(expect.objectContaining({ code: 'EEXIST' }));
    const got = nextEvent(a);
    x.mockRaiseVirq(selfDomid, 3);
    expect(await got).toBe(p);
    a.close();
  });

  it.runIf(mockAddon)('binds static (dom0less) channels that outlive their handle', async () => {
    // Static channels are never closed, by design: play this against a broker of its own.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xen-vchan-static-'));
    const peer = startPeer(0, ['static'], { XEN_MOCK_DIR: dir });
    expect(await peer.next()).toEqual({ bound: [70, 71], busy: 'EBUSY', event: 71, rebound: 71, pendingKept: true });
    expect((await peer.exited).code).toBe(0);
  });

  it.runIf(mockAddon)('mockDomid opens a handle as another domain (mock only)', async () => {
    const five = new EventChannel({ mockDomid: 5 });
    const zero = new EventChannel();
    const p0 = zero.bindUnbound(5);
    const first = nextEvent(five);
    const p5 = five.bindInterdomain(0, p0); // only domain 5 may bind a port offered to 5
    expect(await first).toBe(p5);
    expect(x.mockStats(5)[0].ports).toBe(1);
    const seven = new EventChannel({ mockDomid: 7 });
    expect(() => seven.bindInterdomain(0, p0)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    seven.close();
    const xs = new Xenstore({ mockDomid: 5 });
    expect(await xs.read('domid')).toBe('5');
    xs.close();
    five.close();
    zero.close();
  });

  it.runIf(config !== 'mock')('bindStatic on a kernel without IOCTL_EVTCHN_BIND_STATIC (Linux < 6.5, the rig\'s 6.1) says so', () => {
    const a = new EventChannel();
    expect(() => a.bindStatic(70)).toThrow(expect.objectContaining({ code: 'ENOTSUP' }));
    a.close();
  });
});

describe('Grants', () => {
  it('shares pages zero-copy, maps them, and detaches views on release', () => {
    const sharer = new GrantSharer();
    const mapper = new GrantMapper();
    const shared = sharer.share(selfDomid, 3);
    expect(shared.refs).toHaveLength(3);
    expect(shared.buffer.byteLength).toBe(3 * 4096);
    const mine = new Uint8Array(shared.buffer);
    mine[5000] = 42;
    const mapped = mapper.map(selfDomid, shared.refs);
    const theirs = new Uint8Array(mapped.buffer);
    expect(theirs[5000]).toBe(42);
    theirs[9000] = 7;
    expect(mine[9000]).toBe(7); // the very same memory
    expect(mapped.read(5000, 1)[0]).toBe(42);
    mapped.write(Buffer.from([9]), 10);
    expect(mine[10]).toBe(9);
    mapped.unmap();
    expect(theirs.length).toBe(0); // detached: no access to unmapped memory
    expect(mapped.released).toBe(true);
    mapped.unmap(); // idempotent
    expect(() => mapped.buffer).toThrow(expect.objectContaining({ code: 'ERR_XEN_RELEASED' }));
    shared.unshare();
    expect(mine.length).toBe(0);
    sharer.close();
    mapper.close();
  });

  it('read-only grants cannot be mapped writable; grant copy reports a status per segment', () => {
    const sharer = new GrantSharer();
    const mapper = new GrantMapper();
    const ro = sharer.share(selfDomid, 1, { writable: false });
    new Uint8Array(ro.buffer).set([1, 2, 3, 4]);
    expect(() => mapper.map(selfDomid, ro.refs)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    const m = mapper.map(selfDomid, ro.refs, { writable: false });
    expect([...new Uint8Array(m.buffer, 0, 4)]).toEqual([1, 2, 3, 4]);
    m.unmap();
    const dest = new Uint8Array(4);
    const st = mapper.copy([
      { source: { domid: selfDomid, ref: ro.refs[0], offset: 0 }, dest, length: 4 },
      { source: { domid: selfDomid, ref: 999_999 }, dest, length: 4 },
    ]);
    expect(st[0]).toBe(GrantStatus.okay);
    expect(st[1]).not.toBe(GrantStatus.okay);
    expect([...dest]).toEqual([1, 2, 3, 4]);
    ro.unshare();
    sharer.close();
    mapper.close();
  });

  it('unmap notification clears a byte and signals a port', async () => {
    const sharer = new GrantSharer();
    const mapper = new GrantMapper();
    const shared = sharer.share(selfDomid, 1);
    const a = new EventChannel();
    const b = new EventChannel();
    const pa = a.bindUnbound(selfDomid);
    const first = nextEvent(b);
    const pb = b.bindInterdomain(selfDomid, pa);
    await first;
    new Uint8Array(shared.buffer)[100] = 1;
    const m = mapper.map(selfDomid, shared.refs, { notify: { offset: 100, port: pb } });
    const got = nextEvent(a);
    m.unmap();
    expect(await got).toBe(pa);
    expect(new Uint8Array(shared.buffer)[100]).toBe(0);
    shared.unshare();
    a.close();
    b.close();
    sharer.close();
    mapper.close();
  });

  it.runIf(onMock)('a region nobody released is released by the garbage collector', async () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    expect(gc, 'vitest runs with --expose-gc (vitest.config.mts)').toBeTypeOf('function');
    const grants = () => snapshot()[String(selfDomid)]?.grants ?? 0;
    const sharer = new GrantSharer();
    const before = grants();
    (() => {
      sharer.share(selfDomid, 2); // dropped on the floor
    })();
    expect(grants()).toBe(before + 2);
    for (let i = 0; i < 50 && grants() !== before; i++) {
      gc!();
      await sleep(20);
    }
    expect(grants()).toBe(before);
    sharer.close();
  });
});

describe('module formats', () => {
  it('the ES module entry exports what the CommonJS one does, from the same instance', () => {
    // In a plain Node process: vitest's own loader treats CommonJS interop differently.
    const code = `
      import * as esm from 'xen-vchan';
      import { createRequire } from 'node:module';
      const cjs = createRequire(import.meta.url)('xen-vchan');
      const names = (m) => Object.keys(m).filter((k) => k !== 'default').sort().join();
      console.log(JSON.stringify({ same: names(esm) === names(cjs), shared: esm.EventChannel === cjs.EventChannel, n: names(cjs).split(',').length }));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { cwd: root, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({ same: true, shared: true, n: Object.keys(x).filter((k) => k !== 'default').length });
  });
});

describe('Xenstore', () => {
  it('reads, writes, lists, removes, and reports ENOENT as a system error', async () => {
    const xs = new Xenstore();
    const base = `/local/domain/${selfDomid}/data/api-${process.pid}`;
    await xs.write(`${base}/a`, 'hello');
    await xs.write(`${base}/b`, Buffer.from([0, 1, 2]));
    expect(await xs.read(`${base}/a`)).toBe('hello');
    expect([...(await xs.readBuffer(`${base}/b`))]).toEqual([0, 1, 2]);
    expect((await xs.directory(base)).sort()).toEqual(['a', 'b']);
    expect(await xs.tryRead(`${base}/zz`)).toBeUndefined();
    await expect(xs.read(`${base}/zz`)).rejects.toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'xs_read' });
    await xs.mkdir(`${base}/dir`);
    expect(await xs.read(`${base}/dir`)).toBe('');
    expect(xs.domainPath(7)).toBe('/local/domain/7');
    await xs.rm(base);
    await expect(xs.directory(base)).rejects.toMatchObject({ code: 'ENOENT' });
    xs.close();
  });

  it('permissions: get and set', async () => {
    const xs = new Xenstore();
    const p = `/local/domain/${selfDomid}/data/perm-${process.pid}`;
    await xs.write(p, 'x');
    await xs.setPermissions(p, [
      { domid: selfDomid, read: false, write: false },
      { domid: 5, read: true, write: false },
    ]);
    expect(await xs.getPermissions(p)).toEqual([
      { domid: selfDomid, read: false, write: false },
      { domid: 5, read: true, write: false },
    ]);
    await xs.rm(p);
    xs.close();
  });

  it('transactions commit atomically and retry when a conflict makes the end fail with EAGAIN', async () => {
    const xs = new Xenstore();
    const other = new Xenstore();
    const p = `/local/domain/${selfDomid}/data/tx-${process.pid}`;
    await xs.write(`${p}/n`, '0');
    let runs = 0;
    const result = await xs.transaction(async (tx) => {
      runs++;
      const n = Number(await tx.read(`${p}/n`));
      if (runs === 1) await other.write(`${p}/n`, '10'); // a concurrent change: this attempt must fail
      await tx.write(`${p}/n`, String(n + 1));
      return n + 1;
    });
    expect(runs).toBe(2);
    expect(result).toBe(11);
    expect(await xs.read(`${p}/n`)).toBe('11');
    await expect(
      xs.transaction(async (tx) => {
        await tx.write(`${p}/n`, 'never');
        throw new Error('abort');
      }),
    ).rejects.toThrow('abort');
    expect(await xs.read(`${p}/n`)).toBe('11');
    await xs.rm(p);
    xs.close();
    other.close();
  });

  it("the event a watch fires when set reaches 'change' listeners attached after watch() resolved", async () => {
    const xs = new Xenstore();
    const p = `/local/domain/${selfDomid}/data/w0-${process.pid}`;
    await xs.write(p, 'already there');
    for (let i = 0; i < 20; i++) {
      const w = await xs.watch(p);
      await Promise.resolve(); // a caller that attaches a little later, still in the same turn
      const [ev] = await Promise.race([once(w, 'change'), sleep(2000).then(() => [null])]);
      expect(ev).toMatchObject({ path: p, token: w.token });
      await w.close();
    }
    await xs.rm(p);
    xs.close();
  });

  it('watches fire once when set, then on changes, as events and as an async iterator', async () => {
    const xs = new Xenstore();
    const p = `/local/domain/${selfDomid}/data/w-${process.pid}`;
    const w = await xs.watch(p);
    const it = w[Symbol.asyncIterator]();
    expect((await it.next()).value).toMatchObject({ path: p });
    const change = once(w, 'change');
    await xs.write(`${p}/k`, 'v');
    expect((await it.next()).value).toMatchObject({ path: `${p}/k`, token: w.token });
    await change;
    await w.close();
    expect((await it.next()).done).toBe(true);
    await xs.rm(p);
    xs.close();
  });
});

describe('lifecycle', () => {
  it('a worker thread that exits with open handles releases them all', async () => {
    const script = `
      const { parentPort } = require('node:worker_threads');
      const x = require(${JSON.stringify(root)});
      (async () => {
        const a = new x.EventChannel();
        const p = a.bindUnbound(${selfDomid});
        const sh = new x.GrantSharer().share(${selfDomid}, 2);
        const mp = new x.GrantMapper().map(${selfDomid}, sh.refs);
        const xs = new x.Xenstore();
        await xs.watch('/local/domain/${selfDomid}/data');
        const path = 'data/vchan/worker-' + process.pid;
        x.createServer({ domid: ${selfDomid}, path }).listen();
        const c = await x.connect({ domid: ${selfDomid}, path: '/local/domain/${selfDomid}/' + path });
        c.write('x');
        parentPort.postMessage({ ready: true, port: p, bytes: mp.buffer.byteLength });
      })();
    `;
    const w = new Worker(script, { eval: true, env: process.env });
    const [msg] = await once(w, 'message');
    expect(msg).toMatchObject({ ready: true, bytes: 8192 });
    const [code] = await Promise.all([once(w, 'exit'), w.terminate()]);
    expect(code).toBeDefined();
    // The leak check after this test proves the worker's handles were all released.
  });

  it('workers terminated at random moments (even while loading the addon) never abort the process', async () => {
    const script = `
      const x = require(${JSON.stringify(root)});
      (async () => {
        const path = 'data/vchan/term-' + process.pid + '-' + require('node:worker_threads').threadId;
        x.createServer({ domid: ${selfDomid}, path }, (s) => s.pipe(s)).listen();
        const c = await x.connect({ domid: ${selfDomid}, path: '/local/domain/${selfDomid}/' + path });
        const xs = new x.Xenstore();
        await xs.watch('/local/domain/${selfDomid}/data');
        const ev = new x.EventChannel();
        const p = ev.bindUnbound(${selfDomid});
        ev.bindInterdomain(${selfDomid}, p);
        const b = Buffer.alloc(65536);
        const pump = () => { while (c.write(b)); c.once('drain', pump); };
        pump();
        c.on('data', () => {});
        setInterval(() => ev.notify(p), 1);
      })();
    `;
    for (let i = 0; i < 20; i++) {
      const w = new Worker(script, { eval: true, env: process.env });
      w.on('error', () => {});
      await sleep(10 + Math.random() * 150);
      await w.terminate();
    }
    // An abort would kill this process; reaching here, the process and the mock are checked.
    expect(process.exitCode ?? 0).toBe(0);
  }, 120_000);

  it('type tags: a native function given the wrong kind of handle throws instead of crashing', () => {
    // Reach the raw addon through a private path only tests use.
    const native = require(path.join(root, 'dist', 'cjs', 'native.js')).binding();
    const xs = native.xenstore.open();
    expect(() => native.evtchn.notify(xs, 1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => native.vchan.read({}, Buffer.alloc(1), 0, 1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => native.grants.map(undefined, 0, [1])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    native.xenstore.close(xs);
    expect(() => native.xenstore.domainPath(xs, 0)).toThrow(expect.objectContaining({ code: 'ERR_XEN_CLOSED' }));
  });
});

describe('bad arguments get TypeError/RangeError with Node codes', () => {
  const T = 'ERR_INVALID_ARG_TYPE';
  const R = 'ERR_OUT_OF_RANGE';
  const V = 'ERR_INVALID_ARG_VALUE';
  // Handles shared by the cases below, opened once (the leak check compares around each case).
  let ch: EventChannel, sharer: GrantSharer, mapper: GrantMapper, xs: Xenstore, region: x.SharedPages;
  beforeAll(() => {
    ch = new EventChannel();
    sharer = new GrantSharer();
    mapper = new GrantMapper();
    xs = new Xenstore();
    region = sharer.share(0, 1);
  });
  afterAll(() => {
    region.unshare();
    ch.close();
    sharer.close();
    mapper.close();
    xs.close();
  });
  const cases: [string, () => unknown, string][] = [
    ['EventChannel(options)', () => new EventChannel(5 as never), T],
    ['EventChannel autoUnmask', () => new EventChannel({ autoUnmask: 'yes' as never }), T],
    ['bindUnbound(string)', () => ch.bindUnbound('0' as never), T],
    ['bindUnbound(-1)', () => ch.bindUnbound(-1), R],
    ['bindUnbound(1.5)', () => ch.bindUnbound(1.5), R],
    ['bindInterdomain(port 0)', () => ch.bindInterdomain(0, 0), R],
    ['bindVirq(24)', () => ch.bindVirq(24), R],
    ['bindStatic(null)', () => ch.bindStatic(null as never), T],
    ['notify(NaN)', () => ch.notify(NaN), R],
    ['unmask(undefined)', () => ch.unmask(undefined as never), T],
    ['unbind({})', () => ch.unbind({} as never), T],
    ['restrict(40000)', () => ch.restrict(40000), R],
    ['share(domid 99999)', () => sharer.share(99999, 1), R],
    ['share(pages 0)', () => sharer.share(0, 0), R],
    ['share(writable 1)', () => sharer.share(0, 1, { writable: 1 as never }), T],
    ['share(notify offset 5000)', () => sharer.share(0, 1, { notify: { offset: 5000, port: 1 } }), R],
    ['share(notify with 2 pages)', () => sharer.share(0, 2, { notify: { offset: 0, port: 1 } }), R],
    ['map(refs not array)', () => mapper.map(0, 5 as never), T],
    ['map(refs empty)', () => mapper.map(0, []), R],
    ['map(ref -1)', () => mapper.map(0, [-1]), R],
    ['copy(not array)', () => mapper.copy({} as never), T],
    ['region.read(out of bounds)', () => region.read(4000, 200), R],
    ['region.write(not bytes)', () => region.write('x' as never), T],
    ['Xenstore(options)', () => new Xenstore('x' as never), T],
    ['domainPath(-1)', () => xs.domainPath(-1), R],
    ['createServer(no options)', () => x.createServer(undefined as never), T],
    ['createServer(domid)', () => x.createServer({ domid: 'a' as never, path: 'data/x' }), T],
    ['createServer(path)', () => x.createServer({ domid: 0, path: 'bad path!' }), V],
    ['createServer(readMin)', () => x.createServer({ domid: 0, path: 'data/x', readMin: 2 << 20 }), R],
    ['createServer(listener)', () => x.createServer({ domid: 0, path: 'data/x' }, 5 as never), T],
    // "<path>/event-channel" must fit xenstore's 2048 bytes (relative) or 3072 (absolute).
    ['createServer(relative path of 2035 bytes)', () => x.createServer({ domid: 0, path: `data/${'p'.repeat(2030)}` }), R],
    ['createServer(path of 3059 bytes)', () => x.createServer({ domid: 0, path: `/local/domain/0/${'p'.repeat(3043)}` }), R],
    ['mockStats(-1)', () => x.mockStats(-1), R],
    ['useBackend(bad)', () => x.useBackend('xen' as never), V],
  ];
  for (const [name, fn, code] of cases) {
    it(name, () => {
      let err: unknown;
      try {
        fn();
      } catch (e) {
        err = e;
      }
      expect(err).toMatchObject({ code });
      expect(err).toBeInstanceOf(code === R ? RangeError : TypeError);
    });
  }

  const asyncCases: [string, () => Promise<unknown>, string][] = [
    ['connect(no options)', () => x.connect(undefined as never), T],
    ['connect(path)', () => x.connect({ domid: 0, path: '' }), V],
    ['connect(timeout)', () => x.connect({ domid: 0, path: '/a', timeout: -1 }), R],
    ['connect(path of 3059 bytes)', () => x.connect({ domid: 0, path: `/local/domain/0/${'p'.repeat(3043)}` }), R],
    ['connect(signal)', () => x.connect({ domid: 0, path: '/a', signal: {} as never }), T],
    ['xs.read(path)', () => xs.read(5 as never), T],
    ['xs.write(value)', () => xs.write('/a', 5 as never), T],
    ['xs.setPermissions(empty)', () => xs.setPermissions('/a', []), T],
    ['xs.transaction(fn)', () => xs.transaction(5 as never), T],
    ['xs.watch(path)', () => xs.watch('a//b'), V],
  ];
  for (const [name, fn, code] of asyncCases) {
    it(name, async () => {
      await expect(fn()).rejects.toMatchObject({ code });
    });
  }
});
