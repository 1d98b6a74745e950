#!/usr/bin/env node
'use strict';
// npm run bench: every transport side by side in ONE run on this machine, printed as a table of
// absolute figures and ratios (absolutes are noisy on a shared machine; ratios are the result).
//
//   a  C libxenvchan over the mock (bench/native/vchan_bench.c): the native ceiling
//   b  VchanStream over the same mock, ring and library
//   c  net.Socket over a Unix domain socket between two Node processes: the Node baseline
//   d  Node -> Unix socket -> Xen's vchan-socket-proxy -> vchan -> vchan-socket-proxy -> Unix socket
//      -> Node: today's path for a Node tool (Debian's libxenvchan on the mock's libraries)
//   e  memcpy bandwidth of one core: the physical limit (a vchan moves each byte twice)
// plus 64-byte round trips (a, b, c), CPU per GB (a, b), the idle CPU of 100 open streams, memory
// and fds per stream at 1,000 streams, and a vs b on real Xen in the QEMU rig (test/xen).
// Every vchan pair is two processes: this one in dom0, a child in domain 5 (on the rig, dom0 too).
//
//   node bench/run.js [--quick] [--no-rig] [--profile] [--json FILE] [--write]
//     --quick    small transfers (a smoke run; the figures mean little)
//     --no-rig   skip the real-Xen part; --rig-json F: take it from an earlier bench/rig.sh run
//     --profile  also profile b (64 KiB ring and writes, dom0 -> domU) and print the hottest functions
//     --write    record the run in bench/RESULTS.md (with the command and the date)
//     --only P   one part (throughput, latency or cost), printed as JSON; no rig
//   BENCH_REPEAT (1), BENCH_RINGS, BENCH_WRITES; BENCH_STREAMS (10000) streams held open at once in
//   the cost part, BENCH_ACTIVE (1000) of them in round trips at once.
const { execFileSync, fork, spawn, spawnSync } = require('node:child_process');
const { once } = require('node:events');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const root = path.join(__dirname, '..');
const argv = process.argv.slice(2);
const flag = (f) => argv.includes(f);
const { median } = require('./stats');
const QUICK = flag('--quick');
// --only throughput|latency|cost: that part alone, printed as JSON (the report needs every part).
const ONLY = argv.includes('--only') ? argv[argv.indexOf('--only') + 1] : null;
const part = (name) => ONLY === null || ONLY === name;
const INSIDE_RIG = flag('--inside-rig'); // set by bench/rig-job.sh inside the rig's dom0
const PEER = INSIDE_RIG ? 0 : 5; // the child's domain
const RINGS = [4096, 65536, 1 << 20];
const WRITES = [64, 4096, 65536];
const DIRS = ['dom0->domU', 'domU->dom0'];
const MiB = 1 << 20;
// Streams held open at once in one process, and how many of them exchange round trips at once.
const STREAMS = Number(process.env.BENCH_STREAMS ?? 10000);
const ACTIVE = Number(process.env.BENCH_ACTIVE ?? 1000);

function bytesFor(write) {
  if (QUICK) return { 64: 1 * MiB, 4096: 8 * MiB, 65536: 32 * MiB }[write];
  if (INSIDE_RIG) return { 64: 2 * MiB, 4096: 32 * MiB, 65536: 64 * MiB }[write];
  return { 64: 16 * MiB, 4096: 256 * MiB, 65536: 768 * MiB }[write];
}

// ---------------------------------------------------------------------------------------------
// The child: the other end of every pair, driven over IPC.

function cpuSeconds(c0) {
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / 1e6;
}

