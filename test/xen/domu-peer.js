'use strict';
// The Node program inside the rig's PV domU (its initramfs's /init starts it; test/xen/domu.test.ts
// in dom0 drives it). A domU has no share with dom0, so commands and results travel through
// xenstore, under the domain's own data/ directory:
//   dom0 writes  /local/domain/<D>/data/peer/cmd/<N>  {"id":N,"op":...,...}  (one key per command)
//   we write     /local/domain/<D>/data/peer/result/<N>/<phase>  {...}  ("-" when it has one result)
// Ops:
//   connect {path, bytes}   a client of dom0's server at PATH: send BYTES random bytes, hash both ways
//   serve   {path, bytes}   a server for dom0 at data/<path>: the same from the server's side
//   hold    {path}          a client of dom0 that streams until this domain is destroyed
//   share   {text}          share a page with dom0 holding TEXT; 'unshare' reads dom0's reply first
//   map     {refs}          map dom0's page, read it, write a reply into it
//   evtchn  {}              an unbound port for dom0; report its event, then notify back
//   pvcalls {port, sockets, bytes, listenPort}  the PVCalls frontend of this domain (device/pvcalls/0):
//                           SOCKETS connections to dom0's 127.0.0.1:PORT through the backend, BYTES
//                           sent on each and hashed both ways; then a server on dom0's side at
//                           127.0.0.1:LISTEN_PORT that echoes one connection ('listening', then '-')
//   insmod {path} | rmmod {name}   load or unload a kernel module (Linux's pvcalls-front.ko)
//   alloc-unbound {domid, remote}  try EventChannel.allocUnbound (unprivileged: EPERM expected)
//   static-echo {port, remote}  the domU's end of a channel dom0 set up with allocUnbound: with
//                           remote absent, bindStatic(port) (the port is in this domain's table);
//                           with remote (0), bindInterdomain(0, port) (dom0 took its port with
//                           bindStatic). Answers every event until 'static-stop'
//   bench   {via, port|path, mib, sockets, connects}  bench/pvcalls-rig.ts's measurements from
//                           this side: VIA 'pvcalls' (device/pvcalls/0, dom0's TCP sink at
//                           127.0.0.1:PORT) or 'vchan' (connectMulti to dom0's PATH); MIB MiB sent
//                           on one socket, then on SOCKETS at once (the sink acknowledges each with
//                           one byte), then CONNECTS connects; answers {tp1, tpN, connectP50}
//   pcid    {}              the PCI daemon for dom0 at data/pcid, acting as the hardware domain on a
//                           small sysfs tree of its own (pciback with one device); 'pcid-stop' ends it
const { createHash, randomBytes } = require('node:crypto');
// The package, where the domU's initramfs puts it.
const app = '/app';
/** @type {typeof import('../../dist/cjs/index.js')} */
const x = require(app);

const xs = new x.Xenstore();

const phases = new Map(); // command id -> where it is, for 'status'

async function reply(id, msg) {
  const phase = msg.phase || '-';
  console.log(`domu-peer: ${id} ${phase}${msg.error ? ` error ${msg.error}` : ''}`);
  phases.set(id, `writing result ${phase}`);
  const t0 = Date.now();
  await xs.write(`data/peer/result/${id}/${phase}`, JSON.stringify({ id, ...msg }));
  phases.set(id, `wrote result ${phase} (${Date.now() - t0} ms)`);
}

const active = new Set(); // exchanges in progress, for 'status'

function exchange(stream, bytes) {
  const me = { stream, got: 0, left: bytes };
  active.add(me);
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
      me.got = got;
      finish();
    });
    stream.on('close', () => active.delete(me));
    stream.on('error', reject);
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, 1 + Math.floor(Math.random() * 65536));
        const b = randomBytes(n);
        sent.update(b);
        left -= n;
        me.left = left;
        if (!stream.write(b)) return stream.once('drain', pump);
      }
      wroteAll = true;
      finish();
    };
    pump();
  });
}

let shared = null;
let evtchn = null;
let pcid = null;
let staticEcho = null;
let staticEchoed = 0;

/** A PCI sysfs under /tmp: pciback with one device bound to it, and one device of another driver. */
function pcidSysfs() {
  const fs = require('node:fs');
  const path = require('node:path');
  const root = fs.mkdtempSync('/tmp/sysfs-');
  const dev = (sbdf, driver, resource, irq) => {
    const d = path.join(root, 'devices', 'pci0000:00', sbdf);
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, 'resource'), resource);
    fs.writeFileSync(path.join(d, 'irq'), `${irq}\n`);
    fs.mkdirSync(path.join(root, 'bus', 'pci', 'devices'), { recursive: true });
    fs.symlinkSync(`../../../devices/pci0000:00/${sbdf}`, path.join(root, 'bus', 'pci', 'devices', sbdf));
    const drv = path.join(root, 'bus', 'pci', 'drivers', driver);
    fs.mkdirSync(drv, { recursive: true });
    for (const f of ['bind', 'unbind', 'new_slot', 'remove_slot', 'do_flr', 'permissive'])
      if (!fs.existsSync(path.join(drv, f))) fs.writeFileSync(path.join(drv, f), '');
    fs.symlinkSync(`../../../../devices/pci0000:00/${sbdf}`, path.join(drv, sbdf));
    fs.symlinkSync(`../../../bus/pci/drivers/${driver}`, path.join(d, 'driver'));
  };
  dev('0000:00:04.0', 'pciback', '0x0000004000180000 0x00000040001fffff 0x0000000000140204\n', 11);
  dev('0000:00:05.0', 'e1000e', '0x00000000fe000000 0x00000000fe01ffff 0x0000000000040200\n', 0);
  return root;
}

