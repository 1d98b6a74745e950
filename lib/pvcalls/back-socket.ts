/**
 * A PVCalls backend's sockets: what each is (new, active with its data ring, passive), the pump
 * that moves an active socket's bytes between its ring and its net.Socket, and its release.
 */
import * as net from 'node:net';
import { constants } from 'node:os';
import * as tls from 'node:tls';
import { debuglog } from 'node:util';

import { invalidArgType } from '../errors';
import { type EventChannel, nativeHandleOf } from '../evtchn';
import type { GrantMapper, MappedPages } from '../grants';
import type { PumpHandle } from '../native';
import { DataRing } from './data';
import { DATA_INTF } from './wire';
import { RingCorruptError } from './ring';

const debug = debuglog('xen-vchan');
const E = constants.errno;
/** The smallest data ring order the spec allows ("It has to be one at minimum"). */
export const MIN_RING_ORDER = 1;

/** How long a released socket may take to write out what the frontend wrote before RELEASE, ms. */
const RELEASE_LINGER_MS = 10_000;
/** A Node error's code as the negative Linux errno a response carries (-EIO when it has none). */
export function errnoOf(err: unknown): number {
  const code = (err as { code?: string }).code;
  const n = code && (E as Record<string, number>)[code];
  return -(n || E.EIO);
}

export type BackSocket = { kind: 'new' } | ActiveSocket | PassiveSocket;

/** A request answered when something happens, or cancelled (-EINTR) when its socket goes. */
export interface Waiter<T> {
  fire: (v: T) => void;
  cancel: () => void;
}

export interface PassiveSocket {
  kind: 'passive';
  server: net.Server;
  listening: boolean;
  backlog: number;
  /** Connections accepted by this process, waiting for the frontend's ACCEPT. */
  queue: net.Socket[];
  accept?: Waiter<net.Socket>;
  poll?: Waiter<void>;
  /** BIND's result (0 or a negative errno), once Node's listen() has answered. */
  bound?: Promise<number>;
}

export interface ActiveSocket {
  kind: 'active';
  ring: DataRing;
  order: number;
  maps: MappedPages[];
  port: number;
  /** The socket; let go (destroyed, its fd duplicated) once a native pump moves its bytes. */
  sock: net.Socket;
  pump?: PumpHandle;
  pending: Buffer[];
  ended: boolean;
  released: boolean;
  /** Answers the CONNECT still in flight on this socket (once). */
  connecting?: (ret: number) => void;
}

/** What a socket's pump needs of its backend. */
export interface SocketHost {
  /** The backend's event channel handle (a native pump binds on it). */
  ev: EventChannel;
  /** Tells the frontend: an event on PORT. */
  notify(port: number): void;
  /** The frontend broke the ring protocol: its connection ends. */
  fail(err: Error): void;
  /** Makes an event on PORT run WAKE. */
  onPort(port: number, wake: () => void): void;
}

/**
 * Moves bytes between socket A and its data ring, both ways, with backpressure: in C++ when PUMP
 * is 'native' and the socket can be handed over, else in JavaScript. LABEL names the frontend in
 * the log.
 */
export function wire(host: SocketHost, a: ActiveSocket, pump: 'native' | 'js', label: string): void {
  const fd = pump === 'native' ? socketFd(a.sock) : -1;
  debug('pvcalls backend %s: socket on port %d, %s pump', label, a.port, fd >= 0 ? 'native' : 'js');
  if (fd >= 0) {
    try {
      return wireNative(host, a, fd);
    } catch {
      // No pump (out of file descriptors for its duplicate, say): the socket is still whole.
    }
  }
  wireJs(host, a);
}

/**
 * The pump in C++ (src/pump.cc) over a duplicate of the socket's fd; the net.Socket is let go.
 * The frontend's events run one step; the socket's wake-ups never reach JavaScript.
 */
function wireNative(host: SocketHost, a: ActiveSocket, fd: number): void {
  const { b, h } = nativeHandleOf(host.ev);
  const step = () => {
    const pump = a.pump;
    const corrupt = pump && b.pump.run(pump);
    if (corrupt) host.fail(new RingCorruptError(corrupt));
  };
  a.pump = b.pump.open(h, a.port, a.maps[0].buffer, a.maps[1].buffer, a.order, fd, step);
  a.sock.destroy(); // closes its own fd; the pump's duplicate keeps the connection
  host.onPort(a.port, step);
}

/** The pump in JavaScript, through the net.Socket's streams. */
function wireJs(host: SocketHost, a: ActiveSocket): void {
  const { ring, sock, port } = a;
  let draining = false;
  const pump = () => {
    if (a.released) return;
    try {
      // Socket -> in.
      let wrote = false;
      while (a.pending.length && ring.writable > 0) {
        const b = a.pending[0];
        const n = ring.write(b);
        wrote = wrote || n > 0;
        if (n === b.length) a.pending.shift();
        else a.pending[0] = b.subarray(n);
      }
      if (a.pending.length === 0) {
        if (a.ended && ring.inError === 0) {
          ring.inError = -E.ENOTCONN; // the remote end closed: after the last byte
          wrote = true;
        } else if (!a.ended) sock.resume();
      }
      // out -> socket. The ring's room is given back (and the frontend told) before the socket
      // write, so the frontend refills the ring while this process writes to the socket.
      const chunks: Uint8Array[] = [];
      while (!draining && ring.readable > 0) chunks.push(ring.read());
      if (wrote || chunks.length) host.notify(port);
      for (const chunk of chunks)
        if (!sock.write(chunk) && !draining) {
          draining = true;
          sock.once('drain', () => {
            draining = false;
            pump();
          });
        }
    } catch (e) {
      if (e instanceof RingCorruptError) return host.fail(e);
      throw e;
    }
  };
  host.onPort(port, pump);
  sock.on('data', (d: Buffer) => {
    a.pending.push(d);
    sock.pause();
    pump();
  });
  sock.on('end', () => {
    a.ended = true;
    pump();
  });
  sock.on('error', (e) => {
    if (a.released) return;
    a.ended = true;
    a.pending.length = 0;
    ring.outError = errnoOf(e);
    ring.inError = errnoOf(e);
    host.notify(port);
  });
  pump();
}

