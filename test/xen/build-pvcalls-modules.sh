#!/usr/bin/env bash
# Builds Linux's own PVCalls drivers (drivers/xen/pvcalls-back.c and pvcalls-front.c, which Debian's
# kernels do not build) as out-of-tree modules for the rig's kernel, so the Node frontend can meet
# Linux's backend and the Node backend Linux's frontend. From Debian packages only: the kernel's
# source (just the two files), headers and kbuild, extracted, not installed.
#   test/xen/build-pvcalls-modules.sh KERNEL_RELEASE OUT_DIR    e.g. 6.12.118+deb12-amd64
# Writes OUT_DIR/pvcalls-back.ko and pvcalls-front.ko, with a stamp; does nothing when they are
# there for this release. BTF for the modules is left out (it would need pahole; nothing loads it).
set -euo pipefail
kname=${1:?kernel release}
out=${2:?output directory}
base=${kname%-amd64} # 6.12.118+deb12
stamp="pvcalls modules for $kname"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -f "$out/pvcalls-back.ko" ]; then
  echo "rig: pvcalls modules cached ($kname)"
  exit 0
fi
t0=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
srcver=$(apt-cache policy "linux-image-$kname" | sed -n 's/ *Candidate: //p')
series=$(echo "$base" | cut -d. -f1-2) # 6.12
( cd "$work" && apt-get download -qq "linux-headers-$kname" "linux-headers-$base-common" "linux-kbuild-$base" \
    "linux-source-$series=$srcver" )
for d in "$work"/*.deb; do dpkg-deb -x "$d" "$work/root"; done
tarball=$(ls "$work"/root/usr/src/linux-source-"$series".tar.xz)
mkdir -p "$work/mod"
tar -xJf "$tarball" -C "$work" "linux-source-$series/drivers/xen/pvcalls-back.c" "linux-source-$series/drivers/xen/pvcalls-front.c" \
  "linux-source-$series/drivers/xen/pvcalls-front.h"
cp "$work/linux-source-$series"/drivers/xen/pvcalls-* "$work/mod/"
echo 'obj-m := pvcalls-back.o pvcalls-front.o' > "$work/mod/Makefile"
hdr="$work/root/usr/src/linux-headers-$kname"
# The headers' Makefile includes the common tree by its installed, absolute path: point it here.
sed -i "s#/usr/src/linux-headers-$base-common#$work/root/usr/src/linux-headers-$base-common#g" "$hdr/Makefile"
make -s -C "$hdr" M="$work/mod" CONFIG_DEBUG_INFO_BTF_MODULES= modules >"$work/build.log" 2>&1 || {
  tail -30 "$work/build.log"
  exit 1
}
mkdir -p "$out"
cp "$work/mod/pvcalls-back.ko" "$work/mod/pvcalls-front.ko" "$out/"
echo "$stamp" > "$out/stamp"
echo "rig: built Linux's pvcalls-back.ko and pvcalls-front.ko for $kname in $(( $(date +%s) - t0 )) s ($(modinfo -F vermagic "$out/pvcalls-back.ko"))"
