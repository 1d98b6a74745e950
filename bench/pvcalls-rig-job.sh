#!/bin/sh
# Runs inside the rig's dom0 (npm run bench:pvcalls:rig): bench/pvcalls-rig.ts on real Xen, the
# Node PVCalls frontend in a PV domU against the Node backend, Linux's pvcalls-back.ko and a plain
# VchanStream, side by side on the same emulated machine.
cd /mnt/host
export PATH=/mnt/host/.rig/bin:$PATH HOME=/tmp XEN_VCHAN_BACKEND=real XEN_RIG_DOMU=/mnt/host/.rig
node bench/dist/pvcalls-rig.js --runs 5 --out /mnt/host/.rig/pvcalls-bench.txt
