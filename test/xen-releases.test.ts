/**
 * Interop with Xen's own libxenvchan of one Debian release (issue 11): the echo peer
 * test/releases/vchan_echo.c, built against that release's header and library, at both ends of a
 * channel with ours. On the mock it runs as domain 5 over the mock's stable libraries as that
 * release names them: scripts/test-releases.sh runs this file once per release (bullseye 4.14,
 * bookworm 4.17, trixie 4.20) and backend. On real Xen (the rig) it runs in dom0 beside us, on the
 * system's libxenvchan (test/xen/run.sh builds it). Without these variables the file is skipped.
 *   XEN_VCHAN_RELEASE        the Xen version under test, e.g. "4.14"
 *   XEN_VCHAN_RELEASE_PEER   the echo peer built against it
 *   XEN_VCHAN_RELEASE_LIBS   on the mock, LD_LIBRARY_PATH for the peer: the mock's stable libraries,
 *                            then the release's
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';

import { describe, expect, it } from 'vitest';

import { connect, createServer, VchanStream, Xenstore } from '../dist/cjs/index.js';
import { config, onMock, root, selfDomid } from './helpers/env';
import { afterEachTest, startPeer, uniquePath } from './helpers/util';

const release = process.env.XEN_VCHAN_RELEASE;
const peerBin = process.env.XEN_VCHAN_RELEASE_PEER;
const peerLibs = process.env.XEN_VCHAN_RELEASE_LIBS;
// On real Xen the rig has one domain to run processes in: the peer is in ours.
const PEER_DOMID = onMock ? 5 : selfDomid;

const { children, cleanups } = afterEachTest();

/** Starts the release's echo peer in domain 5; resolves once it printed "ready". */
async function echoPeer(args: string[]): Promise<{ done: Promise<number> }> {
  const env: NodeJS.ProcessEnv = { ...process.env, XEN_MOCK_DOMID: String(PEER_DOMID) };
  if (peerLibs) env.LD_LIBRARY_PATH = peerLibs;
  delete env.LD_PRELOAD; // Xen's code runs uninstrumented even in the sanitizer job
  const child = spawn(peerBin!, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const lines = createInterface({ input: child.stdout! });
  let echoed = -1;
  const ready = new Promise<void>((resolve, reject) => {
    lines.on('line', (l) => {
      if (l === 'ready') resolve();
      const m = /^echoed (\d+)$/.exec(l);
      if (m) echoed = Number(m[1]);
    });
    child.once('exit', (code) =>
      reject(new Error(`vchan_echo ${args.join(' ')} exited ${code} before "ready": ${err}`)),
    );
  });
  const done = new Promise<number>((resolve, reject) =>
    child.once('exit', (code) =>
      code === 0 ? resolve(echoed) : reject(new Error(`vchan_echo ${args.join(' ')} exited ${code}: ${err}`)),
    ),
  );
  done.catch(() => undefined);
  await ready;
  return { done };
}

/** Writes BYTES random bytes in random chunks and reads the echo; resolves with both hashes. */
function exchange(s: VchanStream, bytes: number): Promise<{ sent: string; echoed: string }> {
  return new Promise((resolve, reject) => {
    const sent = createHash('sha256');
    const echoed = createHash('sha256');
    let got = 0;
    s.on('error', reject);
    s.on('data', (d: Buffer) => {
      echoed.update(d);
      got += d.length;
      if (got === bytes) resolve({ sent: sent.digest('hex'), echoed: echoed.digest('hex') });
      if (got > bytes) reject(new Error(`${got} bytes echoed, ${bytes} sent`));
    });
    let left = bytes;
    const pump = () => {
      while (left > 0) {
        const b = randomBytes(Math.min(left, 1 + Math.floor(Math.random() * 50_000)));
        sent.update(b);
        left -= b.length;
        if (!s.write(b)) return void s.once('drain', pump);
      }
    };
    pump();
  });
}

function removeLater(path: string): void {
  cleanups.push(async () => {
    const xs = new Xenstore();
    await xs.rm(path).catch(() => undefined);
    xs.close();
  });
}

const BYTES = 1 << 20;
// In-page rings (1 KiB and 2 KiB, no extra grants) and 64 KiB rings of 16 granted pages each.
const RINGS = [
  { name: 'in-page rings', min: 1024 },
  { name: '64 KiB rings', min: 65536 },
];

describe.skipIf(!release || !peerBin)(`Xen ${release}'s libxenvchan at the other end`, () => {
  for (const { name, min } of RINGS) {
    it(`its client, our server (${name}): 1 MiB echoed intact`, async () => {
      const rel = uniquePath('relsrv');
      const server = createServer({ domid: PEER_DOMID, path: rel, readMin: min, writeMin: min });
      cleanups.push(() => new Promise((r) => server.close(() => r(undefined))));
      const accepted = new Promise<VchanStream>((resolve) => server.once('connection', resolve));
      server.listen();
      await new Promise<void>((r) => server.once('listening', () => r()));
      const peer = await echoPeer(['client', '0', `/local/domain/0/${rel}`]);
      const s = await accepted;
      const { sent, echoed } = await exchange(s, BYTES);
      expect(echoed).toBe(sent);
      s.destroy();
      expect(await peer.done).toBe(BYTES);
    });

    it(`its server, our client (${name}): 1 MiB echoed intact`, async () => {
      const full = `/local/domain/${PEER_DOMID}/${uniquePath('relcli')}`;
      removeLater(full); // Xen's libxenvchan before 4.15 leaves its entry behind
      const peer = await echoPeer(['server', '0', full, String(min), String(min)]);
      const s = await connect({ domid: PEER_DOMID, path: full, timeout: 10_000 });
      const { sent, echoed } = await exchange(s, BYTES);
      expect(echoed).toBe(sent);
      s.destroy();
      expect(await peer.done).toBe(BYTES);
    });
  }

  it.runIf(config === 'real-over-mock')('the real addon runs on the libxenstore this release names', async () => {
    const xs = new Xenstore();
    await xs.read('domid');
    xs.close();
    const want = process.env.XEN_VCHAN_LIBXENSTORE!;
    const maps = fs.readFileSync('/proc/self/maps', 'utf8');
    expect(maps).toContain(`/${want}`);
    // Without one, every call that needs xenstore fails with ELIBACC and says what to install.
    const r = spawnSync(
      process.execPath,
      ['-e', `try { new (require(${JSON.stringify(root)}).Xenstore)(); } catch (e) { console.log(e.code, e.message) }`],
      { env: { ...process.env, XEN_VCHAN_LIBXENSTORE: 'libxenstore.so.99' }, encoding: 'utf8' },
    );
    expect(r.stdout).toMatch(/^ELIBACC .*libxenstore\.so\.99.*apt-get install libxenstore4/);
  });

  it("paths longer than Xen's 49 bytes work between two of ours (a Node peer in another process)", async () => {
    // 62 bytes is what the PCI daemon's per-client channels need; 2034 is the longest relative path.
    for (const len of [62, 200, 2034]) {
      const rel = `data/${'p'.repeat(len - 'data/'.length - 7)}-${Math.random().toString(36).slice(2, 8)}`;
      expect(`/local/domain/0/${rel}`.length).toBeGreaterThan(49);
      const server = createServer({ domid: PEER_DOMID, path: rel });
      cleanups.push(() => new Promise((r) => server.close(() => r(undefined))));
      const accepted = new Promise<VchanStream>((resolve) => server.once('connection', resolve));
      server.listen();
      await new Promise<void>((r) => server.once('listening', () => r()));
      const peer = startPeer(PEER_DOMID, ['connect', '0', `/local/domain/0/${rel}`, String(100_000)]);
      children.push(peer.child);
      const s = await accepted;
      s.pipe(s); // echo what the peer sends
      expect(await peer.next()).toMatchObject({ connected: true });
      const r = await peer.next<{ sent: string; recv: string }>();
      expect(r.recv).toBe(r.sent);
      s.destroy();
    }
  });
});
