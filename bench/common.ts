/**
 * What every part of `npm run bench` (run.ts) shares: its options, the sizes it moves, and the
 * helpers both ends of a pair use (send, receive, CPU, process usage).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';

import type * as XenVchan from '../dist/cjs/index';

/** The package, as users get it (its built dist/). */
export type Lib = typeof XenVchan;
/** The repository's root. */
export const root = path.join(__dirname, '..', '..');

let loaded: Lib | undefined;
/** The package, loaded on first use (after the backend has been chosen in the environment). */
export function lib(): Lib {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (loaded ??= require(root) as Lib);
}

export const argv = process.argv.slice(2);
export const flag = (f: string): boolean => argv.includes(f);
/** The value after option F, or null. */
export const optionValue = (f: string): string | null =>
  argv.includes(f) ? (argv[argv.indexOf(f) + 1] ?? null) : null;
export const QUICK = flag('--quick');
/** --only throughput|latency|cost: that part alone, printed as JSON (the report needs every part). */
export const ONLY = optionValue('--only');
export const part = (name: string): boolean => ONLY === null || ONLY === name;
/** Set by bench/rig-job.sh inside the rig's dom0. */
export const INSIDE_RIG = flag('--inside-rig');
/** The child's domain. */
export const PEER = INSIDE_RIG ? 0 : 5;
export const MiB = 1 << 20;
export const RINGS = [4096, 65536, MiB];
export const WRITES = [64, 4096, 65536];
export type Dir = 'dom0->domU' | 'domU->dom0';
export const DIRS: Dir[] = ['dom0->domU', 'domU->dom0'];
/** Streams held open at once in one process (the cost part). */
export const STREAMS = Number(process.env.BENCH_STREAMS ?? 10000);
/** How many of them exchange round trips at once. */
export const ACTIVE = Number(process.env.BENCH_ACTIVE ?? 1000);
/** Each measurement this many times, interleaved; the tables give medians and the spread. */
export const REPEAT = Math.max(1, Number(process.env.BENCH_REPEAT ?? 1));

/**
 * Bytes one transfer of WRITE-byte writes moves. 64-byte writes move 64 MiB: C moved the 16 MiB
 * they were in about 15 ms, too short a run to say more than its start-up.
 */
export function bytesFor(write: number): number {
  const table = QUICK
    ? { 64: 1 * MiB, 4096: 8 * MiB, 65536: 32 * MiB }
    : INSIDE_RIG
      ? { 64: 2 * MiB, 4096: 32 * MiB, 65536: 64 * MiB }
      : { 64: 64 * MiB, 4096: 256 * MiB, 65536: 768 * MiB };
  return table[write as keyof typeof table] ?? table[65536];
}

/** CPU seconds (user + system) this process has used since C0. */
export function cpuSeconds(c0?: NodeJS.CpuUsage): number {
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / 1e6;
}

/** Writes BYTES to S in WRITE-byte chunks, with backpressure. */
export function sendBytes(s: Duplex, bytes: number, write: number): Promise<void> {
  const chunk = Buffer.alloc(write, 0xab);
  return new Promise((resolve, reject) => {
    let sent = 0;
    s.once('error', reject);
    const pump = () => {
      while (sent < bytes) {
        sent += write;
        if (!s.write(chunk)) return void s.once('drain', pump);
      }
      resolve();
    };
    pump();
  });
}

/** Resolves once BYTES have come from S ('data'). */
export function recvBytes(s: Duplex, bytes: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let got = 0;
    s.once('error', reject);
    s.on('data', (d: Buffer) => {
      got += d.length;
      if (got >= bytes) resolve();
    });
  });
}

/** How a receiving VchanStream reads: 'copy' into one reused buffer, 'view' the ring in place. */
export type OnreadMode = 'copy' | 'view';

/**
 * An onread option counting BYTES (MODE 'copy': one reused 1 MiB buffer; 'view': zero copy, the
 * ring's own pages); done resolves once they are in.
 */
export function onreadSink(bytes: number, mode: OnreadMode): { onread: XenVchan.VchanOnread; done: Promise<void> } {
  let got = 0;
  let resolve!: () => void;
  const done = new Promise<void>((r) => (resolve = r));
  const callback = (n: number) => {
    got += n;
    if (got >= bytes) resolve();
  };
  const onread: XenVchan.VchanOnread =
    mode === 'view' ? { view: true, callback } : { buffer: Buffer.allocUnsafe(MiB), callback };
  return { onread, done };
}

/** This process's resident memory, open fds and threads (after a GC where --expose-gc allows). */
export interface ProcessUsage {
  rss: number;
  fds: number;
  threads: number;
}

export function processUsage(): ProcessUsage {
  (globalThis as { gc?: () => void }).gc?.();
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  return {
    rss: process.memoryUsage().rss,
    fds: fs.readdirSync('/proc/self/fd').length,
    threads: Number(/^Threads:\s+(\d+)/m.exec(status)?.[1]),
  };
}

/** A number for a table: '-' where there is none. */
export const fmt = (n: number | undefined | null, d = 0): string =>
  n === undefined || n === null || Number.isNaN(n) ? '-' : n.toFixed(d);
/** A/B as "1.23x", '-' where either is missing. */
export const ratio = (a: number | undefined, b: number | undefined): string =>
  a && b ? `${(a / b).toFixed(2)}x` : '-';

/** A connection handler that counts BYTES, then answers one byte (the sender's clock stops there). */
export function ackAfter(bytes: number): (s: Duplex) => void {
  return (s) => {
    let got = 0;
    s.on('data', (d: Buffer) => {
      got += d.length;
      if (got === bytes) s.write('k');
    });
    s.on('error', () => undefined);
  };
}
