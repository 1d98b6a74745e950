/**
 * Xen's own programs on the mock (issue 10, item 9): vchan-socket-proxy from xen-utils, in server
 * mode and in client mode, linked to Debian's libxenvchan (over the mock's stable libraries) and to
 * the mock's own libxenvchan, with the mock's libxenctrl for what client mode asks of the
 * hypervisor. Server mode serves successive clients on ONE channel (it never offers a new one), so
 * these tests also hold our client to Xen's reuse semantics.
 *
 * Skipped where xen-utils is not installed (CI installs it).
 */
import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import { connect, createMultiServer, XEN_LIBXENVCHAN_MAX_PATH, Xenstore } from '../dist/cjs/index.js';
import { mockBuild, onMock } from './helpers/env';
import { afterEachTest, sleep, uniquePath } from './helpers/util';

function findProxy(): string | undefined {
  const base = '/usr/lib';
  try {
    for (const d of fs
      .readdirSync(base)
      .filter((n) => n.startsWith('xen-'))
      .sort()
      .reverse()) {
      const p = path.join(base, d, 'bin', 'vchan-socket-proxy');
      if (fs.existsSync(p)) return p;
    }
  } catch {
    // no /usr/lib?
  }
  return undefined;
}

const proxy = findProxy();
const libdirs = {
  debian: path.join(mockBuild, 'stable'),
  mock: path.join(mockBuild, 'lib'),
};
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const { children, cleanups } = afterEachTest();

