"""Properties of config and spec parsing, checked on generated inputs (hypothesis).

1. A valid config survives ``to_dict`` -> dict / YAML file -> ``load_config`` unchanged.
2. NaN or infinity for any float key, in any form (a float, a string, ``--set``, a YAML file), is refused
   with an error naming the key; the same holds for every float a search spec reads.
3. A valid spec written to YAML and loaded resolves to the values it was generated with, and its
   serialised record (``search.json``) loads back to the same spec without holding the password.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseg.config import (
    DECODER_NAMES,
    SECTIONS,
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    load_config,
    parse_set_arguments,
)
from edgeseg.search.spec import METRICS, NAME_PATTERN, SpecError, load_spec, metric_mode, spec_from_mapping

# Small and without a deadline: each example builds and validates real configs; no example database
# is written into the working tree.
FEW = settings(max_examples=40, deadline=None, database=None)

FLOAT_KEYS = sorted(
    f"{section}.{name}"
    for section, cls in SECTIONS.items()
    for name, hint in typing.get_type_hints(cls).items()
    if hint is float or hint == tuple[float, ...]
)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf, -math.nan])
NON_FINITE_TEXT = st.sampled_from(["nan", "NaN", "inf", "Infinity", "-inf", "-Infinity"])
NON_FINITE_YAML = st.sampled_from([".nan", ".NaN", ".inf", ".Inf", "-.inf", "+.inf"])
PASSWORD = "hunter2-not-in-any-file"


@contextmanager
def scratch(**env: str) -> Iterator[Path]:
    """A temporary folder as ``EDGESEG_HOME`` (plus ``env``), ``$MLFLOW_TRACKING_URI`` unset unless given."""
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, clear=False):
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.update({"EDGESEG_HOME": str(Path(tmp) / "home"), **env})
        yield Path(tmp)


def test_the_float_keys_are_found():
    # The rejection property runs over these; an empty list would make it vacuous.
    assert {"train.lr", "train.weight_decay", "loss.focal_gamma", "loss.cascade_stage_weights"} <= set(
        FLOAT_KEYS
    )


# ----------------------------------------------------------------------------------------------
# 1. Config round trip.
# ----------------------------------------------------------------------------------------------


@st.composite
def config_overrides(draw: st.DrawFn) -> dict[str, Any]:
    """Dotted overrides that make a valid config: the generator respects validate()'s combinations."""
    decoder = draw(st.sampled_from(DECODER_NAMES))
    epochs = draw(st.integers(1, 50))
    return {
        "train.lr": draw(st.floats(1e-6, 1.0)),
        "train.weight_decay": draw(st.floats(0.0, 1.0)),
        "train.epochs": epochs,
        "train.warmup_epochs": draw(st.floats(0.0, epochs - 1)) if epochs > 1 else 0.0,
        "train.amp": draw(st.booleans()),
        "model.channels": draw(st.integers(4, 512)),
        "model.decoder": decoder,
        "model.cascade": draw(st.booleans()) if decoder == "plain" else False,
        "model.roi_coords": draw(st.booleans()),
        "loss.focal": draw(st.booleans()) if decoder != "hierarchical" else False,
        "loss.distance_aware": draw(st.booleans()) if decoder != "hierarchical" else False,
        "data.feature_cache": draw(st.booleans()),
    }


@FEW
@given(overrides=config_overrides(), as_cli=st.booleans())
def test_config_round_trips_through_dict_and_yaml(overrides, as_cli):
    given_overrides = parse_set_arguments([f"{k}={v}" for k, v in overrides.items()]) if as_cli else overrides
    config = load_config(overrides=given_overrides)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        assert getattr(getattr(config, section), key) == value, dotted
    assert config_from_dict(config.to_dict()) == config
    with scratch() as tmp:
        path = tmp / "experiment.yaml"
        path.write_text(yaml.safe_dump(config.to_dict()))
        again = load_config(file=path)
    assert again == config and again.hash() == config.hash()


# ----------------------------------------------------------------------------------------------
# 2. Non-finite floats are refused, naming the key.
# ----------------------------------------------------------------------------------------------


