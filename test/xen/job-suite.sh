#!/bin/sh
# Runs inside the rig's dom0 (from test/xen/boot.sh): the project's vitest suite against the REAL
# backend (real libxenvchan, /dev/xen/evtchn, gntdev, gntalloc, xenstored), dom0 <-> dom0, plus
# test/xen/domu.test.ts, which boots a PV domU running Node (XEN_RIG_DOMU: its kernel and initramfs).
cd /mnt/host
export PATH=/mnt/host/.rig/bin:$PATH HOME=/tmp XEN_RIG_DOMU=/mnt/host/.rig
# XEN_RIG_REPEAT reaches the tests from the host's environment.
[ -f /mnt/host/.rig/env.sh ] && . /mnt/host/.rig/env.sh
# Native rollup instead of the WebAssembly build, in this mount namespace only (run.sh).
mount --bind /mnt/host/.rig/rollup /mnt/host/node_modules/rollup || exit 1
node --version
t0=$(cut -d' ' -f1 /proc/uptime)
# The system's libxenvchan at the other end (test/xen-releases.test.ts).
export XEN_VCHAN_RELEASE=$(xl info 2>/dev/null | awk '$1 == "xen_major" {M=$3} $1 == "xen_minor" {m=$3} END {print M "." m}')
export XEN_VCHAN_RELEASE_PEER=/mnt/host/.rig/bin/vchan_echo
# XEN_RIG_TESTS (from the host): vitest's filters, to run some files only (e.g. test/xen/domu.test.ts).
# shellcheck disable=SC2086
XEN_VCHAN_BACKEND=real XEN_VCHAN_TEST_CONFIG=real node node_modules/vitest/vitest.mjs run --reporter=default \
  --reporter=json --outputFile=/mnt/host/.rig/suite.json ${XEN_RIG_TESTS:-}
rc=$?
echo "rig: vitest finished with $rc, $(cut -d' ' -f1 /proc/uptime) s since boot (started at $t0 s)"
umount /mnt/host/node_modules/rollup
exit $rc
