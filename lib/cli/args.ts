/** The CLI's argument handling: options, numbers, addresses, and the one way it fails on them. */
import { parseArgs, type ParseArgsConfig } from 'node:util';

import { MAX_DOMID, MAX_RING_SIZE } from '../constants';
import { USAGE } from './usage';

/**
 * The package's API, loaded when a command first needs it: after `mock` and `demo` have chosen
 * the backend, and after the arguments are checked (a bad one exits before the library loads).
 */
export function lib(): typeof import('../index') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('../index') as typeof import('../index');
}

/** Says what is wrong on stderr and exits 2 (a usage error). */
export function fail(msg: string): never {
  process.stderr.write(`xen-vchan: ${msg}\n`);
  process.exit(2);
}

type Spec = NonNullable<ParseArgsConfig['options']>;
type Values<S extends Spec> = ReturnType<typeof parseArgs<{ options: S; allowPositionals: true }>>['values'];

/** The options of one subcommand (node:util parseArgs); a bad one fails with the usage. */
export function opts<S extends Spec>(args: string[], spec: S): Values<S> {
  // parseArgs reads `--domid -1` as a missing value; hand it the number so that the range check
  // after can say what is wrong with it.
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const name = args[i].startsWith('--') ? args[i].slice(2) : undefined;
    if (name && spec[name]?.type === 'string' && /^-\d/.test(args[i + 1] ?? '')) joined.push(`${args[i]}=${args[++i]}`);
    else joined.push(args[i]);
  }
  try {
    return parseArgs({ args: joined, options: spec, allowPositionals: true }).values;
  } catch (e) {
    fail(`${(e as Error).message}\n\n${USAGE}`);
  }
}

/** A non-negative integer for --NAME. */
export function int(v: string | undefined, name: string): number {
  const n = Number(v);
  if (v === undefined || v === '' || !Number.isInteger(n) || n < 0)
    fail(`--${name} needs a non-negative integer, not ${JSON.stringify(v ?? null)}`);
  return n;
}

/** An optional non-negative integer for --NAME. */
export function optInt(v: string | undefined, name: string): number | undefined {
  return v === undefined ? undefined : int(v, name);
}

/**
 * A ring size in bytes for FLAG. EXACT: one of the sizes a vchan ring has (1024, 2048, then powers
 * of two up to MAX_RING_SIZE); else a minimum, 0 to MAX_RING_SIZE, that the ring is rounded up from.
 */
export function ringSize(v: string, flag: string, exact = false): number {
  const n = Number(v);
  const sizes = `1024, 2048, 4096, ... ${MAX_RING_SIZE} (powers of two)`;
  if (exact) {
    if (!/^\d+$/.test(v) || n < 1024 || n > MAX_RING_SIZE || (n & (n - 1)) !== 0)
      fail(`--${flag} must be a ring size in bytes: ${sizes}, not ${JSON.stringify(v)}`);
  } else if (!/^\d+$/.test(v) || n > MAX_RING_SIZE) {
    fail(
      `--${flag} must be a size in bytes from 0 to ${MAX_RING_SIZE}, not ${JSON.stringify(v)} (the ring is the smallest of ${sizes} that holds it)`,
    );
  }
  return n;
}

/** A domain id, 0 to MAX_DOMID, from an option or an argument (WHAT names it). */
export function parseDomid(v: string | undefined, what = '--domid'): number {
  if (v === undefined) fail(`${what} is required: a domain id from 0 to ${MAX_DOMID}`);
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > MAX_DOMID)
    fail(`${what} must be a domain id from 0 to ${MAX_DOMID}, not ${JSON.stringify(v)}`);
  return n;
}

/** `unix:/path` or `tcp:HOST:PORT` for FLAG. */
export function sockAddr(spec: string | undefined, flag: string): import('../index').SocketAddress {
  if (!spec) fail(`${flag} is required (unix:/path or tcp:HOST:PORT)`);
  if (spec.startsWith('unix:')) return { path: spec.slice(5) };
  const m = /^tcp:(.*):(\d+)$/.exec(spec);
  if (!m) fail(`${flag} must be unix:/path or tcp:HOST:PORT`);
  return { host: m[1], port: Number(m[2]) };
}

/** BYTES as a person reads it: bytes, KB or MB (decimal, as throughput is). */
export function size(bytes: number): string {
  if (bytes < 1e3) return `${bytes} bytes`;
  if (bytes < 1e6) return `${(bytes / 1e3).toFixed(bytes < 1e4 ? 1 : 0)} KB`;
  return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0)} MB`;
}
