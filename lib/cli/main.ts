/**
 * The `xen-vchan` command (bin/xen-vchan.js runs this): one file per command, the arguments'
 * checks in args.ts, the usage in usage.ts. A command loads the library only when it runs, so that
 * `--help` needs no addon and `mock` and `demo` choose the backend first.
 */
import * as path from 'node:path';

import { fail } from './args';
import { cmdDemo } from './demo';
import { cmdMock } from './mock';
import { cmdPcid } from './pcid';
import { cmdProxy } from './proxy';
import { cmdPvcalls } from './pvcalls';
import { cmdConnect, cmdListen } from './stdio';
import { commandUsage, USAGE } from './usage';

const COMMANDS = ['mock', 'listen', 'connect', 'proxy', 'demo', 'pcid', 'pvcalls'];

/** Runs the command ARGV names; the process's exit code says how it went. */
export async function main(argv: string[] = process.argv.slice(2)): Promise<void> {
  const [cmd, ...args] = argv;
  if (cmd && COMMANDS.includes(cmd) && (args.includes('--help') || args.includes('-h'))) {
    process.stdout.write(`${commandUsage(cmd)}\n`);
    return;
  }
  switch (cmd) {
    case '--version':
    case '-v':
    case 'version': {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const pkg = require(path.join(__dirname, '..', '..', '..', 'package.json')) as { version: string };
      process.stdout.write(`${pkg.version}\n`);
      return;
    }
    case 'mock':
      return cmdMock(args);
    case 'listen':
      return cmdListen(args);
    case 'connect':
      return cmdConnect(args);
    case 'proxy':
      return cmdProxy(args);
    case 'demo':
      return cmdDemo(args, __filename);
    case 'pcid':
      return cmdPcid(args);
    case 'pvcalls':
      return cmdPvcalls(args);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(`${USAGE}\n`);
      return;
    default:
      fail(`unknown command ${cmd}\n\n${USAGE}`);
  }
}

/** Runs main(); an error it throws is printed (with its code) and exits 1. */
export function run(): void {
  main().catch((e: Error & { code?: string }) => {
    process.stderr.write(`xen-vchan: ${e.message}${e.code ? ` (${e.code})` : ''}\n`);
    process.exit(1);
  });
}

// The demo's guest half forks this file.
if (require.main === module) run();
