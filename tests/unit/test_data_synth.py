"""Procedural people: deterministic, valid COCO, visible masks, and class 2 in the ROI targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from edgeseg.data.dataset import PersonRoiDataset
from edgeseg.data.synth import write_synth_dataset


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synth_dataset(root, train_images=8, val_images=3, seed=5)
    return root


def test_same_seed_gives_identical_files(synth_root: Path, tmp_path: Path) -> None:
    summary = write_synth_dataset(tmp_path, train_images=8, val_images=3, seed=5)
    assert summary["train"]["images"] == 8 and summary["val"]["images"] == 3
    for split in ("train", "val"):
        assert (tmp_path / split / "annotations.json").read_bytes() == (
            synth_root / split / "annotations.json"
        ).read_bytes()
        first = sorted((synth_root / split / "images").iterdir())
        assert [p.name for p in first] == [p.name for p in sorted((tmp_path / split / "images").iterdir())]
        assert first[0].read_bytes() == (tmp_path / split / "images" / first[0].name).read_bytes()
    other = write_synth_dataset(tmp_path / "other", train_images=8, val_images=3, seed=6)
    assert (tmp_path / "other" / "train" / "annotations.json").read_bytes() != (
        tmp_path / "train" / "annotations.json"
    ).read_bytes()
    assert other["train"]["images"] == 8


def test_annotations_are_valid_coco(synth_root: Path) -> None:
    coco = COCO(str(synth_root / "train" / "annotations.json"))
    assert len(coco.imgs) == 8 and coco.cats == {1: {"id": 1, "name": "person", "supercategory": "person"}}
    assert len(coco.anns) >= 8
    for ann in coco.anns.values():
        info = coco.imgs[ann["image_id"]]
        assert (info["width"], info["height"]) == (640, 480)
        mask = coco.annToMask(ann).astype(bool)
        assert mask.shape == (480, 640) and mask.any() and ann["iscrowd"] == 0 and ann["category_id"] == 1
        ys, xs = np.nonzero(mask)  # bbox and area are those of the visible mask
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["area"] == mask.sum()
        assert isinstance(ann["segmentation"]["counts"], str)
    # visible masks of one image never overlap (depth-ordered occlusion)
    for image_id in coco.imgs:
        masks = [coco.annToMask(a) for a in coco.imgToAnns[image_id]]
        assert np.sum(masks, axis=0).max() <= 1
    segmentation = coco.anns[1]["segmentation"]
    rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
    assert mask_utils.area(rle) == coco.anns[1]["area"]


def test_targets_contain_other_persons(synth_root: Path) -> None:
    dataset = PersonRoiDataset(
        synth_root / "train" / "annotations.json", synth_root / "train" / "images", input_size=320
    )
    counts = np.zeros(3, np.int64)
    for i in range(len(dataset)):
        counts += np.bincount(dataset[i].targets.numpy().ravel(), minlength=3)
    assert (counts > 0).all()
    assert counts[2] / counts.sum() > 0.02  # overlaps are common by construction


def test_sizes_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_images=0"):
        write_synth_dataset(tmp_path, train_images=0, val_images=1)
