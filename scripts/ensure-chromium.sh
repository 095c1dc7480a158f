#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is at /usr/bin/chromium (the browser the UI test drives).
#
# Usage: scripts/ensure-chromium.sh
# Idempotent: does nothing when /usr/bin/chromium exists. Otherwise installs the `chromium` package with
# apt-get (through sudo only when not already root) and prints the installed version.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [[ -x "$CHROMIUM" ]]; then
  echo "chromium already present: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
  exit 0
fi

source "$(dirname "$0")/apt-install.sh"
apt_install "$CHROMIUM" chromium fonts-liberation

if [[ ! -x "$CHROMIUM" ]]; then
  echo "error: apt-get installed 'chromium' but $CHROMIUM is still missing" >&2
  exit 1
fi
echo "chromium installed: $("$CHROMIUM" --version)"
