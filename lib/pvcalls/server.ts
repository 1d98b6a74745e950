/** PvcallsServer: a listening PVCalls socket, accepting through the backend. */
import { EventEmitter } from 'node:events';
import { constants } from 'node:os';

import { checkInt, checkObject, coded, invalidArgType } from '../errors';
import type { PvcallsFrontend, Request } from './frontend';
import { PvcallsSocket } from './socket';
import { AF_INET, backendError, encodeInetAddress, SOCK_STREAM } from './wire';

const E = constants.errno;

/** The events of a {@link PvcallsServer}. */
export interface PvcallsServerEvents {
  /** The backend's socket is bound and listening. */
  listening: [];
  /** A connection was accepted: its socket. */
  connection: [PvcallsSocket];
  /** SOCKET, BIND or LISTEN failed (the backend's errno, as net's: EADDRINUSE…), or an ACCEPT did: no more are accepted (close() releases the socket). */
  error: [Error];
  /** The server has stopped listening (RELEASE answered). */
  close: [];
}

/** Where {@link PvcallsServer.listen} listens. */
export interface PvcallsListenOptions {
  /** The backend's IPv4 address to bind; default 0.0.0.0. */
  host?: string;
  /** The TCP port, 0-65535. */
  port: number;
  /** listen(2)'s backlog; default 32. */
  backlog?: number;
}

/** A listening PVCalls socket: accepts through the backend, one ACCEPT at a time. */
export class PvcallsServer extends EventEmitter<PvcallsServerEvents> {
  readonly #fe: PvcallsFrontend;
  readonly #id: bigint;
  #closed = false;
  #listening = false;
  #starting = false;

  /** @internal */
  constructor(fe: PvcallsFrontend) {
    super();
    this.#fe = fe;
    this.#id = fe.newId();
  }

  /** Whether the backend's socket is listening: from 'listening' until close() has released it. */
  get listening(): boolean {
    return this.#listening;
  }

  /** Binds and listens on the backend's side (HOST default 0.0.0.0), then accepts. */
  listen(options: PvcallsListenOptions, cb?: () => void): this {
    const o = checkObject('options', options);
    const port = checkInt('options.port', o.port, 0, 65535);
    const backlog = o.backlog === undefined ? 32 : checkInt('options.backlog', o.backlog, 1, 65535);
    const host = o.host === undefined ? '0.0.0.0' : String(o.host);
    const addr = encodeInetAddress({ family: AF_INET, port, address: host });
    if (cb) this.once('listening', cb);
    this.#starting = true;
    void (async () => {
      const steps: [string, Request][] = [
        ['pvcalls.socket', { cmd: 'SOCKET', id: this.#id, domain: AF_INET, type: SOCK_STREAM, protocol: 0 }],
        ['pvcalls.bind', { cmd: 'BIND', id: this.#id, addr, len: 16 }],
        ['pvcalls.listen', { cmd: 'LISTEN', id: this.#id, backlog }],
      ];
      for (const [syscall, req] of steps) {
        const ret = await this.#fe.call(req);
        if (ret < 0) {
          if (req.cmd !== 'SOCKET') await this.#fe.call({ cmd: 'RELEASE', id: this.#id, reuse: 0 });
          this.#starting = false;
          this.emit('error', backendError(ret, syscall, `${host}:${port}`));
          return;
        }
      }
      this.#starting = false;
      this.#listening = true;
      this.emit('listening');
      this.#acceptLoop();
    })();
    return this;
  }

  async #acceptLoop(): Promise<void> {
    while (!this.#closed) {
      const d = this.#fe.newDataRing();
      const s = new PvcallsSocket(this.#fe, this.#fe.newId());
      const ret = await this.#fe.call({ cmd: 'ACCEPT', id: this.#id, idNew: s.id, ref: d.ref, evtchn: d.port });
      if (ret < 0) {
        d.unref();
        s.destroy();
        if (!this.#closed && ret !== -E.EINTR) this.emit('error', backendError(ret, 'pvcalls.accept'));
        return;
      }
      s.created = true;
      s.attach(d);
      this.emit('connection', s);
    }
  }

  /**
   * Stops listening (RELEASE); sockets already accepted stay open. As net.Server's: a server that
   * is not running (never listened, its listen() failed, or closed already) passes
   * ERR_SERVER_NOT_RUNNING to CB.
   */
  close(cb?: (err?: Error) => void): this {
    if (cb !== undefined && typeof cb !== 'function') throw invalidArgType('cb', 'of type function', cb);
    const notRunning = () => coded('The server is not running', 'ERR_SERVER_NOT_RUNNING');
    if (this.#closed) {
      if (cb) process.nextTick(cb, notRunning());
      return this;
    }
    const running = this.#listening || this.#starting;
    if (cb) this.once('close', running ? () => cb() : () => cb(notRunning()));
    this.#closed = true;
    if (!running) {
      process.nextTick(() => this.emit('close'));
      return this;
    }
    void this.#fe.call({ cmd: 'RELEASE', id: this.#id, reuse: 0 }).then(() => {
      this.#listening = false;
      this.emit('close');
    });
    return this;
  }
}
