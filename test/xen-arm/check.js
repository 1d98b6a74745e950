'use strict';
// Checks the arm64 rig's results (the "XVARM <role> <what> <json>" lines of its console): exit 1
// with what is wrong, else prints the figures.
const fs = require('node:fs');

const lines = fs.readFileSync(process.argv[2], 'latin1').split('\n');
const r = {};
for (const l of lines) {
  const m = /XVARM (\S+) (\S+) (\{.*\})\s*$/.exec(l);
  if (m) (r[m[1]] ??= {})[m[2]] = JSON.parse(m[3]);
}
const bad = [];
const want = (cond, what) => cond || bad.push(what);
for (const role of ['dom0', 'a', 'b'])
  want(r[role]?.done, `${role} did not finish (${JSON.stringify(r[role]?.failed)})`);
want(r.dom0?.events?.roundTrips === 200, `dom0 <-> domU 1: ${JSON.stringify(r.dom0?.events)}`);
want(r.a?.events?.roundTrips === 200, `domU 1 <-> domU 2: ${JSON.stringify(r.a?.events)}`);
want(r['b/killed']?.killing, 'the first client (killed mid-stream) never streamed');
want(r.a?.lost?.client === 1, `the server did not see its first client go: ${JSON.stringify(r.a?.lost)}`);
const s = r.a?.served;
const c = r.b?.exchanged;
want(s?.client === 2 && c, 'the second client was not served');
if (s && c) {
  want(s.sent === c.recv, 'domU 1 -> domU 2: the bytes differ (SHA-256)');
  want(c.sent === s.recv, 'domU 2 -> domU 1: the bytes differ (SHA-256)');
}
if (bad.length) {
  console.error(`rig-arm: FAILED\n  ${bad.join('\n  ')}`);
  process.exit(1);
}
const mib = c.got / 2 ** 20;
console.log(
  `rig-arm: passed. Static vchan domU 2 <-> domU 1, no xenstore: ${mib} MiB each way at once in ${(c.ms / 1000).toFixed(1)} s ` +
    `(${(mib / (c.ms / 1000)).toFixed(1)} MiB/s each way), SHA-256 equal both ways; reconnect after a client killed: ` +
    `${r.b.connected.ms} ms. Static events: dom0 <-> domU 1 ${r.dom0.events.usEach} us per round trip, ` +
    `domU 1 <-> domU 2 ${r.a.events.usEach} us (200 each). An undeclared port: ${JSON.stringify(r.dom0.undeclared)}.`,
);
