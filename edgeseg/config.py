"""Typed, frozen experiment configuration: sections, validation, presets and dotted overrides.

A config is built in one place (``load_config``) from a preset name and/or a YAML file plus dotted
``key=value`` overrides, validated once, and then passed around as immutable dataclasses. Every
feature of the model family is an orthogonal axis (layers, fusion, ROI sizes, RGB layers, decoder,
cascade, distance-aware loss, focal, class weights, mask size); the seed's named experiments are
presets expressed as combinations of those axes, not copies of whole configs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

# The classes every head predicts per ROI pixel; the metric is mIoU over the two person classes.
CLASS_NAMES = ("background", "target", "other")
GENERATED_DATA = ("synth", "video-people")  # data sets edgeseg can write itself (data.generated)
NUM_CLASSES = len(CLASS_NAMES)
# The config's vocabulary of components; ``models/registry.py`` accepts registrations of these names only.
FUSION_NAMES = ("adaptive", "concat", "sum", "fpn")
DECODER_NAMES = ("plain", "hierarchical", "class_specific")
OUTPUT_PRIORS = ("none", "global", "spatial")
# The ablation axes of a config: MLflow tags of every trial and the report's factor columns.
FEATURE_FLAGS = (
    "multiscale", "layers", "fusion", "variable_roi", "roi_sizes", "rgb", "decoder", "cascade",
    "distance_aware", "focal", "class_weights", "mask_size",
)  # fmt: skip
CLASS_WEIGHTS = ("none", "log")
SCHEDULES = ("constant", "linear", "cosine")
PROVIDERS = ("cpu", "cuda", "tensorrt")


class ConfigError(ValueError):
    """A config value, key or combination is invalid; the message names the key (and file)."""


# ----------------------------------------------------------------------------------------------
# YAML: PyYAML keeps the last of two equal keys without a word; edgeseg's files refuse them.
# ----------------------------------------------------------------------------------------------


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping sets the same key twice; ``key`` is dotted from the top of the document."""

    def __init__(self, key: str, line: int, first_line: int) -> None:
        self.key, self.line, self.first_line = key, line, first_line
        self.problem = (
            f"appears twice (lines {first_line} and {line}); YAML would silently keep only the last"
        )
        super().__init__(f"key {key!r} {self.problem}")


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`DuplicateKeyError` on a repeated mapping key."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_unique_keys(node, "", set())
        return super().construct_document(node)

    def _check_unique_keys(self, node: yaml.Node, path: str, visited: set[int]) -> None:
        if id(node) in visited:  # an alias seen before (anchors may even nest recursively)
            return
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_unique_keys(item, f"{path}[{i}]", visited)
        if not isinstance(node, yaml.MappingNode):
            return
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: explicit keys may override
                self._check_unique_keys(value_node, path, visited)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            dotted = f"{path}.{key}" if path else str(key)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise DuplicateKeyError(dotted, line, first_line[key])
            first_line[key] = line
            self._check_unique_keys(value_node, dotted, visited)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (:class:`DuplicateKeyError`, a ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


@dataclass(frozen=True)
class DataConfig:
    root: str = ""  # folder with train/ and val/ (annotations.json + images/); "" = a generated set (below)
    train_annotations: str = ""  # explicit COCO files override root (e.g. a person-only COCO subset)
    train_images: str = ""
    val_annotations: str = ""
    val_images: str = ""
    input_size: int = 640
    roi_padding: float = 0.1
    min_instance_size: int = 16
    max_rois_per_image: int = 16
    max_train_images: int = 0  # 0 = all; caps for quick searches
    max_val_images: int = 0
    hflip_prob: float = 0.0
    scale_jitter: float = 0.0
    color_jitter: float = 0.0
    feature_cache: bool = True
    cache_max_gb: float = 8.0
    # The set generated (once, under $EDGESEG_HOME/data) when root is "": "synth" (procedural people,
    # no download) or "video-people" (real people cut out of $EDGESEG_HOME/video/vtest.avi; `make video`).
    generated: str = "synth"
    generated_train_images: int = 48
    generated_val_images: int = 16


@dataclass(frozen=True)
class BackboneConfig:
    onnx: str = ""  # "" = the default EfficientNet-Lite0 export, prepared on first use
    layer_map: str = ""  # "yolov9" or a JSON file; required with a user ONNX without a sidecar
    providers: tuple[str, ...] = ("cpu",)
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = runtime default


@dataclass(frozen=True)
class ModelConfig:
    layers: tuple[str, ...] = ("deep",)  # roles (fine, mid, deep, ...) or layer ids of the backbone
    fusion: str = "adaptive"
    roi_size: int = 28
    roi_sizes: tuple[int, ...] = ()  # per layer, same order as layers; () = roi_size everywhere
    rgb_layers: tuple[str, ...] = ()
    rgb_channels: int = 64
    decoder: str = "plain"
    cascade: bool = False
    channels: int = 256
    mask_size: int = 56
    sampling_ratio: int = 2
    roi_coords: bool = False  # add ROI-relative (u, v) to the fused features (models.blocks.RoiCoordinates)
    # Learnable logit bias added to every class output, initialised from the training targets
    # (models.blocks.OutputPrior): none | global (per class) | spatial (per class and mask cell).
    output_prior: str = "none"


@dataclass(frozen=True)
class LossConfig:
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    class_weights: str = "log"  # none | log (from the training set's pixel statistics) | "w0,w1,w2"
    focal: bool = False
    focal_gamma: float = 2.0
    distance_aware: bool = False
    boundary_width: int = 5
    boundary_weight: float = 2.0
    instance_sep_distance: int = 5
    instance_sep_weight: float = 3.0
    adaptive: bool = False  # anneal the distance-aware weights towards adaptive_final during training
    adaptive_schedule: str = "cosine"
    adaptive_final: float = 1.0
    cascade_stage_weights: tuple[float, ...] = (0.3, 0.3, 0.4)
    hierarchical_weights: tuple[float, ...] = (1.0, 1.5, 1.0, 0.1)  # bg_fg, target_other, final, consistency


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 8  # images per step (each image brings all its ROIs)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    min_lr: float = 1e-6
    grad_clip: float = 5.0  # 0 = off
    amp: bool = True  # used where the device supports it (CUDA); ignored on CPU
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0  # DataLoader workers
    eval_every: int = 1


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "baseline"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values (``model.layers`` -> ``"mid,deep"``), as logged to MLflow params."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            if isinstance(values, dict):
                for key, value in values.items():
                    out[f"{section}.{key}"] = ",".join(map(str, value)) if isinstance(value, list) else value
            else:
                out[section] = values if values is not None else ""
        return out

    def hash(self) -> str:
        """Stable hash of everything that changes the trained model (name/description excluded)."""
        body = {k: v for k, v in self.to_dict().items() if k not in ("name", "description")}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]

    def feature_flags(self) -> dict[str, str]:
        """The ablation axes of this config, as short strings (MLflow tags, report columns)."""
        m, loss = self.model, self.loss
        return {
            "multiscale": str(len(m.layers) > 1).lower(),
            "layers": ",".join(m.layers),
            "fusion": m.fusion if len(m.layers) > 1 else "none",
            "variable_roi": str(bool(m.roi_sizes) and len(set(m.roi_sizes)) > 1).lower(),
            "roi_sizes": ",".join(map(str, m.roi_sizes or (m.roi_size,) * len(m.layers))),
            "rgb": str(bool(m.rgb_layers)).lower(),
            "decoder": m.decoder,
            "cascade": str(m.cascade).lower(),
            "distance_aware": str(loss.distance_aware).lower(),
            "focal": str(loss.focal).lower(),
            "class_weights": loss.class_weights,
            "mask_size": str(m.mask_size),
        }


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "backbone": BackboneConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------
# Presets: the seed's named experiments as combinations of the feature axes.
# ----------------------------------------------------------------------------------------------

