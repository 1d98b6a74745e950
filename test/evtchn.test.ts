/** EventChannel: binding every kind of port, notify, unmask, restrict, events as JS events. */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import * as x from '../dist/cjs/index.js';
import { EventChannel, Xenstore } from '../dist/cjs/index.js';
import { config, mockAddon, root, selfDomid } from './helpers/env';
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

  it('allocUnbound reaches libxenctrl and reports its errors with code, errno and syscall', () => {
    // No domain 4242: ESRCH from the hypervisor (the mock's libxenctrl, or Xen's in the rig).
    expect(() => EventChannel.allocUnbound(4242, 0)).toThrow(
      expect.objectContaining({ code: 'ESRCH', errno: -3, syscall: 'xc_evtchn_alloc_unbound' }),
    );
  });

  it.runIf(config !== 'mock')(
    'allocUnbound without libxenctrl says what to install (the real addon loads it itself)',
    () => {
      const r = spawnSync(
        process.execPath,
        [
          '-e',
          `try { require(${JSON.stringify(path.join(root, 'dist', 'cjs', 'index.js'))}).EventChannel.allocUnbound(1, 0); }
              catch (e) { console.log(JSON.stringify({ code: e.code, syscall: e.syscall, message: e.message })); }`,
        ],
        { env: { ...process.env, XEN_VCHAN_LIBXENCTRL: '/nonexistent/libxenctrl.so.4.17' }, encoding: 'utf8' },
      );
      const e = JSON.parse(r.stdout);
      expect(e).toMatchObject({ code: 'ELIBACC', syscall: 'xc_interface_open' });
      expect(e.message).toContain('libxenctrl could not be loaded');
      expect(e.message).toContain('apt-get install libxenmisc');
    },
  );

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
    'dom0 sets up a static channel for a domU with allocUnbound, in both layouts; the port outlives the handle',
    async () => {
      // Ports set up so are never closed (as on Xen and Linux): a broker of its own.
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xen-vchan-alloc-'));
      const env = { XEN_MOCK_DIR: dir };
      const peers: ReturnType<typeof startPeer>[] = [];
      try {
        for (const layout of ['domu', 'dom0']) {
          const domu = layout === 'domu' ? 9 : 10;
          const dom0 = startPeer(0, ['static-dom0', String(domu), layout], env);
          peers.push(dom0);
          const setup = await dom0.next<{ port: number; local: number; eperm: object; firstPending: boolean }>();
          expect(setup.eperm).toEqual({ code: 'EPERM', syscall: 'xc_evtchn_alloc_unbound' });
          expect(setup.firstPending).toBe(layout === 'domu');
          // The domU takes its end: the port itself with bindStatic, or dom0's port interdomain
          // (where Xen marks its new port pending: the peer drains that event first).
          const args =
            layout === 'domu'
              ? ['static-ping', String(setup.port), '0']
              : ['echo-interdomain', '0', String(setup.port)];
          for (let round = 1; round <= 2; round++) {
            const domU = startPeer(domu, args, env);
            peers.push(domU);
            expect(await domU.next()).toMatchObject(layout === 'domu' ? { bound: setup.port } : { firstPending: true });
            dom0.send({ go: 200 });
            expect(await dom0.next()).toMatchObject({ done: 200 });
            killChild(domU.child);
            await domU.exited;
            // Round 2, a new domU process. The static end stayed bound in Xen (Linux never closes
            // it): with the port in the domU, the new process takes it again; with it in dom0, the
            // domU's interdomain end closed with its process, dom0's port went back to "unbound,
            // offered to the domU", and the new process binds it again.
          }
          dom0.send('end');
          expect((await dom0.exited).code).toBe(0);
        }
      } finally {
        for (const p of peers) killChild(p.child);
        await Promise.all(peers.map((p) => p.exited));
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

  // Linux's evtchn driver has IOCTL_EVTCHN_BIND_STATIC from 6.5 on (the rig runs 6.12, or 6.1 with
  // --kernel 6.1). The real addon over the mock meets the mock's epoll descriptor, not a driver:
  // what an ioctl there answers says nothing about a kernel, so these run on real Xen only.
  const [major, minor] = os.release().split('.').map(Number);
  const kernelBindsStatic = config === 'real' && (major > 6 || (major === 6 && minor >= 5));

  it.runIf(config === 'real' && !kernelBindsStatic)(
    'bindStatic where the kernel has no IOCTL_EVTCHN_BIND_STATIC (Linux < 6.5) says so',
    () => {
      const a = new EventChannel();
      expect(() => a.bindStatic(70)).toThrow(expect.objectContaining({ code: 'ENOTSUP' }));
      a.close();
    },
  );

  it.runIf(kernelBindsStatic)(
    'bindStatic on Linux >= 6.5 answers as Linux does, and a second handle is refused',
    () => {
      // Linux checks nothing with Xen: a port Xen never allocated binds, and never fires. A second
      // handle of the process would make the kernel BUG when the process exits: the library refuses.
      const a = new EventChannel();
      expect(a.bindStatic(4000)).toBe(4000);
      expect(() => a.bindStatic(4000)).toThrow(expect.objectContaining({ code: 'EISCONN' }));
      const b = new EventChannel();
      expect(() => b.bindStatic(4000)).toThrow(expect.objectContaining({ code: 'EBUSY' }));
      expect(() => a.bindStatic(200000)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
      b.close();
      a.close();
    },
  );
});
