#!/usr/bin/env bash
# npm run test:pack: the package as users get it. Packs it, checks what the tarball holds, installs
# it into empty projects outside the repository and runs CommonJS, ES module and strict TypeScript
# consumers (test/pack) and the CLI's demo on the mock:
#   1. with the prebuilt binaries and NO compiler, make or python on PATH (needs prebuilds/: npm run prebuild);
#   2. with --build-from-source (the escape hatch; needs the toolchain).
# Prints the tarball's size and file count and both install times.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
tmp=$(mktemp -d /tmp/xen-vchan-pack.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "test:pack: $*" >&2; exit 1; }

[ -f prebuilds/linux-x64/xen_vchan_mock.glibc.node ] && [ -f prebuilds/linux-x64/xen_vchan_real.glibc.node ] ||
  fail "no prebuilds in prebuilds/linux-x64 (npm run prebuild)"
npm pack --json --pack-destination "$tmp" >"$tmp/pack.json" 2>"$tmp/pack.log" || { cat "$tmp/pack.log"; fail "npm pack failed"; }
tarball=$tmp/$(node -p "require('$tmp/pack.json')[0].filename")
node - "$tmp/pack.json" <<'JS'
const [{ size, unpackedSize, entryCount, files }] = require(process.argv[2]);
const names = new Set(files.map((f) => f.path));
const bad = [];
for (const n of names) {
  if (/^(test|bench|examples|docs|\.ci|\.rig)\//.test(n) || /^scripts\/(?!install\.js$|gyp-config\.js$)/.test(n)) bad.push(`${n} is not for users`);
}
for (const need of ['LICENSE', 'README.md', 'package.json', 'dist/cjs/index.js', 'dist/cjs/index.d.ts', 'dist/esm/index.mjs',
  'prebuilds/linux-x64/xen_vchan_mock.glibc.node', 'prebuilds/linux-x64/xen_vchan_real.glibc.node',
  'prebuilds/linux-x64/mock/bin/xenmockd', 'prebuilds/linux-x64/mock/lib/libxenmock.so.1', 'binding.gyp', 'native/vchan/vchan.c'])
  if (!names.has(need)) bad.push(`${need} is missing`);
if (require('node:fs').existsSync('prebuilds/linux-arm64'))
  for (const need of ['xen_vchan_mock.glibc.node', 'xen_vchan_real.glibc.node', 'mock/bin/xenmockd', 'mock/lib/libxenmock.so.1'])
    if (!names.has(`prebuilds/linux-arm64/${need}`)) bad.push(`prebuilds/linux-arm64/${need} is missing`);
// Every source map's sources must be in the package.
const path = require('node:path');
for (const f of files) {
  if (!f.path.endsWith('.js.map')) continue;
  const map = JSON.parse(require('node:fs').readFileSync(path.join(process.cwd(), f.path), 'utf8'));
  for (const s of map.sources) {
    const p = path.posix.normalize(path.posix.join(path.posix.dirname(f.path), map.sourceRoot || '', s));
    if (!names.has(p)) bad.push(`${f.path} points at ${p}, which is not shipped`);
  }
}
if (bad.length) { console.error(bad.join('\n')); process.exit(1); }
console.log(`tarball: ${(size / 1024).toFixed(0)} KiB packed, ${(unpackedSize / 1024).toFixed(0)} KiB unpacked, ${entryCount} files`);
JS

# A PATH with everything this machine has except compilers, make and python.
nocc=$tmp/nocc-bin
mkdir -p "$nocc"
for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
  [ -d "$d" ] || continue
  for f in "$d"/*; do
    n=$(basename "$f")
    case $n in cc | c++ | c89* | c99* | gcc* | g++* | cpp* | *-linux-gnu-* | clang* | make | gmake | python* | ld | ld.* | as | node-gyp) continue ;; esac
    [ -e "$nocc/$n" ] || ln -s "$f" "$nocc/$n"
  done
done
for t in cc gcc g++ make python3; do PATH=$nocc command -v $t >/dev/null && fail "$t is still on the compiler-free PATH"; done

consumers() { # DIR: run the three consumers and the demo in an installed project
  local app=$1
  cp test/pack/consumer.cjs test/pack/consumer.mjs test/pack/consumer.ts test/pack/tsconfig.json "$app/"
  ( cd "$app"
    export XEN_MOCK_DIR=$app/mock
    node consumer.cjs
    node consumer.mjs
    # tsc --strict against the published types (the repository's compiler and Node types).
    node "$repo/node_modules/typescript/bin/tsc" -p tsconfig.json --typeRoots "$repo/node_modules/@types"
    node out/consumer.js
    ./node_modules/.bin/xen-vchan demo --bytes 4000000 | tail -1 )
}

install() { # DIR PATH ARGS...: install the tarball into a fresh project; prints the seconds it took
  local app=$1 path=$2; shift 2
  mkdir -p "$app" && ( cd "$app" && npm init -y >/dev/null )
  local t0=$(date +%s%N)
  ( cd "$app" && PATH=$path npm install --no-audit --no-fund --foreground-scripts "$@" "$tarball" ) >"$app.log" 2>&1 ||
    { tail -30 "$app.log"; fail "npm install $* failed in $app"; }
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%d.%01d' $((ms / 1000)) $((ms % 1000 / 100))
}

t=$(install "$tmp/prebuilt" "$nocc")
grep -q 'using the prebuilt binaries' "$tmp/prebuilt.log" || { cat "$tmp/prebuilt.log"; fail "the install did not use the prebuilds"; }
echo "install with prebuilds, no compiler on PATH: ${t}s"
PATH=$nocc consumers "$tmp/prebuilt"

t=$(install "$tmp/source" "$PATH" --build-from-source)
grep -q 'building from source' "$tmp/source.log" || { cat "$tmp/source.log"; fail "--build-from-source did not build"; }
echo "install --build-from-source: ${t}s"
consumers "$tmp/source"

# 3. linux-arm64 (scripts/prebuild.sh cross-compiles it): the tarball in an arm64 root that has Node
#    20 and nothing else (scripts/arm64-root.sh), run under qemu-user. The package's install step,
#    run by the arm64 node as npm would run it, must take the arm64 prebuilds (there is no compiler
#    to fall back to); then the consumers and the demo run on the arm64 mock.
if [ -f prebuilds/linux-arm64/xen_vchan_mock.glibc.node ]; then
  aroot=$(bash scripts/arm64-root.sh)
  app=/tmp/xen-vchan-arm64-app
  rm -rf "${aroot:?}$app" && mkdir -p "$aroot$app/node_modules/xen-vchan" "$aroot/proc" "$aroot/dev"
  tar -xzf "$tarball" -C "$aroot$app/node_modules/xen-vchan" --strip-components=1
  # Its dependencies, as npm installed them for the x64 consumer above (pure JavaScript and headers).
  for d in "$tmp/prebuilt/node_modules"/*; do
    case ${d##*/} in xen-vchan | .bin) ;; *) cp -a "$d" "$aroot$app/node_modules/" ;; esac
  done
  cp test/pack/consumer.cjs test/pack/consumer.mjs "$aroot$app/"
  mountpoint -q "$aroot/proc" || mount -t proc proc "$aroot/proc"
  mountpoint -q "$aroot/dev" || mount --bind /dev "$aroot/dev"
  trap 'umount -l "$aroot/proc" "$aroot/dev" 2>/dev/null || true; rm -rf "$tmp"' EXIT
  chroot=$(command -v chroot)
  arun() { env -u NODE_EXTRA_CA_CERTS -u LD_LIBRARY_PATH XEN_MOCK_DIR="$app/mock" PATH=/usr/bin "$chroot" "$aroot" /usr/bin/node "$@"; }
  for t in cc gcc g++ make python3 sh; do [ ! -e "$aroot/usr/bin/$t" ] || fail "the arm64 root has $t"; done
  t0=$(date +%s)
  got=$(arun "$app/node_modules/xen-vchan/scripts/install.js" 2>&1) || { echo "$got"; fail "the arm64 install step failed"; }
  case $got in *'using the prebuilt binaries'*) ;; *) echo "$got"; fail "the arm64 install did not use the prebuilds" ;; esac
  arun "$app/consumer.cjs"
  arun "$app/consumer.mjs"
  arun "$app/node_modules/xen-vchan/bin/xen-vchan.js" demo --bytes 2000000 | tail -1
  echo "linux-arm64 under qemu-user ($(arun -p 'process.version + " " + process.arch')): install and consumers in $(( $(date +%s) - t0 )) s"
  umount -l "$aroot/proc" "$aroot/dev" # the broker (an arm64 daemon) may linger for 2 s
  rm -rf "${aroot:?}$app"
fi
echo "test:pack: passed"