_MULTI = {"model.layers": ("fine", "mid", "deep")}
_DIST = {"loss.distance_aware": True}
_DIST_LIGHT = {"loss.distance_aware": True, "loss.boundary_width": 3, "loss.boundary_weight": 1.5,
               "loss.instance_sep_weight": 2.0}  # fmt: skip
_PROGRESSIVE = {**_MULTI, "model.roi_sizes": (56, 42, 28), **_DIST}
_FOCAL = {"loss.focal": True, "loss.focal_gamma": 2.0}
_RGB_BASE = {**_PROGRESSIVE, **_DIST_LIGHT, **_FOCAL, "train.lr": 5e-4}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    overrides: Mapping[str, Any]


PRESETS: dict[str, Preset] = {}


def _preset(name: str, description: str, *parts: Mapping[str, Any], **extra: Any) -> None:
    if name in PRESETS:
        raise ValueError(f"preset {name!r} registered twice")
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    merged.update({k.replace("__", "."): v for k, v in extra.items()})
    PRESETS[name] = Preset(name, description, types.MappingProxyType(merged))


_preset("baseline", "single-scale head on the deepest layer")
_preset("multiscale", "adaptive fusion of fine, mid and deep layers", _MULTI)
_preset("multiscale_distance", "multiscale + distance-aware loss", _MULTI, _DIST)
_preset("multiscale_cascade", "multiscale + three-stage cascade refinement", _MULTI, model__cascade=True)
_preset("full", "multiscale + cascade + adaptive distance-aware loss", _MULTI, _DIST,
        model__cascade=True, loss__adaptive=True)  # fmt: skip
