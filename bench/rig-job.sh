#!/bin/sh
# Runs inside the rig's dom0 (bench/rig.sh): a vs b on real Xen, dom0 <-> dom0.
cd /mnt/host
export PATH=/mnt/host/.rig/bin:$PATH HOME=/tmp
node --expose-gc bench/dist/run.js --inside-rig --json /mnt/host/.rig/bench.json
