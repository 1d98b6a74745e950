/**
 * Socket connections carried over vchan, losing no byte: the two halves of `xen-vchan proxy`.
 *
 * {@link proxyServe} runs in the domain that has the service: a {@link VchanMultiServer} whose every
 * client becomes a connection to a Unix or TCP socket there. {@link proxyListen} runs in the domain
 * that wants the service: a socket server whose every connection becomes a client of the vchan
 * server (each on its own channel, connections beyond the server's capacity waiting their turn).
 *
 * A vchan has no half-close, so the two halves speak xen-vchan's framing protocol over each channel
 * ({@link FramedStream}), in which each direction ends on its own. With `raw: true` both halves instead pass the bytes through unframed, to talk to a plain
 * vchan peer (Xen's vchan-socket-proxy, any libxenvchan program); an end of either side then ends
 * the whole connection, as vchan-socket-proxy does.
 */
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { debuglog } from 'node:util';

import { checkInt, checkObject, invalidArgType, invalidArgValue, systemError } from './errors';
import { FramedStream } from './framed';
import { connectMulti, createMultiServer, type VchanMultiServer } from './vchan';
import { connect, createServer, type VchanServer, type VchanStream } from './vchan';
import type { Backend } from './native';

const debug = debuglog('xen-vchan');

/** Ends SOCK as an error would: a TCP reset where it is TCP. */
function reset(sock: net.Socket): void {
  try {
    sock.resetAndDestroy();
  } catch {
    sock.destroy();
  }
}

/**
 * Carries SOCK over V with the framing protocol until both directions have ended; reports a failed
 * connection (a socket error, a peer's ERROR, a protocol error, a channel that closed early) to
 * ONERROR once.
 */
function relay(sock: net.Socket, v: VchanStream, onError: (e: Error) => void, what: string): void {
  const f = new FramedStream(v, what);
  let failed = false;
  const fail = (e: Error) => {
    if (failed) return;
    failed = true;
    onError(e);
    f.destroy(e);
    reset(sock);
  };
  // Each direction ends on its own: the socket's FIN is an EOF frame, the peer's EOF a FIN.
  sock.pipe(f);
  f.pipe(sock);
  f.on('error', fail);
  sock.on('error', fail);
  sock.on('close', () => {
    if (!sock.readableEnded) fail(systemError('ECONNRESET', 'read', `${what}: the socket closed`));
  });
  sock.resume();
}

/** Raw mode: the bytes as they are; either side ending or failing ends both. */
function splice(sock: net.Socket, v: VchanStream, onError: (e: Error) => void): void {
  let over = false;
  const end = (e?: Error) => {
    if (over) return;
    over = true;
    if (e) onError(e);
    v.end();
    if (e) reset(sock);
    else sock.end();
  };
  sock.pipe(v, { end: false });
  v.pipe(sock, { end: false });
  sock.on('end', () => end()).on('error', end);
  v.on('end', () => end()).on('error', end);
  sock.on('close', () => end());
  v.on('close', () => end());
  sock.resume();
}

/** A socket address: `{ path }` for a Unix socket, `{ host, port }` for TCP. */
export type SocketAddress = UnixSocketAddress | TcpSocketAddress;

/** A Unix socket's address. */
export interface UnixSocketAddress {
  /** The socket's path. */
  path: string;
}

/** A TCP address. */
export interface TcpSocketAddress {
  /** The host name or address; default localhost. */
  host?: string;
  /** The port, 0-65535 (0: any, where listening). */
  port: number;
}

function checkAddress(name: string, a: unknown): SocketAddress {
  const o = checkObject(name, a) as { path?: unknown; host?: unknown; port?: unknown };
  if (o.path !== undefined) {
    if (typeof o.path !== 'string' || o.path === '')
      throw invalidArgValue(`${name}.path`, 'must be a socket path', o.path);
    return { path: o.path };
  }
  if (o.host !== undefined && typeof o.host !== 'string')
    throw invalidArgType(`${name}.host`, 'of type string', o.host);
  return { host: o.host as string | undefined, port: checkInt(`${name}.port`, o.port, 0, 65535) };
}

function describe(a: SocketAddress): string {
  return 'path' in a ? `unix:${a.path}` : `tcp:${a.host ?? 'localhost'}:${a.port}`;
}

