#!/usr/bin/env bash
# Fetch OpenCV's sample video vtest.avi (PETS 2009 footage, University of Reading, via OpenCV samples)
# from Debian's opencv-doc package without installing it: apt-get download + dpkg-deb extraction.
#
# Usage: scripts/fetch-vtest.sh [DEST_DIR]
#   DEST_DIR defaults to $EDGESEG_HOME/video (EDGESEG_HOME defaults to ~/.cache/edgeseg).
# Prints the path of vtest.avi. Idempotent: an existing file with the right SHA-256 is kept.
set -euo pipefail

EXPECTED_SHA256="45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf"
MEMBER="./usr/share/doc/opencv-doc/examples/data/vtest.avi"

DEST_DIR="${1:-${EDGESEG_HOME:-$HOME/.cache/edgeseg}/video}"
DEST="$DEST_DIR/vtest.avi"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$DEST" ]]; then
  if [[ "$(sha_of "$DEST")" == "$EXPECTED_SHA256" ]]; then
    echo "vtest.avi already present: $DEST"
    exit 0
  fi
  echo "error: $DEST exists but its SHA-256 is not $EXPECTED_SHA256; remove it and rerun" >&2
  exit 1
fi

mkdir -p "$DEST_DIR"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
if ! apt-get download opencv-doc >/dev/null 2>"$WORK/apt.err"; then
  # Only refresh the package lists when the cached ones do not know the package (needs root).
  echo "apt-get download failed; running apt-get update and retrying" >&2
  apt-get update >/dev/null
  apt-get download opencv-doc >/dev/null
fi

DEB="$(ls "$WORK"/opencv-doc_*.deb)"
dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$WORK" "$MEMBER"
rm -f "$DEB"

GOT="$(sha_of "$WORK/$MEMBER")"
if [[ "$GOT" != "$EXPECTED_SHA256" ]]; then
  echo "error: vtest.avi from opencv-doc has SHA-256 $GOT, expected $EXPECTED_SHA256" >&2
  exit 1
fi
mv "$WORK/$MEMBER" "$DEST.partial"
mv "$DEST.partial" "$DEST"
echo "vtest.avi fetched: $DEST"
