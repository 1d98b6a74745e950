/** `xen-vchan pvcalls`: the PVCalls backend (dom0), and one connection through a domU's frontend. */
import { parseArgs } from 'node:util';

import type { PvcallsBackend } from '../index';
import { fail, lib, optInt, opts, parseDomid } from './args';
import { flushStdout, stdoutError } from './stdio';
import { commandUsage } from './usage';

/** `xen-vchan pvcalls serve`: until SIGTERM or SIGINT. */
async function serve(args: string[]): Promise<void> {
  const o = opts(args, {
    domid: { type: 'string', multiple: true },
    'max-sockets': { type: 'string' },
    'max-pending-accepts': { type: 'string' },
    'max-ring-order': { type: 'string' },
  });
  const frontends = o.domid?.map((d) => parseDomid(d));
  let be: PvcallsBackend;
  const { PvcallsBackend: Backend } = lib();
  try {
    be = new Backend({
      frontends,
      maxSockets: optInt(o['max-sockets'], 'max-sockets'),
      maxPendingAccepts: optInt(o['max-pending-accepts'], 'max-pending-accepts'),
      maxRingOrder: optInt(o['max-ring-order'], 'max-ring-order'),
    });
  } catch (e) {
    // options.maxRingOrder -> --max-ring-order
    fail(
      (e as Error).message.replace(
        /options\.(\w+)/,
        (_, n: string) => `--${n.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`,
      ),
    );
  }
  const log = (m: string) => process.stderr.write(`xen-vchan: pvcalls: ${m}\n`);
  be.on('connect', (d, dev) => log(`frontend ${d}/${dev} connected`));
  be.on('disconnect', (d, dev) => log(`frontend ${d}/${dev} gone`));
  be.on('frontendError', (e, d, dev) => log(`frontend ${d}/${dev} dropped: ${e.message}`));
  be.on('error', (e) => {
    log(e.message);
    process.exit(1);
  });
  await be.start();
  log(`serving ${frontends ? `domains ${frontends.join(', ')}` : 'every PVCalls device of this domain'}`);
  const quit = () => void be.close().then(() => process.exit(0));
  process.once('SIGTERM', quit).once('SIGINT', quit);
}

/**
 * `xen-vchan pvcalls connect HOST:PORT`: stdin and stdout over one TCP connection of this domain's
 * frontend; exit 1 if it failed.
 */
async function connect(args: string[]): Promise<void> {
  const o = parseArgs({
    args,
    options: { dev: { type: 'string' }, timeout: { type: 'string' } },
    allowPositionals: true,
  });
  const [target] = o.positionals;
  const m = /^(.+):(\d+)$/.exec(target ?? '');
  if (!m || Number(m[2]) > 65535) fail(`pvcalls connect: HOST:PORT, not ${JSON.stringify(target ?? null)}`);
  const options = { dev: optInt(o.values.dev, 'dev'), timeout: optInt(o.values.timeout, 'timeout') };
  const fe = await lib().connectPvcalls(options);
  const s = fe.createConnection({ host: m[1], port: Number(m[2]) });
  let failed: Error | null = null;
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
  const err = failed ?? stdoutError() ?? (flushed ? null : new Error('stdout closed'));
  if (err) {
    process.stderr.write(`xen-vchan: pvcalls connect: ${err.message}\n`);
    process.exitCode = 1;
  }
}

/** `xen-vchan pvcalls`. */
export async function cmdPvcalls(args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  if (sub === 'serve') return serve(rest);
  if (sub === 'connect') return connect(rest);
  fail(commandUsage('pvcalls'));
}
