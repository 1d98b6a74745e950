import { defineConfig } from 'vitest/config';

// One suite for every backend: XEN_VCHAN_BACKEND picks it (see test/helpers/env.ts).
// Files run in their own processes, each against a mock broker of its own.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    // --expose-gc: the finalizer test forces collections.
    poolOptions: { forks: { execArgv: ['--expose-gc'] } },
    maxWorkers: 2,
    minWorkers: 1,
    testTimeout: 60_000,
    hookTimeout: 30_000,
    setupFiles: ['test/helpers/setup.ts'],
    reporters: process.env.CI ? ['default'] : ['default'],
  },
});
