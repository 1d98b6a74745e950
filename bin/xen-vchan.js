#!/usr/bin/env node
'use strict';
const { spawnSync, fork } = require('node:child_process');
const path = require('node:path');
const { parseArgs } = require('node:util');

const root = path.join(__dirname, '..');
// The broker that belongs with the mock addon this package loads (prebuilt or built here).
const broker = require('../dist/cjs/native.js').mockBrokerPath();

const USAGE = `usage: xen-vchan <command> [options]      (xen-vchan --version; xen-vchan <command> --help)

  demo [--bytes N] [--ring N]        a dom0 server and a domU client (two processes) on the mock, streaming
                                     data both ways and printing throughput
  listen --domid D --path P          serve one vchan client of domain D on stdin/stdout
         [--read-min N] [--write-min N] [--keep] [--raw] [--send-only | --recv-only]
                                     (--keep: serve the next client after one leaves; with --recv-only)
  connect --domid D --path P         connect to the vchan server of domain D at the full xenstore path P,
         [--timeout MS] [--raw] [--send-only | --recv-only]      stdin/stdout
                                     listen and connect end when all is delivered both ways, and exit 1
                                     if any byte of stdin or of the peer's was lost. Both ends xen-vchan
                                     (the default): stdin's end travels as an end-of-data frame of ours
                                     (the proxy's framing), each direction ends on its own, and the
                                     channel closes once both have. --raw, for a plain libxenvchan peer
                                     (no half-close in vchan): bytes as they are; stdin's end does not
                                     close the channel (what the peer sends still comes) until the peer
                                     closes it, as nc does; --send-only closes it at stdin's end (nc -N)
                                     and --recv-only never reads stdin
  proxy --domid D --path P --listen unix:/sock|tcp:HOST:PORT [--raw] [--connect-timeout MS]
                                     accept socket connections, any number at once, each carried over a
                                     vchan of its own to the proxy --serve of domain D at the full path P;
                                     one that gets no channel in MS (default 120000; 0: no limit) is
                                     refused, and a wait of over a second is logged
  proxy --serve --domid D --path P --connect unix:/sock|tcp:HOST:PORT [--max N] [--raw]
                                     serve domain D's proxy at P: each of its connections becomes a
                                     socket connection (--max: at most N at once, the others wait;
                                     default 256). Half-close travels end to end; --raw passes bytes
                                     unframed, for a plain libxenvchan peer (no half-close)
  pcid serve [--sysfs DIR] [--client D]... [--path P]
                                     the PCI daemon (pcid v4's JSON protocol, with ids): serve the listed
                                     domains (default 0) at /local/domain/<self>/P (default data/pcid),
                                     acting on the PCI sysfs under DIR (default /sys)
  pcid call CMD [NAME=VALUE]... [--domid D] [--path P] [--timeout MS]
                                     one request to the pcid of domain D (default 0); prints the reply
                                     (JSON), exit 1 if it failed. VALUE is JSON where it parses
                                     (true, 3), else a string: pcid call is_device_assigned sbdf=0000:00:01.0
  pvcalls serve [--domid D]... [--max-sockets N] [--max-pending-accepts N] [--max-ring-order N]
                                     the PVCalls backend (dom0): serve the socket calls of the frontends
                                     of domains D (default: every PVCalls device a toolstack made for
                                     this domain) with this process's sockets; logs frontends coming and
                                     going. Its network is this process's: run it under
                                     \`ip netns exec NAME\` to give the guests a namespace of their own
  pvcalls connect HOST:PORT [--dev N] [--timeout MS]
                                     in a domU: one TCP connection through this domain's PVCalls
                                     frontend (device N, default 0), on stdin/stdout; exit 1 if it failed.
                                     PVCalls v1 has no shutdown: stdin's end is not seen by the remote
                                     end, and the connection ends when the remote end closes it
  mock env [--domid D]               print export lines that run any libxenvchan program on the mock:
                                     eval "$(npx xen-vchan mock env)"
  mock status [--json] | mock reset | mock introduce D... | mock destroy D

Backend: real Xen unless XEN_VCHAN_BACKEND=mock (demo and mock default to the mock).`;

