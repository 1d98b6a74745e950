/**
 * Fuzz: every function of the native addon and every public method, called with hostile arguments:
 * wrong types, out-of-range numbers, closed handles, detached buffers, and objects and arrays whose
 * getters have side effects (they close a live handle, detach a buffer, release a mapped region, or
 * throw). Whatever happens, the process must survive (a crash fails the whole file), and every error
 * must be an Error with a string `code` (Node's ERR_* for arguments, an errno name from the system).
 *
 * XEN_VCHAN_FUZZ_SEED picks the sequence (printed on failure); XEN_VCHAN_FUZZ_CALLS how many calls.
 */
import { EventEmitter, once } from 'node:events';
import { Duplex } from 'node:stream';

import { afterAll, describe, expect, it } from 'vitest';

import * as x from '../dist/cjs/index.js';
import { binding } from '../dist/cjs/native.js';
import { onMock } from './helpers/env';
import { sleep } from './helpers/util';

/** Where the fuzzer stops walking a target's prototype chain: Node's own classes. */
const NODE_PROTOS = new Set<object>([EventEmitter.prototype, Duplex.prototype, Object.prototype]);

const SEED = Number(process.env.XEN_VCHAN_FUZZ_SEED ?? 0x5eed) >>> 0;
const CALLS = Number(process.env.XEN_VCHAN_FUZZ_CALLS ?? 4000);
const ROUND = 40; // calls per world: then every handle is closed and a fresh world is made
const FUZZ_DIR = 'data/fuzz';

/** mulberry32: small, seedable, good enough to pick arguments. */
function prng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const b = binding(); // the backend of this run (XEN_VCHAN_BACKEND)
type Fn = (...args: unknown[]) => unknown;

/** Handles and buffers one round plays with. */
class World {
  handles: { ns: string; h: object }[] = [];
  buffers: Uint8Array[] = [];
  regions: { release(): void }[] = [];
  servers: x.VchanServer[] = [];
  streams: x.VchanStream[] = [];
  xs!: x.Xenstore;
  evtchn!: x.EventChannel;
  sharer!: x.GrantSharer;
  mapper!: x.GrantMapper;
  refs: number[] = [];
  /** The handle the current call was given: getters close it more often than any other. */
  current: { ns: string; h: object } | undefined;

  async make(n: number): Promise<void> {
    const add = (ns: string, h: object) => this.handles.push({ ns, h });
    add('evtchn', b.evtchn.open());
    add('grants', b.grants.openSharer());
    add('grants', b.grants.openMapper());
    add('xenstore', b.xenstore.open());
    const sh = b.grants.openSharer();
    add('grants', sh);
    const shared = b.grants.share(sh, 0, 2, true) as { refs: number[]; buffer: ArrayBuffer };
    this.refs = shared.refs;
    this.buffers.push(new Uint8Array(shared.buffer));
    const mp = b.grants.openMapper();
    add('grants', mp);
    const mapped = b.grants.map(mp, 0, shared.refs, true) as ArrayBuffer;
    this.buffers.push(new Uint8Array(mapped), new Uint8Array(mapped, 100, 50));
    this.regions.push(
      { release: () => b.grants.release(mp, mapped) },
      { release: () => b.grants.release(sh, shared.buffer) },
    );
    this.buffers.push(Buffer.alloc(4096, 1), new Uint8Array(64), Buffer.alloc(0));
    // A vchan pair, through the public API, and its raw handles through the binding.
    const path = `data/vchan/fuzz-${n}`;
    const srv = x.createServer({ domid: 0, path, readMin: 1024, writeMin: 1024 });
    this.servers.push(srv);
    srv.on('error', () => {});
    const accepted = once(srv, 'connection');
    accepted.catch(() => undefined); // a failed listen fails connect() below: that is the report
    srv.listen();
    const c = await x.connect({ domid: 0, path: `/local/domain/0/${path}`, timeout: 5000 });
    const [s] = (await accepted) as [x.VchanStream];
    for (const st of [c, s]) {
      st.on('error', () => {});
      this.streams.push(st);
    }
    add('vchan', b.vchan.serverInit(0, `data/vchan/fuzz-raw-${n}`, 0, 0));
    this.xs = new x.Xenstore();
    this.evtchn = new x.EventChannel();
    this.sharer = new x.GrantSharer();
    this.mapper = new x.GrantMapper();
  }

