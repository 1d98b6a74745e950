/**
 * Knowing when another domain is destroyed.
 *
 * A vchan peer whose process exits (even by SIGKILL) says so: its kernel's unmap notification
 * clears the peer's "live" byte and sends an event. A destroyed domain runs no more code, so
 * nothing is sent: Xen closes its event channels without notifying anyone and the shared pages
 * stay as they were. The only signal is xenstored's `@releaseDomain` watch, after which
 * XS_IS_DOMAIN_INTRODUCED says which domain went. One watch per process (per backend and acting
 * domain) serves every stream; it exists only while some stream needs it, and never keeps the
 * process alive.
 */
import { leaseShared, type SharedLease } from './lease';
import type { Binding } from './native';
import type { Xenstore, XenstoreWatch } from './xenstore';

type Listener = () => void;

interface Monitor {
  /** On the process's shared connection (lib/lease.ts), which it never keeps alive. */
  lease: SharedLease;
  xs: Xenstore;
  /** The @releaseDomain watch once set (undefined if it could not be). */
  watch: Promise<XenstoreWatch | undefined>;
  subs: Map<number, Set<Listener>>;
  checking: boolean;
  again: boolean;
}

const monitors = new Map<string, Monitor>();

async function check(key: string, m: Monitor): Promise<void> {
  if (m.checking) {
    m.again = true;
    return;
  }
  m.checking = true;
  try {
    do {
      m.again = false;
      for (const [domid, set] of [...m.subs]) {
        let alive: boolean;
        try {
          alive = await m.xs.isDomainIntroduced(domid);
        } catch {
          continue; // closed, or not allowed to ask: the stream keeps the ring's own signals
        }
        if (alive || m.subs.get(domid) !== set) continue;
        m.subs.delete(domid);
        for (const fn of set) {
          try {
            fn();
          } catch (e) {
            process.nextTick(() => {
              throw e;
            });
          }
        }
      }
    } while (m.again && monitors.get(key) === m);
  } finally {
    m.checking = false;
  }
  if (m.subs.size === 0 && monitors.get(key) === m) stop(key, m);
}

function stop(key: string, m: Monitor): void {
  monitors.delete(key);
  // The connection lives on: the watch is removed (once set), then the lease given back.
  void m.watch
    .then((w) => w?.close())
    .then(
      () => m.lease.release(),
      () => m.lease.release(true),
    );
}

/**
 * Calls ON_GONE once if domain DOMID is destroyed. Returns the function that cancels it.
 * MOCK_DOMID is the domain the caller acts as on the mock (undefined: its own).
 */
export function onDomainGone(b: Binding, mockDomid: number | undefined, domid: number, onGone: Listener): () => void {
  const key = `${b.backend}/${mockDomid ?? ''}`;
  let m = monitors.get(key);
  if (!m) {
    let lease: SharedLease;
    try {
      lease = leaseShared(b, mockDomid, { ref: false });
    } catch {
      return () => undefined; // no xenstore: nothing to learn from
    }
    // The watch fires once when set, so a domain that died before this is caught too.
    const watch = lease.xs.watch('@releaseDomain').then(
      (w) => {
        w.on('change', () => void check(key, mon));
        return w;
      },
      () => undefined, // unprivileged domains may not watch @releaseDomain: the ring's signals remain
    );
    const mon: Monitor = { lease, xs: lease.xs, watch, subs: new Map(), checking: false, again: false };
    m = mon;
    monitors.set(key, mon);
  }
  const mon = m;
  let set = mon.subs.get(domid);
  if (!set) mon.subs.set(domid, (set = new Set()));
  const fn = () => onGone();
  set.add(fn);
  return () => {
    const s = mon.subs.get(domid);
    if (!s || !s.delete(fn)) return;
    if (s.size === 0) mon.subs.delete(domid);
    if (mon.subs.size === 0 && monitors.get(key) === mon) stop(key, mon);
  };
}