interface CommonOptions {
  /** The other domain. */
  domid: number;
  /** The vchan path (as for {@link createMultiServer} and {@link connectMulti}). */
  path: string;
  /** Bytes as they are, for a plain vchan peer (no half-close). Default false. */
  raw?: boolean;
  /** 'real' (Xen) or 'mock'; default: the process's backend (see useBackend). */
  backend?: Backend;
  /** Mock only: act as this domain. */
  mockDomid?: number;
}

/** Options of {@link proxyServe}. */
export interface ProxyServeOptions extends CommonOptions {
  /** Where each client's connection goes: `{ path }` (Unix) or `{ host, port }` (TCP). */
  target: SocketAddress;
  /** Connections at once; clients beyond it wait (framed mode). Default 256. */
  maxConnections?: number;
  /** Minimum size of each channel's ring toward the serving half, bytes. Default 64 KiB. */
  readMin?: number;
  /** Minimum size of each channel's ring toward the listening half, bytes. Default 64 KiB. */
  writeMin?: number;
}

/** Options of {@link proxyListen}. */
export interface ProxyListenOptions extends CommonOptions {
  /** Where to accept connections: `{ path }` (Unix) or `{ host, port }` (TCP, port 0 for any). */
  listen: SocketAddress;
  /**
   * How long a socket connection waits for a channel from the serving half, ms, before it is
   * refused (reset; 'connectionError' ETIMEDOUT); 0 waits as long as it takes. Default 120000 (a busy serving half on a slow machine keeps connections waiting for tens of seconds).
   */
  connectTimeout?: number;
}

/** The default of {@link ProxyListenOptions.connectTimeout}, ms. */
export const PROXY_CONNECT_TIMEOUT = 120_000;
/** A connection still waiting for a channel after this long is reported ('waiting'), ms. */
const WAIT_REPORT_MS = 1000;

/** The events of a {@link VchanProxy}. */
export interface VchanProxyEvents {
  /** The proxy is serving. */
  listening: [];
  /** A new connection is being carried. */
  connection: [];
  /** The listening half: a connection has waited a second for a channel (the serving half may be gone). */
  waiting: [VchanProxyWaiting];
  /** One connection failed: the other side was told; the proxy goes on. */
  connectionError: [Error];
  /** The proxy itself cannot serve: a socket address in use, a vchan path another server holds. */
  error: [Error];
  /** The proxy has closed and its connections have ended. */
  close: [];
}

/** What 'waiting' reports. */
export interface VchanProxyWaiting {
  /** Connections waiting for a channel now. */
  waiting: number;
  /** How long each may wait in all, ms (0: as long as it takes). */
  timeout: number;
}

/** One half of a vchan proxy: see {@link VchanProxyEvents} for what it emits. */
export class VchanProxy extends EventEmitter<VchanProxyEvents> {
  #close: (cb: () => void) => void;
  #address: () => unknown;
  /** Connections being carried now. */
  connections = 0;

  /** @internal */
  constructor(start: (p: VchanProxy) => { close: (cb: () => void) => void; address: () => unknown }) {
    super();
    const { close, address } = start(this);
    this.#close = close;
    this.#address = address;
  }

  /** The socket address (proxyListen) or the vchan server's address (proxyServe). */
  address(): unknown {
    return this.#address();
  }

  /**
   * Stops taking connections; those being carried go on, and those still waiting for a channel
   * are refused (reset). 'close' follows once the carried ones have ended.
   */
  close(cb?: () => void): this {
    this.#close(() => {
      this.emit('close');
      cb?.();
    });
    return this;
  }

  /** @internal */
  track(fn: (done: () => void) => void): void {
    this.connections++;
    this.emit('connection');
    let counted = true;
    fn(() => {
      if (counted) this.connections--;
      counted = false;
    });
  }
}

/**
 * The serving half: every vchan client from `domid` at `path` becomes a connection to `target`.
 * Its peer is {@link proxyListen} (or, with `raw`, any libxenvchan client).
 */