/** The lines of USAGE about one command, for `xen-vchan <command> --help`. */
function commandUsage(cmd) {
  const lines = USAGE.split('\n');
  const out = [];
  let inCmd = false;
  for (const l of lines) {
    const m = /^ {2}(\S+)/.exec(l);
    if (m) inCmd = m[1] === cmd;
    if (inCmd && l.trim()) out.push(l);
  }
  return `usage: xen-vchan ${cmd} [options]\n\n${out.join('\n')}`;
}

function fail(msg) {
  process.stderr.write(`xen-vchan: ${msg}\n`);
  process.exit(2);
}

/**
 * The options of one subcommand (node:util parseArgs), or the usage and exit 2.
 * @returns {Record<string, any>}
 */
function opts(args, spec) {
  // parseArgs reads `--domid -1` as a missing value; hand it the number so that the range check
  // below can say what is wrong with it.
  const joined = [];
  for (let i = 0; i < args.length; i++) {
    const name = args[i].startsWith('--') ? args[i].slice(2) : undefined;
    if (name && spec[name]?.type === 'string' && /^-\d/.test(args[i + 1] ?? '')) joined.push(`${args[i]}=${args[++i]}`);
    else joined.push(args[i]);
  }
  try {
    return parseArgs({ args: joined, options: spec, allowPositionals: true }).values;
  } catch (e) {
    fail(`${e.message}\n\n${USAGE}`);
  }
}

function int(v, name) {
  const n = Number(v);
  if (v === undefined || v === '' || !Number.isInteger(n) || n < 0)
    fail(`--${name} needs a non-negative integer, not ${JSON.stringify(v ?? null)}`);
  return n;
}

/**
 * A ring size in bytes for FLAG. EXACT: one of the sizes a vchan ring has (1024, 2048, then powers
 * of two up to MAX_RING_SIZE); else a minimum, 0 to MAX_RING_SIZE, that the ring is rounded up from.
 */
function ringSize(v, flag, exact = false) {
  const { MAX_RING_SIZE } = lib();
  const n = Number(v);
  const sizes = `1024, 2048, 4096, ... ${MAX_RING_SIZE} (powers of two)`;
  if (exact) {
    if (!/^\d+$/.test(String(v)) || n < 1024 || n > MAX_RING_SIZE || (n & (n - 1)) !== 0)
      fail(`--${flag} must be a ring size in bytes: ${sizes}, not ${JSON.stringify(v ?? null)}`);
  } else if (!/^\d+$/.test(String(v)) || n > MAX_RING_SIZE) {
    fail(
      `--${flag} must be a size in bytes from 0 to ${MAX_RING_SIZE}, not ${JSON.stringify(v ?? null)} (the ring is the smallest of ${sizes} that holds it)`,
    );
  }
  return n;
}

/** A domain id, 0 to MAX_DOMID, from an option or an argument. */
function parseDomid(v, what = '--domid') {
  const { MAX_DOMID } = lib();
  if (v === undefined) fail(`${what} is required: a domain id from 0 to ${MAX_DOMID}`);
  const n = Number(v);
  if (!/^\d+$/.test(String(v)) || n > MAX_DOMID)
    fail(`${what} must be a domain id from 0 to ${MAX_DOMID}, not ${JSON.stringify(v)}`);
  return n;
}

function lib() {
  return require(root);
}

function sockAddr(spec, flag) {
  if (!spec) fail(`${flag} is required (unix:/path or tcp:HOST:PORT)`);
  if (spec.startsWith('unix:')) return { path: spec.slice(5) };
  const m = /^tcp:(.*):(\d+)$/.exec(spec);
  if (!m) fail(`${flag} must be unix:/path or tcp:HOST:PORT`);
  return { host: m[1], port: Number(m[2]) };
}

