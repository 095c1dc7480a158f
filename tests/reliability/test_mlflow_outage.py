"""The tracking server goes away mid-search and comes back: the search keeps training, every MLflow
write is kept on disk meanwhile and delivered once, in order, when the server answers again.

A real ``mlflow server`` (``edgeseg ui``'s ``serve_ui``) over a real PostgreSQL database, the backend
the compose stack uses, on 127.0.0.1, is stopped for 30 s while a real search driver (its own process,
local Ray) trains, then started again on the same port over the same store.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port
from integration.search_helpers import (
    audit_finished_search,
    outcome_of,
    start_driver,
    tiny_overrides,
)
from postgres import PostgresCluster, postgres_cluster  # noqa: F401  (the fixture)

EPOCHS = 8
OUTAGE_S = 30.0


def _server(store: str, tmp_path: Path, port: int) -> Any:
    from edgeseg.search.ui import serve_ui

    return serve_ui(store, host="127.0.0.1", port=port, artifacts=str(tmp_path / "artifacts"), block=False)


def _epochs_trained(storage: str) -> int:
    """Epoch results Tune has received so far (its own ``result.json`` per trial, on the storage)."""
    return sum(len(p.read_text().splitlines()) for p in (Path(storage) / "outage").glob("*/result.json"))


def _epochs_logged(client: Any, name: str) -> int:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return 0
    runs = client.search_runs([experiment.experiment_id], "tags.role = 'trial'")
    return sum(int(r.data.tags.get("last_epoch", 0)) for r in runs)


@pytest.mark.slow
def test_a_30_s_mlflow_outage_mid_search_loses_and_duplicates_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    postgres_cluster: PostgresCluster,  # noqa: F811  (the imported fixture)
) -> None:
    from mlflow.tracking import MlflowClient

    store = postgres_cluster.create_database()

    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))  # serve_ui keeps its log there
    port = free_port()
    server = _server(store, tmp_path, port)
    storage = str(tmp_path / "storage")
    body = {
        "name": "outage",
        "base": {"preset": "baseline", "overrides": tiny_overrides(epochs=EPOCHS)},
        "space": {"train.lr": {"grid": [1e-2, 5e-3, 2e-3]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"},
        "resources": {"executor": "function"},
        "max_concurrent_trials": 2,
        "storage": storage,
        "mlflow": {"tracking_uri": f"http://127.0.0.1:{port}"},
    }
    driver = start_driver("run", body, tmp_path / "home")
    client = MlflowClient(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 240
        while _epochs_logged(client, "outage") < 1:  # MLflow has seen the search train
            assert driver.poll() is None, driver.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "no epoch reached MLflow within 240 s"
            time.sleep(0.5)
        server.stop()
        down_at, stored_at_down = time.monotonic(), _epochs_trained(storage)
        while time.monotonic() - down_at < OUTAGE_S:
            assert driver.poll() is None, (
                "the driver ended during the outage:\n" + driver.communicate()[0][-4000:]
            )
            time.sleep(1.0)
        trained_while_down = _epochs_trained(storage) - stored_at_down
        kept = (Path(storage) / "outage" / "mlflow-outbox" / "journal.jsonl").read_text().count("\n")
        server = _server(store, tmp_path, port)
        outcome = outcome_of(driver, timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        server.stop()
    server = _server(store, tmp_path, port)  # read what the server stored, after the driver is gone
    try:
        assert trained_while_down >= 3, "the search did not go on training while MLflow was down"
        assert kept > 0, "nothing was journaled during the outage"
        assert outcome["state"] == "finished" and outcome["trials"] == 3
        # every epoch once per run and key, one run per trial, the parent finished, every ONNX logged
        runs = audit_finished_search(client, storage, "outage", EPOCHS)
        for run in runs:
            assert {a.path for a in client.list_artifacts(run.info.run_id, "onnx")} == {
                "onnx/model.onnx",
                "onnx/model.json",
            }
            assert run.data.tags["best_checkpoint"].startswith(storage)
        parent = client.search_runs([runs[0].info.experiment_id], "tags.role = 'search'")[0]
        assert parent.data.tags["state"] == "finished" and parent.data.tags["trials"] == "3"
        assert parent.data.tags["best_run_id"] in {r.info.run_id for r in runs}
        # delivered: the journal is empty again
        assert (Path(storage) / "outage" / "mlflow-outbox" / "journal.jsonl").read_text() == ""
    finally:
        server.stop()
