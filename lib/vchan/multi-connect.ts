/**
 * connectMulti(): a client of a VchanMultiServer, asking for a channel of its own under the
 * server's path (the layout is in requests.ts).
 */
import { randomBytes } from 'node:crypto';
import { debuglog } from 'node:util';

import { abortError, checkDomid, checkInt, checkObject, coded, invalidArgType, systemError } from '../errors';
import { binding, type Backend, type Binding } from '../native';
import { leaseShared } from '../lease';
import type { Xenstore } from '../xenstore';
import { attachEntry, readEntry, xenstoreFailed } from './connect';
import type { ConnectOptions } from './options';
import type { VchanStream } from './stream';

const debug = debuglog('xen-vchan');

/** How often connectMulti asks again after another client took the channel offered to it. */
const MULTI_TAKEN_RETRIES = 3;

/** What a request came to: our channel (attached), taken by another client, or refused. */
type Answer = VchanStream | 'taken' | 'refused';

/**
 * Connects to a {@link VchanMultiServer} of domain `domid` at `path` (the full xenstore path):
 * asks for a channel of its own and connects to it. Waits while there is no server yet and while
 * the server has no room; a request the server refuses (at its backlog) or whose channel it
 * withdraws is made again under a fresh id after a short back-off. Bound the wait with
 * options.timeout (ETIMEDOUT) or options.signal (AbortError). EBUSY when another process of this
 * domain takes the channel offered to us three times running; ECONNREFUSED or EPROTO for a channel
 * that cannot be used, as {@link connect}.
 */
export async function connectMulti(options: ConnectOptions): Promise<VchanStream> {
  const o = checkObject('options', options);
  const domid = checkDomid('options.domid', o.domid);
  if (typeof o.path !== 'string') throw invalidArgType('options.path', 'of type string', o.path);
  const timeout = o.timeout === undefined ? undefined : checkInt('options.timeout', o.timeout, 0, 2 ** 31 - 1);
  const signal = o.signal as AbortSignal | undefined;
  if (signal !== undefined && !(signal instanceof AbortSignal))
    throw invalidArgType('options.signal', 'an instance of AbortSignal', signal);
  const mockDomid = o.mockDomid === undefined ? undefined : checkDomid('options.mockDomid', o.mockDomid);
  const b = binding(o.backend as Backend | undefined);
  if (signal?.aborted) throw abortError(signal);
  const base = o.path;
  const queue = `${base}/requests`;
  const lease = leaseShared(b, mockDomid);
  const xs = lease.xs;
  let broken = false;
  let refused = 0;
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const stop = new Promise<never>((_, reject) => {
    if (timeout !== undefined)
      timer = setTimeout(() => {
        const why = refused > 0 ? `; it refused or withdrew ${refused} requests (busy)` : '';
        reject(
          systemError('ETIMEDOUT', 'connect', `no channel from a vchan multi-server at ${base} in ${timeout} ms${why}`),
        );
      }, timeout);
    if (signal) {
      onAbort = () => reject(abortError(signal));
      signal.addEventListener('abort', onAbort, { once: true });
    }
  });
  stop.catch(() => undefined);
  const race = <T>(p: Promise<T>): Promise<T> => Promise.race([p, stop]);
  let node: string | undefined; // our request's node, while it may still be there
  try {
    const self = Number(await race(xs.read('domid')));
    // Our node is ours (its maker owns it); the server's domain may read it and remove it.
    const perms = [
      { domid: self, read: false, write: false },
      { domid, read: true, write: true },
    ];
    for (let taken = 0; ;) {
      const id = await placeRequest(xs, queue, perms, race);
      node = `${queue}/${id}`;
      debug('connectMulti %s: asked as %s', base, id);
      const answer = await awaitAnswer(b, xs, mockDomid, domid, base, id, options, race);
      node = undefined;
      if (typeof answer !== 'string') return answer;
      if (answer === 'taken') {
        // Processes of one domain share its xenstore rights, so another one may take the channel
        // offered for our request: we hear so at once and ask again under a fresh id.
        debug('connectMulti %s: the channel for %s was taken by another client', base, id);
        if (++taken >= MULTI_TAKEN_RETRIES)
          throw systemError('EBUSY', 'connect', `the channels offered to this client at ${base} were taken by another`);
        continue;
      }
      refused++;
      const delay = Math.min(1000, 25 * 2 ** Math.min(refused - 1, 6)) * (0.5 + Math.random() / 2);
      debug('connectMulti %s: request %s refused; asking again in %d ms', base, id, Math.round(delay));
      await race(new Promise((resolve) => setTimeout(resolve, delay)));
    }
  } catch (e) {
    debug('connectMulti %s: %s', base, (e as Error).message);
    broken = xenstoreFailed(e);
    if (node !== undefined) await takeBack(xs, node);
    throw e;
  } finally {
    if (timer) clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
    lease.release(broken);
  }
}

