/** GrantSharer and GrantMapper: sharing, mapping, unmap notifications, grant copy. */

import { describe, expect, it } from 'vitest';

import { EventChannel, GrantMapper, GrantSharer, GrantStatus } from '../dist/cjs/index.js';
import { onMock, selfDomid } from './helpers/env';
import { snapshot } from './helpers/setup';
import { nextEvent, sleep } from './helpers/util';

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
