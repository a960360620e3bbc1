#!/usr/bin/env bash
# `make demo`: a simulated district and the gateway collecting from it, end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
echo "== a captured frame, decoded"
"$BIN/amigw" decode 68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8A 16
echo
echo "== the rs485-12 district: 12 meters and a master meter on two RS-485 ptys and a TCP DTU;"
echo "== the gateway collects a simulated day in about a minute"
exec "$BIN/amigw" demo --scenario etc/scenarios/rs485-12.toml --speed 1440 --duration "${DEMO_SECONDS:-60}"
