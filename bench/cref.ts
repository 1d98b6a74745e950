/** a and e of `npm run bench`: the C program (bench/native/vchan_bench.c) on the same mock or Xen. */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';

import { type Dir, DIRS, INSIDE_RIG, root } from './common';

/** One line of the C program's JSON output. */
interface CLine {
  bench: string;
  direction?: Dir;
  MBps: number;
  bytes: number;
  senderCpuSeconds: number;
  receiverCpuSeconds: number;
  p50us: number;
  p99us: number;
}

/** Runs the C program with ARGS; its JSON lines. */
export function cBench(args: string[], env: NodeJS.ProcessEnv = {}): CLine[] {
  const bin = INSIDE_RIG
    ? path.join(root, '.rig', 'vchan_bench_real')
    : path.join(root, 'bench', 'build', 'vchan_bench');
  const out = execFileSync(bin, args, { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 1 << 24 });
  return out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as CLine);
}

/** The C figures of one transfer per direction. */
export type CThroughput = Record<Dir, { MBps: number; cpuPerGB: number; rcvCpuPerGB: number }>;

/** a: C libxenvchan moving BYTES in WRITE-byte writes through a RING-byte ring, both directions. */
export function cThroughput(ring: number, write: number, bytes: number): CThroughput {
  const lines = cBench(
    ['throughput', String(ring), String(write), String(bytes)],
    INSIDE_RIG ? { VCHAN_BENCH_PEER: '0' } : {},
  );
  const out = {} as CThroughput;
  for (const dir of DIRS) {
    const snd = lines.find((l) => l.bench === 'vchan-c' && l.direction === dir);
    const rcv = lines.find((l) => l.bench === 'vchan-c-receiver' && l.direction === dir);
    if (!snd || !rcv) throw new Error(`the C program reported no ${dir} transfer`);
    out[dir] = {
      MBps: snd.MBps,
      cpuPerGB: ((snd.senderCpuSeconds + rcv.receiverCpuSeconds) / snd.bytes) * 1e9,
      rcvCpuPerGB: (rcv.receiverCpuSeconds / snd.bytes) * 1e9,
    };
  }
  return out;
}

/** a's 64-byte round trips (64 KiB ring), COUNT of them: p50 and p99, microseconds. */
export function cLatency(count: number): { p50: number; p99: number } {
  const [l] = cBench(['latency', '65536', String(count)], INSIDE_RIG ? { VCHAN_BENCH_PEER: '0' } : {});
  return { p50: l.p50us, p99: l.p99us };
}

/** e: memcpy bandwidth of one core over BYTES, MB/s. */
export function memcpyMBps(bytes: number): number {
  return cBench(['memcpy', String(bytes)])[0].MBps;
}
