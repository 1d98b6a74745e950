/**
 * PVCalls, version 1: the wire format of Xen's public header io/pvcalls.h (and its docs/misc/
 * pvcalls.pandoc, whose diagram of the indexes page is wrong about ring_order: the header is
 * right). Every offset here is checked against Debian's xen/io/pvcalls.h by test/pvcalls-wire.test.ts,
 * which compiles a C program that prints them.
 *
 * Little-endian throughout, as on every architecture Xen runs PV guests on. Socket addresses are
 * Linux's struct sockaddr_in as the frontend's kernel lays it out: family in host order, port and
 * address in network order. Errors in responses and in the data rings are negative Linux errnos.
 */

import { getSystemErrorName } from 'node:util';

import { invalidArgValue } from '../errors';

/** The one protocol version ("version" of the frontend, "versions" of the backend). */
export const PVCALLS_VERSION = '1';

/** Commands (the header's PVCALLS_*; the pandoc's per-command lines are off by one). */
export const PvcallsCmd = {
  SOCKET: 0,
  CONNECT: 1,
  RELEASE: 2,
  BIND: 3,
  LISTEN: 4,
  ACCEPT: 5,
  POLL: 6,
} as const;
export type PvcallsCmdName = keyof typeof PvcallsCmd;
const CMD_NAMES = Object.keys(PvcallsCmd) as PvcallsCmdName[];

/** Linux's AF_INET, SOCK_STREAM: the only family and type version 1 serves. */
export const AF_INET = 2;
export const SOCK_STREAM = 1;

/** The commands ring: Xen's standard shared ring (io/ring.h) of 64-byte slots in one page. */
export const SRING = {
  reqProd: 0,
  reqEvent: 4,
  rspProd: 8,
  rspEvent: 12,
  /** The slots start after 16 bytes of indexes and 48 of padding. */
  ring: 64,
} as const;
export const REQUEST_SIZE = 64;
export const RESPONSE_SIZE = 24;
/** A slot holds a request or a response: the larger of the two. */
export const SLOT_SIZE = 64;
/** (4096 - 64) / 64 = 63 slots, rounded down to a power of two, as io/ring.h does. */
export const RING_SLOTS = 32;

/** Request fields: req_id@0, cmd@4, then the command's union member at 8. */
export const REQ = {
  reqId: 0,
  cmd: 4,
  id: 8,
  socket: { domain: 16, type: 20, protocol: 24 },
  connect: { addr: 16, len: 44, flags: 48, ref: 52, evtchn: 56 },
  release: { reuse: 16 },
  bind: { addr: 16, len: 44 },
  listen: { backlog: 16 },
  accept: { idNew: 16, ref: 24, evtchn: 28 },
} as const;
/** The size of the addr member of CONNECT and BIND (a struct sockaddr_storage would not fit). */
export const ADDR_SIZE = 28;

/** Response fields: req_id@0, cmd@4, ret@8 (0 or a negative errno), pad, the socket id at 16. */
export const RSP = { reqId: 0, cmd: 4, ret: 8, id: 16 } as const;

/** The indexes page of a socket's data ring (struct pvcalls_data_intf). */
export const DATA_INTF = {
  inCons: 0,
  inProd: 4,
  inError: 8,
  outCons: 64,
  outProd: 68,
  outError: 72,
  ringOrder: 128,
  /** Grant refs of the data pages, one u32 each. */
  ref: 132,
} as const;
/** The pages of a data ring hold `in` (backend to frontend) first, then `out`, each half of it. */
export function dataRingBytes(order: number): number {
  return 1 << (order + 12);
}
/** The most a page of indexes can name: (4096 - 132) / 4 refs, so order 9 at most. */
export const MAX_RING_ORDER = 9;

/** An IPv4 socket address. */
export interface InetAddress {
  family: number;
  port: number;
  /** Dotted quad. */
  address: string;
}

export type PvcallsRequest =
  | { reqId: number; cmd: 'SOCKET'; id: bigint; domain: number; type: number; protocol: number }
  | {
      reqId: number;
      cmd: 'CONNECT';
      id: bigint;
      addr: Uint8Array;
      len: number;
      flags: number;
      ref: number;
      evtchn: number;
    }
  | { reqId: number; cmd: 'RELEASE'; id: bigint; reuse: number }
  | { reqId: number; cmd: 'BIND'; id: bigint; addr: Uint8Array; len: number }
  | { reqId: number; cmd: 'LISTEN'; id: bigint; backlog: number }
  | { reqId: number; cmd: 'ACCEPT'; id: bigint; idNew: bigint; ref: number; evtchn: number }
  | { reqId: number; cmd: 'POLL'; id: bigint };

/** A request whose cmd is not one of version 1's: answered with -ENOTSUP by a backend. */
export interface UnknownRequest {
  reqId: number;
  cmd: number;
}

