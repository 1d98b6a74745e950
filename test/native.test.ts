/**
 * The boundary between lib/ and src/: the loaded addon exports exactly the functions lib/native.ts
 * declares (NATIVE_FUNCTIONS, which the compiler checks against the typed interfaces), no more and
 * no fewer, and what it returns has the declared shape. Runs on every backend.
 */
import { describe, expect, it } from 'vitest';

import { binding, LiveState, NATIVE_FUNCTIONS, unpackArm } from '../dist/cjs/native.js';
import { createServer, connect } from '../dist/cjs/index.js';
import { uniquePath } from './helpers/util';

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
