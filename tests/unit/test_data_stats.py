"""Class pixel ratios and the original's log class weights."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edgeseg.data.augment import AugmentConfig
from edgeseg.data.dataset import PersonRoiDataset
from edgeseg.data.stats import log_class_weights, log_position_prior, pixel_statistics, statistics_key

FIXTURE = Path(__file__).parents[1] / "fixtures" / "coco_people.json"


def _fixture_dataset(root: Path, **kwargs) -> PersonRoiDataset:
    if not (root / "images").exists():
        shutil.copy(FIXTURE, root / "annotations.json")
        (root / "images").mkdir()
        for name, (w, h) in {
            "two_people.png": (32, 16),
            "bicycle_only.png": (32, 16),
            "wide.png": (128, 64),
        }.items():
            cv2.imwrite(str(root / "images" / name), np.zeros((h, w, 3), np.uint8))
    options = {"input_size": 64, "mask_size": 8, "min_instance_size": 8, **kwargs}
    return PersonRoiDataset(root / "annotations.json", root / "images", **options)


def test_log_weights_reproduce_the_original_numbers() -> None:
    # original-system.md §1.4: COCO ratios 0.48647 / 0.36598 / 0.14756 -> [0.5942, 0.8290, 1.5768]
    weights = log_class_weights([0.48647, 0.36598, 0.14756])
    np.testing.assert_allclose(weights, [0.5942, 0.8290, 1.5768], atol=1e-4)
    assert sum(weights) == pytest.approx(3.0)


def test_log_weights_by_hand_and_validation() -> None:
    raw = [math.log(1 / 0.501), math.log(1 / 0.251), math.log(1 / 0.251)]
    np.testing.assert_allclose(log_class_weights([0.5, 0.25, 0.25]), [3 * w / sum(raw) for w in raw])
    with pytest.raises(ValueError, match="ratios"):
        log_class_weights([0.5, 1.5, 0.0])


def test_pixel_statistics_count_the_hand_made_targets(tmp_path: Path) -> None:
    dataset = _fixture_dataset(tmp_path)
    stats = pixel_statistics(dataset)
    # hand counts (matrices in test_data_dataset.py): ROI A has 36 target and 5 + 3 other pixels from B
    # plus 5 from the small person 14 and the crowd region (people without a ROI are "other" too), ROI B
    # 36 target and 3 + 5 other. Person C (input x 10..29, y 21..40) has ROI (8, 19, 32, 43): 3 px bins,
    # columns 9, 12, ..., 30 and rows 20, 23, ..., 41, so the 6 x 6 middle bins are target: 36.
    assert stats["rois"] == 3 and stats["images"] == 2
    assert stats["pixel_counts"] == {"background": 3 * 64 - 108 - 21, "target": 108, "other": 21}
    assert sum(stats["ratios"]) == pytest.approx(1.0)
    assert stats["ratios"][1] == pytest.approx(108 / 192)


def test_pixel_statistics_ignore_augmentation(tmp_path: Path) -> None:
    plain = _fixture_dataset(tmp_path)
    augmented = _fixture_dataset(
        tmp_path, augment=AugmentConfig(hflip_prob=1.0, scale_jitter=0.5, color_jitter=0.5)
    )
    assert pixel_statistics(augmented) == pixel_statistics(plain)


class _FirstImages:
    """Like ``engine.prepare.LimitedDataset``: the first ``limit`` images, everything else passed through."""

    def __init__(self, dataset: PersonRoiDataset, limit: int) -> None:
        self.dataset, self.limit = dataset, limit

    def __len__(self) -> int:
        return self.limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dataset, name)


def test_statistics_key_changes_whenever_the_statistics_can(tmp_path: Path) -> None:
    base = _fixture_dataset(tmp_path)
    key = statistics_key(base)
    assert key == statistics_key(_fixture_dataset(tmp_path))
    # min_instance_size 2 gives person 14 a ROI: other statistics, so another key (the old cache key,
    # identity + mask size + padding + ROI cap, reused the statistics of min_instance_size 8).
    small = _fixture_dataset(tmp_path, min_instance_size=2)
    assert pixel_statistics(small)["rois"] == 4 and pixel_statistics(small) != pixel_statistics(base)
    assert statistics_key(small) != key
    assert statistics_key(_fixture_dataset(tmp_path, max_rois_per_image=1)) != key
    # Statistics never see augmentation, so it shares the key (and the statistics, tested above).
    assert statistics_key(_fixture_dataset(tmp_path, augment=AugmentConfig(hflip_prob=1.0))) == key
    first = _FirstImages(base, 1)
    assert pixel_statistics(first)["images"] == 1 and statistics_key(first) != key
    with pytest.raises(TypeError, match="target_key"):
        statistics_key([np.zeros((1, 8, 8), np.int64)])


def test_position_counts_place_each_class_in_the_mask_and_give_the_log_prior(tmp_path: Path) -> None:
    dataset = _fixture_dataset(tmp_path)
    stats = pixel_statistics(dataset)
    cells = np.asarray(stats["position_counts"])
    assert cells.shape == (3, 8, 8)
    np.testing.assert_array_equal(cells.sum(axis=0), np.full((8, 8), stats["rois"]))  # every ROI, every cell
    np.testing.assert_array_equal(cells.sum(axis=(1, 2)), list(stats["pixel_counts"].values()))
    targets = np.concatenate([dataset.targets(i) for i in range(len(dataset))])
    np.testing.assert_array_equal(cells[1], (targets == 1).sum(axis=0))  # by hand: where targets are 1
    # ROIs are centred on their person: the centre cells are target in every ROI, the corners never.
    assert cells[1, 3:5, 3:5].min() == stats["rois"] and cells[1, 0, 0] == 0
    prior = log_position_prior(stats, smoothing=1.0)
    np.testing.assert_allclose(np.exp(prior).sum(axis=0), 1.0)
    np.testing.assert_allclose(prior[:, 0, 0], np.log((cells[:, 0, 0] + 1) / (stats["rois"] + 3)))
    with pytest.raises(ValueError, match="no ROI targets"):
        log_position_prior({"images": 2, "position_counts": None})
