'use strict';
// Boots the rig's PV domU (its kernel and the initramfs test/xen/run.sh builds, which starts
// test/xen/domu-peer.js) and drives the peer inside it through xenstore. Runs in the rig's dom0;
// test/xen/domu.test.ts and bench/pvcalls-rig.ts use it, each with its own Xenstore handle (this
// module does not load the library: a vitest suite and a plain script load it differently).
//   dom0 writes  /local/domain/<D>/data/peer/cmd/<N>  {"id":N,"op":...,...}
//   the peer     /local/domain/<D>/data/peer/result/<N>/<phase>  {...}  ("-" for its last result)
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');

function xl(...args) {
  return execFileSync('xl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The console of domain NAME as xenconsoled logged it. */
function consoleLog(name) {
  try {
    return fs.readFileSync(`/var/log/xen/console/guest-${name}.log`, 'utf8');
  } catch {
    return '(no console log)';
  }
}

class DomU {
  /**
   * @param {string} name
   * @param {number} domid
   * @param {import('../../dist/cjs/index.js').Xenstore} xs
   */
  constructor(name, domid, xs) {
    this.name = name;
    this.domid = domid;
    this.xs = xs;
    this.home = `/local/domain/${domid}`;
    this.nextId = 0;
  }

  /** The domU's console as xenconsoled logged it. */
  consoleLog() {
    return consoleLog(this.name);
  }

  /**
   * Sends a command to the peer; resolves with a function that awaits one phase's result (an
   * Error when the peer reports one or says nothing within timeoutMs).
   * @param {string} op
   * @param {Record<string, unknown>} [args]
   */
  async command(op, args = {}) {
    const id = ++this.nextId;
    const xs = this.xs;
    await xs.write(`${this.home}/data/peer/cmd/${id}`, JSON.stringify({ id, op, ...args }));
    return async (phase = '-', timeoutMs = 60_000) => {
      const key = `${this.home}/data/peer/result/${id}/${phase}`;
      const w = await xs.watch(key);
      const t = setTimeout(() => void w.close(), timeoutMs);
      const seen = new Promise((resolve) =>
        w.on('change', () => void xs.tryRead(key).then((v) => v !== undefined && resolve(v))),
      );
      const ended = (async () => {
        for await (const _ of w);
      })();
      try {
        const v = await Promise.race([seen, ended.then(() => undefined)]);
        if (v === undefined)
          throw new Error(
            `no ${op}/${phase} result from the domU in ${timeoutMs} ms\n${this.consoleLog().slice(-3000)}`,
          );
        const r = JSON.parse(/** @type {string} */ (v));
        if (r.error) throw new Error(`domU ${op}: ${r.error}`);
        return r;
      } finally {
        clearTimeout(t);
        await w.close();
      }
    };
  }

  /** xl destroy (quietly, if it is already gone); the console log stays readable. */
  destroy() {
    try {
      xl('destroy', this.name);
    } catch {
      // already gone
    }
  }
}

/**
 * Creates the domU from RIG (vmlinuz and domu.cpio.zst) and waits for its Node peer; XS is the
 * caller's Xenstore handle, which the DomU uses and the caller closes.
 * @param {{ rig: string, xs: import('../../dist/cjs/index.js').Xenstore, name?: string, memory?: number,
 *   readyTimeoutMs?: number }} o
 * @returns {Promise<DomU>}
 */
async function bootDomU({ rig, xs, name = 'vchan-domu', memory = 1024, readyTimeoutMs = 240_000 }) {
  const cfg = `/tmp/${name}.cfg`;
  fs.writeFileSync(
    cfg,
    [
      `name = "${name}"`,
      'type = "pv"',
      `kernel = "${rig}/vmlinuz"`,
      `ramdisk = "${rig}/domu.cpio.zst"`,
      'extra = "console=hvc0 rdinit=/init"',
      `memory = ${memory}`,
      'vcpus = 1',
      'on_crash = "preserve"',
      '',
    ].join('\n'),
  );
  xl('create', cfg);
  const domid = Number(xl('domid', name).trim());
  const d = new DomU(name, domid, xs);
  const ready = `${d.home}/data/peer/ready`;
  // Node starts in the domU after its kernel boots; the peer writes data/peer/ready then.
  const w = await d.xs.watch(ready);
  const t = setTimeout(() => void w.close(), readyTimeoutMs);
  for await (const _ of w) if ((await d.xs.tryRead(ready)) !== undefined) break;
  clearTimeout(t);
  await w.close();
  if ((await d.xs.tryRead(ready)) === undefined)
    throw new Error(`the domU's Node peer never became ready\n${d.consoleLog().slice(-3000)}`);
  return d;
}

module.exports = { bootDomU, consoleLog, DomU, xl };
