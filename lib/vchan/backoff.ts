/**
 * A retry after a back-off that doubles (FIRST ms, then twice as long each time, up to MAX) until
 * something succeeds: what a server does when it is out of resources or xenstore refuses it.
 */
export class Backoff {
  #timer: NodeJS.Timeout | null = null;
  #ms = 0;
  readonly #first: number;
  readonly #max: number;

  constructor(first: number, max = 1000) {
    this.#first = first;
    this.#max = max;
  }

  /** Whether a retry is scheduled. */
  get pending(): boolean {
    return this.#timer !== null;
  }

  /**
   * Runs FN after the next delay (replacing a retry scheduled), and returns that delay (ms). The
   * timer keeps the process alive only if REFED.
   */
  schedule(fn: () => void, refed: boolean): number {
    this.cancel();
    this.#ms = Math.min(this.#max, this.#ms ? this.#ms * 2 : this.#first);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      fn();
    }, this.#ms);
    if (!refed) this.#timer.unref();
    return this.#ms;
  }

  /** It worked: the next back-off starts at FIRST again. */
  reset(): void {
    this.#ms = 0;
  }

  /** No retry (one scheduled is dropped). */
  cancel(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** Makes a scheduled retry keep the process alive (ON) or not. */
  ref(on: boolean): void {
    if (on) this.#timer?.ref();
    else this.#timer?.unref();
  }
}
