#!/bin/sh
# /init of the rig's dom0: bring up Xen's services, mount the host's share, run the job the host
# left there, record its exit status, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs virtio_pci 9pnet_virtio 9p; do modprobe "$m"; done
mount -t xenfs xenfs /proc/xen
# xl keeps locks in /run/xen; xenconsoled logs guests into /var/log/xen/console and, without that
# directory, never writes a domain's console/tty node, so `xl create` times out waiting for it.
mkdir -p /var/run/xenstored /var/lib/xenstored /var/log/xen/console /run/xen /var/lib/xen /mnt/host
xenstored --pid-file /run/xenstored.pid
xen-init-dom0
xenconsoled --log=guest
busybox ifconfig lo 127.0.0.1 up
echo '127.0.0.1 localhost' > /etc/hosts
echo "rig: dom0 up at $(cut -d' ' -f1 /proc/uptime) s"
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host0 /mnt/host; then
  if [ -f /mnt/host/.rig/job.sh ]; then
    date > /mnt/host/.rig/job.started
    sh /mnt/host/.rig/job.sh > /mnt/host/.rig/job.log 2>&1
    echo $? > /mnt/host/.rig/job.rc
    echo "rig: job finished with $(cat /mnt/host/.rig/job.rc) at $(cut -d' ' -f1 /proc/uptime) s"
  else
    echo "rig: no job in /mnt/host/.rig/job.sh"
  fi
  sync
  umount /mnt/host
else
  echo "rig: cannot mount the host share"
fi
busybox poweroff -f
