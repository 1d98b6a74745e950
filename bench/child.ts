/**
 * The child of `npm run bench` (run.ts): the far end of every pair, in domain 5 on the mock (dom0
 * on the rig), driven over IPC by pairs.ts.
 */
import { once } from 'node:events';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';

import type { VchanOnread, VchanStream } from '../dist/cjs/index';
import { cpuSeconds, lib, onreadSink, type OnreadMode, processUsage, recvBytes, sendBytes } from './common';

/** What a pair is made for: one transfer, or echoing round trips. */
export type PairRequest =
  { op: 'transfer'; role: 'send' | 'recv'; bytes: number; write: number; onread: OnreadMode | false } | { op: 'echo' };

/** Where the child's end of a pair connects. */
export interface PairEnd {
  via: 'vchan' | 'uds';
  path: string;
}

/** What the parent asks (pairs.ts's ask()); its reply carries the id ask() adds. */
export type ChildRequest =
  (PairRequest & PairEnd) | { op: 'hold'; path: string; count: number } | { op: 'cpu' } | { op: 'release' };

async function open(m: PairEnd, onread?: VchanOnread): Promise<Duplex> {
  if (m.via === 'vchan')
    return lib().connect({ domid: 0, path: m.path, timeout: 30000, ...(onread ? { onread } : {}) });
  const s = net.connect(m.path);
  await once(s, 'connect');
  return s;
}

const held: VchanStream[] = [];

async function serve(m: ChildRequest & { id: number }): Promise<Record<string, unknown>> {
  switch (m.op) {
    case 'transfer': {
      const sink = m.onread && m.role === 'recv' ? onreadSink(m.bytes, m.onread) : null;
      const s = await open(m, sink?.onread);
      if (process.env.BENCH_DEBUG) process.stderr.write(`child: ${m.via} open, ${m.role} ${m.bytes}\n`);
      const c0 = process.cpuUsage();
      if (m.role === 'send') await sendBytes(s, m.bytes, m.write);
      else await (sink ? sink.done : recvBytes(s, m.bytes));
      const cpu = cpuSeconds(c0);
      // Reply first (the parent's clock stops on it), then end and wait for the close.
      process.send!({ id: m.id, cpu });
      if (m.role === 'send') s.end();
      await once(s, 'close');
      return {};
    }
    case 'echo': {
      const s = await open(m);
      s.on('data', (d: Buffer) => s.write(d));
      s.on('error', () => {});
      return { ready: true };
    }
    case 'hold': {
      // Connect M.count clients and keep them; report this process's cost per stream.
      const before = processUsage();
      for (let i = 0; i < m.count; i += 50) {
        const batch: Promise<VchanStream>[] = [];
        for (let j = i; j < Math.min(m.count, i + 50); j++)
          batch.push(lib().connect({ domid: 0, path: `${m.path}-${j}`, timeout: 60000 }));
        held.push(...(await Promise.all(batch)));
      }
      const after = processUsage();
      // Each held stream echoes what it gets (the server side drives the active ones).
      for (const s of held) {
        s.on('data', (d: Buffer) => s.write(d));
        s.on('error', () => {});
      }
      return { before, after };
    }
    case 'cpu':
      return { cpu: cpuSeconds() };
    case 'release':
      for (const s of held.splice(0)) s.destroy();
      return {};
  }
}

process.on('message', (m: ChildRequest & { id: number }) => {
  serve(m).then(
    (reply) => {
      if (m.op !== 'transfer') process.send!({ id: m.id, ...reply });
    },
    (e: Error & { code?: string }) => process.send!({ id: m.id, error: `${e.code ?? ''} ${e.stack}` }),
  );
});
process.send!({ ready: true });
