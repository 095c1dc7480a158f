"""Metrics on hand-made label maps; every expected value is counted by hand in the test."""

from __future__ import annotations

import math

import pytest
import torch

from edgeseg.metrics import (
    MetricAccumulator,
    boundary_f_score,
    confusion_counts,
    mask_boundary,
    per_roi_iou,
)


def _logits_from(labels: torch.Tensor) -> torch.Tensor:
    """Logits whose argmax is ``labels``."""
    return torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 5.0


def test_confusion_counts_by_hand() -> None:
    targets = torch.tensor([[[0, 1], [2, 2]]])
    pred = torch.tensor([[[0, 2], [2, 1]]])
    expected = torch.tensor([[1, 0, 0], [0, 0, 1], [0, 1, 1]])  # [target, pred]
    assert torch.equal(confusion_counts(pred, targets), expected)


def test_per_roi_iou_empty_union_cases() -> None:
    targets = torch.tensor(
        [
            [[1, 1], [0, 0]],  # ROI 0: no class 2 anywhere, class 1 predicted perfectly
            [[1, 0], [2, 0]],  # ROI 1: class 2 present but missed
            [[0, 0], [0, 0]],  # ROI 2: class 1 predicted where there is none
        ]
    )
    pred = torch.tensor(
        [
            [[1, 1], [0, 0]],
            [[1, 1], [0, 0]],
            [[1, 0], [0, 0]],
        ]
    )
    one = per_roi_iou(pred, targets, (1, 2), empty="one")
    nan = per_roi_iou(pred, targets, (1, 2), empty="nan")
    assert one.tolist() == [[1.0, 1.0], [0.5, 0.0], [0.0, 1.0]]
    assert nan[:, 0].tolist() == [1.0, 0.5, 0.0]
    assert math.isnan(nan[0, 1]) and nan[1, 1].item() == 0.0 and math.isnan(nan[2, 1])
    with pytest.raises(ValueError, match="'zero'"):
        per_roi_iou(pred, targets, empty="zero")


def test_dataset_level_and_per_roi_miou_differ() -> None:
    # ROI A: target 1 on 4 px, predicted 1 on 2 of them and on 2 background px; no class 2 anywhere.
    # ROI B: target 1 on 2 px (predicted exactly), class 2 on 4 px of which 1 predicted.
    targets = torch.zeros(2, 4, 4, dtype=torch.long)
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    targets[0, 0, 0:4] = 1
    pred[0, 0, 0:2] = 1
    pred[0, 1, 0:2] = 1
    targets[1, 0, 0:2] = 1
    pred[1, 0, 0:2] = 1
    targets[1, 3, 0:4] = 2
    pred[1, 3, 0] = 2

    acc = MetricAccumulator()
    acc.update(_logits_from(pred), targets)
    m = acc.compute()
    # Dataset level: class 1 ∩ = 2 + 2 = 4, ∪ = 6 + 2 = 8; class 2 ∩ = 1, ∪ = 4.
    assert m["iou_target"] == pytest.approx(4 / 8)
    assert m["iou_other"] == pytest.approx(1 / 4)
    assert m["miou"] == pytest.approx((4 / 8 + 1 / 4) / 2)
    # Per ROI: A → (2/6, empty union = 1), B → (1, 1/4).
    assert m["miou_per_roi"] == pytest.approx((2 / 6 + 1.0 + 1.0 + 1 / 4) / 4)
    assert m["miou_per_roi_nonempty"] == pytest.approx((2 / 6 + 1.0 + 1 / 4) / 3)
    assert m["miou_per_roi"] > m["miou_per_roi_nonempty"] > m["miou"]
    # Background: A has 12 bg px of which 10 predicted bg, 12 predicted bg → ∩ 10, ∪ 14;
    # B has 10 bg px all predicted bg, 13 predicted bg (3 missed class-2 px) → ∩ 10, ∪ 13.
    assert m["iou_background"] == pytest.approx(20 / 27)
    assert m["pixel_accuracy"] == pytest.approx((32 - 2 - 2 - 3) / 32)


