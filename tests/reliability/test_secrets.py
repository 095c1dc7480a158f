"""Secrets are never printed, never on a command line, never shipped or left readable.

Real components throughout: MLflow servers started by ``serve_ui``, by ``edgeseg ui`` and by
``mlflow/start-server.sh``, whose processes' command lines are read from ``/proc``; Ray's own
working-dir packaging and token writer; torch's loader on checkpoints written by ``torch.save``.
"""

from __future__ import annotations

import json
import os
import queue
import random
import secrets
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import free_port, http_get, stop_cli

from edgeseg.engine.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from edgeseg.engine.loop import lr_lambda
from edgeseg.search.mlflow_runs import ensure_experiment
from edgeseg.search.submit import runtime_env
from edgeseg.search.ui import serve_ui
from edgeseg.secrets import protect_ray_auth_token, redact_uri, scrub, secret_values
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
AUTH_INI = ROOT / "mlflow" / "basic_auth.ini"
START_SERVER = ROOT / "mlflow" / "start-server.sh"
SERVER_START_S = 180.0  # a cold MLflow server on a busy 2-core machine

# ------------------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://user:hunter2@db/mlflow", "postgresql://user:***@db/mlflow"),
        (
            "postgresql+psycopg2://mlflow:p/a?s#w@db:5432/mlflow?sslmode=require",
            "postgresql+psycopg2://mlflow:***@db:5432/mlflow?sslmode=require",
        ),
        ("mysql://u:pw@h/d?charset=utf8&ssl_key=/k.pem#x", "mysql://u:***@h/d?charset=utf8&ssl_key=***#x"),
        (
            "sqlite:////data/mlflow.db?password=hunter2&timeout=5",
            "sqlite:////data/mlflow.db?password=***&timeout=5",
        ),
        (
            "https://acct.blob.example/c?sv=2024&SIG=abc%2Fdef&se=1",
            "https://acct.blob.example/c?sv=2024&SIG=***&se=1",
        ),
        ("https://admin:hunter2@mlflow.example:443/", "https://admin:***@mlflow.example:443/"),
        # nothing secret: unchanged, byte for byte
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
        ("postgresql://user@db/mlflow?sslmode=require", "postgresql://user@db/mlflow?sslmode=require"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("/plain/folder", "/plain/folder"),
    ],
)
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


def test_secret_values_are_scrubbed_as_written_and_decoded() -> None:
    uri = "postgresql://user:p%40ss@db/mlflow?token=t0k&sslmode=require"
    assert secret_values(uri) == ["p%40ss", "p@ss", "t0k"]
    log = "could not connect with p@ss; retrying postgresql://user:p%40ss@db/mlflow?token=t0k"
    assert (
        scrub(log, secret_values(uri))
        == "could not connect with ***; retrying postgresql://user:***@db/mlflow?token=***"
    )
    assert secret_values("sqlite:////data/mlflow.db") == []


# ------------------------------------------------------------------------------- MLflow servers


def group_commands_all() -> dict[int, str]:
    """pid -> command line (arguments joined by spaces) of every live process this user can read."""
    commands = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    return commands


def group_commands(pgid: int) -> dict[int, str]:
    """pid -> command line of every live process in process group ``pgid``."""
    commands = {}
    for pid, command in group_commands_all().items():
        try:
            if os.getpgid(pid) == pgid and command:
                commands[pid] = command
        except ProcessLookupError:
            continue
    return commands


def iter_queue(items: queue.Queue[str]) -> Iterator[str]:
    while True:
        try:
            yield items.get_nowait()
        except queue.Empty:
            return


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


def experiment_names(port: int, user: str | None = None, password: str | None = None) -> list[str]:
    status, body = http_get(port, "/api/2.0/mlflow/experiments/search?max_results=50", user, password)
    assert status == 200, body[:300]
    return [e["name"] for e in json.loads(body)["experiments"]]


