/**
 * connect(): a vchan client, waiting through a xenstore watch until a server offers the channel.
 */
import { debuglog } from 'node:util';

import { abortError, checkDomid, checkInt, checkObject, coded, invalidArgType, systemError } from '../errors';
import { asDomain, type Backend, type Binding, binding } from '../native';
import { leaseShared, type SharedLease } from '../lease';
import type { Xenstore, XenstoreWatch } from '../xenstore';
import { checkOnread } from './onread';
import { checkPathOrStatic, type ConnectOptions, type VchanStreamOptions } from './options';
import { connectStatic } from './static';
import { kInternal, kStatic, VchanStream } from './stream';

const debug = debuglog('xen-vchan');

/**
 * connect()'s option for a channel offered to this client alone (connectMulti's): a channel that
 * another client has taken fails at once with EBUSY instead of waiting for a next offer.
 *
 * @internal
 */
export const kOnlyOffer = Symbol('xen-vchan: the offer is ours alone');

/**
 * How long connect() watches an entry it could not attach to before it calls the entry dead (ms):
 * a live server between two offers changes it well within this.
 */
const ENTRY_STILL_MS = 1000;

function connectError(code: 'ECONNREFUSED' | 'EPROTO' | 'EBUSY', message: string, cause: unknown): Error {
  const e = systemError(code, 'connect', message);
  (e as Error & { cause?: unknown }).cause = cause;
  return e;
}

/** A decimal xenstore value as Xen writes it (no sign, no spaces), 1 to 2^32-1; else undefined. */
function parseEntryNumber(v: string): number | undefined {
  if (!/^[0-9]{1,10}$/.test(v)) return undefined;
  const n = Number(v);
  return n > 0 && n <= 0xffffffff ? n : undefined;
}

/**
 * The channel a server publishes at PATH: its control page's grant and its event channel port.
 * Undefined while either is missing or not yet readable by us; EPROTO for an entry that no server
 * could have written (a client must not guess what a garbage entry means).
 *
 * @internal
 */
export async function readEntry(xs: Xenstore, path: string): Promise<{ ref: number; port: number } | undefined> {
  let rr: string | undefined;
  let ec: string | undefined;
  try {
    rr = await xs.tryRead(`${path}/ring-ref`);
    ec = await xs.tryRead(`${path}/event-channel`);
  } catch (e) {
    if ((e as { code?: string }).code === 'EACCES') return undefined;
    throw e;
  }
  if (rr === undefined || ec === undefined) return undefined;
  const ref = parseEntryNumber(rr);
  const port = parseEntryNumber(ec);
  if (ref === undefined || port === undefined)
    throw connectError(
      'EPROTO',
      `the vchan entry at ${path} is malformed (ring-ref ${JSON.stringify(rr)}, event-channel ${JSON.stringify(ec)})`,
      undefined,
    );
  return { ref, port };
}

/**
 * Attaches to the channel ENTRY (read from PATH) at once: the stream, or the system error as it
 * came. For a client that knows the offer is its own (connectMulti's).
 *
 * @internal
 */
export function attachEntry(
  b: Binding,
  mockDomid: number | undefined,
  domid: number,
  path: string,
  entry: { ref: number; port: number },
  options: VchanStreamOptions,
): VchanStream {
  const h = asDomain(b, mockDomid, () => b.vchan.clientInit(domid, path, entry.ref, entry.port));
  debug('connect %s: attached to domain %d (ring-ref %d, port %d)', path, domid, entry.ref, entry.port);
  return new VchanStream(kInternal, b, h, domid, path, options);
}

/**
 * Connects to a vchan server, waiting (with a xenstore watch, not by polling) until the server
 * offers the channel. A client only ever attaches to a channel that is offered and that no other
 * client has taken: while the server is busy with another client, connect() waits for its next
 * offer (bound it with options.timeout).
 *
 * Rejects with ETIMEDOUT after options.timeout ms; with an AbortError when options.signal aborts;
 * with ECONNREFUSED when the published entry names a page this domain cannot map (the entry of a
 * server that is gone, or a page granted to another domain); with EPROTO when the entry or the
 * channel behind it is malformed (no server could have written it). Either of the last two carries
 * the underlying system error as `cause`.
 */