/**
 * Takes our request back: a request the server has answered is gone already; a channel it offered
 * times out there. Bounded: never a hang here.
 */
async function takeBack(xs: Xenstore, node: string): Promise<void> {
  let t: NodeJS.Timeout | undefined;
  await Promise.race([xs.rm(node).catch(() => undefined), new Promise((resolve) => (t = setTimeout(resolve, 5000)))]);
  clearTimeout(t);
}

/**
 * Makes a request's node under QUEUE, under a fresh random id (returned), waiting (on a watch) while
 * there is no queue or it is not ours to write, and backing off while this domain's xenstore quota
 * is spent.
 */
async function placeRequest(
  xs: Xenstore,
  queue: string,
  perms: { domid: number; read: boolean; write: boolean }[],
  race: <T>(p: Promise<T>) => Promise<T>,
): Promise<string> {
  for (let full = 0; ;) {
    // A fresh id for each attempt: one made and removed again may have been seen by the server.
    const id = randomBytes(8).toString('hex');
    const node = `${queue}/${id}`;
    const q = await race(
      xs.tryRead(queue).catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'EACCES') return undefined; // not (yet) ours to read
        throw e;
      }),
    );
    if (q !== undefined) {
      let made = false;
      try {
        await race(xs.write(node, ''));
        made = true;
        await race(xs.setPermissions(node, perms));
        return id;
      } catch (e) {
        const code = (e as { code?: string }).code;
        // Made, and the server (dom0, which needs no permission) has answered it already.
        if (made && code === 'ENOENT') return id;
        if (code === 'ENOSPC' || code === 'EDQUOT') {
          // Our domain's nodes are all spent (by a flood of requests, say): the server's refusals
          // free them. Ask again shortly.
          full++;
          await race(new Promise((resolve) => setTimeout(resolve, Math.min(1000, 25 * 2 ** Math.min(full, 6)))));
          continue;
        }
        if (code !== 'EACCES' && code !== 'ENOENT') {
          if (made) await takeBack(xs, node); // given up (timeout, abort) between the two steps
          throw e;
        }
        if (made) await xs.rm(node).catch(() => undefined); // not for the server to see: start again
      }
    }
    // No queue (no server yet), or not ours to write: wait for it to change.
    const w = await xs.watch(queue); // not raced: a watch made after we gave up would be left behind
    try {
      const it = w[Symbol.asyncIterator]();
      await race(it.next()); // the event every new watch fires at once
      const q2 = await race(xs.tryRead(queue).catch(() => undefined));
      if (q2 === undefined) {
        const next = await race(it.next());
        if (next.done) throw coded('The xenstore watch ended', 'ERR_XEN_CLOSED');
      }
    } finally {
      await w.close().catch(() => undefined);
    }
  }
}

/**
 * Waits for the server's answer to request ID: its node goes, and then the channel offered at
 * BASE/ID is ours to attach to, or there is none (refused, or withdrawn before we got to it).
 */
async function awaitAnswer(
  b: Binding,
  xs: Xenstore,
  mockDomid: number | undefined,
  domid: number,
  base: string,
  id: string,
  options: ConnectOptions,
  race: <T>(p: Promise<T>) => Promise<T>,
): Promise<Answer> {
  const node = `${base}/requests/${id}`;
  const path = `${base}/${id}`;
  const w = await xs.watch(node); // not raced (as above)
  try {
    const it = w[Symbol.asyncIterator]();
    for (;;) {
      const next = await race(it.next());
      if (next.done) throw coded('The xenstore watch ended', 'ERR_XEN_CLOSED');
      if ((await race(xs.tryRead(node).catch(() => ''))) !== undefined) continue; // still waiting
      const entry = await race(readEntry(xs, path));
      if (!entry) return 'refused';
      try {
        return attachEntry(b, mockDomid, domid, path, entry, options);
      } catch (e) {
        const { code, syscall } = e as { code?: string; syscall?: string };
        if (code === 'EBUSY') return 'taken';
        // Withdrawn as we attached (the server removes the entry before the pages): ask again.
        const again = await race(readEntry(xs, path).catch(() => undefined));
        if (!again || again.ref !== entry.ref || again.port !== entry.port) return 'refused';
        // Still there, and unusable: the server's channel is broken.
        const broken = systemError(
          syscall === 'xengnttab_map_grant_ref' ? 'ECONNREFUSED' : 'EPROTO',
          'connect',
          `the channel offered at ${path} cannot be used: ${(e as Error).message}`,
        );
        (broken as Error & { cause?: unknown }).cause = e;
        throw broken;
      }
    }
  } finally {
    await w.close().catch(() => undefined);
  }
}