async function run(cmd) {
  const { id, op } = cmd;
  switch (op) {
    case 'connect': {
      const s = await x.connect({ domid: 0, path: cmd.path, timeout: 60000 });
      await reply(id, { phase: 'connected', info: s.info });
      const r = await exchange(s, cmd.bytes);
      s.end();
      await new Promise((resolve) => s.once('close', resolve));
      return reply(id, { phase: 'done', ...r });
    }
    case 'serve': {
      const srv = x.createServer({ domid: 0, path: cmd.path, readMin: cmd.readMin, writeMin: cmd.writeMin });
      const conn = new Promise((resolve) => srv.once('connection', resolve));
      srv.listen();
      await reply(id, { phase: 'listening' });
      const s = await conn;
      // The client ends the channel once it has everything, which can close our end before the
      // exchange below has seen its last write complete: listen for 'close' from the start.
      const closed = new Promise((resolve) => s.once('close', resolve));
      srv.close();
      const r = await exchange(s, cmd.bytes);
      s.resume();
      await closed;
      return reply(id, { phase: 'done', ...r });
    }
    case 'hold': {
      const s = await x.connect({ domid: 0, path: cmd.path, timeout: 60000 });
      s.on('error', () => {});
      s.resume();
      const chunk = Buffer.alloc(65536, 0x5a);
      const pump = () => {
        while (s.write(chunk));
        s.once('drain', pump);
      };
      pump();
      return reply(id, { phase: 'connected' });
    }
    case 'share': {
      const g = new x.GrantSharer();
      const pages = g.share(0, 1);
      pages.write(Buffer.from(cmd.text + '\0'));
      shared = { g, pages };
      return reply(id, { refs: pages.refs });
    }
    case 'unshare': {
      const b = shared.pages.read(0, 256);
      const text = b.subarray(0, b.indexOf(0)).toString();
      shared.g.close();
      shared = null;
      return reply(id, { text });
    }
    case 'map': {
      const g = new x.GrantMapper();
      const m = g.map(0, cmd.refs);
      const b = m.read(0, 256);
      const text = b.subarray(0, b.indexOf(0)).toString();
      m.write(Buffer.from(cmd.reply + '\0'));
      g.close();
      return reply(id, { text });
    }
    case 'evtchn': {
      evtchn = new x.EventChannel();
      const port = evtchn.bindUnbound(0);
      evtchn.once('event', async (p) => {
        evtchn.notify(p);
        await reply(id, { phase: 'event', port: p });
        evtchn.close();
      });
      return reply(id, { phase: 'bound', port });
    }
    case 'static-echo': {
      staticEcho = new x.EventChannel();
      let local;
      let firstPending = false;
      if (cmd.remote === undefined) {
        local = staticEcho.bindStatic(cmd.port);
      } else {
        const first = new Promise((r) => staticEcho.once('event', r));
        local = staticEcho.bindInterdomain(cmd.remote, cmd.port);
        // Xen marks the binder's new port pending; drain it so the echo is not one event ahead.
        firstPending = (await Promise.race([first, new Promise((r) => setTimeout(r, 3000))])) === local;
      }
      staticEchoed = 0;
      staticEcho.on('event', (p) => {
        staticEchoed++;
        staticEcho.notify(p);
      });
      return reply(id, { phase: 'bound', port: local, firstPending });
    }
    case 'pvcalls': {
      const fe = await x.connectPvcalls({ timeout: 60000 });
      try {
        const results = await Promise.all(
          Array.from({ length: cmd.sockets }, async () => {
            const s = fe.createConnection({ host: '127.0.0.1', port: cmd.port });
            await new Promise((resolve, reject) => s.once('connect', resolve).once('error', reject));
            const r = await exchange(s, cmd.bytes);
            s.destroy();
            await s.released;
            return r;
          }),
        );
        const srv = fe.createServer((c) => c.pipe(c));
        await new Promise((resolve, reject) =>
          srv.once('error', reject).listen({ host: '127.0.0.1', port: cmd.listenPort }, () => resolve(undefined)),
        );
        await reply(id, { phase: 'listening', results, ringOrder: fe.ringOrder });
        const c = await new Promise((resolve) => srv.once('connection', resolve));
        await new Promise((resolve) => c.once('end', resolve).once('close', resolve));
        await new Promise((resolve) => srv.close(() => resolve(undefined)));
      } finally {
        await fe.close();
      }
      return reply(id, { closed: true });
    }
    case 'bench':
      return reply(id, await bench(cmd));
    case 'insmod':
    case 'rmmod': {
      const r = require('node:child_process').spawnSync(op, [op === 'insmod' ? cmd.path : cmd.name], {
        encoding: 'utf8',
      });
      return reply(id, { status: r.status, stderr: r.stderr });
    }
    case 'alloc-unbound': {
      // A domU is not privileged: Xen refuses it a port in another domain's table.
      try {
        return reply(id, { port: x.EventChannel.allocUnbound(cmd.domid, cmd.remote) });
      } catch (e) {
        return reply(id, { code: e.code, syscall: e.syscall, message: e.message });
      }
    }
    case 'static-stop': {
      staticEcho.close();
      staticEcho = null;
      return reply(id, { echoed: staticEchoed });
    }
    case 'pcid': {
      pcid = x.createPcidServer({ sysfsRoot: pcidSysfs(), clients: [0] });
      pcid.on('clientError', (e) => console.log(`domu-peer: pcid: ${e.message}`));
      await new Promise((resolve, reject) => pcid.once('error', reject).listen(resolve));
      return reply(id, { phase: 'listening', path: pcid.path });
    }
    case 'pcid-stop': {
      const served = pcid.connections;
      await new Promise((resolve) => pcid.close(resolve));
      pcid = null;
      return reply(id, { served });
    }
    case 'status': {
      const list = [...active].map((e) => ({
        got: e.got,
        left: e.left,
        ring: e.stream.ringState(),
        queued: e.stream.writableLength,
      }));
      console.log(`domu-peer: status ${JSON.stringify(list)} ${JSON.stringify([...phases].slice(-4))}`);
      return reply(id, { active: list });
    }
    default:
      return reply(id, { error: `unknown op ${op}` });
  }
}

