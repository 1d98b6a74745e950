/**
 * npm run bench: every transport side by side in ONE run on this machine, printed as a table of
 * absolute figures and ratios (absolutes are noisy on a shared machine; ratios are the result).
 *
 *   a  C libxenvchan over the mock (bench/native/vchan_bench.c): the native ceiling
 *   b  VchanStream over the same mock, ring and library
 *   c  net.Socket over a Unix domain socket between two Node processes: the Node baseline
 *   d  Node -> Unix socket -> Xen's vchan-socket-proxy -> vchan -> vchan-socket-proxy -> Unix socket
 *      -> Node: today's path for a Node tool (Debian's libxenvchan on the mock's libraries)
 *   e  memcpy bandwidth of one core: the physical limit (a vchan moves each byte twice)
 * plus 64-byte round trips (a, b, c), CPU per GB (a, b), the idle CPU of 100 open streams, memory
 * and fds per stream at 1,000 streams, and a vs b on real Xen in the QEMU rig (test/xen).
 * Every vchan pair is two processes: this one in dom0, a child (child.ts) in domain 5 (on the rig,
 * dom0 too). The parts: throughput.ts, latency.ts, cost.ts, rig.ts, profile.ts; report.ts prints.
 *
 *   npm run bench -- [--quick] [--no-rig] [--profile] [--json FILE] [--write]
 *     --quick    small transfers (a smoke run; the figures mean little)
 *     --no-rig   skip the real-Xen part; --rig-json F: take it from an earlier bench/rig.sh run
 *     --profile  also profile b (64 KiB ring and writes, dom0 -> domU) and print the hottest functions
 *     --write    record the run in bench/RESULTS.md (with the command and the date)
 *     --only P   one part (throughput, latency or cost), printed as JSON; no rig
 *   BENCH_REPEAT (1), BENCH_RINGS, BENCH_WRITES; BENCH_STREAMS (10000) streams held open at once in
 *   the cost part, BENCH_ACTIVE (1000) of them in round trips at once.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import {
  ACTIVE,
  flag,
  fmt,
  INSIDE_RIG,
  lib,
  ONLY,
  optionValue,
  part,
  QUICK,
  REPEAT,
  RINGS,
  root,
  STREAMS,
  WRITES,
} from './common';
import { idleCpu, perStream } from './cost';
import { latency } from './latency';
import { startChild, stopChild } from './pairs';
import { profile } from './profile';
import { type BenchResult, report, writeResults } from './report';
import { rigPart } from './rig';
import { baselines, throughput } from './throughput';

const list = (env: string | undefined, def: number[]) => (env ? env.split(',').map(Number) : def);

async function main(): Promise<void> {
  if (!INSIDE_RIG) {
    process.env.XEN_VCHAN_BACKEND = 'mock';
    process.env.XEN_MOCK_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'xen-vchan-bench-'));
    // One granted page per held stream (in-page rings), and the transfers' rings beside them.
    process.env.XEN_MOCK_GNTALLOC_LIMIT = String(Math.max(8192, STREAMS + 4096));
    execFileSync('make', ['-s', '-C', path.join(root, 'native/mock'), 'all']);
    execFileSync('make', ['-s', '-C', path.join(root, 'bench')]);
  } else {
    process.env.XEN_VCHAN_BACKEND = 'real';
  }
  const keeper = new (lib().Xenstore)(); // one broker for the whole run
  await startChild();
  const res: BenchResult = {
    date: new Date().toISOString(),
    quick: QUICK,
    host: `${os.cpus().length} cores, Node ${process.version}`,
    repeat: REPEAT,
    throughput: [],
    cost: {},
  };
  if (part('throughput')) {
    const rings = INSIDE_RIG ? [65536] : list(process.env.BENCH_RINGS, RINGS);
    const writes = INSIDE_RIG ? [65536] : list(process.env.BENCH_WRITES, WRITES);
    res.throughput = await throughput(rings, writes);
    const bl = await baselines();
    res.baselines = bl.rows;
    res.proxyNote = bl.proxyNote;
    res.memcpyMBps = bl.memcpyMBps;
  }
  if (part('latency')) res.latency = await latency();
  if (!INSIDE_RIG && part('cost')) {
    res.cost.idle = await idleCpu(100, QUICK ? 2 : 10);
    res.cost.perStream = await perStream(QUICK ? 200 : STREAMS, QUICK ? 100 : ACTIVE);
    process.stderr.write(`idle: ${fmt(res.cost.idle.cpuMs, 1)} ms CPU in ${res.cost.idle.seconds} s for 100 streams\n`);
  }
  if (flag('--profile') && !INSIDE_RIG) res.profile = await profile();

  stopChild();
  keeper.close();
  if (!INSIDE_RIG && ONLY === null) res.rig = rigPart();
  const jsonOut = optionValue('--json');
  if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(res, null, 2));
  if (ONLY !== null) {
    process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
    return;
  }
  if (INSIDE_RIG) return;
  const md = report(res);
  process.stdout.write(md);
  if (flag('--write')) writeResults(md);
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
