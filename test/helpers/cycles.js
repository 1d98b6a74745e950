'use strict';
// connect/close cycles against one server in this process; prints JSON lines {cycle, rss} after a
// warm-up and at the end. Run with --max-semi-space-size=1 so that V8's young generation, which
// otherwise grows to 32 MiB under this allocation rate, cannot hide (or fake) native growth.
//   node --expose-gc --max-semi-space-size=1 cycles.js WARMUP WINDOW PATH
// Reports after WARMUP cycles and after each of two windows of WINDOW cycles.
const path = require('node:path');
const x = require(path.join(__dirname, '..', '..'));

const [warmup, measured, p] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];

async function main() {
  const srv = x.createServer({ domid: 0, path: p, readMin: 1024, writeMin: 1024 });
  srv.on('connection', (s) => {
    s.on('data', () => {});
    s.on('error', () => {});
  });
  srv.listen();
  const report = (cycle) => {
    global.gc();
    // What is not V8's heap: RSS less the physical memory V8's heap has committed.
    const rss = process.memoryUsage().rss;
    const v8heap = require('node:v8').getHeapStatistics().total_physical_size;
    process.stdout.write(`${JSON.stringify({ cycle, rss, native: rss - v8heap })}\n`);
  };
  for (let i = 0; i < warmup + 2 * measured; i++) {
    if (i === warmup || i === warmup + measured) report(i);
    const c = await x.connect({ domid: 0, path: `/local/domain/0/${p}`, timeout: 5000 });
    const closed = new Promise((r) => c.once('close', r));
    c.end('x');
    await closed;
  }
  report(warmup + 2 * measured);
  await new Promise((r) => srv.close(r));
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