def assert_no_secret_on_command_lines(pgid: int, secrets_: list[str]) -> dict[int, str]:
    commands = group_commands(pgid)
    leader = commands.get(pgid, "")
    assert "mlflow" in leader and "server" in leader, f"not the mlflow server: {commands}"
    for pid, command in commands.items():
        for secret in secrets_:
            assert secret not in command, f"process {pid} shows a secret on its command line: {command}"
        assert "--backend-store-uri" not in command and "--artifacts-destination" not in command, command
    return commands


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, str]:
    """A SQLite store holding one edgeseg-search experiment; (database file, experiment name)."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    name = "secret-store-search"
    ensure_experiment(
        MlflowClient(tracking_uri=f"sqlite:///{db}"), name, (tmp_path / "store" / "art").as_uri()
    )
    return db, name


def secret_store_uri(db: Path, secret: str) -> str:
    # SQLite has no user:password@ form; a password query parameter is what pysqlite ignores (with a
    # warning), so the store is served while the URI carries a password-shaped secret.
    return f"sqlite:///{db}?password={secret}"


@pytest.mark.integration
@pytest.mark.slow
def test_serve_ui_passes_store_and_admin_password_through_the_environment(
    tmp_path: Path, store: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, experiment = store
    db_secret, admin_password = "pw-" + secrets.token_hex(12), "admin-" + secrets.token_hex(12)
    uri = secret_store_uri(db, db_secret)
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", admin_password)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(AUTH_INI))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    with serve_ui(uri, port=0, block=False, health_timeout=SERVER_START_S) as server:
        assert server.basic_auth
        assert http_get(server.port, "/health")[0] == 200
        commands = assert_no_secret_on_command_lines(server.process.pid, [db_secret, admin_password, str(db)])
        assert any("uvicorn" in c for c in commands.values()), commands  # the workers were checked too
        # The store did arrive, through the environment: the server lists the store's experiment.
        assert environ_of(server.process.pid)["MLFLOW_BACKEND_STORE_URI"] == uri
        assert experiment in experiment_names(server.port, "admin", admin_password)
        assert http_get(server.port, "/api/2.0/mlflow/experiments/search?max_results=5")[0] == 401
        shown = f"{server!r} {server.shown_tracking_uri}"
        assert db_secret not in shown and "password=***" in server.shown_tracking_uri
        assert stat.S_IMODE(server.log_path.stat().st_mode) == 0o600


def read_lines(stream, lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)


@pytest.mark.integration
@pytest.mark.slow
def test_edgeseg_ui_prints_the_store_redacted(tmp_path: Path, store: tuple[Path, str]) -> None:
    db, experiment = store
    db_secret, admin_password = "pw-" + secrets.token_hex(12), "admin-" + secrets.token_hex(12)
    env = dict(os.environ, EDGESEG_HOME=str(tmp_path / "home"), MLFLOW_TRACKING_URI=secret_store_uri(db, db_secret),
               MLFLOW_AUTH_ADMIN_PASSWORD=admin_password, MLFLOW_AUTH_CONFIG_PATH=str(AUTH_INI))  # fmt: skip
    env.pop("MLFLOW_AUTH_ADMIN_USERNAME", None)
    errors = tmp_path / "ui.stderr"
    with errors.open("w") as err:
        cli = subprocess.Popen(
            [sys.executable, "-m", "edgeseg.cli", "ui", "--port", "0"],
            env=env, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
        )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(cli.stdout, lines), daemon=True).start()
    try:
        try:
            first = lines.get(timeout=SERVER_START_S)
        except queue.Empty:
            pytest.fail(f"edgeseg ui printed nothing within {SERVER_START_S:.0f} s")
        links = lines.get(timeout=30)  # the search experiment's link: the CLI read the real store
        assert first.startswith("MLflow UI: http://127.0.0.1:") and "basic auth" in first, first
        assert f"sqlite:///{db}?password=***;" in first, first
        assert experiment in links, links
        port = int(first.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        assert http_get(port, "/health")[0] == 200
        (server_pid,) = [pid for pid, command in group_commands_all().items()
                         if _parent(pid) == cli.pid and "mlflow" in command]  # fmt: skip
        assert_no_secret_on_command_lines(server_pid, [db_secret, admin_password])
        assert db_secret not in " ".join(group_commands(cli.pid).values())  # nor on the CLI's own
    finally:
        stop_cli(cli)  # the CLI stops the server's process group, then exits
    assert cli.returncode == 0, errors.read_text()
    time.sleep(0.5)  # let the reader thread take the last lines
    printed = first + links + "".join(iter_queue(lines)) + errors.read_text()
    assert db_secret not in printed and admin_password not in printed
    deadline = time.monotonic() + 30
    while group_commands(server_pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not group_commands(server_pid), "the mlflow server outlived edgeseg ui"


def _parent(pid: int) -> int:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return -1
    return int(stat_line.rsplit(")", 1)[1].split()[1])


def test_edgeseg_ui_warns_about_a_password_on_its_command_line_and_redacts_errors(tmp_path: Path) -> None:
    secret = "pw-" + secrets.token_hex(12)
    result = subprocess.run(
        [sys.executable, "-m", "edgeseg.cli", "ui", "--port", "0", "--tracking-uri", f"https://u:{secret}@mlflow.internal/"],
        env=dict(os.environ, EDGESEG_HOME=str(tmp_path)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2  # a tracking server is not a store: refused before any server starts
    assert "--tracking-uri holds a password" in result.stderr and "MLFLOW_TRACKING_URI" in result.stderr
    assert "https://u:***@mlflow.internal/" in result.stderr
    assert secret not in result.stdout + result.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_start_server_script_passes_the_store_through_the_environment(
    tmp_path: Path, store: tuple[Path, str]
) -> None:
    db, experiment = store
    secret = "pw-" + secrets.token_hex(12)
    port = free_port()
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "MLFLOW_BIN": str(Path(sys.executable).with_name("mlflow")),
        "MLFLOW_DATA_DIR": str(tmp_path / "data"), "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
        "MLFLOW_BACKEND_STORE_URI": secret_store_uri(db, secret),
    }  # fmt: skip
    log = tmp_path / "start-server.log"
    with log.open("w") as out:
        server = subprocess.Popen(["bash", str(START_SERVER)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if http_get(port, "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (
                f"no /health within {SERVER_START_S:.0f} s:\n{log.read_text()}"
            )
            time.sleep(0.5)
        assert_no_secret_on_command_lines(server.pid, [secret, str(db)])  # the script exec's mlflow
        assert experiment in experiment_names(port)
        banner = log.read_text().splitlines()[0]
        assert banner.startswith(f"MLflow: store sqlite:///{db}?password=***, artifacts "), banner
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert secret not in log.read_text()


# ------------------------------------------------------------------------------- search submit


def shipped_files(working_dir: Path, env: dict) -> set[str]:
    """The files Ray's job client would upload for ``env``: its own packaging code, minus the HTTP."""
    from ray._private.runtime_env.packaging import create_package
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    package = working_dir.parent / "package.zip"

    def build(directory: str, excludes: list[str] | None, is_file: bool = False) -> None:
        create_package(directory, package, include_gitignore=True, excludes=excludes)

    upload_working_dir_if_needed(dict(env), include_gitignore=True, upload_fn=build)
    with zipfile.ZipFile(package) as archive:
        names = {n for n in archive.namelist() if not n.endswith("/")}
    package.unlink()
    return names