@st.composite
def non_finite_override(draw: st.DrawFn) -> tuple[str, str, Any]:
    """(key, form, value): a non-finite value for one float key, as a caller would pass it."""
    key = draw(st.sampled_from(FLOAT_KEYS))
    form = draw(st.sampled_from(["float", "text", "set", "file"]))
    value: Any = {
        "float": draw(NON_FINITE),
        "text": draw(NON_FINITE_TEXT),
        "set": draw(NON_FINITE_YAML | NON_FINITE_TEXT),
        "file": draw(NON_FINITE_YAML),
    }[form]
    section, _, name = key.partition(".")
    default = getattr(getattr(ExperimentConfig(), section), name)
    if isinstance(default, tuple):  # one weight of the tuple is the bad one
        at = draw(st.integers(0, len(default) - 1))
        items = list(default)
        items[at] = value
        value = ",".join(map(str, items)) if form in ("set", "text") else items
    return key, form, value


@FEW
@given(case=non_finite_override())
def test_non_finite_float_is_refused_naming_the_key(case):
    key, form, value = case
    with scratch() as tmp, pytest.raises(ConfigError) as info:
        if form == "set":
            load_config(overrides=parse_set_arguments([f"{key}={value}"]))
        elif form == "file":
            section, _, name = key.partition(".")
            path = tmp / "experiment.yaml"
            text = f"[{', '.join(map(str, value))}]" if isinstance(value, list) else value
            path.write_text(f"{section}:\n  {name}: {text}\n")
            load_config(file=path)
        else:
            load_config(overrides={key: value})
    assert f"'{key}'" in str(info.value)
    assert "finite number" in str(info.value)


@FEW
@given(weight=NON_FINITE_TEXT, at=st.integers(0, 2))
def test_non_finite_class_weight_is_refused(weight, at):
    weights = ["0.6", "1.5", "1.2"]
    weights[at] = weight
    with pytest.raises(ConfigError, match="'loss.class_weights'"):
        load_config(overrides={"loss.class_weights": ",".join(weights)})


SPEC_FLOATS = {
    "scheduler.reduction_factor": lambda v: {"scheduler": {"kind": "asha", "reduction_factor": v}},
    "resources.cpus_per_worker": lambda v: {"resources": {"cpus_per_worker": v}},
    "resources.gpus_per_worker": lambda v: {"resources": {"gpus_per_worker": v}},
    "space.train.lr.uniform": lambda v: {"space": {"train.lr": {"uniform": [1e-4, v]}}},
    "space.train.lr.loguniform": lambda v: {"space": {"train.lr": {"loguniform": [v, 1e-2]}}},
    "space.model.roi_size.int": lambda v: {"space": {"model.roi_size": {"int": [v, 28]}}},
}


@FEW
@given(key=st.sampled_from(sorted(SPEC_FLOATS)), value=NON_FINITE)
def test_non_finite_spec_number_is_refused_naming_the_key(key, value):
    body = {
        "name": "p",
        "base": {"preset": "baseline", "overrides": {"train.epochs": 3}},
        "space": {"model.channels": {"choice": [8, 16]}},
    }
    body.update(SPEC_FLOATS[key](value))
    with pytest.raises(SpecError) as info:
        spec_from_mapping(body, source="generated.yaml")
    message = str(info.value)
    assert "generated.yaml" in message and f"'{key}'" in message and repr(value) in message


# ----------------------------------------------------------------------------------------------
# 3. Spec round trip.
# ----------------------------------------------------------------------------------------------

TRACKING_URIS = [None, "http://127.0.0.1:5000", "sqlite:////srv/mlflow/mlflow.db", "databricks",
                 f"postgresql://edgeseg:{PASSWORD}@db:5432/mlflow"]  # fmt: skip
STORAGES = [None, "searches", "/srv/searches", "s3://bucket/searches", "file:///srv/searches"]


