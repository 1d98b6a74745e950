// `xen-vchan listen` / `connect`: every byte both ways or exit 1, for every shape stdin takes.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { onMock, root } from './helpers/env';
import { uniquePath } from './helpers/util';

const cli = path.join(root, 'bin', 'xen-vchan.js');
const SIZE = 20_000_000;
let dir: string;
let fileA: string;
let fileB: string;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'xv-cli-'));
  fileA = path.join(dir, 'a.bin');
  fileB = path.join(dir, 'b.bin');
  fs.writeFileSync(fileA, randomBytes(SIZE));
  fs.writeFileSync(fileB, randomBytes(SIZE));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** How stdin is given: a file, a pipe the test writes the file into, /dev/null, or closed (<&-). */
type Stdin = { file: string } | { pipe: string } | 'null' | 'closed';

interface Run {
  p: ChildProcess;
  out: string;
  done: Promise<{ code: number | null; stderr: string; out: Buffer }>;
}

/** The CLI as DOMID with ARGS, stdout to a file; stdin as STDIN says. */
function run(domid: number, args: string[], stdin: Stdin, name: string): Run {
  const out = path.join(dir, `${name}.out`);
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const redir =
    stdin === 'null' ? '< /dev/null' : stdin === 'closed' ? '<&-' : 'file' in stdin ? `< ${q(stdin.file)}` : '';
  const p = spawn(
    'bash',
    ['-c', `exec ${q(process.execPath)} ${q(cli)} ${args.map(q).join(' ')} ${redir} > ${q(out)}`],
    {
      env: { ...process.env, XEN_MOCK_DOMID: String(domid) },
      stdio: [typeof stdin === 'object' && 'pipe' in stdin ? 'pipe' : 'ignore', 'ignore', 'pipe'],
    },
  );
  if (typeof stdin === 'object' && 'pipe' in stdin) {
    p.stdin!.on('error', () => undefined);
    fs.createReadStream(stdin.pipe).pipe(p.stdin!);
  }
  const err: Buffer[] = [];
  p.stderr!.on('data', (d: Buffer) => err.push(d));
  // 'close', not 'exit': stderr may still hold the last words when the process has exited.
  const done = once(p, 'close').then(([code]) => ({
    code: code as number | null,
    stderr: Buffer.concat(err).toString(),
    out: fs.readFileSync(out),
  }));
  return { p, out, done };
}

/** A listen in dom0 for domain 5 and a connect from domain 5, with the stdin and flags given. */
function pair(ls: Stdin, cs: Stdin, lflags: string[] = [], cflags: string[] = []) {
  const p = uniquePath('cli-stdio');
  const l = run(0, ['listen', '--domid', '5', '--path', p, ...lflags], ls, `l-${p.split('/').pop()}`);
  const c = run(
    5,
    ['connect', '--domid', '0', '--path', `/local/domain/0/${p}`, '--timeout', '20000', ...cflags],
    cs,
    `c-${p.split('/').pop()}`,
  );
  return { l, c };
}

const expectClean = (r: { code: number | null; stderr: string }) => {
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
};

