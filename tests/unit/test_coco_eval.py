"""Pasting ROI masks back and COCO mask AP with real pycocotools on a hand-made ground truth."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from edgeseg.coco_eval import coco_mask_ap, paste_roi_masks

# Original 40x20 image letterboxed into 80x80: scale 2, no horizontal pad, 20 px on top.
LETTERBOX = SimpleNamespace(scale=2.0, pad_x=0, pad_y=20, orig_w=40, orig_h=20)
ROI = [20.0, 40.0, 60.0, 60.0]  # covers original x in [10, 30), y in [10, 20)


def test_paste_full_mask_covers_the_roi_in_the_original_image() -> None:
    (pasted,) = paste_roi_masks(torch.ones(1, 4, 4), torch.tensor([ROI]), LETTERBOX)
    expected = np.zeros((20, 40), dtype=bool)
    expected[10:20, 10:30] = True  # original pixel centres mapping into the ROI
    assert pasted.shape == (20, 40) and pasted.dtype == bool
    assert np.array_equal(pasted, expected)


def test_paste_left_half_and_label_maps() -> None:
    labels = torch.tensor([[[1, 1, 0, 0]] * 4, [[2, 2, 2, 2]] * 4])  # ROI 1: only "other person"
    rois = torch.tensor([[0.0, *ROI], [0.0, *ROI]])  # [N, 5] form
    half, other = paste_roi_masks(labels, rois, LETTERBOX)
    expected = np.zeros((20, 40), dtype=bool)
    expected[10:20, 10:20] = True  # the mask edge sits at input x = 40, i.e. original x = 20
    assert np.array_equal(half, expected)
    assert not other.any()
    (same,) = paste_roi_masks(labels[:1], rois[:1, 1:], LETTERBOX)
    assert np.array_equal(same, half)


def test_paste_thresholds_probabilities() -> None:
    probs = torch.full((1, 4, 4), 0.4)
    assert not paste_roi_masks(probs, [ROI], LETTERBOX)[0].any()
    expected = np.zeros((20, 40), dtype=bool)
    expected[10:20, 10:30] = True
    assert np.array_equal(paste_roi_masks(probs, [ROI], LETTERBOX, threshold=0.3)[0], expected)


def test_paste_inverts_roi_sampling_of_a_letterboxed_instance() -> None:
    w, h, size, m = 50, 30, 64, 56
    scale = size / w
    letterbox = SimpleNamespace(
        scale=scale, pad_x=0, pad_y=(size - round(h * scale)) // 2, orig_w=w, orig_h=h
    )
    yy, xx = np.mgrid[0:h, 0:w]
    person = ((xx + 0.5 - 24) / 11) ** 2 + ((yy + 0.5 - 15) / 9) ** 2 <= 1.0
    # ROI around the person in input pixels, labels sampled at bin centres (original pixel containing it).
    x1, y1 = 10 * scale, 4 * scale + letterbox.pad_y
    x2, y2 = 38 * scale, 26 * scale + letterbox.pad_y
    centres = (np.arange(m) + 0.5) / m
    cols = np.floor((x1 + centres * (x2 - x1)) / scale).astype(int)
    rows = np.floor((y1 + centres * (y2 - y1) - letterbox.pad_y) / scale).astype(int)
    roi_labels = person[rows[:, None], cols[None, :]].astype(np.int64)
    (pasted,) = paste_roi_masks(roi_labels[None], np.array([[x1, y1, x2, y2]]), letterbox)
    iou = (pasted & person).sum() / (pasted | person).sum()
    assert iou > 0.95


# ---------------------------------------------------------------------------------------------
# COCO mask AP.
# ---------------------------------------------------------------------------------------------


def _square(h: int, w: int, top: int, left: int, side: int = 10) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


GT_MASKS = {  # ann_id: (image_id, mask)
    11: (1, _square(30, 40, 5, 5)),
    12: (1, _square(30, 40, 5, 20)),
    21: (2, _square(32, 32, 10, 10)),
}


@pytest.fixture()
def gt() -> COCO:
    dataset = {
        "images": [{"id": 1, "width": 40, "height": 30}, {"id": 2, "width": 32, "height": 32}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": _rle(mask), "area": float(mask.sum()),
             "bbox": list(mask_utils.toBbox(_rle(mask))), "iscrowd": 0}
            for ann_id, (image_id, mask) in GT_MASKS.items()
        ],
    }  # fmt: skip
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _detection(ann_id: int, mask: np.ndarray, score: float) -> dict:
    return {"image_id": GT_MASKS[ann_id][0], "ann_id": ann_id, "mask": mask, "score": score}


def test_perfect_masks_give_ap_one(gt: COCO) -> None:
    dets = [_detection(a, m, 0.9 - 0.1 * i) for i, (a, (_, m)) in enumerate(GT_MASKS.items())]
    assert coco_mask_ap(gt, dets) == pytest.approx({"ap": 1.0, "ap50": 1.0, "ap75": 1.0})


def test_shifted_and_empty_masks_give_the_predicted_ap(gt: COCO) -> None:
    shifted = np.roll(GT_MASKS[12][1], 1, axis=1)  # IoU with its ground truth: 90 / 110
    dets = [
        _detection(11, GT_MASKS[11][1], 0.9),
        _detection(12, shifted, 0.8),
        _detection(21, np.zeros((32, 32), dtype=bool), 0.7),  # IoU 0: a false positive, C is missed
    ]
    # Detections in score order against 3 ground truths, 101 recall points r = 0, 0.01, ..., 1:
    # where the shifted mask matches (IoU threshold <= 9/11): TP, TP, FP → precision 1 up to recall 2/3,
    # i.e. 67 recall points; otherwise TP, FP, FP → precision 1 up to recall 1/3, i.e. 34 points.
    thresholds = [0.5 + 0.05 * k for k in range(10)]
    matched = sum(1 for t in thresholds if t <= 9 / 11)
    assert matched == 7
    expected_ap = (matched * 67 + (10 - matched) * 34) / (10 * 101)
    result = coco_mask_ap(gt, dets)
    assert result["ap"] == pytest.approx(expected_ap)
    assert result["ap50"] == pytest.approx(67 / 101)
    assert result["ap75"] == pytest.approx(67 / 101)
    assert result["ap"] < 1.0


def test_image_subset_and_no_detections(gt: COCO) -> None:
    dets = [_detection(11, GT_MASKS[11][1], 0.9), _detection(12, GT_MASKS[12][1], 0.8)]
    assert coco_mask_ap(gt, dets, image_ids=[1])["ap"] == pytest.approx(1.0)
    # Over both images, ground truth 21 is never detected: recall stops at 2/3 → 67 of 101 points.
    assert coco_mask_ap(gt, dets)["ap"] == pytest.approx(67 / 101)
    assert coco_mask_ap(gt, []) == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}


def test_bad_detections_name_the_ids(gt: COCO) -> None:
    with pytest.raises(ValueError, match="ann_id 21 is not an annotation of image_id 1"):
        coco_mask_ap(gt, [{"image_id": 1, "ann_id": 21, "mask": GT_MASKS[11][1], "score": 1.0}])
    with pytest.raises(ValueError, match="image_id 2"):
        coco_mask_ap(gt, [_detection(21, np.zeros((30, 40), dtype=bool), 1.0)])
    with pytest.raises(ValueError, match="image_id 7"):
        coco_mask_ap(gt, [{"image_id": 7, "ann_id": 11, "mask": GT_MASKS[11][1], "score": 1.0}])
    with pytest.raises(KeyError, match="score"):
        coco_mask_ap(gt, [{"image_id": 1, "ann_id": 11, "mask": GT_MASKS[11][1]}])