  /** Closes everything, through every close function (a handle of another kind is refused). */
  async destroy(): Promise<void> {
    for (const { h } of this.handles)
      for (const ns of ['evtchn', 'grants', 'xenstore', 'vchan'] as const) {
        try {
          (b[ns].close as Fn)(h);
        } catch {
          // another kind of handle
        }
      }
    for (const r of this.regions) {
      try {
        r.release();
      } catch {
        // released already
      }
    }
    for (const s of this.streams) s.destroy();
    for (const s of this.servers) s.close();
    this.xs.close();
    this.evtchn.close();
    this.sharer.close();
    this.mapper.close();
    await sleep(5);
  }
}

/** Values to pass, hostile ones among them; getters act on the world when they run. */
function values(w: World, rnd: () => number) {
  const pick = <T>(a: readonly T[]): T => a[Math.floor(rnd() * a.length)];
  const effects: (() => void)[] = [
    () => {
      const { ns, h } = w.current && rnd() < 0.7 ? w.current : pick(w.handles);
      (b[ns as 'vchan'].close as Fn)(h);
    },
    () => {
      const buf = pick(w.buffers);
      if (buf.buffer.byteLength && !(buf.buffer instanceof SharedArrayBuffer)) {
        try {
          structuredClone(buf.buffer, { transfer: [buf.buffer] }); // detaches it
        } catch {
          // an external ArrayBuffer (a grant region) cannot be transferred
        }
      }
    },
    () => pick(w.regions).release(),
    () => pick(w.streams).destroy(),
    () => {
      throw Object.assign(new Error('a getter threw'), { code: 'EFUZZGETTER' });
    },
  ];
  const plain = (): unknown =>
    pick<() => unknown>([
      () => undefined,
      () => null,
      () => true,
      () => 0,
      () => 1,
      () => -1,
      () => 0.5,
      () => 2 ** 31,
      () => 2 ** 32,
      () => 2 ** 53,
      () => NaN,
      () => Infinity,
      () => 4096,
      () => 1 << 20,
      () => pick(w.refs),
      () => x.MAX_DOMID,
      () => x.DOMID_FIRST_RESERVED,
      () => 10n,
      () => Symbol('s'),
      () => '',
      () => 'x',
      () => `${FUZZ_DIR}/a`,
      () => '/local/domain/0',
      () => '@releaseDomain',
      () => 'a'.repeat(5000),
      () => 'a\u0000b',
      () => () => undefined,
      () => pick(w.buffers),
      () => new Uint16Array(8),
      () => new ArrayBuffer(8),
      () => pick(w.handles).h,
      () => ({}),
      () => [],
    ])();
  const evil = (): unknown => {
    const effect = pick(effects);
    const ret = plain();
    const kind = Math.floor(rnd() * 4);
    if (kind === 0) {
      // An array whose elements are getters.
      const a: unknown[] = [];
      const len = 1 + Math.floor(rnd() * 3);
      for (let i = 0; i < len; i++)
        Object.defineProperty(a, i, {
          get() {
            effect();
            return i === 0 ? pick(w.buffers) : ret;
          },
          enumerable: true,
        });
      return a;
    }
    if (kind === 1) {
      // An object whose every property is a getter (segments, sides, permissions...).
      return new Proxy(
        {},
        {
          get(_t, p) {
            if (p === Symbol.toPrimitive || p === 'valueOf' || p === 'toString') return undefined;
            effect();
            if (p === 'source' || p === 'dest') return rnd() < 0.5 ? pick(w.buffers) : { domid: 0, ref: pick(w.refs) };
            if (p === 'length') return 16;
            return ret;
          },
        },
      );
    }
    if (kind === 2) {
      // A well-formed copy segment whose destination getter releases or detaches it.
      const dest = pick(w.buffers);
      return [
        {
          get source() {
            return { domid: 0, ref: pick(w.refs), offset: 0 };
          },
          get dest() {
            effect();
            return dest;
          },
          length: 16,
        },
      ];
    }
    return { valueOf: () => (effect(), 1), toString: () => (effect(), 'x') };
  };
  return () => (rnd() < 0.3 ? evil() : plain());
}

/** Gives back whatever a public call made (regions, watches, transactions). */
function release(r: unknown): void {
  if (!r || typeof r !== 'object') return;
  for (const m of ['release', 'unmap', 'unshare', 'close', 'destroy', 'abort']) {
    const f = (r as Record<string, unknown>)[m];
    if (typeof f === 'function') {
      try {
        const p = (f as Fn).call(r);
        if (p instanceof Promise) p.catch(() => undefined);
      } catch {
        // released already
      }
      return;
    }
  }
}

