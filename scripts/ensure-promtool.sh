#!/usr/bin/env bash
# Make sure promtool is available (the metrics test pipes a scrape through `promtool check
# metrics`). Installs Debian's prometheus package when it is missing and we are root;
# otherwise says what to do.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "promtool is missing: installing the prometheus package with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    exit 0
fi
echo "promtool is not installed and this user cannot install it." >&2
echo "Install it (Debian/Ubuntu: sudo apt-get install --no-install-recommends prometheus)" >&2
echo "and re-run. Tests that need promtool will be skipped with this reason." >&2
exit 0
