/** `xen-vchan mock`: the mock hypervisor's broker, and the environment that runs Xen's programs on it. */
import { spawnSync } from 'node:child_process';

import { mockBrokerPath } from '../addon';
import { fail, lib, opts, parseDomid } from './args';
import { commandUsage, USAGE } from './usage';

/** `xen-vchan mock`. */
export function cmdMock(args: string[]): void {
  process.env.XEN_VCHAN_BACKEND = process.env.XEN_VCHAN_BACKEND || 'mock';
  // mockBrokerPath(): the broker that belongs with the mock addon this package loads (prebuilt or
  // built here).
  const [sub, ...rest] = args;
  if (sub === 'env') {
    const o = opts(rest, { domid: { type: 'string' } });
    const domid = o.domid === undefined ? undefined : parseDomid(o.domid);
    const env: Record<string, string> = lib().mockEnv(domid);
    env.XEN_MOCK_DIR = env.XEN_MOCK_DIR || spawnSync(mockBrokerPath(), ['dir']).stdout?.toString().trim() || '';
    if (!env.XEN_MOCK_DIR) delete env.XEN_MOCK_DIR;
    for (const [k, v] of Object.entries(env)) process.stdout.write(`export ${k}=${JSON.stringify(v)}\n`);
    return;
  }
  if (sub === 'introduce' || sub === 'destroy') {
    if (rest.length === 0 || (sub === 'destroy' && rest.length !== 1)) fail(commandUsage('mock'));
    rest.forEach((d) => parseDomid(d, `mock ${sub}: the domain`));
  }
  if (['status', 'reset', 'introduce', 'destroy', 'shutdown'].includes(sub)) {
    const r = spawnSync(mockBrokerPath(), [sub, ...rest], { stdio: 'inherit' });
    process.exit(r.status ?? 1);
  }
  fail(USAGE);
}