function sendBytes(s, bytes, write) {
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

function recvBytes(s, bytes) {
  return new Promise((resolve, reject) => {
    let got = 0;
    s.once('error', reject);
    s.on('data', (d) => {
      got += d.length;
      if (got >= bytes) resolve();
    });
  });
}

/** An onread option counting BYTES (MODE 'copy': one reused 1 MiB buffer; 'view': zero copy, the
 * ring's own pages); done resolves once they are in. */
function onreadSink(bytes, mode) {
  let got = 0;
  let resolve;
  const done = new Promise((r) => (resolve = r));
  const callback = (n) => {
    got += n;
    if (got >= bytes) resolve();
  };
  const onread = mode === 'view' ? { view: true, callback } : { buffer: Buffer.allocUnsafe(MiB), callback };
  return { onread, done };
}

/** Echoes every byte back (the far end of a round-trip measurement). */
function echo(s) {
  s.on('data', (d) => s.write(d));
}

async function childMain() {
  const x = require(root);
  const open = async (m, onread) => {
    if (m.via === 'vchan') return x.connect({ domid: 0, path: m.path, timeout: 30000, ...(onread ? { onread } : {}) });
    const s = net.connect(m.path);
    await once(s, 'connect');
    return s;
  };
  const held = [];
  process.on('message', async (/** @type {any} */ m) => {
    try {
      if (m.op === 'transfer') {
        const sink = m.onread && m.role === 'recv' ? onreadSink(m.bytes, m.onread) : null;
        const s = await open(m, sink?.onread);
        if (process.env.BENCH_DEBUG) process.stderr.write(`child: ${m.via} open, ${m.role} ${m.bytes}\n`);
        const c0 = process.cpuUsage();
        if (m.role === 'send') await sendBytes(s, m.bytes, m.write);
        else await (sink ? sink.done : recvBytes(s, m.bytes));
        process.send({ id: m.id, cpu: cpuSeconds(c0) });
        if (m.role === 'send') s.end();
        await once(s, 'close');
      } else if (m.op === 'echo') {
        const s = await open(m);
        echo(s);
        s.on('error', () => {});
        process.send({ id: m.id, ready: true });
      } else if (m.op === 'hold') {
        // Connect M.count clients and keep them; report this process's cost per stream.
        const before = usage();
        for (let i = 0; i < m.count; i += 50) {
          const batch = [];
          for (let j = i; j < Math.min(m.count, i + 50); j++)
            batch.push(x.connect({ domid: 0, path: `${m.path}-${j}`, timeout: 60000 }));
          held.push(...(await Promise.all(batch)));
        }
        const after = usage();
        // Each held stream echoes what it gets (the server side drives the active ones).
        for (const s of held) {
          s.on('data', (d) => s.write(d));
          s.on('error', () => {});
        }
        process.send({ id: m.id, before, after });
      } else if (m.op === 'cpu') {
        const u = process.cpuUsage();
        process.send({ id: m.id, cpu: (u.user + u.system) / 1e6 });
      } else if (m.op === 'release') {
        for (const s of held.splice(0)) s.destroy();
        process.send({ id: m.id });
      }
    } catch (e) {
      process.send({ id: m.id, error: `${e.code || ''} ${e.stack}` });
    }
  });
  process.send({ ready: true });
}

function usage() {
  if (global.gc) global.gc();
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  return {
    rss: process.memoryUsage().rss,
    fds: fs.readdirSync('/proc/self/fd').length,
    threads: Number(/^Threads:\s+(\d+)/m.exec(status)[1]),
  };
}

// ---------------------------------------------------------------------------------------------
// The parent: dom0.

let x;
let child;
let seq = 0;
const pending = new Map();

function ask(m) {
  const id = ++seq;
  child.send({ ...m, id });
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}

async function startChild() {
  const env = { ...process.env, XEN_MOCK_DOMID: String(PEER) };
  child = fork(__filename, ['--child', ...(INSIDE_RIG ? ['--inside-rig'] : [])], { env, execArgv: ['--expose-gc'] });
  child.on('message', (/** @type {any} */ m) => {
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.error) p.reject(new Error(`child: ${m.error}`));
    else p.resolve(m);
  });
  await once(child, 'message');
}

let pathSeq = 0;
function vchanPath() {
  return `data/vchan/${PEER}/bench-${process.pid}-${++pathSeq}`;
}

/** A dom0 server at a fresh path and the child's client: resolves to [our stream, child's request]. */
async function vchanPair(ring, childMsg, onread) {
  const p = vchanPath();
  const server = x
    .createServer({ domid: PEER, path: p, readMin: ring, writeMin: ring, ...(onread ? { onread } : {}) })
    .listen();
  const accepted = once(server, 'connection');
  const reply = ask({ ...childMsg, via: 'vchan', path: `/local/domain/0/${p}` });
  const [s] = await accepted;
  server.close();
  return [s, reply];
}

