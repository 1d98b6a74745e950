/** `xen-vchan pcid`: the PCI daemon (lib/pcid), and one request to one. */
import { parseArgs } from 'node:util';

import type { PcidServer } from '../index';
import { fail, int, lib, opts, parseDomid } from './args';
import { commandUsage } from './usage';

/** `xen-vchan pcid serve`. */
function serve(args: string[]): void {
  const o = opts(args, {
    sysfs: { type: 'string' },
    client: { type: 'string', multiple: true },
    path: { type: 'string' },
  });
  const clients = (o.client ?? ['0']).map((d) => parseDomid(d, '--client'));
  let server: PcidServer;
  try {
    server = lib().createPcidServer({ sysfsRoot: o.sysfs, clients, path: o.path });
  } catch (e) {
    fail((e as Error).message);
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
}

/** `xen-vchan pcid call CMD NAME=VALUE...`: prints the reply; exit 1 if it failed. */
async function call(args: string[]): Promise<void> {
  const o = parseArgs({
    args,
    options: { domid: { type: 'string' }, path: { type: 'string' }, timeout: { type: 'string' } },
    allowPositionals: true,
    strict: false,
  });
  const [cmd, ...pairs] = o.positionals;
  if (!cmd) fail(commandUsage('pcid'));
  const req: Record<string, unknown> = {};
  for (const p of pairs) {
    const i = p.indexOf('=');
    if (i <= 0) fail(`pcid call: arguments are NAME=VALUE, not ${JSON.stringify(p)}`);
    const v = p.slice(i + 1);
    let value: unknown;
    try {
      value = JSON.parse(v);
    } catch {
      value = v;
    }
    req[p.slice(0, i)] = value;
  }
  const str = (v: string | boolean | undefined, flag: string): string | undefined => {
    if (typeof v === 'boolean') fail(`--${flag} needs a value`);
    return v;
  };
  const domidArg = str(o.values.domid, 'domid');
  const timeoutArg = str(o.values.timeout, 'timeout');
  const domid = domidArg === undefined ? 0 : parseDomid(domidArg);
  const timeout = timeoutArg === undefined ? 10000 : int(timeoutArg, 'timeout');
  const path = str(o.values.path, 'path');
  const c = await lib().connectPcid({ domid, path, timeout, requestTimeout: timeout });
  try {
    const reply = await c.call(cmd, req).catch((e: Error & { reply?: Record<string, unknown> }) => {
      if (e.reply) return e.reply;
      throw e;
    });
    process.stdout.write(`${JSON.stringify(reply)}\n`);
    if (reply.error !== 'okay') process.exitCode = 1;
  } finally {
    c.close();
  }
}

/** `xen-vchan pcid`. */
export async function cmdPcid(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub === 'serve') return serve(rest);
  if (sub === 'call') return call(rest);
  fail(commandUsage('pcid'));
}
