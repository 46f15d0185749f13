#!/usr/bin/env bash
# A sample pool, made the way the seed tells users, with a throwaway CA standing
# in for the control plane: a key and CSR from openssl, a certificate signed
# from the CSR, a token naming two regional brokers. Then `liftoff check` on it.
# Usage: examples/quickstart.sh [path/to/liftoff]
set -euo pipefail
liftoff=${1:-liftoff}
case "$liftoff" in */*) liftoff=$(realpath "$liftoff") ;; esac
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"

# The user's side (the seed's command, non-interactive subject).
openssl req -new -newkey rsa:4096 -nodes -keyout spacelift.key -out spacelift.csr -subj "/CN=quickstart-pool" 2>/dev/null

# The control plane's side: sign the CSR, put the certificate into a token.
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj "/CN=quickstart CA" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > ext
openssl x509 -req -in spacelift.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -extfile ext -out spacelift.crt 2>/dev/null
python3 - > token <<'PY'
import base64, json
doc = {
    "version": 1,
    "pool_id": "01JD6Z8X5N4T3K2M1P0Q9R8S7T",
    "brokers": [
        {"region": "eu-west-1", "url": "mqtts://127.0.0.1:8883"},
        {"region": "eu-central-1", "url": "mqtts://127.0.0.1:8884"},
    ],
    "certificate": open("spacelift.crt").read(),
    "ca": open("ca.crt").read(),
}
print(base64.b64encode(json.dumps(doc).encode()).decode())
PY

export SPACELIFT_TOKEN="$(cat token)"
export SPACELIFT_POOL_PRIVATE_KEY="$(base64 -w 0 spacelift.key)"
export SPACELIFT_METADATA_instance_id=quickstart
# --offline: the sample brokers do not exist; drop it for a real token.
"$liftoff" check --offline