async function cmdMock(args) {
  process.env.XEN_VCHAN_BACKEND = process.env.XEN_VCHAN_BACKEND || 'mock';
  const [sub, ...rest] = args;
  if (sub === 'env') {
    const o = opts(rest, { domid: { type: 'string' } });
    const env = lib().mockEnv(o.domid === undefined ? undefined : parseDomid(o.domid));
    env.XEN_MOCK_DIR = env.XEN_MOCK_DIR || spawnSync(broker, ['dir']).stdout?.toString().trim() || '';
    if (!env.XEN_MOCK_DIR) delete env.XEN_MOCK_DIR;
    for (const [k, v] of Object.entries(env)) process.stdout.write(`export ${k}=${JSON.stringify(v)}\n`);
    return;
  }
  if (sub === 'introduce' || sub === 'destroy') {
    if (rest.length === 0 || (sub === 'destroy' && rest.length !== 1)) fail(commandUsage('mock'));
    rest.forEach((d) => parseDomid(d, `mock ${sub}: the domain`));
  }
  if (['status', 'reset', 'introduce', 'destroy', 'shutdown'].includes(sub)) {
    const r = spawnSync(broker, [sub, ...rest], { stdio: 'inherit' });
    process.exit(r.status ?? 1);
  }
  fail(USAGE);
}

/** The options listen and connect share: how stdin and stdout are carried. */
const STDIO_OPTS = {
  raw: { type: 'boolean' },
  'send-only': { type: 'boolean' },
  'recv-only': { type: 'boolean' },
};

function stdioMode(o) {
  if (o['send-only'] && o['recv-only']) fail('--send-only and --recv-only: choose one');
  return { raw: !!o.raw, send: !o['recv-only'], recv: !o['send-only'] };
}

/** Writes what is left for stdout, then resolves (true) or resolves false if stdout failed. */
function flushStdout() {
  return new Promise((resolve) => {
    if (process.stdout.destroyed || process.stdout.errored) return resolve(false);
    process.stdout.write('', (e) => resolve(!e));
  });
}

let stdoutFailed = null;
process.stdout.on('error', (e) => {
  stdoutFailed = e;
});

/**
 * Carries stdin and stdout over one channel V until the exchange is over. Resolves to a list of
 * what was lost (empty: every byte of stdin reached the peer's ring before the end, and every byte
 * the peer sent reached stdout).
 *
 * Framed (both ends are xen-vchan): each direction ends on its own, with an end-of-data frame; the
 * channel closes once both have ended. Raw (any libxenvchan peer, which has no half-close): stdin's
 * end does not close the channel, so what the peer still sends keeps coming until it closes it;
 * --send-only closes the channel at stdin's end, --recv-only never reads stdin.
 */
function carryStdio(v, mode) {
  const lost = [];
  let discarded = 0;
  let stdinEnded = !mode.send;
  const sink = (stream) => {
    // stdout gone (a reader that quit): the rest of what the peer sends cannot be delivered, and
    // the peer hears so (framed: an ERROR frame; raw: the channel closes).
    process.stdout.once('error', (e) => stream.destroy(e));
    if (mode.recv) stream.pipe(process.stdout, { end: false });
    else stream.on('data', (d) => (discarded += d.length));
  };
  const done = (stream) =>
    new Promise((resolve) => {
      stream.on('error', (e) => lost.push(e.message));
      stream.on('close', async () => {
        process.stdin.unpipe();
        process.stdin.destroy();
        if (mode.raw && !stdinEnded && !process.stdin.isTTY)
          lost.push('the peer closed the channel before the end of stdin: the rest of stdin was not sent');
        if (discarded > 0) lost.push(`the peer sent ${discarded} bytes, which --send-only does not write to stdout`);
        if (!(await flushStdout()) || stdoutFailed)
          lost.push(
            `stdout: ${stdoutFailed ? stdoutFailed.message : 'closed'}: what the peer sent was not all written`,
          );
        resolve(lost);
      });
    });
  process.stdin.on('end', () => (stdinEnded = true));
  if (!mode.raw) {
    const f = new (lib().FramedStream)(v, `vchan ${v.path}`);
    sink(f);
    if (mode.send) process.stdin.pipe(f);
    else f.end();
    return done(f);
  }
  sink(v);
  if (mode.send) {
    process.stdin.pipe(v, { end: false });
    // --send-only: stdin's end is the end of the exchange; the peer reads the ring after the close.
    if (!mode.recv) process.stdin.on('end', () => v.end());
  }
  v.on('end', () => {
    // The peer closed the channel: whatever of ours it had not read is lost.
    const st = v.ringState();
    const unread = st ? v.info.writeSize - st.writable : 0;
    if (unread > 0) lost.push(`the peer closed the channel with ${unread} bytes we sent still unread`);
  });
  return done(v);
}

