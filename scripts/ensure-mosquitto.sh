#!/usr/bin/env bash
# Make sure a mosquitto broker binary is available (tests start their own on a free port).
# Installs Debian's package when it is missing and we are root; otherwise says what to do.
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "mosquitto is missing: installing it with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
    exit 0
fi
echo "mosquitto is not installed and this user cannot install it." >&2
echo "Install it (Debian/Ubuntu: sudo apt-get install mosquitto mosquitto-clients) and re-run." >&2
echo "Tests that need a broker will be skipped with this reason." >&2
exit 0
