'use strict';
// A peer in another domain (XEN_MOCK_DOMID on the mock), driven by the tests over IPC.
//   serve PEER PATH READMIN WRITEMIN BYTES    serve one client: send BYTES random bytes, hash what comes back
//   connect SERVER PATH BYTES                  connect: the same from the client side
//   hold-serve PEER PATH | hold-connect SERVER PATH   stream until killed
//   echo-cycles SERVER PATH N                  N cycles of connect, a token echoed back, close; reports
//                                              {failures} (a refused connect, a wrong echo, an error)
//   multi-connect SERVER PATH BYTES            connectMulti, then send BYTES and hash what comes back (an echo)
//   multi-many SERVER PATH N BYTES             N connectMulti clients at once, each an exchange of BYTES
//   multi-hold SERVER PATH                     connectMulti, then stream until killed
//   multi-serve PEER PATH                      a multi-server (echo) until killed
//   pcid-call SERVER SBDF N                    connectPcid, N is_device_assigned requests pipelined
//   pcid-hold SERVER SBDF                      connectPcid, then requests one after another until killed
//   static-ping PORT N                         bindStatic(PORT); N > 0: N round trips, then report; 0: answer
//   static-dom0 DOMU LAYOUT                    dom0 sets up a channel with DOMU by allocUnbound: LAYOUT 'domu'
//                                              (the port in DOMU's table, dom0 binds it interdomain) or 'dom0'
//                                              (in dom0's table, taken with bindStatic); then round trips
//                                              on each {go: N}, until 'end'
//   echo-interdomain DOMID PORT                bindInterdomain(DOMID, PORT), then answer every event
//   pvcalls-backend                            a PVCalls backend (lib/pvcalls) until killed
//   pvcalls-stream PORT                        the PVCalls frontend of this domain: connect to 127.0.0.1:PORT
//                                              on the backend's side and stream until killed
//   xs-read PATH                               try to read a xenstore node (permission tests)
//   xs-storm PATH MS                           the hostile client domain, by hand: rewrite PATH as fast as
//                                              it can for MS ms (a request id, junk, 4000 bytes in turn)
//   xs-rm PATH                                 the hostile client domain, by hand: remove PATH
//   xs-flood QUEUE MS                          the hostile client domain, by hand: make request nodes
//                                              QUEUE/<random id> as fast as it can for MS ms, taking none
//   grant-hog DOMID                            share every grant page left (to DOMID) and hold them until
//                                              told 'release'
//   reoffer-starved MS                         a VchanServer whose re-offer finds no grant pages for MS ms
//                                              (see the role); reports {served, starved, error, listening}
//   static-serve PEER PORT REF BYTES           a static vchan server (no xenstore): each client, an exchange
//                                              of BYTES; reports {listening}, then {done} or {lost} per client
//   static-connect SERVER PORT REF BYTES       a static vchan client: {connected}, then an exchange of BYTES
//   static-hold SERVER PORT REF                a static vchan client that reads until killed; {ended} when its
//                                              server goes
//   map DOMID REF                              try to map a grant (permission tests)
//   bind DOMID PORT                            try to bind an interdomain port (permission tests)
const { createHash, randomBytes } = require('node:crypto');
const path = require('node:path');

const x = require(path.join(__dirname, '..', '..'));

const [role, ...args] = process.argv.slice(2);
const send = (m) => process.send && process.send(m);

function exchange(stream, bytes) {
  return new Promise((resolve, reject) => {
    const sent = createHash('sha256');
    const recv = createHash('sha256');
    let got = 0;
    let left = bytes;
    let wroteAll = false;
    const finish = () => {
      if (wroteAll && got >= bytes) resolve({ sent: sent.digest('hex'), recv: recv.digest('hex'), got });
    };
    stream.on('data', (d) => {
      recv.update(d);
      got += d.length;
      finish();
    });
    stream.on('error', reject);
    // A peer that leaves early ends the stream as a close would: what is missing is the loss.
    stream.on('close', () => reject(Object.assign(new Error(`closed after ${got} bytes`), { code: 'ECLOSED' })));
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, 1 + Math.floor(Math.random() * 100_000));
        const b = randomBytes(n);
        sent.update(b);
        left -= n;
        if (!stream.write(b)) return stream.once('drain', pump);
      }
      wroteAll = true;
      finish();
    };
    pump();
  });
}

