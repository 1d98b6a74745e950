/** The cost part of `npm run bench`: idle CPU of open streams, and memory, fds and CPU per stream. */
import { once } from 'node:events';

import type { VchanServer, VchanStream } from '../dist/cjs/index';
import { cpuSeconds, lib, PEER, type ProcessUsage, processUsage, QUICK } from './common';
import { ask, vchanPath } from './pairs';

/** N dom0 servers (1 KiB rings) at BASE-i and the child's N clients: our N streams. */
async function openStreams(
  n: number,
): Promise<{ streams: VchanStream[]; servers: VchanServer[]; client: ProcessUsage[] }> {
  const base = vchanPath();
  const servers: VchanServer[] = [];
  for (let i = 0; i < n; i++)
    servers.push(
      lib()
        .createServer({ domid: PEER, path: `${base}-${i}`, readMin: 1024, writeMin: 1024 })
        .listen(),
    );
  const accepted = servers.map((s) => once(s, 'connection'));
  const c = await ask({ op: 'hold', path: `/local/domain/0/${base}`, count: n });
  const streams: VchanStream[] = [];
  for (const a of accepted) streams.push(((await a) as [VchanStream])[0]);
  return { streams, servers, client: [c.before as ProcessUsage, c.after as ProcessUsage] };
}

async function closeStreams(streams: VchanStream[], servers: VchanServer[]): Promise<void> {
  await ask({ op: 'release' });
  await Promise.all(streams.map((s) => (s.destroyed ? null : (s.destroy(), once(s, 'close')))));
  for (const s of servers) s.close();
}

/** The CPU this process used in SECONDS while holding N open, idle streams. */
export async function idleCpu(
  n: number,
  seconds: number,
): Promise<{ streams: number; seconds: number; cpuMs: number }> {
  const { streams, servers } = await openStreams(n);
  const c0 = process.cpuUsage();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const cpuMs = cpuSeconds(c0) * 1000;
  await closeStreams(streams, servers);
  return { streams: n, seconds, cpuMs };
}

/** Per stream: resident memory (KiB) and fds; threads before and after. */
interface PerSide {
  rssKiB: number;
  fds: number;
  threads: number;
  threadsBefore: number;
}

/** What N open streams cost, idle and with ACTIVE of them in round trips. */
export interface PerStream {
  count: number;
  server: PerSide;
  client: PerSide;
  idle: { seconds: number; serverMs: number; clientMs: number };
  active: {
    streams: number;
    seconds: number;
    tripsPerSecond: number;
    serverUsPerTrip: number;
    clientUsPerTrip: number;
  };
}

/** N streams open at once: their memory and fds, their idle CPU, then ACTIVE of them in round trips. */
export async function perStream(n: number, active: number): Promise<PerStream> {
  const before = processUsage();
  const { streams, servers, client } = await openStreams(n);
  const after = processUsage();
  const per = (a: ProcessUsage, b: ProcessUsage): PerSide => ({
    rssKiB: (a.rss - b.rss) / n / 1024,
    fds: (a.fds - b.fds) / n,
    threads: a.threads,
    threadsBefore: b.threads,
  });
  // CPU seconds used so far by this process and by the client process.
  const cpuBoth = async () => ({ server: cpuSeconds(), client: (await ask({ op: 'cpu' })).cpu as number });
  // All N open and idle: the CPU both processes use meanwhile.
  const idleSeconds = QUICK ? 1 : 3;
  let t0 = await cpuBoth();
  await new Promise((r) => setTimeout(r, idleSeconds * 1000));
  let t1 = await cpuBoth();
  const idle = {
    seconds: idleSeconds,
    serverMs: (t1.server - t0.server) * 1000,
    clientMs: (t1.client - t0.client) * 1000,
  };
  // ACTIVE of them at once: 64-byte round trips (the client side echoes), each stream one at a
  // time, for a fixed time; the rest stay open and idle.
  const act = streams.slice(0, Math.min(active, n));
  const msg = Buffer.alloc(64, 7);
  const seconds = QUICK ? 1 : 3;
  let trips = 0;
  let running = true;
  t0 = await cpuBoth();
  const started = process.hrtime.bigint();
  const stop = setTimeout(() => (running = false), seconds * 1000);
  await Promise.all(
    act.map(async (s) => {
      while (running) {
        const got = once(s, 'data');
        s.write(msg);
        await got;
        trips++;
      }
    }),
  );
  clearTimeout(stop);
  const wall = Number(process.hrtime.bigint() - started) / 1e9;
  t1 = await cpuBoth();
  await closeStreams(streams, servers);
  return {
    count: n,
    server: per(after, before),
    client: per(client[1], client[0]),
    idle,
    active: {
      streams: act.length,
      seconds: wall,
      tripsPerSecond: trips / wall,
      serverUsPerTrip: ((t1.server - t0.server) * 1e6) / trips,
      clientUsPerTrip: ((t1.client - t0.client) * 1e6) / trips,
    },
  };
}
