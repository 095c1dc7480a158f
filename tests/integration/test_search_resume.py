"""The driver process killed mid-search (SIGKILL), then resumed: the search completes with the
requested trials, one MLflow run per trial, and every epoch logged exactly once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from s3_server import s3_bucket  # noqa: F401  (the fixture)
from search_helpers import epochs_stored, outcome_of, start_driver, tiny_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 8  # per trial: enough that a kill after 3 stored epochs lands mid-search on a loaded machine
TINY = tiny_overrides(epochs=EPOCHS)


def mlflow_client(home: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{home.resolve() / 'mlflow' / 'mlflow.db'}")


def logged_points(client, experiment_name: str) -> int:
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return 0
    runs = client.search_runs([experiment.experiment_id], "tags.role = 'trial'")
    return sum(len(client.get_metric_history(r.info.run_id, "val/miou")) for r in runs)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_sigkill_mid_search_then_resume_completes_without_duplicates(tmp_path, where, request):
    from edgeseg.search.control import read_record
    from edgeseg.search.disk import saved_trials
    from edgeseg.search.storage import StorageFolder

    home = tmp_path / "home"
    storage = request.getfixturevalue("s3_bucket") if where == "s3" else str(tmp_path / "storage")
    body = {
        "name": "crash",
        "base": {"preset": "baseline", "overrides": TINY},
        "space": {"train.lr": {"grid": [1e-2, 5e-3]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"},
        "resources": {"executor": "function"},
        "max_concurrent_trials": 2,
        "storage": storage,
    }
    driver = start_driver("run", body, home)
    deadline = time.monotonic() + 240
    try:
        # Trial checkpoints, one per epoch reported: watching them keeps this process off the MLflow
        # database while the driver creates it.
        while epochs_stored(storage, "crash") < 3:
            assert driver.poll() is None, driver.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "the search reported no epochs within 240 s"
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # mid-search: 2 * EPOCHS epochs in all
        driver.wait()
    client = mlflow_client(home)
    before = logged_points(client, "crash")
    assert before < 2 * EPOCHS, "the search finished before it was killed; nothing to resume"

    resumed = outcome_of(start_driver("resume", body, home), timeout=300)
    assert resumed["state"] == "finished"
    assert resumed["trials"] == resumed["expected_trials"] == 2

    record = read_record("crash", storage)
    trials = saved_trials(f"{storage}/crash")
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
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), (
                key,
                [m.step for m in history],
            )
        assert run.data.tags["onnx"] == "exported"
        # the ONNX was exported from the trial's best checkpoint, read back from the search storage
        assert run.data.tags["best_checkpoint"].startswith(storage)
    if where == "s3":
        assert not (tmp_path / "storage").exists()
        search = StorageFolder(f"{storage}/crash")
        assert {"trial_runs", "edgeseg"} <= set(search.list())  # checkpoints and the search record
        assert search.child("edgeseg").exists("search.json")
        assert len(search.child("trial_runs").list()) == 2
