#!/bin/sh
# End-to-end logs bench through `liftoff exec`: a job writing SIZE of base64
# (`head -c 1G /dev/urandom | base64`) in the full sandbox with 100 masked
# variables, its output masked, chunked and written to a log file, against
# the same command run bare into a file, in the same script.
#
# Each round runs both, in alternating order; before each timed run the
# other's output is deleted and `sync`ed (untimed), so neither pays for the
# other's 1.4 GB of dirty page cache being written back. Prints each round,
# the median wall-time ratio (target <= 1.3) and liftoff's largest peak RSS
# (target <= 16 MiB; GNU time's %M, an upper bound: it includes the init).
#
# Usage (as root): sh benches/exec_logs.sh [SIZE] [ROUNDS]   (default 1G 5)
# LIFTOFF_BENCH_BIN=path skips the release build.
set -eu
SIZE=${1:-1G}
ROUNDS=${2:-5}
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
fresh() { rm -f "$TMP/out.log"; sync; }
bare() {
    fresh
    t0=$(now); sh -c "$JOB" > "$TMP/out.log"; t1=$(now)
    BARE_S=$(echo "$t1 $t0" | awk '{print $1 - $2}')
    BARE_BYTES=$(stat -c %s "$TMP/out.log")
}
piped() {
    fresh
    t0=$(now)
    # shellcheck disable=SC2086
    /usr/bin/time -f "%M" -o "$TMP/rss" "$BIN" exec $ARGS --log-file "$TMP/out.log" -- /bin/sh -c "$JOB"
    t1=$(now)
    PIPED_S=$(echo "$t1 $t0" | awk '{print $1 - $2}')
    PIPED_BYTES=$(stat -c %s "$TMP/out.log")
    RSS=$(cat "$TMP/rss")
}
: > "$TMP/rounds"
r=1
while [ $r -le "$ROUNDS" ]; do
    if [ $((r % 2)) -eq 1 ]; then bare; piped; else piped; bare; fi
    if [ "$BARE_BYTES" != "$PIPED_BYTES" ]; then
        echo "round $r: the log file has $PIPED_BYTES bytes, the bare output $BARE_BYTES" >&2
        exit 1
    fi
    echo "$BARE_S $PIPED_S $RSS" >> "$TMP/rounds"
    echo "$r $BARE_S $PIPED_S $RSS $PIPED_BYTES" | awk '{
        printf "round %d: bare %.2fs, liftoff exec with 100 masks %.2fs, ratio %.2f, peak RSS %.1f MiB, %d bytes each\n",
            $1, $2, $3, $3 / $2, $4 / 1024, $5 }'
    r=$((r + 1))
done
awk '{ print $2 / $1, $3 }' "$TMP/rounds" | sort -n | awk '
    { ratio[NR] = $1; if ($2 > rss) rss = $2 }
    END {
        m = (NR % 2) ? ratio[(NR + 1) / 2] : (ratio[NR / 2] + ratio[NR / 2 + 1]) / 2
        printf "median ratio %.2f over %d rounds (target <= 1.3); largest liftoff peak RSS %.1f MiB (target <= 16 MiB)\n", m, NR, rss / 1024
    }'
