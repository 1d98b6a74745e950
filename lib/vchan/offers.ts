/**
 * The channels a multi-server has offered that no client has taken yet, and the timers that
 * withdraw them: after acceptTimeout, or sooner while other requests wait for room.
 */
import { debuglog } from 'node:util';

import type { Offer } from './offer';

const debug = debuglog('xen-vchan');

/**
 * While requests wait for room, an offered channel nobody takes is withdrawn after four times the
 * time clients have lately taken to take theirs, within these bounds (ms).
 */
const CONTENDED_ACCEPT_MIN_MS = 100;
const CONTENDED_ACCEPT_MAX_MS = 2000;

interface Offered {
  offer: Offer;
  timer: NodeJS.Timeout;
  since: number;
}

/** @internal */
export class OfferSet {
  readonly #offers = new Map<string, Offered>();
  /** Withdraws untaken offers while requests wait for room. */
  #reaper: NodeJS.Timeout | null = null;
  /** How long clients have lately taken from an offer to attaching (ms, a moving average). */
  #attachMs = 125; // ms: a first guess, until clients have attached
  readonly #acceptTimeout: number;
  readonly #path: string;

  /** ACCEPTTIMEOUT: how long an offer waits for its client (ms); PATH: the server's, for the log. */
  constructor(acceptTimeout: number, path: string) {
    this.#acceptTimeout = acceptTimeout;
    this.#path = path;
  }

  /** The offers standing now. */
  get size(): number {
    return this.#offers.size;
  }

  /** Whether an offer stands for ID. */
  has(id: string): boolean {
    return this.#offers.has(id);
  }

  /** OFFER stands for ID; if nobody takes it within acceptTimeout it is withdrawn, then EXPIRED runs. */
  add(id: string, offer: Offer, expired: () => void): void {
    const timer = setTimeout(() => {
      debug('multi-server %s: nobody took %s within %d ms', this.#path, id, this.#acceptTimeout);
      this.withdraw(id);
      expired();
    }, this.#acceptTimeout);
    timer.unref();
    this.#offers.set(id, { offer, timer, since: Date.now() });
  }

  /** ID's client has attached: its offer is taken (and tells how long clients take). */
  take(id: string): void {
    const o = this.#offers.get(id);
    if (!o) return;
    clearTimeout(o.timer);
    this.#attachMs = 0.8 * this.#attachMs + 0.2 * (Date.now() - o.since);
    this.#offers.delete(id);
  }

  /**
   * Withdraws the offer for ID (true), unless its client has just attached (false). With LOOK, the
   * offer's channel is looked at first: a client that attached meanwhile gets it (take() runs).
   */
  withdraw(id: string, look = true): boolean {
    const o = this.#offers.get(id);
    if (!o) return false;
    const withdrawn = o.offer.cancel(look);
    if (this.#offers.get(id) !== o) return false; // its client attached after all: taken
    this.#offers.delete(id);
    clearTimeout(o.timer);
    return withdrawn;
  }

  /** Withdraws every offer, without looking (the server stops). */
  withdrawAll(): void {
    if (this.#reaper) clearTimeout(this.#reaper);
    this.#reaper = null;
    for (const id of [...this.#offers.keys()]) this.withdraw(id, false);
  }

  /** Makes the offers keep the process alive (ON) or not. */
  ref(on: boolean): void {
    for (const { offer } of this.#offers.values()) offer.ref(on);
  }

  /**
   * While requests wait for room (WAITING() > 0), offers nobody has taken for four times what
   * clients lately took (0.1 to 2 s, at most acceptTimeout) are withdrawn (their clients, if there,
   * hear it and ask again): a flood of requests nobody means to take holds the room that long, not
   * for acceptTimeout. AFTER runs after each such round.
   */
  reap(waiting: () => number, after: () => void): void {
    if (this.#reaper || waiting() === 0 || this.#offers.size === 0) return;
    let first = Infinity;
    for (const o of this.#offers.values()) first = Math.min(first, o.since);
    const limit = Math.min(
      this.#acceptTimeout,
      Math.max(CONTENDED_ACCEPT_MIN_MS, Math.min(CONTENDED_ACCEPT_MAX_MS, 4 * this.#attachMs)),
    );
    const wait = Math.max(0, first + limit - Date.now());
    this.#reaper = setTimeout(() => {
      this.#reaper = null;
      if (waiting() === 0) return;
      const old = Date.now() - limit;
      let withdrawn = 0;
      for (const [id, o] of [...this.#offers]) if (o.since <= old && this.withdraw(id)) withdrawn++;
      if (withdrawn > 0)
        debug('multi-server %s: %d offers untaken while %d wait: withdrawn', this.#path, withdrawn, waiting());
      after();
    }, wait);
    this.#reaper.unref();
  }
}