@st.composite
def spec_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid spec as written in YAML: every numeric, enumerated and location field drawn."""
    epochs = draw(st.integers(2, 6))
    searcher = draw(st.sampled_from(["optuna", "random"]))
    lr_low = draw(st.floats(1e-6, 1e-2))
    dice_low = draw(st.floats(0.0, 2.0))
    roi_low = draw(st.integers(4, 28))
    axes = {
        "train.lr": {"loguniform": [lr_low, lr_low * draw(st.floats(1.5, 100.0))]},
        "loss.dice_weight": {"uniform": [dice_low, dice_low + draw(st.floats(0.01, 2.0))]},
        "model.roi_size": {"int": [roi_low, roi_low + draw(st.integers(0, 20))]},
        "model.channels": {"choice": draw(st.lists(st.integers(4, 64), min_size=1, max_size=3, unique=True))},
        "loss.distance_aware": {"choice": [False, True]},
    }
    chosen = draw(st.lists(st.sampled_from(sorted(axes)), min_size=1, max_size=len(axes), unique=True))
    scheduler: dict[str, Any] = {"kind": draw(st.sampled_from(["asha", "fifo"]))}
    if scheduler["kind"] == "asha":
        grace = draw(st.integers(1, epochs))
        scheduler.update(
            grace_period=grace,
            max_t=draw(st.sampled_from([0, *range(grace, epochs + 1)])),
            reduction_factor=draw(st.floats(1.01, 8.0)),
        )
    executor = draw(st.sampled_from(["train", "function"]))
    metric = draw(st.sampled_from(METRICS))
    return {
        "name": draw(st.from_regex(NAME_PATTERN, fullmatch=True)),
        "description": draw(st.text(alphabet="abc xyz-", max_size=20)),
        "base": {"preset": "baseline", "overrides": {"train.epochs": epochs, "model.channels": 8}},
        "space": {name: axes[name] for name in chosen},
        "searcher": {"kind": searcher, "seed": draw(st.integers(0, 2**32 - 1))},
        "scheduler": scheduler,
        "metric": metric,
        "mode": metric_mode(metric) or draw(st.sampled_from(["min", "max"])),
        "num_samples": draw(st.integers(1, 20)),
        "repeats": 1 if searcher == "optuna" else draw(st.integers(1, 3)),
        "resources": {
            "executor": executor,
            "workers": 1 if executor == "function" else draw(st.integers(1, 4)),
            "cpus_per_worker": draw(st.floats(0.25, 16.0)),
            "gpus_per_worker": draw(st.sampled_from([0, 0.25, 0.5, 1, 2])),
        },
        "max_concurrent_trials": draw(st.integers(1, 8)),
        "storage": draw(st.sampled_from(STORAGES)),
        "mlflow": {"tracking_uri": draw(st.sampled_from(TRACKING_URIS)), "experiment": None},
        "export_onnx": draw(st.booleans()),
    }


@FEW
@given(body=spec_bodies())
def test_spec_round_trips_through_yaml_and_its_record(body):
    with scratch() as tmp:
        path = tmp / "spec.yaml"
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        spec = load_spec(path).resolved()
        assert dataclasses.replace(spec, source="<spec>") == spec_from_mapping(body).resolved()

        # The values it was generated with.
        assert spec.searcher.seed == body["searcher"]["seed"]
        assert spec.scheduler.reduction_factor == body["scheduler"].get("reduction_factor", 2.0)
        assert spec.resources.cpus_per_worker == body["resources"]["cpus_per_worker"]
        assert spec.resources.gpus_per_worker == body["resources"]["gpus_per_worker"]
        assert {a.name: a.to_yaml() for a in spec.space} == body["space"]
        assert (spec.metric, spec.mode) == (body["metric"], body["mode"])
        uri = body["mlflow"]["tracking_uri"]
        assert spec.mlflow.tracking_uri == (
            uri or f"sqlite:///{tmp.resolve() / 'home' / 'mlflow' / 'mlflow.db'}"
        )
        storage = body["storage"] or str(tmp.resolve() / "home" / "searches")
        assert spec.storage == (storage if "://" in storage else str(Path(storage).resolve()))

        # The record (search.json) holds no password; read back where the store's URI is known, it is
        # the same spec.
        record = json.dumps(spec.to_dict())
        assert PASSWORD not in record
        with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": str(spec.mlflow.tracking_uri)}):
            again = spec_from_mapping(json.loads(record), source=str(path))
        assert again == spec
