"""What one epoch of one ablation cell costs "the original way", measured on a sample of cells.

The research code (``../shared/reference/original-system.md`` §1.2, §17.2) had no feature cache: one
sample was one (image, person) pair, and the frozen backbone ran on every batch of samples, so every
image went through it once per ROI and per epoch. edgeseg runs it once per image and caches the
features (``edgeseg/backbone/cache.py``). For each cell this module measures, in CPU seconds of this
process (``time.process_time``; torch and ONNX Runtime at ``threads`` threads) and wall seconds:

- ``head_epoch``: one real training epoch of the head on cached features, as ``fit`` runs it;
- ``backbone_per_roi_sample``: edgeseg's backbone (``OnnxFeatureExtractor`` through
  ``OnTheFlyFeatures``) run on the source image of every ROI sample of that epoch, in batches of
  ``train.batch_size`` ROI samples, as the original's loader made them;
- ``backbone_per_image``: the same backbone run once per training image, in the epoch's batches;
- ``val_head``, ``val_backbone_per_roi_sample``, ``val_backbone_per_image``: the same for the
  validation pass, which the original made after every epoch.

The head epoch includes edgeseg's own data loading (one sample per image, masks decoded once). Not
measured, so the original's cost is understated: its data loading per ROI sample (the image re-read
and every mask of it re-decoded for each ROI) and its head batching (``train.batch_size`` ROI samples
per step rather than images: more, smaller steps, and an RGB branch encoding each image once per ROI).
``extrapolate`` scales the per-epoch means to a whole grid; those totals are extrapolations.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from edgeseg.backbone.cache import CachedFeatures, OnTheFlyFeatures
from edgeseg.config import ExperimentConfig, load_config
from edgeseg.engine.fit import _start  # the head, optimiser and schedule exactly as fit builds them
from edgeseg.engine.loop import World, evaluate, make_loader, seed_everything, select_device, train_one_epoch
from edgeseg.engine.prepare import Prepared, make_extractor, prepare

PHASES = (
    "head_epoch",
    "backbone_per_roi_sample",
    "backbone_per_image",
    "val_head",
    "val_backbone_per_roi_sample",
    "val_backbone_per_image",
)
Log = Callable[[str], object]


@dataclass(frozen=True)
class EpochImages:
    """One epoch's images as the loader yields them, and how many ROI samples each image makes."""

    batches: list[tuple[list[int], torch.Tensor]]  # (data set indices, uint8 [B,3,S,S])
    rois_per_image: dict[int, int]

    @property
    def roi_samples(self) -> int:
        return sum(self.rois_per_image.values())


def seconds(work: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of this whole process, wall seconds) that ``work()`` takes."""
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return time.process_time() - cpu, time.perf_counter() - wall


def epoch_images(dataset: Any, config: ExperimentConfig, *, shuffle: bool) -> EpochImages:
    """One pass of edgeseg's loader over ``dataset`` (untimed; it also warms the decoded-mask cache)."""
    t = config.train
    loader = make_loader(dataset, t.batch_size, shuffle=shuffle, seed=t.seed, epoch=1, workers=t.num_workers)
    batches: list[tuple[list[int], torch.Tensor]] = []
    rois_per_image: dict[int, int] = {}
    for batch in loader:
        indices = batch.indices.tolist()
        counts = torch.bincount(batch.rois[:, 0].long(), minlength=len(indices)).tolist()
        rois_per_image.update(zip(indices, counts, strict=True))
        batches.append((indices, batch.images))
    return EpochImages(batches, rois_per_image)


