#!/bin/sh
# End-to-end logs bench, library side (liftoff exec is not on this branch):
# a job writing SIZE of base64 (`head -c 1G /dev/urandom | base64`) through
# the whole logs pipeline (100 masks, chunk, spool, log file) against the same
# command run bare into a file. Prints the wall-time ratio (target <= 1.3) and
# the pipeline's peak RSS (target <= 16 MiB).
# Usage: sh benches/e2e_logs.sh [SIZE] (default 1G)
set -eu
SIZE=${1:-1G}
cd "$(dirname "$0")/.."
cargo build --release --example logs_pipe >/dev/null
BIN=target/release/examples/logs_pipe
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
JOB="head -c $SIZE /dev/urandom | base64"
now() { date +%s.%N; }
t0=$(now); sh -c "$JOB" > "$TMP/bare.log"; t1=$(now)
sh -c "$JOB" | "$BIN" --masks 100 --log-file "$TMP/piped.log" --state-dir "$TMP/state" 2> "$TMP/report"; t2=$(now)
cat "$TMP/report"
awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { bare=b-a; piped=c-b; printf "bare %.2fs, through the pipeline %.2fs, ratio %.2f (target <= 1.3)\n", bare, piped, piped/bare }'
ls -l "$TMP/bare.log" "$TMP/piped.log" | awk '{print $5, $9}'
