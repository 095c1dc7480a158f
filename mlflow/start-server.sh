#!/usr/bin/env bash
# Start the MLflow tracking server that edgeseg searches log to.
#   One machine (default): SQLite + a local artifact folder under $EDGESEG_HOME/mlflow, on 127.0.0.1:5000.
#   A team: PostgreSQL + S3/MinIO, set through the variables below (docker-compose.yml does exactly that).
# Artifacts are always proxied by the server (--serve-artifacts), so clients never need storage credentials.
# The store URI (it may hold the database password) and the artifact destination reach `mlflow server` through
# MLFLOW_BACKEND_STORE_URI / MLFLOW_ARTIFACTS_DESTINATION, never its command line, which `ps` shows to everyone.
#
# Usage: mlflow/start-server.sh [more `mlflow server` options]
#
# Environment (all optional):
#   MLFLOW_DATA_DIR               working folder: SQLite store, local artifacts, basic_auth.db
#                                 (default ${EDGESEG_HOME:-~/.cache/edgeseg}/mlflow, the store `edgeseg ui` serves)
#   MLFLOW_BACKEND_STORE_URI      default sqlite:///$MLFLOW_DATA_DIR/mlflow.db
#                                 team: postgresql+psycopg2://mlflow:PASSWORD@db-host:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION  default $MLFLOW_DATA_DIR/artifacts; team: s3://mlflow-artifacts
#                                 (MinIO: also MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
#   MLFLOW_HOST, MLFLOW_PORT      default 127.0.0.1 and 5000
#   MLFLOW_WORKERS                uvicorn worker processes, default 2
#   MLFLOW_AUTH_ADMIN_PASSWORD    set => basic auth (--app-name basic-auth, needs mlflow[auth]); user `admin`
#                                 gets this password on the first start (12 characters or more)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  required with basic auth (CSRF key; keep it stable across restarts)
#   MLFLOW_SERVER_ALLOWED_HOSTS   MLflow's Host-header allow-list; set it when clients use a DNS name
#   MLFLOW_INSECURE=1             allow a non-loopback MLFLOW_HOST without basic auth (trusted networks only)
#   MLFLOW_BIN                    the mlflow executable (default: `mlflow` on PATH)
set -euo pipefail

die() { echo "start-server.sh: error: $*" >&2; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA_DIR="${MLFLOW_DATA_DIR:-${EDGESEG_HOME:-$HOME/.cache/edgeseg}/mlflow}"
mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
STORE="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$DATA_DIR/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-$DATA_DIR/artifacts}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-2}"
MLFLOW_BIN="${MLFLOW_BIN:-mlflow}"

case "$HOST" in
  127.*|localhost|::1) LOOPBACK=1 ;;
  *) LOOPBACK=0 ;;
esac

AUTH_ARGS=()
if [[ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]]; then
  [[ -n "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]] \
    || die "basic auth needs MLFLOW_FLASK_SERVER_SECRET_KEY (e.g. export MLFLOW_FLASK_SERVER_SECRET_KEY=\$(openssl rand -hex 32))"
  export MLFLOW_AUTH_CONFIG_PATH="${MLFLOW_AUTH_CONFIG_PATH:-$HERE/basic_auth.ini}"
  [[ -f "$MLFLOW_AUTH_CONFIG_PATH" ]] || die "MLFLOW_AUTH_CONFIG_PATH=$MLFLOW_AUTH_CONFIG_PATH does not exist"
  AUTH_ARGS=(--app-name basic-auth)
elif [[ "$LOOPBACK" == 0 && "${MLFLOW_INSECURE:-0}" != 1 ]]; then
  die "refusing to serve MLflow on $HOST without authentication: anyone who reaches it could read, change and \
delete every run and artifact. Set MLFLOW_AUTH_ADMIN_PASSWORD and MLFLOW_FLASK_SERVER_SECRET_KEY (basic auth; put \
TLS in front), or MLFLOW_INSECURE=1 on a trusted network, or keep MLFLOW_HOST=127.0.0.1 and use an SSH tunnel."
fi

command -v "$MLFLOW_BIN" >/dev/null 2>&1 || die "'$MLFLOW_BIN' not found: activate the edgeseg virtualenv or set MLFLOW_BIN"

# A local artifact destination must exist; s3:// and other URIs are the store's business.
[[ "$ARTIFACTS" == *://* ]] || mkdir -p "$ARTIFACTS"

# MLflow 3 otherwise starts ~7 job-runner processes for GenAI features a training search never uses.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

export MLFLOW_BACKEND_STORE_URI="$STORE" MLFLOW_ARTIFACTS_DESTINATION="$ARTIFACTS"

# Never print a credential: user:PASSWORD@ and ?password=/?token=/?sig=... values become ***.
redact() {
  sed -E -e 's#^([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*:)[^@]*@#\1***@#' \
    -e 's#([?&][^=&#]*(pass|pwd|secret|token|key|sig|credential|auth)[^=&#]*=)[^&#]*#\1***#Ig' <<<"$1"
}

# The working directory holds the relative sqlite:///basic_auth.db of basic_auth.ini.
cd "$DATA_DIR"
echo "MLflow: store $(redact "$STORE"), artifacts $(redact "$ARTIFACTS"), http://$HOST:$PORT/" \
  "(${AUTH_ARGS[*]:-no auth})" >&2
exec "$MLFLOW_BIN" server --serve-artifacts \
  --host "$HOST" --port "$PORT" --workers "$WORKERS" \
  "${AUTH_ARGS[@]}" "$@"
