"""Stopping from another process: ``stop --trial`` prunes only that trial; stopping the whole search
is clean and resumable, and the resumed search finishes the others."""

from __future__ import annotations

import subprocess
import time

import pytest
from search_helpers import outcome_of, start_driver, tiny_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 40  # ~0.15 s each here: long enough to be stopped mid-way from this process
TINY = tiny_overrides(EPOCHS)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"driver exited while waiting for {what}: {proc.communicate()[0][-4000:]}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def test_stop_one_trial_then_the_whole_search_then_resume(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from edgeseg.search.control import read_record, request_stop, search_status
    from edgeseg.search.disk import saved_trials

    home = tmp_path / "home"
    monkeypatch.setenv("EDGESEG_HOME", str(home))
    storage = str(tmp_path / "storage")
    body = {
        "name": "stoppable",
        "base": {"preset": "baseline", "overrides": TINY},
        "space": {"train.lr": {"grid": [1e-2, 5e-3]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"},  # nothing else prunes: every stop below is ours
        "resources": {"executor": "function"},
        "max_concurrent_trials": 2,
        "storage": storage,
    }
    driver = start_driver("run", body, home)
    db = home / "mlflow" / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db.resolve()}")

    def trial_runs():
        # Only once a trial has checkpointed: by then the driver has created the MLflow database.
        if not list((tmp_path / "storage" / "stoppable").glob("trial_runs/*/manifest.json")):
            return []
        experiment = client.get_experiment_by_name("stoppable")
        return client.search_runs([experiment.experiment_id], "tags.role = 'trial'")

    def first_with_an_epoch():
        started = [r for r in trial_runs() if int(r.data.tags.get("last_epoch", 0)) >= 1]
        return started[0] if started else None

    try:
        target = wait_for(first_with_an_epoch, driver, "a trial's first epoch")
        target_id = target.data.tags["ray_trial_id"]
        with pytest.raises(Exception, match="has no trial 'nope'"):
            request_stop("stoppable", trial_id="nope", storage=storage)
        assert "asked trial" in request_stop("stoppable", trial_id=target_id, storage=storage)

        def target_stopped():
            return [
                r
                for r in trial_runs()
                if r.data.tags["ray_trial_id"] == target_id and r.data.tags.get("pruned")
            ]

        (stopped,) = wait_for(target_stopped, driver, "the stopped trial's end")
        assert stopped.data.tags["pruned"] == "true" and stopped.data.tags["pruned_by"] == "user"
        stopped_at = int(stopped.data.tags["pruned_at_epoch"])
        assert 1 <= stopped_at < EPOCHS
        # The other trials are still going: stop the whole search (Tune's clean, resumable stop).
        unfinished = [r for r in trial_runs() if not r.data.tags.get("pruned")]
        assert unfinished, "every other trial already ended; nothing left to interrupt"
        request_stop("stoppable", storage=storage)
        first = outcome_of(driver, timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert first["state"] == "stopped" and first["terminated"] == 1  # only the trial stopped by request
    assert search_status("stoppable", storage=storage).driver == "stopped"

    second = outcome_of(start_driver("resume", body, home), timeout=300)
    assert second["state"] == "finished" and second["trials"] == 2

    record = read_record("stoppable", storage)
    trials = saved_trials(f"{storage}/stoppable")
    assert {s for s, _ in trials.values()} == {"TERMINATED"} and len(trials) == 2
    runs = client.search_runs(
        [client.get_experiment_by_name("stoppable").experiment_id],
        f"tags.search_id = '{record.search_id}' and tags.role = 'trial'",
    )
    assert sorted(r.data.tags["ray_trial_id"] for r in runs) == sorted(trials)
    for run in runs:
        epochs = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/miou"))
        if run.data.tags["ray_trial_id"] == target_id:
            assert epochs == list(range(1, stopped_at + 1))
            assert run.data.tags["pruned_by"] == "user"
        else:  # only the requested trial was pruned; the interrupted ones resumed to the end
            assert epochs == list(range(1, EPOCHS + 1))
            assert run.data.tags["pruned"] == "false"
        assert run.info.status == "FINISHED"
