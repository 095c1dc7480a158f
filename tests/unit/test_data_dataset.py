"""PersonRoiDataset on the hand-made COCO file: targets pixel by pixel, filtering, errors, identity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgeseg.data.augment import AugmentConfig
from edgeseg.data.cocoio import DataError
from edgeseg.data.dataset import PersonRoiDataset, collate_roi_samples

FIXTURE = Path(__file__).parents[1] / "fixtures" / "coco_people.json"

# Image 1 is 32x16, letterboxed into 64: scale 2, pad_y 16. Person A (x 2..13, y 2..13) covers input
# x 4..27, y 20..43; person B (x 10..21, y 4..15) covers input x 20..43, y 24..47.
# ROI A = box (4, 20, 28, 44) padded by 0.1 * 24 = 2.4 -> (1.6, 17.6, 30.4, 46.4); with M = 8 the bins
# are 3.6 px wide, centres at 1.6 + (j + 0.5) * 3.6 -> columns 3, 7, 10, 14, 17, 21, 25, 28 and rows
# (same + 16) 19, 23, 26, 30, 33, 37, 41, 44. Label = 1 inside A, else 2 inside B, else 0:
ROI_A = np.array([1.6, 17.6, 30.4, 46.4], np.float32)
TARGET_A = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0],  # row 19: above both
        [0, 1, 1, 1, 1, 1, 1, 0],  # row 23: A only (B starts at 24); column 3 and 28 are outside A
        [0, 1, 1, 1, 1, 1, 1, 2],  # rows 26..41: column 28 is in B only
        [0, 1, 1, 1, 1, 1, 1, 2],
        [0, 1, 1, 1, 1, 1, 1, 2],
        [0, 1, 1, 1, 1, 1, 1, 2],
        [0, 1, 1, 1, 1, 1, 1, 2],
        [0, 0, 0, 0, 0, 2, 2, 2],  # row 44: below A, B at columns 21, 25, 28
    ]
)
# ROI B = (20, 24, 44, 48) padded -> (17.6, 21.6, 46.4, 50.4): columns 19, 23, 26, 30, 33, 37, 41, 44,
# rows 23, 27, 30, 34, 37, 41, 45, 48.
ROI_B = np.array([17.6, 21.6, 46.4, 50.4], np.float32)
TARGET_B = np.array(
    [
        [2, 2, 2, 0, 0, 0, 0, 0],  # row 23: above B; A at columns 19, 23, 26
        [2, 1, 1, 1, 1, 1, 1, 0],  # rows 27..41: B wins on columns 23 and 26
        [2, 1, 1, 1, 1, 1, 1, 0],
        [2, 1, 1, 1, 1, 1, 1, 0],
        [2, 1, 1, 1, 1, 1, 1, 0],
        [2, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 1, 0],  # row 45: below A
        [0, 0, 0, 0, 0, 0, 0, 0],  # row 48: below B
    ]
)


def _write_images(annotation_file: Path, image_dir: Path) -> None:
    image_dir.mkdir(parents=True, exist_ok=True)
    for info in json.loads(annotation_file.read_text())["images"]:
        cv2.imwrite(
            str(image_dir / info["file_name"]), np.zeros((info["height"], info["width"], 3), np.uint8)
        )


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    shutil.copy(FIXTURE, tmp_path / "annotations.json")
    _write_images(tmp_path / "annotations.json", tmp_path / "images")
    return tmp_path


def _dataset(root: Path, **kwargs) -> PersonRoiDataset:
    options = dict(input_size=64, mask_size=8, min_instance_size=8)
    options.update(kwargs)
    return PersonRoiDataset(root / "annotations.json", root / "images", **options)


def test_targets_match_the_hand_computation(coco_dir: Path) -> None:
    dataset = _dataset(coco_dir)
    assert len(dataset) == 2 and dataset.image_ids == [1, 3]  # image 2 has no person: left out
    sample = dataset[0]
    assert sample.image.shape == (3, 64, 64) and sample.image.dtype == torch.uint8
    assert sample.ann_ids == [10, 11]  # crowd (12), bicycle (13) and the 2x4 px person (14) are dropped
    np.testing.assert_allclose(sample.rois.numpy(), np.stack([ROI_A, ROI_B]), atol=1e-5)
    assert sample.targets.dtype == torch.int64
    np.testing.assert_array_equal(sample.targets[0].numpy(), TARGET_A)
    np.testing.assert_array_equal(sample.targets[1].numpy(), TARGET_B)


def test_small_instances_become_other_persons_when_kept(coco_dir: Path) -> None:
    # min_instance_size 2 keeps the 2x4 px person 14 (x 0..1, y 4..7 -> column 3, rows 26 and 30 of ROI A);
    # the crowd region (rows 37, 41) and the bicycle (row 33) stay background.
    sample = _dataset(coco_dir, min_instance_size=2)[0]
    assert sample.ann_ids == [10, 11, 14]
    expected = TARGET_A.copy()
    expected[2:4, 0] = 2
    np.testing.assert_array_equal(sample.targets[0].numpy(), expected)


def test_roi_cap_keeps_other_person_pixels_from_all_instances(coco_dir: Path) -> None:
    sample = _dataset(coco_dir, max_rois_per_image=1)[0]
    assert sample.ann_ids == [10] and sample.rois.shape == (1, 4)
    np.testing.assert_array_equal(sample.targets[0].numpy(), TARGET_A)  # B is still class 2


def test_compressed_rle_and_area_downscale(coco_dir: Path) -> None:
    # Image 3 (128x64) -> 64: scale 0.5, pad_y 16. Person C (x 20..59, y 10..49) covers input x 10..29,
    # y 21..40. ROI with padding 0.5: box (10, 21, 30, 41) -> (0, 11, 40, 51); M = 4: columns 5, 15, 25, 35,
    # rows 16, 26, 36, 46 -> the middle 2x2 bins are person C.
    sample = _dataset(coco_dir, roi_padding=0.5, mask_size=4)[1]
    assert sample.image_id == 3 and sample.ann_ids == [30]
    np.testing.assert_allclose(sample.rois[0].numpy(), [0, 11, 40, 51])
    expected = np.zeros((4, 4), np.int64)
    expected[1:3, 1:3] = 1
    np.testing.assert_array_equal(sample.targets[0].numpy(), expected)


def test_collate_adds_batch_index_column(coco_dir: Path) -> None:
    dataset = _dataset(coco_dir)
    batch = collate_roi_samples([dataset[1], dataset[0]])
    assert batch.images.shape == (2, 3, 64, 64) and batch.images.dtype == torch.uint8
    assert batch.rois.dtype == torch.float32 and batch.rois.shape == (3, 5)
    assert batch.rois[:, 0].tolist() == [0.0, 1.0, 1.0]
    np.testing.assert_allclose(batch.rois[1:, 1:].numpy(), np.stack([ROI_A, ROI_B]), atol=1e-5)
    assert batch.targets.shape == (3, 8, 8) and batch.indices.tolist() == [1, 0]
    assert batch.image_ids == [3, 1] and batch.ann_ids == [[30], [10, 11]]
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_roi_samples)
    assert next(iter(loader)).rois.shape == (3, 5)


def test_images_are_letterboxed_rgb_and_load_image_is_never_augmented(coco_dir: Path) -> None:
    image = np.zeros((16, 32, 3), np.uint8)
    image[:, :16] = (0, 0, 255)  # BGR red on the left half
    cv2.imwrite(str(coco_dir / "images" / "two_people.png"), image)
    dataset = _dataset(coco_dir, augment=AugmentConfig(hflip_prob=1.0))
    plain = dataset.load_image(0)
    assert plain[:, 16, 0].tolist() == [255, 0, 0] and plain[:, 16, 63].tolist() == [
        0,
        0,
        0,
    ]  # RGB, not flipped
    assert plain[:, 0, 0].tolist() == [114, 114, 114]  # letterbox bar
    flipped = dataset[0].image
    assert flipped[:, 16, 63].tolist() == [255, 0, 0]


def test_masks_are_decoded_once_and_cached(coco_dir: Path) -> None:
    dataset = _dataset(coco_dir)
    first = [dataset[i].targets for i in range(len(dataset))]
    second = [dataset[i].targets for i in range(len(dataset))]
    assert dataset.mask_cache_info()["misses"] == 2 and dataset.mask_cache_info()["hits"] == 2
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    no_cache = _dataset(coco_dir, mask_cache_mb=0)  # a zero budget still works, it just decodes again
    np.testing.assert_array_equal(no_cache[0].targets[0].numpy(), TARGET_A)


def test_identity_tracks_annotations_and_images_not_targets(coco_dir: Path) -> None:
    base = _dataset(coco_dir).identity()
    assert base == _dataset(coco_dir).identity()  # stable
    assert base == _dataset(coco_dir, mask_size=16, roi_padding=0.3).identity()  # targets only
    assert base != _dataset(coco_dir, input_size=128).identity()
    data = json.loads((coco_dir / "annotations.json").read_text())
    data["annotations"][0]["segmentation"] = [[2, 2, 13, 2, 13, 14, 2, 14]]
    (coco_dir / "annotations.json").write_text(json.dumps(data))
    assert _dataset(coco_dir).identity() != base


def test_missing_image_names_path_and_id(coco_dir: Path) -> None:
    (coco_dir / "images" / "wide.png").unlink()
    with pytest.raises(
        DataError, match=r"wide\.png: image file not found \(image id 3 in .*annotations\.json\)"
    ):
        _dataset(coco_dir)


def test_image_size_mismatch_names_path_and_id(coco_dir: Path) -> None:
    cv2.imwrite(str(coco_dir / "images" / "wide.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(DataError, match=r"wide\.png: image is 10x10 but .* says 128x64 \(image id 3\)"):
        _dataset(coco_dir)[1]


def test_malformed_json_names_file(coco_dir: Path) -> None:
    (coco_dir / "annotations.json").write_text('{"images": [}')
    with pytest.raises(DataError, match=r"annotations\.json: malformed JSON at line 1, column 13"):
        _dataset(coco_dir)


def test_no_person_category_names_file(coco_dir: Path) -> None:
    data = json.loads(FIXTURE.read_text())
    data["categories"] = [c for c in data["categories"] if c["name"] != "person"]
    (coco_dir / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations\.json: no person category"):
        _dataset(coco_dir)


def test_no_usable_instance_names_file_and_min_size(coco_dir: Path) -> None:
    with pytest.raises(
        DataError, match=r"annotations\.json: no usable person instance .*min_instance_size=64"
    ):
        _dataset(coco_dir, min_instance_size=64)


def test_augmentation_is_deterministic_per_epoch(coco_dir: Path) -> None:
    dataset = _dataset(
        coco_dir, augment=AugmentConfig(hflip_prob=0.5, scale_jitter=0.3, color_jitter=0.3), seed=3
    )
    dataset.set_epoch(0)
    first = dataset[0]
    again = dataset[0]
    assert first.augment == again.augment and torch.equal(first.targets, again.targets)
    draws = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        draws.add(dataset[0].augment)
    assert len(draws) == 6
