#!/usr/bin/env bash
# The arm64 dom0less rig's images (npm run test:xen:arm): Debian bookworm's Xen 4.17 for arm64 and
# its 6.12 cloud kernel, a device tree with dom0 and two dom0less domUs and the static event
# channels between them, and one initramfs for all three: busybox, Xen's device modules, Node 20
# (scripts/arm64-root.sh), this package as npm would install it (the packed tarball with the
# linux-arm64 prebuilds) and test/xen-arm/peer.js. Packages come from the mirror this machine's apt
# uses, through a private apt list. Cached in XEN_RIG_ARM_CACHE (default ~/.cache/xen-vchan-rig/arm64);
# the initramfs is rebuilt each time (it carries this tree).
#   test/xen-arm/build.sh   ->  prints the directory with xen, Image, initrd.gz, rig.dtb
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${XEN_RIG_ARM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xen-vchan-rig/arm64}
kver=${XEN_RIG_ARM_KERNEL:-6.12.118+deb12-cloud-arm64}
# Xen's runtime libraries for the real addon (bookworm's 4.17, as dom0 would have them).
xenlibs="libxenevtchn1 libxengnttab1 libxenstore4 libxentoolcore1 libxentoollog1"
pkgs="xen-hypervisor-4.17-arm64 linux-image-$kver-unsigned busybox-static $xenlibs"
. "$here/machine.sh"
mkdir -p "$cache/debs" "$cache/x" "$cache/out"
for t in qemu-system-aarch64 dtc; do command -v $t >/dev/null || { echo "rig-arm: apt-get install qemu-system-arm device-tree-compiler" >&2; exit 1; }; done

if [ "$(cat "$cache/stamp" 2>/dev/null)" != "$pkgs" ]; then
  mirror=$(bash "$repo/scripts/debian-mirror.sh")
  security=$( (cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs: *//p' | tr ' ' '\n'
               awk '$1 == "deb" {print $2}' /etc/apt/sources.list 2>/dev/null) | grep security | head -1 || true)
  ap=$cache/apt
  rm -rf "$ap" && mkdir -p "$ap/lists/partial" "$ap/cache/archives/partial" && touch "$ap/status"
  key=/usr/share/keyrings/debian-archive-keyring.gpg
  { echo "deb [arch=arm64 signed-by=$key] $mirror bookworm main"
    echo "deb [arch=arm64 signed-by=$key] $mirror bookworm-updates main"
    [ -z "$security" ] || echo "deb [arch=arm64 signed-by=$key] $security bookworm-security main"; } >"$ap/sources.list"
  opts=(-o "Dir::Etc::sourcelist=$ap/sources.list" -o Dir::Etc::sourceparts=/nonexistent -o "Dir::State::lists=$ap/lists"
    -o "Dir::Cache=$ap/cache" -o "Dir::State::status=$ap/status" -o APT::Architecture=arm64 -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update >"$cache/apt.log" 2>&1 || { tail "$cache/apt.log" >&2; exit 1; }
  rm -rf "$cache/debs" "$cache/x" && mkdir -p "$cache/debs" "$cache/x"
  ( cd "$cache/debs" && for p in $pkgs; do apt-get "${opts[@]}" download "$p:arm64" >/dev/null; done )
  for d in "$cache"/debs/*.deb; do n=$(basename "$d" | cut -d_ -f1); mkdir -p "$cache/x/$n"; dpkg-deb -x "$d" "$cache/x/$n"; done
  echo "$pkgs" >"$cache/stamp"
fi
xen=$(ls "$cache"/x/xen-hypervisor-4.17-arm64/boot/xen-4.*-arm64 | grep -v -e config -e efi | head -1)
cp "$xen" "$cache/out/xen"
cp "$cache/x/linux-image-$kver-unsigned/boot/vmlinuz-$kver" "$cache/out/Image"

# The initramfs: the Node 20 root, busybox, the modules, init, the package and the peer.
node_root=$(bash "$repo/scripts/arm64-root.sh")
r=$(mktemp -d)
trap 'rm -rf "$r"' EXIT
cp -a "$node_root/." "$r/"
rm -f "$r/.xen-vchan-stamp"
mkdir -p "$r"/{bin,sbin,proc,sys,dev,tmp,lib/modules,app/node_modules/xen-vchan}
cp "$cache/x/busybox-static/bin/busybox" "$r/bin/busybox"
for p in $xenlibs; do cp -a "$cache/x/$p/usr/lib/aarch64-linux-gnu/." "$r/usr/lib/aarch64-linux-gnu/"; done
m=$cache/x/linux-image-$kver-unsigned/lib/modules/$kver/kernel/drivers/xen
for k in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd; do xz -dc "$m/$k.ko.xz" >"$r/lib/modules/$k.ko"; done
install -m755 "$here/init" "$r/init"
( cd "$repo" && npm pack --silent --pack-destination "$r/tmp" >/dev/null )
tar -xzf "$r"/tmp/xen-vchan-*.tgz -C "$r/app/node_modules/xen-vchan" --strip-components=1
rm -f "$r"/tmp/xen-vchan-*.tgz
# The package's runtime dependencies (pure JavaScript), as npm would install them beside it.
( cd "$repo" && npm ls --omit=dev --all --parseable ) | tail -n +2 | while read -r d; do
  rel=${d#"$repo/node_modules/"}
  mkdir -p "$r/app/node_modules/$(dirname "$rel")" && cp -a "$d" "$r/app/node_modules/$rel"
done
rm -rf "$r/app/node_modules/node-addon-api" # headers, for building only
rm -rf "$r/app/node_modules/xen-vchan/prebuilds/linux-x64" "$r/app/node_modules/xen-vchan/src" "$r/app/node_modules/xen-vchan/native"
[ -f "$r/app/node_modules/xen-vchan/prebuilds/linux-arm64/xen_vchan_real.glibc.node" ] ||
  { echo "rig-arm: no linux-arm64 prebuilds (npm run prebuild)" >&2; exit 1; }
cp "$here/peer.js" "$r/app/peer.js"
( cd "$r" && find . | cpio -o -H newc --quiet | gzip -1 ) >"$cache/out/initrd.gz"

# The device tree: QEMU's own for this machine, plus /chosen with the domains and static channels.
qemu-system-aarch64 $QMACHINE -machine dumpdtb="$cache/out/virt.dtb" >/dev/null 2>&1
dtc -q -I dtb -O dts "$cache/out/virt.dtb" >"$cache/out/virt.dts"
size() { printf '0x%x' "$(stat -c %s "$1")"; }
sed -e "s/@KSIZE@/$(size "$cache/out/Image")/g" -e "s/@ISIZE@/$(size "$cache/out/initrd.gz")/g" \
  -e "s|@XEN_ARGS@|$XEN_ARGS|" -e "s|@DOM0_ARGS@|$DOM0_ARGS|" -e "s/@DOMU_MEM@/$DOMU_MEM/g" \
  -e "s/@K@/${KERNEL_AT#0x}/g" -e "s/@I@/${INITRD_AT#0x}/g" "$here/dom0less.dtsi" >"$cache/out/dom0less.dtsi"
cat "$cache/out/virt.dts" "$cache/out/dom0less.dtsi" >"$cache/out/rig.dts"
dtc -q -I dts -O dtb -o "$cache/out/rig.dtb" "$cache/out/rig.dts"
echo "rig-arm: initramfs $(( $(stat -c %s "$cache/out/initrd.gz") >> 20 )) MiB; Xen $(basename "$xen"), Linux $kver" >&2
echo "$cache/out"
