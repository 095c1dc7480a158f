"""From a validated config to the things a trial needs: data sets, backbone, features, a head.

This is the glue every entry point shares (``edgeseg train``, ``validate``, ``export`` and each Ray
trial), so a search driver can call :func:`prepare` once and every trial then only opens what is
already built: the synthetic data, the exported backbone and the feature caches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg import paths
from edgeseg.backbone.cache import FeatureCache, OnTheFlyFeatures
from edgeseg.backbone.extractor import OnnxFeatureExtractor
from edgeseg.backbone.layer_map import resolve_layers
from edgeseg.backbone.prepare import load_backbone
from edgeseg.config import ExperimentConfig, ModelConfig, parse_class_weights
from edgeseg.data.augment import AugmentConfig
from edgeseg.data.dataset import PersonRoiDataset
from edgeseg.data.stats import log_class_weights, log_position_prior, pixel_statistics, statistics_key
from edgeseg.data.synth import write_synth_dataset
from edgeseg.data.video_people import default_video_path, write_video_people_dataset
from edgeseg.files import file_lock


@dataclass(frozen=True)
class DataFiles:
    train_annotations: Path
    train_images: Path
    val_annotations: Path
    val_images: Path


def generated_root(config: ExperimentConfig) -> Path:
    d = config.data
    return paths.home() / "data" / f"{d.generated}-{d.generated_train_images}-{d.generated_val_images}-seed0"


def ensure_generated_data(config: ExperimentConfig, log=print) -> Path:
    """Write the ``data.generated`` set once (deterministic; safe under concurrent callers)."""

    d = config.data
    root = generated_root(config)
    done = root / "DONE"
    if done.exists():
        return root
    if d.generated == "video-people" and not default_video_path().exists():
        raise FileNotFoundError(
            f"data.generated=video-people needs the video {default_video_path()}; "
            "fetch it with `make video` (or set data.root to a folder written by `edgeseg data video-people`)"
        )
    with file_lock(root.with_name(root.name + ".lock")):
        if not done.exists():
            log(f"writing the {d.generated} data set to {root} ...")
            if d.generated == "synth":
                summary = write_synth_dataset(root, d.generated_train_images, d.generated_val_images, seed=0)
            else:
                summary = write_video_people_dataset(
                    default_video_path(), root, d.generated_train_images, d.generated_val_images, seed=0
                )
            done.write_text(json.dumps(summary, default=str))
    return root


def data_files(config: ExperimentConfig, log=print) -> DataFiles:
    d = config.data
    if d.train_annotations:
        return DataFiles(
            *(Path(p) for p in (d.train_annotations, d.train_images, d.val_annotations, d.val_images))
        )
    root = Path(d.root) if d.root else ensure_generated_data(config, log)
    files = DataFiles(
        root / "train" / "annotations.json", root / "train" / "images", root / "val" / "annotations.json",
        root / "val" / "images",
    )  # fmt: skip
    for path in (files.train_annotations, files.val_annotations):
        if not path.exists():
            raise FileNotFoundError(
                f"data.root={root}: {path} is missing; expected {root}/train and {root}/val with annotations.json "
                "and images/ (as written by `edgeseg data synth` or `edgeseg data video-people`)"
            )
    return files


class LimitedDataset:
    """The first ``limit`` images of a data set, with an identity that says so (cache keys differ)."""

    def __init__(self, dataset: Any, limit: int) -> None:
        self.dataset = dataset
        self.limit = min(limit, len(dataset))

    def __len__(self) -> int:
        return self.limit

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.limit:
            raise IndexError(index)
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dataset, name)

    def identity(self) -> str:
        return f"{self.dataset.identity()}:first{self.limit}"


def build_datasets(config: ExperimentConfig, files: DataFiles, *, mask_size: int | None = None):

    d = config.data
    augment = AugmentConfig(hflip_prob=d.hflip_prob, scale_jitter=d.scale_jitter, color_jitter=d.color_jitter)
    common: dict[str, Any] = dict(
        input_size=d.input_size,
        roi_padding=d.roi_padding,
        mask_size=mask_size or config.model.mask_size,
        min_instance_size=d.min_instance_size,
        max_rois_per_image=d.max_rois_per_image,
    )
    train: Any = PersonRoiDataset(
        files.train_annotations, files.train_images, augment=augment if augment.enabled else None,
        seed=config.train.seed, **common,
    )  # fmt: skip
    val: Any = PersonRoiDataset(
        files.val_annotations, files.val_images, augment=None, seed=config.train.seed, **common
    )
    if d.max_train_images:
        train = LimitedDataset(train, d.max_train_images)
    if d.max_val_images:
        val = LimitedDataset(val, d.max_val_images)
    return train, val


def backbone_spec(config: ExperimentConfig):

    b = config.backbone
    return load_backbone(
        onnx_path=b.onnx or None, layer_map=b.layer_map or None, input_size=config.data.input_size
    )


def resolve_model(config: ExperimentConfig, spec: Any) -> ModelConfig:
    """Roles (fine/mid/deep) -> this backbone's layer ids; a role the backbone lacks raises."""

    m = config.model
    layers = resolve_layers(m.layers, spec)
    by_name = dict(zip(m.layers, layers, strict=True))
    rgb = tuple(by_name.get(name) or resolve_layers([name], spec)[0] for name in m.rgb_layers)
    return dataclasses.replace(m, layers=tuple(layers), rgb_layers=rgb)


