#!/usr/bin/env bash
# npm run test:xen: build the rig (cached), then boot Xen under QEMU and run the vitest suite in
# dom0 against the real backend. The real addon is the host's build (libxen-dev, no -march=native).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bash "$here/build-rig.sh"
[ -f "$repo/build/Release/xen_vchan_real.node" ] || { echo "test:xen: build the real addon first (apt-get install libxen-dev; npm rebuild)" >&2; exit 1; }
mkdir -p "$repo/.rig/bin"
cp "$(command -v node)" "$repo/.rig/bin/node"
exec bash "$here/boot.sh" "$here/job-suite.sh"
