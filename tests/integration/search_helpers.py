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
