#!/usr/bin/env bash
# Prints the Debian mirror this machine's apt already uses (deb822 .sources first, then one-line
# .list entries), so scripts that fetch Debian packages never name a package host themselves.
set -euo pipefail
mirror=$( { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs: *//p' | tr ' ' '\n'
             cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" {print $2}'
           } | grep -v -e security -e '^$' | head -1 || true)
[ -n "$mirror" ] || { echo "no Debian mirror in this machine's apt sources (/etc/apt/sources.list*)" >&2; exit 1; }
echo "$mirror"
