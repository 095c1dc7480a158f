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

if [[ "$(id -u)" -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "error: $CHROMIUM is missing, this is not root and sudo is not available; install the Debian package 'chromium'" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when the cached ones do not know the package.
if ! apt-cache show chromium >/dev/null 2>&1; then
  "${SUDO[@]}" apt-get update -q
fi
"${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium fonts-liberation >/dev/null

if [[ ! -x "$CHROMIUM" ]]; then
  echo "error: apt-get installed 'chromium' but $CHROMIUM is still missing" >&2
  exit 1
fi
echo "chromium installed: $("$CHROMIUM" --version)"
