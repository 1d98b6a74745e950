'use strict';
// Copies a file from one domain to another over vchan, with a SHA-256 check.
//   XEN_VCHAN_BACKEND=mock node examples/file-copy.js receive 5 /tmp/out &
//   XEN_VCHAN_BACKEND=mock XEN_MOCK_DOMID=5 node examples/file-copy.js send 0 /etc/services
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const { pipeline } = require('node:stream/promises');
const { connect, createServer } = require('..');

const [role, peer, file] = process.argv.slice(2);
if (role === 'receive') {
  const server = createServer({ domid: Number(peer), path: 'data/vchan/copy' }, async (s) => {
    server.close();
    const hash = createHash('sha256');
    s.on('data', (d) => hash.update(d));
    await pipeline(s, fs.createWriteStream(file));
    console.log(`received ${fs.statSync(file).size} bytes, sha256 ${hash.digest('hex')}`);
  });
  server.listen();
} else {
  (async () => {
    const s = await connect({ domid: Number(peer), path: `/local/domain/${peer}/data/vchan/copy`, timeout: 10000 });
    const hash = createHash('sha256').update(fs.readFileSync(file)).digest('hex');
    await pipeline(fs.createReadStream(file), s);
    console.log(`sent ${fs.statSync(file).size} bytes, sha256 ${hash}`);
  })();
}
