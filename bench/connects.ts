// npm run bench:connects: how many connections a second a client can open, use and close, each
// cycle being connect, one byte echoed, destroy, 'close'. One client in a loop, and 8 at once:
//   single  createServer / connect(): one channel at a time, offered again after each client
//   multi   createMultiServer / connectMulti(): a channel per client, offered on request
//   uds     net.createServer / net.connect over a Unix socket, the same cycle for reference
// The server is this process (dom0); the clients are a child process (domain 5 on the mock, dom0 on
// real Xen). Every figure is the median of RUNS runs with the spread (min-max), the kinds
// interleaved run by run. CPU per connect is reported for the clients' process, the server's and,
// on the mock, the broker's (which binds the channels, maps the grants and serves xenstore).
//
//   npm run bench:connects -- [--quick] [--runs N] [--seconds S] [--json]
import { fork } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';

import { lib } from './common';
import { benchOptions, brokerCpu, fmtSpread as fmt, median } from './stats';

process.env.XEN_VCHAN_BACKEND = process.env.XEN_VCHAN_BACKEND || 'mock';
const CLIENT_DOMID = process.env.XEN_VCHAN_BACKEND === 'real' ? 0 : 5;
const x = lib();

const argv = process.argv.slice(2);
const { runs: RUNS, seconds: SECONDS } = benchOptions(argv);
type Kind = 'single' | 'multi' | 'uds';
const KINDS: Kind[] = ['single', 'multi', 'uds'];

/** What the parent asks: N clients of KIND cycling for SECONDS. */
interface Job {
  kind: Kind;
  n: number;
  path: string;
  sock: string;
  seconds: number;
}

/** What one job measured (the parent adds its own CPU and the broker's). */
interface JobResult {
  n: number;
  rate: number;
  p50: number;
  clientCpu: number;
  serverCpu?: number;
  brokerCpu?: number;
}

// --- the child: the clients -------------------------------------------------------------------

/** One cycle: open, one byte there and back, destroy, closed. Resolves with its time in µs. */
async function cycle(m: Job): Promise<number> {
  const t0 = process.hrtime.bigint();
  let s: Duplex;
  if (m.kind === 'uds') {
    s = net.connect(m.sock);
    await once(s, 'connect');
  } else {
    const open = m.kind === 'multi' ? x.connectMulti : x.connect;
    s = await open({ domid: 0, path: m.path, timeout: 20000 });
  }
  s.write('x');
  await once(s, 'data');
  s.destroy();
  if (!s.closed) await once(s, 'close');
  return Number(process.hrtime.bigint() - t0) / 1e3;
}

