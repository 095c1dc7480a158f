"""Pasting ROI masks back and COCO mask AP with real pycocotools on a hand-made ground truth."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from edgeseg.coco_eval import AP_SCOPE, coco_mask_ap, paste_roi_masks, roi_detections
from edgeseg.data.dataset import PersonRoiDataset, collate_roi_samples

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


ALL_ROIS = tuple(GT_MASKS)  # every person was given a ROI


def test_perfect_masks_give_ap_one(gt: COCO) -> None:
    dets = [_detection(a, m, 0.9 - 0.1 * i) for i, (a, (_, m)) in enumerate(GT_MASKS.items())]
    result = coco_mask_ap(gt, dets, roi_ann_ids=ALL_ROIS)
    assert result == pytest.approx({"mask_ap": 1.0, "mask_ap50": 1.0, "mask_ap75": 1.0})


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
    result = coco_mask_ap(gt, dets, roi_ann_ids=ALL_ROIS)
    assert result["mask_ap"] == pytest.approx(expected_ap)
    assert result["mask_ap50"] == pytest.approx(67 / 101)
    assert result["mask_ap75"] == pytest.approx(67 / 101)
    assert result["mask_ap"] < 1.0


def test_image_subset_and_no_detections(gt: COCO) -> None:
    dets = [_detection(11, GT_MASKS[11][1], 0.9), _detection(12, GT_MASKS[12][1], 0.8)]
    assert coco_mask_ap(gt, dets, image_ids=[1], roi_ann_ids=ALL_ROIS)["mask_ap"] == pytest.approx(1.0)
    # Over both images, ROI person 21 is never detected: recall stops at 2/3 → 67 of 101 points.
    assert coco_mask_ap(gt, dets, roi_ann_ids=ALL_ROIS)["mask_ap"] == pytest.approx(67 / 101)
    assert coco_mask_ap(gt, [], roi_ann_ids=ALL_ROIS) == {"mask_ap": 0.0, "mask_ap50": 0.0, "mask_ap75": 0.0}
    # No ROI person in the evaluated images: nothing to score.
    assert np.isnan(coco_mask_ap(gt, [], image_ids=[2], roi_ann_ids=[11])["mask_ap"])


def test_bad_detections_name_the_ids(gt: COCO) -> None:
    with pytest.raises(ValueError, match="ann_id 21 is not an annotation of image_id 1"):
        coco_mask_ap(
            gt, [{"image_id": 1, "ann_id": 21, "mask": GT_MASKS[11][1], "score": 1.0}], roi_ann_ids=ALL_ROIS
        )
    with pytest.raises(ValueError, match="image_id 2"):
        coco_mask_ap(gt, [_detection(21, np.zeros((30, 40), dtype=bool), 1.0)], roi_ann_ids=ALL_ROIS)
    with pytest.raises(ValueError, match="image_id 7"):
        coco_mask_ap(
            gt, [{"image_id": 7, "ann_id": 11, "mask": GT_MASKS[11][1], "score": 1.0}], roi_ann_ids=ALL_ROIS
        )
    with pytest.raises(KeyError, match="score"):
        coco_mask_ap(gt, [{"image_id": 1, "ann_id": 11, "mask": GT_MASKS[11][1]}], roi_ann_ids=ALL_ROIS)
    with pytest.raises(ValueError, match="ann_id 12 was not given a ROI"):
        coco_mask_ap(gt, [_detection(12, GT_MASKS[12][1], 1.0)], roi_ann_ids=[11])
    with pytest.raises(ValueError, match=r"roi_ann_ids \[99\]"):
        coco_mask_ap(gt, [], roi_ann_ids=[11, 99])
    with pytest.raises(TypeError, match="roi_ann_ids"):
        coco_mask_ap(gt, [])  # type: ignore[call-arg]  # the scope is never implicit


def test_people_without_a_roi_are_ignored_not_missed(gt: COCO) -> None:
    assert AP_SCOPE == "people given a ROI"
    dets = [_detection(11, GT_MASKS[11][1], 0.9)]
    # Person 12 (image 1) and 21 (image 2) got no ROI: they are neither misses nor false positives.
    assert coco_mask_ap(gt, dets, roi_ann_ids=[11])["mask_ap"] == pytest.approx(1.0)
    # Counted as misses they would cap recall at 1/3: precision 1 on 34 of 101 recall points.
    assert coco_mask_ap(gt, dets, roi_ann_ids=ALL_ROIS)["mask_ap"] == pytest.approx(34 / 101)
    # A mask that covers an ignored person is not a false positive either (crowd-style matching).
    on_ignored = _detection(11, GT_MASKS[12][1], 0.95)
    assert coco_mask_ap(gt, [on_ignored, *dets], roi_ann_ids=[11])["mask_ap"] == pytest.approx(1.0)


def test_ground_truth_is_not_modified(gt: COCO) -> None:
    before = copy.deepcopy(gt.dataset)
    dets = [_detection(a, GT_MASKS[a][1], 0.9) for a in (11, 12)]
    coco_mask_ap(gt, dets, roi_ann_ids=[11, 12])  # 21 is ignored: COCOeval sees a changed copy
    assert gt.dataset == before
    assert all("ignore" not in ann for ann in gt.anns.values())


# ---------------------------------------------------------------------------------------------
# Nearest pasting and detections from the argmax.
# ---------------------------------------------------------------------------------------------


def test_nearest_paste_gives_each_pixel_the_bin_containing_it() -> None:
    # One set bin (0, 0) of a 4x4 mask on ROI (20, 40, 60, 60): the bin spans input x [20, 30) and
    # y [40, 45), i.e. original pixel centres x in [10, 15) and y in [10, 12.5) -> a 5 x 2 block.
    labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    labels[0, 0, 0] = 1
    (nearest,) = paste_roi_masks(labels, [ROI], LETTERBOX, mode="nearest")
    expected = np.zeros((20, 40), dtype=bool)
    expected[10:12, 10:15] = True
    assert np.array_equal(nearest, expected)
    # Bilinear blends the bin with its zero neighbours (and stretches it to the ROI corner): another shape.
    (bilinear,) = paste_roi_masks(labels, [ROI], LETTERBOX)
    assert not np.array_equal(bilinear, nearest)
    with pytest.raises(ValueError, match="mode"):
        paste_roi_masks(labels, [ROI], LETTERBOX, mode="bicubic")  # type: ignore[arg-type]


def _logits_from_probs(probs: list[float], m: int = 4) -> torch.Tensor:
    """[1, 3, m, m] logits whose softmax is ``probs`` at every bin."""
    return torch.log(torch.tensor(probs)).view(1, 3, 1, 1).expand(1, 3, m, m).clone()


def test_detection_mask_is_the_argmax_even_below_half_probability() -> None:
    # P(target) = 0.4 everywhere, yet target is the argmax: mIoU counts these pixels as target, so must AP.
    rois = torch.tensor([[0.0, *ROI]])
    (det,) = roi_detections(_logits_from_probs([0.3, 0.4, 0.3]), rois, [LETTERBOX], [5], [[50]])
    expected = np.zeros((20, 40), dtype=bool)
    expected[10:20, 10:30] = True
    assert det["image_id"] == 5 and det["ann_id"] == 50
    assert np.array_equal(det["mask"], expected)
    assert det["score"] == pytest.approx(0.4)
    # The old paste of P(target) at threshold 0.5 lost every pixel.
    assert not paste_roi_masks(torch.full((1, 4, 4), 0.4), rois, LETTERBOX)[0].any()
    # "Other person" wins: no target pixel, an empty mask with score 0 (the person is still a miss).
    (other,) = roi_detections(_logits_from_probs([0.3, 0.3, 0.4]), rois, [LETTERBOX], [5], [[50]])
    assert not other["mask"].any() and other["score"] == 0.0


def test_detection_score_is_the_mean_target_probability_over_argmax_pixels() -> None:
    logits = _logits_from_probs([0.1, 0.2, 0.7])
    logits[0, :, :, :2] = torch.log(torch.tensor([0.1, 0.8, 0.1])).view(3, 1, 1)  # left half: target
    logits[0, :, 0, :2] = torch.log(torch.tensor([0.2, 0.6, 0.2])).view(3, 1)  # its top row: P = 0.6
    (det,) = roi_detections(logits, torch.tensor([[0.0, *ROI]]), [LETTERBOX], [1], [[7]])
    assert det["score"] == pytest.approx((2 * 0.6 + 6 * 0.8) / 8)
    expected = np.zeros((20, 40), dtype=bool)
    expected[10:20, 10:20] = True
    assert np.array_equal(det["mask"], expected)


def test_detections_follow_the_batch_index_of_each_roi() -> None:
    other_box = SimpleNamespace(scale=1.0, pad_x=0, pad_y=0, orig_w=80, orig_h=80)
    logits = torch.cat([_logits_from_probs([0.1, 0.8, 0.1])] * 3)
    rois = torch.tensor([[1.0, 0.0, 0.0, 8.0, 8.0], [0.0, *ROI], [1.0, 10.0, 10.0, 14.0, 14.0]])
    dets = roi_detections(logits, rois, [LETTERBOX, other_box], [100, 200], [[1000], [2000, 2001]])
    assert [(d["image_id"], d["ann_id"]) for d in dets] == [(100, 1000), (200, 2000), (200, 2001)]
    assert dets[0]["mask"].shape == (20, 40) and dets[1]["mask"].shape == (80, 80)
    assert dets[1]["mask"][:8, :8].all() and dets[1]["mask"].sum() == 64
    assert dets[2]["mask"][10:14, 10:14].all() and dets[2]["mask"].sum() == 16
    with pytest.raises(ValueError, match=r"image 1 \(image_id 200\): 2 ROIs but 1 ann_ids"):
        roi_detections(logits, rois, [LETTERBOX, other_box], [100, 200], [[1000], [2000]])
    with pytest.raises(ValueError, match="batch indices"):
        roi_detections(logits, rois, [LETTERBOX], [100], [[1000]])
    with pytest.raises(ValueError, match=r"logits must be \[N, 3, M, M\]"):
        roi_detections(logits[:, :2], rois, [LETTERBOX, other_box], [100, 200], [[1000], [2000, 2001]])


# ---------------------------------------------------------------------------------------------
# End to end: PersonRoiDataset targets fed back as predictions.
# ---------------------------------------------------------------------------------------------


def _blob(h: int, w: int, left: int, top: int, side: int) -> np.ndarray:
    """A disc touching all four sides of the side x side square at (left, top): tight bbox = the square."""
    yy, xx = np.mgrid[0:side, 0:side]
    c = (side - 1) / 2
    mask = np.zeros((h, w), dtype=bool)
    mask[top : top + side, left : left + side] = ((xx - c) / (side / 2)) ** 2 + (
        (yy - c) / (side / 2)
    ) ** 2 <= 1
    return mask


def _people_coco(root: Path) -> Path:
    """Image 1: 64x64, three overlapping 16 px people and a small 6 px one. Image 2: 64x48 (letterbox pad
    8 px, no scaling): one 16 px person, a 6 px one and a crowd region. Box sizes are exact by design."""
    people = {  # ann_id: (image_id, mask, iscrowd)
        1: (1, _blob(64, 64, 4, 4, 16), 0),
        2: (1, _blob(64, 64, 14, 10, 16), 0),
        3: (1, _blob(64, 64, 40, 30, 16), 0),
        4: (1, _blob(64, 64, 22, 12, 6), 0),  # small, inside person 2's ROI
        5: (2, _blob(48, 64, 20, 10, 16), 0),
        6: (2, _blob(48, 64, 30, 14, 6), 0),  # small, inside person 5's ROI
        7: (2, _square(48, 64, 22, 10, side=8), 1),  # crowd, overlapping person 5
    }
    annotations = []
    for ann_id, (image_id, mask, crowd) in people.items():
        rle = _rle(mask)
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        assert crowd or bbox[2] == bbox[3] in (6.0, 16.0)  # the exactness below relies on these sizes
        annotations.append(
            {"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": rle,
             "area": float(mask.sum()), "bbox": bbox, "iscrowd": crowd}
        )  # fmt: skip
    images = [(1, "one.png", 64, 64), (2, "two.png", 64, 48)]
    (root / "images").mkdir()
    for _, name, w, h in images:
        cv2.imwrite(str(root / "images" / name), np.zeros((h, w, 3), np.uint8))
    data = {
        "images": [{"id": i, "file_name": n, "width": w, "height": h} for i, n, w, h in images],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": annotations,
    }
    (root / "annotations.json").write_text(json.dumps(data))
    return root / "annotations.json"


def test_ground_truth_fed_as_prediction_scores_ap_one_over_the_people_given_a_roi(tmp_path: Path) -> None:
    # Input size 64, no letterbox scaling, ROI padding 0, mask size 16 = every ROI's size: ROI bins are
    # pixels, so targets sample each pixel once and the nearest paste puts it back exactly.
    annotations = _people_coco(tmp_path)
    dataset = PersonRoiDataset(
        annotations, tmp_path / "images", input_size=64, roi_padding=0.0, mask_size=16,
        min_instance_size=10, max_rois_per_image=2,
    )  # fmt: skip
    batch = collate_roi_samples([dataset[i] for i in range(len(dataset))])
    assert batch.ann_ids == [[1, 2], [5]]  # 3 is past the cap; 4 and 6 are small; 7 is crowd
    # Soft but correct predictions: argmax = target class, yet P(target) = 0.4 < 0.5.
    table = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.3, 0.4, 0.3], [0.3, 0.3, 0.4]]))
    logits = table[batch.targets].permute(0, 3, 1, 2)
    dets = roi_detections(logits, batch.rois, batch.letterboxes, batch.image_ids, batch.ann_ids)
    given = [a for ids in batch.ann_ids for a in ids]
    before = copy.deepcopy(dataset.coco.dataset)
    result = coco_mask_ap(dataset.coco, dets, batch.image_ids, roi_ann_ids=given)
    assert result == pytest.approx({"mask_ap": 1.0, "mask_ap50": 1.0, "mask_ap75": 1.0})
    assert dataset.coco.dataset == before
    for det in dets:  # exact, pixel by pixel
        assert np.array_equal(det["mask"], dataset.coco.annToMask(dataset.coco.anns[det["ann_id"]]) > 0)
    # The dropped people counted as misses (the bug): 3 of 6 non-crowd people found -> recall 1/2.
    assert coco_mask_ap(dataset.coco, dets, batch.image_ids, roi_ann_ids=[1, 2, 3, 4, 5, 6])[
        "mask_ap"
    ] == pytest.approx(51 / 101)
    # Thresholding P(target) at 0.5, as before, finds nothing although every argmax is right.
    probs = logits.softmax(1)
    thresholded = [
        {**det, "mask": paste_roi_masks(probs[k : k + 1, 1], batch.rois[k : k + 1], batch.letterboxes[b])[0]}
        for k, (det, b) in enumerate(zip(dets, batch.rois[:, 0].long().tolist(), strict=True))
    ]
    assert coco_mask_ap(dataset.coco, thresholded, batch.image_ids, roi_ann_ids=given)["mask_ap50"] == 0.0