def make_extractor(config: ExperimentConfig, spec: Any, layers: Sequence[str]):
    return OnnxFeatureExtractor(
        spec, layers=list(layers), providers=tuple(config.backbone.providers),
        intra_op_threads=config.backbone.threads,
    )  # fmt: skip


def feature_source(config: ExperimentConfig, extractor: Any, dataset: Any, log=print):
    """The cache when allowed (frozen backbone, no augmentation), else on-the-fly features."""

    d = config.data
    augmenting = d.hflip_prob > 0 or d.scale_jitter > 0 or d.color_jitter > 0
    if d.feature_cache and not (augmenting and getattr(dataset, "augment", None) is not None):
        return FeatureCache.open_or_build(
            extractor, dataset, root=paths.subdir("features"), max_bytes=int(d.cache_max_gb * 2**30), log=log
        )
    return OnTheFlyFeatures(extractor)


@dataclass
class Prepared:
    config: ExperimentConfig
    model: ModelConfig  # layers resolved to this backbone's ids
    spec: Any
    layer_infos: Mapping[str, Any]
    train: Any
    val: Any
    train_features: Any
    val_features: Any
    class_weights: tuple[float, float, float] | None
    # log p(class | mask cell) [3, M, M] of the training targets (+ log class weight) when the model has
    # an output prior (model.output_prior); the head's prior starts from it (models.blocks.OutputPrior).
    output_prior: list[list[list[float]]] | None = None


def training_statistics(train: Any) -> dict[str, Any]:
    """``pixel_statistics(train)``, cached under a key of every setting that changes targets."""
    cache = paths.subdir("stats") / f"{statistics_key(train)}.json"
    if cache.exists():
        return dict(json.loads(cache.read_text()))
    stats = pixel_statistics(train)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stats))
    tmp.replace(cache)
    return stats


def class_weights_for(config: ExperimentConfig, train: Any, log=print) -> tuple[float, float, float] | None:
    """Explicit weights, none, or log weights from the training set's pixel statistics (cached)."""
    spec = config.loss.class_weights
    if spec == "none":
        return None
    explicit = parse_class_weights(spec)
    if explicit is not None:
        return explicit
    weights = log_class_weights(training_statistics(train)["ratios"])
    return (float(weights[0]), float(weights[1]), float(weights[2]))


def output_prior_for(
    config: ExperimentConfig, train: Any, weights: tuple[float, float, float] | None
) -> list[list[list[float]]] | None:
    """The output prior's starting point: per-cell log class probabilities of the training targets plus
    ``log w_c`` (a weighted loss's optimum without features); None when the model has no prior."""
    if config.model.output_prior == "none":
        return None
    prior = log_position_prior(training_statistics(train))
    if prior.shape[1:] != (config.model.mask_size, config.model.mask_size):
        raise ValueError(
            f"model.output_prior: the training targets are {prior.shape[1]}x{prior.shape[2]} masks, "
            f"model.mask_size is {config.model.mask_size}"
        )
    if weights is not None:
        prior = prior + np.log(np.asarray(weights, dtype=np.float64))[:, None, None]
    return prior.tolist()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def prepare(config: ExperimentConfig, log=print, *, build_features: bool = True) -> Prepared:
    """Everything a trial needs, built once (later calls are cache hits)."""
    files = data_files(config, log)
    spec = backbone_spec(config)
    model = resolve_model(config, spec)
    extractor = make_extractor(config, spec, model.layers)
    infos = extractor.layer_info()
    train, val = build_datasets(config, files)
    train_features = feature_source(config, extractor, train, log) if build_features else None
    val_features = feature_source(config, extractor, val, log) if build_features else None
    weights = class_weights_for(config, train, log)
    prior = output_prior_for(config, train, weights)
    return Prepared(config, model, spec, {k: infos[k] for k in model.layers}, train, val, train_features,
                    val_features, weights, prior)  # fmt: skip
