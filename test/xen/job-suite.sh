#!/bin/sh
# Runs inside the rig's dom0 (from test/xen/boot.sh): the vitest suite against the REAL backend
# (real libxenvchan, /dev/xen/evtchn, gntdev, gntalloc, xenstored), dom0 <-> dom0, one vitest
# process per file (a single run of all files crashes vitest itself under emulation: README.md).
cd /mnt/host
export PATH=/mnt/host/.rig/bin:$PATH HOME=/tmp
node --version
rc=0
for f in test/*.test.ts; do
  XEN_VCHAN_BACKEND=real XEN_VCHAN_TEST_CONFIG=real node node_modules/vitest/vitest.mjs run "$f" --reporter=default \
    --reporter=json --outputFile="/mnt/host/.rig/$(basename "$f" .test.ts).json" || rc=1
done
exit $rc
