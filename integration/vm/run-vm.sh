#!/bin/bash
# Boot Xen 4.17 + dom0 in QEMU and run the integration suite inside dom0.
#
#   integration/vm/run-vm.sh            (what `make integration` runs)
#
# Builds the image if its recipe changed (build-image.sh), packs the working
# tree onto a payload disk, boots, and brings back RUN/results/: junit.xml,
# pytest.txt, status, xl-dmesg.txt, dom0-dmesg.txt, xl/xenstored/qemu-dm logs of
# /var/log/xen, console/ (guest consoles).  RUN/serial.log is Xen's and dom0's
# console, RUN/qemu.err QEMU's, RUN/pip-install.txt the install of the working
# tree, RUN/timings.txt the boot/suite timeline.
# Environment:
#   XLPY_VM_RUN            run directory (default .cache/integration/last-run)
#   XLPY_VM_SUITE_TIMEOUT  seconds the suite may take inside dom0 (default 2400: a bound, not a
#                          budget; an idle run takes about 10 minutes)
#   XLPY_VM_TIMEOUT        wall-clock bound on the whole VM (default suite + 300 s)
#   XLPY_VM_PYTEST_ARGS    extra pytest arguments, e.g. "-k save_restore -x"
#   XLPY_VM_ACCEL          QEMU accelerator options (default TCG: this host's
#                          nested KVM cannot run Xen; on a host with real nested
#                          SVM/VMX use "-enable-kvm -cpu host")
# Exit status: the suite's (pytest: 0 passed, 1 failed, 2-5 pytest errors), or
#   10 a prerequisite is missing, 11 image build failed, 12 wall-clock bound hit
#   (VM killed or suite timed out), 13 the VM ended without a suite result
#   (Xen or dom0 crashed, payload or pip install failed: see serial.log, results/).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
CACHE=$TOP/.cache/integration
RUN=${XLPY_VM_RUN:-$CACHE/last-run}
SUITE_TIMEOUT=${XLPY_VM_SUITE_TIMEOUT:-2400}
TIMEOUT=${XLPY_VM_TIMEOUT:-$((SUITE_TIMEOUT + 300))}
ACCEL=${XLPY_VM_ACCEL:--accel tcg,thread=multi -cpu qemu64,+svm,+npt}
log() { echo "run-vm: $*" >&2; }