_preset("efficient", "two layers (mid, deep) with sum fusion and a lighter distance-aware loss",
        {"model.layers": ("mid", "deep"), "model.fusion": "sum"}, _DIST_LIGHT)  # fmt: skip
_preset("variable_roi_hires", "variable ROI sizes 56/28/28", _MULTI, _DIST, model__roi_sizes=(56, 28, 28))
_preset("variable_roi_progressive", "variable ROI sizes 56/42/28", _PROGRESSIVE)
for _i, _sizes in enumerate([(56, 42, 28), (80, 42, 28), (80, 40, 40), (160, 80, 80)], start=1):
    _preset(f"variable_roi_progressive{_i}", f"variable ROI sizes {'/'.join(map(str, _sizes))}",
            _PROGRESSIVE, model__roi_sizes=_sizes)  # fmt: skip
for _i, _weights in enumerate(["1,1,1", "0.1,1.5,1", "0.1,2,1", "0.1,3,1"], start=5):
    _preset(f"variable_roi_progressive{_i}", f"progressive 56/42/28 with class weights {_weights}",
            _PROGRESSIVE, loss__class_weights=_weights)  # fmt: skip
_preset("variable_roi_progressive_focal", "progressive + focal (gamma 3) with weights 0.6/1.5/1.2",
        _PROGRESSIVE, loss__focal=True, loss__focal_gamma=3.0, loss__class_weights="0.6,1.5,1.2")  # fmt: skip
_preset("variable_roi_progressive_focal2", "progressive + focal + lighter distance-aware loss",
        _PROGRESSIVE, _DIST_LIGHT, _FOCAL, loss__class_weights="0.6,1.5,1.2")  # fmt: skip
_preset("rgb_enhanced_lightweight", "progressive + RGB branch on the deep layer", _RGB_BASE,
        model__rgb_layers=("deep",))  # fmt: skip
_preset("rgb_enhanced_baseline", "progressive + RGB branch on the deep layer, default loss", _PROGRESSIVE,
        model__rgb_layers=("deep",))  # fmt: skip
_preset("rgb_enhanced_multi_layer", "progressive + RGB branch on all three layers", _RGB_BASE,
        model__rgb_layers=("fine", "mid", "deep"), train__batch_size=2)  # fmt: skip
_preset("rgb_enhanced_dual_layer", "progressive + RGB branch on fine and deep", _RGB_BASE,
        model__rgb_layers=("fine", "deep"), train__batch_size=2)  # fmt: skip
_HIER = {"model.decoder": "hierarchical", "train.lr": 5e-4, "train.batch_size": 2}
_preset("hierarchical_segmentation", "hierarchical bg/fg -> target/other decoder, 56/42/28",
        _MULTI, _HIER, model__roi_sizes=(56, 42, 28))  # fmt: skip
_preset("hierarchical_segmentation2", "hierarchical on fine+deep, 56/28", _HIER,
        model__layers=("fine", "deep"), model__roi_sizes=(56, 28))  # fmt: skip
