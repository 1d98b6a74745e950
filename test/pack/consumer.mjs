// An ES module user of the installed package: an echo over a mock vchan, domain 0 to domain 5.
import assert from 'node:assert';
import { once } from 'node:events';

import { connect, createServer, useBackend } from 'xen-vchan';

useBackend('mock');
const server = createServer({ domid: 5, path: 'data/smoke/esm' }, (s) => s.pipe(s));
server.listen();
await once(server, 'listening');
const s = await connect({ domid: 0, path: '/local/domain/0/data/smoke/esm', mockDomid: 5, timeout: 10_000 });
s.write('hello from ESM');
const [echo] = await once(s, 'data');
assert.strictEqual(String(echo), 'hello from ESM');
s.destroy();
server.close(() => console.log('esm: echoed'));
