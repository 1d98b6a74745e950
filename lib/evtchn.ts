/** Event channels: Xen's virtual interrupts, bound through one handle and delivered as JS events. */
import { EventEmitter } from 'node:events';

import { checkBoolean, checkDomid, checkInt, checkObject, checkPort, coded, systemError } from './errors';
import { DOMID_FIRST_RESERVED } from './constants';
import { asDomain, Backend, Binding, binding, type EvtchnHandle } from './native';

/** How an event channel handle is opened. */
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

/** Options of EventChannel.allocUnbound(). */
export interface AllocUnboundOptions {
  /** Process backend ('mock' or 'real'); see useBackend(). */
  backend?: Backend;
  /** Mock only: ask as this domain (the mock keeps Xen's rule that only dom0 may allocate for others). */
  mockDomid?: number;
}

/**
 * The static ports bound in this process, and the handle each is bound through. Linux's
 * IOCTL_EVTCHN_BIND_STATIC refuses a second bind on the same handle (EISCONN) but takes one from
 * another handle, with a kernel warning, and then hits a BUG when the process exits; the kernel
 * cannot tell, so the library refuses it (EBUSY).
 */
const staticPorts = new Map<string, EventChannel | StaticPortHold>();

/**
 * A static port held for a vchan of this process (lib/vchan/): its channels bind it on the
 * addon's shared handle, so an EventChannel may not bind it meanwhile (EBUSY). The vchan itself
 * may, through bindHeldStatic(): its connect() waits on the port between two attempts.
 *
 * @internal
 */
export class StaticPortHold {
  open = true;
  /** The port's key in staticPorts: backend, domain acted as, port. */
  readonly key: string;
  readonly port: number;
  constructor(key: string, port: number) {
    this.key = key;
    this.port = port;
  }
  release(): void {
    if (!this.open) return;
    this.open = false;
    if (staticPorts.get(this.key) === this) staticPorts.delete(this.key);
  }
}

/**
 * Holds static PORT of the domain acted as (MOCKDOMID on the mock) for a vchan: EBUSY while an
 * EventChannel or another vchan of this process holds it.
 *
 * @internal
 */
export function holdStaticPort(b: Binding, mockDomid: number | undefined, port: number): StaticPortHold {
  const key = `${b.backend} ${mockDomid ?? 'self'} ${port}`;
  if (staticPorts.get(key)?.open)
    throw systemError('EBUSY', 'ioctl(IOCTL_EVTCHN_BIND_STATIC)', `static port ${port} is in use in this process`);
  const hold = new StaticPortHold(key, port);
  staticPorts.set(key, hold);
  return hold;
}

/**
 * Within the package only (lib/pvcalls/backend.ts hands a handle's ports to a native pump): the
 * binding and native handle behind EV (ERR_XEN_CLOSED once it is closed). Not exported by index.ts.
 */
export let nativeHandleOf: (ev: EventChannel) => { b: Binding; h: EvtchnHandle };

/**
 * Within the package only (lib/vchan/static.ts): binds HOLD's port through EV, which must act as
 * the same domain; the hold stays the port's entry in the registry (EV's unbind() or close() does
 * not free the port for others: the hold's release() does). Not exported by index.ts.
 */
export let bindHeldStatic: (ev: EventChannel, hold: StaticPortHold) => number;

/** Emitted by EventChannel. */
export interface EventChannelEvents {
  /** A port of this handle fired (a hint: events coalesce; look at what the port guards). */
  event: [port: number];
  /** The handle failed (reading the device); it is closed after. */
  error: [err: Error];
  /** The handle closed. */
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
  /** Keys in staticPorts of the static ports bound through this handle. */
  readonly #static = new Map<number, string>();
  readonly #domKey: string;
  readonly #autoUnmask: boolean;
  #polling = false;
  #refed = true;