def test_submit_never_ships_env_files_stores_or_tokens(tmp_path: Path) -> None:
    project = tmp_path / "project"
    kept = ["pyproject.toml", "searches/hpo.yaml", "edgeseg/__init__.py", ".env.example", "docs/tokens.md"]
    secret = [
        ".env", "deploy/prod.env", "mlflow.db", "runs/mlflow/mlflow.db", "data/cache.sqlite", "ray/auth_token",
        "auth_token", "cluster.token", ".venv/lib/site.py", ".git/config", "nested/.env",
    ]  # fmt: skip
    for name in kept + secret:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    shipped = shipped_files(project, runtime_env(project, None))
    assert shipped == set(kept)
    # Without edgeseg's excludes Ray would upload them: the list above is what keeps them home.
    bare = shipped_files(project, {"working_dir": str(project)})
    assert {".env", "mlflow.db", "auth_token", "cluster.token"} <= bare


# --------------------------------------------------------------------------------- Ray token


def test_ray_token_written_by_ray_is_made_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray._private.authentication.authentication_token_setup import generate_and_save_token

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    previous = os.umask(0o022)  # the usual umask, under which Ray's token comes out 0644
    try:
        generate_and_save_token()  # what ray.init() calls for a new local cluster
    finally:
        os.umask(previous)
    token = tmp_path / ".ray" / "auth_token"
    content = token.read_text()
    assert stat.S_IMODE(token.stat().st_mode) == 0o644 and content

    assert protect_ray_auth_token() == [token]
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert token.read_text() == content
    assert protect_ray_auth_token() == []  # already private: nothing to do


