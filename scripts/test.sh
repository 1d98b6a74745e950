#!/usr/bin/env bash
# npm test: the mock's C suites, then the one vitest suite against every backend available:
#   mock             the mock addon                                   (always)
#   real-over-mock   the real addon + Debian's libxenvchan, with Xen's stable libraries
#                    pointed at the mock through LD_LIBRARY_PATH       (where libxen-dev is installed)
#   real             real Xen                                          (where /dev/xen/evtchn exists)
# Ends with one "N passed, N failed" line over everything.
set -uo pipefail
cd "$(dirname "$0")/.."
passed=0 failed=0 rc=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

npm run -s build:ts || exit 1

c_out=$(make -s -C native/mock check 2>&1); c_rc=$?
echo "$c_out"
while read -r p f; do passed=$((passed + p)); failed=$((failed + f)); done < <(
  echo "$c_out" | sed -n 's/^test_[a-z_]*: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p')
[ $c_rc -eq 0 ] || rc=1

run_vitest() { # NAME, then environment assignments
  local name=$1; shift
  echo "== vitest: $name"
  env "$@" npx vitest run --reporter=default --reporter=json --outputFile="$tmp/$name.json" || rc=1
  if [ -f "$tmp/$name.json" ]; then
    read -r p f < <(node -e "const r=require('$tmp/$name.json');console.log(r.numPassedTests,r.numFailedTests)")
    passed=$((passed + p)); failed=$((failed + f))
  else
    failed=$((failed + 1))
  fi
}

run_vitest mock XEN_VCHAN_BACKEND=mock
if [ -f build/Release/xen_vchan_real.node ]; then
  run_vitest real-over-mock XEN_VCHAN_TEST_CONFIG=real-over-mock XEN_VCHAN_BACKEND=real XEN_VCHAN_NO_DEVICE_CHECK=1 \
    LD_LIBRARY_PATH="$PWD/native/mock/build/stable${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  echo "SKIP real-over-mock: the real addon was not built (npm run build:native)"
fi
if [ -e /dev/xen/evtchn ]; then
  run_vitest real XEN_VCHAN_BACKEND=real XEN_VCHAN_TEST_CONFIG=real
else
  echo "SKIP real Xen: no /dev/xen/evtchn here (this is not a Xen domain)"
fi

# The failures again, last, so that the tail of a long CI log names them.
for j in "$tmp"/*.json; do
  [ -f "$j" ] || continue
  node -e '
    const r = require(process.argv[1]), name = require("path").basename(process.argv[1], ".json");
    for (const f of r.testResults)
      for (const t of f.assertionResults)
        if (t.status === "failed")
          console.log(`FAILED [${name}] ${f.name.replace(process.cwd() + "/", "")} > ${t.fullName}\n  ` +
            String((t.failureMessages || [])[0] || "").split("\n").slice(0, 6).join("\n  "));
    for (const f of r.testResults)
      if (f.status === "failed" && f.assertionResults.every((t) => t.status !== "failed"))
        console.log(`FAILED [${name}] ${f.name.replace(process.cwd() + "/", "")}: ${String(f.message).split("\n")[0]}`);
  ' "$j"
done
echo "$c_out" | grep -E '^(FAIL|not ok)' | head -20

echo "xen-vchan tests: $passed passed, $failed failed"
[ $failed -eq 0 ] && exit $rc || exit 1
