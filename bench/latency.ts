/** The latency part of `npm run bench`: 64-byte round trips, a (C) against b (VchanStream) and c (a Unix socket). */
import { cLatency } from './cref';
import { fmt, INSIDE_RIG, QUICK, REPEAT } from './common';
import { roundTrips, type RoundTrips, udsPair, vchanPair } from './pairs';
import { median } from './stats';

/** One transport's round trips over REPEAT runs: medians, spreads, and ratios taken run by run. */
export interface LatencySummary {
  p50: number;
  p99: number;
  p50Span: [number, number];
  vsA: number;
  vsASpan: [number, number];
  vsC: number;
  vsCSpan: [number, number];
  runs: number;
}

const spread = (xs: number[]): [number, number] => [Math.min(...xs), Math.max(...xs)];

/**
 * REPEAT runs, interleaved (C, VchanStream, Unix socket in turn); each figure the median of the
 * runs' p50s (and p99s), each ratio taken run by run against the C run beside it.
 */
export async function latency(): Promise<{ a: LatencySummary; b: LatencySummary; c: LatencySummary }> {
  const count = QUICK || INSIDE_RIG ? 2000 : 20000;
  const runs: Record<'a' | 'b' | 'c', RoundTrips[]> = { a: [], b: [], c: [] };
  for (let rep = 0; rep < REPEAT; rep++) {
    runs.a.push(cLatency(count));
    runs.b.push(await roundTrips((m) => vchanPair(65536, m), count));
    // c inside the rig too: whether Xen's event delivery, not Node, sets the floor there.
    runs.c.push(await roundTrips((m) => udsPair(m), count));
    const [a, b, c] = [runs.a[rep], runs.b[rep], runs.c[rep]];
    process.stderr.write(
      `round trips (run ${rep + 1}/${REPEAT}): C ${fmt(a.p50, 1)} us, VchanStream ${fmt(b.p50, 1)} us, Unix socket ${fmt(c.p50, 1)} us\n`,
    );
  }
  const summary = (key: 'a' | 'b' | 'c'): LatencySummary => {
    const p50s = runs[key].map((v) => v.p50);
    const vsA = p50s.map((v, i) => v / runs.a[i].p50);
    const vsC = p50s.map((v, i) => v / runs.c[i].p50);
    return {
      p50: median(p50s),
      p99: median(runs[key].map((v) => v.p99)),
      p50Span: spread(p50s),
      vsA: median(vsA),
      vsASpan: spread(vsA),
      vsC: median(vsC),
      vsCSpan: spread(vsC),
      runs: REPEAT,
    };
  };
  return { a: summary('a'), b: summary('b'), c: summary('c') };
}