/** Reports what was lost and sets the exit status: 1 if anything was. */
function report(lost) {
  for (const l of lost) process.stderr.write(`xen-vchan: ${l}\n`);
  if (lost.length > 0) process.exitCode = 1;
}

async function cmdListen(args) {
  const o = opts(args, {
    domid: { type: 'string' },
    path: { type: 'string' },
    'read-min': { type: 'string' },
    'write-min': { type: 'string' },
    keep: { type: 'boolean' },
    ...STDIO_OPTS,
  });
  const mode = stdioMode(o);
  if (o.keep && mode.send) fail('--keep serves one client after another: stdin is read once, so add --recv-only');
  const { createServer } = lib();
  const server = createServer({
    domid: parseDomid(o.domid),
    path: o.path ?? fail('--path is required'),
    readMin: o['read-min'] === undefined ? undefined : ringSize(o['read-min'], 'read-min'),
    writeMin: o['write-min'] === undefined ? undefined : ringSize(o['write-min'], 'write-min'),
  });
  server.on('connection', async (s) => {
    if (!o.keep) server.close();
    report(await carryStdio(s, mode));
  });
  server.on('error', (e) => fail(e.message));
  server.listen();
}

async function cmdConnect(args) {
  const o = opts(args, {
    domid: { type: 'string' },
    path: { type: 'string' },
    timeout: { type: 'string' },
    ...STDIO_OPTS,
  });
  const mode = stdioMode(o);
  const s = await lib().connect({
    domid: parseDomid(o.domid),
    path: o.path ?? fail('--path is required'),
    timeout: o.timeout === undefined ? undefined : int(o.timeout, 'timeout'),
  });
  report(await carryStdio(s, mode));
}

async function cmdProxy(args) {
  const o = opts(args, {
    domid: { type: 'string' },
    path: { type: 'string' },
    listen: { type: 'string' },
    connect: { type: 'string' },
    serve: { type: 'boolean' },
    max: { type: 'string' },
    raw: { type: 'boolean' },
    slots: { type: 'string' },
    'connect-timeout': { type: 'string' },
  });
  if (o.slots !== undefined)
    fail('--slots is gone: the proxy serves any number of clients at once (--max N bounds them; others wait)');
  const x = lib();
  const domid = parseDomid(o.domid);
  const base = o.path ?? fail('--path is required');
  const common = { domid, path: base, raw: !!o.raw };
  let proxy;
  if (o.serve) {
    if (o.listen !== undefined) fail('proxy --serve takes --connect, not --listen');
    if (o['connect-timeout'] !== undefined) fail('--connect-timeout goes with --listen');
    if (o.max !== undefined && o.raw) fail('--max is for the framed proxy: a --raw server serves one client at a time');
    const target = sockAddr(o.connect, '--connect');
    const max = o.max === undefined ? undefined : int(o.max, 'max');
    if (max === 0) fail('--max must be at least 1');
    proxy = x.proxyServe({ ...common, target, maxConnections: max });
    proxy.on('listening', () =>
      process.stderr.write(`xen-vchan: serving domain ${domid} at ${base}, each client to ${o.connect}\n`),
    );
  } else {
    if (o.connect !== undefined || o.max !== undefined) fail('--connect and --max go with --serve');
    const connectTimeout =
      o['connect-timeout'] === undefined ? x.PROXY_CONNECT_TIMEOUT : int(o['connect-timeout'], 'connect-timeout');
    proxy = x.proxyListen({ ...common, listen: sockAddr(o.listen, '--listen'), connectTimeout });
    // The address bound, so that `--listen tcp:127.0.0.1:0` says which port the kernel chose.
    proxy.on('listening', () => {
      const a = proxy.address();
      const where = a && typeof a === 'object' && 'port' in a ? `tcp:${a.address}:${a.port}` : o.listen;
      process.stderr.write(`xen-vchan: proxying ${where} to domain ${domid} ${base}\n`);
    });
    proxy.on('waiting', ({ waiting, timeout }) =>
      process.stderr.write(
        `xen-vchan: ${waiting} connection${waiting === 1 ? '' : 's'} waiting for a channel from domain ${domid} at ${base}` +
          ` (is its proxy --serve running?)${timeout ? `; refused after ${timeout / 1000} s` : ''}\n`,
      ),
    );
  }
  proxy.on('connectionError', (e) => process.stderr.write(`xen-vchan: a connection failed: ${e.message}\n`));
  proxy.on('error', (e) => {
    process.stderr.write(`xen-vchan: ${e.message}\n`);
    process.exit(1);
  });
  // The first SIGTERM/SIGINT stops taking connections, refuses those still waiting for a channel,
  // and exits once those being carried have ended (as a net server's close() does); a second one
  // exits at once.
  let quitting = false;
  const quit = () => {
    if (quitting) process.exit(0);
    quitting = true;
    proxy.close(() => process.exit(0));
  };
  process.on('SIGTERM', quit).on('SIGINT', quit);
}

