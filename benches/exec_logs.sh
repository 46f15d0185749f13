#!/bin/sh
# End-to-end logs benches through `liftoff exec`, each against its peer run
# in this script, interleaved (alternating order per round), medians:
#
# 1. CPU-bound job (`head -c SIZE /dev/urandom | base64`) in the full
#    sandbox with 100 masked variables, its output masked, chunked and
#    written to a log file (--log-file), against the same command run bare
#    into a file. Also liftoff's largest peak RSS (target <= 16 MiB; GNU
#    time's %M, an upper bound: it includes the init).
# 2. Trivially fast job, where the launcher's own overhead shows: `cat` of
#    FAST bytes of base64 (made once, untimed) inside the sandbox with 100
#    masks, liftoff's stdout redirected to a file, against the same `cat`
#    through one plain pipe into the file (`sh -c 'cat f' | cat > out`).
#    Target <= 1.3, byte-identical output (checked every round).
#
# Before each timed run the previous output is deleted and `sync`ed
# (untimed), so no run pays for another's dirty page cache being written
# back.
#
# Usage (as root): sh benches/exec_logs.sh [SIZE] [ROUNDS] [FAST]
#                  (default 1G 5 270M)
#        sh benches/exec_logs.sh smoke    (8M, 1 round, 8M: for CI; prints
#                  the same figures, asserts only byte-identical output)
# LIFTOFF_BENCH_BIN=path skips the release build.
set -eu
if [ "${1:-}" = smoke ]; then
    SIZE=8M ROUNDS=1 FAST=8M
else
    SIZE=${1:-1G}
    ROUNDS=${2:-5}
    FAST=${3:-270M}
fi
cd "$(dirname "$0")/.."
BIN=${LIFTOFF_BENCH_BIN:-target/release/liftoff}
[ -n "${LIFTOFF_BENCH_BIN:-}" ] || cargo build --release >/dev/null
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (liftoff's cgroups)" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
ARGS=""
i=0
while [ $i -lt 100 ]; do
    export "MASKED_$i=secret-value-$i-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    ARGS="$ARGS --pass-env MASKED_$i --mask MASKED_$i"
    i=$((i + 1))
done
now() { date +%s.%N; }
fresh() { rm -f "$TMP/out.log"; sync; }
median() { # stdin: one number a line
    sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# 1. CPU-bound job into --log-file.
JOB="head -c $SIZE /dev/urandom | base64"
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
        printf "cpu-bound job, round %d: bare %.2fs, liftoff exec --log-file with 100 masks %.2fs, ratio %.2f, peak RSS %.1f MiB, %d bytes each\n",
            $1, $2, $3, $3 / $2, $4 / 1024, $5 }'
    r=$((r + 1))
done
RATIO1=$(awk '{ print $2 / $1 }' "$TMP/rounds" | median)
RSS1=$(awk '{ if ($3 > m) m = $3 } END { print m / 1024 }' "$TMP/rounds")

# 2. Trivially fast job: cat of FAST bytes of base64, liftoff's stdout to a file.
WS="$TMP/ws"
mkdir "$WS"
fast_bytes=$(numfmt --from=iec "$FAST")
head -c $((fast_bytes * 3 / 4)) /dev/urandom | base64 > "$WS/f"
chmod 0644 "$WS/f"
cat_peer() {
    fresh
    t0=$(now); sh -c "cat '$WS/f'" | cat > "$TMP/out.log"; t1=$(now)
    PEER_S=$(echo "$t1 $t0" | awk '{print $1 - $2}')
    cmp -s "$WS/f" "$TMP/out.log" || { echo "the plain pipe did not copy the file" >&2; exit 1; }
}
cat_liftoff() {
    fresh
    t0=$(now)
    # shellcheck disable=SC2086
    "$BIN" exec --workspace "$WS" $ARGS -- cat /mnt/workspace/f > "$TMP/out.log" 2> "$TMP/err"
    t1=$(now)
    LO_S=$(echo "$t1 $t0" | awk '{print $1 - $2}')
    if ! cmp -s "$WS/f" "$TMP/out.log"; then
        echo "liftoff's masked output differs from the file (not byte-identical):" >&2
        cmp "$WS/f" "$TMP/out.log" >&2 || true
        cat "$TMP/err" >&2
        exit 1
    fi
}
: > "$TMP/fast"
r=1
while [ $r -le "$ROUNDS" ]; do
    if [ $((r % 2)) -eq 1 ]; then cat_peer; cat_liftoff; else cat_liftoff; cat_peer; fi
    echo "$PEER_S $LO_S" >> "$TMP/fast"
    echo "$r $PEER_S $LO_S $(stat -c %s "$WS/f")" | awk '{
        printf "fast job (cat), round %d: plain pipe %.3fs, liftoff exec with 100 masks to stdout %.3fs, ratio %.2f, %d bytes each, identical\n",
            $1, $2, $3, $3 / $2, $4 }'
    r=$((r + 1))
done
RATIO2=$(awk '{ print $2 / $1 }' "$TMP/fast" | median)
PEER2=$(awk '{ print $1 }' "$TMP/fast" | median)
LO2=$(awk '{ print $2 }' "$TMP/fast" | median)

echo "medians over $ROUNDS rounds:"
echo "$RATIO1 $RSS1" | awk '{ printf "  cpu-bound job (%s), --log-file, 100 masks: ratio %.2f to bare (target <= 1.3); largest peak RSS %.1f MiB (target <= 16 MiB)\n", "'"$SIZE"'", $1, $2 }'
echo "$RATIO2 $PEER2 $LO2" | awk '{ printf "  fast job (cat %s), stdout, 100 masks: ratio %.2f to a plain pipe (target <= 1.3): %.3fs vs %.3fs\n", "'"$FAST"'", $1, $3, $2 }'
