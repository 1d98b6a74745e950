#!/usr/bin/env bash
# An arm64 root with Node 20 and nothing else (no compiler, no make, no python), for running the
# linux-arm64 prebuilds on this x86 machine under qemu-user (test:pack). Debian's own packages:
# trixie's nodejs:arm64 (bookworm has only Node 18) and the libraries it needs, fetched from the
# mirror this machine's apt uses through a private apt list (the machine's apt is not touched),
# unpacked with dpkg-deb. Cached (XEN_VCHAN_ARM64_ROOT, default ~/.cache/xen-vchan/arm64-node20).
# Needs qemu-user-static and the kernel's binfmt_misc (registered here if it is not).
#   scripts/arm64-root.sh   ->  prints the directory
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${XEN_VCHAN_ARM64_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/xen-vchan/arm64-node20}
pkgs="nodejs libnode115 libbrotli1 libc6 libcares2 libicu76 libnghttp2-14 libssl3t64 libstdc++6 libuv1t64 zlib1g
      libgcc-s1 libzstd1 node-acorn node-cjs-module-lexer node-undici node-minimatch"
stamp="trixie arm64 $(echo $pkgs)"

# Running arm64 binaries: qemu-aarch64 through binfmt_misc (the F flag: it works inside chroots).
binfmt=/proc/sys/fs/binfmt_misc
if [ ! -e "$binfmt/qemu-aarch64" ]; then
  [ -f /usr/lib/binfmt.d/qemu-aarch64.conf ] || { echo "arm64-root: apt-get install qemu-user-static" >&2; exit 1; }
  [ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt" || { echo "arm64-root: no binfmt_misc" >&2; exit 1; }
  cat /usr/lib/binfmt.d/qemu-aarch64.conf >"$binfmt/register"
fi

if [ -f "$root/.xen-vchan-stamp" ] && [ "$(cat "$root/.xen-vchan-stamp")" = "$stamp" ]; then
  echo "$root"; exit 0
fi
mirror=$(bash "$here/debian-mirror.sh")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ap=$work/apt
mkdir -p "$ap/lists/partial" "$ap/cache/archives/partial" "$work/debs"
touch "$ap/status"
echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$ap/sources.list"
opts=(-o "Dir::Etc::sourcelist=$ap/sources.list" -o Dir::Etc::sourceparts=/nonexistent -o "Dir::State::lists=$ap/lists"
  -o "Dir::Cache=$ap/cache" -o "Dir::State::status=$ap/status" -o APT::Architecture=arm64 -o APT::Sandbox::User=root)
apt-get "${opts[@]}" update >"$work/update.log" 2>&1 || { tail "$work/update.log" >&2; exit 1; }
( cd "$work/debs"
  for p in $pkgs; do apt-get "${opts[@]}" download "$p:arm64" >/dev/null 2>&1 || apt-get "${opts[@]}" download "$p" >/dev/null; done )
rm -rf "$root.tmp" && mkdir -p "$root.tmp"/{proc,tmp,lib}
for d in "$work"/debs/*.deb; do dpkg-deb -x "$d" "$root.tmp"; done
# trixie is merged-/usr; this root's /lib is a directory of its own.
ln -sf /usr/lib/ld-linux-aarch64.so.1 "$root.tmp/lib/ld-linux-aarch64.so.1"
ln -sfn /usr/lib/aarch64-linux-gnu "$root.tmp/lib/aarch64-linux-gnu"
chmod 1777 "$root.tmp/tmp"
env -u NODE_EXTRA_CA_CERTS chroot "$root.tmp" /usr/bin/node -e 'if (process.arch !== "arm64") process.exit(1)' ||
  { echo "arm64-root: node does not run in $root.tmp" >&2; exit 1; }
echo "$stamp" >"$root.tmp/.xen-vchan-stamp"
rm -rf "$root" && mv "$root.tmp" "$root"
echo "$root"
