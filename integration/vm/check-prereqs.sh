#!/bin/bash
# check-prereqs.sh build|run: exit 10 naming every missing prerequisite, else 0.
# The harness never passes silently: a machine that cannot build or boot the
# VM says what to install.
missing=()
need() {  # need COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin command -v "$1" >/dev/null 2>&1 \
    || missing+=("$1 (apt-get install $2)")
}
[ "$(id -u)" = 0 ] || missing+=("root (debootstrap, chroot and mkfs of a root-owned tree need uid 0)")
case "${1:-}" in
  build)
    need debootstrap debootstrap
    need mkfs.ext4 e2fsprogs
    need chroot coreutils
    need zcat gzip
    ;;
  run)
    need qemu-system-x86_64 qemu-system-x86
    need tar tar
    need truncate coreutils
    need git git
    need as binutils
    need ld binutils
    ;;
  *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
if [ ${#missing[@]} -gt 0 ]; then
  echo "integration: cannot ${1} the Xen VM; missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 10
fi
