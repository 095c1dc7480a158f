"""Search-service figures on this machine, printed as one JSON object (never asserted in tests).

* the smoke search (``searches/smoke.yaml``) end to end: wall time, trials pruned by ASHA, epochs
  trained against every trial run to max_t;
* trial start -> first reported epoch (Tune's ``on_trial_start`` to the first result, on the driver)
  for the Ray Train executor (a TorchTrainer per trial) and the one-process function executor, on
  the same tiny trials one at a time.

Usage: ``python benchmarks/bench_search.py [--smoke-executor train|function] [--skip-smoke]``.
Everything goes to a fresh temporary EDGESEG_HOME (data, backbone, caches, MLflow, storage).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "data.input_size": 160,
    "data.generated_train_images": 8,
    "data.generated_val_images": 4,
    "model.channels": 8,
    "model.mask_size": 16,
    "model.roi_size": 7,
    "train.batch_size": 4,
    "train.warmup_epochs": 0,
    "train.device": "cpu",
    "train.epochs": 2,
}


class FirstResultTimer(tune.Callback):
    """Writes, per trial, the seconds from ``on_trial_start`` to its first result (JSON lines)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.started: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.perf_counter()

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        began = self.started.pop(trial.trial_id, None)
        if began is not None:
            row = {"trial": trial.trial_id, "first_result_s": time.perf_counter() - began,
                   "epoch_seconds": result.get("epoch_seconds")}  # fmt: skip
            with open(self.path, "a") as handle:
                handle.write(json.dumps(row) + "\n")


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def startup(executor: str, work: Path) -> dict[str, Any]:
    from edgeseg.search.spec import spec_from_mapping
    from edgeseg.search.tuner import run_search

    timings = work / f"startup-{executor}.jsonl"
    spec = spec_from_mapping(
        {
            "name": f"startup-{executor}",
            "base": {"preset": "baseline", "overrides": TINY},
            "space": {"train.lr": {"grid": [1e-2, 5e-3, 2e-3]}},
            "searcher": {"kind": "grid"},
            "scheduler": {"kind": "fifo"},
            "resources": {"executor": executor},
            "max_concurrent_trials": 1,
            "storage": str(work / "storage"),
        },
        source=f"<bench {executor}>",
    )
    outcome = run_search(spec, progress=False, callbacks=[FirstResultTimer(str(timings))], log=lambda _: None)
    rows = read_rows(timings)
    firsts = [r["first_result_s"] for r in rows]
    return {
        "trials": outcome.trials,
        "trial_start_to_first_epoch_s": [round(x, 2) for x in firsts],
        "median_s": round(statistics.median(firsts), 2) if firsts else None,
        "epoch1_compute_s": [round(r["epoch_seconds"], 2) for r in rows if r["epoch_seconds"] is not None],
        "search_wall_s": round(outcome.wall_s, 1),
    }


def smoke(executor: str | None, work: Path) -> dict[str, Any]:
    from edgeseg.search.spec import load_spec
    from edgeseg.search.tuner import run_search

    spec = load_spec(ROOT / "searches" / "smoke.yaml")
    if executor:
        spec = dataclasses.replace(spec, resources=dataclasses.replace(spec.resources, executor=executor))
    spec = dataclasses.replace(spec, storage=str(work / "storage"))
    timings = work / "smoke.jsonl"
    began = time.perf_counter()
    outcome = run_search(spec, progress=False, callbacks=[FirstResultTimer(str(timings))], log=lambda _: None)
    wall = time.perf_counter() - began
    firsts = [r["first_result_s"] for r in read_rows(timings)]
    return {
        "executor": spec.resources.executor,
        "state": outcome.state,
        "wall_s": round(wall, 1),
        "trials": outcome.trials,
        "pruned_by_asha": outcome.pruned,
        "epochs_trained": outcome.epochs_trained,
        "epochs_if_every_trial_ran_to_max_t": outcome.trials * spec.max_epochs,
        "trial_start_to_first_epoch_median_s": round(statistics.median(firsts), 2) if firsts else None,
        "max_concurrent_trials": spec.max_concurrent_trials,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke-executor", choices=("train", "function"), default=None)
    parser.add_argument("--skip-smoke", action="store_true")
    args = parser.parse_args()

    import ray

    # Tune prints its banners on stdout; keep stdout for the JSON alone.
    with (
        tempfile.TemporaryDirectory(prefix="edgeseg-bench-search-") as tmp,
        contextlib.redirect_stdout(sys.stderr),
    ):
        work = Path(tmp)
        os.environ["EDGESEG_HOME"] = str(work / "home")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        began = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count(), resources={"trial_driver": 2}, log_to_driver=False)
        figures: dict[str, Any] = {
            "cpus": os.cpu_count(),
            "ray_init_s": round(time.perf_counter() - began, 1),
        }
        try:
            if not args.skip_smoke:
                figures["smoke"] = smoke(args.smoke_executor, work)
            figures["startup_function_executor"] = startup("function", work)
            figures["startup_train_executor"] = startup("train", work)
        finally:
            ray.shutdown()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