describe.runIf(onMock)('xen-vchan listen/connect: nothing lost, or exit 1', () => {
  const shapes: [string, () => Stdin, () => Stdin][] = [
    ['a file; the other end /dev/null', () => ({ file: fileA }), () => 'null'],
    ['a pipe; the other end a closed stdin', () => ({ pipe: fileA }), () => 'closed'],
  ];
  for (const [what, sender, idle] of shapes) {
    it(`20 MB dom0 -> domain 5, stdin ${what}: both exit 0, SHA-256 equal`, async () => {
      const { l, c } = pair(sender(), idle());
      const [lr, cr] = await Promise.all([l.done, c.done]);
      expectClean(lr);
      expectClean(cr);
      expect(lr.out.length).toBe(0);
      expect(sha(cr.out)).toBe(sha(fs.readFileSync(fileA)));
    });
    it(`20 MB domain 5 -> dom0, stdin ${what}: both exit 0, SHA-256 equal`, async () => {
      const { l, c } = pair(idle(), sender());
      const [lr, cr] = await Promise.all([l.done, c.done]);
      expectClean(lr);
      expectClean(cr);
      expect(cr.out.length).toBe(0);
      expect(sha(lr.out)).toBe(sha(fs.readFileSync(fileA)));
    });
  }

  it('20 MB each way at once (a file one side, a pipe the other): both exit 0, SHA-256 equal', async () => {
    const { l, c } = pair({ file: fileA }, { pipe: fileB });
    const [lr, cr] = await Promise.all([l.done, c.done]);
    expectClean(lr);
    expectClean(cr);
    expect(sha(cr.out)).toBe(sha(fs.readFileSync(fileA)));
    expect(sha(lr.out)).toBe(sha(fs.readFileSync(fileB)));
  });

  it('--raw --send-only to a --raw receiver, and a --raw --recv-only receiver of a --send-only sender', async () => {
    const a = pair({ file: fileA }, 'null', ['--raw', '--send-only'], ['--raw']);
    const [alr, acr] = await Promise.all([a.l.done, a.c.done]);
    expectClean(alr);
    expectClean(acr);
    expect(sha(acr.out)).toBe(sha(fs.readFileSync(fileA)));
    const b = pair('closed', { pipe: fileB }, ['--raw', '--recv-only'], ['--raw', '--send-only']);
    const [blr, bcr] = await Promise.all([b.l.done, b.c.done]);
    expectClean(blr);
    expectClean(bcr);
    expect(sha(blr.out)).toBe(sha(fs.readFileSync(fileB)));
  });

  it('raw, both sending, one --send-only: each side says what it lost and exits 1', async () => {
    const { l, c } = pair({ file: fileA }, { file: fileB }, ['--raw', '--send-only'], ['--raw']);
    const [lr, cr] = await Promise.all([l.done, c.done]);
    // The receiver still got all of the --send-only side's bytes.
    expect(sha(cr.out)).toBe(sha(fs.readFileSync(fileA)));
    // The --send-only side threw away what the other sent it, and says so.
    expect({ code: lr.code, stderr: lr.stderr }).toMatchObject({ code: 1 });
    const discarded = Number(
      /the peer sent (\d+) bytes, which --send-only does not write to stdout/.exec(lr.stderr)?.[1],
    );
    expect(discarded).toBeGreaterThan(0);
    if (cr.code === 0) {
      // It finished sending before the --send-only side closed: all of it reached that side.
      expect(cr.stderr).toBe('');
      expect(discarded).toBe(SIZE);
    } else {
      // The --send-only side closed first: what did not reach it is said.
      expect(cr.code).toBe(1);
      expect(cr.stderr).toMatch(
        /the peer closed the channel (with \d+ bytes we sent still unread|before the end of stdin)/,
      );
    }
  });

  it('a sender killed mid-transfer: the receiver exits 1 and says the data did not end', async () => {
    // The client sends (a killed server would leave its xenstore entry behind, as on Xen).
    const { l, c } = pair('null', { pipe: fileA });
    // Once some data has arrived, the sender dies.
    while (!fs.existsSync(l.out) || fs.statSync(l.out).size < 1_000_000) await new Promise((r) => setTimeout(r, 10));
    c.p.kill('SIGKILL');
    const lr = await l.done;
    await c.done;
    expect(lr.code).toBe(1);
    expect(lr.stderr).toMatch(/ECONNRESET: .*the channel closed before the peer's end of data/);
    expect(lr.out.length).toBeLessThan(SIZE);
  });

  it('a stdout that closes early: the receiver exits 1, and the sender hears it and exits 1', async () => {
    const p = uniquePath('cli-stdio');
    const l = run(0, ['listen', '--domid', '5', '--path', p], { file: fileA }, 'l-early');
    const c = spawn(
      'bash',
      [
        '-c',
        `${process.execPath} ${cli} connect --domid 0 --path /local/domain/0/${p} --timeout 20000 < /dev/null | head -c 1000 > /dev/null; echo "\${PIPESTATUS[0]}" >&2`,
      ],
      { env: { ...process.env, XEN_MOCK_DOMID: '5' }, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const err: Buffer[] = [];
    c.stderr!.on('data', (d: Buffer) => err.push(d));
    await once(c, 'close'); // not 'exit': the shell's last line may still be in its stderr pipe then
    const lr = await l.done;
    const text = Buffer.concat(err).toString();
    expect(text).toMatch(/stdout: write EPIPE: what the peer sent was not all written/);
    expect(text.trim().split('\n').pop()).toBe('1');
    expect(lr.code).toBe(1);
    // Its ERROR frame, or the closed channel under a write still waiting: either way it says EPIPE.
    expect(lr.stderr).toMatch(/the other side failed: EPIPE|libxenvchan_write failed: EPIPE/);
  });

  it('--send-only with --recv-only, and --keep without --recv-only, are refused (exit 2)', async () => {
    const a = run(0, ['listen', '--domid', '5', '--path', 'x', '--send-only', '--recv-only'], 'null', 'bad1');
    const b = run(0, ['listen', '--domid', '5', '--path', 'x', '--keep'], 'null', 'bad2');
    const [ar, br] = await Promise.all([a.done, b.done]);
    expect(ar.code).toBe(2);
    expect(ar.stderr).toMatch(/--send-only and --recv-only: choose one/);
    expect(br.code).toBe(2);
    expect(br.stderr).toMatch(/--keep .* add --recv-only/);
  });
});
