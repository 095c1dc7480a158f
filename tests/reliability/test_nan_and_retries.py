"""NaN never becomes a best, and a trial has one retry budget that a deterministic failure skips.

The unit tests build the progress table, the MLflow tracker (on a real SQLite store) and the
checkpoint store directly and feed them real Tune ``Trial`` objects. The search tests run real
Ray: a trial whose loss turns non-finite in epoch 2 (``train.lr`` 1e6, no gradient clipping) or
whose sampled configuration is invalid runs exactly once with ``max_failures: 2``, with either
executor; any other error still gets its ``1 + max_failures`` attempts.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from integration.search_helpers import tiny_overrides

NAN, INF = math.nan, math.inf
# (mode, metric, values by epoch): None = not reported; the best finite value is at epoch 5.
SEQUENCES = {
    "max": ("val/miou", [None, NAN, 0.3, INF, 0.5, 0.4]),
    "min": ("val/loss", [None, NAN, 0.5, -INF, 0.3, 0.4]),
}


def _trial(trial_id: str, config: dict[str, Any] | None = None) -> Any:
    from ray.tune.experiment import Trial

    return Trial("edgeseg_test", config=config or {}, trial_id=trial_id, stub=True)


def _result(metric: str, epoch: int, value: float | None, **extra: Any) -> dict[str, Any]:
    return {"epoch": epoch, **({} if value is None else {metric: value}), **extra}


# ----------------------------------------------------------------------------------------------
# NaN, infinity and missing values never rank as the best.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["max", "min"])
def test_progress_table_best_ignores_nan_infinite_and_missing(mode):
    from edgeseg.search.progress import ProgressTable

    metric, values = SEQUENCES[mode]
    table = ProgressTable(metric, mode, max_epochs=6)
    trial = _trial("t1")

    def best_column() -> str:
        row = table.render([trial]).splitlines()[-1]
        return row.split()[4]

    for epoch, value in enumerate(values[:2], start=1):  # missing, then NaN
        table.on_trial_result(0, [trial], trial, _result(metric, epoch, value))
        assert best_column() == "-"
    for epoch, value in enumerate(values[2:], start=3):
        table.on_trial_result(0, [trial], trial, _result(metric, epoch, value))
        trial.run_metadata.last_result = _result(metric, epoch, value)
    assert best_column() == ("0.5000" if mode == "max" else "0.3000")
    assert table.render([trial]).splitlines()[-1].split()[2:4] == ["6/6", "0.4000"]


def _tracker_spec(tmp_path: Path, mode: str):
    from edgeseg.search.spec import spec_from_mapping

    metric, _ = SEQUENCES[mode]
    body = {
        "name": f"nan-{mode}",
        "base": {"preset": "baseline", "overrides": tiny_overrides(epochs=6)},
        "storage": str(tmp_path / "storage"),
        "home": str(tmp_path / "home"),
        "mlflow": {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "artifact_location": (tmp_path / "artifacts").as_uri(),
        },
        "space": {"train.lr": {"grid": [1e-2]}},
        "searcher": {"kind": "grid"},
        "metric": metric,
        "mode": mode,
    }
    return spec_from_mapping(body, source="<test>").resolved()


@pytest.mark.parametrize("mode", ["max", "min"])
def test_tracker_best_checkpoint_ignores_nan_infinite_and_missing(tmp_path, mode):
    from edgeseg.search.tracking import MlflowTracker

    metric, values = SEQUENCES[mode]
    tracker = MlflowTracker(_tracker_spec(tmp_path, mode), "search-1")
    tracker.setup()
    trial = _trial("t1")
    tracker.on_trial_start(0, [trial], trial)
    run_id = tracker.run_id(trial.trial_id)

    def tags() -> dict[str, str]:
        tracker.outbox.flush(30)  # the tracker's writes are delivered in the background
        return dict(tracker.client.get_run(run_id).data.tags)

    for epoch, value in enumerate(values, start=1):
        result = _result(metric, epoch, value, checkpoint_path=str(tmp_path / f"epoch_{epoch}"))
        tracker.on_trial_result(0, [trial], trial, result)
        if epoch == 2:  # missing, then NaN: no best yet
            assert "best_value" not in tags() and "best_checkpoint" not in tags()
        if epoch == 3:  # the first finite value replaces "no best"
            assert tags()["best_epoch"] == "3"
    final = tags()
    assert (final["best_epoch"], float(final["best_value"])) == ("5", 0.3 if mode == "min" else 0.5)
    assert final["best_checkpoint"] == str(tmp_path / "epoch_5")
    # the NaN epoch is still in the history, as logged
    history = {m.step: m.value for m in tracker.client.get_metric_history(run_id, metric)}
    assert math.isnan(history[2]) and history[5] == pytest.approx(float(final["best_value"]))


def test_tracker_reattached_to_a_run_with_a_nan_best_takes_the_next_finite_value(tmp_path):
    """A run whose ``best_value`` tag says nan (written before this fix) does not keep it."""
    from edgeseg.search.tracking import MlflowTracker

    spec = _tracker_spec(tmp_path, "max")
    first = MlflowTracker(spec, "search-1")
    first.setup()
    trial = _trial("t1")
    first.ensure_run(trial)
    run_id = first.run_id(trial.trial_id)
    first.close_outbox()
    first.client.set_tag(run_id, "best_value", "nan")
    first.client.set_tag(run_id, "best_epoch", "1")

    second = MlflowTracker(spec, "search-1")  # a restarted driver
    second.setup()
    second.ensure_run(trial)
    assert second.run_id(trial.trial_id) == run_id
    second.on_trial_result(0, [trial], trial, _result("val/miou", 2, 0.1, checkpoint_path="/c/epoch_2"))
    second.outbox.flush(30)
    tags = second.client.get_run(run_id).data.tags
    assert (tags["best_value"], tags["best_epoch"], tags["best_checkpoint"]) == ("0.1", "2", "/c/epoch_2")


@pytest.mark.parametrize("mode", ["max", "min"])
def test_checkpoint_store_keeps_the_best_finite_checkpoint(tmp_path, mode):
    from edgeseg.search.trainable import CheckpointStore

    metric, values = SEQUENCES[mode]
    store = CheckpointStore(str(tmp_path / "trial_runs"), "t1", keep=1, metric=metric, mode=mode)
    # epochs 1-5 as above; epoch 6 (the latest) is kept whatever its value
    for epoch, value in enumerate(values, start=1):
        local = tmp_path / f"local_{epoch}"
        local.mkdir()
        (local / "weights.bin").write_bytes(bytes([epoch]))
        store.save(local, {"epoch": epoch, **({} if value is None else {metric: value})})
    assert [e["epoch"] for e in store.entries()] == [5, 6]
    on_disk = sorted(p.name for p in (tmp_path / "trial_runs" / "t1").glob("epoch_*"))
    assert on_disk == ["epoch_0005", "epoch_0006"]
    # ranking: finite values first, best first; NaN, infinite and missing after them
    ranked = [e["epoch"] for e in store.ranked([{"epoch": i, "metrics": {} if v is None else {metric: v}}
                                                for i, v in enumerate(values, start=1)])]  # fmt: skip
    assert ranked[:3] == [5, 6, 3] and sorted(ranked[3:]) == [1, 2, 4]


# ----------------------------------------------------------------------------------------------
# Real Ray: one retry budget; a deterministic failure is not retried.
# ----------------------------------------------------------------------------------------------

NAN_AT_EPOCH_2 = {"train.lr": 1e6, "train.grad_clip": 0.0}  # epoch 1 reports, epoch 2's loss is NaN


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory):
    """One local Ray and one EDGESEG_HOME (data and feature caches built once) for the module."""
    import ray

    root = tmp_path_factory.mktemp("retries")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESEG_HOME", str(root / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        ray.init(address="local", num_cpus=2, resources={"trial_driver": 1}, log_to_driver=False)
        try:
            yield root
        finally:
            ray.shutdown()


def _run(root: Path, name: str, overrides: dict[str, Any], **extra: Any):
    from edgeseg.search.spec import spec_from_mapping
    from edgeseg.search.tuner import run_search

    body = {
        "name": name,
        "base": {"preset": "baseline", "overrides": {**tiny_overrides(epochs=3), **overrides}},
        "storage": str(root / "storage"),
        "space": {"train.batch_size": {"grid": [4]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"},
        "resources": {"executor": "function"},
        "max_concurrent_trials": 1,
        "max_failures": 2,
        "export_onnx": False,
        **extra,
    }
    spec = spec_from_mapping(body, source=f"<test {name}>")
    with contextlib.redirect_stdout(io.StringIO()) as printed:  # the progress table, among others
        outcome = run_search(spec)
    return spec.resolved(), outcome, printed.getvalue()


def _attempts(spec, outcome) -> dict[str, Any]:
    """What Tune and MLflow recorded of the search's one trial."""
    from ray.tune import ExperimentAnalysis

    from edgeseg.search.mlflow_runs import client_for, search_runs

    (trial,) = ExperimentAnalysis(outcome.experiment_path).trials
    folder = Path(outcome.experiment_path) / f"trial_{trial.trial_id}"
    results = [json.loads(line) for line in (folder / "result.json").read_text().splitlines()]
    client = client_for(spec.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(spec.experiment_name)
    (run,) = search_runs(client, experiment.experiment_id, {"search_id": outcome.search_id, "role": "trial"})
    return {
        "trial": trial,
        "failures": trial.run_metadata.num_failures,
        "failure_notes": (folder / "error.txt").read_text().count("Failure #"),
        "epochs": [r["epoch"] for r in results if "epoch" in r],
        "results": results,
        "run": run,
        "history": [m.step for m in client.get_metric_history(run.info.run_id, spec.metric)],
    }


def _assert_failed_once_deterministically(spec, outcome, error: str, epochs: list[int]) -> dict[str, Any]:
    from edgeseg.search.trainable import FAILED_DETERMINISTICALLY

    assert (outcome.trials, outcome.errored) == (1, 1)
    seen = _attempts(spec, outcome)
    assert seen["trial"].status == "ERROR"
    assert (seen["failures"], seen["failure_notes"]) == (1, 1)  # with max_failures 2: not retried
    assert seen["epochs"] == epochs  # a retry would have reported its resumed epoch again
    # announced once (with the Train executor an epoch queued by Train may be processed after it)
    (announced,) = [r[FAILED_DETERMINISTICALLY] for r in seen["results"] if FAILED_DETERMINISTICALLY in r]
    assert error in announced
    run = seen["run"]
    assert run.info.status == "FAILED"
    assert (run.data.tags["state"], run.data.tags["error_kind"]) == ("errored", "deterministic")
    assert "DeterministicTrialError" in run.data.tags["error"] and error in run.data.tags["error"]
    assert seen["history"] == epochs
    return seen


@pytest.fixture(scope="module")
def nan_function_search(ray_env):
    """As searches/smoke.yaml runs: Optuna and ASHA see the failure's report (a NaN metric, no epoch)."""
    return _run(
        ray_env,
        "nan-function",
        {"train.grad_clip": 0.0},
        space={"train.lr": {"choice": [NAN_AT_EPOCH_2["train.lr"]]}},
        searcher={"kind": "optuna", "seed": 0},
        scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 2},
    )


