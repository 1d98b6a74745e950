/**
 * The client side of a static vchan: a channel with no xenstore (a dom0less system may have none),
 * found at a grant reference and a static event channel port that both ends agreed on in advance.
 * The server side is VchanServer's, with `static` in its options (lib/vchan/server.ts); once attached,
 * the ring layout and the protocol are libxenvchan's.
 */
import { once } from 'node:events';

import { abortError, systemError } from '../errors';
import { bindHeldStatic, EventChannel, holdStaticPort } from '../evtchn';
import { asDomain, type Binding, type VchanHandle } from '../native';

/** connect()'s checked options for a static channel. @internal */
export interface StaticConnect {
  domid: number;
  static: { port: number; ref: number };
  timeout?: number;
  signal?: AbortSignal;
  mockDomid?: number;
}

/**
 * Attaches to DOMID's static channel, waiting for the server's event on the port while there is
 * no channel to attach to (no page granted at the reference yet, or one another client holds).
 * The port is bound on a handle of our own only while waiting, and on the addon's shared handle
 * once attached: an event that comes between two looks stays pending in Xen until one of them
 * binds it, so no server's offer is missed. ATTACH makes the stream of the channel handle.
 *
 * @internal
 */
export async function connectStatic<S extends { once(event: 'close', listener: () => void): unknown }>(
  b: Binding,
  o: StaticConnect,
  attach: (h: VchanHandle) => S,
): Promise<S> {
  const { port, ref } = o.static;
  const hold = holdStaticPort(b, o.mockDomid, port);
  let ev: EventChannel | undefined;
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const stop = new Promise<never>((_, reject) => {
    if (o.timeout !== undefined)
      timer = setTimeout(
        () =>
          reject(
            systemError(
              'ETIMEDOUT',
              'connect',
              `no vchan server of domain ${o.domid} on static port ${port} (ref ${ref}) after ${o.timeout} ms`,
            ),
          ),
        o.timeout,
      );
    if (o.signal) {
      const signal = o.signal;
      onAbort = () => reject(abortError(signal));
      signal.addEventListener('abort', onAbort, { once: true });
    }
  });
  stop.catch(() => undefined);
  try {
    for (;;) {
      let h: VchanHandle;
      try {
        h = asDomain(b, o.mockDomid, () => b.vchan.clientInitStatic(o.domid, ref, port));
      } catch (e) {
        const { code, syscall } = e as { code?: string; syscall?: string };
        // No page at the reference yet (no server, or one between two clients), or a channel
        // another client holds: the server's next offer notifies the port.
        const notYet = syscall === 'xengnttab_map_grant_ref' || (syscall === 'vchan_claim' && code === 'EBUSY');
        if (!notYet) {
          if (syscall === 'vchan_claim') {
            const err = systemError(
              'EPROTO',
              'connect',
              `the page at ref ${ref} of domain ${o.domid} is not a vchan: ${(e as Error).message}`,
            );
            (err as Error & { cause?: unknown }).cause = e;
            throw err;
          }
          throw e;
        }
        ev ??= new EventChannel({ backend: b.backend, mockDomid: o.mockDomid });
        bindHeldStatic(ev, hold);
        try {
          await Promise.race([once(ev, 'event'), stop]);
        } finally {
          ev.unbind(port);
        }
        continue;
      }
      const s = attach(h);
      s.once('close', () => hold.release());
      return s;
    }
  } catch (e) {
    hold.release();
    throw e;
  } finally {
    if (timer) clearTimeout(timer);
    if (onAbort) o.signal?.removeEventListener('abort', onAbort);
    ev?.close();
  }
}
