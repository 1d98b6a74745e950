/** `npm run bench -- --profile`: b (64 KiB ring and writes, both directions) under the inspector. */
import * as inspector from 'node:inspector';
import * as path from 'node:path';

import { transfer, vchanPair } from './pairs';

/** A function and its share of the self time, %. */
export interface ProfileLine {
  fn: string;
  pct: number;
}

/** Profiles VchanStream both ways; the 15 functions with the most self time in this process. */
export async function profile(): Promise<ProfileLine[]> {
  const session = new inspector.Session();
  session.connect();
  const post = <T = unknown>(m: string, p?: object) =>
    new Promise<T>((res, rej) => session.post(m, p, (e, r) => (e ? rej(e) : res(r as T))));
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 100 });
  await post('Profiler.start');
  await transfer((m) => vchanPair(65536, m), 'dom0->domU', 65536);
  await transfer((m) => vchanPair(65536, m), 'domU->dom0', 65536);
  const { profile: p } = await post<{ profile: inspector.Profiler.Profile }>('Profiler.stop');
  session.disconnect();
  const self = new Map<string, number>();
  const dt = new Map<number, number>();
  const samples = p.samples ?? [];
  for (let i = 0; i < samples.length; i++) dt.set(samples[i], (dt.get(samples[i]) || 0) + (p.timeDeltas?.[i] || 0));
  let total = 0;
  for (const n of p.nodes) {
    const us = dt.get(n.id) || 0;
    total += us;
    const f = n.callFrame;
    const key =
      `${f.functionName || '(anonymous)'} ${f.url ? path.basename(f.url) : ''}${f.url ? `:${f.lineNumber + 1}` : ''}`.trim();
    self.set(key, (self.get(key) || 0) + us);
  }
  return [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 15)
    .map(([fn, us]) => ({ fn, pct: (us / total) * 100 }));
}