@pytest.mark.integration
@pytest.mark.slow
def test_non_finite_loss_is_not_retried_by_the_function_executor(nan_function_search):
    spec, outcome, printed = nan_function_search
    seen = _assert_failed_once_deterministically(
        spec, outcome, "lower train.lr or enable train.grad_clip", [1]
    )
    # the NaN report did not replace epoch 1 as the best checkpoint
    tags = seen["run"].data.tags
    assert tags["best_epoch"] == "1" and math.isfinite(float(tags["best_value"]))
    assert tags["best_checkpoint"].endswith("epoch_0001")
    # the progress table's last row: epoch 1 of 3 reached, the NaN shown but not the best
    row = [line for line in printed.splitlines() if line.startswith(seen["trial"].trial_id)][-1]
    assert row.split()[1:6] == ["ERROR", "1/3", "nan", f"{float(tags['best_value']):.4f}", "error,"]
    assert row.endswith("error, not retried")


@pytest.mark.integration
@pytest.mark.slow
def test_trial_error_is_read_from_storage_when_the_local_copy_is_gone(nan_function_search, tmp_path):
    """A restored or moved experiment's ``Trial`` points at a driver staging folder that does not
    hold its ``error.txt``, and Ray 2.60's ``Trial`` has no ``error_msg``: the text comes from storage."""
    import shutil

    from ray.tune import ExperimentAnalysis

    from edgeseg.search.tracking import _trial_error

    _, outcome, _ = nan_function_search
    moved = tmp_path / "moved-nan-function"
    shutil.copytree(outcome.experiment_path, moved)
    (trial,) = ExperimentAnalysis(str(moved)).trials
    assert trial.status == "ERROR" and not Path(trial.error_file).exists()
    text = _trial_error(trial)
    assert "DeterministicTrialError: NonFiniteLossError: non-finite loss nan at epoch 2" in text
    assert text.startswith("Failure # 1")  # error.txt itself, as Tune wrote it


