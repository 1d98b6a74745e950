/**
 * A PVCalls backend's commands: what SOCKET, CONNECT, RELEASE, BIND, LISTEN, ACCEPT and POLL do to
 * one frontend's sockets, and the errno each request that may not be made gets.
 */
import * as net from 'node:net';
import { constants } from 'node:os';

import {
  type ActiveSocket,
  type BackSocket,
  errnoOf,
  incoming,
  type MappedRing,
  type PassiveSocket,
} from './back-socket';
import { AF_INET, decodeInetAddress, type PvcallsRequest, SOCK_STREAM } from './wire';

const E = constants.errno;

/** What the commands of one frontend act on, and with. */
export interface CommandHost {
  /** The frontend's sockets by id. */
  sockets: Map<bigint, BackSocket>;
  /** The backend's limits (PvcallsBackendOptions). */
  maxSockets: number;
  maxPendingAccepts: number;
  /** Makes an outgoing connection (PvcallsBackendOptions.connect), if set. */
  connect?: (address: { host: string; port: number }) => net.Socket;
  /** Maps the data ring the frontend offers at REF, bound to its EVTCHN (see mapRing). */
  mapRing(ref: number, evtchn: number): MappedRing;
  unmapRing(r: MappedRing): void;
  /** Releases a socket (see releaseSocket) and unmaps its ring. */
  release(s: BackSocket): void;
  /** Starts moving an active socket's bytes (see wire). */
  wire(a: ActiveSocket): void;
}

/** Socket ID of the frontend is connected through SOCK, over ring R. */
function activate(h: CommandHost, id: bigint, r: MappedRing, sock: net.Socket): ActiveSocket {
  const a: ActiveSocket = { kind: 'active', ...r, sock, pending: [], ended: false, released: false };
  h.sockets.set(id, a);
  return a;
}

/**
 * Runs request REQ of one frontend against its sockets: the answer (0 or a negative errno), or a
 * promise of it for a command that waits (CONNECT, BIND, LISTEN behind a BIND, ACCEPT, POLL).
 * Every request is answered exactly once, a waiting one with -EINTR when its socket is released.
 */
export function command(h: CommandHost, req: PvcallsRequest): number | Promise<number> {
  const s = h.sockets.get(req.id);
  switch (req.cmd) {
    case 'SOCKET':
      if (s) return -E.EEXIST;
      if (req.domain !== AF_INET) return -E.EAFNOSUPPORT;
      if (req.type !== SOCK_STREAM || req.protocol !== 0) return -E.EINVAL;
      if (h.sockets.size >= h.maxSockets) return -E.ENOBUFS;
      h.sockets.set(req.id, { kind: 'new' });
      return 0;
    case 'CONNECT': {
      if (s?.kind !== 'new') return -E.EINVAL;
      const a = decodeInetAddress(req.addr, req.len);
      if (!a) return -E.EAFNOSUPPORT;
      const ring = h.mapRing(req.ref, req.evtchn);
      let sock: net.Socket;
      try {
        // Half-open, as TCP is: the remote end's FIN does not end what the frontend still writes.
        sock = h.connect
          ? h.connect({ host: a.address, port: a.port })
          : net.connect({ port: a.port, host: a.address, allowHalfOpen: true });
      } catch (e) {
        h.unmapRing(ring); // the hook refused: its errno goes back
        throw e;
      }
      const active = activate(h, req.id, ring, sock);
      return new Promise<number>((resolve) => {
        // One answer, whichever comes first: the connection, its failure, or a RELEASE.
        active.connecting = (ret) => {
          active.connecting = undefined;
          sock.off('error', onError);
          sock.off('connect', onConnect);
          resolve(ret);
        };
        const onError = (e: Error) => {
          // As with POSIX, the socket stays the frontend's until it releases it.
          const answer = active.connecting;
          active.connecting = undefined;
          h.release(active);
          h.sockets.set(req.id, { kind: 'new' });
          answer?.(errnoOf(e));
        };
        const onConnect = () => {
          active.connecting?.(0);
          h.wire(active);
        };
        sock.once('error', onError);
        sock.once('connect', onConnect);
      });
    }
    case 'RELEASE':
      if (!s) return -E.EINVAL;
      h.release(s);
      h.sockets.delete(req.id);
      return 0;
    case 'BIND': {
      if (s?.kind !== 'new') return -E.EINVAL;
      const a = decodeInetAddress(req.addr, req.len);
      if (!a) return -E.EAFNOSUPPORT;
      // Node binds only by listening: connections that come before LISTEN are refused (reset).
      // The socket is passive at once, so a LISTEN right behind this BIND waits for it.
      const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true });
      const passive: PassiveSocket = { kind: 'passive', server, listening: false, backlog: 0, queue: [] };
      h.sockets.set(req.id, passive);
      passive.bound = new Promise<number>((resolve) => {
        server.once('error', (e) => {
          if (h.sockets.get(req.id) === passive) h.sockets.set(req.id, { kind: 'new' });
          passive.bound = undefined;
          resolve(errnoOf(e));
        });
        server.listen({ host: a.address, port: a.port, backlog: h.maxPendingAccepts }, () => {
          server.removeAllListeners('error');
          server.on('error', () => undefined);
          server.on('connection', (c) => incoming(passive, c));
          passive.bound = undefined;
          resolve(0);
        });
      });
      return passive.bound;
    }
    case 'LISTEN': {
      if (s?.kind !== 'passive' || s.listening) return -E.EINVAL;
      const listen = (bound: number) => {
        if (bound < 0 || s.listening || h.sockets.get(req.id) !== s) return -E.EINVAL;
        s.listening = true;
        s.backlog = Math.max(1, Math.min(req.backlog || 1, h.maxPendingAccepts));
        return 0;
      };
      return s.bound ? s.bound.then(listen) : listen(0);
    }
    case 'ACCEPT': {
      // Pipelined behind a BIND still in progress (and the LISTEN waiting for it): after them.
      if (s?.kind === 'passive' && s.bound) return s.bound.then(() => command(h, req));
      if (s?.kind !== 'passive' || !s.listening) return -E.EINVAL;
      if (s.accept) return -E.EBUSY; // one ACCEPT at a time per socket
      if (h.sockets.has(req.idNew)) return -E.EEXIST;
      if (h.sockets.size >= h.maxSockets) return -E.ENOBUFS;
      const ring = h.mapRing(req.ref, req.evtchn);
      h.sockets.set(req.idNew, { kind: 'new' }); // reserved while it waits
      return new Promise<number>((resolve) => {
        const fire = (c: net.Socket) => {
          s.accept = undefined;
          const active = activate(h, req.idNew, ring, c);
          h.wire(active);
          c.resume();
          resolve(0);
        };
        const cancel = () => {
          s.accept = undefined;
          h.unmapRing(ring);
          h.sockets.delete(req.idNew);
          resolve(-E.EINTR);
        };
        const next = s.queue.shift();
        if (next) fire(next);
        else s.accept = { fire, cancel };
      });
    }
    case 'POLL': {
      if (s?.kind === 'passive' && s.bound) return s.bound.then(() => command(h, req));
      if (s?.kind !== 'passive' || !s.listening) return -E.EINVAL;
      if (s.queue.length) return 0;
      if (s.poll) return -E.EALREADY;
      return new Promise<number>((resolve) => {
        s.poll = { fire: () => resolve(0), cancel: () => resolve(-E.EINTR) };
      });
    }
  }
}
