// A TypeScript user of the installed package, compiled with tsc --strict: the published types
// must describe what the package does.
import { once } from 'node:events';

import { connect, createServer, useBackend, type VchanStream } from 'xen-vchan';

async function main(): Promise<void> {
  useBackend('mock');
  const server = createServer({ domid: 5, path: 'data/smoke/ts' }, (s: VchanStream) => s.pipe(s));
  server.listen();
  await once(server, 'listening');
  const s: VchanStream = await connect({
    domid: 0,
    path: '/local/domain/0/data/smoke/ts',
    mockDomid: 5,
    timeout: 10_000,
  });
  s.write('hello from TypeScript');
  const [echo] = (await once(s, 'data')) as [Buffer];
  if (echo.toString() !== 'hello from TypeScript') throw new Error(`echoed ${echo.toString()}`);
  s.destroy();
  server.close(() => console.log('ts: echoed'));
}
void main();