export async function connect(options: ConnectOptions): Promise<VchanStream> {
  const o = checkObject('options', options);
  const domid = checkDomid('options.domid', o.domid);
  const { path, st } = checkPathOrStatic(o);
  const timeout = o.timeout === undefined ? undefined : checkInt('options.timeout', o.timeout, 0, 2 ** 31 - 1);
  const signal = o.signal as AbortSignal | undefined;
  if (signal !== undefined && !(signal instanceof AbortSignal))
    throw invalidArgType('options.signal', 'an instance of AbortSignal', signal);
  const mockDomid = o.mockDomid === undefined ? undefined : checkDomid('options.mockDomid', o.mockDomid);
  checkOnread(o.onread);
  const b = binding(o.backend as Backend | undefined);
  if (signal?.aborted) throw abortError(signal);
  if (st)
    return connectStatic(
      b,
      { domid, static: st, timeout, signal, mockDomid },
      (h) => new VchanStream(kInternal, b, h, domid, '', { ...options, [kStatic]: true }),
    );

  const lease = leaseShared(b, mockDomid);
  const xs = lease.xs;
  let watch: XenstoreWatch | undefined;
  let broken = false;
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  try {
    watch = await xs.watch(`${path}/event-channel`);
    const stop = new Promise<never>((_, reject) => {
      if (timeout !== undefined)
        timer = setTimeout(
          () => reject(systemError('ETIMEDOUT', 'connect', `no vchan server at ${path} after ${timeout} ms`)),
          timeout,
        );
      if (signal) {
        onAbort = () => reject(abortError(signal));
        signal.addEventListener('abort', onAbort, { once: true });
        // Aborted while the watch was being set up: the event has been and gone.
        if (signal.aborted) onAbort();
      }
    });
    stop.catch(() => undefined);
    const it = watch[Symbol.asyncIterator]();
    let lookNow = false;
    for (;;) {
      // Each event (the first fires at once) may mean a channel is offered: try. The iterator queues
      // events, so none is lost while an attempt runs.
      if (!lookNow) {
        const next = await Promise.race([it.next(), stop]);
        if (next.done) throw coded('The xenstore watch ended', 'ERR_XEN_CLOSED');
      }
      lookNow = false;
      const entry = await Promise.race([readEntry(xs, path), stop]);
      if (!entry) continue; // not (fully) published yet
      try {
        const h = asDomain(b, mockDomid, () => b.vchan.clientInit(domid, path, entry.ref, entry.port));
        debug('connect %s: attached to domain %d (ring-ref %d, port %d)', path, domid, entry.ref, entry.port);
        return new VchanStream(kInternal, b, h, domid, path, options);
      } catch (e) {
        const { code, syscall } = e as { code?: string; syscall?: string };
        // Taken by another client, or its client has gone and the server has not offered it again
        // yet: the server's next offer rewrites the entry, and fires the watch.
        if (code === 'EBUSY' || code === 'EAGAIN') {
          // (EAGAIN is also "the entry changed under us": only EBUSY says another client holds it.)
          if (code === 'EBUSY' && (options as { [kOnlyOffer]?: boolean })[kOnlyOffer])
            throw connectError('EBUSY', `the channel offered to this client at ${path} was taken by another`, e);
          debug('connect %s: %s, waiting for the next offer', path, code);
          continue;
        }
        if (syscall === 'libxenvchan_client_init' && (code === 'ENOENT' || code === 'EACCES')) continue; // withdrawn meanwhile
        // A live server between two offers removes its entry, then withdraws the pages, then offers
        // the next channel, often under the same grant ref and port: an attach that failed on an
        // entry that still reads the same may have met that churn, which fires the watch. An
        // entry that stays still is the server's own: a dead server's, or a broken one.
        const again = await Promise.race([readEntry(xs, path).catch(() => undefined), stop]);
        if (!again || again.ref !== entry.ref || again.port !== entry.port) continue;
        const churn = await Promise.race([
          it.next().then(() => true),
          stop,
          new Promise<false>((resolve) => setTimeout(() => resolve(false), ENTRY_STILL_MS).unref()),
        ]);
        if (churn) {
          lookNow = true; // the event is taken: look at the entry again without waiting for another
          continue;
        }
        if (syscall === 'xengnttab_map_grant_ref')
          throw connectError(
            'ECONNREFUSED',
            `no vchan server offers ${path}: its ring-ref ${entry.ref} cannot be mapped ` +
              '(the entry of a server that is gone, or a page not granted to this domain)',
            e,
          );
        if (code === 'EPROTO' || syscall === 'libxenvchan_client_init')
          throw connectError('EPROTO', `the vchan at ${path} cannot be used: ${(e as Error).message}`, e);
        throw e;
      }
    }
  } catch (e) {
    broken = xenstoreFailed(e);
    throw e;
  } finally {
    if (timer) clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
    releaseWithWatch(lease, watch, broken);
  }
}

/**
 * Whether E came from the xenstore connection itself (a request that failed, or the connection
 * closed): a shared connection that produced it is not leased again.
 *
 * @internal
 */
export function xenstoreFailed(e: unknown): boolean {
  const { code, syscall } = (e ?? {}) as { code?: unknown; syscall?: unknown };
  return code === 'ERR_XEN_CLOSED' || (typeof syscall === 'string' && syscall.startsWith('xs_'));
}

/**
 * Removes WATCH (if set) from the leased connection, which outlives this use, then gives the lease
 * back.
 *
 * @internal
 */
export function releaseWithWatch(lease: SharedLease, watch: XenstoreWatch | undefined, broken: boolean): void {
  if (watch === undefined) return lease.release(broken);
  watch.close().then(
    () => lease.release(broken),
    () => lease.release(true),
  );
}
