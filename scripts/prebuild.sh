#!/usr/bin/env bash
# npm run prebuild: N-API prebuilds in prebuilds/<platform>-<arch>/, one per addon (prebuildify takes
# one .node per build). The loader (lib/native.ts) finds them before any build/Release output.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s -C native/mock all
XEN_VCHAN_ONLY=mock npx prebuildify --napi --strip --name xen_vchan_mock
if node scripts/gyp-config.js real | grep -q 1; then
  XEN_VCHAN_ONLY=real npx prebuildify --napi --strip --name xen_vchan_real
else
  echo "prebuild: no Xen development files (libxen-dev): the real addon is not prebuilt"
fi
node-gyp rebuild >/dev/null 2>&1 || node scripts/install.js >/dev/null   # restore build/Release
ls -l prebuilds/*/
