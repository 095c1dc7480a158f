"""``edgeseg ui``: the MLflow tracking server and UI over the store the searches write to.

One function, :func:`default_tracking_uri`, decides where runs live, so ``edgeseg search ...`` and
``edgeseg ui`` look at the same store: ``$MLFLOW_TRACKING_URI`` when set, otherwise a SQLite file under
``$EDGESEG_HOME/mlflow``. :func:`serve_ui` starts ``mlflow server`` as a child of this Python (same
environment, same MLflow version) in its own process group, waits for ``/health``, and stops the whole
group on :meth:`UiServer.stop`.

An MLflow server lets whoever reaches it read and write every run and artifact, so it binds
127.0.0.1 unless told otherwise, and a non-loopback address is refused unless basic auth is on
(``MLFLOW_AUTH_ADMIN_PASSWORD`` set, which selects ``--app-name basic-auth``) or the caller says
``insecure``. MLflow's own security middleware (Host-header and CORS checks) stays on: the server is
run with uvicorn, the only server where MLflow applies it.

The store URI may carry a database password, so it reaches the server through its environment
(``MLFLOW_BACKEND_STORE_URI``, ``MLFLOW_ARTIFACTS_DESTINATION``; other users can read a command line in
``ps``, not an environment), and it is shown redacted (``postgresql://user:***@host/db``) in messages and
in the server log tail; the admin password of basic auth is only ever in the environment too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from edgeseg import paths
from edgeseg.search.mlflow_runs import client_for, store_driver_problem
from edgeseg.search.names import EXPERIMENT_KIND_TAG, EXPERIMENT_TAGS
from edgeseg.secrets import redact_uri, scrub, secret_values

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
HEALTH_TIMEOUT_S = 120.0
_LOG_TAIL_LINES = 40
_SERVER_STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "file")


class UiError(RuntimeError):
    """The MLflow server cannot be started as asked (bad store, unsafe bind, failed start)."""


def mlflow_home() -> Path:
    """``$EDGESEG_HOME/mlflow``: the default SQLite store, artifact folder, auth DB and server logs."""
    return paths.subdir("mlflow")


def default_artifacts_dir() -> Path:
    """Where the default server keeps artifacts (``--artifacts-destination``)."""
    path = mlflow_home() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<EDGESEG_HOME>/mlflow/mlflow.db``.

    The search CLI and ``edgeseg ui`` both call this, so they agree on the store.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{mlflow_home() / 'mlflow.db'}"


def basic_auth_configured() -> bool:
    """Basic auth is on when an admin password is provided (MLflow ships no default one)."""
    return bool(os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"))


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; any other name counts as exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class UiServer:
    """A running ``mlflow server`` child process (its own process group).

    ``tracking_uri`` and ``artifacts`` are kept as given (they may hold credentials) and left out of
    the repr; show :attr:`shown_tracking_uri` instead."""

    process: subprocess.Popen[bytes]
    url: str
    host: str
    port: int
    tracking_uri: str = field(repr=False)
    artifacts: str = field(repr=False)
    basic_auth: bool
    log_path: Path
    _log_file: IO[bytes] | None = field(repr=False, default=None)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def shown_tracking_uri(self) -> str:
        """The store URI with its password redacted, for messages."""
        return redact_uri(self.tracking_uri)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines the server wrote to stdout/stderr, with the store's credentials redacted."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return scrub(tail, secret_values(self.tracking_uri) + secret_values(self.artifacts))

    def experiment_url(self, experiment_id: str) -> str:
        """The experiment's runs table in the model-training view (MLflow 3 opens the GenAI view by default)."""
        return f"{self.url}#/experiments/{experiment_id}/runs?workflowType=machine_learning"

    def search_links(self) -> list[tuple[str, str]]:
        """(experiment name, :meth:`experiment_url`) of every edgeseg search in the store, by name.

        MLflow 3.17's UI ignores the experiments' ``mlflow.experimentKind`` tag when it picks its view,
        so a plain experiment link opens the GenAI overview; these links open the runs table."""
        tag = f"tags.`{EXPERIMENT_KIND_TAG}` = '{EXPERIMENT_TAGS[EXPERIMENT_KIND_TAG]}'"
        experiments = client_for(self.tracking_uri).search_experiments(filter_string=tag)
        return sorted((e.name, self.experiment_url(e.experiment_id)) for e in experiments)

    def stop(self, timeout: float = 15.0) -> int | None:
        """Terminate the server and its uvicorn workers (the whole process group); return its exit code."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        else:
            # The leader may be gone while workers it started are not.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
        return self.process.returncode

    def wait(self) -> int:
        """Block until the server exits or Ctrl-C (which stops it); return the exit code (0 on Ctrl-C)."""
        try:
            code = self.process.wait()
        except KeyboardInterrupt:
            self.stop()
            return 0
        self.stop()
        return code

    def __enter__(self) -> UiServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _check_store_uri(tracking_uri: str) -> None:
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in tracking_uri else ""
    shown = redact_uri(tracking_uri)
    if scheme in ("http", "https"):
        raise UiError(
            f"tracking URI {shown!r} is already a tracking server; open it in a browser instead "
            "of starting another server (edgeseg ui needs a store URI such as sqlite:///... or postgresql://...)"
        )
    if scheme not in _SERVER_STORE_SCHEMES:
        raise UiError(
            f"tracking URI {shown!r} is not a store the MLflow server can serve; "
            f"expected one of {', '.join(s + '://' for s in _SERVER_STORE_SCHEMES)}"
        )
    # The server is this Python's MLflow: without the store's driver it dies with a page of traceback.
    if problem := store_driver_problem(tracking_uri):
        raise UiError(problem)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_port_free(host: str, port: int) -> None:
    # Without this, /health could be answered by another server already on the port.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as uvicorn binds: a port whose last server just stopped (connections in TIME_WAIT) is
        # free, one that another socket listens on is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UiError(f"cannot serve the MLflow UI on {host}:{port}: {exc.strerror}") from exc


def _client_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _wait_for_health(server: UiServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    health = server.url.rstrip("/") + "/health"
    while True:
        if not server.running:
            raise UiError(
                f"mlflow server exited with code {server.process.returncode} before answering {health}; "
                f"its output ({server.log_path}) ends with:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise UiError(
                f"mlflow server did not answer {health} within {timeout:.0f} s; "
                f"its output ({server.log_path}) ends with:\n{server.log_tail()}"
            )
        time.sleep(0.25)


def _checked_port(host: str, port: int, auth: bool, insecure: bool, workers: int) -> int:
    """Refuse an unsafe or impossible server before starting it; the port to use (0: a free one)."""
    if not is_loopback(host) and not auth and not insecure:
        raise UiError(
            f"refusing to serve the MLflow UI on {host}: anyone who can reach a non-loopback address could "
            "read, change and delete every run and artifact. Set MLFLOW_AUTH_ADMIN_PASSWORD to turn on basic "
            "auth (needs `pip install 'mlflow[auth]'`, and TLS in front), pass --insecure on a trusted network, "
            "or keep the default 127.0.0.1 and use an SSH tunnel (ssh -L 5000:127.0.0.1:5000 HOST)."
        )
    if auth and importlib.util.find_spec("flask_wtf") is None:
        raise UiError(
            "MLFLOW_AUTH_ADMIN_PASSWORD is set, so the server would run with basic auth, but Flask-WTF is "
            "missing: pip install 'mlflow[auth]'"
        )
    if workers < 1:
        raise UiError(f"workers must be >= 1, got {workers}")
    if port == 0:
        port = free_port(host)
    elif not 0 < port < 65536:
        raise UiError(f"port must be in 1..65535 (or 0 for a free one), got {port}")
    _check_port_free(host, port)

    return port


def serve_ui(
    tracking_uri: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    artifacts: str | None = None,
    block: bool = True,
    *,
    insecure: bool = False,
    workers: int = 1,
    health_timeout: float = HEALTH_TIMEOUT_S,
) -> UiServer:
    """Start ``mlflow server`` for ``tracking_uri`` (default :func:`default_tracking_uri`) and wait for it.

    ``artifacts`` is the ``--artifacts-destination`` (a folder or ``s3://bucket/prefix``; default
    ``$EDGESEG_HOME/mlflow/artifacts``); artifacts are proxied by the server (``--serve-artifacts``).
    ``port=0`` picks a free port. A non-loopback ``host`` needs basic auth (``MLFLOW_AUTH_ADMIN_PASSWORD``)
    or ``insecure=True``. With ``block=True`` this returns only after the server exits or Ctrl-C stops
    it; with ``block=False`` it returns the running server, which the caller must ``stop()``.
    """
    uri = tracking_uri or default_tracking_uri()
    _check_store_uri(uri)
    auth = basic_auth_configured()
    port = _checked_port(host, port, auth, insecure, workers)
    artifacts_destination = artifacts or str(default_artifacts_dir())
    home = mlflow_home()
    log_path = home / f"ui-server-{port}.log"
    command = [
        sys.executable, "-m", "mlflow", "server", "--serve-artifacts",
        "--host", host, "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    # The store and artifact URIs go through the environment, never argv: `ps` shows argv to everyone.
    env = dict(os.environ, MLFLOW_BACKEND_STORE_URI=uri, MLFLOW_ARTIFACTS_DESTINATION=artifacts_destination)
    # MLflow 3 also starts ~7 huey job-runner processes (GenAI judges, trace rollups; ~240 MB each) that
    # a training-search UI never uses; the user can still turn them on by setting the variable.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if auth:
        command += ["--app-name", "basic-auth"]
        # CSRF key for the auth app's forms; a per-process key only means forms die with the server.
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    # Owner-only: an error the server logs may quote the store URI.
    log_file = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
    os.chmod(log_path, 0o600)  # a log left by an older server on this port keeps its mode otherwise
    # cwd: the packaged basic_auth.ini keeps users in ./basic_auth.db, and a store without an explicit
    # artifact root writes ./mlartifacts; both belong next to the store, not wherever the user stands.
    process = subprocess.Popen(
        command,
        cwd=home,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = UiServer(
        process=process,
        url=f"http://{_client_host(host)}:{port}/",
        host=host,
        port=port,
        tracking_uri=uri,
        artifacts=artifacts_destination,
        basic_auth=auth,
        log_path=log_path,
        _log_file=log_file,
    )
    try:
        _wait_for_health(server, health_timeout)
    except BaseException:
        server.stop()
        raise
    if block:
        server.wait()
    return server
