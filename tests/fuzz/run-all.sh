#!/bin/sh
# `make fuzz`: every fuzz target (tests/fuzz/fuzz_<target>.py), one after another, for
# FUZZ_SECONDS each (default 60: the machine may be shared, so never in parallel).
# FUZZ_TARGETS="receiver convert" picks some; further arguments go to libFuzzer.
# Each target's output goes to .cache/fuzz/<target>.log; the closing note gives the
# executions per target.  A crash (an exception that is not an XlpyError) fails the run
# after every target has had its turn; libFuzzer leaves the input as ./crash-<sha1>.
# Usage: tests/fuzz/run-all.sh PYTHON [libFuzzer flags]
set -u
cd "$(dirname "$0")/../.."
py=$1
shift
seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-$(for f in tests/fuzz/fuzz_*.py; do t=${f#tests/fuzz/fuzz_}; echo "${t%.py}"; done)}
mkdir -p .cache/fuzz
note=""
failed=""
for t in $targets; do
    log=.cache/fuzz/$t.log
    echo "fuzz $t: $seconds s (output in $log)"
    if "$py" "tests/fuzz/fuzz_$t.py" -max_total_time="$seconds" "$@" >"$log" 2>&1; then
        verdict=ok
    else
        verdict=FAILED
        failed="$failed $t"
        tail -n 30 "$log"
    fi
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 executions in \2 s/p' "$log")
    # a crash ends the run without libFuzzer's "Done" line: its last status line counts
    [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\).*/stopped after \1 executions/p' "$log" | tail -n 1)
    note="$note$(printf '  %-12s %-28s %s' "$t" "${runs:-no executions}" "$verdict")
"
done
printf 'fuzz: executions per target (%s s each)\n%s' "$seconds" "$note"
if [ -n "$failed" ]; then
    echo "fuzz: findings in:$failed" >&2
    exit 1
fi
