/** `xen-vchan listen` and `connect`: stdin and stdout over one vchan, losing no byte unsaid. */
import type { Duplex } from 'node:stream';

import type { VchanStream } from '../index';
import { fail, int, lib, opts, parseDomid, ringSize } from './args';

/** The options listen and connect share: how stdin and stdout are carried. */
const STDIO_OPTS = {
  raw: { type: 'boolean' },
  'send-only': { type: 'boolean' },
  'recv-only': { type: 'boolean' },
} as const;

/** How stdin and stdout are carried. */
interface StdioMode {
  /** Bytes as they are (a plain libxenvchan peer); else the framing protocol. */
  raw: boolean;
  /** stdin is read and sent. */
  send: boolean;
  /** What the peer sends is written to stdout. */
  recv: boolean;
}

function stdioMode(o: { raw?: boolean; 'send-only'?: boolean; 'recv-only'?: boolean }): StdioMode {
  if (o['send-only'] && o['recv-only']) fail('--send-only and --recv-only: choose one');
  return { raw: !!o.raw, send: !o['recv-only'], recv: !o['send-only'] };
}

let stdoutFailed: Error | null = null;
process.stdout.on('error', (e) => {
  stdoutFailed = e;
});

/** stdout's error, if it has failed (a reader that quit). */
export function stdoutError(): Error | null {
  return stdoutFailed;
}

/** Writes what is left for stdout, then resolves true, or false if stdout failed. */
export function flushStdout(): Promise<boolean> {
  return new Promise((resolve) => {
    if (process.stdout.destroyed || process.stdout.errored) return resolve(false);
    process.stdout.write('', (e) => resolve(!e));
  });
}

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
function carryStdio(v: VchanStream, mode: StdioMode): Promise<string[]> {
  const lost: string[] = [];
  let discarded = 0;
  let stdinEnded = !mode.send;
  const sink = (stream: Duplex) => {
    // stdout gone (a reader that quit): the rest of what the peer sends cannot be delivered, and
    // the peer hears so (framed: an ERROR frame; raw: the channel closes).
    process.stdout.once('error', (e) => stream.destroy(e));
    if (mode.recv) stream.pipe(process.stdout, { end: false });
    else stream.on('data', (d: Buffer) => (discarded += d.length));
  };
  const done = (stream: Duplex) =>
    new Promise<string[]>((resolve) => {
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
function report(lost: string[]): void {
  for (const l of lost) process.stderr.write(`xen-vchan: ${l}\n`);
  if (lost.length > 0) process.exitCode = 1;
}

/** `xen-vchan listen`. */
export function cmdListen(args: string[]): void {
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
  const options = {
    domid: parseDomid(o.domid),
    path: o.path ?? fail('--path is required'),
    readMin: o['read-min'] === undefined ? undefined : ringSize(o['read-min'], 'read-min'),
    writeMin: o['write-min'] === undefined ? undefined : ringSize(o['write-min'], 'write-min'),
  };
  const server = lib().createServer(options);
  server.on('connection', (s) => {
    if (!o.keep) server.close();
    void carryStdio(s, mode).then(report);
  });
  server.on('error', (e) => fail(e.message));
  server.listen();
}

/** `xen-vchan connect`. */
export async function cmdConnect(args: string[]): Promise<void> {
  const o = opts(args, {
    domid: { type: 'string' },
    path: { type: 'string' },
    timeout: { type: 'string' },
    ...STDIO_OPTS,
  });
  const mode = stdioMode(o);
  const options = {
    domid: parseDomid(o.domid),
    path: o.path ?? fail('--path is required'),
    timeout: o.timeout === undefined ? undefined : int(o.timeout, 'timeout'),
  };
  const s = await lib().connect(options);
  report(await carryStdio(s, mode));
}
