/**
 * Dom0 <-> a PV domU, Node at both ends, on real Xen (the rig only: test/xen/run.sh builds the
 * domU's initramfs and job-suite.sh points XEN_RIG_DOMU at it). The domU runs
 * test/xen/domu-peer.js; commands and results travel through xenstore under the domU's data/.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  connect,
  connectPcid,
  createPvcallsBackend,
  createPvcallsDevice,
  createServer,
  EventChannel,
  GrantMapper,
  GrantSharer,
  removePvcallsDevice,
  VchanStream,
  Xenstore,
} from '../../dist/cjs/index.js';
import { hasDevXen } from '../helpers/env';
import { bootDomU, consoleLog, type DomU, type PeerMessage, xl } from './domu-driver.js';

const rig = process.env.XEN_RIG_DOMU; // directory holding vmlinuz and domu.cpio.zst
const NAME = 'vchan-domu';

/** A TCP port free on dom0's loopback now (for a server the domU asks a PVCalls backend for). */
function freeTcpPort(): Promise<number> {
  return new Promise((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (probe.address() as net.AddressInfo).port;
      probe.close(() => resolve(p));
    });
  });
}

/** Sends BYTES random bytes on S and takes as many; resolves with the SHA-256 of each way. */
function exchangeOn(s: net.Socket, bytes: number): Promise<{ sent: string; recv: string }> {
  return new Promise((resolve, reject) => {
    const sent = createHash('sha256');
    const recv = createHash('sha256');
    let got = 0;
    let wroteAll = false;
    const finish = () => {
      if (wroteAll && got >= bytes) resolve({ sent: sent.digest('hex'), recv: recv.digest('hex') });
    };
    s.on('data', (d: Buffer) => {
      recv.update(d);
      got += d.length;
      finish();
    });
    s.on('error', reject);
    let left = bytes;
    const pump = () => {
      while (left > 0) {
        const b = randomBytes(Math.min(left, 65536));
        sent.update(b);
        left -= b.length;
        if (!s.write(b)) return void s.once('drain', pump);
      }
      wroteAll = true;
      finish();
    };
    pump();
  });
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

describe.runIf(rig && hasDevXen)('dom0 <-> a PV domU, Node at both ends (real Xen)', () => {
  let domu: DomU;
  let domid = -1;
  let xs: Xenstore;
  let home = '';
  const command = (op: string, args: Record<string, unknown> = {}) => domu.command(op, args);

  beforeAll(async () => {
    const t0 = Date.now();
    xs = new Xenstore();
    domu = await bootDomU({ rig: rig as string, xs, name: NAME });
    ({ domid, home } = domu);
    console.log(`domU ${domid}: Node peer ready ${((Date.now() - t0) / 1000).toFixed(1)} s after xl create`);
  }, 300_000);

  afterAll(() => {
    try {
      xl('destroy', NAME);
    } catch {
      // already gone (the last test destroys it)
    }
    xs?.close();
    const log = consoleLog(NAME);
    if (process.env.XEN_RIG_DOMU) fs.writeFileSync(`${process.env.XEN_RIG_DOMU}/domu-console.log`, log);
    console.log(
      `domU console (the peer's lines):\n${log
        .split('\n')
        .filter((l) => l.startsWith('domu'))
        .join('\n')
        .slice(-6000)}`,
    );
  });

  /** Until stopped, says every 10 s where a transfer stands: dom0's counts and ring, and (through
   * the 'status' command) the domU's. Should a transfer hang, the log shows which end waits on what. */
  function watchdog(
    label: string,
    stream: () => VchanStream | undefined,
    progress: () => string,
  ): { stage: string; stop: () => void } {
    const t0 = Date.now();
    const w = {
      stage: 'connecting',
      stop: () => clearInterval(timer),
    };
    const timer = setInterval(() => {
      const s = stream();
      console.log(
        `${label} (${w.stage}, ${Date.now() - t0} ms): ${progress()}` +
          (s
            ? `, queued ${s.writableLength}, finished ${s.writableFinished}, ended ${s.readableEnded}, ring ${JSON.stringify(s.ringState())}`
            : ', no stream yet'),
      );
      void command('status').catch(() => undefined);
    }, 10_000);
    return w;
  }

  const rounds = Number(process.env.XEN_RIG_REPEAT ?? 1); // XEN_RIG_REPEAT=N runs each transfer N times

  for (let round = 0; round < rounds; round++)
    it(`a dom0 server and a Node client in the domU: 2 MiB each way, SHA-256${round ? ` (again, ${round})` : ''}`, async () => {
      const path = `data/vchan/${domid}/up-${round}`;
      const total = 2 << 20;
      const server = createServer({ domid, path });
      const accepted = once(server, 'connection');
      server.listen();
      let s: VchanStream | undefined;
      let got = 0;
      const wd = watchdog(
        'dom0 server',
        () => s,
        () => `got ${got} of ${total}`,
      );
      const result = await command('connect', { path: `/local/domain/0/${path}`, bytes: total });
      let done: PeerMessage;
      try {
        [s] = (await accepted) as [VchanStream];
        wd.stage = 'connected';
        const closed = new Promise((resolve) => s!.once('close', resolve));
        server.close();
        expect((await result('connected')).info).toMatchObject({ server: false });
        wd.stage = 'transferring';
        const out = randomBytes(total);
        const recv = createHash('sha256');
        s.on('data', (d: Buffer) => {
          recv.update(d);
          got += d.length;
        });
        s.on('error', () => {}); // a hang shows in the watchdog; the assertions below say what failed
        s.write(out);
        done = await result('done');
        wd.stage = 'closing';
        await closed;
        expect(got).toBe(total);
        expect(done.recv).toBe(sha256(out));
        expect(done.sent).toBe(recv.digest('hex'));
      } finally {
        wd.stop();
        s?.destroy();
        server.close();
      }
    });

  // The domU as the server, with equal 64 KiB rings and with a 4 KiB client -> server ring (the
  // client's writes wait for the domU's reads 512 times).
  for (const readMin of [65536, 4096])
    for (let round = 0; round < rounds; round++)
      it(`a Node server in the domU and a dom0 client, rings 64 KiB / ${readMin >> 10} KiB: 2 MiB each way, SHA-256${round ? ` (again, ${round})` : ''}`, async () => {
        const path = `data/vchan/0/down-${readMin >> 10}-${round}`;
        const total = 2 << 20;
        const result = await command('serve', { path, bytes: total, readMin, writeMin: 65536 });
        await result('listening');
        const c = await connect({ domid, path: `${home}/${path}`, timeout: 30_000 });
        expect(c.info).toMatchObject({ server: false, readSize: 65536, writeSize: readMin });
        const out = randomBytes(total);
        const recv = createHash('sha256');
        let got = 0;
        // Resolved from the handler itself: several 'data' events can come in one tick.
        const all = new Promise<void>((resolve) =>
          c.on('data', (d: Buffer) => {
            recv.update(d);
            got += d.length;
            if (got >= total) resolve();
          }),
        );
        c.on('error', () => {});
        c.write(out);
        const wd = watchdog(
          'dom0 client',
          () => c,
          () => `got ${got} of ${total}`,
        );
        wd.stage = 'transferring';
        let done: PeerMessage;
        try {
          await all;
          wd.stage = 'closing';
          const closed = new Promise((resolve) => c.once('close', resolve));
          c.end();
          await closed;
          wd.stage = 'waiting for the domU';
          done = await result('done');
        } finally {
          wd.stop();
          c.destroy();
        }
        expect(done.got).toBe(total);
        expect(done.recv).toBe(sha256(out));
        expect(done.sent).toBe(recv.digest('hex'));
      });

  it('grants: the domU shares a page that dom0 maps and answers in, and the reverse', async () => {
    const shared = await (await command('share', { text: `from domain ${domid}` }))();
    const mapper = new GrantMapper();
    const m = mapper.map(domid, shared.refs);
    const page = m.read(0, 64);
    expect(page.subarray(0, page.indexOf(0)).toString()).toBe(`from domain ${domid}`);
    m.write(Buffer.from('dom0 was here\0'));
    mapper.close();
    expect((await (await command('unshare'))()).text).toBe('dom0 was here');

    const sharer = new GrantSharer();
    const p = sharer.share(domid, 1);
    p.write(Buffer.from('from dom0\0'));
    const r = await (await command('map', { refs: p.refs, reply: `domain ${domid} was here` }))();
    expect(r.text).toBe('from dom0');
    const back = p.read(0, 64);
    expect(back.subarray(0, back.indexOf(0)).toString()).toBe(`domain ${domid} was here`);
    sharer.close();
  });

  it("event channels: dom0 binds the domU's unbound port, notifies, and is notified back", async () => {
    const result = await command('evtchn');
    const { port: remote } = await result('bound');
    const ev = new EventChannel();
    try {
      const local = ev.bindInterdomain(domid, remote);
      // Xen marks a freshly bound interdomain port pending: take that event first.
      await Promise.race([once(ev, 'event'), new Promise((r) => setTimeout(r, 3000))]);
      const back = once(ev, 'event');
      ev.notify(local);
      expect((await result('event')).port).toBe(remote);
      expect(await back).toEqual([local]);
    } finally {
      ev.close();
    }
  });

  // Static channels need IOCTL_EVTCHN_BIND_STATIC (Linux 6.5+); the rig's 6.1 kernel has none
  // (npm run test:xen -- --kernel 6.1), and the domU runs the same kernel as dom0.
  const [major, minor] = os.release().split('.').map(Number);
  const bindsStatic = major > 6 || (major === 6 && minor >= 5);
  for (const layout of ['domU', 'dom0'] as const)
    it.runIf(bindsStatic)(
      `static channel set up by dom0 (allocUnbound), the static port in ${layout}: 1000 round trips each way`,
      async () => {
        const ev = new EventChannel();
        try {
          let local: number;
          let result: Awaited<ReturnType<typeof command>>;
          if (layout === 'domU') {
            // The port goes into the domU's table, offered to dom0; dom0 binds it interdomain
            // (Xen marks dom0's new port pending: drained first), the domU takes it with bindStatic.
            const port = EventChannel.allocUnbound(domid, 0);
            const first = once(ev, 'event');
            local = ev.bindInterdomain(domid, port);
            expect((await first)[0]).toBe(local);
            result = await command('static-echo', { port });
            expect(await result('bound')).toMatchObject({ port });
          } else {
            // The reverse: the port in dom0's table, offered to the domU, taken by dom0 with
            // bindStatic; the domU binds it interdomain and drains its own pending event.
            const port = EventChannel.allocUnbound(0, domid);
            local = ev.bindStatic(port);
            result = await command('static-echo', { port, remote: 0 });
            expect(await result('bound')).toMatchObject({ firstPending: true });
          }
          const t0 = process.hrtime.bigint();
          for (let i = 0; i < 1000; i++) {
            const back = once(ev, 'event');
            ev.notify(local);
            await back;
          }
          const us = Number(process.hrtime.bigint() - t0) / 1e3 / 1000;
          const stop = await command('static-stop');
          expect(await stop()).toEqual(expect.objectContaining({ echoed: 1000 }));
          console.log(
            `static channel, port in ${layout}: 1000 round trips dom0 -> domU -> dom0, ${us.toFixed(0)} us each`,
          );
        } finally {
          ev.close();
        }
      },
      120_000,
    );

  it('PVCalls: the Node frontend in the domU, the Node backend in dom0: 4 sockets x 2 MiB each way, then accept', async () => {
    const back = await createPvcallsBackend();
    const dev = await createPvcallsDevice(xs, { frontend: domid, backend: 0 });
    const serverSide: Promise<{ recv: string; sent: string }>[] = [];
    const bytes = 2 << 20;
    // dom0's loopback, which is where the backend's sockets live.
    const server = net.createServer((c) => serverSide.push(exchangeOn(c, bytes)));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const listenPort = await freeTcpPort();
    try {
      const t0 = Date.now();
      const result = await command('pvcalls', {
        port: (server.address() as net.AddressInfo).port,
        sockets: 4,
        bytes,
        listenPort,
      });
      const r = await result('listening', 240_000);
      const secs = (Date.now() - t0) / 1000;
      const dom0 = await Promise.all(serverSide);
      expect(r.results).toHaveLength(4);
      // Each socket: what the domU sent is what dom0 received, and the other way round.
      const pairs = r.results.map((u: { sent: string; recv: string }) => `${u.sent}>${u.recv}`).sort();
      expect(pairs).toEqual(dom0.map((d) => `${d.recv}>${d.sent}`).sort());
      console.log(
        `PVCalls on real Xen: 4 sockets x 2 MiB each way, domU frontend -> dom0 backend, ${secs.toFixed(1)} s`,
      );
      // The other way: a client in dom0 reaches the domU's server through the backend.
      const c = net.connect(listenPort, '127.0.0.1');
      await once(c, 'connect');
      const msg = randomBytes(64 << 10);
      c.write(msg);
      const got: Buffer[] = [];
      let n = 0;
      for await (const d of c) {
        got.push(d as Buffer);
        n += (d as Buffer).length;
        if (n >= msg.length) break;
      }
      expect(Buffer.concat(got).equals(msg)).toBe(true);
      c.end();
      expect(await result()).toEqual(expect.objectContaining({ closed: true }));
    } finally {
      server.close();
      await back.close();
      await removePvcallsDevice(xs, { frontend: domid, backend: 0 });
      void dev;
    }
  }, 300_000);

  it('an unprivileged allocUnbound is refused (EPERM), and so is one for no domain (ESRCH)', async () => {
    const result = await command('alloc-unbound', { domid: 0, remote: domid });
    expect(await result()).toMatchObject({ code: 'EPERM', syscall: 'xc_evtchn_alloc_unbound' });
    expect(() => EventChannel.allocUnbound(30000, 0)).toThrow(expect.objectContaining({ code: 'ESRCH' }));
  });

  it('pcid: the server in the domU (the hardware domain), the client in dom0: v4 commands, 200 pipelined, 10 clients', async () => {
    const result = await command('pcid');
    const { path } = await result('listening');
    expect(path).toBe(`${home}/data/pcid`);
    const t0 = Date.now();
    const c = await connectPcid({ domid, timeout: 30000 });
    try {
      expect(c.node.startsWith(`${home}/data/pcid/`)).toBe(true);
      expect(await c.listAssignable()).toEqual(['0000:00:04.0']);
      expect(await c.resourceList('0000:00:04.0', 1)).toEqual({
        iomem: ['0x4000180000 0x40001fffff 0x140204'],
        irqs: [11],
      });
      const answers = await Promise.all(
        Array.from({ length: 200 }, (_, i) => c.isDeviceAssigned(i % 2 ? '0000:00:05.0' : '0000:00:04.0')),
      );
      expect(answers).toEqual(Array.from({ length: 200 }, (_, i) => i % 2 === 0));
      await expect(c.call('write_bdf', { sbdf: '0000:00:04.0', name: '../../../etc/passwd' })).rejects.toMatchObject({
        code: 'ERR_PCID_FAILED',
      });
      await c.makeAssignable('0000:00:05.0', true);
      const many = await Promise.all(Array.from({ length: 10 }, () => connectPcid({ domid, timeout: 30000 })));
      const r = await Promise.all(
        many.map((m) => Promise.all(Array.from({ length: 50 }, () => m.isDeviceAssigned('0000:00:04.0')))),
      );
      expect(r.flat().every(Boolean)).toBe(true);
      for (const m of many) m.close();
      console.log(`pcid dom0 -> domU ${domid}: 262 requests on 11 clients in ${Date.now() - t0} ms`);
    } finally {
      c.close();
    }
    // The client's node goes once it has left.
    for (let i = 0; i < 200 && (await xs.directory(`${home}/data/pcid`)).length > 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    expect(await xs.directory(`${home}/data/pcid`)).toEqual([]);
    const stop = await command('pcid-stop');
    expect((await stop()).served).toBe(0);
  });

  // Linux's own drivers (test/xen/build-pvcalls-modules.sh builds them for the 6.12 rig; Debian's
  // kernels do not): the Node frontend against pvcalls-back.ko, the Node backend against pvcalls-front.ko.
  const linuxPvcalls = rig ? `${rig}/pvcalls` : '';
  const haveLinuxPvcalls = !!rig && fs.existsSync(`${linuxPvcalls}/pvcalls-back.ko`);

  it.runIf(haveLinuxPvcalls)(
    "PVCalls: the Node frontend in the domU against Linux's pvcalls-back.ko in dom0: 4 sockets x 2 MiB each way, then accept",
    async () => {
      execFileSync('insmod', [`${linuxPvcalls}/pvcalls-back.ko`]);
      const server = net.createServer((c) => serverSide.push(exchangeOn(c, bytes)));
      const serverSide: Promise<{ recv: string; sent: string }>[] = [];
      const bytes = 2 << 20;
      try {
        await createPvcallsDevice(xs, { frontend: domid, backend: 0 });
        // Linux's backend takes the device: versions, max-page-order, InitWait.
        const back = `/local/domain/0/backend/pvcalls/${domid}/0`;
        for (let i = 0; i < 300 && (await xs.tryRead(`${back}/state`)) !== '2'; i++)
          await new Promise((r) => setTimeout(r, 100));
        expect(await xs.read(`${back}/versions`)).toBe('1');
        console.log(`Linux's pvcalls-back: max-page-order ${await xs.read(`${back}/max-page-order`)}`);
        server.listen(0, '127.0.0.1');
        await once(server, 'listening');
        const listenPort = await freeTcpPort();
        const t0 = Date.now();
        const result = await command('pvcalls', {
          port: (server.address() as net.AddressInfo).port,
          sockets: 4,
          bytes,
          listenPort,
        });
        const r = await result('listening', 240_000);
        const secs = (Date.now() - t0) / 1000;
        const dom0 = await Promise.all(serverSide);
        const pairs = r.results.map((u: { sent: string; recv: string }) => `${u.sent}>${u.recv}`).sort();
        expect(pairs).toEqual(dom0.map((d) => `${d.recv}>${d.sent}`).sort());
        console.log(
          `PVCalls on real Xen: 4 sockets x 2 MiB each way, Node frontend -> Linux's pvcalls-back, ${secs.toFixed(1)} s`,
        );
        const c = net.connect(listenPort, '127.0.0.1');
        await once(c, 'connect');
        c.write('through linux');
        const [d] = await once(c, 'data');
        expect(String(d)).toBe('through linux');
        c.end();
        expect(await result()).toEqual(expect.objectContaining({ closed: true }));
      } finally {
        server.close();
        await removePvcallsDevice(xs, { frontend: domid, backend: 0 });
        for (let i = 0; i < 50; i++) {
          try {
            execFileSync('rmmod', ['pvcalls_back'], { stdio: 'ignore' });
            break;
          } catch {
            await new Promise((r) => setTimeout(r, 100));
          }
        }
      }
    },
    300_000,
  );

  it.runIf(haveLinuxPvcalls)(
    "PVCalls: Linux's pvcalls-front.ko in the domU completes the handshake with the Node backend in dom0",
    async () => {
      const back = await createPvcallsBackend();
      const connected = new Promise<number>((resolve) => back.on('connect', (d) => resolve(d)));
      try {
        await createPvcallsDevice(xs, { frontend: domid, backend: 0 });
        const ins = await command('insmod', { path: '/lib/pvcalls-front.ko' });
        expect(await ins()).toMatchObject({ status: 0 });
        expect(await Promise.race([connected, new Promise((r) => setTimeout(() => r('timeout'), 60_000))])).toBe(domid);
        const front = `/local/domain/${domid}/device/pvcalls/0`;
        expect(await xs.read(`${front}/version`)).toBe('1');
        for (let i = 0; i < 100 && (await xs.read(`${front}/state`)) !== '4'; i++)
          await new Promise((r) => setTimeout(r, 100));
        expect(await xs.read(`${front}/state`)).toBe('4');
        expect(back.connected).toEqual([`${domid}/0`]);
      } finally {
        await back.close();
        await removePvcallsDevice(xs, { frontend: domid, backend: 0 });
      }
    },
    120_000,
  );

  it("the domU destroyed mid-stream: dom0's stream fails with ECONNRESET, it does not hang", async () => {
    const path = `data/vchan/${domid}/doomed`;
    const server = createServer({ domid, path });
    const accepted = once(server, 'connection');
    server.listen();
    const result = await command('hold', { path: `/local/domain/0/${path}` });
    const [s] = (await accepted) as [VchanStream];
    server.close();
    await result('connected');
    let bytes = 0;
    s.on('data', (d: Buffer) => (bytes += d.length));
    const failed = once(s, 'error');
    await new Promise<void>((resolve) => s.on('data', () => bytes >= 1 << 20 && resolve()));
    const t0 = Date.now();
    xl('destroy', NAME);
    const [err] = (await failed) as [NodeJS.ErrnoException];
    expect(err).toMatchObject({ code: 'ECONNRESET' });
    console.log(`dom0's stream failed ${Date.now() - t0} ms after xl destroy returned, having read ${bytes} bytes`);
    expect(await xs.isDomainIntroduced(domid)).toBe(false);
  });
});
