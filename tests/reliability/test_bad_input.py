"""Bad search specs are refused before anything is written, naming the file, the key and the value.

Each case starts from the shipped smoke spec, breaks one thing, and goes through both ``load_spec`` and
the CLI's ``edgeseg search run`` (exit 2) with ``EDGESEG_HOME`` and the working directory in ``tmp_path``:
afterwards that folder holds the spec and nothing else (no store, no storage folder, no record).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeseg.cli.main import main
from edgeseg.config import ConfigError, load_config, load_yaml
from edgeseg.search.spec import SpecError, load_spec

SMOKE = Path(__file__).resolve().parents[2] / "edgeseg" / "searches" / "smoke.yaml"
SMOKE_TEXT = SMOKE.read_text()


def smoke(**changes: Any) -> dict[str, Any]:
    """The smoke spec with values set by ``/``-separated paths (``{"scheduler/reduction_factor": 3}``)."""
    body = copy.deepcopy(load_yaml(SMOKE_TEXT))
    for dotted, value in changes.items():
        *parents, last = dotted.split("/")
        node = body
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return body


def refuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
           text: str, *fragments: str) -> str:  # fmt: skip
    """Write ``text`` as the spec; both entry points refuse it with every fragment; nothing is written."""
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path) in message, message
    rest = message.replace(str(path), "")  # tmp_path holds the test's name: match the other words elsewhere
    for fragment in fragments:
        assert fragment in rest, (fragment, message)
    assert main(["search", "run", str(path), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
    return message


def dump(body: dict[str, Any]) -> str:
    return yaml.safe_dump(body, sort_keys=False)


def test_the_smoke_spec_itself_is_accepted():
    # Every case below differs from this spec in one place only.
    assert load_spec(SMOKE).name == "smoke"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    ("dotted", "key"),
    [
        ("scheduler/reduction_factor", "'scheduler.reduction_factor'"),
        ("resources/cpus_per_worker", "'resources.cpus_per_worker'"),
        ("resources/gpus_per_worker", "'resources.gpus_per_worker'"),
        ("base/overrides/train.weight_decay", "'train.weight_decay'"),
        ("space/train.lr", "'space.train.lr.loguniform'"),
        ("space/loss.dice_weight", "'space.loss.dice_weight.uniform'"),
        ("space/loss.ce_weight", "'loss.ce_weight'"),
    ],
)
def test_non_finite_numbers(tmp_path, monkeypatch, capsys, dotted, key, bad):
    value: Any = bad
    if dotted == "space/train.lr":
        value = {"loguniform": [1e-4, bad]}
    elif dotted == "space/loss.dice_weight":
        value = {"uniform": [bad, 1.5]}
    elif dotted == "space/loss.ce_weight":
        value = {"choice": [1.0, bad]}
    message = refuse(tmp_path, monkeypatch, capsys, dump(smoke(**{dotted: value})), key, "finite number")
    assert repr(bad) in message  # 'nan', 'inf' or '-inf'


@pytest.mark.parametrize("seed", [-1, -12345, 2**32])
def test_optuna_seed_out_of_range(tmp_path, monkeypatch, capsys, seed):
    refuse(
        tmp_path, monkeypatch, capsys, dump(smoke(**{"searcher/seed": seed})), "'searcher.seed'", str(seed)
    )


@pytest.mark.parametrize(
    ("metric", "mode"),
    [
        ("val/loss", "max"),
        ("train/loss", "max"),
        ("val/miou", "min"),
        ("val/miou_per_roi", "min"),
        ("val/iou_target", "min"),
        ("val/iou_other", "min"),
        ("val/boundary_f", "min"),
    ],
)
def test_metric_and_mode_contradict(tmp_path, monkeypatch, capsys, metric, mode):
    body = smoke(metric=metric, mode=mode)
    refuse(tmp_path, monkeypatch, capsys, dump(body), "'mode'", repr(mode), repr(metric))


LAYERS_BUNDLE = {"grid": [{"model.layers": "deep"}, {"model.layers": "mid,deep", "model.fusion": "sum"}]}


@pytest.mark.parametrize(
    ("space", "axis", "config_key", "other"),
    [
        ({"model.layers": {"grid": ["deep", "mid"]}, "multiscale": LAYERS_BUNDLE},
         "space.multiscale", "model.layers", "model.layers"),
        ({"multiscale": LAYERS_BUNDLE, "model.layers": {"choice": ["deep", "mid"]}},
         "space.model.layers", "model.layers", "multiscale"),
        ({"multiscale": LAYERS_BUNDLE, "fusion": {"grid": [{"model.fusion": "concat"}, {"model.fusion": "fpn"}]}},
         "space.fusion", "model.fusion", "multiscale"),
    ],
)  # fmt: skip
def test_axis_and_bundle_set_the_same_key(tmp_path, monkeypatch, capsys, space, axis, config_key, other):
    body = smoke(space=space, **{"searcher/kind": "random"})
    refuse(tmp_path, monkeypatch, capsys, dump(body), repr(axis), repr(config_key), repr(other))


def _line(text: str, start: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if line.startswith(start))


@pytest.mark.parametrize(
    ("extra", "key", "first"),
    [
        # The case: a second `space:` used to replace the first without a word.
        ("space:\n  train.lr: {loguniform: [1.0e-4, 1.0e-3]}\n", "space", "space:"),
        ("scheduler: {kind: asha, kind: fifo}\n", "scheduler", "scheduler:"),
        ("base:\n  preset: baseline\n  overrides:\n    train.epochs: 2\n    train.epochs: 3\n",
         "base", "base:"),
    ],
)  # fmt: skip
def test_duplicate_yaml_keys(tmp_path, monkeypatch, capsys, extra, key, first):
    text = SMOKE_TEXT + extra
    second = len(SMOKE_TEXT.splitlines()) + 1
    lines = f"lines {_line(SMOKE_TEXT, first)} and {second}"
    refuse(tmp_path, monkeypatch, capsys, text, repr(key), lines)


@pytest.mark.parametrize(
    ("inline", "key", "lines"),
    [
        ("scheduler: {kind: asha, grace_period: 1, kind: fifo}", "'scheduler.kind'", "lines 1 and 1"),
        ("base:\n  overrides:\n    train.epochs: 2\n    train.epochs: 3", "'base.overrides.train.epochs'",
         "lines 3 and 4"),
    ],
)  # fmt: skip
def test_duplicate_nested_yaml_keys_are_named_by_their_dotted_path(tmp_path, monkeypatch, capsys, inline, key,
                                                                   lines):  # fmt: skip
    refuse(tmp_path, monkeypatch, capsys, inline + "\nname: x\n", key, lines)


@pytest.mark.parametrize(
    ("storage", "shown", "why"),
    [
        ("s3://", "'s3://'", "bucket"),
        ("s3:///prefix", "'s3:///prefix'", "bucket"),
        ("ftp://host/searches", "'ftp://host/searches'", "unknown scheme 'ftp'"),
        ("file://", "'file://'", "folder"),
        ("s3://AKIA:topsecret@bucket/searches", "'s3://AKIA:***@bucket/searches'", "credentials"),
    ],
)
def test_malformed_storage(tmp_path, monkeypatch, capsys, storage, shown, why):
    message = refuse(tmp_path, monkeypatch, capsys, dump(smoke(storage=storage)), "'storage'", shown, why)
    assert "topsecret" not in message


@pytest.mark.parametrize(
    ("uri", "shown", "why"),
    [
        ("ftp://mlflow.example.org/", "'ftp://mlflow.example.org/'", "unknown scheme 'ftp'"),
        ("s3://bucket/mlruns", "'s3://bucket/mlruns'", "unknown scheme 's3'"),
        ("http://", "'http://'", "host"),
        ("https://mlflow.example.org:99999", "'https://mlflow.example.org:99999'", "port"),
        ("sqlite://", "'sqlite://'", "database file"),
        ("postgresql://", "'postgresql://'", "database"),
        ("postgresql://alice:hunter2@db:5x32/mlflow", "'postgresql://alice:***@db:5x32/mlflow'", "port"),
        ("databricks:", "'databricks:'", "databricks://profile"),
    ],
)
def test_malformed_tracking_uri(tmp_path, monkeypatch, capsys, uri, shown, why):
    body = smoke(**{"mlflow/tracking_uri": uri})
    message = refuse(tmp_path, monkeypatch, capsys, dump(body), "'mlflow.tracking_uri'", shown, why)
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("train:\n  lr: .nan\n", ("'train.lr'", "finite number", "nan")),
        ("train:\n  weight_decay: -.inf\n", ("'train.weight_decay'", "finite number", "-inf")),
        ("loss:\n  cascade_stage_weights: [0.3, .inf, 0.4]\n", ("'loss.cascade_stage_weights'", "inf")),
        ("train:\n  lr: 1.0e-3\n  epochs: 3\n  lr: 2.0e-3\n", ("'train.lr'", "lines 2 and 4")),
        ("model: {channels: 8}\nmodel: {channels: 16}\n", ("'model'", "lines 1 and 2")),
    ],
)
def test_bad_experiment_config_file(tmp_path, monkeypatch, text, fragments):
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(file=path)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message.replace(str(path), ""), (fragment, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]