"$HERE/check-prereqs.sh" run || exit $?
IMAGE=$("$HERE/build-image.sh" "$CACHE") || exit $?
IMAGE=${IMAGE##*$'\n'}

# --- payload disk.  The working tree (tracked and untracked files, minus
# ignored ones) is installed by dom0's own Python and pip (byte-compiled too),
# run natively in a chroot of the image's base tree (pip under emulation takes
# minutes), into a
# separate root that dom0 copies over / at boot.  The integration tests travel
# on their own, so that `import xlpy` in dom0 finds only the installed package.
BASE=$(cat "$IMAGE/base-dir")
rm -rf "$RUN"; mkdir -p "$RUN/payload/root" "$RUN/payload/tests-root"
STAGE=$(mktemp -d "$BASE/mnt/xlpy-install.XXXXXX")
cleanup() { umount "$STAGE/src" "$STAGE/root" 2>/dev/null; rm -rf "$STAGE"; }
trap cleanup EXIT
mkdir -p "$STAGE/src" "$STAGE/root" "$RUN/src"
(cd "$TOP" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) \
  | tar -C "$RUN/src" -xf - || { log "cannot copy the working tree"; exit 13; }
mount --bind "$RUN/src" "$STAGE/src" && mount --bind "$RUN/payload/root" "$STAGE/root" \
  || { log "cannot bind-mount the install staging directories"; exit 13; }
# A clean environment: the host's PIP_* settings must not steer dom0's pip.
if ! chroot "$BASE" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    python3 -m pip install --no-index --no-build-isolation \
    --no-cache-dir --break-system-packages --root-user-action=ignore \
    --root "/mnt/$(basename "$STAGE")/root" "/mnt/$(basename "$STAGE")/src" \
    > "$RUN/pip-install.txt" 2>&1; then
  cat "$RUN/pip-install.txt" >&2
  log "pip install of the working tree failed (dom0's pip, in a chroot of $BASE)"
  exit 13
fi
cleanup; trap - EXIT
cp -a "$RUN/src/integration" "$RUN/src/pyproject.toml" "$RUN/payload/tests-root/"
# The tiny HVM guest is assembled here: dom0's image has no toolchain.
GUEST=$RUN/payload/tests-root/integration/guest
as --32 -o "$RUN/hvm-tick.o" "$GUEST/hvm-tick.S" \
  && ld -m elf_i386 -N -Ttext 0x100000 -e _start --build-id=none --no-warn-rwx-segments \
    -o "$GUEST/hvm-tick.elf" "$RUN/hvm-tick.o" \
  || { log "cannot assemble the HVM guest $GUEST/hvm-tick.S"; exit 13; }
rm -f "$RUN/hvm-tick.o"
rm -rf "$RUN/src"
tar -C "$RUN/payload" -cf "$RUN/payload.tar" . && rm -rf "$RUN/payload"
truncate -s 256M "$RUN/results.img"   # raw results disk: dom0 writes a tar stream

XEN_CMDLINE="console=com1 com1=115200,8n1 dom0_mem=1536M,max:1536M dom0_max_vcpus=2 loglvl=all guest_loglvl=all"
DOM0_CMDLINE="root=/dev/vda ro console=hvc0 earlyprintk=xen init=/opt/xlpy-vm/dom0-init loglevel=4"
DOM0_CMDLINE+=" net.ifnames=0 xlpy.timeout=$SUITE_TIMEOUT"
[ -n "${XLPY_VM_PYTEST_ARGS:-}" ] && DOM0_CMDLINE+=" xlpy.pytest=${XLPY_VM_PYTEST_ARGS// /+}"

T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
log "booting Xen + dom0 (bound ${TIMEOUT}s); console: $RUN/serial.log"
# shellcheck disable=SC2086
nice -n 10 qemu-system-x86_64 $ACCEL -smp 2 -m 3072 -machine pc \
  -nodefaults -display none -no-reboot -monitor none -serial "file:$RUN/serial.log" \
  -kernel "$IMAGE/xen" -append "$XEN_CMDLINE" \
  -initrd "$IMAGE/vmlinuz ${DOM0_CMDLINE//,/,,},$IMAGE/initrd.img" \
  -drive "file=$IMAGE/rootfs.img,if=virtio,format=raw,snapshot=on" \
  -drive "file=$RUN/payload.tar,if=virtio,format=raw,readonly=on" \
  -drive "file=$RUN/results.img,if=virtio,format=raw" \
  -nic none 2> "$RUN/qemu.err" &
QPID=$!
timed_out=0
seen=""
while kill -0 "$QPID" 2>/dev/null; do
  for m in "Xen version" "Linux version" START TOOLSTACK-UP XLPY-INSTALLED SUITE-DONE POWEROFF; do
    case " $seen " in *" $m "*) continue ;; esac
    if grep -aq -- "$m" "$RUN/serial.log" 2>/dev/null; then
      seen+=" $m"; echo "$m $(elapsed)s" | tee -a "$RUN/timings.txt" >&2
    fi
  done
  if awk -v t="$(elapsed)" -v m="$TIMEOUT" 'BEGIN{exit !(t > m)}'; then
    log "wall-clock bound of ${TIMEOUT}s hit: killing QEMU ($QPID)"
    kill "$QPID"; timed_out=1; break
  fi
  sleep 0.5
done
wait "$QPID"
echo "qemu-exited $(elapsed)s" | tee -a "$RUN/timings.txt" >&2

mkdir -p "$RUN/results"
tar -C "$RUN/results" -xf "$RUN/results.img" 2>/dev/null && rm -f "$RUN/results.img"
[ "$timed_out" = 1 ] && exit 12
status=$(cat "$RUN/results/status" 2>/dev/null)
if [ -z "$status" ]; then
  log "the VM ended without a suite result; see $RUN/serial.log and $RUN/results/"
  tail -n 30 "$RUN/serial.log" >&2
  exit 13
fi
[ "$status" = 124 ] || [ "$status" = 137 ] && { log "suite timed out in dom0 after ${SUITE_TIMEOUT}s"; exit 12; }
log "suite status $status; report: $RUN/results/pytest.txt, $RUN/results/junit.xml"
tail -n 15 "$RUN/results/pytest.txt" >&2
exit "$status"
