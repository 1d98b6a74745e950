'use strict';
// Watches a xenstore subtree and prints every change, like xenstore-watch.
//   XEN_VCHAN_BACKEND=mock node examples/xenstore-watch.js /local/domain
const { Xenstore } = require('..');

(async () => {
  const xs = new Xenstore();
  const w = await xs.watch(process.argv[2] ?? '/local/domain');
  for await (const ev of w) {
    const value = await xs.tryRead(ev.path);
    console.log(`${ev.path} = ${value === undefined ? '(removed)' : JSON.stringify(value)}`);
  }
})();