function checkError(e: unknown, where: string): void {
  if (!(e instanceof Error)) throw new Error(`${where} threw a non-Error: ${String(e)}`);
  const code = (e as { code?: unknown }).code;
  if (typeof code !== 'string') throw new Error(`${where} threw an Error without a code: ${e.name}: ${e.message}`);
}

/** Every node under PATH, with its value (PATH itself included). */
async function saveTree(xs: x.Xenstore, path: string, out = new Map<string, string>()): Promise<Map<string, string>> {
  const v = await xs.tryRead(path);
  if (v === undefined) return out;
  out.set(path, v);
  for (const child of await xs.directory(path)) await saveTree(xs, `${path}/${child}`, out);
  return out;
}

/**
 * Puts dom0's home back as SAVED had it after a round of hostile calls through the public API:
 * Xenstore's write, mkdir and rm are among them, with 'x', FUZZ_DIR/a, '@releaseDomain' (a name
 * like any other to write) and dom0's home itself for paths. What they made goes; what they
 * removed comes back.
 */
async function resetHome(saved: Map<string, string>): Promise<void> {
  const xs = new x.Xenstore();
  try {
    for (const p of (await saveTree(xs, '/local/domain/0')).keys())
      if (!saved.has(p)) await xs.rm(p).catch(() => undefined);
    for (const [p, v] of saved) if ((await xs.tryRead(p)) === undefined) await xs.write(p, v);
  } finally {
    xs.close();
  }
}

const closeLater: object[] = [];
const regionsLater: [object, ArrayBuffer][] = [];

