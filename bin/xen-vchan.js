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
         [--read-min N] [--write-min N] [--keep]   (--keep: serve the next client after one leaves)
  connect --domid D --path P         connect to the vchan server of domain D at the full xenstore path P,
         [--timeout MS]              stdin/stdout
  proxy --domid D --path P --listen unix:/sock|tcp:HOST:PORT [--raw]
                                     accept socket connections, any number at once, each carried over a
                                     vchan of its own to the proxy --serve of domain D at the full path P
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

// Bridges stdin/stdout and STREAM. When the channel closes, stdin is let go so the process can end
// (as socat does), unless more clients are to be served (listen --keep).
function pipeStdio(stream, keep = false) {
  process.stdin.pipe(stream);
  stream.pipe(process.stdout, { end: false });
  stream.on('error', (e) => {
    process.stderr.write(`xen-vchan: ${e.message}\n`);
    process.exitCode = 1;
  });
  return new Promise((resolve) =>
    stream.on('close', () => {
      process.stdin.unpipe(stream);
      if (!keep) process.stdin.destroy();
      resolve();
    }),
  );
}

async function cmdListen(args) {
  const o = opts(args, {
    domid: { type: 'string' },
    path: { type: 'string' },
    'read-min': { type: 'string' },
    'write-min': { type: 'string' },
    keep: { type: 'boolean' },
  });
  const { createServer } = lib();
  const server = createServer({
    domid: parseDomid(o.domid),
    path: o.path ?? fail('--path is required'),
    readMin: o['read-min'] === undefined ? undefined : int(o['read-min'], 'read-min'),
    writeMin: o['write-min'] === undefined ? undefined : int(o['write-min'], 'write-min'),
  });
  server.on('connection', async (s) => {
    if (!o.keep) server.close();
    await pipeStdio(s, o.keep);
  });
  server.on('error', (e) => fail(e.message));
  server.listen();
}

async function cmdConnect(args) {
  const o = opts(args, { domid: { type: 'string' }, path: { type: 'string' }, timeout: { type: 'string' } });
  const s = await lib().connect({
    domid: parseDomid(o.domid),
    path: o.path ?? fail('--path is required'),
    timeout: o.timeout === undefined ? undefined : int(o.timeout, 'timeout'),
  });
  await pipeStdio(s);
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
    proxy = x.proxyListen({ ...common, listen: sockAddr(o.listen, '--listen') });
    proxy.on('listening', () => process.stderr.write(`xen-vchan: proxying ${o.listen} to domain ${domid} ${base}\n`));
  }
  proxy.on('connectionError', (e) => process.stderr.write(`xen-vchan: a connection failed: ${e.message}\n`));
  proxy.on('error', (e) => {
    process.stderr.write(`xen-vchan: ${e.message}\n`);
    process.exit(1);
  });
  // The first SIGTERM/SIGINT stops taking connections and exits once those being carried have
  // ended (as a net server's close() does); a second one exits at once.
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

async function cmdDemo(args) {
  const o = opts(args, { bytes: { type: 'string' }, ring: { type: 'string' }, role: { type: 'string' } });
  process.env.XEN_VCHAN_BACKEND = process.env.XEN_VCHAN_BACKEND || 'mock';
  const bytes = o.bytes === undefined ? 256 << 20 : int(o.bytes, 'bytes');
  const ring = o.ring === undefined ? 65536 : int(o.ring, 'ring');
  const x = lib();
  const p = `data/vchan/5/demo-${o.role ? process.ppid : process.pid}`;
  if (o.role === 'domU') {
    // The guest: connect to dom0, echo its stream back, count.
    const s = await x.connect({ domid: 0, path: `/local/domain/0/${p}`, timeout: 10000 });
    s.pipe(s);
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
  server.listen();
  const [s] = await require('node:events').once(server, 'connection');
  server.close();
  const chunk = Buffer.alloc(65536, 0x5a);
  let sent = 0;
  let echoed = 0;
  const t0 = process.hrtime.bigint();
  await new Promise((resolve, reject) => {
    s.on('error', reject);
    s.on('data', (d) => {
      echoed += d.length;
      if (echoed >= bytes) resolve();
    });
    const pump = () => {
      while (sent < bytes) {
        sent += chunk.length;
        if (!s.write(chunk)) return s.once('drain', pump);
      }
    };
    pump();
  });
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const mb = bytes / 1e6;
  console.log(`sent ${mb.toFixed(0)} MB to domain 5 and got every byte back in ${secs.toFixed(2)} s:`);
  console.log(`  ${(mb / secs).toFixed(0)} MB/s each way (${((2 * mb) / secs).toFixed(0)} MB/s through dom0's stream)`);
  s.end();
  await new Promise((r) => child.once('exit', r));
  console.log('domain 5 has left; nothing is left behind (see `npx xen-vchan mock status`).');
}

async function main() {
  const [cmd, ...args] = process.argv.slice(2);
  if (
    cmd &&
    ['mock', 'listen', 'connect', 'proxy', 'demo', 'pcid'].includes(cmd) &&
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