_preset("hierarchical_segmentation3", "hierarchical on mid only at 42", _HIER,
        model__layers=("mid",), model__roi_size=42)  # fmt: skip
_preset("hierarchical_segmentation4", "hierarchical on mid+deep, 42/28", _HIER,
        model__layers=("mid", "deep"), model__roi_sizes=(42, 28))  # fmt: skip
_preset("class_specific_decoder", "class-specific decoders, 56/42/28, focal + light distance loss",
        _PROGRESSIVE, _DIST_LIGHT, _FOCAL, model__decoder="class_specific", train__lr=5e-4,
        train__batch_size=2)  # fmt: skip


def list_presets() -> list[Preset]:
    return list(PRESETS.values())


# ----------------------------------------------------------------------------------------------
# Building and validating.
# ----------------------------------------------------------------------------------------------


class _NotFiniteError(ConfigError):
    """NaN or infinity for a float key (told apart from a value of the wrong type)."""


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise naming the key."""
    origin = typing.get_origin(annotation)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in (
                "true",
                "false",
                "1",
                "0",
                "yes",
                "no",
                "on",
                "off",
            ):
                return value.lower() in ("true", "1", "yes", "on")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise TypeError
        if annotation is int:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, float) and not value.is_integer():
                raise TypeError
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, str):  # list items arrive as text: read ".nan", "1e-3" as YAML does
                parsed = yaml.safe_load(value)
                value = parsed if isinstance(parsed, int | float) and not isinstance(parsed, bool) else value
            number = float(value)
            if not math.isfinite(number):
                raise _NotFiniteError(f"config key {key!r}: must be a finite number, got {value!r}")
            return number
        if annotation is str:
            if isinstance(value, list | tuple):
                return ",".join(map(str, value))
            if isinstance(value, dict):
                raise TypeError
            return str(value)
        if origin is tuple:
            (item_type, _ellipsis) = typing.get_args(annotation)
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple):
                value = [value]
            return tuple(_coerce(v, item_type, key) for v in value)
    except _NotFiniteError:
        raise
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        raise ConfigError(f"config key {key!r}: unsupported field type {annotation}")
    raise ConfigError(
        f"config key {key!r}: cannot use {value!r} as {getattr(annotation, '__name__', annotation)}"
    )


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_overrides(
    config: ExperimentConfig, overrides: Mapping[str, Any], source: str = "overrides"
) -> ExperimentConfig:
    """Apply dotted overrides (``train.lr`` -> 5e-4); unknown keys raise naming the key and source."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if dotted in ("name", "description"):
            top[dotted] = str(value)
            continue
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise ConfigError(
                f"{source}: unknown config key {dotted!r} (sections: {', '.join(SECTIONS)}; "
                "use section.key, e.g. train.lr)"
            )
        hints = _hints(SECTIONS[section])
        if key not in hints:
            known = ", ".join(f.name for f in fields(SECTIONS[section]))
            raise ConfigError(f"{source}: unknown config key {dotted!r}; {section} has: {known}")
        try:
            sections.setdefault(section, {})[key] = _coerce(value, hints[key], dotted)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    changes: dict[str, Any] = dict(top)
    for section, values in sections.items():
        changes[section] = dataclasses.replace(getattr(config, section), **values)
    return dataclasses.replace(config, **changes)