  static {
    nativeHandleOf = (ev) => ({ b: ev.#b, h: ev.#handle() });
    bindHeldStatic = (ev, hold) => ev.#bindHeld(hold);
  }

  constructor(options: EventChannelOptions = {}) {
    super();
    const o = checkObject('options', options);
    this.#autoUnmask = checkBoolean('options.autoUnmask', o.autoUnmask, true);
    this.#b = binding(o.backend as Backend | undefined);
    const dom = o.mockDomid === undefined ? undefined : checkDomid('options.mockDomid', o.mockDomid);
    this.#h = asDomain(this.#b, dom, () => this.#b.evtchn.open());
    this.#domKey = `${this.#b.backend} ${dom ?? 'self'}`;
  }

  /**
   * Allocates a port in DOMID's event channel table, unbound and offered to REMOTE_DOMID, that no
   * handle owns (xc_evtchn_alloc_unbound, through Xen's libxenctrl). This is how dom0 sets up a
   * channel for a domain that has no xenstore or toolstack of its own: that domain takes the port
   * with bindStatic(), REMOTE_DOMID connects to it with bindInterdomain(domid, port), in either
   * order. For the reverse layout allocate in dom0's own table (domid 0, remoteDomid the domU):
   * dom0 takes it with bindStatic() and the domU binds interdomain.
   *
   * Only a privileged domain (dom0) may allocate in another domain's table: EPERM otherwise;
   * ESRCH when there is no domain DOMID; ELIBACC when libxenctrl is not installed. The port lives
   * as long as the domain: Xen gives no other domain a way to close it, and Linux never closes a
   * port taken with bindStatic().
   */
  static allocUnbound(domid: number, remoteDomid: number, options: AllocUnboundOptions = {}): number {
    checkDomid('domid', domid);
    checkDomid('remoteDomid', remoteDomid);
    const o = checkObject('options', options);
    const b = binding(o.backend as Backend | undefined);
    const dom = o.mockDomid === undefined ? undefined : checkDomid('options.mockDomid', o.mockDomid);
    return asDomain(b, dom, () => b.ctrl.allocUnbound(domid, remoteDomid));
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

  /**
   * Attaches to a port that Xen already has bound for this domain (Linux >= 6.5): a static
   * (dom0less) channel from the device tree, or one that dom0 allocated and bound on this domain's
   * behalf. Linux checks nothing with Xen: a port Xen never allocated binds too, and never fires.
   * Throws EISCONN when this handle has the port already, EBUSY when another EventChannel of this
   * process has it (Linux would take that and crash at exit), ENOTSUP on older kernels.
   *
   * One end of each channel Xen binds at boot starts with its event pending (Xen sets it as it
   * binds the pair), and an event sent while no handle had the port waits for the next bind: an
   * 'event' may come at once after binding, before the peer is up. Treat events as hints to look
   * at shared state (as the static vchan does: `createServer`/`connect` with `static`), or knock
   * until the peer answers.
   */
  bindStatic(port: number): number {
    checkPort('port', port);
    const h = this.#handle();
    const key = `${this.#domKey} ${port}`;
    const holder = staticPorts.get(key);
    const syscall = 'ioctl(IOCTL_EVTCHN_BIND_STATIC)';
    if (holder === this || this.#static.has(port))
      throw systemError('EISCONN', syscall, `static port ${port} is bound through this handle already`);
    if (holder?.open)
      throw systemError(
        'EBUSY',
        syscall,
        holder instanceof StaticPortHold
          ? `static port ${port} is held by a static vchan of this process`
          : `static port ${port} is bound through another EventChannel of this process (Linux would take a second bind and then crash when the process exits)`,
      );
    const p = this.#bound(this.#b.evtchn.bindStatic(h, port));
    staticPorts.set(key, this);
    this.#static.set(port, key);
    return p;
  }

  #bindHeld(hold: StaticPortHold): number {
    const h = this.#handle();
    if (!hold.open || staticPorts.get(hold.key) !== hold || hold.key !== `${this.#domKey} ${hold.port}`)
      throw coded('a static port hold that is not current, or of another domain', 'ERR_INTERNAL_ASSERTION');
    if (this.#static.has(hold.port))
      throw systemError(
        'EISCONN',
        'ioctl(IOCTL_EVTCHN_BIND_STATIC)',
        `static port ${hold.port} is bound through this handle already`,
      );
    const p = this.#bound(this.#b.evtchn.bindStatic(h, hold.port));
    this.#static.set(p, hold.key);
    return p;
  }

  #releaseStatic(port?: number): void {
    for (const [p, key] of port === undefined ? [...this.#static] : [[port, this.#static.get(port)] as const]) {
      if (key === undefined) continue;
      if (staticPorts.get(key) === this) staticPorts.delete(key);
      this.#static.delete(p);
    }
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
    this.#releaseStatic(port);
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
    this.#releaseStatic();
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

  /** `using ev = new EventChannel()`: closes the handle (its ports unbound). */
  [Symbol.dispose](): void {
    this.close();
  }
}
