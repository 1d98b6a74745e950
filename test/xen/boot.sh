#!/usr/bin/env bash
# Boots the rig unattended and runs JOB (a shell script, run by dom0's /init with the repository
# mounted at /mnt/host) inside dom0. Prints the job's log and exits with its status. QEMU is
# stopped after TIMEOUT seconds (default 900) whatever happens: nothing is left running.
# Exit 125: the rig never started the job (a boot failure, worth one retry); 124: the job started
# but never finished.
#   test/xen/boot.sh JOB.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$here/kernel.sh"
cache=$XEN_RIG_CACHE
job=${1:?usage: boot.sh JOB.sh}
timeout=${XEN_RIG_TIMEOUT:-900}

mkdir -p "$repo/.rig"
cp "$job" "$repo/.rig/job.sh"
rm -f "$repo/.rig/job.rc" "$repo/.rig/job.log" "$repo/.rig/job.started"
t0=$(date +%s)
set +e
timeout --kill-after=10 "$timeout" qemu-system-x86_64 -machine pc,accel=tcg -cpu qemu64 -m 4G -smp 2 -nodefaults \
  -display none -no-reboot -serial stdio \
  -kernel "$cache/xen.elf" \
  -append "dom0_mem=2G,max:2G dom0_max_vcpus=2 console=com1 com1=115200,8n1" \
  -initrd "$cache/vmlinuz console=hvc0 earlyprintk=xen rdinit=/init,$cache/dom0.cpio.zst" \
  -virtfs "local,path=$repo,mount_tag=host0,security_model=none" > "$repo/.rig/console.log" 2>&1
qrc=$?
set -e
echo "rig: QEMU exited ($qrc) after $(( $(date +%s) - t0 )) s"
grep -E '^rig:' "$repo/.rig/console.log" || true
if [ ! -f "$repo/.rig/job.rc" ]; then
  if [ -f "$repo/.rig/job.started" ]; then
    echo "rig: the job started but never finished; its log, then the console's end:" >&2
    cat "$repo/.rig/job.log" >&2 2>/dev/null || true
    tail -40 "$repo/.rig/console.log" >&2
    exit 124
  fi
  echo "rig: the job never started (boot failure); the console's end:" >&2
  tail -40 "$repo/.rig/console.log" >&2
  exit 125
fi
cat "$repo/.rig/job.log"
exit "$(cat "$repo/.rig/job.rc")"
