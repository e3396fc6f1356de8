#!/usr/bin/env bash
# Unpack Debian bookworm's Xen 4.17 user-space pieces into a cache folder,
# without root and without installing anything: apt-get download + dpkg -x.
# Usage: tools/fetch-xen.sh [DEST]   (default .cache/xen-4.17)
# Exit 3 when apt-get/dpkg are missing, 4 when the packages cannot be had.
set -euo pipefail
dest=${1:-.cache/xen-4.17}
stamp="$dest/.complete"
[ -f "$stamp" ] && exit 0
for tool in apt-get dpkg; do
  command -v "$tool" >/dev/null || { echo "fetch-xen: $tool not found: cannot fetch Debian's xen-utils-4.17" >&2; exit 3; }
done
pkgs=(xen-utils-4.17 libxenmisc4.17 libxen-dev xen-utils-common
      libxencall1 libxendevicemodel1 libxenevtchn1 libxenforeignmemory1
      libxengnttab1 libxenhypfs1 libxenstore4 libxentoolcore1 libxentoollog1)
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
download() { (cd "$dl" && apt-get download "${pkgs[@]}") >"$dl/log" 2>&1; }
if ! download; then
  echo "fetch-xen: apt-get download failed; refreshing package lists (apt-get update)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update >/dev/null 2>&1 || true; fi
  download || { cat "$dl/log" >&2; echo "fetch-xen: cannot download ${pkgs[*]}" >&2; exit 4; }
fi
tmp="$dest.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp"
for deb in "$dl"/*.deb; do dpkg -x "$deb" "$tmp"; done
ls "$dl"/*.deb | xargs -n1 basename > "$tmp/PACKAGES"
touch "$tmp/.complete"
rm -rf "$dest"; mkdir -p "$(dirname "$dest")"; mv "$tmp" "$dest"
echo "fetch-xen: unpacked $(wc -l < "$dest/PACKAGES") packages into $dest" >&2
