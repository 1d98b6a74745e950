// PVCalls' errors: a backend answers a negative Linux errno; users get an error shaped as net's.

import { getSystemErrorName } from 'node:util';

/** An errno error as net gives them, from a backend's negative errno. */
export function backendError(ret: number, syscall: string, detail = ''): Error {
  let code: string;
  try {
    // Linux's kernel-internal ENOTSUPP (524), which pvcalls-back answers to an unknown command, is
    // what the spec calls ENOTSUP.
    code = ret === -524 ? 'ENOTSUP' : getSystemErrorName(ret);
    if (!/^E[A-Z0-9]+$/.test(code)) code = 'EIO';
  } catch {
    code = 'EIO';
  }
  const e = new Error(`${syscall} ${code}${detail ? ` ${detail}` : ''}`) as Error & {
    code: string;
    errno: number;
    syscall: string;
  };
  e.code = code;
  e.errno = ret;
  e.syscall = syscall;
  return e;
}
