#!/bin/busybox sh
# /init of the rig's PV domU: load the modules for event channels and grants, then run the Node
# peer that test/xen/domu.test.ts drives from dom0 through xenstore. Its output is the domain's
# console (dom0's xenconsoled logs it). The domain ends when dom0 destroys it.
/bin/busybox --install -s /bin
export PATH=/bin HOME=/tmp XEN_VCHAN_BACKEND=real
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp && mount -t tmpfs tmpfs /tmp
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd; do modprobe "$m" || echo "domu: modprobe $m failed"; done
echo "domu: init at $(cut -d' ' -f1 /proc/uptime) s"
/usr/bin/node /app/test/xen/domu-peer.js
echo "domu: the peer exited with $? at $(cut -d' ' -f1 /proc/uptime) s"
exec sleep 100000
