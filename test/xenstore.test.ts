/** Xenstore: reads, writes, permissions, transactions, watches. */
import { once } from 'node:events';

import { describe, expect, it } from 'vitest';

import { Xenstore } from '../dist/cjs/index.js';
import { selfDomid } from './helpers/env';
import { sleep } from './helpers/util';

describe('Xenstore', () => {
  it('reads, writes, lists, removes, and reports ENOENT as a system error', async () => {
    const xs = new Xenstore();
    const base = `/local/domain/${selfDomid}/data/api-${process.pid}`;
    await xs.write(`${base}/a`, 'hello');
    await xs.write(`${base}/b`, Buffer.from([0, 1, 2]));
    expect(await xs.read(`${base}/a`)).toBe('hello');
    expect([...(await xs.readBuffer(`${base}/b`))]).toEqual([0, 1, 2]);
    expect((await xs.directory(base)).sort()).toEqual(['a', 'b']);
    expect(await xs.tryRead(`${base}/zz`)).toBeUndefined();
    await expect(xs.read(`${base}/zz`)).rejects.toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'xs_read' });
    await xs.mkdir(`${base}/dir`);
    expect(await xs.read(`${base}/dir`)).toBe('');
    expect(xs.domainPath(7)).toBe('/local/domain/7');
    await xs.rm(base);
    await expect(xs.directory(base)).rejects.toMatchObject({ code: 'ENOENT' });
    xs.close();
  });

  it('permissions: get and set', async () => {
    const xs = new Xenstore();
    const p = `/local/domain/${selfDomid}/data/perm-${process.pid}`;
    await xs.write(p, 'x');
    await xs.setPermissions(p, [
      { domid: selfDomid, read: false, write: false },
      { domid: 5, read: true, write: false },
    ]);
    expect(await xs.getPermissions(p)).toEqual([
      { domid: selfDomid, read: false, write: false },
      { domid: 5, read: true, write: false },
    ]);
    await xs.rm(p);
    xs.close();
  });

  it('transactions commit atomically and retry when a conflict makes the end fail with EAGAIN', async () => {
    const xs = new Xenstore();
    const other = new Xenstore();
    const p = `/local/domain/${selfDomid}/data/tx-${process.pid}`;
    await xs.write(`${p}/n`, '0');
    let runs = 0;
    const result = await xs.transaction(async (tx) => {
      runs++;
      const n = Number(await tx.read(`${p}/n`));
      if (runs === 1) await other.write(`${p}/n`, '10'); // a concurrent change: this attempt must fail
      await tx.write(`${p}/n`, String(n + 1));
      return n + 1;
    });
    expect(runs).toBe(2);
    expect(result).toBe(11);
    expect(await xs.read(`${p}/n`)).toBe('11');
    await expect(
      xs.transaction(async (tx) => {
        await tx.write(`${p}/n`, 'never');
        throw new Error('abort');
      }),
    ).rejects.toThrow('abort');
    expect(await xs.read(`${p}/n`)).toBe('11');
    await xs.rm(p);
    xs.close();
    other.close();
  });

  it('a transaction that removes a tree and writes into it again commits; a change under the tree meanwhile conflicts', async () => {
    const xs = new Xenstore();
    const other = new Xenstore();
    const p = `/local/domain/${selfDomid}/data/txrm-${process.pid}`;
    await xs.write(`${p}/old/a`, 'stale');
    await xs.write(`${p}/q`, 'stale');
    let runs = 0;
    await xs.transaction(
      async (tx) => {
        runs++;
        await tx.rm(p);
        await tx.write(`${p}/q`, 'fresh');
      },
      { retries: 0 },
    );
    expect(runs).toBe(1);
    expect(await xs.directory(p)).toEqual(['q']);
    expect(await xs.read(`${p}/q`)).toBe('fresh');
    await xs.write(`${p}/old/a`, 'x');
    runs = 0;
    await xs.transaction(async (tx) => {
      runs++;
      await tx.rm(p);
      if (runs === 1) await other.write(`${p}/old/a`, 'changed under the removal');
      await tx.write(`${p}/q`, 'again');
    });
    expect(runs).toBe(2);
    expect(await xs.directory(p)).toEqual(['q']);
    await xs.rm(p);
    xs.close();
    other.close();
  });

  it("the event a watch fires when set reaches 'change' listeners attached after watch() resolved", async () => {
    const xs = new Xenstore();
    const p = `/local/domain/${selfDomid}/data/w0-${process.pid}`;
    await xs.write(p, 'already there');
    for (let i = 0; i < 20; i++) {
      const w = await xs.watch(p);
      await Promise.resolve(); // a caller that attaches a little later, still in the same turn
      const [ev] = await Promise.race([once(w, 'change'), sleep(2000).then(() => [null])]);
      expect(ev).toMatchObject({ path: p, token: w.token });
      await w.close();
    }
    await xs.rm(p);
    xs.close();
  });

  it('watches fire once when set, then on changes, as events and as an async iterator', async () => {
    const xs = new Xenstore();
    const p = `/local/domain/${selfDomid}/data/w-${process.pid}`;
    const w = await xs.watch(p);
    const it = w[Symbol.asyncIterator]();
    expect((await it.next()).value).toMatchObject({ path: p });
    const change = once(w, 'change');
    await xs.write(`${p}/k`, 'v');
    expect((await it.next()).value).toMatchObject({ path: `${p}/k`, token: w.token });
    await change;
    await w.close();
    expect((await it.next()).done).toBe(true);
    await xs.rm(p);
    xs.close();
  });
});
