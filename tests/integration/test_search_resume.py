"""The driver process killed mid-search (SIGKILL), then resumed: the search completes with the
requested trials, one MLflow run per trial, and every epoch logged exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from search_helpers import outcome_of, start_driver, tiny_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = tiny_overrides(epochs=4)


def mlflow_client(home: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{home.resolve() / 'mlflow' / 'mlflow.db'}")


def logged_points(client, experiment_name: str) -> int:
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return 0
    runs = client.search_runs([experiment.experiment_id], "tags.role = 'trial'")
    return sum(len(client.get_metric_history(r.info.run_id, "val/miou")) for r in runs)


def test_sigkill_mid_search_then_resume_completes_without_duplicates(tmp_path):
    from edgeseg.search.control import read_record, tune_trials

    home = tmp_path / "home"
    body = {
        "name": "crash",
        "base": {"preset": "baseline", "overrides": TINY},
        "space": {"train.lr": {"grid": [1e-2, 5e-3]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"},
        "resources": {"executor": "function"},
        "max_concurrent_trials": 2,
        "storage": str(tmp_path / "storage"),
    }
    driver = start_driver("run", body, home)
    experiment_dir = tmp_path / "storage" / "crash"
    deadline = time.monotonic() + 240
    try:
        # Trial checkpoints, one per epoch reported: watching them keeps this process off the MLflow
        # database while the driver creates it.
        while len(list(experiment_dir.glob("trial_runs/*/epoch_*"))) < 3:
            assert driver.poll() is None, driver.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "the search reported no epochs within 240 s"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # mid-search: 8 epochs in all
        driver.wait()
    client = mlflow_client(home)
    before = logged_points(client, "crash")
    assert before < 8, "the search finished before it was killed; nothing to resume"

    resumed = outcome_of(start_driver("resume", body, home), timeout=300)
    assert resumed["state"] == "finished"
    assert resumed["trials"] == resumed["expected_trials"] == 2

    record = read_record("crash", str(tmp_path / "storage"))
    trials = tune_trials(str(tmp_path / "storage" / "crash"))
    assert len(trials) == 2 and {s for s, _ in trials.values()} == {"TERMINATED"}
    experiment = client.get_experiment_by_name("crash")
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.search_id = '{record.search_id}' and tags.role = 'trial'"
    )
    parents = client.search_runs([experiment.experiment_id], "tags.role = 'search'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["ray_trial_id"] for r in runs) == sorted(trials)  # no duplicate runs
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in ("val/miou", "train/loss", "lr"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == [1, 2, 3, 4], (key, [m.step for m in history])
        assert run.data.tags["onnx"] == "exported"