def roi_sample_batches(
    epoch: EpochImages, batch_size: int, seed: int
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """The original's batches: one entry per (image, ROI) pair, shuffled, ``batch_size`` per batch,
    each carrying its ROI's whole source image (two ROIs of one image in a batch: the image twice)."""
    images = {
        i: image for indices, stacked in epoch.batches for i, image in zip(indices, stacked, strict=True)
    }
    samples = [index for index, count in epoch.rois_per_image.items() for _ in range(count)]
    random.Random(seed).shuffle(samples)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        yield chunk, torch.stack([images[i] for i in chunk])


def backbone_pass(
    features: OnTheFlyFeatures, batches: Callable[[], Iterator[tuple[list[int], torch.Tensor]]], repeats: int
) -> tuple[float, float]:
    """Mean (CPU, wall) seconds of running the backbone over ``batches()`` once, over ``repeats`` passes."""

    def run() -> None:
        for indices, images in batches():
            features.features(indices, images)

    runs = [seconds(run) for _ in range(repeats)]
    return statistics.mean(r[0] for r in runs), statistics.mean(r[1] for r in runs)


def head_epochs(config: ExperimentConfig, prepared: Prepared, repeats: int) -> dict[str, float]:
    """Mean (CPU, wall) seconds of a training epoch of a fresh head on cached features (epochs 1 to
    ``repeats`` of one run, no evaluation), and of one evaluation pass on the validation cache."""
    t = config.train
    device = select_device(t.device)
    training = _start(config, prepared, device, World())
    train_runs, val_runs = [], []
    for epoch in range(1, repeats + 1):
        loader = make_loader(prepared.train, t.batch_size, shuffle=True, seed=t.seed, epoch=epoch,
                             workers=t.num_workers)  # fmt: skip
        train_runs.append(seconds(partial(
            train_one_epoch, training.model, loader, prepared.train_features, training.optimizer,
            training.scheduler, training.scaler, training.loss, training.class_weights, device, epoch=epoch,
            epochs=t.epochs, grad_clip=t.grad_clip, amp=t.amp,
        )))  # fmt: skip
        val_loader = make_loader(prepared.val, t.batch_size, shuffle=False, seed=t.seed, epoch=0,
                                 workers=t.num_workers)  # fmt: skip
        val_runs.append(seconds(partial(
            evaluate, training.head, val_loader, prepared.val_features, training.loss, training.class_weights,
            device,
        )))  # fmt: skip
    return {
        "head_epoch_cpu_s": statistics.mean(r[0] for r in train_runs),
        "head_epoch_wall_s": statistics.mean(r[1] for r in train_runs),
        "val_head_cpu_s": statistics.mean(r[0] for r in val_runs),
        "val_head_wall_s": statistics.mean(r[1] for r in val_runs),
    }


def measure_cell(
    overrides: dict[str, Any], *, epochs_measured: int, threads: int, log: Log
) -> dict[str, Any]:
    """All of ``PHASES`` for one cell (``overrides`` on preset "baseline"), per epoch, averaged over
    ``epochs_measured`` epochs; the feature caches are built first if missing (untimed)."""
    config = load_config("baseline", overrides={**overrides, "backbone.threads": threads})
    seed_everything(config.train.seed)
    prepared = prepare(config, log=log)
    if not isinstance(prepared.train_features, CachedFeatures):
        raise ValueError(
            "this cell trains on on-the-fly features (augmentation or data.feature_cache=false), so its head "
            "epoch already runs the backbone; the original way is only defined here for cached cells"
        )
    features = OnTheFlyFeatures(make_extractor(config, prepared.spec, prepared.model.layers))
    bs, seed = config.train.batch_size, config.train.seed
    result: dict[str, Any] = {"overrides": dict(overrides), "layers": list(prepared.model.layers)}
    for prefix, dataset, shuffle in (("", prepared.train, True), ("val_", prepared.val, False)):
        epoch = epoch_images(dataset, config, shuffle=shuffle)
        features.features(*epoch.batches[0])  # ONNX Runtime's first run allocates; keep it out of the timing
        per_roi = backbone_pass(features, partial(roi_sample_batches, epoch, bs, seed), epochs_measured)
        per_image = backbone_pass(features, partial(iter, epoch.batches), epochs_measured)
        result[f"{prefix}roi_samples"] = epoch.roi_samples
        result[f"{prefix}images"] = len(epoch.rois_per_image)
        for name, (cpu, wall) in (("backbone_per_roi_sample", per_roi), ("backbone_per_image", per_image)):
            result[f"{prefix}{name}_cpu_s"], result[f"{prefix}{name}_wall_s"] = cpu, wall
    result.update(head_epochs(config, prepared, epochs_measured))
    log(
        "original way: " + ", ".join(f"{p} {result[f'{p}_cpu_s']:.2f} cpu-s" for p in PHASES)
        + f" ({result['roi_samples']} ROI samples, {result['images']} images per epoch)"
    )  # fmt: skip
    return result


def common_value(cells: Sequence[dict[str, Any]], key: str) -> float | int:
    """The cells' value of ``key``: an int when they all agree, else their mean."""
    values = [cell[key] for cell in cells]
    return values[0] if len(set(values)) == 1 else statistics.mean(values)


def measure_original(
    overrides_list: list[dict[str, Any]], *, epochs_measured: int = 1, threads: int = 1, log: Log = print
) -> dict[str, Any]:
    """Per-epoch costs of ``PHASES`` for each cell of ``overrides_list`` and their means (see the module
    docstring). torch runs at ``threads`` threads and ONNX Runtime at ``threads`` intra-op threads."""
    if not overrides_list or epochs_measured < 1 or threads < 1:
        raise ValueError("measure_original needs at least one cell, epochs_measured >= 1 and threads >= 1")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cells = []
        for number, overrides in enumerate(overrides_list, 1):
            log(f"original way: cell {number}/{len(overrides_list)}: {overrides}")
            cells.append(measure_cell(overrides, epochs_measured=epochs_measured, threads=threads, log=log))
    finally:
        torch.set_num_threads(previous)
    keys = [f"{phase}_{unit}" for phase in PHASES for unit in ("cpu_s", "wall_s")]
    return {
        "cells": cells,
        "mean": {key: statistics.mean(cell[key] for cell in cells) for key in keys},
        "roi_samples_per_epoch": common_value(cells, "roi_samples"),
        "images_per_epoch": common_value(cells, "images"),
        "val_roi_samples_per_pass": common_value(cells, "val_roi_samples"),
        "val_images_per_pass": common_value(cells, "val_images"),
        "threads": threads,
        "epochs_measured": epochs_measured,
        "method": (
            f"Measured on {len(cells)} cell(s), {epochs_measured} epoch(s) each, in CPU seconds of one process "
            f"at {threads} thread(s): a real head training epoch and validation pass on cached features, and "
            "edgeseg's ONNX backbone run on the source image of every ROI sample (the original way, no feature "
            "cache) or of every image, training and validation sets; the head is batched as edgeseg batches it "
            "(images, not ROI samples) and the original's per-ROI data loading is not counted, so the original "
            "way is understated; whole-grid totals are extrapolations of these per-epoch means."
        ),
    }


def extrapolate(measured: dict[str, Any], cells: int, seeds: int, epochs: int) -> dict[str, Any]:
    """Core-seconds of training ``cells`` x ``seeds`` runs of ``epochs`` epochs the original way (the
    backbone once per ROI sample) and with the backbone once per image, each with and without the
    validation pass after every epoch, from the per-epoch means of :func:`measure_original`."""
    mean = measured["mean"]
    runs = cells * seeds * epochs
    train = mean["head_epoch_cpu_s"]
    val = mean["val_head_cpu_s"]
    per_roi = mean["backbone_per_roi_sample_cpu_s"]
    per_image = mean["backbone_per_image_cpu_s"]
    val_per_roi = mean["val_backbone_per_roi_sample_cpu_s"]
    val_per_image = mean["val_backbone_per_image_cpu_s"]
    return {
        "epoch_runs": runs,
        "original_core_seconds": round((train + per_roi + val + val_per_roi) * runs, 1),
        "original_per_image_core_seconds": round((train + per_image + val + val_per_image) * runs, 1),
        "original_train_only_core_seconds": round((train + per_roi) * runs, 1),
        "original_per_image_train_only_core_seconds": round((train + per_image) * runs, 1),
        "method": (
            f"Extrapolated, not run: the per-epoch CPU seconds measured on {len(measured['cells'])} cell(s) "
            f"at {measured['threads']} thread(s), times {cells} cells x {seeds} seeds x {epochs} epochs; "
            "'core_seconds' include a validation pass after every epoch (as the original made), "
            "'train_only' leave it out; the head's cost is edgeseg's (per-image batches), so the original way is "
            "understated."
        ),
    }
