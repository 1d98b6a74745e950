/**
 * The mock's own API (lib/mock.ts): where its libraries and state are, the environment that runs
 * Xen's programs on it, its per-domain counts, and introducing and destroying domains as a
 * toolstack does. Mock addon only (the real backend has no mock to ask).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import * as x from '../dist/cjs/index.js';
import { mockAddon } from './helpers/env';
import { sleep } from './helpers/util';

function which(cmd: string): string | undefined {
  for (const d of (process.env.PATH ?? '').split(':')) if (fs.existsSync(path.join(d, cmd))) return path.join(d, cmd);
  return undefined;
}

describe.runIf(mockAddon)('the mock', () => {
  it("mockDir() is this run's broker directory and mockLibDir holds the drop-in libraries beside the broker", () => {
    expect(x.mockDir()).toBe(process.env.XEN_MOCK_DIR);
    for (const lib of [
      'libxenevtchn.so.1',
      'libxengnttab.so.1',
      'libxenstore.so.4',
      'libxenstore.so.3.0',
      'libxenvchan.so.4.17',
    ])
      expect(fs.existsSync(path.join(x.mockLibDir, lib)), lib).toBe(true);
    expect(fs.existsSync(path.join(x.mockLibDir, '..', 'bin', 'xenmockd'))).toBe(true);
  });

  it("mockEnv() runs Xen's own xenstore tools on the mock, as the domain it names", () => {
    const env = x.mockEnv(0);
    expect(env.LD_LIBRARY_PATH.split(':')[0]).toBe(x.mockLibDir);
    expect(env).toMatchObject({ XEN_MOCK_DIR: process.env.XEN_MOCK_DIR, XEN_MOCK_DOMID: '0' });
    expect(() => x.mockEnv(-1)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    const read = which('xenstore-read');
    if (!read) return; // xenstore-utils is not installed here (CI installs it)
    const r = spawnSync(read, ['/local/domain/0/domid'], { env: { ...process.env, ...env }, encoding: 'utf8' });
    expect(r.stdout.trim(), r.stderr).toBe('0');
  });

  it('mockStats() counts what each domain holds, and one domain on its own', async () => {
    const before = x.mockStats(0)[0];
    const xs = new x.Xenstore();
    const ch = new x.EventChannel();
    ch.bindUnbound(0);
    try {
      const now = x.mockStats(0);
      expect(now).toHaveLength(1);
      expect(now[0].domid).toBe(0);
      expect(now[0].handles).toBe((before?.handles ?? 0) + 2);
      expect(now[0].ports).toBe((before?.ports ?? 0) + 1);
      expect(x.mockStats().some((s) => s.domid === 0)).toBe(true);
    } finally {
      ch.close();
      xs.close();
    }
  });

  it('mockIntroduceDomain() and mockDestroyDomain() do what a toolstack does, with the special watches', async () => {
    const dom = 9;
    const xs = new x.Xenstore();
    const seen: string[] = [];
    const watches = await Promise.all(['@introduceDomain', '@releaseDomain'].map((p) => xs.watch(p)));
    for (const w of watches)
      void (async () => {
        for await (const e of w) seen.push(e.path);
      })();
    try {
      await sleep(50); // the first event of each watch, fired as it is set
      seen.length = 0;
      x.mockIntroduceDomain(dom);
      expect(await xs.read(`/local/domain/${dom}/domid`)).toBe(String(dom));
      expect(await xs.getPermissions(`/local/domain/${dom}/data`)).toEqual([expect.objectContaining({ domid: dom })]);
      x.mockDestroyDomain(dom);
      expect(await xs.tryRead(`/local/domain/${dom}`)).toBeUndefined();
      for (let i = 0; i < 100 && !(seen.includes('@introduceDomain') && seen.includes('@releaseDomain')); i++)
        await sleep(10);
      expect(seen).toEqual(expect.arrayContaining(['@introduceDomain', '@releaseDomain']));
      expect(() => x.mockDestroyDomain(0)).toThrow(expect.objectContaining({ code: 'EPERM' }));
    } finally {
      await Promise.all(watches.map((w) => w.close()));
      xs.close();
      x.mockIntroduceDomain(dom); // a destroyed domain stays gone until introduced again
      const cleanup = new x.Xenstore();
      await cleanup.rm(`/local/domain/${dom}`).catch(() => undefined);
      cleanup.close();
    }
  });
});
