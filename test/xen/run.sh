#!/usr/bin/env bash
# npm run test:xen: build the rig (cached), then boot Xen under QEMU and run the vitest suite in
# dom0 against the real backend, with the prebuilt real addon when there is one.
#   test/xen/run.sh [--kernel 6.12|6.1] [JOB]
#     --kernel  the Linux of dom0 and the domU (default 6.12, or XEN_RIG_KERNEL; see kernel.sh)
#     JOB       another job instead of job-suite.sh (bench/rig.sh runs the benchmark)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
while [ $# -gt 0 ]; do
  case "$1" in
    --kernel) XEN_RIG_KERNEL=${2:?--kernel needs 6.12 or 6.1}; shift 2 ;;
    --kernel=*) XEN_RIG_KERNEL=${1#--kernel=}; shift ;;
    -*) echo "test:xen: unknown option $1 (usage: npm run test:xen -- [--kernel 6.12|6.1] [JOB])" >&2; exit 2 ;;
    *) break ;;
  esac
done
. "$here/kernel.sh"
cache=$XEN_RIG_CACHE
job=$(cd "$(dirname "${1:-$here/job-suite.sh}")" && pwd)/$(basename "${1:-job-suite.sh}")
echo "rig: Linux $XEN_RIG_KERNEL in dom0 and the domU (cache $cache)"
bash "$here/build-rig.sh"
# The real addon: the prebuilt one the package ships (npm run prebuild) when there is one, so the
# binary users install is the one that meets real Xen; else this tree's build (binding.gyp adds no
# -march flags: the rig's emulated CPU is a plain x86-64). The loader prefers build/Release, so the
# prebuilt binary is put there. A prebuilt binary older than a source it is built from (the list
# scripts/install.js keeps for its own check) would test, or benchmark, an earlier tree's code
# without a word: then this tree's addon is built and used instead.
prebuilt="$repo/prebuilds/linux-x64/xen_vchan_real.glibc.node"
stale=
if [ -f "$prebuilt" ]; then
  stale=$(node "$repo/scripts/install.js" --source-newer-than "$prebuilt")
fi
if [ -f "$prebuilt" ] && [ -z "$stale" ]; then
  mkdir -p "$repo/build/Release"
  cp "$prebuilt" "$repo/build/Release/xen_vchan_real.node"
  echo "rig: testing the prebuilt real addon (sha256 $(sha256sum "$prebuilt" | cut -c1-16))"
elif [ -n "$stale" ] || [ ! -f "$repo/build/Release/xen_vchan_real.node" ] ||
  ldd "$repo/build/Release/xen_vchan_real.node" | grep -q -e asan -e ubsan; then
  [ -n "$stale" ] && echo "rig: $stale is newer than prebuilds/ (npm run prebuild to test the shipped binary): building this tree's addon"
  ( cd "$repo" && npm run -s build:native )
fi
[ -f "$repo/dist/cjs/index.js" ] || ( cd "$repo" && npm run -s build:ts )
mkdir -p "$repo/.rig/bin"
# Xen's own libxenvchan as the peer on real Xen (test/xen-releases.test.ts): the echo peer built
# against this machine's (libxen-dev), which is the rig dom0's release.
cc -O2 -Wall -o "$repo/.rig/bin/vchan_echo" "$repo/test/releases/vchan_echo.c" $(pkg-config --cflags --libs xenvchan)
rm -f "$repo/.rig/suite.json"
# Test switches for the job (see test/xen/domu.test.ts).
: > "$repo/.rig/env.sh"
for v in XEN_RIG_REPEAT XEN_RIG_KERNEL XEN_RIG_TESTS NODE_DEBUG; do
  [ -n "${!v:-}" ] && echo "export $v='${!v}'" >> "$repo/.rig/env.sh"
done
cp "$(command -v node)" "$repo/.rig/bin/node"
# Linux's own PVCalls drivers, built for the rig's kernel (6.12 only): pvcalls-back.ko for dom0
# (from /mnt/host/.rig/pvcalls), pvcalls-front.ko in the domU's image.
rm -rf "$repo/.rig/pvcalls"
if [ "$XEN_RIG_KERNEL" = 6.12 ]; then
  bash "$here/build-pvcalls-modules.sh" "$(ls "$cache/domu/lib/modules")" "$cache/pvcalls"
  cp -r "$cache/pvcalls" "$repo/.rig/pvcalls"
fi

