/**
 * vchan with no xenstore (dom0less): a server and a client that agreed in advance on a static
 * event channel and the grant reference of the control page. On the mock, the domains play a
 * dom0less pair: their processes run with XEN_MOCK_NO_XENSTORE=1, so any xenstore use fails.
 */
import { once } from 'node:events';

import { describe, expect, it } from 'vitest';

import * as x from '../dist/cjs/index.js';
import { mockAddon } from './helpers/env';
import { afterEachTest, killChild, sleep, startPeer } from './helpers/util';

const NO_XENSTORE = { XEN_MOCK_NO_XENSTORE: '1' };
/** Linux reserves grant references 0-7: a domain's first grant is 8, as the mock's is. */
const FIRST_REF = '8';

describe.runIf(mockAddon)('static vchan (no xenstore), on the mock', () => {
  const { children, cleanups } = afterEachTest();

  /** A dom0less pair: static port PORT of SERVER <-> PORT + 1 of CLIENT; both domains go after the test. */
  function pair(server: number, client: number, port: number): void {
    x.mockAddStaticChannel(server, port, client, port + 1);
    cleanups.push(() => {
      x.mockDestroyDomain(server);
      x.mockDestroyDomain(client);
    });
  }

  it('a client that comes first waits for the server; 64 MiB each way at once, SHA-256; no xenstore touched', async () => {
    const [srv, cli] = [61, 62];
    pair(srv, cli, 20);
    const bytes = String(64 << 20);
    const client = startPeer(cli, ['static-connect', String(srv), '21', FIRST_REF, bytes], NO_XENSTORE);
    children.push(client.child);
    await sleep(300); // the client is waiting on its port now
    const server = startPeer(srv, ['static-serve', String(cli), '20', FIRST_REF, bytes], NO_XENSTORE);
    children.push(server.child);
    // The server's domain has no xenstore: its processes cannot open one.
    expect(await server.next()).toEqual({ listening: true, xenstore: 'ENOENT' });
    expect(await client.next()).toEqual({ connected: true });
    const [c, s] = await Promise.all([client.next(60_000), server.next(60_000)]);
    expect(c).toMatchObject({ done: true, got: 64 << 20 });
    expect(s).toMatchObject({ done: true, got: 64 << 20 });
    expect(c.sent).toBe(s.recv);
    expect(s.sent).toBe(c.recv);
    for (const d of x.mockStats().filter((m) => m.domid === srv || m.domid === cli))
      expect(d).toMatchObject({ watches: 0, transactions: 0 });
  }, 90_000);

  it('a client killed mid-stream: the server offers the channel again, at the same ref, and the next client gets it', async () => {
    const [srv, cli] = [63, 64];
    pair(srv, cli, 22);
    const server = startPeer(srv, ['static-serve', String(cli), '22', FIRST_REF, String(1 << 20)], NO_XENSTORE);
    children.push(server.child);
    expect(await server.next()).toMatchObject({ listening: true });
    const hold = startPeer(cli, ['static-hold', String(srv), '23', FIRST_REF], NO_XENSTORE);
    children.push(hold.child);
    expect(await hold.next()).toEqual({ connected: true });
    await sleep(100); // streaming
    killChild(hold.child);
    await hold.exited;
    expect(await server.next()).toMatchObject({ lost: expect.any(String) });
    const again = startPeer(cli, ['static-connect', String(srv), '23', FIRST_REF, String(1 << 20)], NO_XENSTORE);
    children.push(again.child);
    expect(await again.next()).toEqual({ connected: true });
    const [c, s] = await Promise.all([again.next(), server.next()]);
    expect(c.sent).toBe(s.recv);
    expect(s.sent).toBe(c.recv);
  }, 60_000);

  it('the server killed: its client sees the end, and a client waiting meanwhile gets the restarted server', async () => {
    const [srv, cli] = [65, 66];
    pair(srv, cli, 24);
    const first = startPeer(srv, ['static-serve', String(cli), '24', FIRST_REF, String(1 << 20)], NO_XENSTORE);
    children.push(first.child);
    expect(await first.next()).toMatchObject({ listening: true });
    const hold = startPeer(cli, ['static-hold', String(srv), '25', FIRST_REF], NO_XENSTORE);
    children.push(hold.child);
    expect(await hold.next()).toEqual({ connected: true });
    killChild(first.child);
    await first.exited;
    // The server's pages went with it: the client's stream ends (the unmap cleared srv_live).
    expect(await hold.next()).toMatchObject({ ended: expect.any(String) });
    killChild(hold.child);
    await hold.exited;
    const waiting = startPeer(cli, ['static-connect', String(srv), '25', FIRST_REF, String(1 << 20)], NO_XENSTORE);
    children.push(waiting.child);
    await sleep(300);
    const second = startPeer(srv, ['static-serve', String(cli), '24', FIRST_REF, String(1 << 20)], NO_XENSTORE);
    children.push(second.child);
    expect(await second.next()).toMatchObject({ listening: true });
    expect(await waiting.next()).toEqual({ connected: true });
    const [c, s] = await Promise.all([waiting.next(), second.next()]);
    expect(c.sent).toBe(s.recv);
    expect(s.sent).toBe(c.recv);
  }, 60_000);

  it('bad options, a port this process holds, a ref another grant holds, and no server: clear errors', async () => {
    const [srv, cli] = [67, 68];
    pair(srv, cli, 26);
    const st = { port: 26, ref: 8 };
    expect(() => x.createServer({ domid: cli, path: 'data/vchan/x', static: st })).toThrow(
      expect.objectContaining({ code: 'ERR_INCOMPATIBLE_OPTION_PAIR' }),
    );
    await expect(x.connect({ domid: srv, path: '/local/domain/0/data/vchan/x', static: st })).rejects.toMatchObject({
      code: 'ERR_INCOMPATIBLE_OPTION_PAIR',
    });
    expect(() => x.createServer({ domid: cli, static: { port: 0, ref: 8 } })).toThrow(
      expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }),
    );
    expect(() => x.createServer({ domid: cli, static: { port: 26, ref: -1 } })).toThrow(
      expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }),
    );
    expect(() => x.createServer({ domid: cli, static: 26 as never })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => x.createMultiServer({ domid: cli, static: st })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }),
    );
    // No server: the client waits on its port, then times out.
    await expect(
      x.connect({ domid: srv, static: { port: 27, ref: 8 }, mockDomid: cli, timeout: 300 }),
    ).rejects.toMatchObject({ code: 'ETIMEDOUT' });

    // A client waiting for its server holds its port and waits on it: an EventChannel of the same
    // process may not bind it meanwhile (EBUSY); the client attaches when the server comes.
    const waiting = x.connect({ domid: srv, static: { port: 27, ref: 8 }, mockDomid: cli, timeout: 20_000 });
    await sleep(100);
    const evc = new x.EventChannel({ mockDomid: cli });
    expect(() => evc.bindStatic(27)).toThrow(expect.objectContaining({ code: 'EBUSY' }));
    const first = x.createServer({ domid: cli, static: st, mockDomid: srv });
    const accepted = once(first, 'connection');
    first.listen();
    const c = await waiting;
    const [sc] = (await accepted) as [x.VchanStream];
    c.write('ping');
    expect(String((await once(sc, 'data'))[0])).toBe('ping');
    expect(() => evc.bindStatic(27)).toThrow(expect.objectContaining({ code: 'EBUSY' })); // now the channel's
    c.destroy();
    await once(c, 'close');
    expect(evc.bindStatic(27)).toBe(27); // the client has gone: free
    evc.close();
    await new Promise((r) => first.close(r));

    // A server holds its port: an EventChannel of the same process may not bind it (EBUSY).
    const server = x.createServer({ domid: cli, static: st, mockDomid: srv });
    server.listen();
    await once(server, 'listening');
    const ev = new x.EventChannel({ mockDomid: srv });
    try {
      expect(() => ev.bindStatic(26)).toThrow(expect.objectContaining({ code: 'EBUSY' }));
      // Nor a second server of the domain.
      const twin = x.createServer({ domid: cli, static: st, mockDomid: srv });
      twin.listen();
      const [err] = (await once(twin, 'error')) as [NodeJS.ErrnoException];
      expect(err).toMatchObject({ code: 'EBUSY' });
      twin.close();
    } finally {
      await new Promise((r) => server.close(r));
    }
    expect(ev.bindStatic(26)).toBe(26); // free again once the server closed
    ev.close();

    // A ref that is not the first grant: the server waits for it (up to 5 s), then says which it got.
    const wrong = x.createServer({ domid: cli, static: { port: 26, ref: 9 }, mockDomid: srv });
    wrong.listen();
    const [e] = (await once(wrong, 'error')) as [NodeJS.ErrnoException];
    expect(e).toMatchObject({ code: 'EADDRNOTAVAIL', syscall: 'xengntshr_share_page_notify' });
    expect(e.message).toMatch(/granted as ref 8, not the agreed ref 9/);
    wrong.close();
  }, 30_000);
});
