/**
 * What a process's vchan connects share: one xenstore connection and the environment's channel
 * resources (event-channel handle, grant devices: src/poller.h's PortHub), per backend and (mock)
 * domain, kept a moment after their last use. A process that connects, closes and connects again
 * (a CLI call, a pcid client per request, a reconnect loop) then opens none of them again: on the
 * mock each is a connection to the broker, and they were most of a connect's system calls.
 */
import { asDomain, type Binding, type HubHoldHandle } from './native';
import { Xenstore } from './xenstore';

/** A use of the shared resources: release it when done. */
export interface SharedLease {
  /** The shared connection: set watches on it and remove them, never close it. */
  readonly xs: Xenstore;
  /** Gives the lease back. BROKEN: the connection failed this use; no later lease gets it. Idempotent. */
  release(broken?: boolean): void;
}

interface Shared {
  key: string;
  b: Binding;
  xs: Xenstore;
  hold: HubHoldHandle | undefined;
  users: number;
  /** Users that keep the process alive while they wait (connects; not the domain monitor). */
  refUsers: number;
  timer: NodeJS.Timeout | undefined;
  /** Withdrawn (broken): closed when its last user goes, never leased again. */
  gone: boolean;
}

const shared = new Map<string, Shared>();

/** How long the shared resources outlive their last user (ms); XEN_VCHAN_LINGER_MS overrides. */
const LINGER_MS = 250;

function lingerMs(): number {
  const v = process.env.XEN_VCHAN_LINGER_MS;
  const n = v === undefined || v === '' ? LINGER_MS : Number(v);
  return Number.isInteger(n) && n >= 0 ? n : LINGER_MS;
}

/**
 * A lease on the shared resources of backend B acting as MOCKDOMID (undefined: the process's own
 * domain), opened at first use. With `ref` (the default) the process stays alive while the lease is
 * held and the connection has watches; the resources never keep it alive once nobody holds them,
 * and close XEN_VCHAN_LINGER_MS (default 250) after the last lease is released.
 *
 * @internal
 */
export function leaseShared(b: Binding, mockDomid: number | undefined, options: { ref?: boolean } = {}): SharedLease {
  const key = `${b.backend}:${mockDomid ?? ''}`;
  let s = shared.get(key);
  if (s === undefined) {
    const xs = new Xenstore({ backend: b.backend, mockDomid }).unref();
    let hold: HubHoldHandle | undefined;
    try {
      hold = asDomain(b, mockDomid, () => b.vchan.hold());
    } catch {
      // No event-channel device: the connect that follows says so; xenstore alone still helps.
    }
    s = { key, b, xs, hold, users: 0, refUsers: 0, timer: undefined, gone: false };
    shared.set(key, s);
  }
  const entry = s;
  const refed = options.ref !== false;
  if (entry.timer !== undefined) clearTimeout(entry.timer);
  entry.timer = undefined;
  entry.users++;
  if (refed && entry.refUsers++ === 0) entry.xs.ref();
  let released = false;
  return {
    xs: entry.xs,
    release(broken = false) {
      if (released) return;
      released = true;
      if (broken && !entry.gone) {
        entry.gone = true;
        if (shared.get(entry.key) === entry) shared.delete(entry.key);
      }
      if (refed && --entry.refUsers === 0) entry.xs.unref();
      if (--entry.users > 0) return;
      const ms = entry.gone ? 0 : lingerMs();
      if (ms === 0) return closeShared(entry);
      entry.timer = setTimeout(() => closeShared(entry), ms);
      entry.timer.unref();
    },
  };
}

function closeShared(s: Shared): void {
  if (s.users > 0) return;
  s.timer = undefined;
  if (shared.get(s.key) === s) shared.delete(s.key);
  s.xs.close();
  if (s.hold !== undefined) s.b.vchan.unhold(s.hold);
  s.hold = undefined;
}
