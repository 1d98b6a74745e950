/**
 * PVCalls' wire format and rings (lib/pvcalls): the layout checked against Xen's own header, the
 * commands ring's index and event protocol, the data rings, and what a corrupt peer gets.
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import { GrantMapper, GrantSharer } from '../dist/cjs/index.js';
import { DataRing } from '../dist/cjs/pvcalls/data.js';
import { BackRing, FrontRing } from '../dist/cjs/pvcalls/ring.js';
import * as w from '../dist/cjs/pvcalls/wire.js';
import { onMock, root, selfDomid } from './helpers/env';

const header = '/usr/include/xen/io/pvcalls.h';
// By code and name: the rings' own modules load through Node's require, this file's through vite.
const corrupt = expect.objectContaining({ name: 'RingCorruptError', code: 'ERR_XEN_RING_CORRUPT' });
const haveCc = spawnSync('cc', ['--version']).status === 0;

describe('PVCalls wire format', () => {
  // libxen-dev's header (CI installs it); the rig's dom0 has neither it nor a compiler.
  it.runIf(fs.existsSync(header) && haveCc)("matches Xen's io/pvcalls.h, offset for offset", () => {
    const exe = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pvcalls-layout-')), 'layout');
    const cc = spawnSync('cc', ['-Wall', '-o', exe, path.join(root, 'test', 'releases', 'pvcalls_layout.c')], {
      encoding: 'utf8',
    });
    expect(cc.stderr).toBe('');
    const c = JSON.parse(spawnSync(exe, { encoding: 'utf8' }).stdout);
    expect(c.cmds).toEqual(Object.values(w.PvcallsCmd));
    expect(c.requestSize).toBe(w.REQUEST_SIZE);
    expect(c.responseSize).toBe(w.RESPONSE_SIZE);
    expect(c.slotSize).toBe(w.SLOT_SIZE);
    expect(c.ringSlots).toBe(w.RING_SLOTS);
    expect(c.sring).toEqual(w.SRING);
    expect(c.req).toEqual(w.REQ);
    expect(c.addrSize).toBe(w.ADDR_SIZE);
    expect(c.rsp).toEqual(w.RSP);
    expect(c.dataIntf).toEqual(w.DATA_INTF);
  });

  it('encodes and decodes every request, and answers an unknown cmd with its number', () => {
    const addr = w.encodeInetAddress({ family: w.AF_INET, port: 7777, address: '127.0.0.1' });
    const reqs: w.PvcallsRequest[] = [
      { reqId: 1, cmd: 'SOCKET', id: 0xdeadbeef01n, domain: w.AF_INET, type: w.SOCK_STREAM, protocol: 0 },
      { reqId: 2, cmd: 'CONNECT', id: 5n, addr, len: 16, flags: 0, ref: 77, evtchn: 9 },
      { reqId: 3, cmd: 'RELEASE', id: 5n, reuse: 1 },
      { reqId: 4, cmd: 'BIND', id: 6n, addr, len: 16 },
      { reqId: 5, cmd: 'LISTEN', id: 6n, backlog: 128 },
      { reqId: 6, cmd: 'ACCEPT', id: 6n, idNew: 2n ** 64n - 1n, ref: 12, evtchn: 13 },
      { reqId: 0xffffffff, cmd: 'POLL', id: 6n },
    ];
    for (const r of reqs) {
      const slot = new Uint8Array(w.SLOT_SIZE).fill(0xaa);
      w.encodeRequest(slot, r);
      expect(w.decodeRequest(slot)).toEqual(r);
    }
    const bad = new Uint8Array(w.SLOT_SIZE);
    new DataView(bad.buffer).setUint32(w.REQ.cmd, 7, true);
    new DataView(bad.buffer).setUint32(w.REQ.reqId, 42, true);
    expect(w.decodeRequest(bad)).toEqual({ reqId: 42, cmd: 7 });
    // Byte-exact: the port in network order after a host-order family.
    expect([...addr.subarray(0, 8)]).toEqual([2, 0, 0x1e, 0x61, 127, 0, 0, 1]);
    expect(w.decodeInetAddress(addr, 16)).toEqual({ family: w.AF_INET, port: 7777, address: '127.0.0.1' });
    expect(w.decodeInetAddress(addr, 8)).toBeNull(); // too short for a sockaddr_in
    expect(w.decodeInetAddress(new Uint8Array(28).fill(10), 16)).toBeNull(); // family 0x0a0a
    for (const address of ['1.2.3.256', '::1', 'localhost', '1.2.3'])
      expect(() => w.encodeInetAddress({ family: 2, port: 1, address })).toThrow(
        expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }),
      );
    const rsp = { reqId: 9, cmd: 1, ret: -111, id: 5n };
    const slot = new Uint8Array(w.SLOT_SIZE);
    w.encodeResponse(slot, rsp);
    expect(w.decodeResponse(slot)).toEqual(rsp);
  });
});

describe('the commands ring (io/ring.h)', () => {
  function pair() {
    const page = new Uint8Array(4096);
    const front = FrontRing.init(page);
    const back = new BackRing(page);
    return { page, front, back, idx: new Uint32Array(page.buffer, 0, 4) };
  }

  it('carries requests and responses in order, fills at 32, and notifies only when the other side asked', () => {
    const { front, back } = pair();
    const sent: number[] = [];
    let got: number[] = [];
    const notifies: boolean[] = [];
    for (let i = 0; i < 32; i++) {
      w.encodeRequest(front.nextRequest(), { reqId: i, cmd: 'POLL', id: BigInt(i) });
      sent.push(i);
      notifies.push(front.push());
    }
    // The backend has not looked yet: only the first push crossed its event index.
    expect(notifies).toEqual([true, ...Array(31).fill(false)]);
    expect(front.free).toBe(0);
    expect(() => front.nextRequest()).toThrow(RangeError);
    got = back.takeRequests().map((s) => w.decodeRequest(s).reqId);
    expect(got).toEqual(sent);
    // Responses answer requests in any order; the frontend sees them as published.
    for (const i of [...got].reverse()) w.encodeResponse(back.nextResponse(), { reqId: i, cmd: 6, ret: 0, id: 0n });
    expect(() => back.nextResponse()).toThrow(RangeError);
    expect(back.push()).toBe(true); // rsp_event is 1 from init
    expect(front.takeResponses().map((s) => w.decodeResponse(s).reqId)).toEqual([...got].reverse());
    expect(front.free).toBe(32);
    // Both re-armed when they ran dry: the next request and the next response each bring an event.
    w.encodeRequest(front.nextRequest(), { reqId: 99, cmd: 'POLL', id: 0n });
    expect(front.push()).toBe(true);
    expect(back.takeRequests()).toHaveLength(1);
    back.nextResponse();
    expect(back.push()).toBe(true);
    expect(front.takeResponses()).toHaveLength(1);
  });

  // Synchronous from end to end: on the rig's emulated CPU 100,000 took 50-73 s, a test that never
  // yields that long also starves vitest's own worker RPC (60 s). 5,000 pass the wrap as surely.
  const total = onMock ? 100_000 : 5_000;
  it(`runs ${total.toLocaleString('en')} requests through with the indexes wrapping past 2^32`, () => {
    // Both ends attach to a ring whose indexes are just below the wrap, as a long-lived one's are.
    const page = new Uint8Array(4096);
    const start = 2 ** 32 - 1000;
    new Uint32Array(page.buffer, 0, 4).set([start, start + 1, start, start + 1]);
    const f = new FrontRing(page);
    const b = new BackRing(page);
    let next = 0;
    let done = 0;
    const wrong: number[] = [];
    while (done < total) {
      while (f.free > 0 && next < total) w.encodeRequest(f.nextRequest(), { reqId: next++, cmd: 'POLL', id: 0n });
      f.push();
      for (const s of b.takeRequests()) {
        const r = w.decodeRequest(s);
        w.encodeResponse(b.nextResponse(), { reqId: r.reqId, cmd: 6, ret: 0, id: 0n });
      }
      b.push();
      for (const s of f.takeResponses()) if (w.decodeResponse(s).reqId !== done++) wrong.push(done - 1);
    }
    expect(wrong).toEqual([]);
    expect(done).toBe(total);
    expect(new Uint32Array(page.buffer, 0, 1)[0]).toBe((start + total) % 2 ** 32);
  });

  it('throws RingCorruptError on indexes a hostile peer made up, and on a response nobody asked for', () => {
    let { front, back, idx } = pair();
    idx[0] = 33; // req_prod a ring and one ahead
    expect(() => back.takeRequests()).toThrow(corrupt);
    idx[0] = 2 ** 32 - 1; // behind what was consumed
    expect(() => back.takeRequests()).toThrow(corrupt);
    ({ front, back, idx } = pair());
    front.nextRequest();
    front.push();
    idx[2] = 2; // two responses to one request
    expect(() => front.takeResponses()).toThrow(corrupt);
    idx[2] = 1000;
    expect(() => front.takeResponses()).toThrow(corrupt);
    expect(() => new BackRing(new Uint8Array(100))).toThrow(RangeError);
    expect(() => new FrontRing(new Uint8Array(4096), 24)).toThrow(RangeError);
  });
});

describe('the data rings (pvcalls_data_intf)', () => {
  it('moves bytes both ways through wrap-arounds, each byte once, in order', () => {
    for (const order of [0, 1, 4]) {
      const indexes = new Uint8Array(4096);
      const data = new Uint8Array(1 << (order + 12));
      const front = new DataRing(indexes, data, order, 'front');
      const back = new DataRing(indexes, data, order, 'back');
      expect(front.size).toBe(1 << (order + 11));
      for (const [from, to] of [
        [front, back],
        [back, front],
      ]) {
        const src = randomBytes(3 * 1024 * 1024 + 17);
        const sink = createHash('sha256');
        let at = 0;
        let got = 0;
        while (got < src.length) {
          const n = from.write(src.subarray(at, at + 1 + Math.floor(Math.random() * 9000)));
          at += n;
          expect(to.readable).toBeLessThanOrEqual(to.size);
          const chunk = to.read(1 + Math.floor(Math.random() * 9000));
          sink.update(chunk);
          got += chunk.length;
        }
        expect(sink.digest('hex')).toBe(createHash('sha256').update(src).digest('hex'));
        expect(from.writable).toBe(from.size);
      }
      // The halves are apart: `in` is the first half of the data pages, `out` the second.
      back.write(new Uint8Array([1]));
      front.write(new Uint8Array([2]));
      const inAt = new Uint32Array(indexes.buffer)[w.DATA_INTF.inProd / 4] - 1;
      const outAt = new Uint32Array(indexes.buffer)[w.DATA_INTF.outProd / 4] - 1;
      expect(data[inAt & (front.size - 1)]).toBe(1);
      expect(data[front.size + (outAt & (front.size - 1))]).toBe(2);
    }
  });

  it('reports errors the backend sets, and throws on indexes out of range', () => {
    const indexes = new Uint8Array(4096);
    const data = new Uint8Array(4096);
    const front = new DataRing(indexes, data, 0, 'front');
    const back = new DataRing(indexes, data, 0, 'back');
    back.inError = -107; // ENOTCONN: the remote end went away
    expect(front.inError).toBe(-107);
    expect(front.outError).toBe(0);
    const idx = new Uint32Array(indexes.buffer);
    idx[w.DATA_INTF.inProd / 4] = 2049; // more than the 2048-byte half holds
    expect(() => front.read()).toThrow(corrupt);
    expect(() => front.readable).toThrow(corrupt);
    idx[w.DATA_INTF.inProd / 4] = 0;
    idx[w.DATA_INTF.outCons / 4] = 5; // the backend consumed bytes never written
    expect(() => front.write(new Uint8Array(1))).toThrow(corrupt);
    expect(() => new DataRing(indexes, data, 10, 'front')).toThrow(RangeError);
    expect(() => new DataRing(indexes, data, 1, 'front')).toThrow(RangeError); // 8 KiB needed
  });

  it('works over granted pages, zero-copy: one end shares, the other maps', () => {
    const sharer = new GrantSharer();
    const mapper = new GrantMapper();
    const shared = sharer.share(selfDomid, 3); // indexes + an order-1 data area
    const mapped = mapper.map(selfDomid, shared.refs);
    try {
      const f = new DataRing(new Uint8Array(shared.buffer, 0, 4096), new Uint8Array(shared.buffer, 4096), 1, 'front');
      const b = new DataRing(new Uint8Array(mapped.buffer, 0, 4096), new Uint8Array(mapped.buffer, 4096), 1, 'back');
      const msg = randomBytes(4096);
      expect(f.write(msg)).toBe(4096);
      expect(Buffer.from(b.read())).toEqual(msg);
      // The commands ring on the same kind of page, once the data ring is done with it.
      const front = FrontRing.init(new Uint8Array(shared.buffer, 0, 4096));
      const back = new BackRing(new Uint8Array(mapped.buffer, 0, 4096));
      w.encodeRequest(front.nextRequest(), { reqId: 7, cmd: 'POLL', id: 3n });
      expect(front.push()).toBe(true);
      const [req] = back.takeRequests();
      expect(w.decodeRequest(req)).toEqual({ reqId: 7, cmd: 'POLL', id: 3n });
      w.encodeResponse(back.nextResponse(), { reqId: 7, cmd: 6, ret: -11, id: 3n });
      expect(back.push()).toBe(true);
      expect(front.takeResponses().map(w.decodeResponse)).toEqual([{ reqId: 7, cmd: 6, ret: -11, id: 3n }]);
    } finally {
      mapped.unmap();
      shared.unshare();
      mapper.close();
      sharer.close();
    }
  });
});
