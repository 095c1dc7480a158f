"""``edgeseg ui``: the MLflow UI for a search store, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import signal
import sys

from edgeseg.search.ui import DEFAULT_HOST, DEFAULT_PORT, UiError, serve_ui
from edgeseg.secrets import secret_values


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so `kill PID` stops the server's process group too, not only Ctrl-C


def cmd_ui(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    if args.tracking_uri and secret_values(args.tracking_uri):
        print(
            "edgeseg ui: warning: --tracking-uri holds a password, which any user on this host can read "
            "with `ps`; pass it in MLFLOW_TRACKING_URI instead",
            file=sys.stderr,
        )
    try:
        server = serve_ui(
            args.tracking_uri,
            host=args.host,
            port=args.port,
            artifacts=args.artifacts,
            block=False,
            insecure=args.insecure,
        )
    except UiError as exc:
        print(f"edgeseg ui: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    auth = "basic auth" if server.basic_auth else "no auth"
    print(
        f"MLflow UI: {server.url}  (store: {server.shown_tracking_uri}; {auth}; Ctrl-C to stop)", flush=True
    )
    for name, url in server.search_links():
        print(f"  {name}: {url}", flush=True)
    code = server.wait()
    if code != 0:
        print(f"edgeseg ui: mlflow server exited with code {code}:\n{server.log_tail()}", file=sys.stderr)
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``edgeseg ui``."""
    p = subparsers.add_parser(
        "ui",
        help="serve the MLflow UI over the search store (127.0.0.1 by default)",
        description="Start the MLflow tracking server and UI over the store that `edgeseg search` writes to, "
        "print its URL and run until Ctrl-C.",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 5000; 0 = a free port)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="backend store, e.g. sqlite:////abs/mlflow.db or postgresql://... "
        "(default: $MLFLOW_TRACKING_URI, else $EDGESEG_HOME/mlflow/mlflow.db); "
        "a URI with a password belongs in $MLFLOW_TRACKING_URI, not on the command line",
    )
    p.add_argument(
        "--artifacts",
        default=None,
        help="artifact destination folder or s3:// URI (default $EDGESEG_HOME/mlflow/artifacts)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without basic auth (trusted networks only)",
    )
    p.set_defaults(func=cmd_ui)
