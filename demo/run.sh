#!/usr/bin/env bash
# `make demo`: the most complete real flow that exists so far, end to end on this machine.
#
#   1. An operator creates a release key and signs a beacon app release.
#   2. The release is verified the way gateways and beacons verify it; a tampered file, an
#      untrusted key and a downgrade are refused.
#   3. A mall's data is validated and checksummed the way server and gateway agree on it.
#   4. A gateway creates its identity key and shows it for pre-registration.
#   5. The central server runs (SQLite): a mall is imported and a gateway enrollment token made.
#   6. The mall's gateway runs: it enrolls, syncs the mall and serves it on its local API.
#   7. A release is published (verified against the release key) and assigned to the mall; the
#      gateway fetches, verifies and serves it; a release signed by another key is refused.
#   8. A second mall with a gateway and a dozen simulated beacons (the real firmware on the
#      MicroPython unix port; half on Wi-Fi, half only on BLE) gets a release rolled out, canary
#      first, with live progress and a summary of how many beacons confirmed it.
#
# Every command here is the real tool. What is simulated is named: the beacons' hardware (flash,
# radio) in step 8.
set -euo pipefail

work=${1:?usage: run.sh WORK_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$work"
mkdir -p "$work"
cd "$work"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
refused() {  # run a command that must fail, and show its one-line refusal
  if "$@" 2>refusal.txt; then
    echo "demo: expected a refusal, but it succeeded: $*" >&2
    exit 1
  fi
  printf '   refused as expected: %s\n' "$(cat refusal.txt)"
}

step "1. The operator creates a release key (keep it offline in production)"
navign-proto release keygen --out release.pem
navign-proto key show release.pem.pub

step "   ... and builds a beacon app bundle, describes it and signs it"
mkdir -p app/navign
printf 'import navign.app\nnavign.app.run()\n' > app/main.py
printf 'VERSION = "1.1.0"\n' > app/navign/version.py
head -c 4096 /dev/urandom > app/navign/app.mpy
navign-proto release manifest --name navign-beacon-app --version 1.1.0 --target esp32c3 \
  --secure-version 1 --min-previous-version 1.0.0 --expires-in-days 365 \
  --app-dir app --out manifest.json
navign-proto release sign manifest.json --key release.pem --out release.dsse.json

step "2. Gateways and beacons verify the signature, the policy and every file"
navign-proto release verify release.dsse.json --trust release.pem.pub --artifact app \
  --target esp32c3 --current-version 1.0.3 --current-secure-version 1

echo "   a gateway tampers with one byte of a file:"
cp -r app app-tampered
# (flip the byte's bits: writing a fixed value changes nothing when the byte already holds it)
python -c 'import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[100] ^= 0xFF; open(p, "wb").write(b)' app-tampered/navign/app.mpy
refused navign-proto release verify release.dsse.json --trust release.pem.pub --artifact app-tampered

echo "   someone signs with a key the beacons do not trust:"
navign-proto release keygen --out rogue.pem >/dev/null
navign-proto release sign manifest.json --key rogue.pem --out rogue.dsse.json >/dev/null
refused navign-proto release verify rogue.dsse.json --trust release.pem.pub

echo "   a beacon already on 1.2.0 is offered 1.1.0:"
refused navign-proto release verify release.dsse.json --trust release.pem.pub \
  --target esp32c3 --current-version 1.2.0 --current-secure-version 1

echo "   the operator rotates keys: a second signature, and a beacon trusting only the new key:"
navign-proto release keygen --out release-2027.pem >/dev/null
navign-proto release sign release.dsse.json --key release-2027.pem --out rotated.dsse.json
navign-proto release verify rotated.dsse.json --trust release-2027.pem.pub

step "3. Mall data: validated, then checksummed per collection (server and gateway agree)"
navign-proto mall check "$here/proto/examples/sample-mall.json"
echo "   a mall file where a beacon points at an area that does not exist:"
sed 's/"area_id": "area-1f-atrium"/"area_id": "area-nowhere"/' "$here/proto/examples/sample-mall.json" > broken-mall.json
refused navign-proto mall check broken-mall.json

step "4. A gateway's identity: generated once (mode 0600), shown for pre-registration"
cat > gateway.toml <<TOML
server_url = "https://navign.example.com"
entity_id = "mall-demo"
orchestrator_id = "gw-mall-demo-1"
enrollment_token = "enr_demo_0123456789"
data_dir = "$work/gateway-state"
TOML
navign-gateway --config gateway.toml check-config
navign-gateway --config gateway.toml keygen
navign-gateway --config gateway.toml show-key
refused navign-gateway --config gateway.toml keygen

step "5. The central server (embedded SQLite) on 127.0.0.1"
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export NAVIGN_SERVER_ENVIRONMENT=development
export NAVIGN_SERVER_RELEASE_PUBLIC_KEYS="[\"$work/release.pem.pub\"]"
db="sqlite:///$work/server/navign.db"
admin_token=$(navign-server create-admin-token --db "$db" --name demo | tail -n 1)
navign-server serve --host 127.0.0.1 --port "$port" --db "$db" --log-format text \
  >"$work/server.log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/healthz', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
export NAVIGN_ADMIN_SERVER="http://127.0.0.1:$port" NAVIGN_ADMIN_TOKEN="$admin_token"
echo "   server pid $server_pid on port $port; log in $work/server.log"

navign-admin import mall-riverside "$here/proto/examples/sample-mall.json"
navign-admin entities
echo "   an enrollment token for the mall's gateway (single use, 1 hour):"
enrollment=$(navign-admin enroll mall-riverside gw-riverside-1 --ttl 3600 | tail -n 1)
echo "   $enrollment"

step "6. The mall's gateway: enrolls, syncs the mall, follows the server's events"
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
gw_http=$(free_port)
gw_grpc=$(free_port)
cat > riverside.toml <<TOML
server_url = "http://127.0.0.1:$port"
entity_id = "mall-riverside"
orchestrator_id = "gw-riverside-1"
enrollment_token = "$enrollment"
data_dir = "$work/riverside-gateway"
heartbeat_interval = 10
[listen]
http = "127.0.0.1:$gw_http"
grpc = "127.0.0.1:$gw_grpc"
[firmware]
release_public_keys = ["$work/release.pem.pub"]
[ble]
enabled = false
[mdns]
enabled = false
TOML
chmod 600 riverside.toml
navign-gateway --config riverside.toml run >"$work/gateway.log" 2>&1 &
gateway_pid=$!
trap 'kill "$gateway_pid" "$server_pid" 2>/dev/null; wait "$gateway_pid" "$server_pid" 2>/dev/null || true' EXIT
connected() {
  python - "$gw_http" <<'PY'
import json, sys, urllib.request
try:
    status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1))