async function main() {
  switch (role) {
    case 'serve': {
      const [peer, p, rmin, wmin, bytes] = args;
      const srv = x.createServer({ domid: +peer, path: p, readMin: +rmin, writeMin: +wmin });
      srv.on('connection', async (s) => {
        // One client only: close the server now (the stream lives on). Closing it after the
        // stream would first offer the channel again, and Xen's libxenvchan leaves the nodes of a
        // server closed before any client came.
        srv.close();
        try {
          const r = await exchange(s, +bytes);
          send({ done: true, ...r, info: s.info });
          s.end();
        } catch (e) {
          send({ error: e.code || e.message });
        }
      });
      srv.listen(() => send({ listening: true }));
      break;
    }
    case 'connect': {
      const [server, p, bytes] = args;
      const s = await x.connect({ domid: +server, path: p, timeout: 20000 });
      send({ connected: true, info: s.info });
      const r = await exchange(s, +bytes);
      send({ done: true, ...r });
      s.end();
      break;
    }
    case 'echo-cycles': {
      const [server, p, n] = args;
      const failures = [];
      for (let i = 0; i < +n; i++) {
        let s;
        try {
          s = await x.connect({ domid: +server, path: p, timeout: 20000 });
        } catch (e) {
          failures.push(`${i}: ${e.message}`);
          continue;
        }
        const token = `<${process.pid}.${i}>`;
        const got = await new Promise((resolve) => {
          let text = '';
          s.on('data', (d) => {
            text += d;
            if (text.length >= token.length) resolve(text);
          });
          s.on('error', (e) => failures.push(`${i}: ${e.message}`));
          s.on('close', () => resolve(text));
          s.write(token);
        });
        if (got !== token) failures.push(`${i}: echoed ${JSON.stringify(got)}`);
        await new Promise((resolve) => {
          s.once('close', resolve);
          s.end();
        });
      }
      send({ failures });
      break;
    }
    case 'hold-serve':
    case 'hold-connect': {
      const [dom, p] = args;
      const go = (s) => {
        send({ connected: true });
        s.on('data', () => {});
        s.on('error', () => {});
        const b = Buffer.alloc(65536, 1);
        const pump = () => {
          while (s.writable && s.write(b));
          if (s.writable) s.once('drain', pump);
        };
        pump();
      };
      if (role === 'hold-serve') x.createServer({ domid: +dom, path: p }, go).listen(() => send({ listening: true }));
      else go(await x.connect({ domid: +dom, path: p, timeout: 20000 }));
      break;
    }
    case 'multi-connect': {
      const [server, p, bytes] = args;
      // With XV_ANNOUNCE set: say when it starts asking (a test that needs to know it is waiting).
      if (process.env.XV_ANNOUNCE) send({ asking: true });
      const t0 = Date.now();
      const s = await x.connectMulti({ domid: +server, path: p, timeout: 30000 });
      send({ connected: true, ms: Date.now() - t0, at: Date.now() });
      const r = await exchange(s, +bytes);
      send({ done: true, ...r });
      s.end();
      break;
    }
    case 'multi-many': {
      const [server, p, n, bytes] = args;
      const results = await Promise.allSettled(
        Array.from({ length: +n }, async () => {
          const s = await x.connectMulti({ domid: +server, path: p, timeout: 60000 });
          const r = await exchange(s, +bytes);
          s.end();
          return r.recv === r.sent && r.got === +bytes;
        }),
      );
      const errors = results.filter((r) => r.status === 'rejected').map((r) => r.reason.code || r.reason.message);
      send({ done: true, ok: results.filter((r) => r.status === 'fulfilled' && r.value).length, errors });
      process.exit(0);
      break;
    }
    case 'multi-hold': {
      const [server, p] = args;
      const s = await x.connectMulti({ domid: +server, path: p, timeout: 30000 });
      s.on('data', () => {});
      s.on('error', () => {});
      send({ connected: true });
      break;
    }
    case 'multi-serve': {
      const [peer, p] = args;
      const srv = x.createMultiServer({ domid: +peer, path: p }, (s) => {
        s.on('error', () => {});
        s.pipe(s);
      });
      srv.on('error', (e) => send({ error: e.code || e.message }));
      let now = 0;
      let peak = 0;
      srv.on('connection', (s) => {
        now++;
        peak = Math.max(peak, now);
        s.on('close', () => now--);
      });
      process.on('message', (m) => m === 'peak' && send({ peak }));
      srv.listen(() => send({ listening: true }));
      break;
    }
    case 'pcid-call':
    case 'pcid-hold': {
      const [server, sbdf, n] = args;
      const c = await x.connectPcid({ domid: +server, timeout: 20000 });
      send({ connected: true, node: c.node });
      if (role === 'pcid-call') {
        const r = await Promise.all(Array.from({ length: +n }, () => c.isDeviceAssigned(sbdf)));
        send({ done: true, replies: r.length, allTrue: r.every((v) => v === true) });
        c.close();
      } else {
        for (;;) await c.isDeviceAssigned(sbdf);
      }
      break;
    }
    case 'static-ping': {
      const [port, n] = args.map(Number);
      const ch = new x.EventChannel();
      ch.bindStatic(port);
      if (n === 0) {
        ch.on('event', (p) => ch.notify(p));
        send({ bound: port });
        break;
      }
      send({ bound: port });
      await new Promise((r) => process.once('message', r)); // go
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < n; i++) {
        const got = new Promise((r) => ch.once('event', r));
        ch.notify(port);
        await got;
      }
      const us = Number(process.hrtime.bigint() - t0) / 1e3 / n;
      // What the domains hold of the mock: event channels, and nothing of xenstore.
      send({ done: n, usPerRoundTrip: Math.round(us), stats: x.mockStats() });
      ch.close();
      process.exit(0);
      break;
    }
    case 'static-dom0': {
      const domu = Number(args[0]);
      const layout = args[1];
      x.mockIntroduceDomain(domu); // what the toolstack did when it built the domain
      // Xen's rule, kept by the mock: only dom0 may allocate in another domain's table.
      let eperm;
      try {
        x.EventChannel.allocUnbound(0, domu, { mockDomid: domu });
      } catch (e) {
        eperm = { code: e.code, syscall: e.syscall };
      }
      const ch = new x.EventChannel();
      let port;
      let local;
      let firstPending = false;
      if (layout === 'domu') {
        port = x.EventChannel.allocUnbound(domu, 0);
        const first = new Promise((r) => ch.once('event', r));
        local = ch.bindInterdomain(domu, port);
        firstPending = (await first) === local; // Xen marks the binder's new port pending
      } else {
        port = x.EventChannel.allocUnbound(0, domu);
        local = ch.bindStatic(port);
      }
      send({ port, local, eperm, firstPending });
      process.on('message', async (/** @type {'end' | {go: number}} */ m) => {
        if (m === 'end') {
          ch.close();
          process.exit(0);
        }
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < m.go; i++) {
          const got = new Promise((r) => ch.once('event', r));
          ch.notify(local);
          await got;
        }
        send({ done: m.go, usPerRoundTrip: Math.round(Number(process.hrtime.bigint() - t0) / 1e3 / m.go) });
      });
      break;
    }
    case 'echo-interdomain': {
      const ch = new x.EventChannel();
      const first = new Promise((r) => ch.once('event', r));
      const local = ch.bindInterdomain(Number(args[0]), Number(args[1]));
      const firstPending = (await first) === local;
      ch.on('event', (p) => ch.notify(p));
      send({ bound: local, firstPending });
      break;
    }
    case 'pvcalls-backend': {
      const be = await require(
        path.join(__dirname, '..', '..', 'dist', 'cjs', 'pvcalls', 'backend.js'),
      ).createPvcallsBackend();
      be.on('connect', (d) => send({ connected: d }));
      send({ ready: true });
      break;
    }
    case 'pvcalls-stream': {
      const { connectPvcalls } = require(path.join(__dirname, '..', '..', 'dist', 'cjs', 'pvcalls', 'frontend.js'));
      const fe = await connectPvcalls({ timeout: 10000 });
      const s = fe.createConnection({ host: '127.0.0.1', port: Number(args[0]) });
      s.on('error', () => undefined);
      s.on('connect', () => {
        const block = randomBytes(65536);
        const pump = () => {
          while (s.write(block));
          s.once('drain', pump);
        };
        pump();
        send({ streaming: true });
      });
      break;
    }
    case 'xs-storm': {
      const [p, ms] = args;
      const xs = new x.Xenstore();
      const end = Date.now() + +ms;
      const values = ['0123456789abcdef', 'junk ../../x', 'f'.repeat(4000), ''];
      let writes = 0;
      const errors = {};
      while (Date.now() < end) {
        await xs.write(p, values[writes % values.length]).catch((e) => (errors[e.code] = (errors[e.code] ?? 0) + 1));
        writes++;
      }
      xs.close();
      send({ writes, errors });
      break;
    }
    case 'xs-flood': {
      const [q, ms] = args;
      const xs = new x.Xenstore();
      const end = Date.now() + +ms;
      let made = 0;
      const errors = {};
      // Eight writes in flight at a time: as fast as one process can go.
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          while (Date.now() < end) {
            await xs.write(`${q}/${randomBytes(8).toString('hex')}`, '').then(
              () => made++,
              (e) => (errors[e.code] = (errors[e.code] ?? 0) + 1),
            );
          }
        }),
      );
      xs.close();
      send({ made, errors });
      break;
    }
    case 'grant-hog': {
      // Shares every grant page this domain has left (one at a time, until ENOSPC) and holds them
      // until told 'release'.
      const [to] = args;
      const sharer = new x.GrantSharer();
      const held = [];
      for (;;) {
        try {
          held.push(sharer.share(+to, 1));
        } catch (e) {
          if (e.code !== 'ENOSPC') throw e;
          break;
        }
      }
      process.on('message', (m) => {
        if (m !== 'release') return;
        const at = Date.now();
        for (const h of held.splice(0)) h.unshare();
        send({ released: true, at });
      });
      send({ held: held.length });
      break;
    }
    case 'reoffer-starved': {
      // A VchanServer whose next offer finds the domain's grant pages all taken (by a hog that
      // grabs them as its client leaves, and lets them go RELEASE_MS later): it must offer again
      // once they are back, and serve the next client. Reports {served, error}.
      const [releaseMs] = args;
      const p = `data/vchan/reoffer-${process.pid}`;
      let error = null;
      let served = 0;
      let grabbed = 0;
      const sharer = new x.GrantSharer();
      const held = [];
      const srv = x.createServer({ domid: 0, path: p, readMin: 4096, writeMin: 4096 }, (s) => {
        served++;
        // Before the server's own 'close' listener: the pages the channel frees are taken at once.
        s.prependOnceListener('close', () => {
          if (served !== 1) return;
          for (;;) {
            try {
              held.push(sharer.share(0, 1));
            } catch {
              break;
            }
          }
          grabbed = held.length;
          setTimeout(() => {
            for (const h of held.splice(0)) h.unshare();
          }, +releaseMs);
        });
        s.pipe(s);
      });
      srv.on('error', (e) => (error = e.code || e.message));
      await new Promise((r) => srv.listen(r));
      const full = `/local/domain/0/${p}`;
      const first = await x.connect({ domid: 0, path: full, timeout: 10000 });
      first.destroy();
      await new Promise((r) => first.once('close', r));
      // The server's end closes once it sees ours gone: that is when the hog takes the pages.
      for (let i = 0; i < 500 && grabbed === 0; i++) await new Promise((r) => setTimeout(r, 10));
      const starved = grabbed;
      let second = null;
      try {
        second = await x.connect({ domid: 0, path: full, timeout: 10000 });
        const echoed = await new Promise((resolve, reject) => {
          second.once('data', (d) => resolve(d.toString()));
          second.once('error', reject);
          second.write('again');
        });
        if (echoed !== 'again') error = `echo ${echoed}`;
      } catch (e) {
        error = error || e.code || e.message;
      }
      second?.destroy();
      send({ served, starved, error, listening: srv.listening });
      srv.close();
      process.exit(0);
      break;
    }
    case 'xs-rm': {
      const xs = new x.Xenstore();
      await xs.rm(args[0]);
      xs.close();
      send({ ok: true });
      break;
    }
    case 'xs-read': {
      const xs = new x.Xenstore();
      try {
        await xs.read(args[0]);
        send({ ok: true });
      } catch (e) {
        send({ code: e.code });
      }
      xs.close();
      process.exit(0);
      break;
    }
    case 'map': {
      const m = new x.GrantMapper();
      try {
        m.map(+args[0], [+args[1]], { writable: false }).unmap();
        send({ ok: true });
      } catch (e) {
        send({ code: e.code });
      }
      m.close();
      process.exit(0);
      break;
    }
    case 'bind': {
      const e = new x.EventChannel();
      try {
        e.bindInterdomain(+args[0], +args[1]);
        send({ ok: true });
      } catch (err) {
        send({ code: err.code });
      }
      e.close();
      process.exit(0);
      break;
    }
    case 'static-serve': {
      const [peer, port, ref, bytes] = args;
      const srv = x.createServer({ domid: +peer, static: { port: +port, ref: +ref } });
      srv.on('connection', async (s) => {
        try {
          const r = await exchange(s, +bytes);
          send({ done: true, ...r });
          s.end();
        } catch (e) {
          send({ lost: e.code || e.message });
        }
      });
      srv.on('error', (e) => send({ error: e.code || e.message }));
      // What this domain's xenstore says (XEN_MOCK_NO_XENSTORE: there is none).
      let xenstore = 'reachable';
      try {
        const xs = new x.Xenstore();
        await xs.read('domid');
        xs.close();
      } catch (e) {
        xenstore = e.code;
      }
      srv.listen(() => send({ listening: true, xenstore }));
      break;
    }
    case 'static-connect': {
      const [server, port, ref, bytes] = args;
      const s = await x.connect({ domid: +server, static: { port: +port, ref: +ref }, timeout: 20000 });
      send({ connected: true });
      const r = await exchange(s, +bytes);
      send({ done: true, ...r });
      s.end();
      break;
    }
    case 'static-hold': {
      const [server, port, ref] = args;
      const s = await x.connect({ domid: +server, static: { port: +port, ref: +ref }, timeout: 20000 });
      send({ connected: true });
      s.on('error', (e) => send({ ended: e.code }));
      s.on('end', () => send({ ended: 'end' }));
      s.resume(); // reads only: a server's exchange with it never completes
      break;
    }
    case 'static': {
      // Runs against a broker of its own (the test gives this process its own XEN_MOCK_DIR).
      x.mockAddStaticChannel(0, 70, 0, 71);
      const a = new x.EventChannel();
      const b = new x.EventChannel();
      const bound = [a.bindStatic(70), b.bindStatic(71)];
      let busy;
      try {
        b.bindStatic(71);
      } catch (e) {
        busy = e.code;
      }
      const other = new x.EventChannel();
      let otherBusy;
      try {
        other.bindStatic(71);
      } catch (e) {
        otherBusy = e.code;
      }
      other.close();
      const event = await new Promise((r) => {
        b.once('event', r);
        a.notify(70);
      });
      b.close();
      a.notify(70); // sent while 71 has no handle: kept pending
      const c = new x.EventChannel();
      const rebound = c.bindStatic(71);
      const pendingKept = await new Promise((r) => {
        const t = setTimeout(() => r(false), 2000);
        c.once('event', () => {
          clearTimeout(t);
          r(true);
        });
      });
      send({ bound, busy, otherBusy, event, rebound, pendingKept });
      a.close();
      c.close();
      process.exit(0);
      break;
    }
    default:
      throw new Error(`unknown role ${role}`);
  }
}

main().catch((e) => {
  send({ error: e.code || e.message });
  process.exit(1);
});
