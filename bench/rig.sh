#!/usr/bin/env bash
# The real-Xen part of `npm run bench`: the C reference built against Debian's libxenvchan, then
# bench/run.ts --inside-rig in the rig's dom0 (dom0 <-> dom0), results in .rig/bench.json.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .rig
cc -O2 -Wall -o .rig/vchan_bench_real bench/native/vchan_bench.c $(pkg-config --cflags --libs xenvchan xenevtchn)
npm run -s build:bench
rm -f .rig/bench.json
npm run -s test:xen -- bench/rig-job.sh
