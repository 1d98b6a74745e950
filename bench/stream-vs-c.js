'use strict';
// VchanStream vs the C program over the same mock and ring size (one direction at a time,
// dom0 <-> domain 5 in two processes), and the idle CPU of 100 open streams. One run, side by side.
//   node bench/stream-vs-c.js [MB]
const { execFileSync, fork } = require('node:child_process');
const { once } = require('node:events');
const path = require('node:path');

process.env.XEN_VCHAN_BACKEND = 'mock';
const x = require('..');
const root = path.join(__dirname, '..');
const MB = Number(process.argv[2] || 1000);
const RING = 65536;

async function nodeThroughput(direction) {
  const p = `data/vchan/5/bench-${process.pid}-${direction === 'dom0->domU' ? 'down' : 'up'}`;
  const server = x.createServer({ domid: 5, path: p, readMin: RING, writeMin: RING }).listen();
  const child = fork(__filename, ['child', p, direction, String(MB)], { env: { ...process.env, XEN_MOCK_DOMID: '5' } });
  const [s] = await once(server, 'connection');
  server.close();
  const bytes = MB * 1e6;
  const t0 = process.hrtime.bigint();
  const c0 = process.cpuUsage();
  if (direction === 'dom0->domU') {
    const chunk = Buffer.alloc(65536, 1);
    let sent = 0;
    await new Promise((resolve) => {
      const pump = () => {
        while (sent < bytes) {
          sent += chunk.length;
          if (!s.write(chunk)) return s.once('drain', pump);
        }
        s.end();
        resolve();
      };
      pump();
    });
    await once(child, 'message');
  } else {
    let got = 0;
    s.on('data', (d) => (got += d.length));
    await once(s, 'end');
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(c0);
  await once(child, 'exit');
  return { MBps: bytes / secs / 1e6, cpuSecondsPerGB: ((cpu.user + cpu.system) / 1e6 / bytes) * 1e9 };
}

async function child() {
  const [, , , p, direction, mb] = process.argv;
  const bytes = Number(mb) * 1e6;
  const s = await x.connect({ domid: 0, path: `/local/domain/0/${p}` });
  if (direction === 'dom0->domU') {
    let got = 0;
    s.on('data', (d) => {
      got += d.length;
      if (got >= bytes) process.send('done');
    });
    s.on('close', () => process.exit(0));
  } else {
    const chunk = Buffer.alloc(65536, 1);
    let sent = 0;
    const pump = () => {
      while (sent < bytes) {
        sent += chunk.length;
        if (!s.write(chunk)) return s.once('drain', pump);
      }
      s.end();
    };
    pump();
    s.on('close', () => process.exit(0));
  }
}

async function idleCpu(n, seconds) {
  const p = `data/vchan/idle-${process.pid}`;
  const servers = [];
  const streams = [];
  for (let i = 0; i < n; i++) {
    const server = x.createServer({ domid: 0, path: `${p}-${i}`, readMin: 1024, writeMin: 1024 }).listen();
    servers.push(server);
    const acc = once(server, 'connection');
    streams.push(await x.connect({ domid: 0, path: `/local/domain/0/${p}-${i}` }));
    streams.push((await acc)[0]);
  }
  const c0 = process.cpuUsage();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const cpu = process.cpuUsage(c0);
  for (const s of streams) s.destroy();
  for (const s of servers) s.close();
  return { streams: streams.length, seconds, cpuMs: (cpu.user + cpu.system) / 1000 };
}

async function main() {
  execFileSync('make', ['-s', '-C', path.join(root, 'native/mock'), 'bench']);
  const cBench = path.join(root, 'native/mock/build/bin/vchan_bench');
  const c = execFileSync(cBench, ['throughput', String(RING), '65536', String(MB * 1e6)], { encoding: 'utf8' })
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const rows = [];
  for (const direction of ['dom0->domU', 'domU->dom0']) {
    const n = await nodeThroughput(direction);
    const cr = c.find((r) => r.direction === direction);
    rows.push({ direction, C_MBps: cr.MBps, node_MBps: +n.MBps.toFixed(1), ratio: +(n.MBps / cr.MBps).toFixed(2) });
  }
  console.table(rows);
  console.log('idle:', await idleCpu(50, 10), '(50 channels = 100 open streams, both ends in this process)');
}

if (process.argv[2] === 'child') child();
else main().then(() => process.exit(0));