async function cmdPcid(args) {
  const [sub, ...rest] = args;
  const x = lib();
  if (sub === 'serve') {
    const o = opts(rest, {
      sysfs: { type: 'string' },
      client: { type: 'string', multiple: true },
      path: { type: 'string' },
    });
    const clients = (o.client ?? ['0']).map((d) => parseDomid(d, '--client'));
    let server;
    try {
      server = x.createPcidServer({ sysfsRoot: o.sysfs, clients, path: o.path });
    } catch (e) {
      fail(e.message);
    }
    server.on('clientError', (e) => process.stderr.write(`xen-vchan: pcid: ${e.message}\n`));
    server.on('error', (e) => {
      process.stderr.write(`xen-vchan: pcid: ${e.message}\n`);
      process.exit(1);
    });
    server.on('connection', ({ domid, node }) =>
      process.stderr.write(`xen-vchan: pcid: a client of domain ${domid} (${node})\n`),
    );
    server.listen(() =>
      process.stderr.write(
        `xen-vchan: pcid serving domains ${clients.join(', ')} at ${server.path} (sysfs ${server.sysfs.root})\n`,
      ),
    );
    const quit = () => server.close(() => process.exit(0));
    process.once('SIGTERM', quit).once('SIGINT', quit);
    return;
  }
  if (sub === 'call') {
    const o = parseArgs({
      args: rest,
      options: { domid: { type: 'string' }, path: { type: 'string' }, timeout: { type: 'string' } },
      allowPositionals: true,
      strict: false,
    });
    const [cmd, ...pairs] = o.positionals;
    if (!cmd) fail(commandUsage('pcid'));
    const req = {};
    for (const p of pairs) {
      const i = p.indexOf('=');
      if (i <= 0) fail(`pcid call: arguments are NAME=VALUE, not ${JSON.stringify(p)}`);
      const v = p.slice(i + 1);
      let value;
      try {
        value = JSON.parse(v);
      } catch {
        value = v;
      }
      req[p.slice(0, i)] = value;
    }
    const domid = o.values.domid === undefined ? 0 : parseDomid(o.values.domid);
    const timeout = o.values.timeout === undefined ? 10000 : int(o.values.timeout, 'timeout');
    const c = await x.connectPcid({ domid, path: o.values.path, timeout, requestTimeout: timeout });
    try {
      const reply = await c.call(cmd, req).catch((e) => {
        if (e.reply) return e.reply;
        throw e;
      });
      process.stdout.write(`${JSON.stringify(reply)}\n`);
      if (reply.error !== 'okay') process.exitCode = 1;
    } finally {
      c.close();
    }
    return;
  }
  fail(commandUsage('pcid'));
}

