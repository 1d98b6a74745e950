/** Event channels: Xen's virtual interrupts, bound through one handle and delivered as JS events. */
import { EventEmitter } from 'node:events';

import { checkBoolean, checkDomid, checkInt, checkObject, checkPort, coded } from './errors';
import { DOMID_FIRST_RESERVED } from './constants';
import { asDomain, Backend, Binding, binding, type EvtchnHandle } from './native';

export interface EventChannelOptions {
  /** Process backend ('mock' or 'real'); see useBackend(). */
  backend?: Backend;
  /**
   * Unmask each port right after its 'event' is emitted (default true). With false, a delivered
   * port stays masked, as Xen leaves it, until you call unmask(port).
   */
  autoUnmask?: boolean;
  /** Mock only: open the handle as this domain. */
  mockDomid?: number;
}

/** Emitted by EventChannel. */
export interface EventChannelEvents {
  event: [port: number];
  error: [err: Error];
  close: [];
}

/**
 * A handle on the event channel device (/dev/xen/evtchn). Ports bound through it deliver
 * 'event' with the port number. While any port is bound the handle keeps the process alive,
 * unless unref() was called.
 */
export class EventChannel extends EventEmitter<EventChannelEvents> {
  readonly #b: Binding;
  #h: EvtchnHandle | null;
  readonly #ports = new Set<number>();
  readonly #autoUnmask: boolean;
  #polling = false;
  #refed = true;

  constructor(options: EventChannelOptions = {}) {
    super();
    const o = checkObject('options', options);
    this.#autoUnmask = checkBoolean('options.autoUnmask', o.autoUnmask, true);
    this.#b = binding(o.backend as Backend | undefined);
    const dom = o.mockDomid === undefined ? undefined : checkDomid('options.mockDomid', o.mockDomid);
    this.#h = asDomain(this.#b, dom, () => this.#b.evtchn.open());
  }

  /** The ports bound through this handle. */
  get ports(): number[] {
    return [...this.#ports];
  }

  /** True until close(). */
  get open(): boolean {
    return this.#h !== null;
  }

  /** The device's file descriptor (pollable; read by this object, do not read it yourself). */
  get fd(): number {
    return this.#b.evtchn.fd(this.#handle());
  }

  #handle(): EvtchnHandle {
    if (!this.#h) {
      throw coded('The event channel handle is closed', 'ERR_XEN_CLOSED');
    }
    return this.#h;
  }

  #bound(port: number): number {
    this.#ports.add(port);
    this.#startPolling();
    return port;
  }

  /** Allocates a port that REMOTE_DOMID (and only it) may bind with bindInterdomain. */
  bindUnbound(remoteDomid: number): number {
    checkInt('remoteDomid', remoteDomid, 0, DOMID_FIRST_RESERVED); // DOMID_SELF allowed
    return this.#bound(this.#b.evtchn.bindUnbound(this.#handle(), remoteDomid));
  }

  /** Connects to REMOTE_PORT of REMOTE_DOMID, which must have been offered to this domain. */
  bindInterdomain(remoteDomid: number, remotePort: number): number {
    checkInt('remoteDomid', remoteDomid, 0, DOMID_FIRST_RESERVED); // DOMID_SELF allowed
    checkPort('remotePort', remotePort);
    return this.#bound(this.#b.evtchn.bindInterdomain(this.#handle(), remoteDomid, remotePort));
  }

  /** Binds a virtual IRQ (VIRQ_DOM_EXC is 3). */
  bindVirq(virq: number): number {
    checkInt('virq', virq, 0, 23);
    return this.#bound(this.#b.evtchn.bindVirq(this.#handle(), virq));
  }

  /** Binds a static (dom0less) channel that Xen pre-bound from the device tree (Linux >= 6.5). */
  bindStatic(port: number): number {
    checkPort('port', port);
    return this.#bound(this.#b.evtchn.bindStatic(this.#handle(), port));
  }

  /** Sends an event to the other end of PORT. */
  notify(port: number): void {
    checkPort('port', port);
    this.#b.evtchn.notify(this.#handle(), port);
  }

  /** Re-enables delivery on PORT after an event (only needed with autoUnmask: false). */
  unmask(port: number): void {
    checkPort('port', port);
    this.#b.evtchn.unmask(this.#handle(), port);
  }

  /** Unbinds PORT; the remote end of an interdomain channel becomes unbound again. */
  unbind(port: number): void {
    checkPort('port', port);
    this.#b.evtchn.unbind(this.#handle(), port);
    this.#ports.delete(port);
    if (this.#ports.size === 0) this.#stopPolling();
  }

  /** From now on this handle may only bind interdomain channels to DOMID (once, never dom0). */
  restrict(domid: number): void {
    checkDomid('domid', domid);
    this.#b.evtchn.restrict(this.#handle(), domid);
  }

  /** Closes the handle and every port bound through it. Idempotent. */
  close(): void {
    if (!this.#h) return;
    const h = this.#h;
    this.#h = null;
    this.#ports.clear();
    this.#polling = false;
    this.#b.evtchn.close(h);
    this.emit('close');
  }

  /** Keep the process alive while ports are bound (the default). */
  ref(): this {
    this.#refed = true;
    if (this.#h && this.#polling) this.#b.evtchn.ref(this.#h, true);
    return this;
  }

  /** Let the process exit even with ports bound. */
  unref(): this {
    this.#refed = false;
    if (this.#h && this.#polling) this.#b.evtchn.ref(this.#h, false);
    return this;
  }

  #startPolling(): void {
    if (this.#polling || !this.#h) return;
    this.#b.evtchn.poll(this.#h, () => this.#onReadable());
    this.#b.evtchn.ref(this.#h, this.#refed);
    this.#polling = true;
  }

  #stopPolling(): void {
    if (!this.#polling || !this.#h) return;
    this.#b.evtchn.poll(this.#h, null);
    this.#polling = false;
  }

  #onReadable(): void {
    if (!this.#h) return;
    let ports: number[];
    try {
      ports = this.#b.evtchn.pending(this.#h);
    } catch (e) {
      this.emit('error', e as Error);
      return;
    }
    for (const p of ports) {
      if (!this.#h) return;
      if (this.#autoUnmask) this.#b.evtchn.unmask(this.#h, p);
      this.emit('event', p);
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
