#!/bin/bash
# Build (or reuse) the dom0 VM image: Xen 4.17 + a Debian bookworm PV dom0.
#
#   integration/vm/build-image.sh [CACHE_DIR]      (default: .cache/integration)
#
# Prints the image directory (xen, vmlinuz, initrd.img, rootfs.img, base-dir)
# on stdout's last line; everything else goes to stderr.  Two cached stages, each keyed by a
# content hash so that only a changed recipe rebuilds:
#   base-<key>/   debootstrap tree; key = packages.list + the build_base function
#   image-<key>/  boot artefacts;   key = base key + every file of integration/vm/
# debootstrap's and apt's downloads are kept in debcache/ across rebuilds.
# Exit status: 0 ok, 10 a prerequisite is missing (named on stderr), 11 build failed.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=$(mkdir -p "${1:-$HERE/../../.cache/integration}" && cd "${1:-$HERE/../../.cache/integration}" && pwd)
MIRROR=${XLPY_VM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
log() { echo "build-image: $*" >&2; }
fail() { log "$*"; exit 11; }

"$HERE/check-prereqs.sh" build

# numpy from PyPI, not Debian: bookworm's 1.24 is below pyproject's floor, and
# numpy >= 2.3 needs x86-64-v2, which QEMU's qemu64 CPU model lacks.
NUMPY_SPEC=numpy==1.26.4
WHEELS=$CACHE/wheels
if ! ls "$WHEELS"/numpy-"${NUMPY_SPEC#numpy==}"-cp311-*.whl >/dev/null 2>&1; then
  log "fetching the $NUMPY_SPEC wheel for dom0's Python 3.11 into $WHEELS"
  mkdir -p "$WHEELS"
  python3 -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.11 \
    --platform manylinux2014_x86_64 --implementation cp --abi cp311 -d "$WHEELS" "$NUMPY_SPEC" \
    || { log "missing: the $NUMPY_SPEC wheel (needs python3 -m pip and network once)"; exit 10; }
fi

packages() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$HERE/packages.list" | tr -d ' '; }

# Stage 1: a Debian tree with Xen, the kernel, Python and the small dom0 initrd.
# Its text is part of the base key, so editing it rebuilds the base.
build_base() {
  local root=$1 debcache=$2
  nice -n 10 debootstrap --variant=minbase --cache-dir="$debcache" "$SUITE" "$root" "$MIRROR" >&2
  # No service may start inside the chroot while packages install.
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod 755 "$root/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  mount -t proc proc "$root/proc"
  mount --bind "$debcache" "$root/var/cache/apt/archives"
  trap 'umount "$root/var/cache/apt/archives" "$root/proc" 2>/dev/null || true' RETURN
  mkdir -p "$debcache/partial"
  # The dom0 initrd only needs to mount ext4 from virtio-blk: MODULES=list keeps it ~7 MB.
  # (files no package owns, so dpkg asks no conffile question)
  mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/usr/share/initramfs-tools/modules.d"
  printf 'MODULES=list\nCOMPRESS=gzip\n' > "$root/etc/initramfs-tools/conf.d/xlpy-vm.conf"
  printf 'virtio_pci\nvirtio_blk\next4\n' > "$root/usr/share/initramfs-tools/modules.d/xlpy-vm"
  chroot "$root" apt-get update -q >&2
  # shellcheck disable=SC2046
  DEBIAN_FRONTEND=noninteractive nice -n 10 chroot "$root" \
    apt-get install -y -q --no-install-recommends $(packages) >&2
  # The project's runtime dependencies that Debian does not ship at the right version.
  mkdir -p "$root/mnt/wheels"
  mount --bind "$WHEELS" "$root/mnt/wheels"
  chroot "$root" python3 -m pip install --quiet --no-index --find-links /mnt/wheels \
    --break-system-packages --root-user-action=ignore "$NUMPY_SPEC" >&2
  umount "$root/mnt/wheels"
  local kver
  kver=$(ls "$root/lib/modules" | sort -V | tail -1)
  # Trim what a headless dom0 without hardware never loads: about half of /lib/modules.
  local m=$root/lib/modules/$kver/kernel
  rm -rf "$m/sound" "$m/drivers/gpu" "$m/drivers/media" "$m/drivers/net/wireless" \
    "$m/drivers/infiniband" "$m/drivers/staging" "$m/drivers/bluetooth" "$m/drivers/iio" \
    "$m/drivers/usb" "$m/drivers/hid" "$m/drivers/isdn" "$m/net/wireless" "$m/net/mac80211" \
    "$m/net/bluetooth"
  chroot "$root" depmod "$kver"
  chroot "$root" update-initramfs -u -k "$kver" >&2
  rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
    "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
  rm -f "$root/usr/sbin/policy-rc.d"
}

hash_of() { sha256sum | cut -c1-16; }
BASE_KEY=$( { echo "$SUITE $MIRROR $NUMPY_SPEC"; packages; declare -f build_base; } | hash_of)
IMAGE_KEY=$( { echo "$BASE_KEY"; cd "$HERE" && find . -type f ! -name '*~' -print0 | sort -z \
  | xargs -0 sha256sum; } | hash_of)
BASE=$CACHE/base-$BASE_KEY
IMAGE=$CACHE/image-$IMAGE_KEY
DEBCACHE=$CACHE/debcache
mkdir -p "$DEBCACHE"

if [ -f "$IMAGE/.done" ]; then
  log "image up to date: $IMAGE"
  echo "$IMAGE"; exit 0
fi

if [ ! -f "$BASE/.done" ]; then
  log "building base tree $BASE (debootstrap; a few minutes)"
  rm -rf "$BASE"
  build_base "$BASE" "$DEBCACHE" || fail "base tree build failed (see above)"
  touch "$BASE/.done"
  # Only the newest base is kept: a tree is ~600 MB.
  find "$CACHE" -maxdepth 1 -name 'base-*' ! -path "$BASE" -exec rm -rf {} + || true
fi

# Stage 2: our files into the tree (idempotent), boot artefacts, ext4 image.
log "building image $IMAGE"
KVER=$(ls "$BASE/lib/modules" | sort -V | tail -1)
rm -rf "$BASE/opt/xlpy-vm" "$IMAGE.tmp"
install -d "$BASE/opt/xlpy-vm"
install -m 755 "$HERE/dom0-init" "$BASE/opt/xlpy-vm/"
echo xlpy-dom0 > "$BASE/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 xlpy-dom0\n' > "$BASE/etc/hosts"
mkdir -p "$IMAGE.tmp"
# QEMU's multiboot loader needs the uncompressed 32-bit Xen ELF.
zcat "$BASE/boot/xen-4.17-amd64.gz" > "$IMAGE.tmp/xen"
cp "$BASE/boot/vmlinuz-$KVER" "$IMAGE.tmp/vmlinuz"
cp "$BASE/boot/initrd.img-$KVER" "$IMAGE.tmp/initrd.img"
size_mb=$(( $(du -sm "$BASE" | cut -f1) * 12 / 10 + 128 ))
# mkfs.ext4 -d fills the file system from the tree: no loop mount needed.
nice -n 10 mkfs.ext4 -q -F -L xlpy-dom0 -d "$BASE" "$IMAGE.tmp/rootfs.img" "${size_mb}M" >&2 \
  || fail "mkfs.ext4 -d failed"
# run-vm.sh installs the working tree with this tree's own pip (in a chroot).
echo "$BASE" > "$IMAGE.tmp/base-dir"
touch "$IMAGE.tmp/.done"
mv "$IMAGE.tmp" "$IMAGE"
find "$CACHE" -maxdepth 1 -name 'image-*' ! -path "$IMAGE" -exec rm -rf {} + || true
log "image ready: $IMAGE ($(du -sh "$IMAGE" | cut -f1) allocated)"
echo "$IMAGE"
