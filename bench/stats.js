'use strict';
// What the protocol benches report: the median of several runs, with the spread (min-max).

/** @param {number[]} a */
const median = (a) => {
  const s = [...a].sort((p, q) => p - q);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** "median (min-max)" with D decimals. @param {number[]} a */
const fmt = (a, d = 0) => `${median(a).toFixed(d)} (${Math.min(...a).toFixed(d)}-${Math.max(...a).toFixed(d)})`;

module.exports = { fmt, median };
