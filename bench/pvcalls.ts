// npm run bench:pvcalls: PVCalls sockets (the Node frontend in one process, acting as domain 5 on
// the mock, and the Node backend in another, dom0) against a plain VchanStream between the same two
// domains, side by side in one run:
//   throughput  MiB/s of BYTES sent one way on one socket (PVCalls: frontend -> backend -> a TCP
//               sink in the backend's process; vchan: connectMulti client -> multi-server), and
//               on 8 sockets at once
//   paths       pvcalls-4: data rings of order 4 (32 KiB each way, Linux's pvcalls-front's size);
//               pvcalls-5: order 5 (64 KiB each way, the same ring memory as the vchan's);
//               vchan: 64 KiB rings, the server counting the bytes itself;
//               vchan-tcp: the same, each channel piped into a TCP connection to the same sink, as
//               `xen-vchan proxy` does: the job PVCalls does, done over a plain vchan
//   connect     the time from asking to a usable socket (PVCalls: SOCKET + CONNECT through the
//               backend; vchan: connectMulti to a listening multi-server), p50 over CONNECTS connects
// Every figure is the median of RUNS runs with the spread (min-max); the ratios are the result.
//
//   npm run bench:pvcalls -- [--quick] [--runs N] [--mib M] [--paths pvcalls-4,vchan,...] [--pump js|native]
//     --pump  the backend's data pump (createPvcallsBackend's dataPump; default: the backend's default)
import { fork } from 'node:child_process';
import { once } from 'node:events';
import * as net from 'node:net';
import * as os from 'node:os';
import type { Duplex } from 'node:stream';

import { ackAfter, lib } from './common';
import { fmtSpread as fmt } from './stats';

process.env.XEN_VCHAN_BACKEND = process.env.XEN_VCHAN_BACKEND || 'mock';
const x = lib();

const argv = process.argv.slice(2);
const opt = (name: string, def: number) => (argv.includes(name) ? Number(argv[argv.indexOf(name) + 1]) : def);
const QUICK = argv.includes('--quick');
const RUNS = opt('--runs', QUICK ? 3 : 5);
const MIB = opt('--mib', QUICK ? 32 : 128);
const CONNECTS = QUICK ? 50 : 200;
const PATHS = ['pvcalls-4', 'pvcalls-5', 'vchan', 'vchan-tcp'];
const paths = argv.includes('--paths') ? (argv[argv.indexOf('--paths') + 1] ?? '').split(',') : PATHS;
for (const p of paths) if (!PATHS.includes(p)) throw new RangeError(`--paths: ${p} is not one of ${PATHS.join(', ')}`);
const PUMP = (argv.includes('--pump') ? argv[argv.indexOf('--pump') + 1] : undefined) as 'js' | 'native' | undefined;
if (PUMP !== undefined && PUMP !== 'js' && PUMP !== 'native')
  throw new RangeError(`--pump: ${PUMP} is not js or native`);
/** PVCalls device number, ring order. */
const DEVICES = [
  { dev: 0, order: 4 },
  { dev: 1, order: 5 },
];
const DOMU = 5;

/** Where the child's sockets go: a PVCalls device's frontend to PORT, or a vchan multi-server at PATH. */
type Target = { kind: 'pvcalls'; port: number; dev: number } | { kind: 'vchan'; path: string };
/** What the parent asks. */
type Job = ({ op: 'throughput'; n: number } & Target) | ({ op: 'connect' } & Target) | { op: 'end' };

// --- the child: domain 5, the frontend and the vchan client ------------------------------------

async function childMain(): Promise<void> {
  const fes = await Promise.all(
    DEVICES.map((d) => x.connectPvcalls({ timeout: 20000, dev: d.dev, ringOrder: d.order })),
  );
  const block = Buffer.alloc(1 << 20, 7);
  /** Sends MIB MiB on S, then waits for the sink's one-byte acknowledgement. */
  const blast = (s: Duplex) =>
    new Promise<void>((resolve, reject) => {
      let left = MIB;
      s.once('error', reject);
      s.once('data', () => resolve());
      const pump = () => {
        while (left > 0) {
          left--;
          if (!s.write(block)) return void s.once('drain', pump);
        }
      };
      pump();
    });
  const open = async (m: Target): Promise<Duplex> => {
    if (m.kind === 'pvcalls') {
      const s = fes[m.dev].createConnection({ host: '127.0.0.1', port: m.port });
      await once(s, 'connect');
      return s;
    }
    return x.connectMulti({ domid: 0, path: m.path, timeout: 20000 });
  };
  const close = async (s: Duplex) => {
    s.destroy();
    // A PVCalls socket is gone once the backend has released it; a vchan once it has closed.
    if (s instanceof x.PvcallsSocket) await s.released;
    else if (!s.closed) await once(s, 'close');
  };
  process.on('message', async (m: Job) => {
    if (m.op === 'throughput') {
      const socks = await Promise.all(Array.from({ length: m.n }, () => open(m)));
      const t0 = process.hrtime.bigint();
      await Promise.all(socks.map(blast));
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      await Promise.all(socks.map(close));
      process.send!({ mibps: (MIB * m.n) / secs });
    } else if (m.op === 'connect') {
      const lat: number[] = [];
      for (let i = 0; i < CONNECTS; i++) {
        const t0 = process.hrtime.bigint();
        const s = await open(m);
        lat.push(Number(process.hrtime.bigint() - t0) / 1e3);
        await close(s);
      }
      lat.sort((a, b) => a - b);
      process.send!({ p50: lat[Math.floor(lat.length / 2)] });
    } else if (m.op === 'end') {
      for (const fe of fes) await fe.close();
      process.exit(0);
    }
  });
  process.send!({ ready: true });
}

