#!/usr/bin/env bash
# Builds the real-Xen test rig from Debian packages only, cached between runs:
#   xen.elf       Xen 4.17 from xen-hypervisor-4.17-amd64 (gunzipped: QEMU's multiboot loader wants an ELF)
#   vmlinuz       Debian's kernel: XEN_RIG_KERNEL=6.12 (the default) is the one linux-image-6.12-amd64
#                 depends on (bookworm-security; it has IOCTL_EVTCHN_BIND_STATIC), 6.1 the one
#                 linux-image-amd64 depends on (bookworm's own)
#   dom0.cpio.zst a debootstrapped bookworm with xen-utils-4.17, the kernel's modules and our /init
#   domu/         the base of the PV domU's initramfs: a static busybox and the kernel modules a
#                 guest needs for vchan (run.sh adds Node, its libraries and the project per run)
# The cache is $XEN_RIG_CACHE (default ~/.cache/xen-vchan-rig/<kernel>); a stamp of the package
# versions decides whether to rebuild. The package mirror is read from this machine's own apt sources.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/kernel.sh"
cache=$XEN_RIG_CACHE
mkdir -p "$cache"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

need=()
for p in qemu-system-x86 debootstrap zstd cpio kmod xz-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

kpkg=$(apt-cache depends "$kmeta" | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
xver=$(apt-cache policy xen-hypervisor-4.17-amd64 | sed -n 's/ *Candidate: //p')
kver=$(apt-cache policy "$kpkg" | sed -n 's/ *Candidate: //p')
bver=$(apt-cache policy busybox-static | sed -n 's/ *Candidate: //p')
stamp="xen=$xver kernel=$kpkg/$kver init=$(sha256sum "$here/dom0-init.sh" | cut -c1-16)"
dstamp="kernel=$kpkg/$kver busybox-static=$bver modules=evtchn,gntdev,gntalloc,privcmd"
if [ -f "$cache/stamp" ] && [ "$(cat "$cache/stamp")" = "$stamp" ] && [ -f "$cache/dom0.cpio.zst" ] &&
   [ -f "$cache/domu.stamp" ] && [ "$(cat "$cache/domu.stamp")" = "$dstamp" ]; then
  echo "rig: cached in $cache ($stamp; domU: $dstamp)"
  exit 0
fi

# The mirror this machine already uses (never written into the repository).
mirror=$(bash "$here/../../scripts/debian-mirror.sh")

work=$(mktemp -d)
trap '$sudo rm -rf "$work"' EXIT
t0=$(date +%s)
( cd "$work" && apt-get download -qq xen-hypervisor-4.17-amd64 "$kpkg" busybox-static )
dpkg-deb -x "$work"/xen-hypervisor-4.17-amd64_*.deb "$work/xen"
gunzip -c "$work"/xen/boot/xen-4.17-amd64.gz > "$cache/xen.elf"
dpkg-deb -x "$work/${kpkg}"_*.deb "$work/kernel"
cp "$work"/kernel/boot/vmlinuz-* "$cache/vmlinuz"
kname=$(ls "$work/kernel/lib/modules")
$sudo depmod -b "$work/kernel" "$kname"

# Modules NAMES of the kernel (with what they depend on), copied into ROOT with a modules.dep.
# With UNPACK=1, .ko.xz modules (6.12 ships them so) are stored unpacked: busybox's modprobe loads
# the packed ones too, but only after the kernel has refused each once ("Invalid ELF header magic").
install_modules() {
  local root=$1; shift
  local files f
  files=$(for m in "$@"; do
    modprobe -d "$work/kernel" -S "$kname" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}'
  done | sort -u)
  for f in $files; do $sudo install -D -m 0644 "$f" "$root/${f#"$work/kernel/"}"; done
  [ "${UNPACK:-0}" = 1 ] && $sudo find "$root/lib/modules" -name '*.ko.xz' -exec xz -d {} +
  $sudo cp "$work/kernel/lib/modules/$kname"/modules.order "$work/kernel/lib/modules/$kname"/modules.builtin* "$root/lib/modules/$kname/"
  $sudo depmod -b "$root" "$kname"
  echo "rig: $(echo "$files" | wc -w) kernel modules in $(basename "$root")"
}

# The domU's base: busybox (static: the guest has no libc of its own until run.sh adds one) and
# the modules for event channels and grants.
rm -rf "$cache/domu"
dpkg-deb -x "$work"/busybox-static_*.deb "$work/busybox"
install -D -m 0755 "$work/busybox/bin/busybox" "$cache/domu/bin/busybox"
UNPACK=1 install_modules "$cache/domu" xen-evtchn xen-gntdev xen-gntalloc xen-privcmd
echo "$dstamp" > "$cache/domu.stamp"
if [ -f "$cache/stamp" ] && [ "$(cat "$cache/stamp")" = "$stamp" ] && [ -f "$cache/dom0.cpio.zst" ]; then
  echo "rig: built the domU base in $(( $(date +%s) - t0 )) s; dom0 cached"
  exit 0
fi

root="$work/dom0"
$sudo debootstrap --variant=minbase \
  --include=xen-utils-4.17,xenstore-utils,libxenmisc4.17,busybox,kmod,procps \
  bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; exit 1; }
# The security updates, so the tools match the hypervisor's point release.
$sudo cp -r /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/" 2>/dev/null || true
[ -f /etc/apt/sources.list ] && $sudo cp /etc/apt/sources.list "$root/etc/apt/sources.list"
$sudo chroot "$root" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq upgrade' >/dev/null
$sudo chroot "$root" apt-get clean
# Only the modules dom0 loads (and what they depend on): the whole tree would triple the image.
install_modules "$root" xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs virtio_pci 9pnet_virtio 9p
$sudo install -m 0755 "$here/dom0-init.sh" "$root/init"
( cd "$root" && $sudo find . -print0 | $sudo cpio --null -o -H newc --quiet ) | zstd -q -T0 -6 -o "$cache/dom0.cpio.zst" -f
echo "$stamp" > "$cache/stamp"
echo "rig: built in $(( $(date +%s) - t0 )) s into $cache ($stamp)"
