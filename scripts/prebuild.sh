#!/usr/bin/env bash
# npm run prebuild: the prebuilt binaries the package ships, in prebuilds/linux-x64/ and
# prebuilds/linux-arm64/ (cross-compiled):
#   xen_vchan_mock.glibc.node, xen_vchan_real.glibc.node   the addons (prebuildify, N-API)
#   mock/lib/*.so.*, mock/bin/xenmockd                      the mock's libraries and broker
# As root they are compiled in a Debian bullseye root (scripts/build-sysroot.sh: glibc 2.31, gcc 10),
# so they load on every glibc since: Debian 11-13, Ubuntu 22.04 and later. Without root they are
# built on this machine, and the glibc they need is this machine's (printed at the end).
# The same binaries are left in build/Release and native/mock/build, so the tests run what ships.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=prebuilds/linux-x64
# Node's headers next to the node binary (/usr for Debian's or NodeSource's, /usr/local for the official builds).
export npm_config_nodedir=${npm_config_nodedir:-$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")}
nodeinc=$npm_config_nodedir/include/node
[ -f "$nodeinc/node_api.h" ] || { echo "prebuild: no Node headers in $nodeinc (set npm_config_nodedir)" >&2; exit 1; }

tmp=$(mktemp -d)
mounts=()
cleanup() {
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

if [ "$(id -u)" -eq 0 ] && [ "${XEN_VCHAN_PREBUILD_HOST:-0}" != 1 ]; then
  sysroot=$(bash scripts/build-sysroot.sh)
  # The compilers run inside the bullseye root, on this tree and the Node headers mounted at the
  # same paths, so the build files node-gyp writes here work unchanged.
  for d in "$repo" "$nodeinc"; do
    mkdir -p "$sysroot$d"
    mount --bind "$d" "$sysroot$d"
    mounts+=("$sysroot$d")
  done
  mkdir -p "$tmp/bin"
  for tool in cc gcc c++ g++; do
    printf '#!/bin/sh\nexec chroot %q /usr/bin/env -C "$PWD" %s "$@"\n' "$sysroot" "$tool" >"$tmp/bin/$tool"
    chmod +x "$tmp/bin/$tool"
  done
  # By name too: prebuildify puts node's own directory (often /usr/bin) first on node-gyp's PATH.
  export PATH=$tmp/bin:$PATH CC=$tmp/bin/gcc CXX=$tmp/bin/g++
  where="a Debian bullseye root ($sysroot)"
else
  where="this machine (not root: no bullseye root)"
fi
echo "prebuild: compiling in $where with $(${CC:-cc} --version | head -1)"

rm -rf "$out"
rm -rf native/mock/build
make -s -C native/mock all
rm -rf build
XEN_VCHAN_ONLY=mock npx prebuildify --napi --strip --tag-libc --name xen_vchan_mock
XEN_VCHAN_ONLY=real npx prebuildify --napi --strip --tag-libc --name xen_vchan_real
mkdir -p "$out/mock/lib" "$out/mock/bin"
cp -P native/mock/build/lib/*.so.* "$out/mock/lib/"
cp native/mock/build/bin/xenmockd "$out/mock/bin/"
strip --strip-unneeded "$out"/mock/lib/*.so.* "$out/mock/bin/xenmockd"
# linux-arm64: the same sources, cross-compiled (in the bullseye root: its aarch64 gcc and arm64
# glibc 2.31, the same floor as x64's). node-gyp builds for --arch arm64 with the cross compilers;
# the addons link against the arm64 build of the mock's libraries (native/mock/build-arm64).
arm=prebuilds/linux-arm64
cross=aarch64-linux-gnu
if [ -n "${sysroot:-}" ]; then
  for tool in gcc g++; do
    printf '#!/bin/sh\nexec chroot %q /usr/bin/env -C "$PWD" %s "$@"\n' "$sysroot" "$cross-$tool" >"$tmp/bin/$cross-$tool"
    chmod +x "$tmp/bin/$cross-$tool"
  done
fi
if command -v "$cross-gcc" >/dev/null && command -v "$cross-strip" >/dev/null; then
  # Full paths: prebuildify puts node's own directory (often /usr/bin, which may hold this
  # machine's newer cross compiler) first on node-gyp's PATH.
  xcc=$(command -v "$cross-gcc") xcxx=$(command -v "$cross-g++")
  rm -rf "$arm" native/mock/build-arm64 build
  make -s -C native/mock OUT=build-arm64 CC="$xcc" all
  for name in xen_vchan_mock xen_vchan_real; do
    XEN_VCHAN_ONLY=${name#xen_vchan_} XEN_VCHAN_MOCK_OUT=build-arm64 CC="$xcc" CXX="$xcxx" \
      PREBUILD_STRIP_BIN="$cross-strip" npx prebuildify --napi --strip --tag-libc --arch arm64 --name "$name"
  done
  mkdir -p "$arm/mock/lib" "$arm/mock/bin"
  cp -P native/mock/build-arm64/lib/*.so.* "$arm/mock/lib/"
  cp native/mock/build-arm64/bin/xenmockd "$arm/mock/bin/"
  "$cross-strip" --strip-unneeded "$arm"/mock/lib/*.so.* "$arm/mock/bin/xenmockd"
  file "$arm"/*.node "$arm/mock/bin/xenmockd" | grep -v 'ARM aarch64' && { echo "prebuild: $arm has a binary that is not arm64" >&2; exit 1; }
  floor_arm=$("$cross-objdump" -T "$arm"/*.node "$arm"/mock/lib/*.so.* "$arm/mock/bin/xenmockd" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
  echo "prebuild: linux-arm64 built; needs $floor_arm or later"
  if [ -n "${sysroot:-}" ] && [ "$(printf '%s\n' "$floor_arm" GLIBC_2.31 | sort -V | tail -1)" != GLIBC_2.31 ]; then
    echo "prebuild: linux-arm64 needs $floor_arm, above bullseye's glibc 2.31: not built in the bullseye root?" >&2
    exit 1
  fi
else
  echo "prebuild: no $cross-gcc (apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu binutils-aarch64-linux-gnu): linux-arm64 not built" >&2
  [ "${CI:-}" = true ] && exit 1
fi
rm -rf build

mkdir -p build/Release
cp "$out/xen_vchan_mock.glibc.node" build/Release/xen_vchan_mock.node
cp "$out/xen_vchan_real.glibc.node" build/Release/xen_vchan_real.node

# The newest glibc symbol version anything shipped asks for: the oldest glibc it loads on.
floor=$(objdump -T "$out"/*.node "$out"/mock/lib/*.so.* "$out/mock/bin/xenmockd" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
echo "prebuild: built in $where; needs $floor or later"

if [ -n "${sysroot:-}" ]; then
  # Proof on the oldest target itself: this machine's node (built for glibc 2.28) inside the
  # bullseye root loads both prebuilt addons and runs the CommonJS consumer on the mock.
  node=$(readlink -f "$(command -v node)")
  touch "$sysroot/usr/local/bin/node"
  mount --bind "$node" "$sysroot/usr/local/bin/node"; mounts+=("$sysroot/usr/local/bin/node")
  mount -t proc proc "$sysroot/proc"; mounts+=("$sysroot/proc")
  app=/tmp/xen-vchan-glibc-smoke
  rm -rf "$sysroot$app" && mkdir -p "$sysroot$app/node_modules"
  ln -s "$repo" "$sysroot$app/node_modules/xen-vchan"
  cp test/pack/consumer.cjs "$sysroot$app/"
  chroot "$sysroot" /usr/bin/env -u NODE_EXTRA_CA_CERTS -C "$app" LD_LIBRARY_PATH="$repo/$out/mock/lib" /usr/local/bin/node -e "
    const n = require('$repo/dist/cjs/native.js');
    for (const a of ['xen_vchan_mock', 'xen_vchan_real']) require(n.prebuildPath(a));"
  chroot "$sysroot" /usr/bin/env -u NODE_EXTRA_CA_CERTS -C "$app" XEN_MOCK_DIR="$app/mock" /usr/local/bin/node consumer.cjs
  # A Xen 4.14/4.15 system has libxenstore.so.3.0 and no .so.4: the real addon falls back to it. Here
  # the mock's libraries as 4.14 names them stand in for Xen's (bullseye has no Xen libraries).
  chroot "$sysroot" /usr/bin/env -u NODE_EXTRA_CA_CERTS -C "$app" XEN_MOCK_DIR="$app/mock" XEN_VCHAN_BACKEND=real \
    XEN_VCHAN_NO_DEVICE_CHECK=1 LD_LIBRARY_PATH="$repo/native/mock/build/stable-4.14" /usr/local/bin/node -e "
      const xs = new (require('xen-vchan').Xenstore)();
      xs.read('domid').then((d) => {
        xs.close();
        const m = require('fs').readFileSync('/proc/self/maps', 'utf8');
        if (d !== '0' || !m.includes('/libxenstore.so.3.0') || m.includes('/libxenstore.so.4')) throw new Error('not on libxenstore.so.3.0');
        console.log('prebuild: the real addon falls back to libxenstore.so.3.0 where there is no .so.4');
      });"
  # A machine without Xen (no devices, no Xen libraries) gets errors that say what to do, not a crash.
  for check in "ERR_XEN_NO_DEVICE:XEN_VCHAN_BACKEND=mock" "ERR_XEN_NO_ADDON:apt-get install libxenevtchn1"; do
    code=${check%%:*} says=${check#*:}
    nodev=""; [ "$code" = ERR_XEN_NO_ADDON ] && nodev=XEN_VCHAN_NO_DEVICE_CHECK=1
    got=$(chroot "$sysroot" /usr/bin/env -u NODE_EXTRA_CA_CERTS -C "$app" $nodev /usr/local/bin/node -e "
      try { new (require('xen-vchan').Xenstore)(); console.log('opened?!'); } catch (e) { console.log(e.code, e.message); }")
    case $got in "$code "*"$says"*) ;; *) echo "prebuild: without Xen, expected $code saying \"$says\"; got: $got" >&2; exit 1 ;; esac
    echo "prebuild: without Xen there: $code, saying \"$says\""
  done
  echo "prebuild: the prebuilt binaries load and run on Debian bullseye's glibc $(chroot "$sysroot" ldd --version | head -1 | grep -o '[0-9.]*$')"
  rm -rf "$sysroot$app"
fi
ls -l "$out" "$out/mock/lib" "$out/mock/bin"
