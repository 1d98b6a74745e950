'use strict';
// An echo server for one client domain, and its client.
//   XEN_VCHAN_BACKEND=mock node examples/echo-server.js server 5 &
//   XEN_VCHAN_BACKEND=mock XEN_MOCK_DOMID=5 node examples/echo-server.js client 0
const { connect, createServer } = require('..');

const [role, peer] = process.argv.slice(2);
const path = 'data/vchan/echo';
if (role === 'server') {
  const server = createServer({ domid: Number(peer), path: `${path}-${peer}` }, (s) => {
    console.log(`domain ${s.remoteDomid} connected`);
    s.pipe(s);
    s.on('close', () => console.log('client left; offering the channel again'));
  });
  server.listen(() => console.log(`echo server for domain ${peer} at ${path}-${peer}`));
  process.once('SIGTERM', () => server.close()); // withdraws the channel and its xenstore entry
} else {
  (async () => {
    const me = process.env.XEN_MOCK_DOMID ?? '?';
    const s = await connect({ domid: Number(peer), path: `/local/domain/${peer}/${path}-${me}`, timeout: 10000 });
    s.on('data', (d) => {
      console.log(`echo: ${d}`);
      s.end();
    });
    s.write(`hello from domain ${me}`);
  })();
}
