#!/usr/bin/env bash
# Fetches Debian's Xen libraries and headers of several Xen releases, for the interop tests
# (scripts/test-releases.sh): bullseye (Xen 4.14), bookworm (4.17), trixie (4.20).
#   scripts/xen-releases.sh DEST     ->  DEST/<suite>/root (the packages unpacked), DEST/<suite>/version
# Uses apt with a private state directory and the mirror this machine's apt already uses, so it
# needs no root and leaves the system's apt alone. Already fetched suites are kept.
set -euo pipefail
dest=${1:?usage: xen-releases.sh DEST}
here=$(cd "$(dirname "$0")" && pwd)
mirror=$(bash "$here/debian-mirror.sh")
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || { echo "xen-releases: $keyring missing (apt-get install debian-archive-keyring)" >&2; exit 1; }
mkdir -p "$dest"

# suite  xenstore package (its soname changed in 4.16)
releases=("bullseye libxenstore3.0" "bookworm libxenstore4" "trixie libxenstore4")
for entry in "${releases[@]}"; do
  read -r suite xspkg <<<"$entry"
  out="$dest/$suite"
  [ -f "$out/version" ] && continue
  apt=$(mktemp -d)
  mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/debs" && : >"$apt/status"
  echo "deb [signed-by=$keyring] $mirror $suite main" >"$apt/sources.list"
  opts=(-q -o "Dir::State=$apt" -o "Dir::State::Lists=$apt/lists" -o "Dir::State::status=$apt/status" -o "Dir::Cache=$apt" -o "Dir::Cache::Archives=$apt/archives"
        -o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null" -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" update >"$apt/update.log" 2>&1 || { cat "$apt/update.log" >&2; exit 1; }
  version=$(apt-cache "${opts[@]}" show libxen-dev | sed -n 's/^Version: //p' | head -1)
  xen=$(echo "$version" | grep -o '^[0-9]*\.[0-9]*')
  ( cd "$apt/debs" && apt-get "${opts[@]}" download "libxen-dev=$version" "libxenmisc$xen=$version" "$xspkg=$version" \
      "libxenevtchn1=$version" "libxengnttab1=$version" "libxentoollog1=$version" "libxentoolcore1=$version" \
      >"$apt/download.log" 2>&1 ) || { cat "$apt/download.log" >&2; exit 1; }
  rm -rf "$out.tmp" && mkdir -p "$out.tmp/root"
  for d in "$apt/debs"/*.deb; do dpkg-deb -x "$d" "$out.tmp/root"; done
  echo "$xen $version" >"$out.tmp/version"
  rm -rf "$out" && mv "$out.tmp" "$out"
  rm -rf "$apt"
  echo "xen-releases: $suite: Xen $version"
done
