"""Class statistics of ROI targets and the original project's log class weights.

The original hand-copied weights between JSON files whose names disagreed with their contents; here
weights are derived in code from pixel ratios: w_c = ln(1 / (r_c + 1e-3)), rescaled so that sum(w) = 3.
With the original's COCO ratios (0.48647, 0.36598, 0.14756) this gives [0.5942, 0.8290, 1.5768].
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.config import CLASS_NAMES, NUM_CLASSES
from edgeseg.data.dataset import PersonRoiDataset

# Bump when pixel_statistics changes what it counts, so cached statistics are recomputed.
STATISTICS_VERSION = 2  # 2: per-cell class counts (position_counts)


def statistics_key(dataset: Any) -> str:
    """Cache key of ``pixel_statistics(dataset)``: a hash of ``dataset.target_key()`` (every setting that
    changes the targets or which ROIs exist), the number of images counted and ``STATISTICS_VERSION``.

    The image count matters for wrappers that keep the first n images of a data set and pass
    ``target_key`` through (``len`` is all that differs), since statistics cover ``range(len(dataset))``.
    """
    target_key = getattr(dataset, "target_key", None)
    if target_key is None:
        raise TypeError(f"statistics_key needs a data set with target_key() (got {type(dataset).__name__})")
    payload = {"targets": target_key(), "images": len(dataset), "statistics_version": STATISTICS_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def pixel_statistics(dataset: Any) -> dict[str, Any]:
    """Pixel counts and ratios of classes 0/1/2 over every (un-augmented) ROI target of a data set.

    Uses ``dataset.targets(index)`` where it exists (``PersonRoiDataset``: no image decode, never
    augmented); otherwise the ``targets`` of ``dataset[index]``, which must then not be augmented.
    """
    has_targets = hasattr(dataset, "targets")
    if not has_targets and getattr(dataset, "augment", None) is not None:
        raise ValueError("pixel_statistics needs un-augmented targets: pass a data set with augment=None")
    cells: np.ndarray | None = None  # [3, M, M]: how often each class lies at each mask cell
    rois = 0
    for index in range(len(dataset)):
        targets = dataset.targets(index) if has_targets else dataset[index].targets.numpy()
        rois += len(targets)
        if len(targets):
            per_cell = np.stack([(targets == c).sum(axis=0) for c in range(NUM_CLASSES)])
            cells = per_cell if cells is None else cells + per_cell
    counts = cells.sum(axis=(1, 2)) if cells is not None else np.zeros(NUM_CLASSES, dtype=np.int64)
    total = int(counts.sum())
    ratios = (counts / total).tolist() if total else [0.0] * NUM_CLASSES
    return {
        "images": len(dataset),
        "rois": rois,
        "pixel_counts": dict(zip(CLASS_NAMES, counts.tolist(), strict=True)),
        "pixel_ratios": dict(zip(CLASS_NAMES, ratios, strict=True)),
        "ratios": ratios,
        "position_counts": cells.tolist() if cells is not None else None,
    }


def log_position_prior(stats: dict[str, Any], smoothing: float = 1.0) -> np.ndarray:
    """``log p(class | mask cell)`` [3, M, M] from ``pixel_statistics``, add-``smoothing`` (Laplace)."""
    cells = stats.get("position_counts")
    if not cells:
        raise ValueError(f"pixel statistics of {stats.get('images')} images hold no ROI targets")
    counts = np.asarray(cells, dtype=np.float64) + smoothing
    return np.log(counts / counts.sum(axis=0, keepdims=True))


def log_class_weights(ratios: Sequence[float]) -> list[float]:
    """w_c = ln(1 / (r_c + 1e-3)), renormalised so that the weights sum to the number of classes."""
    if len(ratios) == 0 or any(not 0.0 <= r <= 1.0 for r in ratios):
        raise ValueError(f"class ratios must be in [0, 1], got {list(ratios)}")
    raw = [math.log(1.0 / (r + 1e-3)) for r in ratios]
    total = sum(raw)
    if total <= 0:
        raise ValueError(f"log weights of ratios {list(ratios)} do not sum to a positive number")
    return [w * len(raw) / total for w in raw]


def split_statistics(data_dir: str | Path, **dataset_kwargs: Any) -> dict[str, Any]:
    """Pixel statistics and log class weights of ``data_dir/train`` (annotations.json + images/)."""

    train = Path(data_dir) / "train"
    stats = pixel_statistics(PersonRoiDataset(train / "annotations.json", train / "images", **dataset_kwargs))
    stats["log_class_weights"] = log_class_weights(stats["ratios"])
    return stats
