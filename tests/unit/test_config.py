"""Config: presets as flag combinations, dotted overrides, validation errors that name the key."""

from __future__ import annotations

import dataclasses

import pytest

from edgeseg.config import (
    FEATURE_FLAGS,
    PRESETS,
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    load_config,
    parse_set_arguments,
)


def test_every_preset_loads_and_is_frozen() -> None:
    for name in PRESETS:
        config = load_config(name)
        assert config.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.train.lr = 1.0  # type: ignore[misc]


def test_presets_are_flag_combinations_of_the_seed_experiments() -> None:
    flags = {name: load_config(name).feature_flags() for name in PRESETS}
    assert flags["baseline"]["multiscale"] == "false"
    assert flags["multiscale"]["multiscale"] == "true" and flags["multiscale"]["fusion"] == "adaptive"
    # the original's `full` silently equalled multiscale_distance; here it differs by the cascade flag
    assert flags["full"]["cascade"] == "true" and flags["multiscale_distance"]["cascade"] == "false"
    assert flags["multiscale_cascade"]["cascade"] == "true"
    assert flags["efficient"]["fusion"] == "sum" and flags["efficient"]["layers"] == "mid,deep"
    assert flags["variable_roi_progressive2"]["roi_sizes"] == "80,42,28"
    assert flags["rgb_enhanced_multi_layer"]["rgb"] == "true"
    assert flags["hierarchical_segmentation"]["decoder"] == "hierarchical"
    assert flags["class_specific_decoder"]["decoder"] == "class_specific"
    assert load_config("variable_roi_progressive7").loss.class_weights == "0.1,2,1"
    # distinct experiments hash differently; aliases of the same flags hash the same
    assert load_config("multiscale").hash() != load_config("multiscale_cascade").hash()
    assert load_config("variable_roi_progressive").hash() == load_config("variable_roi_progressive1").hash()


def test_dotted_overrides_are_typed() -> None:
    overrides = parse_set_arguments(
        ["train.lr=5e-4", "model.layers=mid,deep", "loss.focal=true", "train.epochs=3"]
    )
    config = load_config("baseline", overrides=overrides)
    assert config.train.lr == pytest.approx(5e-4)
    assert config.model.layers == ("mid", "deep")
    assert config.loss.focal is True
    assert config.train.epochs == 3


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"train.lrr": 1}, "train.lrr"),
        ({"nosection.x": 1}, "nosection.x"),
        ({"train.lr": "fast"}, "train.lr"),
        ({"train.epochs": 0}, "train.epochs"),
        ({"model.fusion": "mean"}, "model.fusion"),
        ({"model.roi_sizes": "56,28"}, "model.roi_sizes"),
        ({"model.rgb_layers": "fine"}, "model.rgb_layers"),
        ({"loss.class_weights": "1,2"}, "loss.class_weights"),
        ({"loss.adaptive": True}, "loss.adaptive"),
        ({"data.input_size": 100}, "data.input_size"),
        ({"backbone.providers": "rocm"}, "backbone.providers"),
        ({"data.generated": "coco"}, "data.generated"),
    ],
)
def test_bad_values_name_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("baseline", overrides=overrides)


def test_unsupported_combination_is_rejected() -> None:
    with pytest.raises(ConfigError, match="model.cascade"):
        load_config("multiscale_cascade", overrides={"model.decoder": "hierarchical"})


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="baseline"):
        load_config("no_such_preset")


def test_yaml_file_then_overrides(tmp_path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("preset: multiscale\ntrain:\n  lr: 0.002\n  epochs: 4\nmodel:\n  channels: 32\n")
    config = load_config(file=path, overrides={"train.epochs": 2})
    assert config.name == "multiscale"
    assert config.train.lr == pytest.approx(0.002)
    assert config.train.epochs == 2
    assert config.model.channels == 32
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.learning_rate"):
        load_config(file=bad)


def test_round_trip_through_dict() -> None:
    config = load_config("rgb_enhanced_dual_layer", overrides={"model.channels": 16})
    again = config_from_dict(config.to_dict())
    assert again == config
    assert again.hash() == config.hash()
    assert ExperimentConfig().flat()["model.layers"] == "deep"


def test_feature_flags_are_exactly_the_declared_axes_for_every_preset():
    # FEATURE_FLAGS names the MLflow tags and the report's factor columns; feature_flags() fills them.
    for name in PRESETS:
        assert tuple(load_config(name).feature_flags()) == FEATURE_FLAGS, name
