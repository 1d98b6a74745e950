/**
 * A stream's idle timeout, as net.Socket's setTimeout(): 'timeout' once nothing has been read or
 * written for the set time. The timer re-arms lazily: activity only records when it happened.
 */
export class IdleTimer {
  #ms = 0;
  #timer: NodeJS.Timeout | null = null;
  #last = 0;
  readonly #onIdle: () => void;
  readonly #alive: () => boolean;

  /** ONIDLE runs once the stream has been idle for the set time, while ALIVE() says it is open. */
  constructor(onIdle: () => void, alive: () => boolean) {
    this.#onIdle = onIdle;
    this.#alive = alive;
  }

  /** The timeout (ms; 0: off). */
  get ms(): number {
    return this.#ms;
  }

  /** Sets the timeout to MS (0: off); the idle clock starts again. */
  set(ms: number): void {
    this.#ms = ms;
    this.stop();
    this.active();
  }

  /** Something was read or written: the idle clock starts again. */
  active(): void {
    if (!this.#ms) return;
    this.#last = performance.now();
    if (!this.#timer && this.#alive()) this.#arm(this.#ms);
  }

  /** No more 'timeout' until the next set() or activity (the stream closed). */
  stop(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #arm(delay: number): void {
    this.#timer = setTimeout(() => {
      this.#timer = null;
      if (!this.#alive() || !this.#ms) return;
      const idle = performance.now() - this.#last;
      if (idle >= this.#ms - 1) this.#onIdle();
      else this.#arm(this.#ms - idle);
    }, delay);
    this.#timer.unref();
  }
}
