#!/usr/bin/env bash
# The sanitizer job: the mock (libraries, broker, C tests) and the addon built with
# -fsanitize=address,undefined, and the vitest suite run under them. Node itself is not
# instrumented, so the ASan runtime is preloaded. Restores the normal build at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

make -s -C native/mock SAN=1 check

asan=$(gcc -print-file-name=libasan.so)
restore() { XEN_VCHAN_SANITIZE= XEN_VCHAN_BUILD_FROM_SOURCE=1 node scripts/install.js >/dev/null; }
trap restore EXIT
XEN_VCHAN_SANITIZE=1 XEN_VCHAN_BUILD_FROM_SOURCE=1 npm_config_node_gyp=${npm_config_node_gyp:-} node scripts/install.js

# Leaks are Node's own at exit (an uninstrumented V8): leak detection stays off for Node;
# errors and undefined behaviour abort the run.
LD_PRELOAD=$asan \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  npx vitest run --reporter=default
echo "sanitized suite: passed"
