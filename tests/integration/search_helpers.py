"""What the search tests share: a tiny trial config and a search driver run as its own process
(so a test can SIGKILL it, or stop it from "another shell")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def tiny_overrides(epochs: int) -> dict[str, Any]:
    """A baseline head small enough that an epoch takes a fraction of a second on 2 cores."""
    return {
        "data.input_size": 128,
        "data.generated_train_images": 8,
        "data.generated_val_images": 4,
        "model.channels": 8,
        "model.mask_size": 16,
        "model.roi_size": 7,
        "train.batch_size": 4,
        "train.warmup_epochs": 0,
        "train.device": "cpu",
        "train.epochs": epochs,
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


def start_driver(mode: str, body: dict[str, Any], home: Path) -> subprocess.Popen[str]:
    """``run`` or ``resume`` the search ``body`` in a child process with its own EDGESEG_HOME."""
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


def outcome_of(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """Wait for the driver; it must exit 0 and print its ``SearchOutcome``."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    line = [x for x in out.splitlines() if x.startswith("OUTCOME ")][-1]
    return dict(json.loads(line[len("OUTCOME ") :]))


def epochs_stored(storage: str, name: str) -> int:
    """Trial checkpoints written so far (``<storage>/<name>/trial_runs/<trial>/epoch_NNNN``), on any storage."""
    import pyarrow.fs as pafs

    from edgeseg.search.storage import StorageFolder

    folder = StorageFolder(f"{storage}/{name}/trial_runs")
    if not folder.exists():
        return 0
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
    return sum(1 for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("epoch_"))


def audit_finished_search(
    client: Any,
    storage: str,
    name: str,
    epochs: int,
    keys: tuple[str, ...] = ("val/miou", "train/loss", "lr"),
) -> list[Any]:
    """What a finished search (resumed or not) must hold; its trial runs.

    Every Tune trial TERMINATED; one FINISHED parent run; exactly one FINISHED child run per trial (no
    duplicates); every epoch 1..``epochs`` logged once per run for each of ``keys``; the ONNX exported."""
    from edgeseg.search.control import read_record
    from edgeseg.search.disk import saved_trials

    record = read_record(name, storage)
    trials = saved_trials(f"{storage}/{name}")
    assert trials and {state for state, _ in trials.values()} == {"TERMINATED"}, trials
    experiment = client.get_experiment_by_name(record.spec.experiment_name)
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.search_id = '{record.search_id}' and tags.role = 'trial'"
    )
    parents = client.search_runs(
        [experiment.experiment_id], f"tags.search_id = '{record.search_id}' and tags.role = 'search'"
    )
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [p.info for p in parents]
    assert sorted(r.data.tags["ray_trial_id"] for r in runs) == sorted(trials)  # no duplicate runs
    for run in runs:
        assert run.info.status == "FINISHED", run.info
        assert run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
        for key in keys:
            logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert logged == list(range(1, epochs + 1)), (run.data.tags["ray_trial_id"], key, logged)
        assert run.data.tags["onnx"] == "exported", run.data.tags
    return list(runs)
