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

import { invalidArgValue } from '../errors';
import type { PvcallsRequest, PvcallsResponse, UnknownRequest } from './messages';

export { backendError } from './errno';
export type {
  PvcallsAcceptRequest,
  PvcallsBindRequest,
  PvcallsConnectRequest,
  PvcallsListenRequest,
  PvcallsPollRequest,
  PvcallsReleaseRequest,
  PvcallsRequest,
  PvcallsRequestBase,
  PvcallsResponse,
  PvcallsSocketRequest,
  UnknownRequest,
} from './messages';

/** The one protocol version ("version" of the frontend, "versions" of the backend). */
export const PVCALLS_VERSION = '1';

/** Commands (the header's PVCALLS_*; the pandoc's per-command lines are off by one). */
export const PvcallsCmd = {
  /** socket(2): a new socket, named by the frontend's id. */
  SOCKET: 0,
  /** connect(2), with the data ring the frontend granted for it. */
  CONNECT: 1,
  /** close(2): the socket and its data ring go. */
  RELEASE: 2,
  /** bind(2). */
  BIND: 3,
  /** listen(2). */
  LISTEN: 4,
  /** accept(2): the accepted socket gets the frontend's idNew and data ring. */
  ACCEPT: 5,
  /** poll(2) for POLLIN on a listening socket: answered when a connection waits. */
  POLL: 6,
} as const;
/** A command's name: `'SOCKET'` … `'POLL'`. */
export type PvcallsCmdName = keyof typeof PvcallsCmd;
const CMD_NAMES = Object.keys(PvcallsCmd) as PvcallsCmdName[];

/** Linux's AF_INET: the only family version 1 serves. */
export const AF_INET = 2;
/** Linux's SOCK_STREAM: the only socket type version 1 serves. */
export const SOCK_STREAM = 1;

/** The commands ring: Xen's standard shared ring (io/ring.h) of 64-byte slots in one page. */
export const SRING = {
  /** req_prod: requests the frontend has produced (a free-running u32). */
  reqProd: 0,
  /** req_event: the backend wants an event when req_prod passes this. */
  reqEvent: 4,
  /** rsp_prod: responses the backend has produced. */
  rspProd: 8,
  /** rsp_event: the frontend wants an event when rsp_prod passes this. */
  rspEvent: 12,
  /** The slots start after 16 bytes of indexes and 48 of padding. */
  ring: 64,
} as const;
/** Bytes of a request (struct xen_pvcalls_request). */
export const REQUEST_SIZE = 64;
/** Bytes of a response (struct xen_pvcalls_response). */
export const RESPONSE_SIZE = 24;
/** A slot holds a request or a response: the larger of the two. */
export const SLOT_SIZE = 64;
/** (4096 - 64) / 64 = 63 slots, rounded down to a power of two, as io/ring.h does. */
export const RING_SLOTS = 32;

/** Request fields: req_id@0, cmd@4, then the command's union member at 8. */
export const REQ = {
  /** req_id (u32): echoed in the response. */
  reqId: 0,
  /** cmd (u32): a PvcallsCmd. */
  cmd: 4,
  /** id (u64): the socket, named by the frontend. */
  id: 8,
  /** SOCKET's fields. */
  socket: {
    /** domain (u32): AF_INET. */
    domain: 16,
    /** type (u32): SOCK_STREAM. */
    type: 20,
    /** protocol (u32): 0. */
    protocol: 24,
  },
  /** CONNECT's fields. */
  connect: {
    /** addr: ADDR_SIZE bytes of struct sockaddr. */
    addr: 16,
    /** len (u32): the valid bytes of addr. */
    len: 44,
    /** flags (u32): 0. */
    flags: 48,
    /** ref (u32): the grant ref of the data ring's indexes page. */
    ref: 52,
    /** evtchn (u32): the frontend's port for the data ring. */
    evtchn: 56,
  },
  /** RELEASE's fields. */
  release: {
    /** reuse (u8): 1, the frontend reuses the id at once. */
    reuse: 16,
  },
  /** BIND's fields. */
  bind: {
    /** addr: ADDR_SIZE bytes of struct sockaddr. */
    addr: 16,
    /** len (u32): the valid bytes of addr. */
    len: 44,
  },
  /** LISTEN's fields. */
  listen: {
    /** backlog (u32). */
    backlog: 16,
  },
  /** ACCEPT's fields. */
  accept: {
    /** id_new (u64): the accepted socket's id. */
    idNew: 16,
    /** ref (u32): the grant ref of its data ring's indexes page. */
    ref: 24,
    /** evtchn (u32): the frontend's port for that data ring. */
    evtchn: 28,
  },
} as const;
/** The size of the addr member of CONNECT and BIND (a struct sockaddr_storage would not fit). */
export const ADDR_SIZE = 28;

/** Response fields: req_id@0, cmd@4, ret@8 (0 or a negative errno), pad, the socket id at 16. */
export const RSP = {
  /** req_id (u32): the request's, echoed. */
  reqId: 0,
  /** cmd (u32): the request's, echoed. */
  cmd: 4,
  /** ret (i32): 0, or a negative errno. */
  ret: 8,
  /** The request's socket id (u64), echoed. */
  id: 16,
} as const;

/** The indexes page of a socket's data ring (struct pvcalls_data_intf). */
export const DATA_INTF = {
  /** in_cons (u32): bytes of `in` the frontend has consumed. */
  inCons: 0,
  /** in_prod (u32): bytes the backend has put into `in`. */
  inProd: 4,
  /** in_error (i32): the backend's read error, a negative errno (0: none). */
  inError: 8,
  /** out_cons (u32): bytes of `out` the backend has consumed. */
  outCons: 64,
  /** out_prod (u32): bytes the frontend has put into `out`. */
  outProd: 68,
  /** out_error (i32): the backend's write error, a negative errno (0: none). */
  outError: 72,
  /** ring_order (u32): the data ring is 2^ring_order pages. */
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
  /** AF_INET (2). */
  family: number;
  /** The TCP port, 0-65535. */
  port: number;
  /** Dotted quad. */
  address: string;
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

/** Decodes the response in SLOT. Never throws. */
export function decodeResponse(slot: Uint8Array): PvcallsResponse {
  const v = view(slot);
  return {
    reqId: v.getUint32(RSP.reqId, true),
    cmd: v.getUint32(RSP.cmd, true),
    ret: v.getInt32(RSP.ret, true),
    id: v.getBigUint64(RSP.id, true),
  };
}

/** Writes RSP into SLOT (the bytes it does not use are zeroed). */
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
