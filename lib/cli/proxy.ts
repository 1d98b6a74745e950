/** `xen-vchan proxy`: socket connections carried over vchan (lib/proxy.ts), either half. */
import type { VchanProxy } from '../index';
import { fail, int, lib, opts, parseDomid, sockAddr } from './args';

/** `xen-vchan proxy`. */
export function cmdProxy(args: string[]): void {
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
  const domid = parseDomid(o.domid);
  const base = o.path ?? fail('--path is required');
  const common = { domid, path: base, raw: !!o.raw };
  let proxy: VchanProxy;
  if (o.serve) {
    if (o.listen !== undefined) fail('proxy --serve takes --connect, not --listen');
    if (o['connect-timeout'] !== undefined) fail('--connect-timeout goes with --listen');
    if (o.max !== undefined && o.raw) fail('--max is for the framed proxy: a --raw server serves one client at a time');
    const target = sockAddr(o.connect, '--connect');
    const max = o.max === undefined ? undefined : int(o.max, 'max');
    if (max === 0) fail('--max must be at least 1');
    proxy = lib().proxyServe({ ...common, target, maxConnections: max });
    proxy.on('listening', () =>
      process.stderr.write(`xen-vchan: serving domain ${domid} at ${base}, each client to ${o.connect}\n`),
    );
  } else {
    if (o.connect !== undefined || o.max !== undefined) fail('--connect and --max go with --serve');
    const timeout = o['connect-timeout'] === undefined ? undefined : int(o['connect-timeout'], 'connect-timeout');
    const listen = sockAddr(o.listen, '--listen');
    const x = lib();
    const listening = x.proxyListen({ ...common, listen, connectTimeout: timeout ?? x.PROXY_CONNECT_TIMEOUT });
    proxy = listening;
    // The address bound, so that `--listen tcp:127.0.0.1:0` says which port the kernel chose.
    proxy.on('listening', () => {
      const a = listening.address();
      const where =
        a && typeof a === 'object' && 'port' in a && 'address' in a
          ? `tcp:${String(a.address)}:${String(a.port)}`
          : o.listen;
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
