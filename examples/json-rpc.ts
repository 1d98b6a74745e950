// A typed JSON service between two domains over vchan: the server adds numbers and says how long
// it has been up; the client sends its requests pipelined on one channel and prints the replies.
// `await using` (TypeScript 5.2+) closes the client's channel however the block is left.
//   npx tsc -p examples
//   XEN_VCHAN_BACKEND=mock node examples/dist/json-rpc.js server 5 &
//   XEN_VCHAN_BACKEND=mock XEN_MOCK_DOMID=5 node examples/dist/json-rpc.js client 0
import { connect, createServer, JsonClient, serveJson, type VchanStream } from 'xen-vchan';

/** What the service answers: the request's fields in, the reply's out. */
interface Api {
  add: { in: { a: number; b: number }; out: { sum: number } };
  uptime: { in: Record<string, never>; out: { ms: number } };
}

const [role, peer] = process.argv.slice(2);
const path = 'data/vchan/rpc';
const started = Date.now();

function handle(req: Record<string, unknown>): Record<string, unknown> {
  switch (req.cmd) {
    case 'add':
      if (typeof req.a !== 'number' || typeof req.b !== 'number') return { error: 'a and b must be numbers' };
      return { sum: req.a + req.b } satisfies Api['add']['out'];
    case 'uptime':
      return { ms: Date.now() - started } satisfies Api['uptime']['out'];
    default:
      return { error: `no command ${JSON.stringify(req.cmd)}` };
  }
}

/** One typed call: the command's name picks both the request's and the reply's shape. */
function call<C extends keyof Api>(c: JsonClient, cmd: C, args: Api[C]['in']): Promise<Api[C]['out']> {
  return c.request<Api[C]['out']>({ cmd, ...args });
}

async function main(): Promise<void> {
  if (role === 'server') {
    const server = createServer({ domid: Number(peer), path }, (s: VchanStream) => {
      serveJson(s, handle);
    });
    server.listen(() => console.log(`json-rpc: serving domain ${peer} at ${path}`));
    process.once('SIGTERM', () => server.close());
    return;
  }
  await using s = await connect({ domid: Number(peer), path: `/local/domain/${peer}/${path}`, timeout: 10000 });
  const c = new JsonClient(s);
  // Three requests in flight at once; the replies come back matched to them by id.
  const [one, two, up] = await Promise.all([
    call(c, 'add', { a: 1, b: 2 }),
    call(c, 'add', { a: 40, b: 2 }),
    call(c, 'uptime', {}),
  ]);
  console.log(`json-rpc: 1 + 2 = ${one.sum}, 40 + 2 = ${two.sum}, server up ${up.ms >= 0 ? 'yes' : 'no'}`);
  c.close();
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