function childMain(): void {
  process.on('message', async (m: Job) => {
    // Warm up outside the timed loop, then say "go".
    for (let i = 0; i < 20; i++) await cycle(m);
    process.send!({ started: true });
    const times: number[] = [];
    const cpu0 = process.cpuUsage();
    const t0 = Date.now();
    const end = t0 + m.seconds * 1000;
    await Promise.all(
      Array.from({ length: m.n }, async () => {
        while (Date.now() < end) times.push(await cycle(m));
      }),
    );
    const wall = (Date.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    process.send!({
      n: times.length,
      rate: times.length / wall,
      p50: median(times),
      clientCpu: (cpu.user + cpu.system) / times.length,
    });
  });
  process.send!({ ready: true });
}

// --- the parent: the servers ------------------------------------------------------------------

async function main(): Promise<void> {
  const echo = (s: Duplex) => {
    s.on('error', () => undefined);
    s.on('data', (d: Buffer) => s.write(d));
    s.on('end', () => s.end());
  };
  const single = `data/conn-bench-s${process.pid}`;
  const multi = `data/conn-bench-m${process.pid}`;
  const servers = [
    x.createServer({ domid: CLIENT_DOMID, path: single }, echo),
    x.createMultiServer({ domid: CLIENT_DOMID, path: multi }, echo),
  ];
  for (const s of servers) {
    s.on('clientError', () => undefined);
    await once(s.listen(), 'listening');
  }
  const sock = path.join(os.tmpdir(), `xv-conn-bench-${process.pid}.sock`);
  fs.rmSync(sock, { force: true });
  const uds = net.createServer(echo);
  await new Promise((r) => uds.listen(sock, () => r(undefined)));

  const child = fork(__filename, ['--child'], {
    env: { ...process.env, XEN_MOCK_DOMID: String(CLIENT_DOMID) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  await once(child, 'message');
  const backend = x.currentBackend();
  const ask = async (m: Job): Promise<JobResult> => {
    child.send(m);
    await once(child, 'message'); // warmed up; the timed loop starts
    const cpu0 = process.cpuUsage();
    const broker0 = brokerCpu(backend);
    const [r] = (await once(child, 'message')) as [JobResult];
    const cpu = process.cpuUsage(cpu0);
    const broker1 = brokerCpu(backend);
    r.serverCpu = (cpu.user + cpu.system) / r.n;
    if (broker0 !== undefined && broker1 !== undefined) r.brokerCpu = (broker1 - broker0) / r.n;
    return r;
  };
  const pathOf: Record<Kind, string> = {
    single: `/local/domain/0/${single}`,
    multi: `/local/domain/0/${multi}`,
    uds: '',
  };

  const results: Record<string, JobResult[]> = {};
  for (const n of [1, 8]) {
    for (const kind of KINDS) results[`${kind}-${n}`] = [];
    for (let run = 0; run < RUNS; run++) {
      // Rotate who goes first.
      const order = KINDS.slice(run % KINDS.length).concat(KINDS.slice(0, run % KINDS.length));
      for (const kind of order)
        results[`${kind}-${n}`].push(await ask({ kind, n, path: pathOf[kind], sock, seconds: SECONDS }));
    }
  }
  child.kill();
  uds.close();
  for (const s of servers) await new Promise<void>((r) => s.close(() => r()));
  fs.rmSync(sock, { force: true });

  if (argv.includes('--json')) {
    console.log(JSON.stringify({ runs: RUNS, seconds: SECONDS, backend, results }));
    return;
  }
  const L: string[] = [];
  L.push(
    `connects bench: connect, 1 byte echoed, destroy, 'close'; ${SECONDS} s per run, median of ${RUNS} runs (spread min-max)`,
  );
  L.push(`machine: ${os.cpus().length} cpus, ${os.cpus()[0].model}, Node ${process.version}, backend ${backend}`);
  L.push('');
  L.push('| clients | kind | connects/s | p50 µs | CPU µs/connect: clients | server | broker |');
  L.push('|---|---|---|---|---|---|---|');
  const name: Record<Kind, string> = {
    single: 'vchan createServer/connect',
    multi: 'vchan multi-server/connectMulti',
    uds: 'Unix socket',
  };
  for (const n of [1, 8])
    for (const kind of KINDS) {
      const r = results[`${kind}-${n}`];
      const col = (k: keyof JobResult, d = 0) =>
        r.some((v) => v[k] === undefined)
          ? '-'
          : fmt(
              r.map((v) => v[k] as number),
              d,
            );
      L.push(
        `| ${n} | ${name[kind]} | ${col('rate')} | ${col('p50')} | ${col('clientCpu')} | ${col('serverCpu')} | ${col('brokerCpu')} |`,
      );
    }
  L.push('');
  for (const n of [1, 8])
    for (const kind of ['single', 'multi'] as const) {
      const ratios = results[`${kind}-${n}`].map((v, i) => v.rate / results[`uds-${n}`][i].rate);
      L.push(`${n} client${n > 1 ? 's' : ''}: ${name[kind]} / Unix socket connects/s ${fmt(ratios, 3)}x (run by run)`);
    }
  console.log(L.join('\n'));
}

if (argv.includes('--child')) childMain();
else
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
