"""A real search on real Ray and MLflow: ASHA prunes, one child run per trial, ONNX that runs in ORT,
fetch-best and its constraints, the status table, and one search on the Ray Train executor."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from search_helpers import tiny_overrides

from edgeseg.config import load_config
from edgeseg.engine.prepare import prepare
from edgeseg.search.spec import spec_from_mapping

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = tiny_overrides(epochs=3)
EPOCH_METRICS = ("val/miou", "val/iou_target", "val/iou_other", "val/loss", "train/loss", "lr")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One Ray session and one EDGESEG_HOME for the module (data, backbone and caches built once)."""
    import ray

    root = tmp_path_factory.mktemp("search")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESEG_HOME", str(root / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(root)  # a CWD-relative ./mlruns would show up here
        ray.init(address="local", num_cpus=2, resources={"trial_driver": 1}, log_to_driver=False)
        try:
            yield root
        finally:
            ray.shutdown()


def make_spec(root: Path, name: str, **extra):
    body = {
        "name": name,
        "base": {"preset": "baseline", "overrides": dict(TINY)},
        "storage": str(root / "storage"),
        "resources": {"executor": "function"},
        "max_concurrent_trials": 1,
        **extra,
    }
    return spec_from_mapping(body, source=f"<test {name}>")


def trial_runs(spec, search_id):
    from edgeseg.search.mlflow_runs import client_for, search_runs

    resolved = spec.resolved()
    client = client_for(resolved.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(resolved.experiment_name)
    runs = search_runs(client, experiment.experiment_id, {"search_id": search_id, "role": "trial"})
    parents = search_runs(client, experiment.experiment_id, {"search_id": search_id, "role": "search"})
    return client, experiment, runs, parents


def steps(client, run_id, key):
    return [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.fixture(scope="module")
def asha_search(env):
    """3 trials in a fixed order, lr 1e-2 first; ASHA on val/loss, so the lr 1e-6 trial (its loss
    barely moves) is above the median at the first rung."""
    from edgeseg.search.tuner import run_search

    spec = make_spec(
        env,
        "asha",
        space={
            "cell": {
                "grid": [
                    {"train.lr": 1e-2, "model.channels": 16},
                    {"train.lr": 1e-2, "model.channels": 8},
                    {"train.lr": 1e-6, "model.channels": 8},
                ]
            }
        },
        searcher={"kind": "grid"},
        scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 2},
        metric="val/loss",
        mode="min",
    )
    outcome = run_search(spec, progress=False)
    return spec, outcome


def test_asha_search_completes_prunes_and_logs_one_run_per_trial(env, asha_search):
    from edgeseg.search.disk import saved_trials

    spec, outcome = asha_search
    assert outcome.state == "finished"
    trials = saved_trials(outcome.experiment_path)
    assert len(trials) == 3 and {state for state, _ in trials.values()} == {"TERMINATED"}
    client, experiment, runs, parents = trial_runs(spec, outcome.search_id)

    # Exactly one child run per Tune trial, all under the one parent run.
    assert sorted(r.data.tags["ray_trial_id"] for r in runs) == sorted(trials)
    assert len(parents) == 1
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" for r in [*runs, *parents])

    # The artifact root is the explicit one under EDGESEG_HOME, never a CWD-relative mlruns.
    home = Path(os.environ["EDGESEG_HOME"]).resolve()
    assert experiment.artifact_location == (home / "mlflow" / "artifacts" / "asha").as_uri()
    assert not (env / "mlruns").exists()

    pruned = 0
    for run in runs:
        tune_last = int(trials[run.data.tags["ray_trial_id"]][1]["epoch"])
        for key in EPOCH_METRICS:
            assert steps(client, run.info.run_id, key) == list(range(1, tune_last + 1)), key
        assert steps(client, run.info.run_id, "params_count") == [0]
        assert steps(client, run.info.run_id, "gflops") == [0]
        # Params are the flattened resolved config, tags its hash and feature flags (computed here anew).
        overrides = {**TINY, "train.lr": float(run.data.params["train.lr"]),
                     "model.channels": int(run.data.params["model.channels"])}  # fmt: skip
        config = load_config("baseline", overrides=overrides)
        assert run.data.params == {k: (",".join(map(str, v)) if isinstance(v, list) else str(v))
                                   for k, v in config.flat().items()}  # fmt: skip
        assert run.data.tags["config_hash"] == config.hash()
        for flag, value in config.feature_flags().items():
            assert run.data.tags[flag] == value
        if tune_last < 3:
            pruned += 1
            assert run.data.tags["pruned"] == "true"
            assert run.data.tags["pruned_by"] == "asha"
            assert run.data.tags["pruned_at_epoch"] == str(tune_last)
        else:
            assert run.data.tags["pruned"] == "false"
    assert pruned >= 1 and outcome.pruned == pruned
    # lr 1e-6 barely moves the head: that trial is above the median loss at rung 1.
    (slow,) = [r for r in runs if float(r.data.params["train.lr"]) == 1e-6]
    assert slow.data.tags["pruned"] == "true"


def test_every_trial_has_an_onnx_model_that_runs_in_onnxruntime(env, asha_search, tmp_path):
    from mlflow.artifacts import download_artifacts

    spec, outcome = asha_search
    client, _, runs, _ = trial_runs(spec, outcome.search_id)
    uri = spec.resolved().mlflow.tracking_uri
    for run in runs:
        assert run.data.tags["onnx"] == "exported", run.data.tags.get("onnx")
        assert run.data.metrics["latency_ms"] > 0
        folder = Path(download_artifacts(run_id=run.info.run_id, artifact_path="", dst_path=str(tmp_path / run.info.run_id),
                                         tracking_uri=uri))  # fmt: skip
        assert (folder / "onnx" / "model.onnx").is_file() and (folder / "onnx" / "model.json").is_file()
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        assert saved["train"]["lr"] == float(run.data.params["train.lr"])
        sidecar = json.loads((folder / "onnx" / "model.json").read_text())
        session = ort.InferenceSession(
            str(folder / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        feeds = {}
        for entry in session.get_inputs():
            if entry.name == "rois":
                feeds["rois"] = np.array(
                    [[0, 10, 12, 70, 120], [0, 40, 5, 100, 60], [0, 0, 0, 127, 127]], np.float32
                )
            else:
                shape = [1 if not isinstance(d, int) else d for d in entry.shape]
                feeds[entry.name] = np.random.default_rng(1).random(shape, dtype=np.float32)
        (masks,) = session.run(None, feeds)
        assert masks.shape == (3, 3, 16, 16) == (3, 3, sidecar["mask_size"], sidecar["mask_size"])
        # The exported checkpoint is the trial's best epoch by the search metric (lowest val/loss).
        losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/loss")}
        best_epoch = min(losses, key=losses.get)
        assert run.data.tags["onnx_epoch"] == str(best_epoch)
        mious = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/miou")}
        assert run.data.metrics["best/val/miou"] == pytest.approx(mious[best_epoch])
        # COCO mask AP of that checkpoint, at its epoch (over the people given a ROI)
        ap = client.get_metric_history(run.info.run_id, "val/mask_ap")
        assert [m.step for m in ap] == [best_epoch] and 0.0 <= ap[0].value <= 1.0
        assert run.data.metrics["val/mask_ap50"] >= run.data.metrics["val/mask_ap75"]


def test_fetch_best_returns_the_best_qualifying_run(env, asha_search, tmp_path):
    from edgeseg.search.artifacts import NoQualifyingTrialError, fetch_best

    spec, outcome = asha_search
    _, _, runs, parents = trial_runs(spec, outcome.search_id)
    score = {r.info.run_id: r.data.metrics["best/val/miou"] for r in runs}
    best = max(runs, key=lambda r: score[r.info.run_id])
    lowest_loss = min(runs, key=lambda r: r.data.metrics["best/val/loss"])
    assert parents[0].data.tags["best_run_id"] == lowest_loss.info.run_id  # by the search's own metric

    fetched = fetch_best("asha", out=tmp_path / "best.onnx", storage=str(env / "storage"))
    assert fetched.run_id == best.info.run_id
    assert [o.name for o in ort.InferenceSession(str(fetched.onnx_path)).get_outputs()] == ["masks"]
    sidecar = json.loads(fetched.sidecar_path.read_text())
    assert sidecar["config"]["train"]["lr"] == float(best.data.params["train.lr"])

    # A GFLOPs cap between the 8- and 16-channel heads leaves only 8-channel trials.
    gflops = {r.data.params["model.channels"]: r.data.metrics["gflops"] for r in runs}
    assert gflops["8"] < gflops["16"]
    narrow = [r for r in runs if r.data.params["model.channels"] == "8"]
    expected = max(narrow, key=lambda r: score[r.info.run_id])
    capped = fetch_best("asha", max_gflops=(gflops["8"] + gflops["16"]) / 2, out=tmp_path / "small.onnx",
                        storage=str(env / "storage"), alias="champion")  # fmt: skip
    assert capped.run_id == expected.info.run_id and capped.gflops <= gflops["16"]

    # The alias resolves to that run's ONNX folder.
    from mlflow.tracking import MlflowClient

    registry = MlflowClient(
        tracking_uri=spec.resolved().mlflow.tracking_uri, registry_uri=spec.resolved().mlflow.tracking_uri
    )
    assert registry.get_model_version_by_alias("edgeseg-asha", "champion").run_id == expected.info.run_id

    fastest = min(r.data.metrics["latency_ms"] for r in runs)
    with pytest.raises(NoQualifyingTrialError, match="max_latency_ms"):
        fetch_best(
            "asha", max_latency_ms=fastest / 2, out=tmp_path / "none.onnx", storage=str(env / "storage")
        )
    quick = [r for r in runs if r.data.metrics["latency_ms"] <= fastest]
    got = fetch_best("asha", max_latency_ms=fastest, out=tmp_path / "fast.onnx", storage=str(env / "storage"))
    assert got.run_id == max(quick, key=lambda r: score[r.info.run_id]).info.run_id


def test_status_table_joins_tune_state_and_mlflow(env, asha_search):
    from edgeseg.search.control import format_status, search_status

    spec, outcome = asha_search
    _, _, runs, _ = trial_runs(spec, outcome.search_id)
    status = search_status("asha", storage=str(env / "storage"))
    assert status.driver == "finished" and status.expected_trials == 3
    by_id = {row.trial_id: row for row in status.trials}
    assert len(by_id) == 3
    for run in runs:
        row = by_id[run.data.tags["ray_trial_id"]]
        assert row.state == "TERMINATED" and row.run_id == run.info.run_id
        assert row.epoch == int(run.data.tags["last_epoch"])
        expected = f"asha@{run.data.tags['pruned_at_epoch']}" if run.data.tags["pruned"] == "true" else ""
        assert row.pruned == expected
    text = format_status(status)
    assert all(trial_id in text for trial_id in by_id)


def test_train_executor_runs_a_torchtrainer_per_trial(env):
    from edgeseg.search.tuner import run_search

    spec = make_spec(
        env,
        "train-exec",
        base={"preset": "baseline", "overrides": {**TINY, "train.epochs": 2}},
        space={"train.lr": {"grid": [1e-2]}},
        searcher={"kind": "grid"},
        scheduler={"kind": "fifo"},
        resources={"executor": "train", "cpus_per_worker": 1},
    )
    outcome = run_search(spec, progress=False)
    assert outcome.state == "finished" and outcome.trials == 1
    client, _, runs, _ = trial_runs(spec, outcome.search_id)
    (run,) = runs
    trial_id = run.data.tags["ray_trial_id"]
    # The trial was a Ray Train run named after the trial, with its checkpoints in Train's storage.
    train_dir = env / "storage" / "train-exec" / "train_runs" / f"train-{trial_id}"
    assert train_dir.is_dir() and any(train_dir.glob("checkpoint_*"))
    assert run.data.tags["best_checkpoint"].startswith(str(train_dir))
    assert steps(client, run.info.run_id, "val/miou") == [1, 2]
    assert run.data.tags["onnx"] == "exported" and run.info.status == "FINISHED"


def test_two_train_workers_train_data_parallel_and_report_whole_set_metrics(env):
    """resources.workers=2: a gloo DDP group; each rank takes half the training images (half the
    optimizer steps of one worker), and the reported val/miou is that of the whole validation set."""

    from edgeseg.config import config_from_dict
    from edgeseg.engine.checkpoint import load_checkpoint
    from edgeseg.evaluation import validate_checkpoint
    from edgeseg.search.tuner import run_search

    spec = make_spec(
        env,
        "ddp",
        base={"preset": "baseline", "overrides": {**TINY, "train.epochs": 2}},
        space={"train.lr": {"grid": [1e-2]}},
        searcher={"kind": "grid"},
        scheduler={"kind": "fifo"},
        resources={"executor": "train", "workers": 2, "cpus_per_worker": 1},
    )
    outcome = run_search(spec, progress=False)
    assert outcome.state == "finished" and outcome.trials == 1
    client, _, runs, _ = trial_runs(spec, outcome.search_id)
    (run,) = runs
    assert steps(client, run.info.run_id, "val/miou") == [1, 2]
    state = load_checkpoint(run.data.tags["best_checkpoint"])
    config = config_from_dict(state["config"])
    images, per_step = len(prepare(config).train), config.train.batch_size
    # the optimizer stepped ceil(ceil(images / 2 ranks) / batch) times per epoch, not ceil(images / batch)
    steps_per_rank = math.ceil(math.ceil(images / 2) / per_step)
    assert state["scheduler"]["last_epoch"] == state["epoch"] * steps_per_rank
    assert math.ceil(images / per_step) > steps_per_rank  # the two counts really differ
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/miou")}
    alone = validate_checkpoint(run.data.tags["best_checkpoint"], out_dir=env / "ddp-validation", overlays=0)
    assert alone["metrics"]["val/miou"] == pytest.approx(logged[state["epoch"]], abs=1e-9)
    assert alone["metrics"]["val/miou"] == pytest.approx(state["metrics"]["val/miou"], abs=1e-9)
