/** EventChannel: binding every kind of port, notify, unmask, restrict, events as JS events. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import * as x from '../dist/cjs/index.js';
import { EventChannel, Xenstore } from '../dist/cjs/index.js';
import { config, mockAddon, selfDomid } from './helpers/env';
import { killChild, nextEvent, sleep, startPeer } from './helpers/util';

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
    expect(await peer.next()).toEqual({
      bound: [70, 71],
      busy: 'EISCONN', // the same handle again, as Linux answers
      otherBusy: 'EBUSY', // another handle of the process: refused (Linux takes it, then crashes at exit)
      event: 71,
      rebound: 71,
      pendingKept: true,
    });
    expect((await peer.exited).code).toBe(0);
  });

  it.runIf(mockAddon)(
    'dom0less: two domains with a static channel and no xenstore signal each other from two processes',
    async () => {
      // A broker of its own, booted with the channel as a dom0less device tree would give it (the
      // broker applies XEN_MOCK_STATIC_EVTCHN at start, whichever peer starts it).
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xen-vchan-dom0less-'));
      const env = { XEN_MOCK_DIR: dir, XEN_MOCK_STATIC_EVTCHN: '1:10=2:20' };
      const two = startPeer(2, ['static-ping', '20', '0'], env);
      const one = startPeer(1, ['static-ping', '10', '500'], env);
      try {
        expect(await two.next()).toEqual({ bound: 20 });
        expect(await one.next()).toEqual({ bound: 10 });
        one.send('go');
        const r = await one.next<{
          done: number;
          usPerRoundTrip: number;
          stats: { domid: number; handles: number; watches: number }[];
        }>();
        expect(r.done).toBe(500);
        // Each domain holds one handle, its event channel: no xenstore connection, no watch.
        for (const d of [1, 2]) expect(r.stats.find((s) => s.domid === d)).toMatchObject({ handles: 1, watches: 0 });
        console.log(`dom0less on the mock: 500 event round trips between two processes, ${r.usPerRoundTrip} us each`);
      } finally {
        killChild(two.child);
        killChild(one.child);
        await Promise.all([two.exited, one.exited]);
      }
    },
  );

  it.runIf(mockAddon)(
    'bindStatic as Linux 6.12 answers: a port Xen never allocated binds and never fires',
    async () => {
      const a = new EventChannel();
      const before = x.mockStats(0)[0]?.ports ?? 0;
      expect(a.bindStatic(4000)).toBe(4000);
      expect(x.mockStats(0)[0].ports).toBe(before + 1);
      a.notify(4000); // goes nowhere, as on Linux
      expect(await nextEvent(a, 200)).toBeNull();
      expect(() => a.bindStatic(4000)).toThrow(
        expect.objectContaining({ code: 'EISCONN', syscall: 'ioctl(IOCTL_EVTCHN_BIND_STATIC)' }),
      );
      const b = new EventChannel();
      expect(() => b.bindStatic(4000)).toThrow(expect.objectContaining({ code: 'EBUSY', errno: -16 }));
      a.unbind(4000);
      expect(x.mockStats(0)[0].ports).toBe(before);
      // Free again once unbound: another handle may take it.
      expect(b.bindStatic(4000)).toBe(4000);
      b.close();
      expect(() => a.bindStatic(200000)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
      a.close();
    },
  );

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

  it.runIf(config !== 'mock')(
    "bindStatic on a kernel without IOCTL_EVTCHN_BIND_STATIC (Linux < 6.5, the rig's 6.1) says so",
    () => {
      const a = new EventChannel();
      expect(() => a.bindStatic(70)).toThrow(expect.objectContaining({ code: 'ENOTSUP' }));
      a.close();
    },
  );
});
