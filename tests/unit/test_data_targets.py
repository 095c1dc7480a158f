"""ROI construction and 3-class targets, checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeseg.data.targets import roi_from_box, roi_targets


def test_roi_from_box_pads_by_fraction_of_width_and_height() -> None:
    # box 100x50 at (10, 20): pad 0.1*100 = 10 left/right, 0.1*50 = 5 top/bottom, no truncation
    roi = roi_from_box(np.array([10.0, 20.0, 110.0, 70.0]), 0.1, 640)
    assert roi.dtype == np.float32
    np.testing.assert_allclose(roi, [0.0, 15.0, 120.0, 75.0])
    roi = roi_from_box(np.array([10.5, 20.25, 30.5, 40.25]), 0.25, 640)  # w = h = 20 -> pad 5
    np.testing.assert_allclose(roi, [5.5, 15.25, 35.5, 45.25])


def test_roi_from_box_clips_to_the_input_and_keeps_one_pixel() -> None:
    np.testing.assert_allclose(
        roi_from_box(np.array([600.0, -5.0, 700.0, 30.0]), 0.0, 640), [600, 0, 640, 30]
    )
    # a zero-width box at the right edge becomes one pixel wide, still inside the image
    roi = roi_from_box(np.array([640.0, 10.0, 640.0, 20.0]), 0.1, 640)
    np.testing.assert_allclose(roi, [639.0, 9.0, 640.0, 21.0])
    roi = roi_from_box(np.array([100.2, 50.0, 100.4, 60.0]), 0.0, 640)
    np.testing.assert_allclose(roi[[0, 2]], [99.8, 100.8], atol=1e-5)


def _hand_targets(rects, target, roi, m):
    """Reference: label of each bin centre, by point-in-rectangle tests (rects are pixel ranges)."""
    x1, y1, x2, y2 = roi
    out = np.zeros((m, m), dtype=np.int64)
    for i in range(m):
        for j in range(m):
            px = math.floor(x1 + (j + 0.5) * (x2 - x1) / m)
            py = math.floor(y1 + (i + 0.5) * (y2 - y1) / m)
            inside = [rx0 <= px < rx1 and ry0 <= py < ry1 for (rx0, ry0, rx1, ry1) in rects]
            out[i, j] = 1 if inside[target] else (2 if any(inside) else 0)
    return out


def _rect_masks(rects, size):
    masks = np.zeros((len(rects), size, size), dtype=bool)
    for k, (x0, y0, x1, y1) in enumerate(rects):
        masks[k, y0:y1, x0:x1] = True
    return masks


def test_roi_targets_overlap_target_wins_and_other_is_two() -> None:
    # Two 4x4 squares overlapping on column 3; ROI = exactly the pixels 0..7 x 0..3 with M = 8 samples
    # one pixel per bin: the target map is the mask crop itself.
    rects = [(0, 0, 4, 4), (3, 0, 7, 4)]
    masks = _rect_masks(rects, 16)
    targets = roi_targets(masks, np.array([[0, 0, 8, 4]], np.float32), np.array([0]), 8)
    # non-square ROI (8x4) resampled to 8x8: rows repeat each source row twice
    expected_row = [1, 1, 1, 1, 2, 2, 2, 0]
    assert targets.dtype == np.int64 and targets.shape == (1, 8, 8)
    assert (targets[0] == np.array([expected_row] * 8)).all()
    other = roi_targets(masks, np.array([[0, 0, 8, 4]], np.float32), np.array([1]), 8)
    assert other[0, 0].tolist() == [2, 2, 2, 1, 1, 1, 1, 0]


def test_roi_targets_sample_bin_centres_in_continuous_coordinates() -> None:
    rects = [(5, 5, 20, 30), (15, 10, 40, 40), (0, 35, 8, 40)]
    masks = _rect_masks(rects, 48)
    rois = np.array([[3.3, 4.1, 25.7, 33.9], [12.0, 8.0, 44.5, 47.5], [0.0, 0.0, 48.0, 48.0]], np.float32)
    ids = np.array([0, 1, 2])
    got = roi_targets(masks, rois, ids, 7)
    for r in range(3):
        expected = _hand_targets(rects, ids[r], rois[r].astype(np.float64), 7)
        assert (got[r] == expected).all(), f"roi {r}"


def test_roi_targets_validate_shapes() -> None:
    masks = np.zeros((2, 8, 8), bool)
    with pytest.raises(ValueError, match="target ids"):
        roi_targets(masks, np.zeros((1, 4), np.float32), np.array([2]), 4)
    with pytest.raises(ValueError, match=r"\[K,S,S\]"):
        roi_targets(np.zeros((8, 8), bool), np.zeros((1, 4), np.float32), np.array([0]), 4)


def test_people_without_a_roi_paint_other_through_a_union_mask() -> None:
    # Row 2 is the union of two people without a ROI (a small one and a crowd region) as the data set
    # passes it: class 2 wherever it is set, except where the target person is (the target wins).
    masks = _rect_masks([(0, 0, 4, 8), (4, 0, 8, 8)], 8)
    others = np.zeros((1, 8, 8), bool)
    others[0, 0:2, 6:8] = True  # small person, inside person 1
    others[0, 6:8, 2:6] = True  # crowd region, half on the target
    targets = roi_targets(np.concatenate([masks, others]), np.array([[0, 0, 8, 8]], np.float32), [0], 8)[0]
    expected = np.zeros((8, 8), np.int64)
    expected[:, 0:4] = 1  # the target wins over the half of the crowd region on it
    expected[:, 4:8] = 2  # person 1, the small person on it and the other half of the crowd region
    np.testing.assert_array_equal(targets, expected)
    # From person 1's point of view person 0 is "other"; person 1 wins over the small person on it.
    expected_1 = np.zeros((8, 8), np.int64)
    expected_1[:, 0:4], expected_1[:, 4:8] = 2, 1
    roi = np.array([[0, 0, 8, 8]], np.float32)
    np.testing.assert_array_equal(roi_targets(np.concatenate([masks, others]), roi, [1], 8)[0], expected_1)