/** BYTES as a person reads it: bytes, KB or MB (decimal, as throughput is). */
function size(bytes) {
  if (bytes < 1e3) return `${bytes} bytes`;
  if (bytes < 1e6) return `${(bytes / 1e3).toFixed(bytes < 1e4 ? 1 : 0)} KB`;
  return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0)} MB`;
}

async function cmdPvcalls(args) {
  const [sub, ...rest] = args;
  const x = lib();
  if (sub === 'serve') {
    const o = opts(rest, {
      domid: { type: 'string', multiple: true },
      'max-sockets': { type: 'string' },
      'max-pending-accepts': { type: 'string' },
      'max-ring-order': { type: 'string' },
    });
    const num = (flag) => (o[flag] === undefined ? undefined : int(o[flag], flag));
    const frontends = o.domid?.map((d) => parseDomid(d));
    let be;
    try {
      be = new x.PvcallsBackend({
        frontends,
        maxSockets: num('max-sockets'),
        maxPendingAccepts: num('max-pending-accepts'),
        maxRingOrder: num('max-ring-order'),
      });
    } catch (e) {
      fail(e.message.replace(/options\.(\w+)/, (_, n) => `--${n.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`));
    }
    const log = (m) => process.stderr.write(`xen-vchan: pvcalls: ${m}\n`);
    be.on('connect', (d, dev) => log(`frontend ${d}/${dev} connected`));
    be.on('disconnect', (d, dev) => log(`frontend ${d}/${dev} gone`));
    be.on('frontendError', (e, d, dev) => log(`frontend ${d}/${dev} dropped: ${e.message}`));
    be.on('error', (e) => {
      log(e.message);
      process.exit(1);
    });
    await be.start();
    log(`serving ${frontends ? `domains ${frontends.join(', ')}` : 'every PVCalls device of this domain'}`);
    const quit = () => be.close().then(() => process.exit(0));
    process.once('SIGTERM', quit).once('SIGINT', quit);
    return;
  }
  if (sub === 'connect') {
    const o = parseArgs({
      args: rest,
      options: { dev: { type: 'string' }, timeout: { type: 'string' } },
      allowPositionals: true,
    });
    const [target] = o.positionals;
    const m = /^(.+):(\d+)$/.exec(target ?? '');
    if (!m || Number(m[2]) > 65535) fail(`pvcalls connect: HOST:PORT, not ${JSON.stringify(target ?? null)}`);
    const fe = await x.connectPvcalls({
      dev: o.values.dev === undefined ? undefined : int(o.values.dev, 'dev'),
      timeout: o.values.timeout === undefined ? undefined : int(o.values.timeout, 'timeout'),
    });
    const s = fe.createConnection({ host: m[1], port: Number(m[2]) });
    let failed = null;
    s.on('error', (e) => (failed = e));
    process.stdout.once('error', (e) => s.destroy(e));
    // PVCalls v1 has no shutdown: stdin's end only ends what we send (once the backend has it);
    // the exchange is over when the remote end closes.
    process.stdin.pipe(s);
    s.pipe(process.stdout, { end: false });
    await new Promise((r) => s.once('close', r));
    process.stdin.destroy();
    const flushed = await flushStdout();
    await fe.close();
    if (failed || !flushed || stdoutFailed) {
      process.stderr.write(
        `xen-vchan: pvcalls connect: ${(failed ?? stdoutFailed ?? new Error('stdout closed')).message}\n`,
      );
      process.exitCode = 1;
    }
    return;
  }
  fail(commandUsage('pvcalls'));
}

async function cmdDemo(args) {
  const o = opts(args, { bytes: { type: 'string' }, ring: { type: 'string' }, role: { type: 'string' } });
  process.env.XEN_VCHAN_BACKEND = process.env.XEN_VCHAN_BACKEND || 'mock';
  const bytes = o.bytes === undefined ? 256 << 20 : int(o.bytes, 'bytes');
  const ring = o.ring === undefined ? 65536 : ringSize(o.ring, 'ring', true);
  const x = lib();
  const p = `data/vchan/5/demo-${o.role ? process.ppid : process.pid}`;
  if (o.role === 'domU') {
    // The guest: connect to dom0 and echo its stream back until dom0 closes the channel.
    const s = await x.connect({ domid: 0, path: `/local/domain/0/${p}`, timeout: 10000 });
    s.pipe(s);
    s.on('error', (e) => {
      process.stderr.write(`xen-vchan demo (domain 5): ${e.message}\n`);
      process.exitCode = 1;
    });
    return;
  }
  const backend = process.env.XEN_VCHAN_BACKEND;
  console.log(
    `xen-vchan demo (${backend} backend): dom0 server <-> domain 5 client in another process, ring ${ring} bytes`,
  );
  const server = x.createServer({ domid: 5, path: p, readMin: ring, writeMin: ring });
  const child = fork(__filename, ['demo', '--role', 'domU', '--ring', String(ring)], {
    env: { ...process.env, XEN_MOCK_DOMID: '5' },
  });
  const childExit = new Promise((r) => child.once('exit', (code, sig) => r(sig ?? code)));
  server.listen();
  let connected = false;
  childExit.then((c) => connected || fail(`domain 5 exited (${c}) before it connected`));
  const [s] = await require('node:events').once(server, 'connection');
  connected = true;
  server.close();
  const chunk = Buffer.alloc(Math.min(65536, Math.max(bytes, 1)), 0x5a);
  let sent = 0;
  let echoed = 0;
  const t0 = process.hrtime.bigint();
  await new Promise((resolve, reject) => {
    s.on('error', reject);
    s.on('end', () => reject(new Error(`domain 5 closed the channel after echoing ${echoed} of ${bytes} bytes`)));
    s.on('data', (d) => {
      echoed += d.length;
      if (echoed > bytes) reject(new Error(`domain 5 echoed ${echoed} bytes, ${bytes} were sent`));
      else if (echoed === bytes) resolve();
    });
    if (bytes === 0) return resolve();
    const pump = () => {
      while (sent < bytes) {
        const n = Math.min(chunk.length, bytes - sent);
        sent += n;
        if (!s.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return s.once('drain', pump);
      }
    };
    pump();
  });
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(`sent ${size(bytes)} to domain 5 and got every byte back in ${secs.toFixed(secs < 1 ? 3 : 2)} s:`);
  if (bytes > 0)
    console.log(
      `  ${size(Math.round(bytes / secs))}/s each way (${size(Math.round((2 * bytes) / secs))}/s through dom0's stream)`,
    );
  s.end();
  const code = await childExit;
  if (code !== 0) {
    process.stderr.write(`xen-vchan: domain 5 exited with ${code}\n`);
    process.exitCode = 1;
    return;
  }
  console.log('domain 5 has left; nothing is left behind (see `npx xen-vchan mock status`).');
}

async function main() {
  const [cmd, ...args] = process.argv.slice(2);
  if (
    cmd &&
    ['mock', 'listen', 'connect', 'proxy', 'demo', 'pcid', 'pvcalls'].includes(cmd) &&
    (args.includes('--help') || args.includes('-h'))
  ) {
    process.stdout.write(`${commandUsage(cmd)}\n`);
    return;
  }
  switch (cmd) {
    case '--version':
    case '-v':
    case 'version':
      process.stdout.write(`${require('../package.json').version}\n`);
      return;
    case 'mock':
      return cmdMock(args);
    case 'listen':
      return cmdListen(args);
    case 'connect':
      return cmdConnect(args);
    case 'proxy':
      return cmdProxy(args);
    case 'demo':
      return cmdDemo(args);
    case 'pcid':
      return cmdPcid(args);
    case 'pvcalls':
      return cmdPvcalls(args);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(`${USAGE}\n`);
      return;
    default:
      fail(`unknown command ${cmd}\n\n${USAGE}`);
  }
}

main().catch((e) => {
  process.stderr.write(`xen-vchan: ${e.message}${e.code ? ` (${e.code})` : ''}\n`);
  process.exit(1);
});
