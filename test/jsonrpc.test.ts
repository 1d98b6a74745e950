/** The JSON request/response layer (lib/jsonrpc.ts), over vchan. */
import { once } from 'node:events';
import { Duplex } from 'node:stream';

import { afterEach, describe, expect, it } from 'vitest';

import {
  connect,
  createServer,
  encodeMessage,
  JsonClient,
  MessageSplitter,
  serveJson,
  VchanServer,
  VchanStream,
} from '../dist/cjs/index.js';
import { selfDomid } from './helpers/env';
import { sleep, uniquePath } from './helpers/util';

const servers: VchanServer[] = [];
const streams: VchanStream[] = [];
afterEach(async () => {
  for (const s of streams.splice(0)) if (!s.destroyed) s.destroy();
  for (const s of servers.splice(0)) await Promise.race([new Promise((r) => s.close(() => r(undefined))), sleep(3000)]);
});

/** A vchan pair on this domain with rings of RING bytes. */
async function pair(ring = 4096): Promise<{ s: VchanStream; c: VchanStream }> {
  const path = uniquePath('json');
  const server = createServer({ domid: selfDomid, path, readMin: ring, writeMin: ring });
  servers.push(server);
  const accepted = once(server, 'connection');
  server.listen();
  const c = await connect({ domid: selfDomid, path: `/local/domain/${selfDomid}/${path}`, timeout: 5000 });
  const [s] = (await accepted) as [VchanStream];
  for (const x of [s, c]) {
    streams.push(x);
    x.on('error', () => undefined);
  }
  return { s, c };
}

describe('MessageSplitter', () => {
  it('splits and joins \\r\\n-terminated messages across every chunking, a \\r\\n split between chunks too', () => {
    const msgs = ['{"a":1}', '{"b":"x\\r\\ny"}', '{}', '{"c":"' + 'z'.repeat(5000) + '"}'];
    const wire = Buffer.from(msgs.map((m) => `${m}\r\n`).join(''));
    for (const step of [1, 2, 3, 7, 8, 4096, wire.length]) {
      const sp = new MessageSplitter();
      const out: string[] = [];
      for (let i = 0; i < wire.length; i += step) sp.push(wire.subarray(i, i + step), (m) => out.push(m.toString()));
      expect(out, `chunks of ${step}`).toEqual(msgs);
      expect(sp.pending).toBe(0);
    }
  });

  it('throws EMSGSIZE as soon as a message passes the limit, without buffering it', () => {
    const sp = new MessageSplitter(100);
    expect(() => sp.push(Buffer.alloc(101, 0x41), () => undefined)).toThrow(
      expect.objectContaining({ code: 'EMSGSIZE' }),
    );
    const sp2 = new MessageSplitter(100);
    sp2.push(Buffer.alloc(60, 0x41), () => undefined);
    expect(() => sp2.push(Buffer.alloc(60, 0x41), () => undefined)).toThrow(
      expect.objectContaining({ code: 'EMSGSIZE' }),
    );
    // Exactly at the limit (with its \r\n) passes.
    const sp3 = new MessageSplitter(100);
    const got: number[] = [];
    sp3.push(Buffer.concat([Buffer.alloc(98, 0x41), Buffer.from('\r\n')]), (m) => got.push(m.length));
    expect(got).toEqual([98]);
    expect(() => encodeMessage({ x: 'y'.repeat(200) }, 100)).toThrow(expect.objectContaining({ code: 'EMSGSIZE' }));
  });
});

