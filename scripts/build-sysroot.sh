#!/usr/bin/env bash
# The build root for prebuilt binaries: a minimal Debian bullseye (glibc 2.31, gcc 10, and its
# aarch64 cross compiler with bullseye's arm64 glibc for linux-arm64), the oldest
# glibc among the systems the prebuilds target (bullseye, Ubuntu 22.04, bookworm, trixie), so that
# what it builds loads on all of them. Made with debootstrap from the mirror this machine's apt
# uses; cached (XEN_VCHAN_SYSROOT, default ~/.cache/xen-vchan/sysroot-bullseye). Needs root.
#   scripts/build-sysroot.sh      ->  prints the directory
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${XEN_VCHAN_SYSROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/xen-vchan/sysroot-bullseye}
pkgs=gcc,g++,make,libc6-dev,gcc-aarch64-linux-gnu,g++-aarch64-linux-gnu,libc6-dev-arm64-cross,binutils-aarch64-linux-gnu
stamp="bullseye minbase $pkgs"
if [ -f "$root/.xen-vchan-stamp" ] && [ "$(cat "$root/.xen-vchan-stamp")" = "$stamp" ]; then
  echo "$root"; exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "build-sysroot: debootstrap and chroot need root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "build-sysroot: apt-get install debootstrap" >&2; exit 1; }
mirror=$(bash "$here/debian-mirror.sh")
rm -rf "$root.tmp" && mkdir -p "$root.tmp"
log=$(mktemp)
if ! debootstrap --variant=minbase --include=$pkgs bullseye "$root.tmp" "$mirror" >"$log" 2>&1; then
  tail -20 "$log" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
echo "$stamp" >"$root.tmp/.xen-vchan-stamp"
rm -rf "$root" && mv "$root.tmp" "$root"
echo "$root"
