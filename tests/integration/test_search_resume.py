"""The driver process killed mid-search (SIGKILL), then resumed: the search completes with the
requested trials, one MLflow run per trial, and every epoch logged exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = {
    "data.input_size": 128,
    "data.synth_train_images": 8,
    "data.synth_val_images": 4,
    "model.channels": 8,
    "model.mask_size": 16,
    "model.roi_size": 7,
    "train.batch_size": 4,
    "train.warmup_epochs": 0,
    "train.device": "cpu",
    "train.epochs": 4,
}

DRIVER = """
import dataclasses, json, sys
from edgeseg.search.spec import spec_from_mapping
from edgeseg.search.tuner import resume_search, run_search
body = json.loads(sys.argv[2])
if sys.argv[1] == "run":
    outcome = run_search(spec_from_mapping(body), num_cpus=2, progress=False)
else:
    outcome = resume_search(body["name"], storage=body["storage"], num_cpus=2)
print("OUTCOME " + json.dumps(dataclasses.asdict(outcome)), flush=True)
"""


def start_driver(mode: str, body: dict, home: Path) -> subprocess.Popen:
    env = {**os.environ, "EDGESEG_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, mode, json.dumps(body)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: SIGKILL takes the driver and its local Ray
    )


def outcome_of(proc: subprocess.Popen, timeout: float) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    line = [x for x in out.splitlines() if x.startswith("OUTCOME ")][-1]
    return json.loads(line[len("OUTCOME ") :])


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
