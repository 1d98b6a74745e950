/**
 * The parent's side of every pair in `npm run bench` (run.ts): the child (child.ts) and how it is
 * asked, the pairs (a vchan, a Unix socket, Xen's vchan-socket-proxy at both ends), and the two
 * measurements made over a pair: a transfer and 64-byte round trips.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';

import type { VchanOnread, VchanStream } from '../dist/cjs/index';
import type { ChildRequest, PairRequest } from './child';
import {
  bytesFor,
  cpuSeconds,
  type Dir,
  INSIDE_RIG,
  lib,
  MiB,
  onreadSink,
  type OnreadMode,
  PEER,
  recvBytes,
  root,
  sendBytes,
} from './common';

/** What the child answers. */
export type ChildReply = Record<string, unknown> & { id: number };

let child: ChildProcess | undefined;
let seq = 0;
const pending = new Map<number, { resolve: (m: ChildReply) => void; reject: (e: Error) => void }>();

/** Sends M to the child; resolves with its reply. */
export function ask(m: ChildRequest): Promise<ChildReply> {
  const id = ++seq;
  child!.send({ ...m, id });
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}

/** Starts the child (domain PEER) and waits for it to be ready. */
export async function startChild(): Promise<void> {
  const env = { ...process.env, XEN_MOCK_DOMID: String(PEER) };
  child = fork(path.join(__dirname, 'child.js'), INSIDE_RIG ? ['--inside-rig'] : [], {
    env,
    execArgv: ['--expose-gc'],
  });
  child.on('message', (m: ChildReply & { error?: string }) => {
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.error) p.reject(new Error(`child: ${m.error}`));
    else p.resolve(m);
  });
  await once(child, 'message');
}

export function stopChild(): void {
  child?.kill();
}

let pathSeq = 0;
/** A fresh vchan path under the child's domain. */
export function vchanPath(): string {
  return `data/vchan/${PEER}/bench-${process.pid}-${++pathSeq}`;
}

/** Our end of a pair, and the child's reply to the request that made its end. */
export type Pair = [Duplex, Promise<ChildReply>];
/** Makes a pair for the child's request MSG; ONREAD, where given, is our stream's. */
export type MakePair = (msg: PairRequest, onread?: VchanOnread) => Promise<Pair>;

/** A dom0 server at a fresh path and the child's client. */
export async function vchanPair(ring: number, childMsg: PairRequest, onread?: VchanOnread): Promise<Pair> {
  const p = vchanPath();
  const server = lib()
    .createServer({ domid: PEER, path: p, readMin: ring, writeMin: ring, ...(onread ? { onread } : {}) })
    .listen();
  const accepted = once(server, 'connection');
  const reply = ask({ ...childMsg, via: 'vchan', path: `/local/domain/0/${p}` });
  const [s] = (await accepted) as [VchanStream];
  server.close();
  return [s, reply];
}

/** A Unix socket server here and the child's client. */
export async function udsPair(
  childMsg: PairRequest,
  sock = path.join(os.tmpdir(), `xv-bench-${process.pid}-${++pathSeq}.sock`),
): Promise<Pair> {
  const server = net.createServer().listen(sock);
  await once(server, 'listening');
  const accepted = once(server, 'connection');
  const reply = ask({ ...childMsg, via: 'uds', path: sock });
  const [s] = (await accepted) as [net.Socket];
  server.close();
  return [s, reply];
}

/** Xen's vchan-socket-proxy (Debian's xen-utils-4.17). */
export const PROXY = '/usr/lib/xen-4.17/bin/vchan-socket-proxy';

/**
 * The environment that runs Debian's libxenvchan on the mock: the mock's stable libraries only,
 * and its libxenctrl (what the proxy's client mode asks of the hypervisor).
 */
function proxyEnv(domid: number): NodeJS.ProcessEnv {
  if (INSIDE_RIG) return process.env; // Xen's own libraries
  const dir = path.join(os.tmpdir(), `xv-bench-libs-${process.pid}`);
  if (!fs.existsSync(dir)) {
    fs.mkdirSync(dir);
    const libs = path.join(root, 'native/mock/build/lib');
    for (const f of fs.readdirSync(libs))
      if (/^lib(xenevtchn|xengnttab|xenstore|xenmock|xenctrl)\.so/.test(f))
        fs.symlinkSync(path.join(libs, f), path.join(dir, f));
  }
  return { ...process.env, LD_LIBRARY_PATH: dir, XEN_MOCK_DOMID: String(domid) };
}

