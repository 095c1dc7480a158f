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
from edgeseg.data.dataset import TARGETS_VERSION, PersonRoiDataset, collate_roi_samples

FIXTURE = Path(__file__).parents[1] / "fixtures" / "coco_people.json"

# Image 1 is 32x16, letterboxed into 64: scale 2, pad_y 16. Person A (x 2..13, y 2..13) covers input
# x 4..27, y 20..43; person B (x 10..21, y 4..15) covers input x 20..43, y 24..47.
# ROI A = box (4, 20, 28, 44) padded by 0.1 * 24 = 2.4 -> (1.6, 17.6, 30.4, 46.4); with M = 8 the bins
# are 3.6 px wide, centres at 1.6 + (j + 0.5) * 3.6 -> columns 3, 7, 10, 14, 17, 21, 25, 28 and rows
# (same + 16) 19, 23, 26, 30, 33, 37, 41, 44. Label = 1 inside A, else 2 inside any other person, else 0.
# Column 3 (original x 1) holds no ROI person but the 2x4 px person 14 (y 4..7 -> input rows 24..31:
# rows 26, 30) and the crowd region 12 (y 10..15 -> input rows 36..47: rows 37, 41, 44), both class 2;
# the bicycle 13 (y 8..9 -> row 33) is not a person: background.
ROI_A = np.array([1.6, 17.6, 30.4, 46.4], np.float32)
TARGET_A = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0],  # row 19: above everyone
        [0, 1, 1, 1, 1, 1, 1, 0],  # row 23: A only (B starts at 24); column 3 and 28 are outside A
        [2, 1, 1, 1, 1, 1, 1, 2],  # rows 26, 30: person 14 at column 3, B only at column 28
        [2, 1, 1, 1, 1, 1, 1, 2],
        [0, 1, 1, 1, 1, 1, 1, 2],  # row 33: the bicycle at column 3 stays background
        [2, 1, 1, 1, 1, 1, 1, 2],  # rows 37, 41: the crowd region at column 3
        [2, 1, 1, 1, 1, 1, 1, 2],
        [2, 0, 0, 0, 0, 2, 2, 2],  # row 44: below A; crowd at column 3, B at columns 21, 25, 28
    ]
)
OTHER_PEOPLE_1 = np.zeros((64, 64), bool)  # image 1's people without a ROI, letterboxed (scale 2, pad 16)
OTHER_PEOPLE_1[24:32, 0:4] = True  # person 14
OTHER_PEOPLE_1[36:48, 0:4] = True  # crowd 12
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
    assert sample.ann_ids == [10, 11]  # crowd (12), bicycle (13) and the 2x4 px person (14) get no ROI
    np.testing.assert_allclose(sample.rois.numpy(), np.stack([ROI_A, ROI_B]), atol=1e-5)
    assert sample.targets.dtype == torch.int64
    np.testing.assert_array_equal(sample.targets[0].numpy(), TARGET_A)
    np.testing.assert_array_equal(sample.targets[1].numpy(), TARGET_B)


def test_small_people_and_crowd_regions_are_other_persons_without_a_roi(coco_dir: Path) -> None:
    dataset = _dataset(coco_dir)
    np.testing.assert_array_equal(dataset.other_people_mask(0), OTHER_PEOPLE_1)  # pixel by pixel
    assert not dataset.other_people_mask(1).any()  # image 3 has no other person
    assert dataset.instance_masks(0).shape == (2, 64, 64)
    np.testing.assert_array_equal(dataset.targets(0)[0], TARGET_A)


def test_min_instance_size_only_chooses_who_gets_a_roi(coco_dir: Path) -> None:
    # min_instance_size 2 gives the 2x4 px person 14 a ROI; in ROI A it is class 2 either way.
    sample = _dataset(coco_dir, min_instance_size=2)[0]
    assert sample.ann_ids == [10, 11, 14]
    np.testing.assert_array_equal(sample.targets[0].numpy(), TARGET_A)
    np.testing.assert_array_equal(sample.targets[1].numpy(), TARGET_B)


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths of the column-major pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], edges])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def test_crowd_regions_given_as_rle_are_other_persons(coco_dir: Path) -> None:
    data = json.loads(FIXTURE.read_text())
    crowd = np.zeros((16, 32), bool)
    crowd[10:16, 0:2] = True
    (ann,) = [a for a in data["annotations"] if a["id"] == 12]
    ann["segmentation"] = _uncompressed_rle(crowd)  # what real COCO crowd annotations look like
    (coco_dir / "annotations.json").write_text(json.dumps(data))
    dataset = _dataset(coco_dir)
    np.testing.assert_array_equal(dataset.coco.annToMask(dataset.coco.anns[12]) > 0, crowd)
    np.testing.assert_array_equal(dataset.other_people_mask(0), OTHER_PEOPLE_1)
    np.testing.assert_array_equal(dataset[0].targets[0].numpy(), TARGET_A)


def test_roi_cap_keeps_other_person_pixels_from_all_instances(coco_dir: Path) -> None:
    sample = _dataset(coco_dir, max_rois_per_image=1)[0]
    assert sample.ann_ids == [10] and sample.rois.shape == (1, 4)
    np.testing.assert_array_equal(sample.targets[0].numpy(), TARGET_A)  # B, 14 and the crowd are still 2


def test_other_persons_survive_augmentation(coco_dir: Path) -> None:
    # A horizontal flip of the 64 px input mirrors ROI A (x -> 64 - x) and its targets' columns.
    sample = _dataset(coco_dir, augment=AugmentConfig(hflip_prob=1.0))[0]
    assert sample.augment is not None and sample.augment.hflip
    np.testing.assert_allclose(sample.rois[0].numpy(), [64 - 30.4, 17.6, 64 - 1.6, 46.4], atol=1e-5)
    np.testing.assert_array_equal(sample.targets[0].numpy(), TARGET_A[:, ::-1])


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


def test_target_key_names_every_setting_that_changes_targets(coco_dir: Path) -> None:
    base = _dataset(coco_dir).target_key()
    assert base == _dataset(coco_dir).target_key()  # same settings, same key
    assert json.loads(json.dumps(base)) == base  # JSON-serialisable, for cache file names
    assert base["targets_version"] == TARGETS_VERSION
    changes = {
        "input_size": 128,
        "mask_size": 16,
        "roi_padding": 0.3,
        "min_instance_size": 2,
        "max_rois_per_image": 1,
    }
    for name, value in changes.items():
        key = _dataset(coco_dir, **{name: value}).target_key()
        assert key != base, name
        assert key[name] == value
    # Not augmentation, its seed, the mask cache or where the images live: targets() never sees them.
    same = _dataset(coco_dir, augment=AugmentConfig(hflip_prob=1.0), seed=5, mask_cache_mb=0).target_key()
    assert same == base
    shutil.copytree(coco_dir / "images", coco_dir / "elsewhere")
    moved = PersonRoiDataset(
        coco_dir / "annotations.json", coco_dir / "elsewhere", input_size=64, mask_size=8, min_instance_size=8
    )
    assert moved.target_key() == base
    data = json.loads((coco_dir / "annotations.json").read_text())
    data["annotations"][0]["segmentation"] = [[2, 2, 13, 2, 13, 14, 2, 14]]
    (coco_dir / "annotations.json").write_text(json.dumps(data))
    assert _dataset(coco_dir).target_key() != base


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