/** The 'bench' op: throughput (MiB/s) one way on 1 and on cmd.sockets sockets, and connect p50 (µs). */
async function bench(cmd) {
  const fe = cmd.via === 'pvcalls' ? await x.connectPvcalls({ timeout: 60000 }) : null;
  const block = Buffer.alloc(1 << 20, 7);
  const open = async () => {
    if (!fe) return x.connectMulti({ domid: 0, path: cmd.path, timeout: 60000 });
    const s = fe.createConnection({ host: '127.0.0.1', port: cmd.port });
    await new Promise((resolve, reject) => s.once('connect', resolve).once('error', reject));
    return s;
  };
  const close = async (s) => {
    s.destroy();
    if (s.released) await s.released;
    else if (!s.closed) await new Promise((resolve) => s.once('close', resolve));
  };
  /** Sends cmd.mib MiB on S, then waits for the sink's one-byte acknowledgement. */
  const blast = (s) =>
    new Promise((resolve, reject) => {
      let left = cmd.mib;
      s.once('error', reject);
      s.once('data', resolve);
      const pump = () => {
        while (left > 0) {
          left--;
          if (!s.write(block)) return void s.once('drain', pump);
        }
      };
      pump();
    });
  const throughput = async (n) => {
    const socks = await Promise.all(Array.from({ length: n }, open));
    const t0 = process.hrtime.bigint();
    await Promise.all(socks.map(blast));
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    await Promise.all(socks.map(close));
    return (cmd.mib * n) / secs;
  };
  try {
    const tp1 = await throughput(1);
    const tpN = await throughput(cmd.sockets);
    const lat = [];
    for (let i = 0; i < cmd.connects; i++) {
      const t0 = process.hrtime.bigint();
      const s = await open();
      lat.push(Number(process.hrtime.bigint() - t0) / 1e3);
      await close(s);
    }
    lat.sort((a, b) => a - b);
    return { tp1, tpN, connectP50: lat[Math.floor(lat.length / 2)], ringOrder: fe ? fe.ringOrder : undefined };
  } finally {
    if (fe) await fe.close();
  }
}

async function main() {
  const domid = Number(await xs.read('domid'));
  const w = await xs.watch('data/peer/cmd');
  await xs.write('data/peer/ready', String(process.pid));
  console.log(`domu-peer: domain ${domid} ready`);
  const done = new Set();
  const look = async () => {
    const ids = ((await xs.directory('data/peer/cmd').catch(() => [])) || []).map(Number).sort((a, b) => a - b);
    for (const id of ids) {
      if (done.has(id)) continue;
      done.add(id);
      const raw = await xs.tryRead(`data/peer/cmd/${id}`);
      if (!raw) continue;
      const cmd = JSON.parse(raw);
      console.log(`domu-peer: ${raw}`);
      run(cmd).catch((e) => {
        console.log(`domu-peer: ${cmd.op} failed: ${e.stack}`);
        reply(cmd.id, { error: e.code || e.message }).catch(() => {});
      });
    }
  };
  for await (const _ of w) await look();
}

main().catch((e) => {
  console.log(`domu-peer: ${e.stack}`);
  process.exit(1);
});