# Vite parses every module with rollup; this project pins rollup to its WebAssembly build (the
# registry has no lockfile-able native builds for every platform), and that WebAssembly traps
# ("unreachable") or segfaults under QEMU's emulated CPU. Inside the rig only, the same rollup
# version's native build is bind-mounted over node_modules/rollup (the host tree is not touched).
ver=$(node -p 'require(process.argv[1]).version' "$repo/node_modules/rollup/package.json")
native="$cache/rollup-$ver"
if [ ! -f "$native/rollup/node_modules/@rollup/rollup-linux-x64-gnu/package.json" ]; then
  tmp=$(mktemp -d)
  ( cd "$tmp" && npm pack --silent "rollup@$ver" "@rollup/rollup-linux-x64-gnu@$ver" >/dev/null )
  mkdir -p "$tmp/rollup" "$tmp/native"
  tar -xzf "$tmp/rollup-$ver.tgz" -C "$tmp/rollup" --strip-components=1
  tar -xzf "$tmp/rollup-rollup-linux-x64-gnu-$ver.tgz" -C "$tmp/native" --strip-components=1
  mkdir -p "$tmp/rollup/node_modules/@rollup"
  mv "$tmp/native" "$tmp/rollup/node_modules/@rollup/rollup-linux-x64-gnu"
  rm -rf "$native"; mkdir -p "$native"; mv "$tmp/rollup" "$native/rollup"; rm -rf "$tmp"
fi
rm -rf "$repo/.rig/rollup"; cp -a "$native/rollup" "$repo/.rig/rollup"

# The PV domU's initramfs (a domU has no share with dom0, so everything it runs is in here): the
# cached base (static busybox, modules), this machine's node and the libraries it and the real
# addon load (libxenstore it finds at run time), and the project as an installed package would be:
# package.json, dist, the addon. The kernel is dom0's.
t0=$(date +%s)
img=$(mktemp -d)
trap 'rm -rf "$img"' EXIT
cp -a "$cache/domu/." "$img/"
install -D -m 0755 "$here/domu-init.sh" "$img/init"
install -D -m 0755 "$(readlink -f "$(command -v node)")" "$img/usr/bin/node"
addon="$repo/build/Release/xen_vchan_real.node"
xslib=$(ldconfig -p | awk '$1 == "libxenstore.so.4" && !n++ {print $NF}')
[ -n "$xslib" ] || { echo "test:xen: no libxenstore.so.4 on this machine for the domU (apt-get install libxenstore4)" >&2; exit 1; }
install -D -m 0755 "$(readlink -f "$xslib")" "$img$xslib"
# libxenctrl too (EventChannel.allocUnbound loads it: the domU's test of an unprivileged call).
xclib=$(ldconfig -p | awk '$1 ~ /^libxenctrl\.so\.4\./ && !n++ {print $NF}')
[ -n "$xclib" ] || { echo "test:xen: no libxenctrl.so.4.x on this machine for the domU (apt-get install libxenmisc4.17)" >&2; exit 1; }
install -D -m 0755 "$(readlink -f "$xclib")" "$img$xclib"
for lib in $( (ldd "$(command -v node)"; ldd "$addon"; ldd "$xslib"; ldd "$xclib") | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | sort -u); do
  install -D -m 0755 "$(readlink -f "$lib")" "$img$lib"
done
mkdir -p "$img/app/build/Release" "$img/app/node_modules" "$img/app/test/xen" "$img/tmp" "$img/proc" "$img/sys" "$img/dev"
cp "$repo/package.json" "$img/app/"
cp -a "$repo/dist" "$img/app/"
# dist's runtime dependencies (pure JavaScript; node-addon-api is headers, for building only).
( cd "$repo" && npm ls --omit=dev --all --parseable ) | tail -n +2 | grep -v '/node-addon-api$' | while read -r d; do
  rel=${d#"$repo/node_modules/"}
  mkdir -p "$img/app/node_modules/$(dirname "$rel")" && cp -a "$d" "$img/app/node_modules/$rel"
done
cp "$addon" "$img/app/build/Release/"
cp "$here/domu-peer.js" "$img/app/test/xen/"
[ -f "$repo/.rig/pvcalls/pvcalls-front.ko" ] && cp "$repo/.rig/pvcalls/pvcalls-front.ko" "$img/lib/"
( cd "$img" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet ) | zstd -q -T0 -3 -o "$repo/.rig/domu.cpio.zst" -f
cp "$cache/vmlinuz" "$repo/.rig/vmlinuz"
echo "rig: domU initramfs $(( $(stat -c %s "$repo/.rig/domu.cpio.zst") >> 20 )) MiB in $(( $(date +%s) - t0 )) s"
rm -rf "$img"
trap - EXIT

# A boot that never reached the job (exit 125) is retried once; anything else is the result.
set +e
bash "$here/boot.sh" "$job"
rc=$?
if [ "$rc" -eq 125 ]; then
  echo "rig: the boot failed before the tests started; retrying once"
  bash "$here/boot.sh" "$job"
  rc=$?
fi
if [ -f "$repo/.rig/suite.json" ]; then
  node -e 'const r = require(process.argv[1]);
    console.log(`xen-vchan tests on real Xen: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests} skipped (mock-only)`)' \
    "$repo/.rig/suite.json"
fi
exit "$rc"
