#!/usr/bin/env bash
# Regenerates what `liftoff config` owns in the documents: the variable
# table in README.md and docs/configuration.md, and the body of
# packaging/liftoff.env (below its header). tests/docs.rs checks they agree.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --bin liftoff
bin=target/debug/liftoff
table=$(mktemp) body=$(mktemp)
trap 'rm -f "$table" "$body"' EXIT
"$bin" config --variables > "$table"
"$bin" config --example-env > "$body"
python3 - "$table" "$body" <<'PY'
import sys
table = open(sys.argv[1]).read()
body = open(sys.argv[2]).read()
for doc in ["README.md", "docs/configuration.md"]:
    lines = open(doc).read().split("\n")
    start = next(i for i, l in enumerate(lines) if l.startswith("| variable | default | meaning |"))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    new = lines[:start] + table.rstrip("\n").split("\n") + lines[end:]
    open(doc, "w").write("\n".join(new))
env = open("packaging/liftoff.env").read()
marker = "# This file holds secrets"
head_end = env.index("\n\n", env.index(marker)) + 2
open("packaging/liftoff.env", "w").write(env[:head_end] + body)
PY
echo "regenerated README.md, docs/configuration.md and packaging/liftoff.env"
