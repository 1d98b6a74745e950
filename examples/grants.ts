// Shared memory and an event channel, the primitives under vchan, in one process talking to its
// own domain: share two pages, map them, write through one view and read through the other, and
// signal with an event. Between two domains, the refs and the port go to the other side (through
// xenstore, or agreed in advance) and it maps and binds them as below.
//   npx tsc -p examples
//   XEN_VCHAN_BACKEND=mock node examples/dist/grants.js
import { once } from 'node:events';

import { EventChannel, GrantMapper, GrantSharer, Xenstore } from 'xen-vchan';

async function main(): Promise<void> {
  const xs = new Xenstore();
  const self = Number(await xs.read('domid'));
  xs.close();

  using sharer = new GrantSharer();
  using mapper = new GrantMapper();
  using shared = sharer.share(self, 2); // two pages this domain may map, writable
  using mapped = mapper.map(self, shared.refs);
  const theirs = new Uint8Array(mapped.buffer);
  new TextEncoder().encodeInto('hello through a grant', new Uint8Array(shared.buffer));

  using a = new EventChannel();
  using b = new EventChannel();
  const port = a.bindUnbound(self); // the offering side
  const local = b.bindInterdomain(self, port); // the other side binds it
  const got = once(a, 'event');
  b.notify(local);
  const [fired] = (await got) as [number];

  const text = new TextDecoder().decode(theirs.subarray(0, theirs.indexOf(0)));
  console.log(`grants: refs ${shared.refs.join(',')}, read "${text}", event on port ${fired === port ? 'ok' : fired}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
