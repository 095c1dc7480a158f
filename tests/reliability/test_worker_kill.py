"""A Ray Train worker SIGKILLed mid-epoch costs one Tune retry, which resumes from Train's checkpoint.

A real search with the Train executor (local Ray, SQLite MLflow, one trial, ``max_failures: 1``).
Once Tune has seen epoch ``KILL_AFTER``, a Tune callback finds the trial's Train worker (the process
titled ``ray::RayTrainWorker`` below this test's Ray) and SIGKILLs it while it trains or reports the
next epoch. The Train run fails (its own ``FailureConfig`` is 0), Tune retries the trial once, and
the new Train run resumes from the latest checkpoint Train registered, after reporting every epoch
of that checkpoint's history again (``trainable._replay_history``). MLflow must then hold each epoch
once, with the values of the epochs that were kept, and the best checkpoint must be one that exists.

The second test makes the gap that replay is for, deterministically: a Train run restored after all
its epochs only replays them, into a tracker that saw the first epoch alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from integration.search_helpers import tiny_overrides
from ray.tune import Callback

EPOCHS = 5
KILL_AFTER = 3  # SIGKILL the worker once Tune has seen this epoch


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("worker-kill")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESEG_HOME", str(root / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        # Train's controller polls its workers every 2 s and a worker's report waits for that poll;
        # polled every 0.5 s, an epoch of these tiny trials costs 0.5 s instead of 2 s
        mp.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        ray.init(address="local", num_cpus=2, resources={"trial_driver": 1}, log_to_driver=False)
        try:
            yield root
        finally:
            ray.shutdown()


def _train_workers() -> list[Any]:
    """The Ray Train worker processes of this test's Ray (its raylet is a child of this process)."""
    import psutil  # the copy bundled with Ray: importing ray (the fixture did) puts it on sys.path

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        title = (proc.info["cmdline"] or [""])[0]
        if not title.startswith("ray::RayTrainWorker"):
            continue
        with contextlib.suppress(psutil.Error):
            if any(parent.pid == os.getpid() for parent in proc.parents()):
                found.append(proc)
    return found


class WorkerKiller(Callback):
    """A driver-side Tune callback: once Tune has seen epoch ``KILL_AFTER`` (so Train has registered
    its checkpoint), SIGKILL the trial's Train worker, which is then training or reporting the next."""

    def __init__(self) -> None:
        self.killed: list[int] = []

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        if result.get("epoch") != KILL_AFTER or self.killed:
            return
        for worker in _train_workers():
            os.kill(worker.pid, signal.SIGKILL)
            self.killed.append(worker.pid)


