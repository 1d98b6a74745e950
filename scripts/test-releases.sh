#!/usr/bin/env bash
# npm run test:releases: our vchan (both addons) against Xen's own libxenvchan of Debian bullseye
# (Xen 4.14), bookworm (4.17) and trixie (4.20), on the mock, at both ends of the channel
# (test/xen-releases.test.ts). The real addon is the one binary that runs on all of them; for each
# release it finds that release's stable libraries (libxenstore.so.3.0 for 4.14) as the mock
# provides them. Fetches the packages on first use (scripts/xen-releases.sh; cached in
# XEN_VCHAN_RELEASES_DIR, default ~/.cache/xen-vchan/xen-releases). Prints the interop matrix.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${XEN_VCHAN_RELEASES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/xen-vchan/xen-releases}
bash scripts/xen-releases.sh "$cache"
make -s -C native/mock all
[ -f build/Release/xen_vchan_real.node ] && [ -f build/Release/xen_vchan_mock.node ] ||
  { echo "test:releases: build the addons first (npm run build:native)" >&2; exit 1; }
# The real addon must import nothing from libxenvchan or libxenstore (it carries its own vchan and
# finds libxenstore at run time), or it would be tied to one Xen release.
if nm -D --undefined-only build/Release/xen_vchan_real.node | grep -E ' (libxenvchan_|xs_)'; then
  echo "test:releases: the real addon links Xen symbols that change between releases (above)" >&2; exit 1
fi
objdump -p build/Release/xen_vchan_real.node | grep -E 'NEEDED.*(vchan|xenstore)' &&
  { echo "test:releases: the real addon depends on a versioned Xen library (above)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mock=$PWD/native/mock/build
matrix=()
total_p=0 total_f=0 rc=0
for suite in bullseye bookworm trixie; do
  read -r xen version <"$cache/$suite/version"
  rootdir=$cache/$suite/root
  libs=$rootdir/usr/lib/x86_64-linux-gnu
  peer=$work/vchan_echo-$xen
  # Xen 4.14 and 4.15 name libxenstore .so.3.0; the mock provides the libraries under either name.
  case $xen in 4.14 | 4.15) stable=$mock/stable-4.14 xs=libxenstore.so.3.0 ;; *) stable=$mock/stable xs=libxenstore.so.4 ;; esac
  # Linked against the release's libxenvchan, its other libraries resolved as at run time (the
  # mock's first: a newer release's own need a newer glibc than this machine's).
  cc -O2 -Wall -I"$rootdir/usr/include" -o "$peer" test/releases/vchan_echo.c "$libs/libxenvchan.so.$xen" \
    -Wl,-rpath-link,"$stable:$libs"
  for backend in real mock; do
    envs=(XEN_VCHAN_RELEASE="$xen" XEN_VCHAN_RELEASE_PEER="$peer" XEN_VCHAN_RELEASE_LIBS="$stable:$libs")
    if [ $backend = real ]; then
      # The release's own libraries after the mock's: what a dom0 of that release has. The system's
      # own libxenstore.so.4 (this machine's Xen) must not stand in for a 4.14 one.
      envs+=(XEN_VCHAN_TEST_CONFIG=real-over-mock XEN_VCHAN_BACKEND=real XEN_VCHAN_NO_DEVICE_CHECK=1
             XEN_VCHAN_LIBXENSTORE="$xs" LD_LIBRARY_PATH="$stable:$libs")
    else
      envs+=(XEN_VCHAN_BACKEND=mock)
    fi
    out=$work/$suite-$backend.json
    env "${envs[@]}" npx vitest run test/xen-releases.test.ts --reporter=default --reporter=json --outputFile="$out" || rc=1
    read -r p f s < <(node -e "const r=require('$out');console.log(r.numPassedTests,r.numFailedTests,r.numPendingTests)" 2>/dev/null || echo "0 1 0")
    total_p=$((total_p + p)); total_f=$((total_f + f))
    matrix+=("$(printf '%-9s Xen %-5s %-4s addon: %s passed, %s failed, %s skipped' "$suite" "$xen" "$backend" "$p" "$f" "$s")")
  done
done
echo "interop with Xen's libxenvchan (each row: its client with our server and its server with our client, two ring sizes, plus paths over 49 bytes):"
printf '  %s\n' "${matrix[@]}"
echo "xen-vchan release tests: $total_p passed, $total_f failed"
[ $total_f -eq 0 ] && exit $rc || exit 1
