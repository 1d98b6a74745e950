// npm run bench:pcid: the PCI daemon's requests per second and latency (p50, p99), with 1 and 50
// clients, over vchan (createPcidServer / connectPcid: on the mock, server in dom0 and clients in a
// domain-5 process; on real Xen, npm run bench:pcid:rig, both in the rig's dom0) and, side by side in the same run, the same server code and JSON layer over a
// Unix socket between two Node processes. Each client sends one request at a time (closed loop),
// is_device_assigned on a small fake sysfs, for a fixed time; every figure is the median of RUNS
// runs with the spread (min-max). The ratio vchan/Unix socket is the result; absolutes are noisy.
// CPU time per request is reported for the clients' process, the server's and (on the mock) the
// broker's, which carries every event and unmask: it shows where a gap comes from.
//
//   npm run bench:pcid -- [--quick] [--runs N] [--seconds S] [--ring BYTES] [--clients N,...]
//                         [--only vchan|uds]
//     --ring     the minimum ring sizes of each client's channel (default 0: v4's in-page rings)
//     --clients  the client counts to run (default 1,50)
//     --only     one path (no ratios): to profile it alone, `node --cpu-prof bench/dist/pcid.js`
//                profiles the server and (fork inherits the flag) the clients' process
import { fork } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { lib } from './common';
import { benchOptions, brokerCpu, fmtSpread as fmt, median } from './stats';

process.env.XEN_VCHAN_BACKEND = process.env.XEN_VCHAN_BACKEND || 'mock';
// On real Xen (the rig's dom0: npm run bench:pcid:rig) both processes are in dom0; on the mock the
// clients' process acts as domain 5.
const CLIENT_DOMID = process.env.XEN_VCHAN_BACKEND === 'real' ? 0 : 5;
const x = lib();

const argv = process.argv.slice(2);
const { opt, runs: RUNS, seconds: SECONDS } = benchOptions(argv);
const SBDF = '0000:00:04.0';
const valueOf = (name: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined);
const COUNTS = (valueOf('--clients') ?? '1,50').split(',').map(Number);
const ONLY = valueOf('--only');
if (ONLY !== undefined && ONLY !== 'vchan' && ONLY !== 'uds') throw new RangeError(`--only: vchan or uds, not ${ONLY}`);
if (COUNTS.some((n) => !Number.isInteger(n) || n < 1)) throw new RangeError(`--clients: counts of 1 or more`);

type Kind = 'vchan' | 'uds';

/** What the parent asks: N clients over KIND for SECONDS. */
interface Job {
  kind: Kind;
  n: number;
  path: string;
  sock: string;
  seconds: number;
}

/** What one job measured (the parent adds its own CPU and the broker's), µs where a time. */
interface JobResult {
  rps: number;
  p50: number;
  p99: number;
  n: number;
  clientCpu: number;
  serverCpu?: number;
  brokerCpu?: number;
}

/** A client as the timed loop uses it. */
interface Client {
  isDeviceAssigned(sbdf: string): Promise<unknown>;
  close(): void;
}

/** A fake PCI sysfs: pciback with one device bound to it. */
function fakeSysfs(): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'xv-bench-sysfs-'));
  const dev = path.join(root, 'devices', 'pci0000:00', SBDF);
  fs.mkdirSync(dev, { recursive: true });
  fs.writeFileSync(path.join(dev, 'resource'), '0x0000004000000000 0x000000400007ffff 0x0000000000140204\n');
  fs.writeFileSync(path.join(dev, 'irq'), '11\n');
  const pciback = path.join(root, 'bus', 'pci', 'drivers', 'pciback');
  fs.mkdirSync(pciback, { recursive: true });
  fs.mkdirSync(path.join(root, 'bus', 'pci', 'devices'), { recursive: true });
  fs.symlinkSync(`../../../devices/pci0000:00/${SBDF}`, path.join(root, 'bus', 'pci', 'devices', SBDF));
  fs.symlinkSync(`../../../../devices/pci0000:00/${SBDF}`, path.join(pciback, SBDF));
  return root;
}

// ---------------------------------------------------------------------------------------------
// The child (domain 5): N clients, each one request at a time for SECONDS; reports latencies.

