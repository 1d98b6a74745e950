/**
 * Many clients at once on one well-known vchan path: the protocol, and a multi-server's view of
 * its request queue (which requests wait for room, which to refuse, which to serve next).
 *
 * A libxenvchan channel has exactly two ends, so a server that wants many clients of one domain
 * at once gives each its own channel. The client asks for one under the well-known path, the
 * server offers it, and the client connects to it as to any vchan. Xenstore layout, under the
 * server's path P (S is the server's domain, C the client domain):
 *
 * ```text
 * P                    ""   S's; C may read
 * P/requests           ""   S's; C may read and write (so it may make nodes under it)
 * P/requests/<id>      ""   one client's request: made by C, which lets S read and remove it
 * P/<id>/ring-ref           the channel offered to the client that asked with <id>, as any vchan
 * P/<id>/event-channel      (S's; C may read)
 * ```
 *
 * A client picks a random <id> (16 lower-case hex digits), makes the node P/requests/<id> and
 * watches it. The server answers each request exactly once: it offers a channel at P/<id> and then
 * removes the request node, or it refuses the request by removing the node alone. So the client,
 * once its node has gone, finds either its channel or nothing (refused: it asks again under a fresh
 * id). Each request is its own node: no other process's write can lose it.
 *
 * The server offers channels while it has room (`maxConnections`), in the order the requests came;
 * the others wait. When more than `backlog` wait, it refuses the oldest (their clients ask again, as
 * the newest). While overloaded (a request has waited over a second, or the backlog overflowed in the
 * last second) the server serves the newest first: the client behind it is surely still there. A channel nobody takes within
 * `acceptTimeout` is withdrawn, within half a second while others wait for room (a client that asked
 * and went, or a flood of requests nobody means to take).
 *
 * Nothing the client domain writes stops the server: a removed queue is made again, nodes that are
 * not well-formed ids are removed and reported as 'clientError'. Xenstore's principal is the domain,
 * not the process: any process of the client domain may remove another's request (that client hears
 * it as a refusal and asks again) or take the channel offered for it (connectMulti hears EBUSY at
 * once and asks again under a fresh id).
 */
import type { Xenstore, XenstoreTransaction } from '../xenstore';

/** The request ids a client writes: 16 lower-case hex digits. */
const ID = /^[0-9a-f]{16}$/;
/** A request that has waited this long means the server is overloaded: serve the newest first. */
const OVERLOAD_MS = 1000;

/** @internal */
export class RequestQueue {
  /** Requests waiting for room, in the order they came: id -> when first seen. */
  readonly waiting = new Map<string, number>();
  /** Requests answered (offered or refused) whose node could not be removed: id -> refused. */
  readonly #answered = new Map<string, boolean>();
  /** Requests refused for want of room to wait (beyond the backlog), ever. */
  refused = 0;
  /** When the backlog last overflowed. */
  #overflowAt = -Infinity;
  readonly #backlog: number;

  /** BACKLOG: the most requests that wait; beyond it the oldest are refused. */
  constructor(backlog: number) {
    this.#backlog = backlog;
  }

  /**
   * Takes in the queue's node names as read at NOW: forgets the requests taken back, queues the new
   * ones, and returns the requests to refuse: the malformed, those for an id IN_USE says is offered
   * or connected (both reported to BAD), answered refusals whose node is still there, and the oldest
   * beyond the backlog (their clients, if still there, ask again as the newest).
   */
  update(names: string[], now: number, inUse: (id: string) => boolean, bad: (name: string) => void): string[] {
    const present = new Set(names);
    for (const id of this.waiting.keys()) if (!present.has(id)) this.waiting.delete(id); // taken back
    for (const id of this.#answered.keys()) if (!present.has(id)) this.#answered.delete(id);
    const refuse: string[] = [];
    for (const name of names) {
      if (this.waiting.has(name)) continue;
      const refused = this.#answered.get(name);
      if (refused !== undefined) {
        if (refused) refuse.push(name); // its removal failed: try again
        continue;
      }
      if (!ID.test(name) || inUse(name)) {
        bad(name);
        refuse.push(name);
        continue;
      }
      this.waiting.set(name, now);
    }
    for (const id of this.waiting.keys()) {
      if (this.waiting.size <= this.#backlog) break;
      this.waiting.delete(id);
      refuse.push(id);
      this.#overflowAt = now;
      this.refused++;
    }
    return refuse;
  }

  /**
   * The request to serve next (still waiting): the oldest, or the newest while the server is
   * overloaded (the oldest has waited over OVERLOAD_MS, or the backlog overflowed within it).
   */
  next(now: number): string {
    const it = this.waiting.entries();
    const [oldest, since] = it.next().value as [string, number];
    if (now - since <= OVERLOAD_MS && now - this.#overflowAt > OVERLOAD_MS) return oldest;
    let newest = oldest;
    for (const [id] of it) newest = id;
    return newest;
  }

  /** ID was answered: served (REFUSED false) or refused; REMOVED whether its node went. */
  answered(id: string, refused: boolean, removed: boolean): void {
    if (removed) this.#answered.delete(id);
    else this.#answered.set(id, refused);
  }

  /** Forgets every request (the server stopped: the queue goes with its requests). */
  clear(): void {
    this.waiting.clear();
    this.#answered.clear();
  }
}

/** Makes the request queue under PATH: SELF's, where CLIENT's domain may read and write. */
export async function makeQueue(
  tx: Pick<XenstoreTransaction, 'write' | 'setPermissions'>,
  path: string,
  self: number,
  client: number,
): Promise<void> {
  await tx.write(`${path}/requests`, '');
  await tx.setPermissions(`${path}/requests`, [
    { domid: self, read: false, write: false },
    { domid: client, read: true, write: true },
  ]);
}

/**
 * Publishes PATH (domain SELF's, readable by CLIENT's) with an empty request queue in it. Whatever
 * a server that died left there (its offers, its clients' requests) goes: the caller holds the
 * path now. Its clients see their requests go, and ask again.
 *
 * PATH itself is made first, on its own, and the transaction then works below it: xenstored fails
 * a transaction when a node it touched has changed since, and PATH's parent (a domain's
 * data/vchan, say) changes whenever any other channel there comes or goes. With the parent in the
 * transaction, a busy directory could fail it on every try (seen on the rig: EAGAIN after 21).
 */
export async function publishQueue(
  xs: Pick<Xenstore, 'transaction' | 'mkdir'>,
  path: string,
  self: number,
  client: number,
): Promise<void> {
  await xs.mkdir(path);
  await xs.transaction(async (tx) => {
    const stale = await tx.directory(path).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e; // removed since the mkdir: made again below
      return [];
    });
    for (const name of stale) await tx.rm(`${path}/${name}`);
    await tx.write(path, '');
    await tx.setPermissions(path, [
      { domid: self, read: false, write: false },
      { domid: client, read: true, write: false },
    ]);
    await makeQueue(tx, path, self, client);
  });
}
