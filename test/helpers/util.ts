import { ChildProcess, fork } from 'node:child_process';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import * as path from 'node:path';

import { afterEach } from 'vitest';

import type { EventChannel } from '../../dist/cjs/index.js';

import { root } from './env';

export const peerScript = path.join(root, 'test', 'helpers', 'peer.js');

/** Starts test/helpers/peer.js as domain DOMID with ARGS; resolves its messages through next(). */
export function startPeer(domid: number, args: string[], extraEnv: Record<string, string> = {}) {
  const child = fork(peerScript, args, {
    env: { ...process.env, XEN_MOCK_DOMID: String(domid), ...extraEnv },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const queue: unknown[] = [];
  const waiters: ((m: unknown) => void)[] = [];
  child.on('message', (m) => {
    const w = waiters.shift();
    if (w) w(m);
    else queue.push(m);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    exited,
    next<T = Record<string, unknown>>(timeoutMs = 20_000): Promise<T> {
      const m = queue.shift();
      if (m !== undefined) return Promise.resolve(m as T);
      return new Promise<T>((resolve, reject) => {
        const t = setTimeout(
          () => reject(new Error(`no message from peer ${args.join(' ')} in ${timeoutMs} ms`)),
          timeoutMs,
        );
        waiters.push((v) => {
          clearTimeout(t);
          resolve(v as T);
        });
      });
    },
    send(m: unknown) {
      child.send(m as never);
    },
  };
}

export type Peer = ReturnType<typeof startPeer>;

export function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Random data cut into random-sized chunks (1 byte to MAX). */
export function randomChunks(total: number, max: number): Buffer[] {
  const out: Buffer[] = [];
  let left = total;
  while (left > 0) {
    const n = Math.min(left, 1 + Math.floor(Math.random() * max));
    out.push(randomBytes(n));
    left -= n;
  }
  return out;
}

export function fdCount(): number {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('node:fs').readdirSync('/proc/self/fd').length;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A fresh vchan path: short, since Xen's libxenvchan takes at most 49 bytes even for "/local/domain/N/..." */
export function uniquePath(tag: string): string {
  return `data/vchan/${tag.slice(0, 8)}-${(process.pid % 1296).toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

export function killChild(c: ChildProcess): void {
  if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}

/**
 * Children and cleanups of a test file, undone after every test: each child is killed and awaited,
 * then the cleanups run, last first.
 */
export function afterEachTest(): { children: ChildProcess[]; cleanups: (() => unknown)[] } {
  const children: ChildProcess[] = [];
  const cleanups: (() => unknown)[] = [];
  afterEach(async () => {
    for (const c of children.splice(0)) {
      killChild(c);
      if (c.exitCode === null && c.signalCode === null) await once(c, 'exit');
    }
    for (const f of cleanups.splice(0).reverse()) await f();
  });
  return { children, cleanups };
}

/** The next port EventChannel CH reports, or null after MS milliseconds. */
export function nextEvent(ch: EventChannel, ms = 2000): Promise<number | null> {
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      ch.off('event', on);
      resolve(null);
    }, ms);
    const on = (p: number) => {
      clearTimeout(t);
      ch.off('event', on);
      resolve(p);
    };
    ch.on('event', on);
  });
}
