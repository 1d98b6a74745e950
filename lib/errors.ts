/** Argument checks with Node's error codes and message shapes. */
import { constants } from 'node:os';

import { MAX_DOMID, XENSTORE_ABS_PATH_MAX } from './constants';

const osErrno = constants.errno;

type Coded<E extends Error> = E & { code: string };

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'function') return `function ${(v as { name?: string }).name || '<anonymous>'}`;
  if (typeof v === 'object') {
    const ctor = (v as object).constructor?.name;
    return ctor ? `an instance of ${ctor}` : 'an object';
  }
  if (typeof v === 'string') return `type string (${JSON.stringify(v.length > 28 ? `${v.slice(0, 25)}...` : v)})`;
  return `type ${typeof v} (${String(v)})`;
}

/**
 * An error with Node's `code`: the one way lib/ makes its own errors (the argument-error helpers
 * below, systemError and abortError are built on it).
 */
export function coded(
  message: string,
  code: string,
  Ctor: ErrorConstructor | TypeErrorConstructor | RangeErrorConstructor = Error,
): Coded<Error> {
  const e = new Ctor(message) as Coded<Error>;
  e.code = code;
  return e;
}

/** As Node's AbortError: name 'AbortError', code 'ABORT_ERR', the signal's reason as cause. */
export function abortError(signal: AbortSignal): Error {
  const e = coded('The operation was aborted', 'ABORT_ERR');
  e.name = 'AbortError';
  (e as Error & { cause?: unknown }).cause = signal.reason;
  return e;
}

export function invalidArgType(name: string, expected: string, actual: unknown): Coded<Error> {
  return coded(
    `The "${name}" argument must be ${expected}. Received ${describe(actual)}`,
    'ERR_INVALID_ARG_TYPE',
    TypeError,
  );
}

export function outOfRange(name: string, range: string, actual: unknown): Coded<Error> {
  const received = typeof actual === 'number' ? String(actual) : describe(actual);
  return coded(
    `The value of "${name}" is out of range. It must be ${range}. Received ${received}`,
    'ERR_OUT_OF_RANGE',
    RangeError,
  );
}

export function invalidArgValue(name: string, reason: string, actual: unknown): Coded<Error> {
  return coded(`The argument '${name}' ${reason}. Received ${describe(actual)}`, 'ERR_INVALID_ARG_VALUE', TypeError);
}

/** An errno-shaped error made in TypeScript, as the addon makes them: code, negative errno, syscall. */
export function systemError(code: keyof typeof osErrno, syscall: string, message: string): Error {
  const e = coded(`${syscall} failed: ${code}: ${message}`, code) as Coded<Error> & { errno: number; syscall: string };
  e.errno = -osErrno[code];
  e.syscall = syscall;
  return e;
}

export function checkInt(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number') throw invalidArgType(name, 'of type number', v);
  if (!Number.isInteger(v) || v < min || v > max) throw outOfRange(name, `an integer >= ${min} and <= ${max}`, v);
  return v;
}

export function checkDomid(name: string, v: unknown): number {
  return checkInt(name, v, 0, MAX_DOMID);
}

export function checkPort(name: string, v: unknown): number {
  return checkInt(name, v, 1, 0x1ffff);
}

export function checkString(name: string, v: unknown): string {
  if (typeof v !== 'string') throw invalidArgType(name, 'of type string', v);
  return v;
}

export function checkObject(name: string, v: unknown): Record<string, unknown> {
  if (v === undefined) return {};
  if (v === null || typeof v !== 'object') throw invalidArgType(name, 'of type object', v);
  return v as Record<string, unknown>;
}

export function checkBoolean(name: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw invalidArgType(name, 'of type boolean', v);
  return v;
}

/** Xenstore paths: absolute or relative, the characters xenstored accepts, no empty components. */
export function checkXsPath(name: string, v: unknown, allowSpecial = false): string {
  const p = checkString(name, v);
  if (allowSpecial && (p === '@releaseDomain' || p === '@introduceDomain')) return p;
  if (
    p.length === 0 ||
    p.length > XENSTORE_ABS_PATH_MAX ||
    !/^[A-Za-z0-9\-/_@]+$/.test(p) ||
    p.includes('//') ||
    (p.length > 1 && p.endsWith('/'))
  ) {
    throw invalidArgValue(
      name,
      `must be a xenstore path (letters, digits, -/_@, no empty components, at most ${XENSTORE_ABS_PATH_MAX} characters)`,
      v,
    );
  }
  return p;
}
