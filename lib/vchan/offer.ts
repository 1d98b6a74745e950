/**
 * A server's side of one channel: offering it (and handing the stream over once a client
 * attaches), and claiming a path or a static port for one server at a time.
 */
import { createHash } from 'node:crypto';
import { createServer as createNetServer } from 'node:net';
import { debuglog } from 'node:util';

import { systemError } from '../errors';
import { holdStaticPort } from '../evtchn';
import { LiveState } from '../constants';
import { asDomain, type Binding, unpackArm, type VchanHandle } from '../native';
import { Xenstore } from '../xenstore';
import type { OfferOptions } from './options';
import { kInternal, kStatic, VchanStream } from './stream';

const debug = debuglog('xen-vchan');

/**
 * One channel offered to one client: calls ONSTREAM with the stream once a client attaches, or
 * ONBROKEN when a client breaks the protocol as it connects (the channel is then gone). cancel()
 * withdraws a channel no client has taken yet. Shared by VchanServer and VchanMultiServer.
 *
 * @internal
 */
export interface Offer {
  /**
   * Withdraws the channel: true if it was withdrawn. With LOOK, not if a client has attached to it
   * meanwhile (its notification not read yet): the stream then goes to ONSTREAM as usual.
   */
  cancel(look?: boolean): boolean;
  ref(on: boolean): void;
}

/** @internal */
export function offerChannel(
  b: Binding,
  o: OfferOptions,
  onStream: (s: VchanStream) => void,
  onBroken: (e: Error) => void,
): Offer {
  const st = o.static;
  let h: VchanHandle | null = asDomain(b, o.mockDomid, () =>
    st
      ? b.vchan.serverInitStatic(o.domid, st.ref, st.port, o.readMin, o.writeMin)
      : b.vchan.serverInit(o.domid, o.path, o.readMin, o.writeMin),
  );
  debug('server %s: offered to domain %d', o.path, o.domid);
  const wake = (): void => {
    if (h === null) return;
    const handle = h;
    let live: LiveState;
    try {
      ({ live } = unpackArm(b.vchan.arm(handle)));
    } catch (e) {
      // The client broke the ring as it connected: this channel is lost.
      h = null;
      b.vchan.close(handle);
      onBroken(e as Error);
      return;
    }
    if (live === LiveState.Waiting) return; // still waiting for the client
    // Connected (or connected and gone already: the stream will deliver its data and end).
    // The stream takes the poller over as it is (a new callback, same uv_poll): no stop and
    // restart of the poll on this fd between the two owners.
    h = null;
    debug('server %s: domain %d connected', o.path, o.domid);
    onStream(new VchanStream(kInternal, b, handle, o.domid, o.path, st ? { ...o, [kStatic]: true } : o));
  };
  if (b.vchan.poll(h, wake)) process.nextTick(wake);
  return {
    cancel(look = false): boolean {
      if (look) wake();
      if (h === null) return false;
      b.vchan.close(h);
      h = null;
      return true;
    },
    ref(on: boolean): void {
      if (h !== null) b.vchan.ref(h, on);
    },
  };
}

/**
 * Makes PATH (a vchan path of this domain) ours for as long as this process lives, as binding a
 * Unix socket path would: EADDRINUSE while another server (in any process of this domain) holds it.
 *
 * The claim is an abstract Unix socket named after the path: the kernel frees it when its holder
 * exits, however it exits, so a server that died leaves nothing that blocks the next one (its stale
 * xenstore entry is simply rewritten). Servers of one domain see each other's claims when they share
 * a network namespace (on the mock: when they share the mock's directory).
 *
 * @internal
 */
export async function claimPath(b: Binding, mockDomid: number | undefined, path: string): Promise<() => void> {
  let abs = path;
  if (!path.startsWith('/')) {
    const xs = new Xenstore({ backend: b.backend, mockDomid });
    try {
      abs = `/local/domain/${await xs.read('domid')}/${path}`;
    } catch {
      // no readable domid: claim the path as written
    } finally {
      xs.close();
    }
  }
  const release = await lockName(b, abs, `another vchan server of this domain serves ${abs}`, path);
  debug('server %s: claimed (%s)', path, abs);
  return release;
}

/**
 * Makes static PORT of this domain (MOCKDOMID on the mock) a server's, as claimPath does a path:
 * EADDRINUSE while another server of this domain has it, EBUSY while an EventChannel or a client
 * of this process has it bound. No xenstore is asked.
 *
 * @internal
 */
export async function claimStatic(b: Binding, mockDomid: number | undefined, port: number): Promise<() => void> {
  const hold = holdStaticPort(b, mockDomid, port);
  try {
    const release = await lockName(
      b,
      `static port ${mockDomid ?? 'self'} ${port}`,
      `another vchan server of this domain serves static port ${port}`,
    );
    return () => {
      release();
      hold.release();
    };
  } catch (e) {
    hold.release();
    throw e;
  }
}

/** Holds the abstract Unix socket named after KEY while this process lives (EADDRINUSE: MESSAGE). */
async function lockName(b: Binding, key: string, message: string, path?: string): Promise<() => void> {
  const scope = b.mock ? `mock ${b.mock.dir()}` : 'xen';
  const name = `\0xen-vchan/${createHash('sha256').update(`${scope}\n${key}`).digest('hex').slice(0, 40)}`;
  const lock = createNetServer((c) => c.destroy());
  await new Promise<void>((resolve, reject) => {
    lock.once('error', (e: NodeJS.ErrnoException) => {
      if (e.code !== 'EADDRINUSE') return reject(e);
      const err = systemError('EADDRINUSE', 'listen', message);
      if (path !== undefined) (err as Error & { path?: string }).path = path;
      reject(err);
    });
    lock.listen(name, () => resolve());
  });
  lock.unref();
  return () => lock.close();
}
