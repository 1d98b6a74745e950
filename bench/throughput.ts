/**
 * The throughput part of `npm run bench`: a (C) against b (VchanStream), b2 (onread into one
 * buffer) and b3 (onread reading the ring in place), per ring and write size and direction; then
 * c (a Unix socket) and d (Xen's vchan-socket-proxy at both ends), and e (memcpy).
 */
import * as fs from 'node:fs';

import { cThroughput, memcpyMBps } from './cref';
import { bytesFor, type Dir, DIRS, fmt, INSIDE_RIG, MiB, QUICK, REPEAT, WRITES } from './common';
import { proxyPair, PROXY, transfer, type TransferResult, udsPair, vchanPair } from './pairs';
import { median } from './stats';

/** One row of the throughput table: medians of REPEAT runs, ratios run by run against a. */
export interface ThroughputRow {
  ring: number;
  write: number;
  dir: Dir;
  a?: number;
  b?: number;
  b2?: number;
  b3?: number;
  ba?: number;
  b2a?: number;
  b3a?: number;
  baSpan?: [number, number];
  b2aSpan?: [number, number];
  b3aSpan?: [number, number];
  aCpuPerGB?: number;
  bCpuPerGB?: number;
  b2CpuPerGB?: number;
  b3CpuPerGB?: number;
  aRcvCpuPerGB?: number;
  bRcvCpuPerGB?: number;
  b2RcvCpuPerGB?: number;
  b3RcvCpuPerGB?: number;
  eventsPerMiB?: number;
}

/** c and d against b, at one write size and direction. */
export interface Baseline {
  write: number;
  dir: Dir;
  c?: number;
  d?: number;
  cCpuPerGB?: number;
  dCpuPerGB?: number;
}

const log = (s: string) => process.stderr.write(`${s}\n`);
const med = (xs: number[]) => (xs.length ? median(xs) : undefined);
const span = (xs: number[] | undefined): [number, number] | undefined =>
  xs && xs.length > 1 ? [Math.min(...xs), Math.max(...xs)] : undefined;

/** The samples of one ring, write size and direction. */
class Samples {
  readonly a: number[] = [];
  readonly ca: number[] = [];
  readonly ra: number[] = [];
  readonly b = new Runs();
  readonly b2 = new Runs();
  readonly b3 = new Runs();
  readonly ev: number[] = [];
  /** XS as ratios to a, run by run. */
  vsA(xs: number[]): number[] {
    return xs.map((v, i) => v / this.a[i]);
  }
}

/** One transport's runs: MB/s, CPU s/GB, the receiver's CPU s/GB. */
class Runs {
  readonly MBps: number[] = [];
  readonly cpu: number[] = [];
  readonly rcv: number[] = [];
  add(t: TransferResult | null): void {
    if (!t) return;
    this.MBps.push(t.MBps);
    this.cpu.push(t.cpuPerGB);
    this.rcv.push(t.rcvCpuPerGB);
  }
}

