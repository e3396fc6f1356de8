#!/bin/bash
# Build (or reuse) the dom0 VM image: Xen 4.17 + a Debian bookworm PV dom0.
#
#   integration/vm/build-image.sh [CACHE_DIR]      (default: .cache/integration)
#
# Prints the image directory (xen, vmlinuz, initrd.img, rootfs.img, base-dir)
# on stdout's last line; everything else goes to stderr.  Two cached stages, each keyed by a
# content hash so that only a changed recipe rebuilds:
#   base-<key>/   debootstrap tree; key = packages.list + the build_base function
#   image-<key>/  boot artefacts;   key = base key + this script, packages.list, dom0-init
# debootstrap's and apt's downloads are kept in debcache/ across rebuilds.
# Exit status: 0 ok, 10 a prerequisite is missing (named on stderr), 11 build failed.
set -eEuo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=$(mkdir -p "${1:-$HERE/../../.cache/integration}" && cd "${1:-$HERE/../../.cache/integration}" && pwd)
MIRROR=${XLPY_VM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
log() { echo "build-image: $*" >&2; }
fail() { log "$*"; exit 11; }
# Mounts left under a tree would make `rm -rf` of it reach into what they show.
unmount_under() {
  awk -v p="$1/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
}
trap 'log "failed at line $LINENO"; [ -n "${BASE:-}" ] && unmount_under "$BASE"; exit 11' ERR

"$HERE/check-prereqs.sh" build || exit $?

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

# Commands in the tree run with a clean environment: the host's PIP_*, PYTHON*
# or LC_* settings must not leak into dom0's tools.
in_root() {
  local root=$1; shift
  chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"
}

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
  mkdir -p "$debcache/partial"
  # The dom0 initrd only needs to mount ext4 from virtio-blk: MODULES=list keeps it ~7 MB.
  # (files no package owns, so dpkg asks no conffile question)
  mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/usr/share/initramfs-tools/modules.d"
  printf 'MODULES=list\nCOMPRESS=gzip\n' > "$root/etc/initramfs-tools/conf.d/xlpy-vm.conf"
  printf 'virtio_pci\nvirtio_blk\next4\n' > "$root/usr/share/initramfs-tools/modules.d/xlpy-vm"
  in_root "$root" apt-get update -q >&2
  # shellcheck disable=SC2046
  in_root "$root" nice -n 10 apt-get install -y -q --no-install-recommends $(packages) >&2
  # The project's runtime dependencies that Debian does not ship at the right version.
  mkdir -p "$root/mnt/wheels"
  mount --bind "$WHEELS" "$root/mnt/wheels"
  in_root "$root" python3 -m pip install --quiet --no-index --find-links /mnt/wheels \
    --break-system-packages --root-user-action=ignore "$NUMPY_SPEC" >&2
  unmount_under "$root"
  local kver
  kver=$(ls "$root/lib/modules" | sort -V | tail -1)
  # Trim what a headless dom0 without hardware never loads: about half of /lib/modules.
  local m=$root/lib/modules/$kver/kernel
  rm -rf "$m/sound" "$m/drivers/gpu" "$m/drivers/media" "$m/drivers/net/wireless" \
    "$m/drivers/infiniband" "$m/drivers/staging" "$m/drivers/bluetooth" "$m/drivers/iio" \
    "$m/drivers/usb" "$m/drivers/hid" "$m/drivers/isdn" "$m/net/wireless" "$m/net/mac80211" \
    "$m/net/bluetooth"
  in_root "$root" depmod "$kver"
  in_root "$root" update-initramfs -u -k "$kver" >&2
  rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
    "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
  rm -f "$root/usr/sbin/policy-rc.d"
}

hash_of() { sha256sum | cut -c1-16; }
BASE_KEY=$( { echo "$SUITE $MIRROR $NUMPY_SPEC"; packages; declare -f in_root build_base; } | hash_of)
IMAGE_KEY=$( { echo "$BASE_KEY"; cd "$HERE" && sha256sum build-image.sh packages.list dom0-init; } \
  | hash_of)
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
  unmount_under "$BASE"
  rm -rf --one-file-system "$BASE"
  build_base "$BASE" "$DEBCACHE"
  touch "$BASE/.done"
  # Only the newest base is kept: a tree is ~600 MB.
  for old in "$CACHE"/base-*; do
    [ "$old" = "$BASE" ] || { unmount_under "$old"; rm -rf --one-file-system "$old"; }
  done
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
