/**
 * What each end of a VchanStream transfer costs per GB: its CPU and its minor page faults (fresh
 * pages of the read pool, or of buffers gathering small writes, show there), with a 'data'
 * listener that only counts, and the MB/s. dom0 serves, a domain-5 child connects; DIR up: the
 * child sends and dom0 receives, down: the reverse. For an A/B of the library itself, run it on two
 * revisions side by side (bench/RESULTS.md, 2026-12-07).
 *
 *   npm run -s build:bench && DIR=up|down RING=1048576 WRITE=65536 BYTES=2147483648 \
 *     node bench/dist/read-pool.js
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';

import type { VchanStream } from '../dist/cjs/index';
import { lib, sendBytes } from './common';

process.env.XEN_VCHAN_BACKEND ??= 'mock';
const BYTES = Number(process.env.BYTES ?? 1 << 30);
const WRITE = Number(process.env.WRITE ?? 65536);
const RING = Number(process.env.RING ?? 65536);
const DIR = process.env.DIR === 'down' ? 'down' : 'up';

/** CPU seconds and minor page faults this process has used so far. */
function usage(): { cpu: number; faults: number } {
  const r = process.resourceUsage();
  return { cpu: (r.userCPUTime + r.systemCPUTime) / 1e6, faults: r.minorPageFault };
}

/** The sender's figures for BYTES sent to S, per GB. */
async function send(s: Duplex): Promise<{ sndCpuPerGB: number; sndFaultsPerGB: number }> {
  const u0 = usage();
  await sendBytes(s, BYTES, WRITE);
  const u1 = usage();
  const gb = BYTES / 1e9;
  return {
    sndCpuPerGB: +((u1.cpu - u0.cpu) / gb).toFixed(3),
    sndFaultsPerGB: Math.round((u1.faults - u0.faults) / gb),
  };
}

/** The receiver's figures over everything S brings until its end. */
async function receive(s: Duplex): Promise<Record<string, number | string>> {
  const u0 = usage();
  const t0 = process.hrtime.bigint();
  let got = 0;
  s.on('data', (d: Buffer) => (got += d.length));
  await once(s, 'end');
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const u1 = usage();
  const gb = got / 1e9;
  return {
    dir: DIR === 'up' ? 'domU->dom0' : 'dom0->domU',
    ring: RING,
    write: WRITE,
    MBps: Math.round(got / secs / 1e6),
    rcvCpuPerGB: +((u1.cpu - u0.cpu) / gb).toFixed(3),
    faultsPerGB: Math.round((u1.faults - u0.faults) / gb),
  };
}

async function child(p: string): Promise<void> {
  const s = await lib().connect({ domid: 0, path: p, timeout: 20000 });
  if (DIR === 'up') {
    process.send!(await send(s));
    s.end();
    await once(s, 'close');
  } else {
    process.send!(await receive(s));
    s.destroy();
  }
  process.exit(0);
}

async function main(): Promise<void> {
  if (process.env.XEN_VCHAN_BACKEND === 'mock' && !process.env.XEN_MOCK_DIR)
    process.env.XEN_MOCK_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'xen-vchan-bench-'));
  const p = `data/vchan/5/read-pool-${process.pid}`;
  const server = lib().createServer({ domid: 5, path: p, readMin: RING, writeMin: RING }).listen();
  const accepted = once(server, 'connection');
  const c = fork(__filename, ['--child', `/local/domain/0/${p}`], { env: { ...process.env, XEN_MOCK_DOMID: '5' } });
  const [s] = (await accepted) as [VchanStream];
  server.close();
  const m = once(c, 'message');
  let r: object;
  if (DIR === 'up') {
    r = await receive(s);
    s.destroy();
    r = { ...r, ...((await m) as [object])[0] };
  } else {
    const sent = await send(s);
    s.end();
    r = { ...((await m) as [object])[0], ...sent };
  }
  console.log(JSON.stringify(r));
  await once(c, 'exit');
}

if (process.argv[2] === '--child') void child(process.argv[3]);
else
  main().then(
    () => process.exit(0),
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
