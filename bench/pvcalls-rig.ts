// npm run bench:pvcalls:rig (inside the rig's dom0, through bench/pvcalls-rig-job.sh): PVCalls on
// real Xen with the Node frontend in the PV domU, measured side by side in one run against
//   node    the Node backend (a process of its own in dom0, as a daemon would run), its JS data pump
//   node-native  the same with the C++ data pump (dataPump: 'native')
//   linux   Linux's pvcalls-back.ko in dom0 (test/xen/build-pvcalls-modules.sh; 6.12 rig only)
//   vchan   a plain VchanStream: connectMulti from the domU to a multi-server in dom0
// Each measures, from the domU (test/xen/domu-peer.js, op 'bench'): MiB/s one way on one socket
// and on SOCKETS at once (the sink in dom0 acknowledges each socket's last byte), and the p50 of
// CONNECTS connects (PVCalls: SOCKET + CONNECT through the backend; vchan: connectMulti). The
// paths run in a rotating order, RUNS times; every figure is the median with the spread (min-max),
// and the ratios are taken per run. Beside each: dom0's CPU (all of it, from /proc/stat: the
// backend, Linux's worker threads and the sink) per MiB moved in the 'bench' op, and for the Node
// backend its own process's CPU per MiB.
//
//   node bench/dist/pvcalls-rig.js [--runs N] [--mib M] [--sockets S] [--connects C] [--out FILE]
//                                  [--paths node,node-native,linux,vchan] [--cpu-prof DIR]
// --cpu-prof writes a V8 CPU profile of each Node backend process into DIR.
import { type ChildProcess, execFileSync, fork } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';

import type { Xenstore } from '../dist/cjs/index';
import { ackAfter, lib, root } from './common';
import { fmtSpread as fmt } from './stats';

const x = lib();

/** test/xen/domu-driver.js: the PV domU and the peer in it (test/xen/domu-peer.js). */
interface DomU {
  domid: number;
  command(
    op: string,
    args?: Record<string, unknown>,
  ): Promise<(phase?: string, timeoutMs?: number) => Promise<BenchResult>>;
  destroy(): void;
  consoleLog(): string;
}
/** What the peer's 'bench' op reports. */
interface BenchResult {
  tp1: number;
  tpN: number;
  connectP50: number;
  ringOrder?: number;
}

const argv = process.argv.slice(2);
const opt = (name: string, def: string | number) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : def);
const RUNS = Number(opt('--runs', 5));
const MIB = Number(opt('--mib', 4));
const SOCKETS = Number(opt('--sockets', 4));
const CONNECTS = Number(opt('--connects', 20));
const OUT = opt('--out', '');
const PATHS = String(opt('--paths', '')).split(',').filter(Boolean);
const CPU_PROF = String(opt('--cpu-prof', ''));
const RIG = process.env.XEN_RIG_DOMU || '/mnt/host/.rig';
const LINUX_BACK = `${RIG}/pvcalls/pvcalls-back.ko`;

// --- the Node backend's own process ----------------------------------------------------------------

async function backendMain(dataPump: 'js' | 'native'): Promise<void> {
  const be = await x.createPvcallsBackend({ dataPump });
  be.on('frontendError', (e) => console.error(`pvcalls-rig: backend: ${e.message}`));
  process.on('message', async () => {
    await be.close();
    const u = process.cpuUsage();
    process.send!({ cpuMs: (u.user + u.system) / 1000 }, () => process.exit(0));
  });
  process.send!({ ready: true });
}

// --- dom0: the sinks, the backends, the domU ---------------------------------------------------------

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** dom0's busy time so far, ms: every CPU's user, nice, system, irq and softirq time (USER_HZ
 * is 100 on every Linux ABI). Steal (runnable, but another domain had the CPU) is not dom0's work. */
function dom0BusyMs(): number {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq] = f;
  return (user + nice + system + irq + softirq) * 10;
}

