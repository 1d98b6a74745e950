#!/usr/bin/env bash
# Runs the mock's C tests, each against a broker of its own (a fresh XEN_MOCK_DIR),
# then checks that no broker and no state directory outlive them.
#   test/run.sh [BUILD_DIR]     (build, or build-san for the sanitizer build)
set -u
out=${1:-build}
cd "$(dirname "$0")/.."
export XEN_MOCK_LINGER_MS=300
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
passed=0 failed=0
for t in "$out"/test/test_*; do
  [ -x "$t" ] || continue
  dir=$(mktemp -d /tmp/xen-mock-test.XXXXXX)
  log=$dir.log
  echo "== $(basename "$t") ($out)"
  XEN_MOCK_DIR=$dir XEN_MOCK_LOG=$log "$t"
  rc=$?
  # The broker must leave by itself once the test's last handle is gone: its directory removed and
  # its process gone. Both are waited for (the sanitized broker removes its directory, then runs
  # LeakSanitizer at exit, which takes seconds on a loaded machine).
  broker_alive() { pgrep -f "xenmockd serve --daemon --dir=$dir" >/dev/null; }
  for _ in $(seq 100); do { [ -e "$dir" ] || broker_alive; } || break; sleep 0.1; done
  if [ -e "$dir" ] || broker_alive; then
    echo "FAIL: broker or state directory left behind for $dir"; rc=1
  fi
  if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$log" 2>/dev/null; then
    echo "FAIL: sanitizer report from the broker:"; cat "$log"; rc=1
  fi
  if [ $rc -eq 0 ]; then passed=$((passed+1)); else failed=$((failed+1)); echo "-- broker log:"; tail -20 "$log" 2>/dev/null; fi
  rm -f "$log"
done
echo "mock C suites ($out): $passed passed, $failed failed"
[ $failed -eq 0 ]
