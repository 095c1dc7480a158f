"""PostgreSQL as MLflow's backend store, the way the compose stack runs it.

A throwaway cluster (tests/postgres.py) behind a real ``mlflow server`` started by ``serve_ui``: a
search tracked through that server end to end, its driver SIGKILLed mid-search and the search resumed,
audited in MLflow and in PostgreSQL's own tables; ``edgeseg ui`` over PostgreSQL as a user runs it;
and the one-line error a missing driver gives. Drivers run as their own processes (search_helpers).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import psycopg
import pytest
import yaml
from helpers import http_get, stop_cli
from integration.search_helpers import (
    audit_finished_search,
    epochs_stored,
    outcome_of,
    start_driver,
    tiny_overrides,
)
from postgres import PostgresCluster, postgres_cluster  # noqa: F401  (pytest fixture)

from edgeseg.search.mlflow_runs import ensure_experiment
from edgeseg.search.ui import UiServer, serve_ui
from mlflow import MlflowClient

pytestmark = [pytest.mark.integration]

SERVER_START_S = 180.0  # a cold MLflow server on a busy 2-core machine
EPOCH_METRICS = ("val/miou", "val/iou_target", "val/iou_other", "val/loss", "train/loss", "lr")


@dataclass
class PgServer:
    """An ``mlflow server`` over one PostgreSQL database; drivers share ``home`` (data and caches built once)."""

    server: UiServer
    database_uri: str
    password: str
    artifacts: Path
    home: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@pytest.fixture(scope="module")
def pg_server(
    postgres_cluster: PostgresCluster,  # noqa: F811  (the imported fixture)
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PgServer]:
    root = tmp_path_factory.mktemp("pg-server")
    database_uri = postgres_cluster.create_database()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESEG_HOME", str(root / "server-home"))  # the server's log
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
        server = serve_ui(
            tracking_uri=database_uri, host="127.0.0.1", port=0, artifacts=str(root / "artifacts"), block=False,
            health_timeout=SERVER_START_S,
        )  # fmt: skip
    try:
        yield PgServer(
            server, database_uri, postgres_cluster.password, root / "artifacts", root / "driver-home"
        )
    finally:
        server.stop()


def search_body(name: str, pg: PgServer, storage: Path, epochs: int) -> dict[str, Any]:
    return {
        "name": name,
        "base": {"preset": "baseline", "overrides": tiny_overrides(epochs=epochs)},
        "space": {"train.lr": {"grid": [1e-2, 5e-3]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"},
        "resources": {"executor": "function"},
        "max_concurrent_trials": 2,
        "storage": str(storage),
        "mlflow": {"tracking_uri": pg.url},
    }


def rows_in_postgres(database_uri: str, experiment_id: str, key: str) -> tuple[int, int]:
    """(runs of the experiment, points of metric ``key`` over those runs), read from MLflow's tables."""
    with psycopg.connect(database_uri) as connection:
        runs = connection.execute(
            "SELECT run_uuid FROM runs WHERE experiment_id = %s", (int(experiment_id),)
        ).fetchall()
        (points,) = connection.execute(
            "SELECT count(*) FROM metrics WHERE key = %s AND run_uuid = ANY(%s)", (key, [r[0] for r in runs])
        ).fetchone()
    return len(runs), int(points)


def command_lines() -> dict[int, str]:
    """pid -> command line of every process, as ``ps`` shows them to any user of this host."""
    listing = subprocess.run(
        ["ps", "-e", "-ww", "-o", "pid=,args="], capture_output=True, text=True, check=True
    )
    return {
        int(pid): args
        for pid, _, args in (line.strip().partition(" ") for line in listing.stdout.splitlines())
    }


def assert_onnx_served(client: MlflowClient, pg: PgServer, run: Any) -> None:
    """The trial's ONNX and sidecar, listed by the server and stored in its artifacts destination as a
    model ONNX Runtime loads."""
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "onnx")}
    assert {"onnx/model.onnx", "onnx/model.json"} <= listed, listed
    stored = pg.artifacts / run.info.experiment_id / run.info.run_id / "artifacts" / "onnx" / "model.onnx"
    outputs = ort.InferenceSession(str(stored), providers=["CPUExecutionProvider"]).get_outputs()
    assert [o.name for o in outputs] == ["masks"]


