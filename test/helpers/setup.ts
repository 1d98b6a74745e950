/**
 * Per test file: a mock broker of its own (a fresh XEN_MOCK_DIR), and after every test a check
 * that nothing leaked: grants, mapped pages, ports, watches, transactions, handles and xenstore
 * nodes of every domain are back where they were before the test.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, afterEach, beforeAll, beforeEach, expect } from 'vitest';

import { Xenstore } from '../../dist/cjs/index.js';
import { broker, config, onMock } from './env';

if (onMock) {
  process.env.XEN_MOCK_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'xen-vchan-test-'));
  process.env.XEN_MOCK_LINGER_MS = '300';
  // connect()'s shared xenstore connection closes with its last user, so the leak check after
  // each test need not wait for it (test/vchan.test.ts tests the linger itself).
  process.env.XEN_VCHAN_LINGER_MS = '0';
  if (config === 'mock') process.env.XEN_VCHAN_BACKEND = 'mock';
}

export interface Snapshot {
  [domid: string]: {
    grants: number;
    mappedPages: number;
    ports: number;
    watches: number;
    transactions: number;
    handles: number;
    nodes: number;
  };
}

/** Per-domain counts from the broker (through its CLI, so it works with either addon). */
export function snapshot(): Snapshot {
  const r = spawnSync(broker, ['status', '--json'], { env: process.env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`xenmockd status failed: ${r.stderr}`);
  const out: Snapshot = {};
  for (const d of JSON.parse(r.stdout).domains) {
    const { domid, connections, grants, mappedPages, ports, watches, transactions, nodes } = d;
    out[domid] = { grants, mappedPages, ports, watches, transactions, handles: connections, nodes };
  }
  return out;
}

function normalize(s: Snapshot): Snapshot {
  // A domain with nothing left is the same as a domain the broker forgot.
  const out: Snapshot = {};
  for (const [k, v] of Object.entries(s)) if (Object.values(v).some((n) => n !== 0)) out[k] = v;
  return out;
}

/** Waits (up to 3 s: closes reach the broker asynchronously) until the counts equal BEFORE. */
export async function expectNoLeaks(before: Snapshot): Promise<void> {
  const want = normalize(before);
  let now: Snapshot = {};
  for (let i = 0; i < 150; i++) {
    now = normalize(snapshot());
    if (JSON.stringify(now) === JSON.stringify(want)) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(now, 'mock resources after the test (leak check)').toEqual(want);
}

let before: Snapshot | undefined;
let keeper: Xenstore | undefined;
if (onMock) {
  // A handle held for the whole file keeps one broker up; the domains the tests play are
  // introduced up front, so the entries a toolstack writes for them are not taken for leaks.
  beforeAll(async () => {
    keeper = new Xenstore();
    const r = spawnSync(broker, ['introduce', '5', '6', '7'], { env: process.env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`xenmockd introduce failed: ${r.stderr}`);
    // vchan servers leave their parent directory behind (libxenvchan does too): make it up front.
    // Made by dom0, each inherits its domain's data/ permissions, so the domain owns it.
    for (const d of [0, 5, 6, 7]) await keeper.mkdir(`/local/domain/${d}/data/vchan`);
  });
  afterAll(() => keeper?.close());
  beforeEach(() => {
    before = snapshot();
  });
  afterEach(async () => {
    if (before) await expectNoLeaks(before);
  });
}