describe.skipIf(!onMock)('fuzz', () => {
  afterAll(async () => {
    const xs = new x.Xenstore();
    try {
      for (const p of [FUZZ_DIR, 'x', `data/vchan`]) await xs.rm(p).catch(() => undefined);
      await xs.mkdir('/local/domain/0/data/vchan');
    } finally {
      xs.close();
    }
  });

  it(`the native binding survives ${CALLS} hostile calls (seed ${SEED})`, async () => {
    const rnd = prng(SEED);
    const fns: { name: string; fn: Fn }[] = [];
    for (const ns of ['evtchn', 'grants', 'xenstore', 'vchan'] as const)
      for (const [k, fn] of Object.entries(b[ns])) fns.push({ name: `${ns}.${k}`, fn: fn as Fn });
    // The mock's admin functions change the broker for the whole file (reset, introduce, destroy,
    // static channels); they are tested on their own. The rest of the mock namespace is fuzzed.
    for (const k of ['stats', 'dir', 'setThreadDomid', 'raiseVirq'] as const)
      if (b.mock?.[k]) fns.push({ name: `mock.${k}`, fn: b.mock[k] as Fn });
    const pending: Promise<unknown>[] = [];
    let calls = 0;
    let errors = 0;
    for (let round = 0; calls < CALLS; round++) {
      const w = new World();
      await w.make(round);
      const arg = values(w, rnd);
      for (let i = 0; i < ROUND && calls < CALLS; i++, calls++) {
        const { name, fn } = fns[Math.floor(rnd() * fns.length)];
        const args = Array.from({ length: Math.floor(rnd() * 7) }, arg);
        // Most calls get a handle of the right kind first, so that they go past the type check.
        const ns = name.split('.')[0];
        if (rnd() < 0.7) {
          const mine = w.handles.filter((h) => h.ns === ns);
          if (mine.length) w.current = mine[Math.floor(rnd() * mine.length)];
          if (w.current?.ns === ns) args[0] = w.current.h;
        }
        const where = `${name}(${args.map((a) => typeof a).join(', ')}) [call ${calls}, seed ${SEED}]`;
        try {
          const r = fn(...args);
          if (r instanceof Promise) pending.push(r.catch((e) => (errors++, checkError(e, where))));
          else if (r instanceof ArrayBuffer) regionsLater.push([args[0] as object, r]);
          else if (r && typeof r === 'object' && (r as { buffer?: unknown }).buffer instanceof ArrayBuffer)
            regionsLater.push([args[0] as object, (r as { buffer: ArrayBuffer }).buffer]);
          else if (r && typeof r === 'object' && !Array.isArray(r)) closeLater.push(r);
        } catch (e) {
          errors++;
          if ((e as { code?: string }).code === 'EFUZZGETTER') continue;
          checkError(e, where);
        }
        if (name === 'mock.setThreadDomid') b.mock!.setThreadDomid(null);
      }
      await Promise.all(pending.splice(0));
      for (const [h, ab] of regionsLater.splice(0)) {
        try {
          b.grants.release(h, ab);
        } catch {
          // released already
        }
      }
      for (const h of closeLater.splice(0)) {
        for (const ns of ['evtchn', 'grants', 'xenstore', 'vchan'] as const) {
          try {
            (b[ns].close as Fn)(h);
          } catch {
            // not a handle of this kind
          }
        }
        try {
          b.vchan.unhold(h as never); // vchan.hold()'s
        } catch {
          // not a hold
        }
      }
      await w.destroy();
    }
    expect(calls).toBe(CALLS);
    expect(errors).toBeGreaterThan(0);
  }, 120_000);

  it(`the public API survives hostile calls (seed ${SEED})`, async () => {
    const rnd = prng(SEED ^ 0xa5a5);
    const keeper = new x.Xenstore();
    const home = await saveTree(keeper, '/local/domain/0');
    keeper.close();
    let calls = 0;
    for (let round = 0; calls < CALLS / 4; round++) {
      const w = new World();
      await w.make(1000 + round);
      const arg = values(w, rnd);
      const targets: [string, object][] = [
        ['server', w.servers[0]],
        ['stream', w.streams[0]],
        ['xenstore', w.xs],
        ['evtchn', w.evtchn],
        ['sharer', w.sharer],
        ['mapper', w.mapper],
      ];
      for (let i = 0; i < ROUND; i++, calls++) {
        const [tname, obj] = targets[Math.floor(rnd() * targets.length)];
        // Our classes' methods, inherited ones included (a server's lifecycle lives in its base
        // class), but not Node's own (EventEmitter's, the stream's).
        const methods: string[] = [];
        for (
          let p = Object.getPrototypeOf(obj) as object | null;
          p && !NODE_PROTOS.has(p);
          p = Object.getPrototypeOf(p)
        )
          for (const m of Object.getOwnPropertyNames(p))
            if (
              m !== 'constructor' &&
              !m.startsWith('_') &&
              !methods.includes(m) &&
              typeof Object.getOwnPropertyDescriptor(p, m)?.value === 'function'
            )
              methods.push(m);
        if (!methods.length) continue;
        const m = methods[Math.floor(rnd() * methods.length)];
        const args = Array.from({ length: Math.floor(rnd() * 4) }, arg);
        const where = `${tname}.${m}(${args.map((a) => typeof a).join(', ')}) [seed ${SEED}]`;
        try {
          let r = ((obj as Record<string, Fn>)[m] as Fn).apply(obj, args);
          if (r instanceof Promise) r = await r.catch((e) => checkError(e, where));
          release(r);
        } catch (e) {
          if ((e as { code?: string }).code === 'EFUZZGETTER') continue;
          checkError(e, where);
        }
      }
      await w.destroy();
      await resetHome(home);
    }
    // Errors a tick later (an uncaught exception) fail the run through vitest's own handler.
    await sleep(20);
  }, 120_000);
});

