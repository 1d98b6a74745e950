#!/bin/sh
# Runs inside the rig's dom0 (npm run bench:pcid:rig): bench/pcid.ts on real Xen, server and
# clients in dom0, vchan and a Unix socket side by side on the same emulated machine.
cd /mnt/host
export PATH=/mnt/host/.rig/bin:$PATH HOME=/tmp XEN_VCHAN_BACKEND=real
node bench/dist/pcid.js --runs 5 --seconds 2 | tee /mnt/host/.rig/pcid-bench.txt
