"""Search specs: the shipped YAMLs load, bad specs fail with errors naming file and key (no Ray)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from edgeseg.config import ConfigError
from edgeseg.search.spec import (
    SpecError,
    expected_trials,
    grid_variants,
    load_spec,
    metric_mode,
    spec_from_mapping,
    trial_config,
    trial_overrides,
)

SEARCHES = Path(__file__).resolve().parents[2] / "searches"

TINY_BASE = {"preset": "baseline", "overrides": {"train.epochs": 3, "model.channels": 8}}


def write(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def minimal(**extra) -> dict:
    body = {"name": "t", "base": TINY_BASE, "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}
    body.update(extra)
    return body


def expect_error(tmp_path: Path, body: dict, *fragments: str) -> str:
    path = write(tmp_path, body)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ----------------------------------------------------------------------------------------------
# The shipped specs.
# ----------------------------------------------------------------------------------------------


def test_smoke_spec_is_a_small_cpu_asha_search():
    spec = load_spec(SEARCHES / "smoke.yaml")
    base = spec.base_config()
    assert spec.scheduler.kind == "asha" and spec.searcher.kind == "optuna"
    assert base.data.input_size == 320 and base.model.channels <= 16 and base.train.device == "cpu"
    assert spec.max_epochs == base.train.epochs == 4
    assert expected_trials(spec) == spec.num_samples == 6
    assert spec.resources.gpus_per_worker == 0


def test_ablation_spec_is_the_feature_grid_with_repeats():
    shipped = load_spec(SEARCHES / "ablation.yaml")
    assert shipped.design.kind == "fractional" and expected_trials(shipped) == 14 * 3  # the default
    spec = dataclasses.replace(shipped, design=dataclasses.replace(shipped.design, kind="full"))
    assert spec.scheduler.kind == "fifo" and spec.searcher.kind == "grid" and spec.repeats == 3
    variants, skipped = grid_variants(spec)
    # By hand: multiscale(2) x variable ROI (needs 3 layers: 1 + 2 = 3 layer/ROI cells) x RGB(2) x
    # decoder/cascade/distance cells valid together: plain 2x2 + hierarchical 1 + class_specific 2 = 7.
    assert len(variants) == 3 * 2 * 7 == 42
    assert len(variants) + len(skipped) == 2 * 2 * 2 * 3 * 2 * 2
    assert expected_trials(spec) == 42 * 3
    flags = {
        tuple(sorted(trial_config(spec, trial_overrides({"overrides": v})).feature_flags().items()))
        for v in variants
    }
    assert len(flags) == 42  # every cell is a distinct feature combination
    for axis in ("multiscale", "variable_roi", "rgb", "decoder", "cascade", "distance_aware"):
        values = {dict(f)[axis] for f in flags}
        assert len(values) >= 2, (axis, values)


def test_hpo_spec_searches_lr_weight_decay_loss_weights_roi_and_mask_size():
    spec = load_spec(SEARCHES / "hpo.yaml")
    keys = {axis.name for axis in spec.space}
    assert {"train.lr", "train.weight_decay", "loss.ce_weight", "loss.dice_weight", "model.roi_size",
            "model.mask_size"} <= keys  # fmt: skip
    assert spec.searcher.kind == "optuna" and spec.scheduler.kind == "asha"
    assert spec.preset == "multiscale_distance"


def test_round_trip_through_to_dict():
    for path in sorted(SEARCHES.glob("*.yaml")):
        spec = load_spec(path)
        again = spec_from_mapping(spec.to_dict(), source=str(path))
        assert again == spec, path


def test_trial_config_applies_base_then_sampled_keys_then_repeat_seed():
    spec = spec_from_mapping(minimal(repeats=2, searcher={"kind": "random"}))
    config = trial_config(spec, {"train.lr": 0.005}, repeat=1)
    assert config.train.lr == 0.005
    assert config.train.epochs == 3 and config.model.channels == 8
    assert config.train.seed == spec.base_config().train.seed + 1


def test_bundle_axes_merge_into_flat_overrides_and_label():
    body = minimal(
        searcher={"kind": "grid"},
        space={
            "multiscale": {
                "grid": [{"model.layers": "deep"}, {"model.layers": "mid,deep", "model.fusion": "sum"}]
            }
        },
    )
    spec = spec_from_mapping(body)
    variants, skipped = grid_variants(spec)
    assert skipped == []
    assert [trial_overrides({"overrides": v}) for v in variants] == [
        {"model.layers": "deep"},
        {"model.layers": "mid,deep", "model.fusion": "sum"},
    ]
    config = trial_config(spec, trial_overrides({"overrides": variants[1]}))
    assert config.model.layers == ("mid", "deep") and config.model.fusion == "sum"


def test_expected_trials_for_random_search_multiplies_grid_cells_and_repeats():
    body = minimal(
        searcher={"kind": "random"},
        num_samples=3,
        repeats=2,
        space={"train.lr": {"loguniform": [1e-4, 1e-2]}, "model.cascade": {"grid": [False, True]}},
    )
    assert expected_trials(spec_from_mapping(body)) == 3 * 2 * 2


# ----------------------------------------------------------------------------------------------
# Bad specs: each error names the file and the key.
# ----------------------------------------------------------------------------------------------


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=str(bad)):
        load_spec(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="top level must be a mapping"):
        load_spec(top)


def test_unknown_top_level_key(tmp_path):
    expect_error(tmp_path, minimal(shedular={"kind": "asha"}), "'shedular'", "unknown key")


def test_missing_and_bad_name(tmp_path):
    body = minimal()
    del body["name"]
    expect_error(tmp_path, body, "'name'", "required")
    expect_error(tmp_path, minimal(name="has space"), "'name'")


def test_unknown_preset_and_bad_base_override(tmp_path):
    expect_error(tmp_path, minimal(base={"preset": "nope"}), "unknown preset 'nope'")
    expect_error(tmp_path, minimal(base={"preset": "baseline", "overrides": {"train.lrr": 1}}), "train.lrr")


def test_unknown_config_key_in_space(tmp_path):
    expect_error(tmp_path, minimal(space={"model.widht": {"choice": [8, 16]}}), "model.widht")


def test_wrong_value_type_in_space(tmp_path):
    expect_error(
        tmp_path, minimal(space={"model.channels": {"choice": [8, "wide"]}}), "space.model.channels", "wide"
    )


def test_unknown_distribution(tmp_path):
    expect_error(tmp_path, minimal(space={"train.lr": {"normal": [0, 1]}}), "space.train.lr", "normal")


@pytest.mark.parametrize(
    ("dist", "fragment"),
    [
        ({"uniform": [1.0, 1.0]}, "low < high"),
        ({"loguniform": [0.0, 1.0]}, "0 < low"),
        ({"int": [3, 1]}, "low <= high"),
        ({"int": [1.5, 3]}, "integers"),
        ({"choice": []}, "non-empty list"),
        ({"uniform": [1]}, "[low, high]"),
    ],
)
def test_bad_distribution_arguments(tmp_path, dist, fragment):
    expect_error(tmp_path, minimal(space={"train.weight_decay": dist}), "space.train.weight_decay", fragment)


def test_value_out_of_config_range_in_space(tmp_path):
    expect_error(tmp_path, minimal(space={"train.lr": {"uniform": [-1.0, 1.0]}}), "train.lr", "must be > 0")


def test_searcher_and_axis_mismatches(tmp_path):
    expect_error(
        tmp_path, minimal(space={"model.cascade": {"grid": [True, False]}}), "space.model.cascade", "Optuna"
    )
    expect_error(tmp_path, minimal(searcher={"kind": "grid"}), "space.train.lr", "only grid axes")
    grid = minimal(searcher={"kind": "grid"}, space={"model.cascade": {"grid": [True, False]}}, num_samples=4)
    expect_error(tmp_path, grid, "'num_samples'")
    expect_error(tmp_path, minimal(repeats=3), "'repeats'", "grid or random")
    expect_error(tmp_path, minimal(searcher={"kind": "bayes"}), "searcher.kind", "bayes")


def test_bundles_need_a_plain_name_and_mappings(tmp_path):
    mixed = {"grid": [{"model.layers": "deep"}, "mid"]}
    expect_error(
        tmp_path, minimal(searcher={"kind": "grid"}, space={"layers": mixed}), "space.layers.grid", "mixes"
    )
    expect_error(
        tmp_path, minimal(searcher={"kind": "grid"}, space={"layers": {"grid": ["deep"]}}), "space.layers"
    )


def test_scheduler_checks(tmp_path):
    expect_error(
        tmp_path, minimal(scheduler={"kind": "asha", "max_t": 5}), "scheduler.max_t", "train.epochs=3"
    )
    expect_error(tmp_path, minimal(scheduler={"kind": "asha", "grace_period": 4}), "scheduler.grace_period")
    expect_error(tmp_path, minimal(scheduler={"kind": "asha", "reduction_factor": 1}), "reduction_factor")
    expect_error(tmp_path, minimal(scheduler={"kind": "fifo", "max_t": 2}), "scheduler.max_t")
    expect_error(tmp_path, minimal(scheduler={"kind": "pbt"}), "scheduler.kind")


def test_metric_and_resources(tmp_path):
    expect_error(tmp_path, minimal(metric="val/accuracy"), "'metric'", "val/accuracy")
    expect_error(tmp_path, minimal(resources={"executor": "function", "workers": 2}), "resources.workers")
    expect_error(tmp_path, minimal(resources={"executor": "spark"}), "resources.executor")
    expect_error(tmp_path, minimal(resources={"gpus_per_worker": 1.5}), "resources.gpus_per_worker")
    expect_error(tmp_path, minimal(resources={"cpu": 2}), "resources.cpu", "unknown key")
    expect_error(tmp_path, minimal(max_concurrent_trials=0), "max_concurrent_trials", ">= 1")


def test_invalid_grid_combination_is_named_unless_skipped(tmp_path):
    space = {"model.decoder": {"grid": ["plain", "hierarchical"]}, "model.cascade": {"grid": [False, True]}}
    body = minimal(searcher={"kind": "grid"}, space=space)
    message = expect_error(tmp_path, body, "model.decoder=hierarchical", "model.cascade=True", "skip_invalid")
    assert "cascade" in message
    spec = spec_from_mapping({**body, "skip_invalid": True})
    variants, skipped = grid_variants(spec)
    assert len(variants) == 3 and len(skipped) == 1  # 2 x 2 cells, hierarchical + cascade dropped


def test_eval_every_must_stay_one(tmp_path):
    base = {"preset": "baseline", "overrides": {"train.epochs": 3, "train.eval_every": 2}}
    expect_error(tmp_path, minimal(base=base), "eval_every")


def test_spec_error_is_a_config_error():
    # The CLI reports ConfigError subclasses as clean one-line errors.
    assert issubclass(SpecError, ConfigError)


def test_resolved_fills_machine_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = spec_from_mapping(minimal()).resolved()
    home = (tmp_path / "home").resolve()
    assert spec.storage == str(home / "searches")
    assert spec.mlflow.tracking_uri == f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    assert spec.mlflow.artifact_location == (home / "mlflow" / "artifacts" / "t").as_uri()
    assert spec.mlflow.experiment == "t"
    remote = spec_from_mapping(minimal(mlflow={"tracking_uri": "http://127.0.0.1:5000"})).resolved()
    assert remote.mlflow.artifact_location is None  # the server proxies artifacts (mlflow-artifacts:/)
    assert not math.isnan(remote.base_config().train.lr)


# ----------------------------------------------------------------------------------------------
# Metric direction, locations and credentials.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "mode"),
    [
        ("val/loss", "min"),
        ("train/loss", "min"),
        ("val/dice_loss", "min"),
        ("val/miou", "max"),
        ("val/miou_per_roi", "max"),
        ("val/iou_target", "max"),
        ("val/mask_ap50", "max"),
        ("val/boundary_f", "max"),
        ("val/pixel_accuracy", "max"),
        ("val/pred_share_target", None),
        ("val/boundary_f1", None),
    ],
)
def test_metric_mode_by_name(metric, mode):
    assert metric_mode(metric) == mode


def test_mode_defaults_to_the_metrics_direction():
    assert spec_from_mapping(minimal(metric="val/loss")).mode == "min"
    assert spec_from_mapping(minimal(metric="val/iou_other")).mode == "max"
    assert spec_from_mapping(minimal(metric="train/loss", mode="min")).mode == "min"


def test_searcher_seed_range(tmp_path):
    assert spec_from_mapping(minimal(searcher={"seed": 2**32 - 1})).searcher.seed == 2**32 - 1
    expect_error(tmp_path, minimal(searcher={"kind": "random", "seed": -3}), "'searcher.seed'", ">= 0", "-3")


@pytest.mark.parametrize(
    "storage", ["/mnt/nfs/searches", "relative/searches", "file:///tmp/searches", "s3://bucket",
                "s3://edgeseg-ray/searches", "s3://bucket/prefix?endpoint_override=minio:9000", "gs://bucket/x"],
)  # fmt: skip
def test_good_storage_is_kept(storage):
    assert spec_from_mapping(minimal(storage=storage)).storage == storage


@pytest.mark.parametrize(
    "uri",
    [
        "mlruns", "/srv/mlruns", "file:///srv/mlruns", "http://127.0.0.1:5000", "https://mlflow.example.org",
        "https://mlflow.example.org:8443/prefix", "sqlite:////abs/mlflow.db", "sqlite:///mlflow.db",
        "postgresql://mlflow@db:5432/mlflow", "postgresql+psycopg2://mlflow@postgres:5432/mlflow",
        "mysql://u@host/db", "mysql+pymysql://u@host:3306/db", "databricks", "databricks://profile",
    ],
)  # fmt: skip
def test_good_tracking_uri_is_kept(uri):
    assert spec_from_mapping(minimal(mlflow={"tracking_uri": uri})).mlflow.tracking_uri == uri


SECRET_URI = "postgresql://edgeseg:hunter2@db.internal:5432/mlflow"


def test_serialised_spec_never_holds_the_tracking_password(tmp_path, monkeypatch):
    from edgeseg.search import control

    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_URI)
    spec = spec_from_mapping(minimal(storage=str(tmp_path / "storage"))).resolved()
    assert spec.mlflow.tracking_uri == SECRET_URI  # the driver and the trials connect with it
    assert "hunter2" not in repr(spec)
    body = spec.to_dict()
    assert body["mlflow"]["tracking_uri"] == "postgresql://edgeseg:***@db.internal:5432/mlflow"
    assert "hunter2" not in yaml.safe_dump(body)  # the parent run's search.yaml artifact
    control.write_record(spec, "t-1")
    record = tmp_path / "storage" / "t" / "edgeseg" / "search.json"
    assert "hunter2" not in record.read_text() and "***" in record.read_text()
    # Reading the record back: the full URI again from the environment, which names the same store...
    assert (
        dataclasses.replace(control.read_record("t", str(tmp_path / "storage")).spec, source=spec.source)
        == spec
    )
    # ...and never from a different one.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://edgeseg:other@elsewhere:5432/mlflow")
    again = control.read_record("t", str(tmp_path / "storage")).spec
    assert again.mlflow.tracking_uri == "postgresql://edgeseg:***@db.internal:5432/mlflow"


def test_a_spec_written_password_is_kept_in_memory_and_masked_on_disk(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = spec_from_mapping(minimal(mlflow={"tracking_uri": "https://bob:pa55@mlflow.example.org"}))
    assert spec.resolved().mlflow.tracking_uri == "https://bob:pa55@mlflow.example.org"
    assert spec.resolved().to_dict()["mlflow"]["tracking_uri"] == "https://bob:***@mlflow.example.org"


def test_malformed_tracking_uri_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://alice:hunter2@mlflow.example.org")
    with pytest.raises(SpecError) as info:
        spec_from_mapping(minimal()).resolved()
    message = str(info.value)
    assert "$MLFLOW_TRACKING_URI" in message and "'ftp://alice:***@mlflow.example.org'" in message
    assert "unknown scheme 'ftp'" in message and "hunter2" not in message
    assert not (tmp_path / "home").exists()
