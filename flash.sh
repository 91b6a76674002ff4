#!/usr/bin/env bash
# flash.sh: the bench tool. Flash and provision Navign beacons (esptool + mpremote), write
# gateway SD cards, self-test a beacon. `flash.sh --help` and `flash.sh COMMAND --help`.
# The logic is Python (navign_firmware.flashing, in the project's environment); this script finds
# or makes that environment and hands over. Exit codes: 0 done, 1 failed, 2 usage.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${NAVIGN_VENV:-$here/.venv}"

usage() {
    cat <<'USAGE'
usage: flash.sh COMMAND [OPTIONS]

  beacon  --port PORT [--port PORT ...] --chip esp32|esp32c3|esp32s3 --micropython FW.bin
          --config beacon.json [--erase] [--baud N] [--minor-start N] [--release-key KEY.pem]
          [--record FILE.csv] [--record-server ENTITY]
          flash MicroPython and provision beacons (several ports in parallel)
  sd      IMAGE DEVICE --config gateway.toml [--dry-run] [--force]
          write a gateway image to an SD card and provision it
  bench   --port PORT [--json]
          self-test a connected beacon: PASS or FAIL with reasons

flash.sh COMMAND --help shows every option of a command.
USAGE
}

fail() {
    echo "flash.sh: error: $*" >&2
    exit 1
}

command="${1:-}"
case "$command" in
    beacon | sd | bench) ;;
    -h | --help | help)
        usage
        exit 0
        ;;
    "")
        usage >&2
        exit 2
        ;;
    *)
        echo "flash.sh: error: unknown command '$command' (beacon, sd or bench; see flash.sh --help)" >&2
        exit 2
        ;;
esac

if [[ ! -x "$venv/bin/python" ]]; then
    echo "flash.sh: setting up the environment (make env) ..." >&2
    make -s -C "$here" env >&2 || fail "could not set up the environment (run make env in $here)"
fi
"$venv/bin/python" -c 'import navign_firmware.flashing, esptool, mpremote' 2>/dev/null ||
    fail "the environment in $venv lacks the bench tools (run make env in $here)"

exec "$venv/bin/python" -m navign_firmware.flashing "$@"
