/**
 * The project's hostile peer (native/mock/test/hostile_peer.c), a separate C process in domain 5,
 * against our client and our server: every field of the shared page (and the server's xenstore
 * entry) corrupted, before the other side connects and after. Whatever it does, our side must
 * settle (connect() resolves or rejects, a stream works or fails) with coded errors only, never
 * crash or hang; a server must go on serving the next, well-behaved client.
 */
import { spawn, ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createInterface } from 'node:readline';

import { describe, expect, it } from 'vitest';

import { connect, createServer, VchanStream, Xenstore } from '../dist/cjs/index.js';
import { mockBuild, mockBuildSan, onMock, root } from './helpers/env';
import { afterEachTest, killChild, sleep, uniquePath } from './helpers/util';

const sanitized = (process.env.LD_PRELOAD ?? '').includes('asan');
const peerBin = path.join(sanitized ? mockBuildSan : mockBuild, 'test', 'hostile_peer');
const FIELDS = [
  'left.cons',
  'left.prod',
  'right.cons',
  'right.prod',
  'left_order',
  'right_order',
  'cli_live',
  'srv_live',
  'cli_notify',
  'srv_notify',
  'grant0',
];

const { children, cleanups } = afterEachTest();

/** Starts the hostile peer in domain 5; resolves at its "ready", exposes its later lines. */
async function hostile(args: string[]): Promise<{ child: ChildProcess; corrupted: Promise<void> }> {
  const child = spawn(peerBin, args, {
    env: { ...process.env, XEN_MOCK_DOMID: '5' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const lines = createInterface({ input: child.stdout! });
  const seen = new Set<string>();
  const waiters = new Map<string, () => void>();
  lines.on('line', (l) => {
    seen.add(l);
    waiters.get(l)?.();
  });
  const line = (l: string) =>
    new Promise<void>((resolve, reject) => {
      if (seen.has(l)) return resolve();
      waiters.set(l, resolve);
      child.once('exit', (code) =>
        reject(new Error(`hostile_peer ${args.join(' ')} exited ${code} before "${l}": ${err}`)),
      );
    });
  await line('ready');
  // A test that ends before the peer corrupts anything (the peer is killed then) never awaits this:
  // its rejection must not be an unhandled one.
  const corrupted = line('corrupted');
  corrupted.catch(() => undefined);
  return { child, corrupted };
}

function coded(e: unknown): void {
  expect(e).toBeInstanceOf(Error);
  expect(typeof (e as { code?: unknown }).code, String(e)).toBe('string');
}

/** Uses S for a while (writes, reads); resolves with how it ended: 'open', 'end' or an error code. */
async function exercise(s: VchanStream, ms: number): Promise<string> {
  let outcome = 'open';
  s.on('error', (e) => {
    coded(e);
    outcome = (e as unknown as { code: string }).code;
  });
  s.on('end', () => outcome === 'open' && (outcome = 'end'));
  s.on('data', () => {});
  const t0 = Date.now();
  while (Date.now() - t0 < ms && !s.destroyed) {
    s.write(Buffer.alloc(512, 7));
    await sleep(20);
  }
  s.destroy();
  return outcome;
}

describe.skipIf(!onMock || !fs.existsSync(peerBin))('a hostile C peer in another domain', () => {
  const outcomes: Record<string, string> = {};

  for (const when of ['before', 'after'] as const) {
    for (const field of [...FIELDS, ...(when === 'before' ? ['ring-ref', 'event-channel'] : [])]) {
      it(`a server corrupting ${field} ${when} we connect: our client settles with coded errors`, async () => {
        const rel = uniquePath('hsrv');
        const full = `/local/domain/5/${rel}`;
        cleanups.push(async () => {
          const xs = new Xenstore();
          await xs.rm(full).catch(() => undefined);
          xs.close();
        });
        const peer = await hostile(['server', '0', rel, field, when]);
        let outcome: string;
        try {
          const c = await connect({ domid: 5, path: full, timeout: 2000 });
          if (when === 'after') await Promise.race([peer.corrupted, sleep(2000)]);
          outcome = await exercise(c, 300);
        } catch (e) {
          coded(e);
          outcome = `connect: ${(e as { code: string }).code}`;
        }
        outcomes[`server ${field} ${when}`] = outcome;
        // Corrupt indices, orders, live states and entries are refused as EPROTO, never waited on.
        if (when === 'before' && /\.(cons|prod)$|_order$|_live$|^ring-ref$|^event-channel$/.test(field))
          expect(outcome).toMatch(/EPROTO$/);
      });

      if (field === 'ring-ref' || field === 'event-channel') continue;
      it(`a client corrupting ${field} ${when} it connects: our server goes on serving the next client`, async () => {
        const rel = uniquePath('hcli');
        const full = `/local/domain/0/${rel}`;
        const server = createServer({ domid: 5, path: rel });
        const streams: VchanStream[] = [];
        const received = new Map<VchanStream, string>();
        cleanups.push(() => new Promise((r) => server.close(() => r(undefined))));
        cleanups.push(() => streams.forEach((st) => st.destroy()));
        const events: string[] = [];
        server.on(
          'clientError',
          (e) => (coded(e), events.push(`clientError ${(e as unknown as { code: string }).code}`)),
        );
        server.on('error', (e) => events.push(`error ${(e as Error).message}`));
        server.on('connection', (s) => {
          streams.push(s);
          received.set(s, '');
          s.on('error', (e) => (coded(e), events.push(`stream ${(e as unknown as { code: string }).code}`)));
          s.on('data', (d) => received.set(s, received.get(s) + String(d)));
        });
        server.listen();
        await once(server, 'listening');
        const peer = await hostile(['client', '0', full, field, when]);
        await Promise.race([peer.corrupted, sleep(2000)]);
        for (const s of streams) s.write(Buffer.alloc(256, 1));
        await sleep(200);
        // The hostile client goes; the server must offer a fresh channel to the next client.
        killChild(peer.child);
        await once(peer.child, 'exit');
        // The next client: a process of domain 5, as on Xen (on every backend).
        const good = spawn(
          process.execPath,
          [
            '-e',
            `require(${JSON.stringify(root)}).connect({ domid: 0, path: ${JSON.stringify(full)}, timeout: 5000 }).then((c) => c.end('good'))`,
          ],
          { env: { ...process.env, XEN_MOCK_DOMID: '5' }, stdio: ['ignore', 'inherit', 'pipe'] },
        );
        children.push(good);
        let goodErr = '';
        good.stderr!.on('data', (d) => (goodErr += d));
        const goodExit = new Promise<unknown>((r) => good.once('exit', (code, sig) => r(sig ?? code)));
        const served = () => [...received.values()].includes('good');
        // Node's start-up is slow under the sanitizer job (ASan preloaded): wait for the client to finish.
        const exited = await Promise.race([goodExit, sleep(20_000).then(() => 'still running')]);
        for (let i = 0; i < 200 && !served(); i++) await sleep(10);
        expect(
          served(),
          `the next client is served (server: ${events.join(', ')}; ${streams.length} connections, received ` +
            `${JSON.stringify([...received.values()])}; the client exited ${exited}: ${goodErr.slice(-500)})`,
        ).toBe(true);
        expect(events.filter((e) => e.startsWith('error '))).toEqual([]);
        outcomes[`client ${field} ${when}`] = events.join(', ') || 'no error';
        for (const s of streams) s.destroy();
      });
    }
  }

  it('(the outcomes, for the record)', () => {
    console.log(
      Object.entries(outcomes)
        .map(([k, v]) => `${k}: ${v}`)
        .join('\n'),
    );
  });
});