def test_accumulates_over_batches() -> None:
    targets = torch.tensor([[[1, 1], [2, 0]], [[1, 0], [0, 2]]])
    pred = torch.tensor([[[1, 0], [2, 0]], [[1, 1], [0, 2]]])
    whole, split = MetricAccumulator(), MetricAccumulator()
    whole.update(_logits_from(pred), targets)
    split.update(_logits_from(pred[:1]), targets[:1])
    split.update(_logits_from(pred[1:]), targets[1:])
    a, b = whole.compute(), split.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True), key
    # class 1: ∩ = 1 + 1, ∪ = 2 + 2 → 0.5; class 2: ∩ = ∪ = 2 → 1.
    assert a["iou_target"] == pytest.approx(0.5) and a["iou_other"] == pytest.approx(1.0)


def test_undefined_class_is_nan_and_skipped_in_miou() -> None:
    targets = torch.tensor([[[1, 1], [0, 0]]])
    acc = MetricAccumulator()
    acc.update(_logits_from(targets), targets)
    m = acc.compute()
    assert math.isnan(m["iou_other"])
    assert m["miou"] == pytest.approx(1.0)
    assert m["miou_per_roi_nonempty"] == pytest.approx(1.0)  # the empty class-2 entry is left out


def test_mask_boundary_is_the_inner_contour() -> None:
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 1:4, 1:4] = True
    expected = mask.clone()
    expected[0, 2, 2] = False  # the centre has all four neighbours inside
    assert torch.equal(mask_boundary(mask), expected)


def test_boundary_f_on_a_shifted_mask() -> None:
    targets = torch.zeros(1, 8, 8, dtype=torch.long)
    targets[0, 2:6, 2:6] = 1
    pred = torch.zeros(1, 8, 8, dtype=torch.long)
    pred[0, 2:6, 3:7] = 1  # shifted one column right
    # 12 contour pixels each; shared: rows 2 and 5 at columns 3..5 → 6. P = R = 6/12.
    exact = boundary_f_score(pred, targets, (1, 2), tolerance=0)
    assert exact[0, 0].item() == pytest.approx(0.5)
    assert math.isnan(exact[0, 1])  # no class 2 in target or prediction: nothing to score
    # Every contour pixel of one is 1 px from the other's contour.
    assert boundary_f_score(pred, targets, (1,), tolerance=1)[0, 0].item() == pytest.approx(1.0)
    acc = MetricAccumulator(boundary_tolerance=0)
    acc.update(_logits_from(pred), targets)
    m = acc.compute()
    assert m["boundary_f"] == pytest.approx(0.5)
    assert m["pixel_accuracy"] == pytest.approx((64 - 8) / 64)


def test_boundary_f_when_only_one_side_has_a_contour() -> None:
    targets = torch.zeros(1, 6, 6, dtype=torch.long)
    targets[0, 1:4, 1:4] = 2
    pred = torch.zeros(1, 6, 6, dtype=torch.long)
    assert boundary_f_score(pred, targets, (2,), tolerance=2)[0, 0].item() == 0.0


def test_compute_without_data_raises() -> None:
    with pytest.raises(ValueError, match="update"):
        MetricAccumulator().compute()
    with pytest.raises(ValueError, match=r"\(1, 2, 2\)"):
        MetricAccumulator().update(torch.zeros(1, 3, 3, 3), torch.zeros(1, 2, 2, dtype=torch.long))


def test_pred_share_counts_predicted_pixels_and_shows_a_collapsed_class() -> None:
    targets = torch.tensor([[[0, 1], [2, 2]]])
    acc = MetricAccumulator()
    acc.update_labels(torch.tensor([[[0, 1], [1, 0]]]), targets)  # "other" is never predicted
    m = acc.compute()
    assert (m["pred_share_background"], m["pred_share_target"], m["pred_share_other"]) == (0.5, 0.5, 0.0)
    acc.update_labels(torch.tensor([[[2, 2], [2, 2]]]), targets)
    assert acc.compute()["pred_share_other"] == pytest.approx(4 / 8)
