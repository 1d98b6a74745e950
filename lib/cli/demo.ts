/**
 * `xen-vchan demo`: a dom0 server and a domU client in two processes on the mock, streaming data
 * both ways and printing the throughput. The domU half is this same program (`--role domU`).
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';

import type { VchanStream } from '../index';
import { fail, int, lib, opts, ringSize, size } from './args';

/** The guest: connects to dom0 and echoes its stream back until dom0 closes the channel. */
async function guest(p: string): Promise<void> {
  const s = await lib().connect({ domid: 0, path: `/local/domain/0/${p}`, timeout: 10000 });
  s.pipe(s);
  s.on('error', (e) => {
    process.stderr.write(`xen-vchan demo (domain 5): ${e.message}\n`);
    process.exitCode = 1;
  });
}

/** Sends BYTES on S in chunks and resolves once all of them have come back. */
function echoed(s: VchanStream, bytes: number): Promise<void> {
  const chunk = Buffer.alloc(Math.min(65536, Math.max(bytes, 1)), 0x5a);
  let sent = 0;
  let got = 0;
  return new Promise<void>((resolve, reject) => {
    s.on('error', reject);
    s.on('end', () => reject(new Error(`domain 5 closed the channel after echoing ${got} of ${bytes} bytes`)));
    s.on('data', (d: Buffer) => {
      got += d.length;
      if (got > bytes) reject(new Error(`domain 5 echoed ${got} bytes, ${bytes} were sent`));
      else if (got === bytes) resolve();
    });
    if (bytes === 0) return resolve();
    const pump = () => {
      while (sent < bytes) {
        const n = Math.min(chunk.length, bytes - sent);
        sent += n;
        if (!s.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
          s.once('drain', pump);
          return;
        }
      }
    };
    pump();
  });
}

/** `xen-vchan demo`. */
export async function cmdDemo(args: string[], self: string): Promise<void> {
  const o = opts(args, { bytes: { type: 'string' }, ring: { type: 'string' }, role: { type: 'string' } });
  process.env.XEN_VCHAN_BACKEND = process.env.XEN_VCHAN_BACKEND || 'mock';
  const bytes = o.bytes === undefined ? 256 << 20 : int(o.bytes, 'bytes');
  const ring = o.ring === undefined ? 65536 : ringSize(o.ring, 'ring', true);
  const p = `data/vchan/5/demo-${o.role ? process.ppid : process.pid}`;
  if (o.role === 'domU') return guest(p);
  const x = lib();
  console.log(
    `xen-vchan demo (${process.env.XEN_VCHAN_BACKEND} backend): dom0 server <-> domain 5 client in another process, ring ${ring} bytes`,
  );
  const server = x.createServer({ domid: 5, path: p, readMin: ring, writeMin: ring });
  const child = fork(self, ['demo', '--role', 'domU', '--ring', String(ring)], {
    env: { ...process.env, XEN_MOCK_DOMID: '5' },
  });
  const childExit = new Promise<number | string | null>((r) => child.once('exit', (code, sig) => r(sig ?? code)));
  server.listen();
  let connected = false;
  void childExit.then((c) => connected || fail(`domain 5 exited (${c}) before it connected`));
  const [s] = (await once(server, 'connection')) as [VchanStream];
  connected = true;
  server.close();
  const t0 = process.hrtime.bigint();
  await echoed(s, bytes);
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(`sent ${size(bytes)} to domain 5 and got every byte back in ${secs.toFixed(secs < 1 ? 3 : 2)} s:`);
  if (bytes > 0)
    console.log(
      `  ${size(Math.round(bytes / secs))}/s each way (${size(Math.round((2 * bytes) / secs))}/s through dom0's stream)`,
    );
  s.end();
  const code = await childExit;
  if (code !== 0) {
    process.stderr.write(`xen-vchan: domain 5 exited with ${code}\n`);
    process.exitCode = 1;
    return;
  }
  console.log('domain 5 has left; nothing is left behind (see `npx xen-vchan mock status`).');
}
