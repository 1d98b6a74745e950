#!/usr/bin/env bash
# npm run test:xen:arm: Xen 4.17 for arm64 under QEMU (TCG), dom0 and two dom0less domUs built by
# Xen from the device tree (test/xen-arm/dom0less.dtsi), static event channels between them, no
# xenstore anywhere; Node 20 with the packed linux-arm64 build in every domain runs
# test/xen-arm/peer.js. Reads the results off the console (lines "XVARM ..."), checks them, and
# prints the timings. One retry when the rig does not boot. Needs root (for arm64-root.sh's binfmt),
# qemu-system-arm, device-tree-compiler, qemu-user-static, and the prebuilds (npm run prebuild).
#   test/xen-arm/run.sh [TIMEOUT_S=900]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
timeout=${1:-900}
. "$here/machine.sh"
t_build=$(date +%s)
out=$(bash "$here/build.sh") || exit 1
echo "rig-arm: images in $(( $(date +%s) - t_build )) s ($out)"
log=$repo/.rig/arm-console.log
mkdir -p "$repo/.rig"

boot() {
  rm -f "$log"
  local start=$(date +%s)
  nice -n "${XEN_RIG_ARM_NICE:-0}" qemu-system-aarch64 $QMACHINE -no-reboot -kernel "$out/xen" -dtb "$out/rig.dtb" \
    -device loader,file="$out/Image",addr=$KERNEL_AT,force-raw=on \
    -device loader,file="$out/initrd.gz",addr=$INITRD_AT,force-raw=on \
    </dev/null >"$log" 2>&1 &
  local qpid=$!
  while kill -0 $qpid 2>/dev/null; do
    # Done: every role said done or failed.
    local n
    n=$(grep -aEc 'XVARM (dom0|a|b) (done|failed)' "$log" 2>/dev/null || true)
    [ "${n:-0}" -ge 3 ] && break
    if [ $(( $(date +%s) - start )) -ge "$timeout" ]; then echo "rig-arm: timed out after $timeout s" >&2; break; fi
    sleep 2
  done
  kill $qpid 2>/dev/null; wait $qpid 2>/dev/null
  echo "rig-arm: booted and ran in $(( $(date +%s) - start )) s"
}

boot
if ! grep -aq 'XVARM dom0 up' "$log"; then
  echo "rig-arm: dom0 never came up; the console's end, then one retry:" >&2
  tail -20 "$log" >&2
  boot
fi
grep -a 'XVARM' "$log" | sed 's/^.*XVARM /XVARM /'
node "$here/check.js" "$log"
