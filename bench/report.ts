/** The markdown of `npm run bench`'s report, and recording it in bench/RESULTS.md (--write). */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { fmt, MiB, QUICK, ratio, root } from './common';
import type { PerStream } from './cost';
import type { LatencySummary } from './latency';
import type { ProfileLine } from './profile';
import type { RigResult } from './rig';
import type { Baseline, ThroughputRow } from './throughput';

/** Everything one run measured (what --json writes, and --only prints). */
export interface BenchResult {
  date: string;
  quick: boolean;
  host: string;
  repeat: number;
  throughput: ThroughputRow[];
  baselines?: Baseline[];
  proxyNote?: string;
  memcpyMBps?: number;
  latency?: { a: LatencySummary; b: LatencySummary; c: LatencySummary };
  cost: { idle?: { streams: number; seconds: number; cpuMs: number }; perStream?: PerStream };
  profile?: ProfileLine[];
  rig?: RigResult;
}

/** The report of R, in markdown. */
export function report(r: BenchResult): string {
  const L: string[] = [];
  const k = (n: number) => (n >= MiB ? `${n / MiB} MiB` : n >= 1024 ? `${n / 1024} KiB` : `${n} B`);
  L.push(
    `Run: \`npm run bench${QUICK ? ' -- --quick' : ''}\`, ${r.date.slice(0, 10)}, ${r.host}, mock hypervisor (dom0 <-> domain 5, two processes).`,
    '',
  );
  L.push('### Throughput, MB/s (a: C libxenvchan, b: VchanStream; same mock, ring, library)', '');
  L.push(
    'b2 is b with the receiving stream reading into one reused buffer (the `onread` option), as the C program does; ' +
      'b3 with it reading the ring in place (`onread` with `view: true`: zero copy); 64 KiB writes only. ' +
      (r.repeat > 1
        ? `Medians of ${r.repeat} interleaved runs; ratios are taken run by run against the C run beside it, with their spread (min-max).`
        : 'One run.'),
    '',
  );
  L.push(
    '| ring | write | direction | a: C | b: VchanStream | b/a | b2: onread | b2/a | b3: onread view | b3/a | CPU s/GB a | CPU s/GB b | CPU s/GB b2 | CPU s/GB b3 |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  );
  const rr = (m: number | undefined, sp: [number, number] | undefined, x: number | undefined, a: number | undefined) =>
    m === undefined ? ratio(x, a) : `${m.toFixed(2)}x${sp ? ` (${sp[0].toFixed(2)}-${sp[1].toFixed(2)})` : ''}`;
  for (const t of r.throughput)
    L.push(
      `| ${k(t.ring)} | ${k(t.write)} | ${t.dir} | ${fmt(t.a)} | ${fmt(t.b)} | ${rr(t.ba, t.baSpan, t.b, t.a)} | ${fmt(t.b2)} | ${rr(t.b2a, t.b2aSpan, t.b2, t.a)} | ${fmt(t.b3)} | ${rr(t.b3a, t.b3aSpan, t.b3, t.a)} | ${fmt(t.aCpuPerGB, 2)} | ${fmt(t.bCpuPerGB, 2)} | ${fmt(t.b2CpuPerGB, 2)} | ${fmt(t.b3CpuPerGB, 2)} |`,
    );
  L.push(
    '',
    "The receiver's CPU alone, s/GB (C reads each byte out of the ring with a copy; b3 reads it in place):",
    '',
    '| ring | write | direction | a: C | b | b2: onread | b3: onread view | b3 vs a | b: events per MiB at dom0 |',
    '|---|---|---|---|---|---|---|---|---|',
  );
  for (const t of r.throughput.filter((x) => x.b3 !== undefined))
    L.push(
      `| ${k(t.ring)} | ${k(t.write)} | ${t.dir} | ${fmt(t.aRcvCpuPerGB, 3)} | ${fmt(t.bRcvCpuPerGB, 3)} | ${fmt(t.b2RcvCpuPerGB, 3)} | ${fmt(t.b3RcvCpuPerGB, 3)} | ${ratio(t.b3RcvCpuPerGB, t.aRcvCpuPerGB)} | ${fmt(t.eventsPerMiB, 1)} |`,
    );
  L.push('', '### Against what a Node tool has today, MB/s (b at the 64 KiB ring)', '');
  L.push(
    '| write | direction | b: VchanStream | c: net.Socket, Unix socket | d: via vchan-socket-proxy | b/c | b/d |',
    '|---|---|---|---|---|---|---|',
  );
  for (const bl of r.baselines ?? []) {
    const b = r.throughput.find((t) => t.ring === 65536 && t.write === bl.write && t.dir === bl.dir);
    L.push(
      `| ${k(bl.write)} | ${bl.dir} | ${fmt(b?.b)} | ${fmt(bl.c)} | ${fmt(bl.d)} | ${ratio(b?.b, bl.c)} | ${ratio(b?.b, bl.d)} |`,
    );
  }
  if (r.proxyNote && !(r.baselines ?? []).some((b) => b.d))
    L.push('', `d (Node -> vchan-socket-proxy -> vchan -> vchan-socket-proxy -> Node): ${r.proxyNote}.`);
  else
    L.push(
      '',
      "d runs Xen's vchan-socket-proxy at both ends (Debian's libxenvchan on the mock's libraries), dom0->domU only: " +
        'domU->dom0 stalls inside the two proxies (both idle in select()), on real Xen and on the mock alike.',
    );
  const best = Math.max(...r.throughput.filter((t) => t.ring === 65536).map((t) => t.a ?? 0));
  L.push(
    '',
    `e: memcpy, one core: ${fmt(r.memcpyMBps)} MB/s. A vchan copies each byte twice (into the ring, out of it), so its`,
  );
  L.push(
    `ceiling is about ${fmt((r.memcpyMBps ?? NaN) / 2)} MB/s for data that does not fit in the caches; the best C figure at the 64 KiB`,
  );
  L.push(
    `ring is ${ratio(best, (r.memcpyMBps ?? NaN) / 2)} of that. (A 1 MiB ring and its buffers stay in the L2 cache, which is why C exceeds it there.)`,
    '',
  );
  L.push('### 64-byte request/response round trips, microseconds', '');
  const lat = r.latency!;
  const span = (v: LatencySummary, key: 'p50' | 'vsA' | 'vsC', d: number) =>
    v.runs > 1 ? ` (${v[`${key}Span`].map((x) => x.toFixed(d)).join('-')})` : '';
  if (lat.a.runs > 1)
    L.push(
      `Medians of ${lat.a.runs} interleaved runs of 20,000 round trips each (p50 spread min-max); the ratios are taken run by run.`,
      '',
    );
  L.push('| | p50 | p99 | p50 vs a | p50 vs c |', '|---|---|---|---|---|');
  for (const [name, v] of [
    ['a: C libxenvchan', lat.a],
    ['b: VchanStream', lat.b],
    ['c: net.Socket, Unix socket', lat.c],
  ] as const)
    L.push(
      `| ${name} | ${fmt(v.p50, 1)}${span(v, 'p50', 1)} | ${fmt(v.p99, 1)} | ${v.vsA === undefined ? ratio(v.p50, lat.a.p50) : `${v.vsA.toFixed(2)}x${span(v, 'vsA', 2)}`} | ${v.vsC === undefined ? ratio(v.p50, lat.c.p50) : `${v.vsC.toFixed(2)}x${span(v, 'vsC', 2)}`} |`,
    );
  const ps = r.cost.perStream!;
  const idle = r.cost.idle!;
  L.push('', '### Cost', '');
  L.push(
    `- Idle: a process holding ${idle.streams} open idle streams used ${fmt(idle.cpuMs, 1)} ms of CPU in ${idle.seconds} s.`,
  );
  L.push(
    `- ${ps.count} concurrent streams: per stream ${fmt(ps.server.rssKiB, 1)} KiB RSS and ${fmt(ps.server.fds, 2)} fds on the server side,`,
  );
  L.push(
    `  ${fmt(ps.client.rssKiB, 1)} KiB and ${fmt(ps.client.fds, 2)} fds on the client side; threads: ${ps.server.threadsBefore} -> ${ps.server.threads} (server process),`,
  );
  L.push(`  ${ps.client.threadsBefore} -> ${ps.client.threads} (client process): no thread per stream.`);
  if (ps.idle)
    L.push(
      `- The ${ps.count} open and idle: ${fmt(ps.idle.serverMs, 1)} ms CPU (server process) and ${fmt(ps.idle.clientMs, 1)} ms (client process) in ${ps.idle.seconds} s.`,
    );
  if (ps.active)
    L.push(
      `- ${ps.active.streams} of them active at once (64-byte round trips, the rest idle): ${fmt(ps.active.tripsPerSecond)} round trips/s,`,
      `  CPU per round trip ${fmt(ps.active.serverUsPerTrip, 1)} us (server process) + ${fmt(ps.active.clientUsPerTrip, 1)} us (client process).`,
    );
  L.push('', '### On real Xen (QEMU rig, dom0 <-> dom0, ratios only: emulation distorts absolutes)', '');
  const rig = r.rig ?? { skipped: 'not run' };
  if (rig.skipped !== undefined) L.push(`Skipped: ${rig.skipped}.`);
  else {
    if (rig.from)
      L.push(
        `From \`bash bench/rig.sh\` (${rig.from}); a, b, b2 and d were measured side by side in that rig run.`,
        '',
      );
    for (const t of rig.throughput) {
      const d = rig.baselines?.find((x) => x.dir === t.dir)?.d;
      L.push(
        `- throughput, 64 KiB ring and writes, ${t.dir}: b/a = ${ratio(t.b, t.a)}, b2/a = ${ratio(t.b2, t.a)}, b3/a = ${ratio(t.b3, t.a)}, b/d = ${ratio(t.b, d)} (d: Node -> vchan-socket-proxy -> vchan -> vchan-socket-proxy -> Node)`,
      );
    }
    L.push(
      `- 64-byte round trip p50: b/a = ${ratio(rig.latency.b.p50, rig.latency.a.p50)}; p99: b/a = ${ratio(rig.latency.b.p99, rig.latency.a.p99)}` +
        (rig.latency.c
          ? `; c/a = ${ratio(rig.latency.c.p50, rig.latency.a.p50)} (c: Node net.Socket over a Unix socket, same rig run)`
          : ''),
    );
  }
  if (r.profile) {
    L.push('', '### Profile of b (64 KiB ring and writes, both directions; self time in this process)', '');
    L.push('| function | self % |', '|---|---|');
    for (const p of r.profile) L.push(`| \`${p.fn}\` | ${fmt(p.pct, 1)} |`);
  }
  L.push('');
  return L.join('\n');
}

/** Puts MD in bench/RESULTS.md as its latest run (between its markers). */
export function writeResults(md: string): void {
  const file = path.join(root, 'bench', 'RESULTS.md');
  const text = fs.readFileSync(file, 'utf8');
  const start = '<!-- bench:start -->';
  const end = '<!-- bench:end -->';
  const block = `${start}\n## Latest run\n\n${md}\n${end}`;
  const i = text.indexOf(start);
  const j = text.indexOf(end);
  const out =
    i >= 0 && j > i
      ? text.slice(0, i) + block + text.slice(j + end.length)
      : text.replace(/\n## /, `\n${block}\n\n## `);
  fs.writeFileSync(file, out);
  process.stderr.write(`bench: recorded in ${path.relative(process.cwd(), file)}\n`);
}