/**
 * Releases socket S: a connect in flight is answered (-ECONNABORTED), what the frontend wrote goes
 * out before the FIN (see linger), a listening socket's waiters are cancelled and its server
 * closed. True when S was an active socket released now (its ring is then the caller's to unmap).
 */
export function releaseSocket(ev: EventChannel, s: BackSocket): boolean {
  if (s.kind === 'active') {
    if (s.released) return false;
    s.released = true;
    if (s.connecting) {
      // Released before it connected: the CONNECT still gets its one answer.
      s.connecting(-E.ECONNABORTED);
      s.sock.destroy();
    } else if (s.pump) {
      const { b } = nativeHandleOf(ev);
      debug('pvcalls backend: socket on port %d released, its pump: %j', s.port, b.pump.stats(s.pump));
      const { rest, fd } = b.pump.detach(s.pump);
      s.pump = undefined;
      // The socket failed (-1): nothing more goes out.
      if (fd >= 0) linger(new net.Socket({ fd, readable: false, writable: true, allowHalfOpen: true }), [rest]);
    } else {
      let rest: Buffer[] = [];
      try {
        while (s.ring.readable > 0) rest.push(s.ring.read());
      } catch {
        rest = []; // corrupt indexes: nothing of it is trusted
      }
      if (s.sock.destroyed || !s.sock.writable) s.sock.destroy();
      else linger(s.sock, rest);
    }
    return true;
  } else if (s.kind === 'passive') {
    s.accept?.cancel();
    s.poll?.cancel();
    s.accept = s.poll = undefined;
    for (const c of s.queue) c.destroy();
    s.queue.length = 0;
    s.server.close();
  }
  return false;
}

/** A data ring mapped from a frontend, and its event channel. */
export interface MappedRing {
  ring: DataRing;
  order: number;
  maps: MappedPages[];
  port: number;
}

export function checkPumpKind(v: unknown): 'native' | 'js' {
  if (v === 'native' || v === 'js') return v;
  throw invalidArgType('options.dataPump', "'native' or 'js'", v);
}

/**
 * The fd a native pump may take over from SOCK: its own connection's, with nothing buffered in
 * Node yet; -1 for a socket whose bytes are not the connection's (TLS) or that has no fd.
 */
function socketFd(sock: net.Socket): number {
  if (sock instanceof tls.TLSSocket || sock.readableLength > 0 || sock.writableLength > 0) return -1;
  const fd = (sock as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/**
 * A released socket: what the frontend wrote before RELEASE goes out, then the FIN; a remote end
 * that reads nothing more does not keep it past RELEASE_LINGER_MS.
 */
function linger(sock: net.Socket, rest: Uint8Array[]): void {
  sock.on('error', () => undefined);
  for (const b of rest) if (b.length) sock.write(b);
  const t = setTimeout(() => sock.destroy(), RELEASE_LINGER_MS).unref();
  sock.end(() => {
    clearTimeout(t);
    sock.destroy();
  });
}

/**
 * A connection came to listening socket S: queued for the frontend's ACCEPT (or handed to one
 * waiting), or reset when the socket does not listen or its backlog is full.
 */
export function incoming(s: PassiveSocket, c: net.Socket): void {
  debug(
    'pvcalls backend: incoming connection (listening %s, queued %d, accept %s)',
    s.listening,
    s.queue.length,
    !!s.accept,
  );
  c.on('error', () => undefined);
  if (!s.listening || s.queue.length >= s.backlog) {
    c.resetAndDestroy();
    return;
  }
  if (s.accept) return s.accept.fire(c);
  s.queue.push(c);
  const p = s.poll;
  s.poll = undefined;
  p?.fire();
}

/**
 * Maps the data ring domain DOMID offers at REF (its indexes page, then the pages it names, at most
 * 2^MAXORDER) and binds its event channel EVTCHN: EINVAL for an order outside the spec's minimum to
 * MAXORDER; on any failure nothing stays mapped.
 */
export function mapRing(
  gm: GrantMapper,
  ev: EventChannel,
  domid: number,
  ref: number,
  evtchn: number,
  maxOrder: number,
): MappedRing {
  const maps: MappedPages[] = [];
  try {
    const idx = gm.map(domid, [ref]);
    maps.push(idx);
    const view = new DataView(idx.buffer);
    const order = view.getUint32(DATA_INTF.ringOrder, true);
    if (order < MIN_RING_ORDER || order > maxOrder) throw Object.assign(new Error('ring order'), { code: 'EINVAL' });
    const refs = Array.from({ length: 1 << order }, (_, i) => view.getUint32(DATA_INTF.ref + 4 * i, true));
    const data = gm.map(domid, refs);
    maps.push(data);
    const ring = new DataRing(new Uint8Array(idx.buffer), new Uint8Array(data.buffer), order, 'back');
    const port = ev.bindInterdomain(domid, evtchn);
    return { ring, order, maps, port };
  } catch (e) {
    for (const m of maps) m.unmap();
    throw e;
  }
}
