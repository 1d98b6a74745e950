#!/bin/sh
# Runs inside the rig's dom0 (from test/xen/boot.sh): the vitest suite against the REAL backend
# (real libxenvchan, /dev/xen/evtchn, gntdev, gntalloc, xenstored), dom0 <-> dom0.
set -e
cd /mnt/host
export PATH=/mnt/host/.rig/bin:$PATH HOME=/tmp
node --version
ls -l /dev/xen/
XEN_VCHAN_BACKEND=real XEN_VCHAN_TEST_CONFIG=real node node_modules/vitest/vitest.mjs run \
  --reporter=default --reporter=json --outputFile=/mnt/host/.rig/vitest-real.json