export function proxyServe(options: ProxyServeOptions): VchanProxy {
  const o = checkObject('options', options) as unknown as ProxyServeOptions;
  const target = checkAddress('options.target', o.target);
  const what = `vchan proxy to ${describe(target)}`;
  return new VchanProxy((p) => {
    const onStream = (v: VchanStream) => {
      p.track((done) => {
        v.once('close', done);
        const sock = net.connect({ ...target, allowHalfOpen: true } as net.NetConnectOpts);
        sock.pause();
        const onError = (e: Error) => {
          debug('%s: %s', what, e.message);
          p.emit('connectionError', e);
        };
        if (o.raw) splice(sock, v, onError);
        else relay(sock, v, onError, what);
      });
    };
    const common = {
      domid: o.domid,
      path: o.path,
      readMin: o.readMin,
      writeMin: o.writeMin,
      backend: o.backend,
      mockDomid: o.mockDomid,
    };
    const server: VchanMultiServer | VchanServer = o.raw
      ? createServer(common, onStream)
      : createMultiServer({ ...common, maxConnections: o.maxConnections }, onStream);
    server.on('listening', () => p.emit('listening'));
    server.on('error', (e) => p.emit('error', e));
    server.on('clientError', (e) => p.emit('connectionError', e));
    process.nextTick(() => server.listen());
    return { close: (cb) => server.close(() => cb()), address: () => server.address() };
  });
}

/**
 * The listening half: every connection accepted at `listen` becomes a client of the
 * {@link proxyServe} of `domid` at `path` (the full xenstore path). Connections beyond what the
 * server takes at once wait (framed mode); with `raw`, connections take the one channel of a plain
 * vchan server in turn.
 */
export function proxyListen(options: ProxyListenOptions): VchanProxy {
  const o = checkObject('options', options) as unknown as ProxyListenOptions;
  const at = checkAddress('options.listen', o.listen);
  const timeout =
    o.connectTimeout === undefined
      ? PROXY_CONNECT_TIMEOUT
      : checkInt('options.connectTimeout', o.connectTimeout, 0, 2 ** 31 - 1);
  // Named by the address bound (port 0 becomes the port the kernel chose) once listening.
  let what = `vchan proxy from ${describe(at)}`;
  let turn: Promise<unknown> = Promise.resolve();
  /** Connections waiting for a channel: refused when the proxy closes. */
  const waiting = new Set<AbortController>();
  return new VchanProxy((p) => {
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => {
      p.track((done) => {
        const onError = (e: Error) => {
          debug('%s: %s', what, e.message);
          p.emit('connectionError', e);
        };
        // A connection that goes away while it waits for a channel gives its place up.
        const ac = new AbortController();
        waiting.add(ac);
        const gone = () => ac.abort();
        sock.once('close', gone);
        sock.on('error', () => undefined);
        const report = setTimeout(() => p.emit('waiting', { waiting: waiting.size, timeout }), WAIT_REPORT_MS);
        report.unref();
        const settled = () => {
          waiting.delete(ac);
          clearTimeout(report);
        };
        const opts = {
          domid: o.domid,
          path: o.path,
          signal: ac.signal,
          timeout: timeout || undefined,
          backend: o.backend,
          mockDomid: o.mockDomid,
        };
        let go: Promise<VchanStream>;
        let myTurnDone: () => void = () => undefined;
        if (o.raw) {
          // One connection at a time on a plain server's one channel: the next waits for this one.
          const prev = turn;
          turn = new Promise<void>((r) => (myTurnDone = r));
          go = prev.then(() => (ac.signal.aborted ? Promise.reject(new Error('gone')) : connect(opts)));
        } else {
          go = connectMulti(opts);
        }
        go.then(
          (v) => {
            settled();
            sock.off('close', gone);
            v.once('close', () => {
              myTurnDone();
              done();
            });
            if (sock.destroyed) {
              v.destroy();
              return;
            }
            if (o.raw) splice(sock, v, onError);
            else relay(sock, v, onError, what);
          },
          (e: Error) => {
            settled();
            myTurnDone();
            done();
            if (ac.signal.aborted) {
              // The socket went first (nothing to report), or the proxy is closing: refuse it.
              if (!sock.destroyed) reset(sock);
              return;
            }
            onError(e);
            reset(sock);
          },
        );
      });
    });
    server.on('listening', () => {
      const a = server.address();
      if (a !== null && typeof a === 'object' && 'port' in at)
        what = `vchan proxy from ${describe({ ...at, port: a.port })}`;
      p.emit('listening');
    });
    // Node's own listen error (EADDRINUSE, EACCES, ...: code, errno, syscall 'listen', address).
    server.on('error', (e) => p.emit('error', e));
    process.nextTick(() => server.listen(at));
    return {
      close: (cb) => {
        server.close(() => cb());
        for (const ac of waiting) ac.abort();
      },
      address: () => server.address(),
    };
  });
}
