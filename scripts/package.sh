#!/usr/bin/env bash
# Builds the .deb and the .rpm of liftoff and of liftoff-plane from the static
# musl binaries.
# Usage: scripts/package.sh   → target/x86_64-unknown-linux-musl/debian/{liftoff,liftoff-plane}_*.deb,
#                               target/x86_64-unknown-linux-musl/generate-rpm/{liftoff,liftoff-plane}-*.rpm
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
cargo deb --version >/dev/null 2>&1 || cargo install cargo-deb --locked
cargo generate-rpm --version >/dev/null 2>&1 || cargo install cargo-generate-rpm --locked
cargo build --release --target x86_64-unknown-linux-musl
cargo deb --no-build --no-strip --target x86_64-unknown-linux-musl
cargo generate-rpm --target x86_64-unknown-linux-musl
cargo deb --no-build --no-strip --target x86_64-unknown-linux-musl --variant plane
cargo generate-rpm --target x86_64-unknown-linux-musl --variant plane
ls -l target/x86_64-unknown-linux-musl/debian/*.deb target/x86_64-unknown-linux-musl/generate-rpm/*.rpm 2>/dev/null || ls -l target/debian/*.deb target/generate-rpm/*.rpm