@pytest.mark.slow
def test_a_search_on_postgresql_killed_and_resumed_keeps_every_run_metric_and_model_once(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """The search service end to end through a server on PostgreSQL, with a driver SIGKILLed mid-search
    and ``search resume``: parent and child runs, every per-epoch metric once, ONNX artifacts."""
    epochs = 8  # per trial: a kill after 3 stored epochs lands mid-search on a loaded machine
    storage = tmp_path / "storage"
    body = search_body("pg-crash", pg_server, storage, epochs)
    driver = start_driver("run", body, pg_server.home)
    deadline = time.monotonic() + 240
    try:
        while epochs_stored(str(storage), "pg-crash") < 3:
            assert driver.poll() is None, driver.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "the search reported no epochs within 240 s"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its local Ray; the server lives on
        driver.wait()
    client = MlflowClient(pg_server.url)
    experiment = client.get_experiment_by_name("pg-crash")
    before = rows_in_postgres(pg_server.database_uri, experiment.experiment_id, "val/miou")[1]
    assert before < 2 * epochs, "the search finished before it was killed; nothing to resume"

    resumed = outcome_of(start_driver("resume", body, pg_server.home), timeout=300)
    assert resumed["state"] == "finished"
    assert resumed["trials"] == resumed["expected_trials"] == 2
    runs = audit_finished_search(client, str(storage), "pg-crash", epochs, keys=EPOCH_METRICS)
    for run in runs:
        assert {"params_count", "gflops"} <= set(run.data.metrics), run.data.metrics
        assert_onnx_served(client, pg_server, run)
    # The runs and points are rows of PostgreSQL, none twice: a parent and two trials, one row per epoch.
    assert rows_in_postgres(pg_server.database_uri, experiment.experiment_id, "val/miou") == (3, 2 * epochs)
    # serve_ui handed the server its store through the environment: the password is on no command line.
    assert not [args for args in command_lines().values() if pg_server.password in args]


# ------------------------------------------------------------------------------------ edgeseg ui


def read_lines(stream: Any, lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)


@pytest.mark.slow
def test_edgeseg_ui_serves_postgresql_without_showing_the_password(
    postgres_cluster: PostgresCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    """As a user runs it: ``edgeseg ui --tracking-uri postgresql://user@host:port/db``, the password in
    libpq's PGPASSWORD (a URI with a password belongs in MLFLOW_TRACKING_URI, which the search test's
    server gets, or in ~/.pgpass)."""
    database_uri = postgres_cluster.create_database()
    database = database_uri.rsplit("/", 1)[1]
    ensure_experiment(MlflowClient(database_uri), "pg-ui-search", (tmp_path / "artifacts").as_uri())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MLFLOW_"))}
    env.update(EDGESEG_HOME=str(tmp_path / "home"), PGPASSWORD=postgres_cluster.password)
    store = postgres_cluster.uri(database, with_password=False)
    command = [sys.executable, "-m", "edgeseg.cli", "ui", "--port", "0", "--tracking-uri", store]
    errors = tmp_path / "ui.stderr"
    with errors.open("w") as err:
        cli = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(cli.stdout, lines), daemon=True).start()
    printed = []
    try:
        try:
            printed.append(lines.get(timeout=SERVER_START_S))
        except queue.Empty:
            pytest.fail(
                f"edgeseg ui printed nothing within {SERVER_START_S:.0f} s:\n{errors.read_text()[-3000:]}"
            )
        printed.append(lines.get(timeout=30))  # the search's link: the CLI read PostgreSQL itself
        first = printed[0]
        assert first.startswith("MLflow UI: http://127.0.0.1:"), first
        assert f"@127.0.0.1:{postgres_cluster.port}/{database};" in first, first
        assert "pg-ui-search" in printed[1], printed
        port = int(first.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        assert http_get(port, "/health")[0] == 200
        status, answer = http_get(port, "/api/2.0/mlflow/experiments/search?max_results=50")
        assert status == 200 and b'"pg-ui-search"' in answer, answer[:500]
        shown = [
            f"{pid}: {args}" for pid, args in command_lines().items() if postgres_cluster.password in args
        ]
        assert not shown, f"the database password is on a command line: {shown}"
    finally:
        stop_cli(cli)  # the CLI stops the server's process group, then exits
    time.sleep(0.5)  # let the reader thread take the last lines
    while not lines.empty():
        printed.append(lines.get_nowait())
    output = "".join(printed) + errors.read_text()
    assert cli.returncode == 0, output[-3000:]
    assert postgres_cluster.password not in output


# ---------------------------------------------------------------------------------- no driver

# As if `pip install 'edgeseg[postgres]'` had never run: both PostgreSQL drivers fail to import.
WITHOUT_DRIVERS = """
import sys
sys.modules["psycopg"] = sys.modules["psycopg2"] = None
from edgeseg.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def edgeseg_without_drivers(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MLFLOW_"))}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_DRIVERS, *args], env={**clean, "EDGESEG_HOME": str(home), **env},
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def assert_one_line_naming_the_driver(result: subprocess.CompletedProcess[str], prefix: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith(prefix)]
    assert "PostgreSQL driver module 'psycopg" in line and line.endswith("pip install 'edgeseg[postgres]'"), (
        line
    )


@pytest.mark.parametrize(
    ("uri", "missing", "module"),
    [
        ("postgresql://edgeseg:{secret}@db:5432/mlflow", ("psycopg", "psycopg2"), "<default>"),
        ("postgresql+psycopg2://edgeseg:{secret}@db:5432/mlflow", ("psycopg2",), "psycopg2"),
        ("postgresql+psycopg://edgeseg:{secret}@db/mlflow", ("psycopg",), "psycopg"),
    ],
)
def test_a_missing_driver_is_named_with_the_extra_that_installs_it(
    uri: str, missing: tuple[str, ...], module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.engine.url import make_url

    from edgeseg.search.mlflow_runs import StoreDriverError, client_for, store_driver_problem

    secret = "pw-" + os.urandom(8).hex()
    uri = uri.format(secret=secret)
    assert store_driver_problem(uri) is None  # installed here (the dev extra pulls edgeseg[postgres])
    if module == "<default>":  # what SQLAlchemy reads a plain postgresql:// with: psycopg since 2.1
        module = make_url(uri).get_dialect().driver
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now fails, as when not installed
    with pytest.raises(StoreDriverError) as raised:
        client_for(uri)
    message = str(raised.value)
    assert f"driver module {module!r}" in message and message.endswith("pip install 'edgeseg[postgres]'")
    assert secret not in message and "edgeseg:***@db" in message and "\n" not in message
    for other in ("sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "file:///tmp/mlruns"):
        assert store_driver_problem(other) is None


@pytest.mark.slow
def test_edgeseg_ui_and_a_search_without_the_driver_fail_in_one_line(tmp_path: Path) -> None:
    secret = "pw-" + os.urandom(8).hex()
    uri = f"postgresql://edgeseg:{secret}@127.0.0.1:9/mlflow"
    # edgeseg ui refuses before starting a server (which would die with a page of traceback)
    ui = edgeseg_without_drivers(["ui", "--port", "0"], tmp_path / "home", MLFLOW_TRACKING_URI=uri)
    assert_one_line_naming_the_driver(ui, "edgeseg ui: error: tracking store 'postgresql://edgeseg:***@")
    assert secret not in ui.stdout + ui.stderr
    # a search refuses before it writes its record or starts Ray
    spec = {
        "name": "pg-no-driver",
        "base": {"preset": "baseline", "overrides": tiny_overrides(epochs=1)},
        "space": {"train.lr": {"grid": [1e-2]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"},
        "resources": {"executor": "function"},
        "storage": str(tmp_path / "storage"),
        "mlflow": {"tracking_uri": uri},
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    search = edgeseg_without_drivers(["search", "run", str(path), "--num-cpus", "1"], tmp_path / "home")
    assert_one_line_naming_the_driver(search, "edgeseg: error: tracking store 'postgresql://edgeseg:***@")
    assert secret not in search.stdout + search.stderr
    assert not (tmp_path / "storage").exists()
