#!/bin/sh
# The static musl launcher's size against its limit (issue 19: at most
# 8 MiB, 8,388,608 bytes, and staying there as features land). Prints the
# size, the room left and the ratio to the limit; exits 1 over the limit.
# Usage: sh benches/binary_size.sh [BINARY]
#        (default target/x86_64-unknown-linux-musl/release/liftoff, built
#        with `cargo build --release --target x86_64-unknown-linux-musl`)
# To see what each dependency adds: `cargo install cargo-bloat`, then
# CARGO_PROFILE_RELEASE_STRIP=false cargo bloat --release \
#     --target x86_64-unknown-linux-musl --bin liftoff --crates
set -eu
cd "$(dirname "$0")/.."
BIN=${1:-target/x86_64-unknown-linux-musl/release/liftoff}
LIMIT=8388608
[ -f "$BIN" ] || { echo "no $BIN: build it first (cargo build --release --target x86_64-unknown-linux-musl)" >&2; exit 1; }
SIZE=$(stat -c %s "$BIN")
echo "$SIZE $LIMIT" | awk '{
    printf "static binary %s: %d bytes (%.2f MiB), limit %d (8 MiB), ratio %.3f, room %d bytes\n",
        "'"$BIN"'", $1, $1 / 1048576, $2, $1 / $2, $2 - $1 }'
if [ "$SIZE" -gt "$LIMIT" ]; then
    echo "FAIL: the static binary is over 8 MiB: see what each dependency adds (cargo bloat, above) and cut features a launcher does not need" >&2
    exit 1
fi
