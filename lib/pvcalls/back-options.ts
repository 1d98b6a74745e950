/** PvcallsBackend's options and events (backend.ts). */
import type * as net from 'node:net';

import type { Backend } from '../native';

/** Options of {@link createPvcallsBackend}. */
export interface PvcallsBackendOptions {
  /** 'real' (Xen) or 'mock'; default: the process's backend (see useBackend). */
  backend?: Backend;
  /** Mock only: serve as this domain. */
  mockDomid?: number;
  /** Sockets one frontend may hold at once (default 128). */
  maxSockets?: number;
  /** Connections waiting for ACCEPT on one listening socket (default 32; LISTEN's backlog is capped to it). */
  maxPendingAccepts?: number;
  /** The largest data ring a frontend may offer, as max-page-order (default 4, as Linux's backend). */
  maxRingOrder?: number;
  /** Serve only the devices of these frontend domains (default: every device under backend/pvcalls). */
  frontends?: number[];
  /**
   * Where a CONNECT goes (default: the address as given, from this process). Lets a backend map
   * a frontend's addresses onto its own, or refuse some, by throwing (the errno goes back).
   */
  connect?: (address: { host: string; port: number }) => net.Socket;
  /**
   * What moves a connected socket's bytes between its data ring and the socket (default
   * 'native'): 'native' reads from the socket straight into the ring and sends straight from it,
   * in C++, with no JavaScript per chunk (a socket without a file descriptor of its own, such as
   * a TLS socket a connect hook returned, falls back to 'js'); 'js' pumps through the
   * net.Socket's streams.
   */
  dataPump?: 'native' | 'js';
}

/** The events of a {@link PvcallsBackend}. */
export interface PvcallsBackendEvents {
  /** A frontend completed the handshake. */
  connect: [domid: number, dev: number];
  /** A frontend's connection ended (it closed, or broke the protocol). */
  disconnect: [domid: number, dev: number];
  /** A frontend broke the protocol; its connection was closed. */
  frontendError: [err: Error, domid: number, dev: number];
  /** Reading xenstore's backend/pvcalls directory failed; the next change there reads it again. */
  error: [err: Error];
}

/** What {@link PvcallsBackend.dataPumps} counts. */
export interface PvcallsDataPumps {
  /** Sockets whose bytes the addon's pump moves (src/pump.cc). */
  native: number;
  /** Sockets whose bytes JavaScript moves. */
  js: number;
}