/** a, b, b2 and b3 at every ring and write size (REPEAT interleaved runs each). */
export async function throughput(rings: number[], writes: number[]): Promise<ThroughputRow[]> {
  const rows: ThroughputRow[] = [];
  for (const ring of rings) {
    for (const write of writes) {
      // A 1 MiB ring moves 4-15 GB/s here: four times the bytes, or a transfer lasts under 0.1 s.
      const bytes = bytesFor(write) * (ring >= MiB && write >= 4096 && !QUICK && !INSIDE_RIG ? 4 : 1);
      const samples = { 'dom0->domU': new Samples(), 'domU->dom0': new Samples() };
      // Each run interleaves C, b, b2 and b3, so that a noisy moment hits them all alike.
      for (let rep = 0; rep < REPEAT; rep++) {
        const c = cThroughput(ring, write, bytes);
        for (const dir of DIRS) {
          const sm = samples[dir];
          const b = await transfer((m) => vchanPair(ring, m), dir, write, false, bytes);
          // b2: the receiving stream reads into one reused buffer (onread), as C does; b3: it reads the
          // ring's own pages in place (onread with view: zero copy).
          const big = write === 65536;
          const b2 = big ? await transfer((m, o) => vchanPair(ring, m, o), dir, write, 'copy', bytes) : null;
          const b3 = big ? await transfer((m, o) => vchanPair(ring, m, o), dir, write, 'view', bytes) : null;
          sm.a.push(c[dir].MBps);
          sm.ca.push(c[dir].cpuPerGB);
          sm.ra.push(c[dir].rcvCpuPerGB);
          sm.b.add(b);
          sm.b2.add(b2);
          sm.b3.add(b3);
          if (b.eventsPerMiB !== undefined) sm.ev.push(b.eventsPerMiB);
          log(
            `ring ${ring} write ${write} ${dir} (run ${rep + 1}/${REPEAT}): C ${fmt(c[dir].MBps)} MB/s, VchanStream ${fmt(b.MBps)} MB/s` +
              (b2 && b3 ? `, onread ${fmt(b2.MBps)} MB/s, onread view ${fmt(b3.MBps)} MB/s` : ''),
          );
        }
      }
      for (const dir of DIRS) {
        const sm = samples[dir];
        const [ba, b2a, b3a] = [sm.b, sm.b2, sm.b3].map((r) => sm.vsA(r.MBps));
        rows.push({
          ring,
          write,
          dir,
          a: med(sm.a),
          b: med(sm.b.MBps),
          b2: med(sm.b2.MBps),
          b3: med(sm.b3.MBps),
          ba: med(ba),
          b2a: med(b2a),
          b3a: med(b3a),
          baSpan: span(ba),
          b2aSpan: span(b2a),
          b3aSpan: span(b3a),
          aCpuPerGB: med(sm.ca),
          bCpuPerGB: med(sm.b.cpu),
          b2CpuPerGB: med(sm.b2.cpu),
          b3CpuPerGB: med(sm.b3.cpu),
          aRcvCpuPerGB: med(sm.ra),
          bRcvCpuPerGB: med(sm.b.rcv),
          b2RcvCpuPerGB: med(sm.b2.rcv),
          b3RcvCpuPerGB: med(sm.b3.rcv),
          eventsPerMiB: med(sm.ev),
        });
      }
    }
  }
  return rows;
}

/** c and d at every write size; on the rig, d alone at 64 KiB. With the note for a d not measured. */
export async function baselines(): Promise<{ rows: Baseline[]; proxyNote?: string; memcpyMBps?: number }> {
  const rows: Baseline[] = [];
  if (INSIDE_RIG) {
    // d on real Xen: Xen's vchan-socket-proxy at both ends (dom0 <-> dom0), Node on Unix sockets.
    // dom0->domU only: the other direction stalled inside the proxies on the rig (2026-11-22, not
    // investigated further; it is Xen's program, not this library).
    const d = await transfer((m) => proxyPair(m), 'dom0->domU', 65536);
    rows.push({ write: 65536, dir: 'dom0->domU', d: d.MBps, dCpuPerGB: d.cpuPerGB });
    log(`write 65536 dom0->domU: via vchan-socket-proxy ${fmt(d.MBps)} MB/s`);
    return { rows };
  }
  // Xen's vchan-socket-proxy at both ends, Debian's libxenvchan over the mock's stable libraries
  // and its libxenctrl (native/mock/src/xenctrl.c).
  const hasProxy = fs.existsSync(PROXY);
  for (const write of WRITES) {
    for (const dir of DIRS) {
      const c = await transfer((m) => udsPair(m), dir, write);
      // dom0->domU only, as on the rig: domU->dom0 stalls inside the two proxies, on real Xen and on
      // the mock alike (both proxies idle in select(), 2026-12-02); it is Xen's program.
      const d = hasProxy && dir === 'dom0->domU' ? await transfer((m) => proxyPair(m), dir, write) : null;
      rows.push({ write, dir, c: c.MBps, d: d?.MBps, cCpuPerGB: c.cpuPerGB, dCpuPerGB: d?.cpuPerGB });
      log(
        `write ${write} ${dir}: net.Socket ${fmt(c.MBps)} MB/s, via vchan-socket-proxy ${d ? `${fmt(d.MBps)} MB/s` : '(not measured)'}`,
      );
    }
  }
  return {
    rows,
    proxyNote: hasProxy ? undefined : 'not measured: xen-utils (vchan-socket-proxy) is not installed',
    memcpyMBps: memcpyMBps(QUICK ? 1e9 : 4e9),
  };
}