async function udsPair(childMsg, sock = path.join(os.tmpdir(), `xv-bench-${process.pid}-${++pathSeq}.sock`)) {
  const server = net.createServer().listen(sock);
  await once(server, 'listening');
  const accepted = once(server, 'connection');
  const reply = ask({ ...childMsg, via: 'uds', path: sock });
  const [s] = await accepted;
  server.close();
  return [s, reply];
}

/**
 * One transfer over a pair made by MAKE; both ends' CPU counted. With ONREAD ('copy' or 'view')
 * the receiving VchanStream hands data to an onread callback instead of emitting 'data'.
 * @param {(msg: object, onread?: object) => Promise<any[]>} make
 * @param {string} dir
 * @param {number} write
 * @param {false | 'copy' | 'view'} [onread]
 * @param {number} [bytes]
 */
async function transfer(make, dir, write, onread = false, bytes = bytesFor(write)) {
  const dbg = process.env.BENCH_DEBUG ? (s) => process.stderr.write(`[${dir} ${write}] ${s}\n`) : () => {};
  const childRole = dir === 'dom0->domU' ? 'recv' : 'send';
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
  const events = s instanceof x.VchanStream ? (s.ringState()?.events ?? 0) : undefined;
  const theirs = (await reply).cpu;
  if (childRole === 'recv') s.end();
  else s.resume();
  await closed;
  // The receiver's CPU apart: what a zero-copy read saves shows there.
  const rcv = childRole === 'recv' ? theirs : ours;
  return {
    MBps: bytes / secs / 1e6,
    cpuPerGB: ((ours + theirs) / bytes) * 1e9,
    rcvCpuPerGB: (rcv / bytes) * 1e9,
    eventsPerMiB: events === undefined ? undefined : events / (bytes / MiB),
  };
}