/** Each connection counts MIB MiB, then answers one byte: the sender's clock stops there. */
const ack = ackAfter(MIB << 20);
/** dom0's busy ms at each carrying connection's first byte and at its acknowledgement, in order. */
let spans: { from: number; to: number }[] = [];
function sink(s: Duplex): void {
  ack(s);
  let span: { from: number; to: number } | null = null;
  let got = 0;
  s.on('data', (d: Buffer) => {
    if (!span) spans.push((span = { from: dom0BusyMs(), to: NaN }));
    got += d.length;
    if (got === MIB << 20) span.to = dom0BusyMs();
  });
}
/** dom0 CPU ms per MiB of the 1-socket and the SOCKETS-socket transfer just done (spans' order). */
function cpuPerMiB(): { cpu1: number; cpuN: number } {
  const [one, ...many] = spans;
  spans = [];
  if (!one || many.length < SOCKETS) return { cpu1: NaN, cpuN: NaN };
  const from = Math.min(...many.map((m) => m.from));
  const to = Math.max(...many.map((m) => m.to));
  return { cpu1: (one.to - one.from) / MIB, cpuN: (to - from) / (MIB * SOCKETS) };
}

function rmmod(): void {
  for (let i = 0; i < 100; i++) {
    try {
      execFileSync('rmmod', ['pvcalls_back'], { stdio: 'ignore' });
      return;
    } catch {
      execFileSync('sleep', ['0.1']);
    }
  }
  throw new Error('pvcalls_back would not unload');
}

