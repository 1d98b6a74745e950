/**
 * The boundary between lib/ and src/: the loaded addon exports exactly the functions lib/native.ts
 * declares (NATIVE_FUNCTIONS, which the compiler checks against the typed interfaces), no more and
 * no fewer, and what it returns has the declared shape. Runs on every backend.
 */
import { once } from 'node:events';
import * as net from 'node:net';

import { describe, expect, it } from 'vitest';

import { binding, LiveState, NATIVE_FUNCTIONS, unpackArm } from '../dist/cjs/native.js';
import { createServer, connect } from '../dist/cjs/index.js';
import { selfDomid } from './helpers/env';
import { sleep, uniquePath } from './helpers/util';

describe('the native surface', () => {
  it('the addon exports exactly the functions lib/native.ts declares', () => {
    const b = binding() as unknown as Record<string, unknown>;
    const modules = Object.keys(NATIVE_FUNCTIONS).filter((m) => m !== 'mock' || b.backend === 'mock');
    expect(Object.keys(b).sort()).toEqual([...modules, 'backend'].sort());
    for (const m of modules) {
      const exported = b[m] as Record<string, unknown>;
      expect(Object.keys(exported).sort(), m).toEqual([...NATIVE_FUNCTIONS[m as keyof typeof NATIVE_FUNCTIONS]].sort());
      for (const [name, fn] of Object.entries(exported)) expect(typeof fn, `${m}.${name}`).toBe('function');
    }
  });

  it('unpackArm reads every state with both counts at their bounds (a 1 MiB ring)', () => {
    const MiB = 1 << 20;
    for (const live of [LiveState.Closed, LiveState.Open, LiveState.Waiting])
      for (const [readable, writable] of [
        [0, 0],
        [MiB, 0],
        [0, MiB],
        [MiB, MiB],
        [1, MiB - 1],
      ])
        expect(unpackArm(live + 4 * readable + 2 ** 23 * writable)).toEqual({ live, readable, writable });
  });

  it('vchan.arm (unpacked) and vchan.peek give named fields, with the live state as LiveState', async () => {
    const b = binding();
    const rel = uniquePath('native');
    const server = createServer({ domid: 0, path: rel });
    const accepted = new Promise<{ destroy(): void }>((r) => server.once('connection', r));
    server.listen();
    const streams: { destroy(): void }[] = [];
    try {
      const c = await connect({ domid: 0, path: `/local/domain/0/${rel}`, timeout: 10_000 });
      streams.push(c);
      streams.push(await accepted);
      const h = (c as unknown as { ringState(): unknown }).ringState();
      expect(h).toMatchObject({ open: LiveState.Open });
      // The raw calls, on a fresh server handle of our own (offered, no client): Waiting.
      const raw = b.vchan.serverInit(0, `${rel}-raw`, 1024, 1024);
      try {
        expect(unpackArm(b.vchan.arm(raw))).toEqual({
          live: LiveState.Waiting,
          readable: 0,
          writable: expect.any(Number),
        });
        expect(Object.keys(b.vchan.peek(raw)).sort()).toEqual(
          [
            'events',
            'eventPending',
            'live',
            'oursAsked',
            'peerAsked',
            'polling',
            'readable',
            'wakeups',
            'writable',
          ].sort(),
        );
        // Two in-page rings: 1 KiB and 2 KiB (the larger slot goes to the one asked for second).
        expect(b.vchan.info(raw)).toEqual({ readSize: 1024, writeSize: 2048, port: expect.any(Number), server: true });
      } finally {
        b.vchan.close(raw);
      }
    } finally {
      for (const st of streams) st.destroy();
      await new Promise((r) => server.close(() => r(undefined)));
    }
  });

  it("a PVCalls pump's port is served in C++: its events reach JS only when corrupt, again once the pump closes, and for a port bound again after an unbind", async () => {
    const b = binding();
    const ev = b.evtchn.open();
    const peer = b.evtchn.open();
    const seen: number[] = [];
    b.evtchn.poll(ev, () => {
      for (const p of b.evtchn.pending(ev)) {
        seen.push(p);
        b.evtchn.unmask(ev, p);
      }
    });
    const local = b.evtchn.bindUnbound(ev, selfDomid);
    const remote = b.evtchn.bindInterdomain(peer, selfDomid, local);
    const got: Buffer[] = [];
    const server = net.createServer((c) => c.on('data', (d) => got.push(d))).listen(0, '127.0.0.1');
    await once(server, 'listening');
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    await once(client, 'connect');
    const until = async (what: () => boolean) => {
      for (let i = 0; i < 300 && !what(); i++) await sleep(10);
      expect(what()).toBe(true);
    };
    // Order 1: halves of 4096 bytes, `in` first; out_prod is at byte 68 of the indexes page.
    const idx = new ArrayBuffer(4096);
    const data = new ArrayBuffer(8192);
    const dv = new DataView(idx);
    const corrupt: boolean[] = [];
    const fd = (client as unknown as { _handle: { fd: number } })._handle.fd;
    const pump = b.pump.open(ev, local, idx, data, 1, fd, () => corrupt.push(true));
    let pump2: ReturnType<typeof b.pump.open> | undefined;
    client.destroy(); // the pump holds its own duplicate
    try {
      const bytes = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
      new Uint8Array(data, 4096, 100).set(bytes);
      dv.setUint32(68, 100, true);
      b.evtchn.notify(peer, remote);
      await until(() => Buffer.concat(got).length === 100);
      expect(Buffer.concat(got)).toEqual(bytes);
      expect(b.pump.stats(pump)).toMatchObject({ bytesOut: 100, notifies: 1 });
      await sleep(50);
      expect(seen).toEqual([]); // the event was the pump's alone
      // out_prod 5000 past out_cons: more than the half holds. The step finds it, and JS hears.
      dv.setUint32(68, 100 + 5000, true);
      b.evtchn.notify(peer, remote);
      await until(() => seen.length > 0);
      expect(seen).toEqual([local]);
      expect(b.pump.run(pump)).toMatch(/the out ring claims 5000 bytes queued/);
      // A closed pump's port is JS's again.
      b.pump.close(pump);
      seen.length = 0;
      b.evtchn.notify(peer, remote);
      await until(() => seen.length > 0);
      expect(seen).toEqual([local]);
      expect(corrupt).toEqual([]); // the fd's wake-ups never met the corruption: only the events did
      // A port unbound under a live pump, and bound again at once (the same number): the new
      // channel's events are JS's, not the old pump's.
      const client2 = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
      await once(client2, 'connect');
      const fd2 = (client2 as unknown as { _handle: { fd: number } })._handle.fd;
      pump2 = b.pump.open(ev, local, new ArrayBuffer(4096), new ArrayBuffer(8192), 1, fd2, () => undefined);
      client2.destroy();
      b.evtchn.unbind(ev, local);
      const again = b.evtchn.bindUnbound(ev, selfDomid);
      const remote2 = b.evtchn.bindInterdomain(peer, selfDomid, again);
      expect(again).toBe(local);
      const steps = b.pump.stats(pump2).steps;
      seen.length = 0;
      b.evtchn.notify(peer, remote2);
      await until(() => seen.length > 0);
      expect(seen).toEqual([again]);
      expect(b.pump.stats(pump2).steps).toBe(steps);
    } finally {
      if (pump2) b.pump.close(pump2);
      b.pump.close(pump);
      b.evtchn.close(ev);
      b.evtchn.close(peer);
      server.close();
    }
  });

  it('xenstore.readWatches returns {path, token} events', async () => {
    const b = binding();
    const h = b.xenstore.open();
    try {
      await b.xenstore.watch(h, '/local/domain/0/data', 'native-test');
      let events: { path: string; token: string }[] = [];
      for (let i = 0; i < 100 && events.length === 0; i++) {
        events = b.xenstore.readWatches(h);
        if (events.length === 0) await new Promise((r) => setTimeout(r, 10));
      }
      // A new watch fires once at once, for its own path.
      expect(events[0]).toEqual({ path: '/local/domain/0/data', token: 'native-test' });
      await b.xenstore.unwatch(h, '/local/domain/0/data', 'native-test');
    } finally {
      b.xenstore.close(h);
    }
  });
});
