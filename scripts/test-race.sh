#!/usr/bin/env bash
# The reconnect race at length (issues 10 and 25): XEN_VCHAN_RACE_CYCLES connect/close cycles
# (default 20,000) per backend, each client's bytes checked to reach its own 'connection' only;
# then as many connect/echo/close cycles shared by two client processes, none refused while the
# server lives. The ordinary suite runs the same tests with 500 cycles.
set -uo pipefail
cd "$(dirname "$0")/.."
cycles=${XEN_VCHAN_RACE_CYCLES:-20000}
rc=0
run() { # NAME, then environment assignments
  local name=$1; shift
  echo "== reconnect race, $cycles cycles: $name"
  env XEN_VCHAN_RACE_CYCLES="$cycles" "$@" npx vitest run test/hostile.test.ts -t 'the reconnect race' || rc=1
}
run mock XEN_VCHAN_BACKEND=mock
if [ -f build/Release/xen_vchan_real.node ]; then
  run real-over-mock XEN_VCHAN_TEST_CONFIG=real-over-mock XEN_VCHAN_BACKEND=real XEN_VCHAN_NO_DEVICE_CHECK=1 \
    LD_LIBRARY_PATH="$PWD/native/mock/build/stable${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
exit $rc
