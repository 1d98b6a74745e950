#!/usr/bin/env bash
# Issue 2's reference figures, side by side in one run: C libxenvchan over the mock vs a pipe
# between two processes (throughput, 64 KiB ring and writes, both directions) and round trips.
set -euo pipefail
cd "$(dirname "$0")/.."
B=bench/build/vchan_bench
export XEN_MOCK_DIR=${XEN_MOCK_DIR:-$(mktemp -d /tmp/xen-vchan-bench.XXXXXX)}
BYTES=${BYTES:-1000000000}
$B throughput 65536 65536 "$BYTES"
$B pipe-throughput 65536 "$BYTES"
$B latency 65536 20000
$B pipe-latency 20000
$B evtchn 20000
$B memcpy 4000000000