async function main(): Promise<void> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { bootDomU } = require(path.join(root, 'test', 'xen', 'domu-driver.js')) as {
    bootDomU(o: { rig: string; xs: Xenstore; name: string }): Promise<DomU>;
  };
  const haveLinux = fs.existsSync(LINUX_BACK);
  const t0 = Date.now();
  const xs = new x.Xenstore();
  const domu = await bootDomU({ rig: RIG, xs, name: 'vchan-bench' });
  const { domid } = domu;
  console.log(`pvcalls-rig: domU ${domid} ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const tcp = net.createServer(sink).listen(0, '127.0.0.1');
  await once(tcp, 'listening');
  const port = (tcp.address() as net.AddressInfo).port;
  const vpath = `data/pvcalls-bench-${process.pid}`;
  const vserver = x.createMultiServer({ domid, path: vpath, readMin: 65536, writeMin: 65536 }, sink);
  await once(vserver.listen(), 'listening');

  const ask = async (args: Record<string, unknown>) => {
    const result = await domu.command('bench', { mib: MIB, sockets: SOCKETS, connects: CONNECTS, ...args });
    try {
      return await result('-', 600_000);
    } catch (e) {
      console.error(`pvcalls-rig: the domU's console:\n${domu.consoleLog().slice(-4000)}`);
      throw e;
    }
  };
  /** One measurement through a PVCalls backend that UP starts and DOWN stops. */
  const viaPvcalls = async (up: () => Promise<void>, down: () => Promise<void>) => {
    await up();
    try {
      await x.createPvcallsDevice(xs, { frontend: domid, backend: 0 });
      return await ask({ via: 'pvcalls', port });
    } finally {
      await x.removePvcallsDevice(xs, { frontend: domid, backend: 0 });
      await down();
    }
  };
  let child: ChildProcess | null = null;
  /** The last Node backend process's own CPU, ms (its whole life: connects included). */
  let backendCpuMs = NaN;
  const nodeBackend = (pump: 'js' | 'native') =>
    viaPvcalls(
      async () => {
        const execArgv = CPU_PROF
          ? ['--cpu-prof', '--cpu-prof-dir', CPU_PROF, `--cpu-prof-name=${pump}-${Date.now()}.cpuprofile`]
          : [];
        child = fork(__filename, ['--backend', pump], { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
        await once(child, 'message');
      },
      async () => {
        const exited = once(child!, 'exit');
        const [m] = (await Promise.all([once(child!, 'message'), child!.send('end')]))[0] as [{ cpuMs: number }];
        backendCpuMs = m.cpuMs;
        await exited;
      },
    );
  const paths: Record<string, () => Promise<BenchResult>> = {
    node: () => nodeBackend('js'),
    'node-native': () => nodeBackend('native'),
    linux: () =>
      viaPvcalls(
        async () => void execFileSync('insmod', [LINUX_BACK]),
        async () => {
          // Linux's backend lets the module go once the device is gone.
          await sleep(200);
          rmmod();
        },
      ),
    vchan: () => ask({ via: 'vchan', path: `/local/domain/0/${vpath}` }),
  };
  const names = (haveLinux ? ['node', 'node-native', 'linux', 'vchan'] : ['node', 'node-native', 'vchan']).filter(
    (k) => PATHS.length === 0 || PATHS.includes(k),
  );
  const res: Record<string, number[]> = {};
  const ringOrder: Record<string, number> = {};
  for (let run = 0; run < RUNS; run++) {
    const order = names.map((_, i) => names[(i + run) % names.length]);
    for (const k of order) {
      spans = [];
      backendCpuMs = NaN;
      const r = await paths[k]();
      const c = { ...cpuPerMiB(), backendCpu: backendCpuMs / (MIB * (1 + SOCKETS)) };
      for (const m of ['tp1', 'tpN', 'connectP50'] as const) (res[`${k}-${m}`] ??= []).push(r[m]);
      for (const m of ['cpu1', 'cpuN', 'backendCpu'] as const) (res[`${k}-${m}`] ??= []).push(c[m]);
      if (r.ringOrder !== undefined) ringOrder[k] = r.ringOrder;
      console.log(`pvcalls-rig: run ${run + 1} ${k}: ${JSON.stringify({ ...r, ...c })}`);
    }
  }
  vserver.close();
  tcp.close();
  domu.destroy();
  xs.close();

  const label: Record<string, string> = {
    node: `PVCalls, Node backend, JS pump (ring order ${ringOrder.node})`,
    'node-native': `PVCalls, Node backend, C++ pump (ring order ${ringOrder['node-native']})`,
    linux: `PVCalls, Linux's pvcalls-back.ko (ring order ${ringOrder.linux})`,
    vchan: 'VchanStream (multi-server, 64 KiB rings)',
  };
  const L: string[] = [];
  L.push(
    `pvcalls rig bench: Node frontend in a PV domU, dom0 serving; ${MIB} MiB one way per socket, ${SOCKETS} sockets, ` +
      `${CONNECTS} connects; median of ${RUNS} runs (spread min-max); Linux ${os.release()}, Node ${process.version}`,
  );
  L.push('');
  L.push(
    `| path | 1 socket MiB/s | ${SOCKETS} sockets MiB/s (total) | connect p50 µs | dom0 CPU ms/MiB, 1 / ${SOCKETS} sockets | backend process CPU ms/MiB |`,
  );
  L.push('|---|---|---|---|---|---|');
  for (const k of names)
    L.push(
      `| ${label[k]} | ${fmt(res[`${k}-tp1`], 1)} | ${fmt(res[`${k}-tpN`], 1)} | ${fmt(res[`${k}-connectP50`])} | ` +
        `${fmt(res[`${k}-cpu1`], 1)} / ${fmt(res[`${k}-cpuN`], 1)} | ` +
        `${k.startsWith('node') ? fmt(res[`${k}-backendCpu`], 1) : '-'} |`,
    );
  L.push('');
  L.push(
    "dom0 CPU: all of dom0's busy time (/proc/stat) from a transfer's first byte at the sink to its last, per MiB " +
      "(the backend, Linux's workers, the sink); the backend process's is its own CPU over its life (connects included) per MiB moved.",
  );
  L.push('');
  const have = (k: string) => names.includes(k);
  const ratio = (a: string, b: string) =>
    `throughput 1 socket ${fmt(
      res[`${a}-tp1`].map((v, i) => v / res[`${b}-tp1`][i]),
      2,
    )}x, ${SOCKETS} sockets ${fmt(
      res[`${a}-tpN`].map((v, i) => v / res[`${b}-tpN`][i]),
      2,
    )}x; connect time ${fmt(
      res[`${a}-connectP50`].map((v, i) => v / res[`${b}-connectP50`][i]),
      2,
    )}x; dom0 CPU per MiB ${fmt(
      res[`${a}-cpu1`].map((v, i) => v / res[`${b}-cpu1`][i]),
      2,
    )}x / ${fmt(
      res[`${a}-cpuN`].map((v, i) => v / res[`${b}-cpuN`][i]),
      2,
    )}x`;
  const ratios: [string, string, string][] = [
    ['node', 'linux', 'Node backend, JS pump / Linux backend'],
    ['node-native', 'linux', 'Node backend, C++ pump / Linux backend'],
    ['node', 'vchan', 'PVCalls (Node backend, JS pump) / VchanStream'],
    ['node-native', 'vchan', 'PVCalls (Node backend, C++ pump) / VchanStream'],
    ['linux', 'vchan', 'PVCalls (Linux backend) / VchanStream'],
  ];
  for (const [a, b, what] of ratios) if (have(a) && have(b)) L.push(`${what}: ${ratio(a, b)}`);
  const text = L.join('\n');
  console.log(text);
  if (OUT) fs.writeFileSync(OUT, `${text}\n`);
}

if (argv.includes('--backend')) void backendMain(argv[argv.indexOf('--backend') + 1] === 'native' ? 'native' : 'js');
else
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
