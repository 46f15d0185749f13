#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine or a developer's: installs
# what the tests need when it is missing (Debian packages, the musl target,
# cargo-audit), then runs fmt, clippy, every test, the static musl release
# build with its static-link check, and the offline advisory audit.
# Usage: scripts/test.sh        (as root, or with sudo available)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Debian packages the tests use: mosquitto (real MQTT brokers), openssl (keys,
# CSRs, CAs as the seed tells users), bubblewrap (benchmark peer), musl-tools
# (static build), rpm (package inspection), iproute2 (network namespaces),
# util-linux/passwd (unprivileged test user), binutils (readelf), socat (a
# relay process to kill or freeze in front of the long-poll test plane),
# tinyproxy (a real HTTP CONNECT proxy).
packages=(mosquitto mosquitto-clients openssl ca-certificates bubblewrap musl-tools rpm iproute2 util-linux passwd binutils procps socat tinyproxy)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "installing Debian packages: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    step "adding the x86_64-unknown-linux-musl target"
    rustup target add x86_64-unknown-linux-musl
fi
for c in rustfmt clippy; do
    rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done
# Cargo tools the suite uses: the offline advisory audit and the packagers.
for tool in audit deb generate-rpm; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        step "installing cargo-$tool"
        cargo install "cargo-$tool" --locked
    fi
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets -- -D warnings

step "cargo test --all-targets"
cargo test --all-targets

step "static release build for x86_64-unknown-linux-musl"
cargo build --release --target x86_64-unknown-linux-musl
bin=target/x86_64-unknown-linux-musl/release/liftoff
if readelf -d "$bin" 2>/dev/null | grep -q NEEDED || readelf -l "$bin" | grep -q INTERP; then
    echo "FAIL: $bin is dynamically linked:" >&2
    readelf -d "$bin" >&2 || true
    exit 1
fi
"$bin" version
echo "static binary: $bin, $(stat -c %s "$bin") bytes"

# The suites that run the binary (sandbox, exec, run) again, against the
# shipped static musl build instead of the debug glibc one. run_source,
# run_env, run_cache and run_policy drive the executor in-process, so they
# have no binary to swap and ran above.
step "sandbox, exec and run suites against the static musl binary"
LIFTOFF_TEST_BIN="$PWD/$bin" cargo test --test sandbox_run --test sandbox_escape \
    --test sandbox_unprivileged --test exec_logs --test exec_validate --test run_e2e

# The offline advisory database beside the checkout when there is one (the
# shared build host); otherwise cargo audit fetches its own copy.
db=../shared/advisory-db
if [ -d "$db" ]; then
    step "cargo audit (offline database $db)"
    cargo audit --db "$db" --no-fetch --deny warnings
else
    step "cargo audit (no $db here: fetching the advisory database)"
    cargo audit --deny warnings
fi

step "all checks passed"
