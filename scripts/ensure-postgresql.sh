#!/usr/bin/env bash
# Make sure PostgreSQL's server programs (initdb, pg_ctl, postgres) are installed: the tests start a
# throwaway cluster with them as the MLflow backend store (tests/postgres.py).
#
# Usage: scripts/ensure-postgresql.sh
# Idempotent: does nothing when initdb and pg_ctl are on PATH or in Debian's /usr/lib/postgresql/<version>/bin.
# Otherwise installs Debian's `postgresql` package with apt-get (through sudo only when not already root),
# which also creates the `postgres` system user the tests run the server as when they run as root.
set -euo pipefail

# The newest /usr/lib/postgresql/<version>/bin holding both programs, else the directory of PATH's initdb.
find_bindir() {
  local dir dirs=()
  shopt -s nullglob
  mapfile -t dirs < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
  for dir in "${dirs[@]}"; do
    if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
      echo "$dir"
      return 0
    fi
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return 0
  fi
  return 1
}

if BINDIR=$(find_bindir); then
  echo "postgresql already present: $("$BINDIR/pg_ctl" --version) in $BINDIR"
  exit 0
fi

source "$(dirname "$0")/apt-install.sh"
apt_install "initdb/pg_ctl" postgresql

if ! BINDIR=$(find_bindir); then
  echo "error: apt-get installed 'postgresql' but initdb/pg_ctl are still missing from /usr/lib/postgresql/*/bin" >&2
  exit 1
fi
echo "postgresql installed: $("$BINDIR/pg_ctl" --version) in $BINDIR"
