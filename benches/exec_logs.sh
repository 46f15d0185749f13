#!/bin/sh
# End-to-end logs bench through `liftoff exec`: a job writing SIZE of base64
# (`head -c 1G /dev/urandom | base64`) in the full sandbox with 100 masked
# variables, its output masked, chunked, spooled and written to a log file,
# against the same command run bare into a file, in the same script.
# Prints the wall-time ratio (target <= 1.3) and liftoff's peak RSS
# (target <= 16 MiB; GNU time's %M, an upper bound: it includes the init).
# Usage (as root): sh benches/exec_logs.sh [SIZE]   (default 1G)
set -eu
SIZE=${1:-1G}
cd "$(dirname "$0")/.."
BIN=${LIFTOFF_BENCH_BIN:-target/release/liftoff}
[ -n "${LIFTOFF_BENCH_BIN:-}" ] || cargo build --release >/dev/null
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
ARGS=""
i=0
while [ $i -lt 100 ]; do
    export "MASKED_$i=secret-value-$i-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    ARGS="$ARGS --pass-env MASKED_$i --mask MASKED_$i"
    i=$((i + 1))
done
JOB="head -c $SIZE /dev/urandom | base64"
now() { date +%s.%N; }
t0=$(now); sh -c "$JOB" > "$TMP/bare.log"; t1=$(now)
# shellcheck disable=SC2086
/usr/bin/time -f "%M" -o "$TMP/rss" "$BIN" exec $ARGS --log-file "$TMP/piped.log" -- /bin/sh -c "$JOB"
t2=$(now)
awk -v a="$t0" -v b="$t1" -v c="$t2" -v rss="$(cat "$TMP/rss")" 'BEGIN {
    bare=b-a; piped=c-b;
    printf "bare %.2fs, liftoff exec with 100 masks %.2fs, ratio %.2f (target <= 1.3)\n", bare, piped, piped/bare;
    printf "liftoff peak RSS %.1f MiB (target <= 16 MiB)\n", rss/1024 }'
ls -l "$TMP/bare.log" "$TMP/piped.log" | awk '{print $5, $9}'