@pytest.mark.integration
@pytest.mark.slow
def test_invalid_sampled_configuration_is_not_retried(ray_env):
    # each value is valid with the base config; together train.min_lr > train.lr
    spec, outcome, _ = _run(
        ray_env,
        "invalid-config",
        {},
        space={"train.lr": {"choice": [1e-5]}, "train.min_lr": {"choice": [1e-4]}},
        searcher={"kind": "random"},
    )
    _assert_failed_once_deterministically(spec, outcome, "train.min_lr", [])


@pytest.mark.integration
@pytest.mark.slow
def test_other_errors_get_one_retry_budget(ray_env):
    """A RuntimeError that is not known to be deterministic: 1 + max_failures attempts, no more."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the error used here is 'CUDA is not available'")
    spec, outcome, _ = _run(ray_env, "retried", {"train.device": "cuda"}, max_failures=1)
    seen = _attempts(spec, outcome)
    assert (outcome.errored, seen["failures"], seen["failure_notes"]) == (1, 2, 2)
    assert seen["run"].data.tags["error_kind"] == "retries_exhausted"
    assert "CUDA is not available" in seen["run"].data.tags["error"]


@pytest.mark.integration
@pytest.mark.slow
def test_non_finite_loss_is_not_retried_by_the_train_executor(ray_env):
    """Neither Tune nor Ray Train retries it (Train's own FailureConfig is 0 inside a trial)."""
    spec, outcome, _ = _run(
        ray_env, "nan-train", NAN_AT_EPOCH_2, resources={"executor": "train", "cpus_per_worker": 1}
    )
    _assert_failed_once_deterministically(spec, outcome, "lower train.lr or enable train.grad_clip", [1])


@pytest.mark.parametrize("mode", ["max", "min"])
def test_best_run_never_picks_a_non_finite_metric(tmp_path: Path, mode: str) -> None:
    from edgeseg.search.mlflow_runs import best_run
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("nan-best", artifact_location=(tmp_path / "a").as_uri())
    for name, value in {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "a": 0.3, "b": 0.5}.items():
        run = client.create_run(experiment, run_name=name)
        client.log_metric(run.info.run_id, "val/miou", value)
    runs = client.search_runs([experiment])
    assert best_run(runs, "val/miou", mode).info.run_name == ("b" if mode == "max" else "a")


@pytest.mark.integration
@pytest.mark.slow
def test_resume_ends_a_deterministic_failure_at_once_unless_told_to_retry_it(nan_function_search):
    """``search resume`` retries errored trials; one that failed deterministically fails again from its
    record, without training (runs last in this module: it resumes the module's NaN search)."""
    from edgeseg.search.trainable import failed_trials_folder
    from edgeseg.search.tuner import resume_search

    spec, outcome, _ = nan_function_search
    trial_id = _attempts(spec, outcome)["trial"].trial_id
    assert "NonFiniteLossError" in failed_trials_folder(spec).read_text(trial_id)

    def resume(retry_failed: bool) -> dict[str, Any]:
        with contextlib.redirect_stdout(io.StringIO()):
            again = resume_search(spec.name, storage=str(spec.storage), retry_failed=retry_failed)
        assert (again.trials, again.errored, again.state) == (1, 1, "incomplete")
        return _attempts(spec, again)

    ended = resume(retry_failed=False)
    assert ended["epochs"] == [1]  # nothing trained: no epoch re-reported, none trained
    assert (
        "recorded by an earlier attempt"
        in (Path(outcome.experiment_path) / f"trial_{trial_id}" / "error.txt").read_text()
    )
    assert ended["history"] == [1] and ended["run"].data.tags["error_kind"] == "deterministic"

    retried = resume(retry_failed=True)  # the record is forgotten: it trains epoch 2 again, into the NaN
    assert retried["epochs"] == [1, 1]  # the restart re-reports its checkpoint's epoch, then epoch 2 fails
    assert retried["history"] == [1]
    assert "NonFiniteLossError" in failed_trials_folder(spec).read_text(trial_id)  # recorded again
