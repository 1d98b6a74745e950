/**
 * The examples in examples/, as a user runs them (README: "More in examples/"): the JavaScript
 * ones as they are, the TypeScript ones compiled with their own tsconfig against the package's
 * published types. Mock only: each pair is two processes, dom0 and domain 5.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import { Xenstore } from '../dist/cjs/index.js';
import { onMock, root } from './helpers/env';

const dir = path.join(root, 'examples');

interface Run {
  p: ChildProcess;
  /** Its stdout so far. */
  out(): string;
  /** Its stdout once it has exited with status 0. */
  done: Promise<string>;
}

/** Runs example FILE (ARGS) as DOMID. */
function start(domid: number, file: string, args: string[]): Run {
  const p = spawn(process.execPath, [path.join(dir, file), ...args], {
    env: { ...process.env, XEN_MOCK_DOMID: String(domid) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  p.stdout!.on('data', (d: Buffer) => (out += d));
  p.stderr!.on('data', (d: Buffer) => (err += d));
  const done = once(p, 'close').then(([code, signal]) => {
    if (code !== 0) throw new Error(`${file} ${args.join(' ')}: exit ${code ?? signal}\n${err}`);
    return out;
  });
  done.catch(() => undefined);
  return { p, out: () => out, done };
}

/** Resolves once R has printed something matching RE (rejects if it exits first). */
function saying(r: Run, re: RegExp): Promise<void> {
  return new Promise((resolve, reject) => {
    const look = () => {
      if (!re.test(r.out())) return;
      r.p.stdout!.off('data', look);
      resolve();
    };
    r.p.stdout!.on('data', look);
    r.p.once('close', () => reject(new Error(`it exited without printing ${re}: ${r.out()}`)));
    look();
  });
}

describe.skipIf(!onMock)('examples', () => {
  beforeAll(() => {
    const r = spawnSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', dir], {
      encoding: 'utf8',
    });
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  }, 60_000);

  it('echo-server.js: a client in domain 5 gets its hello back; the server withdraws on SIGTERM', async () => {
    const server = start(0, 'echo-server.js', ['server', '5']);
    await saying(server, /echo server for domain 5/);
    const client = start(5, 'echo-server.js', ['client', '0']);
    expect(await client.done).toContain('echo: hello from domain 5');
    server.p.kill('SIGTERM');
    expect(await server.done).toContain('domain 5 connected');
  });

  it('file-copy.js: a file goes from domain 5 to dom0 byte for byte (SHA-256 both ends)', async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'xv-example-'));
    const src = path.join(tmp, 'in');
    const dst = path.join(tmp, 'out');
    fs.writeFileSync(src, Buffer.alloc(3 << 20, 'example'));
    try {
      const receiver = start(0, 'file-copy.js', ['receive', '5', dst]);
      const sender = start(5, 'file-copy.js', ['send', '0', src]);
      const [sent, received] = await Promise.all([sender.done, receiver.done]);
      const hash = (s: string) => /sha256 ([0-9a-f]{64})/.exec(s)?.[1];
      expect(hash(received)).toBe(hash(sent));
      expect(fs.readFileSync(dst).equals(fs.readFileSync(src))).toBe(true);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('xenstore-watch.js: prints a change made under the path it watches', async () => {
    const w = start(0, 'xenstore-watch.js', ['/local/domain/0/data/example-watch']);
    await new Promise((r) => setTimeout(r, 300)); // its watch is set (the first event fires at once)
    const xs = new Xenstore();
    try {
      const seen = saying(w, /data\/example-watch = "42"/);
      await xs.write('/local/domain/0/data/example-watch', '42');
      await seen;
      await xs.rm('/local/domain/0/data/example-watch');
    } finally {
      xs.close();
      w.p.kill('SIGTERM');
      await once(w.p, 'close');
    }
  });

  it('json-rpc.ts (compiled): three typed requests in flight at once, each answered', async () => {
    const server = start(0, 'dist/json-rpc.js', ['server', '5']);
    await saying(server, /serving domain 5/);
    const client = start(5, 'dist/json-rpc.js', ['client', '0']);
    expect(await client.done).toContain('json-rpc: 1 + 2 = 3, 40 + 2 = 42, server up yes');
    server.p.kill('SIGTERM');
    await server.done;
  });

  it('grants.ts (compiled): shared pages read through their mapping, an event across a channel', async () => {
    const r = start(0, 'dist/grants.js', []);
    expect(await r.done).toMatch(/grants: refs \d+,\d+, read "hello through a grant", event on port ok/);
  });
});
