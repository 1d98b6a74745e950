/** The package as a whole: module formats, lifecycle (workers, cleanup hooks) and argument errors across every module. */
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import * as x from '../dist/cjs/index.js';
import { binding } from '../dist/cjs/native.js';
import { EventChannel, GrantMapper, GrantSharer, Xenstore } from '../dist/cjs/index.js';
import { root, selfDomid } from './helpers/env';
import { sleep } from './helpers/util';

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
    expect(JSON.parse(r.stdout)).toEqual({
      same: true,
      shared: true,
      n: Object.keys(x).filter((k) => k !== 'default').length,
    });
  });
});

/** The package's runtime exports, by name: a change to this list is a change to the public API. */
const EXPORTS = [
  'BackRing', 'DEFAULT_RING_SIZE', 'DOMID_FIRST_RESERVED', 'DataRing', 'EventChannel', 'FrameParser', 'FrameType',
  'FramedStream', 'FrontRing', 'GrantMapper', 'GrantSharer', 'GrantStatus', 'JSON_MAX_MESSAGE', 'JsonClient',
  'LiveState', 'MAX_DATA', 'MAX_DOMID', 'MAX_RING_SIZE', 'MAX_VCHAN_PATH', 'MULTI_QUEUE_MAX', 'MappedPages',
  'MessageSplitter', 'PAGE_SIZE', 'PCIBACK_FILES', 'PCID_COMMANDS', 'PROXY_CONNECT_TIMEOUT', 'PROXY_VERSION',
  'PciSysfs', 'PcidClient', 'PcidError', 'PcidServer', 'PvcallsBackend', 'PvcallsFrontend', 'PvcallsServer',
  'PvcallsSocket', 'RingCorruptError', 'SharedPages', 'VchanMultiServer', 'VchanProxy', 'VchanServer', 'VchanStream',
  'XENSTORE_ABS_PATH_MAX', 'XENSTORE_REL_PATH_MAX', 'XEN_LIBXENVCHAN_MAX_PATH', 'XenbusState', 'Xenstore',
  'XenstoreTransaction', 'XenstoreWatch', 'connect', 'connectMulti', 'connectPcid', 'connectPvcalls',
  'createMultiServer', 'createPcidServer', 'createPvcallsBackend', 'createPvcallsDevice', 'createServer',
  'currentBackend', 'encodeFrame', 'encodeMessage', 'handlePcidRequest', 'mockAddStaticChannel', 'mockDestroyDomain',
  'mockDir', 'mockEnv', 'mockIntroduceDomain', 'mockLibDir', 'mockRaiseVirq', 'mockReset', 'mockStats', 'proxyListen',
  'proxyServe', 'pvcallsPaths', 'pvcallsWire', 'removePvcallsDevice', 'serveJson', 'useBackend',
]; // prettier-ignore

describe('the public API', () => {
  it('the package exports exactly these names, in CommonJS and as an ES module', () => {
    const code = `
      import * as esm from 'xen-vchan';
      import { createRequire } from 'node:module';
      const cjs = createRequire(import.meta.url)('xen-vchan');
      const names = (m) => Object.keys(m).filter((k) => k !== 'default').sort();
      console.log(JSON.stringify({ esm: names(esm), cjs: names(cjs) }));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { cwd: root, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    const { esm, cjs } = JSON.parse(r.stdout);
    expect(cjs).toEqual([...EXPORTS].sort());
    expect(esm).toEqual([...EXPORTS].sort());
  });
});

describe('the source', () => {
  it('no file in lib/ is over 400 lines (lib/ is laid out by protocol, a file per part)', () => {
    const long: string[] = [];
    const walk = (dir: string): void => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.name.endsWith('.ts') && fs.readFileSync(p, 'utf8').split('\n').length - 1 > 400)
          long.push(path.relative(root, p));
      }
    };
    walk(path.join(root, 'lib'));
    expect(long).toEqual([]);
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
    const native = binding();
    const xs = native.xenstore.open();
    expect(() => native.evtchn.notify(xs as never, 1)).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => native.vchan.read({}, Buffer.alloc(1), 0, 1)).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => native.grants.map(undefined as never, 0, [1], false)).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
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
    ['allocUnbound(string)', () => EventChannel.allocUnbound('1' as never, 0), T],
    ['allocUnbound(remote -1)', () => EventChannel.allocUnbound(1, -1), R],
    ['allocUnbound(options)', () => EventChannel.allocUnbound(1, 0, 5 as never), T],
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
    [
      'createServer(relative path of 2035 bytes)',
      () => x.createServer({ domid: 0, path: `data/${'p'.repeat(2030)}` }),
      R,
    ],
    [
      'createServer(path of 3059 bytes)',
      () => x.createServer({ domid: 0, path: `/local/domain/0/${'p'.repeat(3043)}` }),
      R,
    ],
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