def _search(root: Path) -> tuple[Any, Any, WorkerKiller, float]:
    from edgeseg.search.spec import spec_from_mapping
    from edgeseg.search.tuner import run_search

    body = {
        "name": "worker-kill",
        "base": {"preset": "baseline", "overrides": tiny_overrides(epochs=EPOCHS)},
        "storage": str(root / "storage"),
        "space": {"train.batch_size": {"grid": [4]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"},
        "resources": {"executor": "train", "cpus_per_worker": 1},
        "max_concurrent_trials": 1,
        "max_failures": 1,
        "keep_checkpoints": 1,  # Train deletes all but the best and the latest: some replays have no path
        "export_onnx": False,
    }
    spec = spec_from_mapping(body, source="<test worker-kill>").resolved()
    killer = WorkerKiller()
    began = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = run_search(spec, callbacks=[killer])
    return spec, outcome, killer, time.perf_counter() - began


def _attempts(outcome: Any) -> tuple[Any, list[list[dict[str, Any]]], str]:
    """The trial, its results per attempt (``training_iteration`` restarts with each), its error.txt."""
    from ray.tune import ExperimentAnalysis

    (trial,) = ExperimentAnalysis(outcome.experiment_path).trials
    folder = Path(outcome.experiment_path) / f"trial_{trial.trial_id}"
    attempts: list[list[dict[str, Any]]] = []
    for line in (folder / "result.json").read_text().splitlines():
        result = json.loads(line)
        if result["training_iteration"] == 1:
            attempts.append([])
        attempts[-1].append(result)
    return trial, attempts, (folder / "error.txt").read_text()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_killed_train_worker_costs_one_retry_and_leaves_no_gap_or_duplicate(ray_env):
    from edgeseg.engine.checkpoint import load_checkpoint
    from edgeseg.search.mlflow_runs import client_for, search_runs
    from edgeseg.search.names import EPOCH_KEYS, EPOCH_PREFIXES
    from edgeseg.search.trainable import train_checkpoint_name

    spec, outcome, killer, seconds = _search(ray_env)
    assert len(killer.killed) == 1, "the test's Train worker was not found"
    print(f"search with one killed Train worker: {seconds:.1f} s")
    assert (outcome.state, outcome.trials, outcome.errored) == ("finished", 1, 0)

    # One retry budget: Tune retried once; Train did not recover on its own.
    trial, attempts, errors = _attempts(outcome)
    assert trial.status == "TERMINATED"
    assert (trial.run_metadata.num_failures, errors.count("Failure #")) == (1, 1)
    assert len(attempts) == 2
    first, second = ([r for r in a if "epoch" in r] for a in attempts)
    assert [r["epoch"] for r in second] == list(range(1, EPOCHS + 1))

    # What was kept: the final checkpoint's history. The retry reported it exactly (the epochs up
    # to the restored checkpoint replayed, the rest trained), and resumed, not restarted: the first
    # attempt's epochs up to the restored one are the kept ones (an epoch's own timing included).
    final = Path(trial.last_result["checkpoint_path"])
    assert final.name == train_checkpoint_name(EPOCHS)
    kept = {int(m["epoch"]): m for m in load_checkpoint(final)["history"]}
    assert sorted(kept) == list(range(1, EPOCHS + 1))
    for result in second:
        assert result["epoch_seconds"] == kept[result["epoch"]]["epoch_seconds"]
    resumed = [r["epoch"] for r in first if r["epoch_seconds"] == kept[r["epoch"]]["epoch_seconds"]]
    restored = max(resumed)
    assert resumed == list(range(1, restored + 1)) and restored >= KILL_AFTER
    # a replayed epoch names its own checkpoint where Train still kept it (at most the best and the
    # latest with keep_checkpoints 1), else nothing
    named = {r["epoch"]: r["checkpoint_path"] for r in second[:restored] if "checkpoint_path" in r}
    assert restored in named and len(named) <= 2
    for epoch, path in named.items():
        assert Path(path) == final.parent / train_checkpoint_name(epoch)
    print(f"restored from epoch {restored}; replayed with a checkpoint path: epochs {sorted(named)}")

    # MLflow: every epoch 1..N exactly once per metric key, with the kept values.
    client = client_for(spec.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(spec.experiment_name)
    (run,) = search_runs(client, experiment.experiment_id, {"search_id": outcome.search_id, "role": "trial"})
    assert (run.info.status, run.data.tags["state"]) == ("FINISHED", "finished")
    keys = [k for k in run.data.metrics if k.startswith(EPOCH_PREFIXES) or k in EPOCH_KEYS]
    assert {spec.metric, "train/loss", "epoch_seconds"} <= set(keys)
    for key in keys:
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), key
        assert [m.value for m in history] == pytest.approx([kept[e][key] for e in range(1, EPOCHS + 1)]), key

    # The best checkpoint exists and holds the run's best value.
    tags = run.data.tags
    best = load_checkpoint(tags["best_checkpoint"])
    best_of = max if spec.mode == "max" else min
    best_value = best_of(m.value for m in client.get_metric_history(run.info.run_id, spec.metric))
    assert float(tags["best_value"]) == best_value == pytest.approx(best["metrics"][spec.metric])
    assert int(tags["best_epoch"]) == best["epoch"]


# ----------------------------------------------------------------------------------------------
# The replay itself, without Tune: what a restored Train run reports, and what the tracker makes of it.
# ----------------------------------------------------------------------------------------------


def _train_run(spec: Any, name: str, reports: Path) -> None:
    """One Ray Train run of the Train executor's worker loop, as ``train_driver_trial`` starts it;
    every report the controller receives is appended to ``reports`` in ``TuneReportCallback``'s form."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.callback import UserCallback

    from edgeseg.search.trainable import train_runs_path, train_worker_loop

    class ReportLog(UserCallback):  # defined here: cloudpickle ships it to the controller by value
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            result = {**metrics[0], **({"checkpoint_path": checkpoint.path} if checkpoint else {})}
            with open(reports, "a") as out:
                out.write(json.dumps(result) + "\n")

    TorchTrainer(
        train_worker_loop,
        train_loop_config={"spec": spec, "trial": {}},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=train_runs_path(spec),
            callbacks=[ReportLog()],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.keep_checkpoints,
                checkpoint_score_attribute=spec.metric,
                checkpoint_score_order=spec.mode,
            ),
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    ).fit()


def _read(reports: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in reports.read_text().splitlines()]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_restored_train_run_replays_its_history_and_the_tracker_fills_the_gap(ray_env, tmp_path):
    """A Train run of 3 epochs, then the same run again: it restores epoch 3 and only replays. The
    tracker saw only epoch 1 of the first run (its driver died, say): the replay fills epochs 2-3
    once each, and the best checkpoint is one Train kept."""
    from ray.tune.experiment import Trial

    from edgeseg import paths
    from edgeseg.search.mlflow_runs import client_for, search_runs
    from edgeseg.search.spec import spec_from_mapping
    from edgeseg.search.tracking import MlflowTracker
    from edgeseg.search.trainable import train_checkpoint_name
    from edgeseg.search.tuner import prepare_once

    body = {
        "name": "replay",
        "base": {"preset": "baseline", "overrides": tiny_overrides(epochs=3)},
        "storage": str(tmp_path / "storage"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "space": {"train.batch_size": {"grid": [4]}},
        "searcher": {"kind": "grid"},
        "resources": {"executor": "train", "cpus_per_worker": 1},
        "keep_checkpoints": 1,
        "export_onnx": False,
    }
    spec = spec_from_mapping(body, source="<test replay>").resolved()
    with paths.using_home(spec.home):
        prepare_once(spec, log=lambda line: None)  # as a search's driver does before its trials
    began = time.perf_counter()
    _train_run(spec, "train-t1", tmp_path / "first.jsonl")
    _train_run(spec, "train-t1", tmp_path / "second.jsonl")
    print(f"two Train runs: {time.perf_counter() - began:.1f} s")
    first, replayed = _read(tmp_path / "first.jsonl"), _read(tmp_path / "second.jsonl")

    # The restored run reports epochs 1-3 again, as they were, with the paths of the checkpoints
    # Train still keeps (the best and the latest) and no path for the ones its retention deleted.
    assert [r["epoch"] for r in first] == [r["epoch"] for r in replayed] == [1, 2, 3]
    kept = {Path(p).name for p in Path(first[-1]["checkpoint_path"]).parent.glob("checkpoint_epoch_*")}
    best = max(first, key=lambda r: r[spec.metric])
    assert kept == {train_checkpoint_name(3), train_checkpoint_name(best["epoch"])}
    for before, again in zip(first, replayed, strict=True):
        assert Path(before["checkpoint_path"]).name == train_checkpoint_name(before["epoch"])
        assert again.pop("checkpoint_path", None) == (
            before["checkpoint_path"] if train_checkpoint_name(before["epoch"]) in kept else None
        )
        assert again == {k: v for k, v in before.items() if k != "checkpoint_path"}

    tracker = MlflowTracker(spec, "search-1")
    tracker.setup()
    trial = Trial("edgeseg_test", config={}, trial_id="t1", stub=True)
    tracker.on_trial_start(0, [trial], trial)
    for result in [first[0], *_read(tmp_path / "second.jsonl")]:  # what Tune saw, then the replay
        tracker.on_trial_result(0, [trial], trial, result)
    trial.set_status(Trial.TERMINATED)
    tracker.on_trial_complete(0, [trial], trial)
    tracker.on_experiment_end([trial])

    client = client_for(spec.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(spec.experiment_name)
    (run,) = search_runs(client, experiment.experiment_id, {"search_id": "search-1", "ray_trial_id": "t1"})
    for key in (spec.metric, "train/loss", "lr", "epoch_seconds"):
        logged = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert logged == [(r["epoch"], pytest.approx(r[key])) for r in first], key
    tags = run.data.tags
    assert (tags["best_epoch"], tags["best_checkpoint"]) == (str(best["epoch"]), best["checkpoint_path"])
    assert Path(tags["best_checkpoint"]).name in kept
