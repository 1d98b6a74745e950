/**
 * What the benches report: the median of several runs with the spread (min-max), the mock
 * broker's CPU time, and the options every protocol bench takes.
 */
import * as fs from 'node:fs';

/** The median of A. */
export function median(a: number[]): number {
  const s = [...a].sort((p, q) => p - q);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** "median (min-max)" of A with D decimals. */
export function fmtSpread(a: number[], d = 0): string {
  return `${median(a).toFixed(d)} (${Math.min(...a).toFixed(d)}-${Math.max(...a).toFixed(d)})`;
}

const TICKS = 100; // USER_HZ on Linux

/**
 * CPU time (µs) the mock's broker (xenmockd) has used so far: it binds channels, maps grants and
 * serves xenstore. Undefined on real Xen (BACKEND, the backend in use, is not 'mock'), or when not
 * exactly one broker runs (it could not be told apart from another's).
 */
export function brokerCpu(backend: string | undefined): number | undefined {
  if (backend !== 'mock') return undefined;
  const found: number[] = [];
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== 'xenmockd') continue;
      // utime and stime are fields 14 and 15, after the parenthesised command name.
      const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
      found.push(((Number(f[11]) + Number(f[12])) * 1e6) / TICKS);
    } catch {
      // gone meanwhile
    }
  }
  return found.length === 1 ? found[0] : undefined;
}

/** The options every protocol bench takes. */
export interface BenchOptions {
  /** The value of option NAME as a number, or DEF. */
  opt(name: string, def: number): number;
  /** --quick: small runs (a smoke run; the figures mean little). */
  quick: boolean;
  /** --runs N: default 5, quick 3. */
  runs: number;
  /** --seconds S per run: default 2, quick 0.5. */
  seconds: number;
}

/** The options of ARGV: `--quick`, `--runs N`, `--seconds S`, and opt() for a bench's own. */
export function benchOptions(argv: string[]): BenchOptions {
  const opt = (name: string, def: number) => {
    const i = argv.indexOf(name);
    return i >= 0 ? Number(argv[i + 1]) : def;
  };
  const quick = argv.includes('--quick');
  return { opt, quick, runs: opt('--runs', quick ? 3 : 5), seconds: opt('--seconds', quick ? 0.5 : 2) };
}