describe('JsonClient and serveJson over vchan', () => {
  it('many requests in flight on one channel, answered out of order, each matched by its id', async () => {
    const { s, c } = await pair(4096);
    serveJson(s, async (req) => {
      await sleep(Math.random() * 20); // finish in any order
      return { echo: req.n, id: 'forged' }; // the server's own `id` is overwritten with the request's
    });
    const client = new JsonClient(c, { maxInFlight: 50 });
    const replies = await Promise.all(Array.from({ length: 500 }, (_, n) => client.request({ n, pad: 'p'.repeat(n) })));
    replies.forEach((r, n) => expect(r.echo).toBe(n));
    expect(client.pending).toEqual({ inFlight: 0, queued: 0 });
  });

  it('a reply without an id answers the oldest request (a server that does not echo ids)', async () => {
    const { s, c } = await pair();
    s.on('data', (d: Buffer) => {
      for (const line of d.toString().split('\r\n').filter(Boolean))
        s.write(`${JSON.stringify({ got: JSON.parse(line).n })}\r\n`);
    });
    const client = new JsonClient(c, { maxInFlight: 1 });
    const r = await Promise.all([client.request({ n: 1 }), client.request({ n: 2 }), client.request({ n: 3 })]);
    expect(r.map((x) => x.got)).toEqual([1, 2, 3]);
  });

  it('requests without ids are answered in the order they came, whatever order they finish in', async () => {
    const { s, c } = await pair();
    serveJson(
      s,
      async (req) => {
        await sleep(((req.n as number) % 3) * 15); // the later ones finish first
        return { n: req.n };
      },
      { malformed: () => ({ bad: true }) },
    );
    const lines: string[] = [];
    c.on('data', (d: Buffer) => lines.push(...d.toString().split('\r\n').filter(Boolean)));
    c.write('{"n":2}\r\n{"n":1}\r\nnot json\r\n{"n":0}\r\n{"n":5,"id":"x"}\r\n');
    for (let i = 0; i < 200 && lines.length < 5; i++) await sleep(10);
    // The one with an id may leave as soon as it is ready; the others keep their order.
    expect(lines.filter((l) => !l.includes('"id"'))).toEqual(['{"n":2}', '{"n":1}', '{"bad":true}', '{"n":0}']);
    expect(lines).toContain('{"n":5,"id":"x"}');
  });

  it('timeouts and AbortSignal per request; the late reply is dropped, later requests still match', async () => {
    const { s, c } = await pair();
    serveJson(s, async (req) => {
      await sleep(req.slow ? 300 : 1);
      return { n: req.n };
    });
    const client = new JsonClient(c);
    const unmatched: unknown[] = [];
    client.on('unmatched', (m) => unmatched.push(m));
    await expect(client.request({ n: 1, slow: true }, { timeout: 50 })).rejects.toMatchObject({
      code: 'ETIMEDOUT',
      syscall: 'request',
    });
    const ac = new AbortController();
    const aborted = client.request({ n: 2, slow: true }, { signal: ac.signal });
    ac.abort();
    await expect(aborted).rejects.toMatchObject({ name: 'AbortError' });
    expect((await client.request({ n: 3 })).n).toBe(3);
    await sleep(400);
    expect(unmatched).toEqual([]); // late replies of given-up requests are not "unmatched": they had owners
    expect((await client.request({ n: 4 })).n).toBe(4);
  });

  it('an oversize reply fails every request in flight with EMSGSIZE; an oversize request closes the channel at the server', async () => {
    const a = await pair();
    serveJson(a.s, (req) => ({ big: 'x'.repeat(req.size as number) }), { maxMessage: 1 << 20 });
    const client = new JsonClient(a.c, { maxMessage: 10_000 });
    const small = client.request({ size: 10 });
    expect((await small).big).toHaveLength(10);
    const results = await Promise.allSettled([client.request({ size: 20_000 }), client.request({ size: 5 })]);
    expect(results.map((r) => r.status === 'rejected' && (r.reason as { code: string }).code)).toEqual([
      'EMSGSIZE',
      'EMSGSIZE',
    ]);
    await expect(client.request({ size: 1 })).rejects.toMatchObject({ code: 'EMSGSIZE' });
    await expect(client.request({ pad: 'y'.repeat(20_000) })).rejects.toMatchObject({ code: 'EMSGSIZE' });

    const b = await pair();
    const errors: Error[] = [];
    serveJson(b.s, () => ({ ok: true }), { maxMessage: 1000, onError: (e) => errors.push(e) });
    b.c.write('{"a":"' + 'q'.repeat(5000));
    await new Promise((r) => b.c.once('close', r)); // (events.once would reject on the EPIPE)
    expect(errors[0]).toMatchObject({ code: 'EMSGSIZE' });
  });

  it('malformed messages get the reply the protocol chooses, and the channel goes on', async () => {
    const { s, c } = await pair();
    serveJson(s, (req) => ({ ok: req.n }), { malformed: (text) => ({ bad: text.slice(0, 10) }) });
    const got: string[] = [];
    c.on('data', (d: Buffer) => got.push(d.toString()));
    c.write('not json\r\n[1,2]\r\n"str"\r\n{"n":7}\r\n');
    for (let i = 0; i < 100 && got.join('').split('\r\n').length < 5; i++) await sleep(10);
    expect(
      got
        .join('')
        .split('\r\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l)),
    ).toEqual([{ bad: 'not json' }, { bad: '[1,2]' }, { bad: '"str"' }, { ok: 7 }]);
  });

  it('backpressure: a server that does not read makes the client hold at most maxInFlight requests on the wire', async () => {
    const { s, c } = await pair(4096);
    s.pause(); // a server that reads nothing
    const client = new JsonClient(c, { maxInFlight: 8 });
    const all = Array.from({ length: 1000 }, (_, n) => client.request({ n, pad: 'p'.repeat(100) }));
    for (const p of all) p.catch(() => undefined);
    await sleep(100);
    expect(client.pending.inFlight).toBeLessThanOrEqual(8);
    expect(client.pending.queued).toBeGreaterThanOrEqual(992);
    expect(c.writableLength).toBeLessThan(8 * 200);
    // And once the server reads and answers, all of them complete.
    serveJson(s, (req) => ({ n: req.n }));
    s.resume();
    const r = await Promise.all(all);
    expect(r.map((x) => x.n)).toEqual(Array.from({ length: 1000 }, (_, n) => n));
  });

  it('a client that never reads its replies stops the server reading, not its memory', async () => {
    const { s, c } = await pair(4096);
    let handled = 0;
    serveJson(s, (req) => {
      handled++;
      return { big: 'x'.repeat(2000), n: req.n };
    });
    c.pause();
    for (let n = 0; n < 2000; n++) c.write(encodeMessage({ n }));
    await sleep(300);
    // The server's write buffer is bounded by the ring and a stream's high-water mark.
    expect(s.writableLength).toBeLessThan(64 * 1024);
    expect(handled).toBeLessThan(2000);
    c.resume();
  });

  it("close() ends the server's side; a reply still being made is dropped, not a write after end", async () => {
    // A half-closable stream (a socket): the channel stays readable after this side has ended.
    const written: Buffer[] = [];
    const d = new Duplex({
      allowHalfOpen: true,
      read() {},
      write(c: Buffer, _e, cb) {
        written.push(c);
        cb();
      },
    });
    const errors: Error[] = [];
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const service = serveJson(d, async (req) => (await held, { n: req.n }), { onError: (e) => errors.push(e) });
    d.push(encodeMessage({ id: 1, n: 1 }));
    await sleep(20);
    service.close();
    await once(d, 'finish');
    release();
    await sleep(20);
    expect(errors).toEqual([]);
    expect(d.errored).toBe(null);
    expect(Buffer.concat(written).toString()).toBe('');
    d.destroy();
  });

  it('rejects bad arguments with Node codes', async () => {
    const d = new Duplex({
      read() {},
      write(_c, _e, cb) {
        cb();
      },
    });
    expect(() => new JsonClient(d, { maxInFlight: 0 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => new JsonClient(d, { timeout: 'x' as never })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => serveJson(d, 'x' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    const client = new JsonClient(d);
    await expect(client.request('x' as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    await expect(client.request({}, { signal: {} as never })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    d.destroy();
  });
});