function startProxy(lib: keyof typeof libdirs, domid: number | undefined, args: string[]): ChildProcess {
  const env: NodeJS.ProcessEnv = { ...process.env, LD_LIBRARY_PATH: libdirs[lib] };
  // Xen's programs run uninstrumented, with the mock's ordinary libraries: ASan preloaded by the
  // sanitizer job would check nothing of ours there.
  delete env.LD_PRELOAD;
  if (domid === undefined) delete env.XEN_MOCK_DOMID;
  else env.XEN_MOCK_DOMID = String(domid);
  const c = spawn(proxy!, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  c.stderr!.on('data', (d) => (err += d));
  c.on('exit', (code, sig) => {
    if (code !== null && code !== 0) console.error(`vchan-socket-proxy ${args.join(' ')} exited ${code}: ${err}`);
    void sig;
  });
  children.push(c);
  return c;
}

/** An echo server on a Unix socket in this process. */
async function echoServer(): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xv-proxy-'));
  const sock = path.join(dir, 'echo.sock');
  const srv = net.createServer((s) => s.pipe(s));
  srv.listen(sock);
  await once(srv, 'listening');
  cleanups.push(async () => {
    srv.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return sock;
}

/** Removes what a killed Xen libxenvchan server leaves (as a toolstack would). */
function removeEntryAfter(full: string): void {
  cleanups.push(async () => {
    const xs = new Xenstore();
    await xs.rm(full).catch(() => undefined);
    xs.close();
  });
}

/** Waits until a Unix socket accepts connections (the file exists from bind(), before listen()). */
async function waitForListener(p: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(p);
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(10);
  }
  throw new Error(`nothing listens on ${p}`);
}

/** Where Xen's xenstore tools (xenstore-utils) are, if installed. */
const xenstoreTool = (name: string): string | undefined =>
  ['/usr/bin', '/usr/sbin'].map((d) => path.join(d, name)).find((p) => fs.existsSync(p));

/** Runs one of Xen's xenstore tools as domain DOMID, over LIB's libxenstore; throws on failure. */
function xenstoreCmd(lib: keyof typeof libdirs, domid: number, name: string, args: string[]): string {
  const env: NodeJS.ProcessEnv = { ...process.env, LD_LIBRARY_PATH: libdirs[lib], XEN_MOCK_DOMID: String(domid) };
  delete env.LD_PRELOAD;
  const r = spawnSync(xenstoreTool(name)!, args, { env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${name} ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/**
 * vchan-socket-proxy's server (Xen 4.17) empties its ring when a client leaves (discard_buffers)
 * after it has noticed, so a next client that connects and writes before then loses its first
 * bytes (a ring's worth: 1024 here). Seen on the mock with its broker-relayed events (about one
 * run in twenty of five connections) and more often with peer-to-peer ones; the same race is there
 * on Xen. Successive connections therefore come a moment apart, as a real client's would.
 */
const PROXY_TURNAROUND_MS = 300;

describe.skipIf(!onMock || !proxy)("Xen's vchan-socket-proxy on the mock", () => {
  for (const lib of ['debian', 'mock'] as const) {
    it(`server mode (${lib} libxenvchan) in domain 5 serves 5 successive Node clients from dom0, SHA-256 both ways`, async () => {
      const sock = await echoServer();
      const rel = uniquePath('proxy');
      const full = `/local/domain/5/${rel}`;
      removeEntryAfter(full);
      startProxy(lib, 5, ['-m', 'server', '0', rel, sock]);
      for (let i = 0; i < 5; i++) {
        const c = await connect({ domid: 5, path: full, timeout: 10_000 });
        c.on('error', () => {});
        const out = randomBytes(1 + Math.floor(Math.random() * 60_000));
        const chunks: Buffer[] = [];
        let got = 0;
        const done = new Promise<void>((resolve) =>
          c.on('data', (d: Buffer) => {
            chunks.push(d);
            got += d.length;
            if (got >= out.length) resolve();
          }),
        );
        c.write(out);
        await done;
        expect(sha(Buffer.concat(chunks)), `connection ${i}`).toBe(sha(out));
        const closed = once(c, 'close');
        c.destroy();
        await closed;
        await sleep(PROXY_TURNAROUND_MS);
      }
    });

    it(`client mode and server mode (${lib} libxenvchan) carry 3 successive Unix-socket connections end to end`, async () => {
      const sock = await echoServer();
      const rel = uniquePath('p2p');
      const full = `/local/domain/5/${rel}`;
      removeEntryAfter(full);
      startProxy(lib, 5, ['-m', 'server', '0', rel, sock]);
      const front = path.join(path.dirname(sock), 'front.sock');
      startProxy(lib, undefined, ['-m', 'client', '5', full, front]);
      await waitForListener(front);
      for (let i = 0; i < 3; i++) {
        const out = randomBytes(1 + Math.floor(Math.random() * 60_000));
        const back = await new Promise<Buffer>((resolve, reject) => {
          const s = net.connect(front);
          const chunks: Buffer[] = [];
          let got = 0;
          s.on('data', (d) => {
            chunks.push(d);
            got += d.length;
            if (got >= out.length) {
              s.end();
              resolve(Buffer.concat(chunks));
            }
          });
          s.on('error', reject);
          setTimeout(
            () => reject(new Error(`connection ${i}: ${got} of ${out.length} bytes back after 20 s`)),
            20_000,
          ).unref();
          s.write(out);
        });
        expect(sha(back), `connection ${i}`).toBe(sha(out));
        // The client proxy closes its vchan before it accepts the next; the server must see it go.
        await sleep(PROXY_TURNAROUND_MS);
      }
    });

    it.skipIf(!xenstoreTool('xenstore-chmod'))(
      `Xen's xenstore tools and vchan-socket-proxy (${lib} libxenvchan) as a multi-server's client, by the documented steps`,
      async () => {
        // The server: ours, in dom0, for domain 5. The client: no code of ours at all.
        // Xen's libxenvchan truncates paths past XEN_LIBXENVCHAN_MAX_PATH (49): P/<id> must fit.
        const rel = `m${randomBytes(3).toString('hex')}`;
        const base = `/local/domain/0/${rel}`;
        expect(`${base}/0123456789abcdef`.length).toBeLessThanOrEqual(XEN_LIBXENVCHAN_MAX_PATH);
        const server = createMultiServer({ domid: 5, path: rel }, (s) => {
          s.on('error', () => {});
          s.pipe(s);
        });
        cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
        await once(server.listen(), 'listening');
        const id = randomBytes(8).toString('hex');
        xenstoreCmd(lib, 5, 'xenstore-write', [`${base}/requests/${id}`, '']);
        xenstoreCmd(lib, 5, 'xenstore-chmod', [`${base}/requests/${id}`, 'n5', 'b0']);
        // Answered once the request's node has gone; the channel is then at base/<id>.
        const xs = new Xenstore();
        cleanups.push(async () => xs.close());
        for (let i = 0; i < 500 && (await xs.tryRead(`${base}/requests/${id}`)) !== undefined; i++) await sleep(10);
        expect(await xs.tryRead(`${base}/requests/${id}`)).toBeUndefined();
        expect(xenstoreCmd(lib, 5, 'xenstore-read', [`${base}/${id}/ring-ref`]).trim()).toMatch(/^\d+$/);
        const front = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'xv-cmulti-')), 'front.sock');
        cleanups.push(async () => fs.rmSync(path.dirname(front), { recursive: true, force: true }));
        startProxy(lib, 5, ['-m', 'client', '0', `${base}/${id}`, front]);
        // No probe connection first (waitForListener): the proxy would spend the channel, which is
        // offered once, on it.
        let s: net.Socket | undefined;
        for (let i = 0; i < 500 && !s; i++) {
          s = await new Promise<net.Socket | undefined>((resolve) => {
            const c = net.connect(front);
            c.once('connect', () => resolve(c));
            c.once('error', () => resolve(undefined));
          });
          if (!s) await sleep(10);
        }
        expect(s).toBeDefined();
        const out = randomBytes(100_000);
        const back = await new Promise<Buffer>((resolve, reject) => {
          const chunks: Buffer[] = [];
          let got = 0;
          s!.on('data', (d) => {
            chunks.push(d);
            got += d.length;
            if (got >= out.length) {
              s!.end();
              resolve(Buffer.concat(chunks));
            }
          });
          s!.on('error', reject);
          setTimeout(() => reject(new Error(`${got} of ${out.length} bytes back after 20 s`)), 20_000).unref();
          s!.write(out);
        });
        expect(sha(back)).toBe(sha(out));
        expect(server.connections).toBe(1);
      },
    );
  }
});