/** The defects the hostile-peer campaign found (issue 10, item 1): each crashed the process. */
describe('getters with side effects never reach freed memory', () => {
  const detach = (ab: ArrayBufferLike) => structuredClone(ab, { transfer: [ab as ArrayBuffer] });

  function page() {
    const sharer = new x.GrantSharer();
    const mapper = new x.GrantMapper();
    const shared = sharer.share(0, 1);
    new Uint8Array(shared.buffer).set([1, 2, 3, 4]);
    const done = () => {
      shared.unshare();
      sharer.close();
      mapper.close();
    };
    return { sharer, mapper, shared, done };
  }

  for (const api of ['public', 'raw'] as const) {
    const copy = (mapper: x.GrantMapper, segs: unknown[]) =>
      api === 'public'
        ? mapper.copy(segs as x.CopySegment[])
        : b.grants.copy((mapper as unknown as { handle(): object }).handle(), segs as never);

    it(`copy (${api}): a getter that closes the mapper gets ERR_XEN_CLOSED`, () => {
      const { mapper, shared, done } = page();
      const dest = new Uint8Array(4);
      const seg = {
        source: { domid: 0, ref: shared.refs[0] },
        get dest() {
          mapper.close();
          return dest;
        },
        length: 4,
      };
      // The raw call needs the handle before the getter closes it: take it first.
      const h = (mapper as unknown as { handle(): object }).handle();
      const call = api === 'public' ? () => mapper.copy([seg]) : () => b.grants.copy(h, [seg]);
      expect(call).toThrow(expect.objectContaining({ code: 'ERR_XEN_CLOSED' }));
      done();
    });

    it(`copy (${api}): a getter that detaches the destination gets ERR_OUT_OF_RANGE`, () => {
      const { mapper, shared, done } = page();
      const dest = new Uint8Array(4096);
      const seg = {
        source: { domid: 0, ref: shared.refs[0] },
        get dest() {
          detach(dest.buffer);
          return dest;
        },
        length: 4096,
      };
      expect(() => copy(mapper, [seg])).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
      done();
    });

    it(`copy (${api}): a getter that unmaps the destination region gets ERR_OUT_OF_RANGE`, () => {
      const { mapper, shared, done } = page();
      const region = mapper.map(0, shared.refs);
      const dest = new Uint8Array(region.buffer);
      const seg = {
        source: { domid: 0, ref: shared.refs[0] },
        get dest() {
          region.unmap();
          return dest;
        },
        length: 4096,
      };
      expect(() => copy(mapper, [seg])).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
      done();
    });
  }

  it("copy (raw): a later segment's getter that detaches an earlier destination gets ERR_OUT_OF_RANGE", () => {
    const { mapper, shared, done } = page();
    const h = (mapper as unknown as { handle(): object }).handle();
    const early = new Uint8Array(4096);
    const later = {
      source: { domid: 0, ref: shared.refs[0] },
      get dest() {
        detach(early.buffer);
        return new Uint8Array(16);
      },
      length: 16,
    };
    expect(() =>
      b.grants.copy(h, [{ source: { domid: 0, ref: shared.refs[0] }, dest: early, length: 4096 }, later]),
    ).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    done();
  });

  it('map (raw): a refs getter that closes the mapper gets ERR_XEN_CLOSED', () => {
    const { mapper, shared, done } = page();
    const h = (mapper as unknown as { handle(): object }).handle();
    const refs: number[] = [];
    Object.defineProperty(refs, 0, {
      get() {
        mapper.close();
        return shared.refs[0];
      },
      enumerable: true,
    });
    expect(() => b.grants.map(h, 0, refs, true)).toThrow(expect.objectContaining({ code: 'ERR_XEN_CLOSED' }));
    done();
  });

  it('writev (raw): a chunk getter that closes the channel gets ERR_XEN_CLOSED; a detached chunk writes none of its bytes', async () => {
    const path = 'data/vchan/fuzz-writev';
    const full = `/local/domain/0/${path}`;
    const srv = b.vchan.serverInit(0, path, 0, 0);
    const xs = new x.Xenstore();
    const [ref, port] = [Number(await xs.read(`${full}/ring-ref`)), Number(await xs.read(`${full}/event-channel`))];
    xs.close();
    const cli = b.vchan.clientInit(0, full, ref, port);
    try {
      const closing: unknown[] = [Buffer.alloc(8)];
      Object.defineProperty(closing, 1, {
        get() {
          b.vchan.close(cli);
          return Buffer.alloc(8);
        },
        enumerable: true,
      });
      // A chunk detached by a later chunk's getter: only what is still there is written.
      const first = new Uint8Array(100).fill(7);
      const list: unknown[] = [first];
      Object.defineProperty(list, 1, {
        get() {
          detach(first.buffer);
          return Buffer.from('after');
        },
        enumerable: true,
      });
      expect(b.vchan.writev(cli, list as never, 0)).toBe(5);
      const got = Buffer.alloc(64);
      expect(b.vchan.read(srv, got, 0, 64)).toBe(5);
      expect(got.subarray(0, 5).toString()).toBe('after');
      expect(() => b.vchan.writev(cli, closing as never, 0)).toThrow(
        expect.objectContaining({ code: 'ERR_XEN_CLOSED' }),
      );
    } finally {
      b.vchan.close(cli);
      b.vchan.close(srv);
    }
  });

  it('setPermissions (raw): entries must be numbers (a valueOf could close the connection)', async () => {
    const h = b.xenstore.open();
    const evil = { valueOf: () => (b.xenstore.close(h), 0) };
    expect(() => b.xenstore.setPermissions(h, 0, '/local/domain/0/data', [evil as never, 1])).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    b.xenstore.close(h);
  });
});