// --- the parent: dom0, the backend, the TCP sink and the vchan server -----------------------------

/** Each connection counts MIB MiB, then answers one byte: the sender's clock stops there. */
const sink = ackAfter(MIB << 20);

async function main(): Promise<void> {
  const xs = new x.Xenstore();
  if (x.currentBackend() === 'mock') x.mockIntroduceDomain(DOMU);
  for (const d of DEVICES) await x.createPvcallsDevice(xs, { frontend: DOMU, backend: 0, dev: d.dev });
  const be = await x.createPvcallsBackend({ maxRingOrder: 5, dataPump: PUMP });
  const tcp = net.createServer(sink).listen(0, '127.0.0.1');
  await once(tcp, 'listening');
  const port = (tcp.address() as net.AddressInfo).port;
  const vpath = `data/pvcalls-bench-${process.pid}`;
  // A multi-server: one channel per client, as many at once as PVCalls has sockets.
  const vserver = x.createMultiServer({ domid: DOMU, path: vpath, readMin: 65536, writeMin: 65536 }, sink);
  await once(vserver.listen(), 'listening');
  // The same, each channel piped into a TCP connection to the sink (and the sink's answer back).
  const vtcp = x.createMultiServer({ domid: DOMU, path: `${vpath}-tcp`, readMin: 65536, writeMin: 65536 }, (v) => {
    const c = net.connect(port, '127.0.0.1');
    v.pipe(c).pipe(v);
    const end = () => (v.destroy(), c.destroy());
    v.on('error', end).on('close', end);
    c.on('error', end).on('close', end);
  });
  await once(vtcp.listen(), 'listening');

  // The child takes the same options (--mib, --quick): the sink counts what the parent expects.
  const child = fork(__filename, ['--child', ...argv], {
    env: { ...process.env, XEN_MOCK_DOMID: String(DOMU) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  await once(child, 'message');
  const ask = async (m: Job) => {
    child.send(m);
    const [r] = (await once(child, 'message')) as [{ mibps: number; p50: number }];
    return r;
  };
  const kinds: Record<string, Target> = {
    'pvcalls-4': { kind: 'pvcalls', port, dev: 0 },
    'pvcalls-5': { kind: 'pvcalls', port, dev: 1 },
    vchan: { kind: 'vchan', path: `/local/domain/0/${vpath}` },
    'vchan-tcp': { kind: 'vchan', path: `/local/domain/0/${vpath}-tcp` },
  };
  const res: Record<string, number[]> = {};
  for (let run = 0; run < RUNS; run++)
    for (const k of run % 2 ? [...paths].reverse() : paths) {
      for (const n of [1, 8]) (res[`${k}-tp${n}`] ??= []).push((await ask({ op: 'throughput', n, ...kinds[k] })).mibps);
      (res[`${k}-connect`] ??= []).push((await ask({ op: 'connect', ...kinds[k] })).p50);
    }
  child.send({ op: 'end' });
  await once(child, 'exit');
  vserver.close();
  vtcp.close();
  tcp.close();
  await be.close();
  for (const d of DEVICES) await x.removePvcallsDevice(xs, { frontend: DOMU, backend: 0, dev: d.dev });
  xs.close();

  const L: string[] = [];
  L.push(
    `pvcalls bench: ${MIB} MiB one way per socket, ${CONNECTS} connects; median of ${RUNS} runs (spread min-max); ` +
      `backend ${x.currentBackend()}, data pump ${PUMP ?? 'default'}, ${os.cpus().length} cpus, Node ${process.version}`,
  );
  L.push('');
  L.push('| path | 1 socket MiB/s | 8 sockets MiB/s (total) | connect p50 µs |');
  L.push('|---|---|---|---|');
  const names: Record<string, string> = {
    'pvcalls-4': 'PVCalls, ring order 4 (32 KiB each way), Node backend, TCP sink',
    'pvcalls-5': 'PVCalls, ring order 5 (64 KiB each way), Node backend, TCP sink',
    vchan: 'VchanStream (multi-server, 64 KiB rings)',
    'vchan-tcp': 'VchanStream (64 KiB rings) piped to the TCP sink',
  };
  for (const k of paths)
    L.push(`| ${names[k]} | ${fmt(res[`${k}-tp1`])} | ${fmt(res[`${k}-tp8`])} | ${fmt(res[`${k}-connect`])} |`);
  L.push('');
  const ratio = (a: number[], b: number[]) => a.map((v, i) => v / b[i]);
  for (const k of paths.filter((p) => p.startsWith('pvcalls')))
    for (const base of paths.filter((p) => p.startsWith('vchan')))
      L.push(
        `${k} / ${base}: throughput 1 socket ${fmt(ratio(res[`${k}-tp1`], res[`${base}-tp1`]), 2)}x, ` +
          `8 sockets ${fmt(ratio(res[`${k}-tp8`], res[`${base}-tp8`]), 2)}x; connect time ${fmt(ratio(res[`${k}-connect`], res[`${base}-connect`]), 2)}x`,
      );
  console.log(L.join('\n'));
}

if (argv.includes('--child')) void childMain();
else
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