async function roundTrips(make, count) {
  const [s, reply] = await make({ op: 'echo' });
  await reply;
  const msg = Buffer.alloc(64, 7);
  const rtt = [];
  let want = 0;
  let got = 0;
  let wake = null;
  s.on('data', (d) => {
    got += d.length;
    if (got >= want && wake) wake();
  });
  for (let i = -200; i < count; i++) {
    const t0 = process.hrtime.bigint();
    want += 64;
    s.write(msg);
    if (got < want) await new Promise((r) => (wake = r));
    wake = null;
    if (i >= 0) rtt.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  const closed = once(s, 'close');
  s.destroy();
  await closed;
  rtt.sort((a, b) => a - b);
  return { p50: rtt[rtt.length >> 1], p99: rtt[Math.floor(rtt.length * 0.99)] };
}

// --- a and e: the C program -----------------------------------------------------------------

function cBench(args, env = {}) {
  const bin = INSIDE_RIG
    ? path.join(root, '.rig', 'vchan_bench_real')
    : path.join(root, 'bench', 'build', 'vchan_bench');
  const out = execFileSync(bin, args, { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 1 << 24 });
  return out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
}

function cThroughput(ring, write, bytes) {
  const lines = cBench(
    ['throughput', String(ring), String(write), String(bytes)],
    INSIDE_RIG ? { VCHAN_BENCH_PEER: '0' } : {},
  );
  const out = {};
  for (const dir of DIRS) {
    const snd = lines.find((l) => l.bench === 'vchan-c' && l.direction === dir);
    const rcv = lines.find((l) => l.bench === 'vchan-c-receiver' && l.direction === dir);
    out[dir] = {
      MBps: snd.MBps,
      cpuPerGB: ((snd.senderCpuSeconds + rcv.receiverCpuSeconds) / snd.bytes) * 1e9,
      rcvCpuPerGB: (rcv.receiverCpuSeconds / snd.bytes) * 1e9,
    };
  }
  return out;
}

// --- d: Xen's vchan-socket-proxy at both ends -------------------------------------------------

const PROXY = '/usr/lib/xen-4.17/bin/vchan-socket-proxy';

/** The environment that runs Debian's libxenvchan on the mock: the mock's stable libraries only,
 * and its libxenctrl (what the proxy's client mode asks of the hypervisor). */
function proxyEnv(domid) {
  if (INSIDE_RIG) return process.env; // Xen's own libraries
  const dir = path.join(os.tmpdir(), `xv-bench-libs-${process.pid}`);
  if (!fs.existsSync(dir)) {
    fs.mkdirSync(dir);
    const lib = path.join(root, 'native/mock/build/lib');
    for (const f of fs.readdirSync(lib))
      if (/^lib(xenevtchn|xengnttab|xenstore|xenmock|xenctrl)\.so/.test(f))
        fs.symlinkSync(path.join(lib, f), path.join(dir, f));
  }
  return { ...process.env, LD_LIBRARY_PATH: dir, XEN_MOCK_DOMID: String(domid) };
}

async function waitFor(file, ms = 10000) {
  for (const t0 = Date.now(); !fs.existsSync(file);) {
    if (Date.now() - t0 > ms) throw new Error(`${file} never appeared`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function proxyPair(childMsg) {
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
  const [s] = await accepted;
  server.close();
  s.once('close', () => {
    for (const pr of procs) pr.kill('SIGTERM');
    fs.rmSync(dU, { force: true });
  });
  return [s, reply];
}

// --- cost: idle CPU and per-stream memory -----------------------------------------------------

async function idleCpu(n, seconds) {
  const streams = [];
  const servers = [];
  const base = vchanPath();
  for (let i = 0; i < n; i++) {
    const server = x.createServer({ domid: PEER, path: `${base}-${i}`, readMin: 1024, writeMin: 1024 }).listen();
    servers.push(server);
  }
  const accepted = servers.map((s) => once(s, 'connection'));
  await ask({ op: 'hold', path: `/local/domain/0/${base}`, count: n });
  for (const a of accepted) streams.push((await a)[0]);
  const c0 = process.cpuUsage();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const cpuMs = cpuSeconds(c0) * 1000;
  await ask({ op: 'release' });
  await Promise.all(streams.map((s) => (s.destroyed ? null : (s.destroy(), once(s, 'close')))));
  for (const s of servers) s.close();
  return { streams: n, seconds, cpuMs };
}

async function perStream(n, active) {
  const base = vchanPath();
  const before = usage();
  const servers = [];
  for (let i = 0; i < n; i++)
    servers.push(x.createServer({ domid: PEER, path: `${base}-${i}`, readMin: 1024, writeMin: 1024 }).listen());
  const accepted = servers.map((s) => once(s, 'connection'));
  const c = await ask({ op: 'hold', path: `/local/domain/0/${base}`, count: n });
  const streams = [];
  for (const a of accepted) streams.push((await a)[0]);
  const after = usage();
  const per = (a, b) => ({
    rssKiB: (a.rss - b.rss) / n / 1024,
    fds: (a.fds - b.fds) / n,
    threads: a.threads,
    threadsBefore: b.threads,
  });
  const out = { count: n, server: per(after, before), client: per(c.after, c.before) };
  // CPU seconds used so far by this process and by the client process.
  const cpuBoth = async () => ({ server: cpuSeconds({ user: 0, system: 0 }), client: (await ask({ op: 'cpu' })).cpu });
  // All N open and idle: the CPU both processes use meanwhile.
  const idleSeconds = QUICK ? 1 : 3;
  let t0 = await cpuBoth();
  await new Promise((r) => setTimeout(r, idleSeconds * 1000));
  let t1 = await cpuBoth();
  out.idle = {
    seconds: idleSeconds,
    serverMs: (t1.server - t0.server) * 1000,
    clientMs: (t1.client - t0.client) * 1000,
  };
  // ACTIVE of them at once: 64-byte round trips (the client side echoes), each stream one at a
  // time, for a fixed time; the rest stay open and idle.
  const act = streams.slice(0, Math.min(active, n));
  const msg = Buffer.alloc(64, 7);
  const seconds = QUICK ? 1 : 3;
  let trips = 0;
  let running = true;
  t0 = await cpuBoth();
  const started = process.hrtime.bigint();
  const stop = setTimeout(() => (running = false), seconds * 1000);
  await Promise.all(
    act.map(async (s) => {
      while (running) {
        const got = once(s, 'data');
        s.write(msg);
        await got;
        trips++;
      }
    }),
  );
  clearTimeout(stop);
  const wall = Number(process.hrtime.bigint() - started) / 1e9;
  t1 = await cpuBoth();
  out.active = {
    streams: act.length,
    seconds: wall,
    tripsPerSecond: trips / wall,
    serverUsPerTrip: ((t1.server - t0.server) * 1e6) / trips,
    clientUsPerTrip: ((t1.client - t0.client) * 1e6) / trips,
  };
  await ask({ op: 'release' });
  await Promise.all(streams.map((s) => (s.destroyed ? null : (s.destroy(), once(s, 'close')))));
  for (const s of servers) s.close();
  return out;
}

// --- the rig ----------------------------------------------------------------------------------

function rigPart() {
  // test/xen/kernel.sh's default cache: the kernel's own folder.
  const kernel = process.env.XEN_RIG_KERNEL || '6.12';
  const cache = process.env.XEN_RIG_CACHE || path.join(os.homedir(), '.cache', 'xen-vchan-rig', kernel);
  if (flag('--no-rig')) return { skipped: '--no-rig' };
  // --rig-json FILE: the rig part from an earlier `bash bench/rig.sh` (its own side-by-side run).
  const given = argv.includes('--rig-json') ? argv[argv.indexOf('--rig-json') + 1] : null;
  if (given)
    return {
      ...JSON.parse(fs.readFileSync(given, 'utf8')),
      from: `${given}, recorded ${fs.statSync(given).mtime.toISOString().slice(0, 16)}Z`,
    };
  if (!fs.existsSync(path.join(cache, 'stamp')))
    return { skipped: `no rig built (npm run test:xen builds it into ${cache})` };
  const r = spawnSync('npm', ['run', '-s', 'bench:rig'], { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
  const file = path.join(root, '.rig', 'bench.json');
  if (r.status !== 0 || !fs.existsSync(file)) return { skipped: `the rig run failed (exit ${r.status})` };
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

// --- main -------------------------------------------------------------------------------------

const fmt = (n, d = 0) => (n === undefined || n === null || Number.isNaN(n) ? '-' : n.toFixed(d));
const ratio = (a, b) => (a && b ? `${(a / b).toFixed(2)}x` : '-');

async function main() {
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
  x = require(root);
  const keeper = new x.Xenstore(); // one broker for the whole run
  await startChild();
  const started = new Date();
  const res = {
    date: started.toISOString(),
    quick: QUICK,
    host: `${os.cpus().length} cores, Node ${process.version}`,
    throughput: [],
    latency: {},
    cost: {},
  };
  const log = (s) => process.stderr.write(`${s}\n`);

  const rings = INSIDE_RIG ? [65536] : process.env.BENCH_RINGS ? process.env.BENCH_RINGS.split(',').map(Number) : RINGS;
  const writes = INSIDE_RIG
    ? [65536]
    : process.env.BENCH_WRITES
      ? process.env.BENCH_WRITES.split(',').map(Number)
      : WRITES;
  // Each measurement REPEAT times, interleaved (C, b, b2, b3 in turn), so a noisy moment hits them
  // all alike; the table gives medians, and the spread (min-max) when REPEAT > 1.
  const REPEAT = Math.max(1, Number(process.env.BENCH_REPEAT ?? 1));
  res.repeat = REPEAT;
  for (const ring of part('throughput') ? rings : []) {
    for (const write of writes) {
      // A 1 MiB ring moves 4-15 GB/s here: four times the bytes, or a transfer lasts under 0.1 s.
      const bytes = bytesFor(write) * (ring >= MiB && write >= 4096 && !QUICK && !INSIDE_RIG ? 4 : 1);
      const samples = Object.fromEntries(
        DIRS.map((d) => [
          d,
          { a: [], b: [], b2: [], b3: [], ca: [], cb: [], cb2: [], cb3: [], ra: [], rb: [], rb2: [], rb3: [], ev: [] },
        ]),
      );
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
          sm.b.push(b.MBps);
          sm.cb.push(b.cpuPerGB);
          sm.rb.push(b.rcvCpuPerGB);
          sm.ev.push(b.eventsPerMiB);
          if (b2) {
            sm.b2.push(b2.MBps);
            sm.cb2.push(b2.cpuPerGB);
            sm.rb2.push(b2.rcvCpuPerGB);
          }
          if (b3) {
            sm.b3.push(b3.MBps);
            sm.cb3.push(b3.cpuPerGB);
            sm.rb3.push(b3.rcvCpuPerGB);
          }
          log(
            `ring ${ring} write ${write} ${dir} (run ${rep + 1}/${REPEAT}): C ${fmt(c[dir].MBps)} MB/s, VchanStream ${fmt(b.MBps)} MB/s` +
              (b2 ? `, onread ${fmt(b2.MBps)} MB/s, onread view ${fmt(b3.MBps)} MB/s` : ''),
          );
        }
      }
      for (const dir of DIRS) {
        const sm = samples[dir];
        // Ratios run by run (each against the C run beside it), then their median and spread.
        const ratios = (xs) => (xs.length ? xs.map((v, i) => v / sm.a[i]) : undefined);
        const med = (xs) => (xs && xs.length ? median(xs) : undefined);
        const span = (xs) => (xs && xs.length > 1 ? [Math.min(...xs), Math.max(...xs)] : undefined);
        res.throughput.push({
          ring,
          write,
          dir,
          a: med(sm.a),
          b: med(sm.b),
          b2: med(sm.b2),
          b3: med(sm.b3),
          ba: med(ratios(sm.b)),
          b2a: med(ratios(sm.b2)),
          b3a: med(ratios(sm.b3)),
          baSpan: span(ratios(sm.b)),
          b2aSpan: span(ratios(sm.b2)),
          b3aSpan: span(ratios(sm.b3)),
          aCpuPerGB: med(sm.ca),
          bCpuPerGB: med(sm.cb),
          b2CpuPerGB: med(sm.cb2),
          b3CpuPerGB: med(sm.cb3),
          aRcvCpuPerGB: med(sm.ra),
          bRcvCpuPerGB: med(sm.rb),
          b2RcvCpuPerGB: med(sm.rb2),
          b3RcvCpuPerGB: med(sm.rb3),
          eventsPerMiB: med(sm.ev),
        });
      }
    }
  }
  if (!INSIDE_RIG && part('throughput')) {
    res.baselines = [];
    // Xen's vchan-socket-proxy at both ends, Debian's libxenvchan over the mock's stable libraries
    // and its libxenctrl (native/mock/src/xenctrl.c).
    const hasProxy = fs.existsSync(PROXY);
    res.proxyNote = hasProxy ? undefined : 'not measured: xen-utils (vchan-socket-proxy) is not installed';
    for (const write of WRITES) {
      for (const dir of DIRS) {
        const c = await transfer((m) => udsPair(m), dir, write);
        // dom0->domU only, as on the rig: domU->dom0 stalls inside the two proxies, on real Xen and on
        // the mock alike (both proxies idle in select(), 2026-12-02); it is Xen's program.
        const d = hasProxy && dir === 'dom0->domU' ? await transfer((m) => proxyPair(m), dir, write) : null;
        res.baselines.push({ write, dir, c: c.MBps, d: d?.MBps, cCpuPerGB: c.cpuPerGB, dCpuPerGB: d?.cpuPerGB });
        log(
          `write ${write} ${dir}: net.Socket ${fmt(c.MBps)} MB/s, via vchan-socket-proxy ${d ? `${fmt(d.MBps)} MB/s` : '(not measured)'}`,
        );
      }
    }
    res.memcpyMBps = cBench(['memcpy', String(QUICK ? 1e9 : 4e9)])[0].MBps;
  }
  if (INSIDE_RIG && part('throughput')) {
    // d on real Xen: Xen's vchan-socket-proxy at both ends (dom0 <-> dom0), Node on Unix sockets.
    // dom0->domU only: the other direction stalled inside the proxies on the rig (2026-11-22, not
    // investigated further; it is Xen's program, not this library).
    res.baselines = [];
    for (const dir of ['dom0->domU']) {
      const d = await transfer((m) => proxyPair(m), dir, 65536);
      res.baselines.push({ write: 65536, dir, d: d.MBps, dCpuPerGB: d.cpuPerGB });
      log(`write 65536 ${dir}: via vchan-socket-proxy ${fmt(d.MBps)} MB/s`);
    }
  }
  if (part('latency')) {
    const count = QUICK ? 2000 : INSIDE_RIG ? 2000 : 20000;
    // REPEAT runs, interleaved (C, VchanStream, Unix socket in turn); each figure the median of
    // the runs' p50s (and p99s), each ratio taken run by run against the C run beside it.
    const REPEAT = Math.max(1, Number(process.env.BENCH_REPEAT ?? 1));
    const runs = { a: [], b: [], c: [] };
    for (let rep = 0; rep < REPEAT; rep++) {
      const aLat = cBench(['latency', '65536', String(count)], INSIDE_RIG ? { VCHAN_BENCH_PEER: '0' } : {})[0];
      runs.a.push({ p50: aLat.p50us, p99: aLat.p99us });
      runs.b.push(await roundTrips((m) => vchanPair(65536, m), count));
      // c inside the rig too: whether Xen's event delivery, not Node, sets the floor there.
      runs.c.push(await roundTrips((m) => udsPair(m), count));
      const [a, b, c] = [runs.a[rep], runs.b[rep], runs.c[rep]];
      log(
        `round trips (run ${rep + 1}/${REPEAT}): C ${fmt(a.p50, 1)} us, VchanStream ${fmt(b.p50, 1)} us, Unix socket ${fmt(c.p50, 1)} us`,
      );
    }
    const summary = (key) => {
      const p50s = runs[key].map((v) => v.p50);
      const vsA = p50s.map((v, i) => v / runs.a[i].p50);
      const vsC = p50s.map((v, i) => v / runs.c[i].p50);
      return {
        p50: median(p50s),
        p99: median(runs[key].map((v) => v.p99)),
        p50Span: [Math.min(...p50s), Math.max(...p50s)],
        vsA: median(vsA),
        vsASpan: [Math.min(...vsA), Math.max(...vsA)],
        vsC: median(vsC),
        vsCSpan: [Math.min(...vsC), Math.max(...vsC)],
        runs: REPEAT,
      };
    };
    res.latency = { a: summary('a'), b: summary('b'), c: summary('c') };
  }

  if (!INSIDE_RIG && part('cost')) {
    res.cost.idle = await idleCpu(100, QUICK ? 2 : 10);
    res.cost.perStream = await perStream(QUICK ? 200 : STREAMS, QUICK ? 100 : ACTIVE);
    log(`idle: ${fmt(res.cost.idle.cpuMs, 1)} ms CPU in ${res.cost.idle.seconds} s for 100 streams`);
  }
  if (flag('--profile') && !INSIDE_RIG) res.profile = await profile();

  child.kill();
  keeper.close();
  if (!INSIDE_RIG && ONLY === null) res.rig = rigPart();
  const jsonOut = argv[argv.indexOf('--json') + 1];
  if (argv.includes('--json') && jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(res, null, 2));
  if (ONLY !== null) {
    process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
    return;
  }
  if (INSIDE_RIG) return;
  const md = report(res);
  process.stdout.write(md);
  if (flag('--write')) writeResults(md);
}

/** Profiles VchanStream (64 KiB ring and writes, dom0 -> domU) with the inspector; top self time. */
async function profile() {
  const inspector = require('node:inspector');
  const session = new inspector.Session();
  session.connect();
  const post = (m, p) => new Promise((res, rej) => session.post(m, p, (e, r) => (e ? rej(e) : res(r))));
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 100 });
  await post('Profiler.start');
  await transfer((m) => vchanPair(65536, m), 'dom0->domU', 65536);
  await transfer((m) => vchanPair(65536, m), 'domU->dom0', 65536);
  const { profile: p } = await post('Profiler.stop');
  session.disconnect();
  const self = new Map();
  const dt = new Map();
  for (let i = 0; i < p.samples.length; i++) dt.set(p.samples[i], (dt.get(p.samples[i]) || 0) + (p.timeDeltas[i] || 0));
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

function report(r) {
  const L = [];
  const k = (n) => (n >= MiB ? `${n / MiB} MiB` : n >= 1024 ? `${n / 1024} KiB` : `${n} B`);
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
  const rr = (m, sp, x, a) =>
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
  for (const bl of r.baselines) {
    const b = r.throughput.find((t) => t.ring === 65536 && t.write === bl.write && t.dir === bl.dir);
    L.push(
      `| ${k(bl.write)} | ${bl.dir} | ${fmt(b?.b)} | ${fmt(bl.c)} | ${fmt(bl.d)} | ${ratio(b?.b, bl.c)} | ${ratio(b?.b, bl.d)} |`,
    );
  }
  if (r.proxyNote && !r.baselines.some((b) => b.d))
    L.push('', `d (Node -> vchan-socket-proxy -> vchan -> vchan-socket-proxy -> Node): ${r.proxyNote}.`);
  else
    L.push(
      '',
      "d runs Xen's vchan-socket-proxy at both ends (Debian's libxenvchan on the mock's libraries), dom0->domU only: " +
        'domU->dom0 stalls inside the two proxies (both idle in select()), on real Xen and on the mock alike.',
    );
  const best = Math.max(...r.throughput.filter((t) => t.ring === 65536).map((t) => t.a));
  L.push(
    '',
    `e: memcpy, one core: ${fmt(r.memcpyMBps)} MB/s. A vchan copies each byte twice (into the ring, out of it), so its`,
  );
  L.push(
    `ceiling is about ${fmt(r.memcpyMBps / 2)} MB/s for data that does not fit in the caches; the best C figure at the 64 KiB`,
  );
  L.push(
    `ring is ${ratio(best, r.memcpyMBps / 2)} of that. (A 1 MiB ring and its buffers stay in the L2 cache, which is why C exceeds it there.)`,
    '',
  );
  L.push('### 64-byte request/response round trips, microseconds', '');
  const lat = r.latency;
  const span = (v, k, d) =>
    v[`${k}Span`] && v.runs > 1 ? ` (${v[`${k}Span`].map((x) => x.toFixed(d)).join('-')})` : '';
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
  ])
    L.push(
      `| ${name} | ${fmt(v.p50, 1)}${span(v, 'p50', 1)} | ${fmt(v.p99, 1)} | ${v.vsA === undefined ? ratio(v.p50, lat.a.p50) : `${v.vsA.toFixed(2)}x${span(v, 'vsA', 2)}`} | ${v.vsC === undefined ? ratio(v.p50, lat.c.p50) : `${v.vsC.toFixed(2)}x${span(v, 'vsC', 2)}`} |`,
    );
  const ps = r.cost.perStream;
  L.push('', '### Cost', '');
  L.push(
    `- Idle: a process holding ${r.cost.idle.streams} open idle streams used ${fmt(r.cost.idle.cpuMs, 1)} ms of CPU in ${r.cost.idle.seconds} s.`,
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
  if (r.rig.skipped) L.push(`Skipped: ${r.rig.skipped}.`);
  else {
    if (r.rig.from)
      L.push(
        `From \`bash bench/rig.sh\` (${r.rig.from}); a, b, b2 and d were measured side by side in that rig run.`,
        '',
      );
    for (const t of r.rig.throughput) {
      const d = r.rig.baselines?.find((x) => x.dir === t.dir)?.d;
      L.push(
        `- throughput, 64 KiB ring and writes, ${t.dir}: b/a = ${ratio(t.b, t.a)}, b2/a = ${ratio(t.b2, t.a)}, b3/a = ${ratio(t.b3, t.a)}, b/d = ${ratio(t.b, d)} (d: Node -> vchan-socket-proxy -> vchan -> vchan-socket-proxy -> Node)`,
      );
    }
    L.push(
      `- 64-byte round trip p50: b/a = ${ratio(r.rig.latency.b.p50, r.rig.latency.a.p50)}; p99: b/a = ${ratio(r.rig.latency.b.p99, r.rig.latency.a.p99)}` +
        (r.rig.latency.c
          ? `; c/a = ${ratio(r.rig.latency.c.p50, r.rig.latency.a.p50)} (c: Node net.Socket over a Unix socket, same rig run)`
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

function writeResults(md) {
  const file = path.join(__dirname, 'RESULTS.md');
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

if (flag('--child')) childMain();
else
  main().then(
    () => process.exit(0),
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
