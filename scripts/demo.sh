#!/usr/bin/env bash
# `make demo`: the main job that exists so far, end to end, on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
echo "== amigw decode: a morning's RS-485 capture (etc/captures/rs485-morning.hex)"
grep -v '^#' etc/captures/rs485-morning.hex | "$BIN/amigw" decode - || status=$?
# The capture ends with a frame whose checksum was hit on the wire: decode names it and exits 65.
if [ "${status:-0}" -ne 65 ]; then
    echo "unexpected exit status ${status:-0} from amigw decode" >&2
    exit 1
fi
echo
echo "== the same as JSON (one object per frame)"
grep -v '^#' etc/captures/rs485-morning.hex | "$BIN/amigw" decode --json - | head -3 || true
