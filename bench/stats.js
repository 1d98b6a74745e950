'use strict';
// What the protocol benches report: the median of several runs, with the spread (min-max), and
// the mock broker's CPU time.
const fs = require('node:fs');

/** @param {number[]} a */
const median = (a) => {
  const s = [...a].sort((p, q) => p - q);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** "median (min-max)" with D decimals. @param {number[]} a */
const fmt = (a, d = 0) => `${median(a).toFixed(d)} (${Math.min(...a).toFixed(d)}-${Math.max(...a).toFixed(d)})`;

const TICKS = 100; // USER_HZ on Linux

/**
 * CPU time (µs) the mock's broker (xenmockd) has used so far: it binds channels, maps grants and
 * serves xenstore. Undefined on real Xen, or when not exactly one broker runs (it could not be
 * told apart from another's).
 * @param {string} backend the backend in use (x.currentBackend())
 */
function brokerCpu(backend) {
  if (backend !== 'mock') return undefined;
  const found = [];
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

/**
 * The options every protocol bench takes from ARGV: `--quick`, `--runs N` (default 5, quick 3),
 * `--seconds S` (default 2, quick 0.5), and opt(name, default) for the bench's own numbers.
 * @param {string[]} argv
 */
function benchOptions(argv) {
  /** @param {string} name @param {number} def */
  const opt = (name, def) => {
    const i = argv.indexOf(name);
    return i >= 0 ? Number(argv[i + 1]) : def;
  };
  const quick = argv.includes('--quick');
  return { opt, quick, runs: opt('--runs', quick ? 3 : 5), seconds: opt('--seconds', quick ? 0.5 : 2) };
}

module.exports = { benchOptions, brokerCpu, fmt, median };
