/** PVCalls' requests and responses, decoded (wire.ts lays them out on the commands ring). */

/** What every request carries. */
export interface PvcallsRequestBase {
  /** The frontend's request id, echoed byte for byte in the response. */
  reqId: number;
  /** The socket, named by the frontend (any u64). */
  id: bigint;
}

/** SOCKET: a new socket. */
export interface PvcallsSocketRequest extends PvcallsRequestBase {
  /** The command. */
  cmd: 'SOCKET';
  /** AF_INET. */
  domain: number;
  /** SOCK_STREAM. */
  type: number;
  /** 0. */
  protocol: number;
}

/** CONNECT: connect the socket; its data ring's indexes page and event channel come with it. */
export interface PvcallsConnectRequest extends PvcallsRequestBase {
  /** The command. */
  cmd: 'CONNECT';
  /** The address, ADDR_SIZE bytes of struct sockaddr (decodeInetAddress reads it). */
  addr: Uint8Array;
  /** How many bytes of addr are valid. */
  len: number;
  /** 0 (no flags are defined). */
  flags: number;
  /** Grant ref of the data ring's indexes page. */
  ref: number;
  /** The frontend's event channel port for the data ring. */
  evtchn: number;
}

/** RELEASE: close the socket. */
export interface PvcallsReleaseRequest extends PvcallsRequestBase {
  /** The command. */
  cmd: 'RELEASE';
  /** 1: the frontend reuses the id at once (the backend must forget it before answering). */
  reuse: number;
}

/** BIND: bind the socket to an address. */
export interface PvcallsBindRequest extends PvcallsRequestBase {
  /** The command. */
  cmd: 'BIND';
  /** The address, ADDR_SIZE bytes of struct sockaddr. */
  addr: Uint8Array;
  /** How many bytes of addr are valid. */
  len: number;
}

/** LISTEN: listen on the bound socket. */
export interface PvcallsListenRequest extends PvcallsRequestBase {
  /** The command. */
  cmd: 'LISTEN';
  /** listen(2)'s backlog. */
  backlog: number;
}

/** ACCEPT: accept a connection on the listening socket as the new socket idNew. */
export interface PvcallsAcceptRequest extends PvcallsRequestBase {
  /** The command. */
  cmd: 'ACCEPT';
  /** The accepted socket's id, named by the frontend. */
  idNew: bigint;
  /** Grant ref of the accepted socket's data ring indexes page. */
  ref: number;
  /** The frontend's event channel port for that data ring. */
  evtchn: number;
}

/** POLL: answer when a connection waits on the listening socket. */
export interface PvcallsPollRequest extends PvcallsRequestBase {
  /** The command. */
  cmd: 'POLL';
}

/** A request of version 1, told apart by its cmd. */
export type PvcallsRequest =
  | PvcallsSocketRequest
  | PvcallsConnectRequest
  | PvcallsReleaseRequest
  | PvcallsBindRequest
  | PvcallsListenRequest
  | PvcallsAcceptRequest
  | PvcallsPollRequest;

/** A request whose cmd is not one of version 1's: answered with -ENOTSUP by a backend. */
export interface UnknownRequest {
  /** The frontend's request id. */
  reqId: number;
  /** The unknown command's number. */
  cmd: number;
}

/** A response (struct xen_pvcalls_response). */
export interface PvcallsResponse {
  /** The request's id, echoed. */
  reqId: number;
  /** The request's cmd number, echoed. */
  cmd: number;
  /** 0, or a negative Linux errno. */
  ret: number;
  /** The socket the command was about (its id, echoed). */
  id: bigint;
}
