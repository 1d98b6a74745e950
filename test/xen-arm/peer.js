'use strict';
// What each domain of the arm64 dom0less rig runs (test/xen-arm/init), on the package as installed
// (/app/node_modules/xen-vchan, the linux-arm64 prebuilds). No xenstore anywhere: everything is
// found through the static event channels the device tree declares (dom0less.dtsi) and the grant
// reference both ends agree on. Results are lines "XVARM <role> <what> <json>" on the console, each
// short enough for Xen's console (which cuts a domU's lines at about 120 characters).
//   dom0: events with domU 1 over its static port 10 (domU 1 answers on 11)
//   a (domU 1): answers dom0 on 11; events with domU 2 over 14 (domU 2 answers on 15); the static
//      vchan server on port 12 at ref 8, which serves its clients until both have come
//   b (domU 2): answers domU 1 on 15; the static vchan client on port 13 at ref 8: a first client
//      process killed mid-stream, then another that exchanges BYTES each way with SHA-256
const { createHash } = require('node:crypto');
const { fork } = require('node:child_process');
const x = require('xen-vchan');

const [role, sub] = process.argv.slice(2);
const BYTES = Number(process.env.XVARM_BYTES || 64 << 20);
const ROUND_TRIPS = 200;
const say = (what, o) => console.log(`XVARM ${role}${sub ? `/${sub}` : ''} ${what} ${JSON.stringify(o)}`);
const up = () => Number(require('node:fs').readFileSync('/proc/uptime', 'utf8').split(' ')[0]);

/** Answers every event on static PORT with one back. */
function answer(port) {
  const ev = new x.EventChannel();
  ev.bindStatic(port);
  ev.on('event', (p) => ev.notify(p));
  return ev;
}

/**
 * Round trips over static PORT with a peer that answers each event. The peer may not be up yet,
 * and one end of every static channel starts with an event pending (Xen sets it as it binds the
 * channel at boot): so first knock until an answer comes, let any extra event go by, then count
 * ROUND_TRIPS strict exchanges.
 */
async function pingPong(port) {
  const ev = new x.EventChannel();
  ev.bindStatic(port);
  const next = () => new Promise((resolve) => ev.once('event', resolve));
  const t0 = Date.now();
  for (;;) {
    const got = next();
    ev.notify(port);
    const r = await Promise.race([got, new Promise((r) => setTimeout(() => r(null), 1000))]);
    if (r !== null) break;
    if (Date.now() - t0 > 300_000) throw new Error(`no answer on static port ${port} in 300 s`);
  }
  const knocked = Date.now() - t0;
  await new Promise((r) => setTimeout(r, 500));
  ev.removeAllListeners('event');
  const t1 = process.hrtime.bigint();
  let lost = 0;
  for (let i = 0; i < ROUND_TRIPS; i++) {
    const got = next();
    ev.notify(port);
    if ((await Promise.race([got, new Promise((r) => setTimeout(() => r(null), 10_000))])) === null) lost++;
  }
  const us = Number(process.hrtime.bigint() - t1) / 1e3 / ROUND_TRIPS;
  ev.close();
  return { port, roundTrips: ROUND_TRIPS - lost, lost, usEach: Math.round(us), knockedMs: knocked };
}

/** Sends BYTES (a pattern made fresh per block) and hashes both ways; resolves once both are done. */
function exchange(stream, bytes) {
  return new Promise((resolve, reject) => {
    const sent = createHash('sha256');
    const recv = createHash('sha256');
    let got = 0;
    let left = bytes;
    let wrote = false;
    const t0 = Date.now();
    const finish = () => {
      // 16 hex digits of each SHA-256: Xen's console cuts a domU's lines at about 120 characters.
      if (wrote && got >= bytes)
        resolve({
          sent: sent.digest('hex').slice(0, 16),
          recv: recv.digest('hex').slice(0, 16),
          got,
          ms: Date.now() - t0,
        });
    };
    stream.on('data', (d) => {
      recv.update(d);
      got += d.length;
      finish();
    });
    stream.on('error', reject);
    stream.on('close', () => reject(Object.assign(new Error(`closed after ${got} bytes`), { code: 'ECLOSED' })));
    let n = 0;
    const pump = () => {
      while (left > 0) {
        const b = Buffer.alloc(Math.min(left, 256 << 10), (n++ * 131 + role.charCodeAt(0)) & 0xff);
        b.writeUInt32LE(n, 0);
        sent.update(b);
        left -= b.length;
        if (!stream.write(b)) return stream.once('drain', pump);
      }
      wrote = true;
      finish();
    };
    pump();
  });
}

async function main() {
  switch (role) {
    case 'dom0': {
      const ev = new x.EventChannel();
      // A port the device tree did not declare: what this kernel says of it.
      let undeclared;
      try {
        undeclared = { bound: ev.bindStatic(99) };
        ev.unbind(99);
      } catch (e) {
        undeclared = { code: e.code, message: e.message };
      }
      ev.close();
      say('undeclared', undeclared);
      say('events', await pingPong(10));
      break;
    }
    case 'a': {
      // The server first: its control page must be this domain's first grant (ref 8).
      const server = x.createServer({ domid: 2, static: { port: 12, ref: 8 } });
      let clients = 0;
      server.on('connection', async (s) => {
        const n = ++clients;
        try {
          say('served', { client: n, ...(await exchange(s, BYTES)) });
          s.end();
        } catch (e) {
          say('lost', { client: n, code: e.code });
        }
        if (n >= 2) server.close();
      });
      server.on('error', (/** @type {NodeJS.ErrnoException} */ e) =>
        say('error', { code: e.code, message: e.message }),
      );
      server.listen(() => say('listening', { uptime: up() }));
      answer(11).unref();
      say('events', await pingPong(14));
      break;
    }
    case 'b': {
      if (sub === 'killed') {
        // Connects, reads a little, then dies without a word (SIGKILL).
        const s = await x.connect({ domid: 1, static: { port: 13, ref: 8 } });
        let got = 0;
        s.on('data', (d) => {
          got += d.length;
          if (got >= 1 << 20) {
            say('killing', { got });
            process.kill(process.pid, 'SIGKILL');
          }
        });
        s.write(Buffer.alloc(4096, 1));
        return;
      }
      answer(15).unref();
      const t0 = Date.now();
      const child = fork(__filename, ['b', 'killed']);
      const [code, signal] = await new Promise((r) => child.once('exit', (c, s) => r([c, s])));
      say('killed', { code, signal, ms: Date.now() - t0 });
      const t1 = Date.now();
      const s = await x.connect({ domid: 1, static: { port: 13, ref: 8 }, timeout: 300_000 });
      say('connected', { ms: Date.now() - t1 });
      say('exchanged', await exchange(s, BYTES));
      s.end();
      break;
    }
    default:
      throw new Error(`unknown role ${role}`);
  }
}

main().then(
  () => say('done', { uptime: up() }),
  (e) => {
    say('failed', { code: e.code, message: String(e.message).slice(0, 60) });
    process.exitCode = 1;
  },
);
