// Types of domu-driver.js for the TypeScript tests (tsconfig.check.json does not read JavaScript).
import type { Xenstore } from '../../dist/cjs/index.js';

/** A message of domu-peer.js: its phase and what it measured (hashes, counts, ports, info). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- free-form JSON from the peer
export type PeerMessage = Record<string, any>;

export declare class DomU {
  readonly name: string;
  readonly domid: number;
  readonly xs: Xenstore;
  readonly home: string;
  consoleLog(): string;
  command(
    op: string,
    args?: Record<string, unknown>,
  ): Promise<(phase?: string, timeoutMs?: number) => Promise<PeerMessage>>;
  destroy(): void;
}

export declare function bootDomU(o: {
  rig: string;
  xs: Xenstore;
  name?: string;
  memory?: number;
  readyTimeoutMs?: number;
}): Promise<DomU>;
export declare function consoleLog(name: string): string;
export declare function xl(...args: string[]): string;