function childMain(): void {
  process.on('message', async (m: Job) => {
    const clients: Client[] = [];
    if (m.kind === 'vchan') {
      for (let i = 0; i < m.n; i++) clients.push(await x.connectPcid({ domid: 0, path: m.path, timeout: 20000 }));
    } else {
      for (let i = 0; i < m.n; i++) {
        const s = net.connect(m.sock);
        await once(s, 'connect');
        const c = new x.JsonClient(s);
        clients.push({
          isDeviceAssigned: (sbdf: string) => c.request({ cmd: 'is_device_assigned', sbdf }),
          close: () => s.destroy(),
        });
      }
    }
    const lat: number[] = [];
    process.send!({ start: true });
    const cpu0 = process.cpuUsage();
    const until = process.hrtime.bigint() + BigInt(Math.round(m.seconds * 1e9));
    const t0 = process.hrtime.bigint();
    await Promise.all(
      clients.map(async (c) => {
        while (process.hrtime.bigint() < until) {
          const a = process.hrtime.bigint();
          await c.isDeviceAssigned(SBDF);
          lat.push(Number(process.hrtime.bigint() - a) / 1e3);
        }
      }),
    );
    const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    for (const c of clients) c.close();
    lat.sort((p, q) => p - q);
    const pct = (p: number) => lat[Math.min(lat.length - 1, Math.floor((lat.length * p) / 100))];
    process.send!({
      rps: lat.length / elapsed,
      p50: pct(50),
      p99: pct(99),
      n: lat.length,
      clientCpu: (cpu.user + cpu.system) / lat.length,
    });
  });
  // Exit (not killed) when the parent lets go, so that `node --cpu-prof` writes this process's profile.
  process.on('disconnect', () => process.exit(0));
  process.send!({ ready: true });
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const sysfs = fakeSysfs();
  const rel = `data/pcid-bench-${process.pid}`;
  const ring = opt('--ring', 0);
  const server = x.createPcidServer({
    sysfsRoot: sysfs,
    clients: [CLIENT_DOMID],
    path: rel,
    readMin: ring,
    writeMin: ring,
  });
  await once(server.listen(), 'listening');
  // The same protocol code over a Unix socket.
  const sock = path.join(os.tmpdir(), `xv-pcid-bench-${process.pid}.sock`);
  fs.rmSync(sock, { force: true });
  const drivers = new Map<string, string>();
  const sysfsApi = new x.PciSysfs(sysfs);
  const uds = net.createServer((s) => {
    s.on('error', () => undefined);
    x.serveJson(s, (req) => x.handlePcidRequest(sysfsApi, drivers, req));
  });
  await new Promise((r) => uds.listen(sock, () => r(undefined)));

  const child = fork(__filename, ['--child'], {
    env: { ...process.env, XEN_MOCK_DOMID: String(CLIENT_DOMID) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  await once(child, 'message');
  const ask = async (m: Job): Promise<JobResult> => {
    child.send(m);
    await once(child, 'message'); // the clients are connected; the timed loop starts
    const cpu0 = process.cpuUsage();
    const broker0 = brokerCpu(x.currentBackend());
    const [r] = (await once(child, 'message')) as [JobResult];
    const cpu = process.cpuUsage(cpu0);
    r.serverCpu = (cpu.user + cpu.system) / r.n;
    const broker1 = brokerCpu(x.currentBackend());
    if (broker0 !== undefined && broker1 !== undefined) r.brokerCpu = (broker1 - broker0) / r.n;
    return r;
  };

  const kinds: Kind[] = ONLY ? [ONLY as Kind] : ['vchan', 'uds'];
  const results: Record<string, JobResult[]> = {};
  for (const n of COUNTS) {
    for (const kind of kinds) results[`${kind}-${n}`] = [];
    for (let run = 0; run < RUNS; run++)
      for (const kind of run % 2 ? [...kinds].reverse() : kinds)
        // alternate who goes first
        results[`${kind}-${n}`].push(await ask({ kind, n, path: rel, sock, seconds: SECONDS }));
  }
  child.disconnect();
  await once(child, 'exit');
  uds.close();
  await new Promise<void>((r) => server.close(() => r()));
  fs.rmSync(sysfs, { recursive: true, force: true });
  fs.rmSync(sock, { force: true });

  const L: string[] = [];
  L.push(
    `pcid bench: is_device_assigned, one request at a time per client, ${SECONDS} s per run, median of ${RUNS} runs (spread min-max)`,
  );
  L.push(
    `machine: ${os.cpus().length} cpus, ${os.cpus()[0].model}, Node ${process.version}, backend ${x.currentBackend()}`,
  );
  L.push('');
  L.push('| clients | path | requests/s | p50 µs | p99 µs | CPU µs/request: clients | server | broker |');
  L.push('|---|---|---|---|---|---|---|---|');
  for (const n of COUNTS)
    for (const kind of kinds) {
      const r = results[`${kind}-${n}`];
      // A figure this backend does not have (the broker's on real Xen) is '-'.
      const col = (k: keyof JobResult, d = 0) =>
        r.some((v) => v[k] === undefined)
          ? '-'
          : fmt(
              r.map((v) => v[k] as number),
              d,
            );
      L.push(
        `| ${n} | ${kind === 'vchan' ? `vchan (${x.currentBackend()})` : 'Unix socket'} | ${col('rps')} | ${col('p50')} | ${col('p99')} | ${col('clientCpu', 1)} | ${col('serverCpu', 1)} | ${col('brokerCpu', 1)} |`,
      );
    }
  L.push('');
  for (const n of ONLY ? [] : COUNTS) {
    const v = results[`vchan-${n}`];
    const u = results[`uds-${n}`];
    // Ratios per run (the two measured back to back), then their median and spread.
    const rps = v.map((r, i) => r.rps / u[i].rps);
    const p50 = v.map((r, i) => u[i].p50 / r.p50);
    const times = (a: number[]) =>
      `${median(a).toFixed(2)}x (${Math.min(...a).toFixed(2)}-${Math.max(...a).toFixed(2)})`;
    L.push(
      `${n} client${n > 1 ? 's' : ''}: vchan/Unix socket requests/s ${times(rps)}, p50 latency ratio (uds/vchan) ${times(p50)}`,
    );
  }
  process.stdout.write(`${L.join('\n')}\n`);
}

if (argv.includes('--child')) childMain();
else
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
