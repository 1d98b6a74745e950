'use strict';
// A CommonJS user of the installed package: an echo over a mock vchan, domain 0 to domain 5.
const assert = require('node:assert');
const { connect, createServer, useBackend } = require('xen-vchan');

useBackend('mock');
const server = createServer({ domid: 5, path: 'data/smoke/cjs' }, (s) => s.pipe(s));
server.listen(async () => {
  const s = await connect({ domid: 0, path: '/local/domain/0/data/smoke/cjs', mockDomid: 5, timeout: 10_000 });
  s.write('hello from CommonJS');
  const [echo] = await require('node:events').once(s, 'data');
  assert.strictEqual(String(echo), 'hello from CommonJS');
  s.destroy();
  server.close(() => console.log('cjs: echoed'));
});