def parse_set_arguments(items: list[str] | None) -> dict[str, Any]:
    """``["train.lr=5e-4", "model.layers=mid,deep"]`` -> dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=5e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = raw if value is None else value
    return out


def flatten_mapping(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Nested YAML sections -> dotted keys; top-level scalars other than name/description raise."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("name", "description", "preset"):
            out[key] = value
        elif isinstance(value, Mapping):
            for sub, sub_value in value.items():
                out[f"{key}.{sub}"] = sub_value
        else:
            out[key] = value
    return out


def load_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    overrides_source: str = "--set",
) -> ExperimentConfig:
    """The one way to build a config: preset, then YAML file, then overrides; validated once.

    ``overrides_source`` names where the overrides came from in errors (a spec's ``base.overrides``).
    """
    config = ExperimentConfig()
    file_values: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        try:
            loaded = load_yaml(path.read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except DuplicateKeyError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {path}: top level must be a mapping of sections")
        file_values = flatten_mapping(loaded, str(path))
        preset = preset or file_values.pop("preset", None)
        file_values.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; `edgeseg presets` lists: {', '.join(PRESETS)}")
        config = apply_overrides(config, PRESETS[preset].overrides, source=f"preset {preset}")
        config = dataclasses.replace(config, name=preset, description=PRESETS[preset].description)
    if file_values:
        config = apply_overrides(config, file_values, source=f"config file {file}")
    if overrides:
        config = apply_overrides(config, overrides, source=overrides_source)
    validate(config)
    return config


def config_from_dict(data: Mapping[str, Any], source: str = "checkpoint") -> ExperimentConfig:
    """Rebuild a config saved with ``to_dict`` (checkpoints, sidecars, MLflow)."""
    config = apply_overrides(ExperimentConfig(), flatten_mapping(data, source), source=source)
    validate(config)
    return config


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key {key!r}: {message}")


def _check_finite(config: ExperimentConfig) -> None:
    """Every float of every section is finite (NaN passes most range checks: comparisons are False)."""
    for section, cls in SECTIONS.items():
        for name, hint in _hints(cls).items():
            value = getattr(getattr(config, section), name)
            numbers = value if hint == tuple[float, ...] else (value,) if hint is float else ()
            _check(all(math.isfinite(v) for v in numbers), f"{section}.{name}",
                   f"must be a finite number, got {value!r}")  # fmt: skip


def parse_class_weights(spec: str) -> tuple[float, float, float] | None:
    """``"log"``/``"none"`` -> None (computed or unused); ``"0.6,1.5,1.2"`` -> explicit weights."""
    if spec in CLASS_WEIGHTS:
        return None
    parts = spec.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(
            f"config key 'loss.class_weights': {spec!r} must be none, log or three positive numbers 'w0,w1,w2'"
        )
    return values  # type: ignore[return-value]


def validate(config: ExperimentConfig) -> None:
    """Ranges, enums and allowed feature combinations; raises ConfigError naming the key."""
    d, b, m, loss, t = config.data, config.backbone, config.model, config.loss, config.train
    _check_finite(config)
    _check(
        d.input_size >= 32 and d.input_size % 32 == 0, "data.input_size", "must be a multiple of 32, >= 32"
    )
    _check(0.0 <= d.roi_padding <= 1.0, "data.roi_padding", "must be in [0, 1]")
    _check(d.min_instance_size >= 1, "data.min_instance_size", "must be >= 1")
    _check(d.max_rois_per_image >= 1, "data.max_rois_per_image", "must be >= 1")
    _check(0.0 <= d.hflip_prob <= 1.0, "data.hflip_prob", "must be in [0, 1]")
    _check(0.0 <= d.scale_jitter < 1.0, "data.scale_jitter", "must be in [0, 1)")
    _check(0.0 <= d.color_jitter <= 1.0, "data.color_jitter", "must be in [0, 1]")
    _check(d.cache_max_gb > 0, "data.cache_max_gb", "must be > 0")
    for key in ("max_train_images", "max_val_images"):
        _check(getattr(d, key) >= 0, f"data.{key}", "must be >= 0")
    _check(d.generated in GENERATED_DATA, "data.generated", f"must be one of {', '.join(GENERATED_DATA)}")
    _check(
        d.generated_train_images >= 1 and d.generated_val_images >= 1,
        "data.generated_train_images",
        "must be >= 1",
    )
    explicit = [d.train_annotations, d.train_images, d.val_annotations, d.val_images]
    _check(all(explicit) or not any(explicit), "data.train_annotations",
           "train_annotations, train_images, val_annotations and val_images go together")  # fmt: skip
    for provider in b.providers:
        _check(provider in PROVIDERS, "backbone.providers", f"{provider!r} is not one of {PROVIDERS}")
    _check(b.threads >= 0, "backbone.threads", "must be >= 0")
    _check(len(m.layers) >= 1, "model.layers", "needs at least one layer")
    _check(len(set(m.layers)) == len(m.layers), "model.layers", f"has duplicates: {m.layers}")
    _check(m.fusion in FUSION_NAMES, "model.fusion", f"{m.fusion!r} is not one of {FUSION_NAMES}")
    _check(m.decoder in DECODER_NAMES, "model.decoder", f"{m.decoder!r} is not one of {DECODER_NAMES}")
    _check(m.roi_size >= 4, "model.roi_size", "must be >= 4")
    _check(not m.roi_sizes or len(m.roi_sizes) == len(m.layers), "model.roi_sizes",
           f"has {len(m.roi_sizes)} sizes for {len(m.layers)} layers {m.layers}")  # fmt: skip
    _check(all(s >= 4 for s in m.roi_sizes), "model.roi_sizes", "every size must be >= 4")
    _check(set(m.rgb_layers) <= set(m.layers), "model.rgb_layers",
           f"{m.rgb_layers} must be a subset of model.layers {m.layers}")  # fmt: skip
    _check(m.rgb_channels >= 1, "model.rgb_channels", "must be >= 1")
    _check(m.channels >= 4, "model.channels", "must be >= 4")
    _check(8 <= m.mask_size <= 256, "model.mask_size", "must be in [8, 256]")
    _check(m.sampling_ratio >= 2, "model.sampling_ratio", "must be >= 2 (one sample per bin aliases)")
    _check(m.output_prior in OUTPUT_PRIORS, "model.output_prior",
           f"{m.output_prior!r} is not one of {OUTPUT_PRIORS}")  # fmt: skip
    _check(not (m.cascade and m.decoder != "plain"), "model.cascade",
           f"cascade refinement works with the plain decoder, not decoder={m.decoder!r}")  # fmt: skip
    _check(loss.ce_weight >= 0 and loss.dice_weight >= 0, "loss.ce_weight", "weights must be >= 0")
    _check(loss.ce_weight + loss.dice_weight > 0, "loss.ce_weight", "ce_weight and dice_weight are both 0")
    parse_class_weights(loss.class_weights)
    _check(loss.focal_gamma >= 0, "loss.focal_gamma", "must be >= 0")
    _check(loss.boundary_width >= 1, "loss.boundary_width", "must be >= 1")
    _check(loss.boundary_weight >= 1, "loss.boundary_weight", "must be >= 1")
    _check(loss.instance_sep_distance >= 1, "loss.instance_sep_distance", "must be >= 1")
    _check(loss.instance_sep_weight >= 1, "loss.instance_sep_weight", "must be >= 1")
    _check(loss.adaptive_schedule in SCHEDULES, "loss.adaptive_schedule", f"must be one of {SCHEDULES}")
    _check(not loss.adaptive or loss.distance_aware, "loss.adaptive",
           "anneals the distance-aware weights; set loss.distance_aware=true")  # fmt: skip
    _check(len(loss.cascade_stage_weights) == 3, "loss.cascade_stage_weights", "needs 3 weights")
    _check(len(loss.hierarchical_weights) == 4, "loss.hierarchical_weights",
           "needs 4 weights (bg_fg, target_other, final, consistency)")  # fmt: skip
    _check(not (m.decoder == "hierarchical" and loss.focal), "loss.focal",
           "the hierarchical decoder has its own loss; focal is not supported with it")  # fmt: skip
    _check(not (m.decoder == "hierarchical" and loss.distance_aware), "loss.distance_aware",
           "the hierarchical decoder has its own loss; distance-aware weighting is not supported with it")  # fmt: skip
    _check(t.epochs >= 1, "train.epochs", "must be >= 1")
    _check(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    _check(t.lr > 0, "train.lr", "must be > 0")
    _check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    _check(0 <= t.warmup_epochs < t.epochs or t.warmup_epochs == 0, "train.warmup_epochs",
           "must be in [0, train.epochs)")  # fmt: skip
    _check(0 <= t.min_lr <= t.lr, "train.min_lr", "must be in [0, train.lr]")
    _check(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = off)")
    _check(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"), "train.device",
           f"{t.device!r} is not auto, cpu or cuda[:N]")  # fmt: skip
    _check(t.num_workers >= 0, "train.num_workers", "must be >= 0")
    _check(t.eval_every >= 1, "train.eval_every", "must be >= 1")
