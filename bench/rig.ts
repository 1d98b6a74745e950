/** The real-Xen part of `npm run bench`: a vs b in the QEMU rig (bench/rig.sh), or an earlier run of it. */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { flag, optionValue, root } from './common';
import type { LatencySummary } from './latency';
import type { Baseline, ThroughputRow } from './throughput';

/** What the rig run reports (run.ts --inside-rig), or why there is none. */
export type RigResult =
  | { skipped: string }
  | {
      skipped?: undefined;
      /** Where it came from, for --rig-json. */
      from?: string;
      throughput: ThroughputRow[];
      baselines?: Baseline[];
      latency: { a: LatencySummary; b: LatencySummary; c?: LatencySummary };
    };

export function rigPart(): RigResult {
  // test/xen/kernel.sh's default cache: the kernel's own folder.
  const kernel = process.env.XEN_RIG_KERNEL || '6.12';
  const cache = process.env.XEN_RIG_CACHE || path.join(os.homedir(), '.cache', 'xen-vchan-rig', kernel);
  if (flag('--no-rig')) return { skipped: '--no-rig' };
  // --rig-json FILE: the rig part from an earlier `bash bench/rig.sh` (its own side-by-side run).
  const given = optionValue('--rig-json');
  if (given)
    return {
      ...(JSON.parse(fs.readFileSync(given, 'utf8')) as RigResult & { skipped?: undefined }),
      from: `${given}, recorded ${fs.statSync(given).mtime.toISOString().slice(0, 16)}Z`,
    };
  if (!fs.existsSync(path.join(cache, 'stamp')))
    return { skipped: `no rig built (npm run test:xen builds it into ${cache})` };
  const r = spawnSync('npm', ['run', '-s', 'bench:rig'], { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
  const file = path.join(root, '.rig', 'bench.json');
  if (r.status !== 0 || !fs.existsSync(file)) return { skipped: `the rig run failed (exit ${r.status})` };
  return JSON.parse(fs.readFileSync(file, 'utf8')) as RigResult;
}