except Exception:
    sys.exit(1)
sys.exit(0 if status.get("uplink") == "CONNECTED" and status.get("local_copy") == "ready" else 1)
PY
}
for _ in $(seq 1 300); do connected && break; sleep 0.1; done
connected || { echo "demo: the gateway did not connect; see $work/gateway.log" >&2; exit 1; }
echo "   gateway pid $gateway_pid: HTTP on $gw_http, gRPC on $gw_grpc; log in $work/gateway.log"
navign-gateway --config riverside.toml status
echo "   the used enrollment token is gone from riverside.toml:"
grep -c enrollment_token riverside.toml || true
echo "   kiosks and robots read the mall from the gateway (it keeps serving when the server is away):"
python - "$gw_http" <<'PY'
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}/local/v1"
for name in ("areas", "beacons", "merchants", "connections"):
    body = json.load(urllib.request.urlopen(f"{base}/{name}?limit=1000", timeout=5))
    print(f"   {name:<12} {len(body['documents'])} documents at seq {body['seq']}")
PY

step "7. A signed release, published and assigned: the gateway fetches, verifies and serves it"
echo "   the operator publishes the signed release:"
navign-admin release publish --key release.pem --name navign-beacon-app --version 1.1.0 \
  --target esp32c3 --secure-version 1 --app-dir app --channel stable --changelog "demo release"
release_id=$(navign-admin --json releases | python -c 'import json, sys; print(json.load(sys.stdin)["releases"][0]["release_id"])')
navign-admin releases
navign-admin assign mall-riverside "$release_id" --canary 10% --batch 20 --failure-threshold 5%
navign-admin rollouts mall-riverside
python - "$gw_http" "$release_id" <<'PY'
import hashlib, json, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(300):
    releases = json.load(urllib.request.urlopen(f"{base}/firmware", timeout=5))["releases"]
    if any(r["firmware_id"] == sys.argv[2] for r in releases):
        break
    time.sleep(0.1)
else:
    sys.exit("demo: the gateway did not cache the release; see gateway.log")
artifact = urllib.request.urlopen(f"{base}/firmware/{sys.argv[2]}", timeout=5).read()
print(f"   the gateway verified and serves {sys.argv[2]}: {len(artifact)} bytes, "
      f"sha256 {hashlib.sha256(artifact).hexdigest()[:16]}...")
PY
echo "   a release signed with a key the server does not trust:"
refused navign-admin release publish --key rogue.pem --name navign-beacon-app --version 1.2.0 \
  --target esp32c3 --secure-version 1 --app-dir app --channel stable

step "8. A rollout you can watch: a dozen simulated beacons (the real firmware), Wi-Fi and BLE"
python "$here/demo/rollout.py" "$work/harbour" release.pem

step "Done. Everything above ran for real in $work"