export interface PvcallsResponse {
  reqId: number;
  cmd: number;
  /** 0, or a negative Linux errno. */
  ret: number;
  /** The socket the command was about (its id, echoed). */
  id: bigint;
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** Decodes the request in SLOT (64 bytes). Never throws: an unknown cmd is returned as a number. */
export function decodeRequest(slot: Uint8Array): PvcallsRequest | UnknownRequest {
  const v = view(slot);
  const reqId = v.getUint32(REQ.reqId, true);
  const code = v.getUint32(REQ.cmd, true);
  const id = v.getBigUint64(REQ.id, true);
  const addr = () => slot.slice(REQ.connect.addr, REQ.connect.addr + ADDR_SIZE);
  switch (CMD_NAMES[code]) {
    case 'SOCKET':
      return {
        reqId,
        cmd: 'SOCKET',
        id,
        domain: v.getUint32(REQ.socket.domain, true),
        type: v.getUint32(REQ.socket.type, true),
        protocol: v.getUint32(REQ.socket.protocol, true),
      };
    case 'CONNECT':
      return {
        reqId,
        cmd: 'CONNECT',
        id,
        addr: addr(),
        len: v.getUint32(REQ.connect.len, true),
        flags: v.getUint32(REQ.connect.flags, true),
        ref: v.getUint32(REQ.connect.ref, true),
        evtchn: v.getUint32(REQ.connect.evtchn, true),
      };
    case 'RELEASE':
      return { reqId, cmd: 'RELEASE', id, reuse: slot[REQ.release.reuse] };
    case 'BIND':
      return { reqId, cmd: 'BIND', id, addr: addr(), len: v.getUint32(REQ.bind.len, true) };
    case 'LISTEN':
      return { reqId, cmd: 'LISTEN', id, backlog: v.getUint32(REQ.listen.backlog, true) };
    case 'ACCEPT':
      return {
        reqId,
        cmd: 'ACCEPT',
        id,
        idNew: v.getBigUint64(REQ.accept.idNew, true),
        ref: v.getUint32(REQ.accept.ref, true),
        evtchn: v.getUint32(REQ.accept.evtchn, true),
      };
    case 'POLL':
      return { reqId, cmd: 'POLL', id };
    default:
      return { reqId, cmd: code };
  }
}

/** Writes REQ into SLOT (64 bytes; the bytes it does not use are zeroed). */
export function encodeRequest(slot: Uint8Array, req: PvcallsRequest): void {
  slot.fill(0, 0, REQUEST_SIZE);
  const v = view(slot);
  v.setUint32(REQ.reqId, req.reqId, true);
  v.setUint32(REQ.cmd, PvcallsCmd[req.cmd], true);
  v.setBigUint64(REQ.id, req.id, true);
  switch (req.cmd) {
    case 'SOCKET':
      v.setUint32(REQ.socket.domain, req.domain, true);
      v.setUint32(REQ.socket.type, req.type, true);
      v.setUint32(REQ.socket.protocol, req.protocol, true);
      break;
    case 'CONNECT':
      slot.set(req.addr.subarray(0, ADDR_SIZE), REQ.connect.addr);
      v.setUint32(REQ.connect.len, req.len, true);
      v.setUint32(REQ.connect.flags, req.flags, true);
      v.setUint32(REQ.connect.ref, req.ref, true);
      v.setUint32(REQ.connect.evtchn, req.evtchn, true);
      break;
    case 'RELEASE':
      slot[REQ.release.reuse] = req.reuse;
      break;
    case 'BIND':
      slot.set(req.addr.subarray(0, ADDR_SIZE), REQ.bind.addr);
      v.setUint32(REQ.bind.len, req.len, true);
      break;
    case 'LISTEN':
      v.setUint32(REQ.listen.backlog, req.backlog, true);
      break;
    case 'ACCEPT':
      v.setBigUint64(REQ.accept.idNew, req.idNew, true);
      v.setUint32(REQ.accept.ref, req.ref, true);
      v.setUint32(REQ.accept.evtchn, req.evtchn, true);
      break;
    case 'POLL':
      break;
  }
}

export function decodeResponse(slot: Uint8Array): PvcallsResponse {
  const v = view(slot);
  return {
    reqId: v.getUint32(RSP.reqId, true),
    cmd: v.getUint32(RSP.cmd, true),
    ret: v.getInt32(RSP.ret, true),
    id: v.getBigUint64(RSP.id, true),
  };
}

export function encodeResponse(slot: Uint8Array, rsp: PvcallsResponse): void {
  slot.fill(0, 0, RESPONSE_SIZE);
  const v = view(slot);
  v.setUint32(RSP.reqId, rsp.reqId, true);
  v.setUint32(RSP.cmd, rsp.cmd, true);
  v.setInt32(RSP.ret, rsp.ret, true);
  v.setBigUint64(RSP.id, rsp.id, true);
}

/** struct sockaddr_in in ADDR_SIZE bytes: family (host order), port and address (network order). */
export function encodeInetAddress(a: InetAddress): Uint8Array {
  const b = new Uint8Array(ADDR_SIZE);
  const v = view(b);
  v.setUint16(0, a.family, true);
  v.setUint16(2, a.port, false);
  const parts = a.address.split('.').map(Number);
  if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(a.address) || parts.some((p) => p > 255))
    throw invalidArgValue('address', 'must be an IPv4 address (PVCalls version 1 carries no other)', a.address);
  b.set(parts, 4);
  return b;
}

/** The IPv4 address in ADDR (LEN bytes of it valid), or null where it is not one (family, length). */
export function decodeInetAddress(addr: Uint8Array, len: number): InetAddress | null {
  if (len < 16 || len > ADDR_SIZE || addr.length < 8) return null;
  const v = view(addr);
  const family = v.getUint16(0, true);
  if (family !== AF_INET) return null;
  return { family, port: v.getUint16(2, false), address: `${addr[4]}.${addr[5]}.${addr[6]}.${addr[7]}` };
}

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