async function waitFor(file: string, ms = 10000): Promise<void> {
  for (const t0 = Date.now(); !fs.existsSync(file);) {
    if (Date.now() - t0 > ms) throw new Error(`${file} never appeared`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Node -> Unix socket -> vchan-socket-proxy -> vchan -> vchan-socket-proxy -> Unix socket -> Node. */
export async function proxyPair(childMsg: PairRequest): Promise<Pair> {
  const p = vchanPath();
  const d0 = path.join(os.tmpdir(), `xv-bench-px0-${process.pid}-${pathSeq}.sock`);
  const dU = path.join(os.tmpdir(), `xv-bench-pxU-${process.pid}-${pathSeq}.sock`);
  const server = net.createServer().listen(d0);
  await once(server, 'listening');
  const accepted = once(server, 'connection');
  const procs = [
    spawn(PROXY, ['-m', 'server', String(PEER), p, d0], { env: proxyEnv(0), stdio: 'ignore' }),
    spawn(PROXY, ['-m', 'client', '0', `/local/domain/0/${p}`, dU], { env: proxyEnv(PEER), stdio: 'ignore' }),
  ];
  await waitFor(dU);
  const reply = ask({ ...childMsg, via: 'uds', path: dU });
  const [s] = (await accepted) as [net.Socket];
  server.close();
  s.once('close', () => {
    for (const pr of procs) pr.kill('SIGTERM');
    fs.rmSync(dU, { force: true });
  });
  return [s, reply];
}

/** One transfer's figures. */
export interface TransferResult {
  MBps: number;
  /** Both ends' CPU, s/GB. */
  cpuPerGB: number;
  /** The receiver's CPU alone, s/GB (what a zero-copy read saves shows there). */
  rcvCpuPerGB: number;
  /** Events dom0's stream took per MiB (VchanStream only). */
  eventsPerMiB?: number;
}

/**
 * One transfer over a pair made by MAKE; both ends' CPU counted. With ONREAD ('copy' or 'view')
 * the receiving VchanStream hands data to an onread callback instead of emitting 'data'.
 */
export async function transfer(
  make: MakePair,
  dir: Dir,
  write: number,
  onread: OnreadMode | false = false,
  bytes = bytesFor(write),
): Promise<TransferResult> {
  const dbg = process.env.BENCH_DEBUG
    ? (s: string) => process.stderr.write(`[${dir} ${write}] ${s}\n`)
    : () => undefined;
  const childRole: 'recv' | 'send' = dir === 'dom0->domU' ? 'recv' : 'send';
  const sink = onread && childRole === 'send' ? onreadSink(bytes, onread) : null;
  const [s, reply] = await make({ op: 'transfer', role: childRole, bytes, write, onread }, sink?.onread);
  dbg('paired');
  const closed = once(s, 'close');
  const t0 = process.hrtime.bigint();
  const c0 = process.cpuUsage();
  if (childRole === 'recv') {
    await sendBytes(s, bytes, write);
    await reply;
  } else {
    await (sink ? sink.done : recvBytes(s, bytes));
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const ours = cpuSeconds(c0);
  // Events dom0's stream took (write notifications when it receives, read ones when it sends).
  const events = s instanceof lib().VchanStream ? (s.ringState()?.events ?? 0) : undefined;
  const theirs = (await reply).cpu as number;
  if (childRole === 'recv') s.end();
  else s.resume();
  await closed;
  const rcv = childRole === 'recv' ? theirs : ours;
  return {
    MBps: bytes / secs / 1e6,
    cpuPerGB: ((ours + theirs) / bytes) * 1e9,
    rcvCpuPerGB: (rcv / bytes) * 1e9,
    eventsPerMiB: events === undefined ? undefined : events / (bytes / MiB),
  };
}

/** A round trip's percentiles, microseconds. */
export interface RoundTrips {
  p50: number;
  p99: number;
}

/** COUNT 64-byte round trips (after 200 to warm up) over a pair whose far end echoes. */
export async function roundTrips(make: MakePair, count: number): Promise<RoundTrips> {
  const [s, reply] = await make({ op: 'echo' });
  await reply;
  const msg = Buffer.alloc(64, 7);
  const rtt: number[] = [];
  let want = 0;
  let got = 0;
  let wake: (() => void) | null = null;
  s.on('data', (d: Buffer) => {
    got += d.length;
    if (got >= want && wake) wake();
  });
  for (let i = -200; i < count; i++) {
    const t0 = process.hrtime.bigint();
    want += 64;
    s.write(msg);
    if (got < want) await new Promise<void>((r) => (wake = r));
    wake = null;
    if (i >= 0) rtt.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  const closed = once(s, 'close');
  s.destroy();
  await closed;
  rtt.sort((a, b) => a - b);
  return { p50: rtt[rtt.length >> 1], p99: rtt[Math.floor(rtt.length * 0.99)] };
}