def test_ray_token_path_from_the_environment_is_protected_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.ray/auth_token there
    custom = tmp_path / "cluster-token"
    custom.write_text("t0k")
    custom.chmod(0o664)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(custom))
    assert protect_ray_auth_token() == [custom]
    assert stat.S_IMODE(custom.stat().st_mode) == 0o600


# -------------------------------------------------------------------------------- checkpoints


class RunsACommand:
    """What a hostile checkpoint can hold: unpickling it calls os.system."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def state_like_fit() -> dict:
    """The keys and value types ``fit`` checkpoints, from real torch objects after one step."""
    head = torch.nn.Conv2d(3, 4, 3)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(10, 2, 0.1))
    head(torch.randn(1, 3, 8, 8)).sum().backward()
    optimizer.step()
    scheduler.step()
    return {
        "model": head.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(), "epoch": 3,
        "config": {"train": {"lr": 1e-3, "epochs": 10}, "data": {"input_size": 192}}, "config_hash": "abc123",
        "model_config": {"channels": 32, "layers": ["p3", "p4"]},
        "layer_infos": {"p3": {"channels": 40, "stride": 8, "height": 24, "width": 24}},
        "backbone": {"onnx_path": "/x/b.onnx", "preprocessing": {"mean": (127.0, 127.0, 127.0)}},
        "class_weights": (0.4, 1.6), "metrics": {"val/miou": 0.5}, "best_metrics": {"val/miou": 0.5},
        "history": [{"epoch": 1.0, "val/miou": 0.4}], "rng": rng_state(), "edgeseg_version": "0.0",
    }  # fmt: skip


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    state = state_like_fit() | {"note": RunsACommand(f"touch {marker}")}
    directory = save_checkpoint(tmp_path / "epoch_0003", state)
    file = directory / CHECKPOINT_FILE
    with pytest.raises(ValueError, match="refused") as refused:
        load_checkpoint(directory)
    message = str(refused.value)
    assert str(file) in message and "system" in message
    assert not marker.exists()
    # The payload is live: the unrestricted loader runs it. That is what weights_only=True prevents.
    torch.load(file, weights_only=False)
    assert marker.exists()


def test_a_damaged_checkpoint_is_named_and_not_called_refused(tmp_path: Path) -> None:
    file = tmp_path / CHECKPOINT_FILE
    file.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read") as damaged:
        load_checkpoint(file)
    assert str(file) in str(damaged.value) and "weights_only=False" not in str(damaged.value)


def test_a_checkpoint_as_fit_writes_it_holds_plain_data_and_resumes(tmp_path: Path) -> None:
    state = state_like_fit()
    after = draws()  # what the RNGs give right after the checkpoint's state was taken
    file = save_checkpoint(tmp_path / "epoch_0003", state) / CHECKPOINT_FILE
    assert (
        torch.serialization.get_unsafe_globals_in_checkpoint(file) == []
    )  # nothing beyond weights_only's set
    loaded = load_checkpoint(file.parent)
    assert loaded["class_weights"] == (0.4, 1.6) and loaded["epoch"] == 3
    head = torch.nn.Conv2d(3, 4, 3)
    head.load_state_dict(loaded["model"])
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(10, 2, 0.1))
    scheduler.load_state_dict(loaded["scheduler"])
    assert scheduler.last_epoch == 1 and optimizer.state_dict()["state"][0]["step"] == 1
    draws()
    set_rng_state(loaded["rng"])
    assert draws() == after


def test_a_checkpoint_from_before_plain_rng_state_still_loads(tmp_path: Path) -> None:
    state = state_like_fit()
    state["rng"] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    after = draws()
    loaded = load_checkpoint(save_checkpoint(tmp_path / "old", state))
    assert isinstance(loaded["rng"]["numpy"][1], np.ndarray)
    set_rng_state(loaded["rng"])
    assert draws() == after


@pytest.fixture(autouse=True)
def _restore_global_rng() -> Iterator[None]:
    saved = rng_state()
    yield
    set_rng_state(saved)
