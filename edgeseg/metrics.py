"""Segmentation metrics for per-ROI 3-class masks: IoU (dataset-level and per-ROI) and boundary F-score.

Prediction = argmax over the 3 logits; classes 0 background, 1 target person, 2 other persons.

Two mIoU definitions exist and they are not comparable (original-system.md §12, §17.10):

* **dataset-level** (the main metric, ``miou``): for each class, IoU = Σ_ROIs |P∩T| / Σ_ROIs |P∪T| over
  the whole evaluation set, then the mean over classes 1 and 2. A ROI without class-2 pixels adds
  nothing to the class-2 sums, so correctly predicting "no other person" earns no credit.
* **per-ROI** (the original's, ``miou_per_roi``): IoU per ROI and class with IoU = 1 when the union is
  empty (class neither present nor predicted), then the mean of the pooled list of per-ROI IoUs of
  classes 1 and 2. Every ROI without other persons that is predicted without class 2 contributes a
  perfect 1.0, which inflates the mean. ``miou_per_roi_nonempty`` drops those empty-union entries.

Functions are pure; ``MetricAccumulator`` only sums counts over batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from edgeseg.config import CLASS_NAMES, NUM_CLASSES
from edgeseg.losses import distance_to_mask, label_boundaries

FOREGROUND = (1, 2)
EMPTY_RULES = ("one", "nan")


def _check_labels(pred: Tensor, targets: Tensor) -> None:
    if pred.dim() != 3 or pred.shape != targets.shape:
        raise ValueError(
            f"pred and targets must both be [N, M, M] label maps, got {tuple(pred.shape)} and {tuple(targets.shape)}"
        )


def confusion_counts(pred: Tensor, targets: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """int64 [C, C] pixel counts: entry [t, p] = number of pixels with target t predicted as p."""
    _check_labels(pred, targets)
    index = targets.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_roi_iou(
    pred: Tensor, targets: Tensor, classes: Sequence[int] = FOREGROUND, empty: str = "one"
) -> Tensor:
    """float32 [N, K]: IoU = |P∩T| / |P∪T| of each ROI n and each class in ``classes``.

    Empty union (the class is neither in the target nor in the prediction of that ROI): ``empty="one"``
    gives 1.0 (the original definition, which inflates mIoU), ``empty="nan"`` gives NaN so that a
    ``nanmean`` skips it.
    """
    _check_labels(pred, targets)
    if empty not in EMPTY_RULES:
        raise ValueError(f"empty must be one of {EMPTY_RULES}, got {empty!r}")
    index = torch.as_tensor(list(classes), device=pred.device).view(1, -1, 1, 1)
    p = pred.unsqueeze(1) == index
    t = targets.unsqueeze(1) == index
    intersection = (p & t).sum(dim=(2, 3)).float()
    union = (p | t).sum(dim=(2, 3)).float()
    fill = 1.0 if empty == "one" else float("nan")
    return torch.where(union > 0, intersection / union.clamp_min(1.0), torch.full_like(union, fill))


def mask_boundary(mask: Tensor) -> Tensor:
    """bool [N, H, W]: pixels of ``mask`` with a 4-neighbour outside it (the ROI border is no contour)."""
    return label_boundaries(mask.to(torch.uint8)) & mask


def boundary_f_score(
    pred: Tensor, targets: Tensor, classes: Sequence[int] = FOREGROUND, tolerance: float = 2.0
) -> Tensor:
    """float32 [N, K]: boundary F-score per ROI and class (Csurka et al., BMVC 2013; the DAVIS F measure).

    B_p and B_t are the contours (``mask_boundary``) of the predicted and the target mask of the class.
    precision = fraction of B_p within Euclidean distance ``tolerance`` (pixels, inclusive) of B_t;
    recall = fraction of B_t within ``tolerance`` of B_p; F = 2PR / (P + R), 0 when P + R = 0.
    NaN when neither mask has a contour (nothing to score); 0 when only one of them has one.
    """
    _check_labels(pred, targets)
    if tolerance < 0:
        raise ValueError(f"boundary tolerance must be >= 0 pixels, got {tolerance}")
    scores = []
    for c in classes:
        pred_edge, target_edge = mask_boundary(pred == c), mask_boundary(targets == c)
        near_target = torch.isfinite(distance_to_mask(target_edge, tolerance))
        near_pred = torch.isfinite(distance_to_mask(pred_edge, tolerance))
        n_pred = pred_edge.sum(dim=(1, 2)).float()
        n_target = target_edge.sum(dim=(1, 2)).float()
        precision = (pred_edge & near_target).sum(dim=(1, 2)).float() / n_pred.clamp_min(1.0)
        recall = (target_edge & near_pred).sum(dim=(1, 2)).float() / n_target.clamp_min(1.0)
        f = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
        f = torch.where((n_pred == 0) & (n_target == 0), torch.full_like(f, float("nan")), f)
        scores.append(f)
    return torch.stack(scores, dim=1)


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


class MetricAccumulator:
    """Sums the counts behind every metric over evaluation batches; ``compute`` turns them into floats.

    ``compute()`` returns:

    * ``iou_background``, ``iou_target``, ``iou_other``: dataset-level IoU of class 0, 1, 2,
      Σ|P∩T| / Σ|P∪T| over all ROIs seen; NaN for a class that is nowhere in targets or predictions;
    * ``miou``: mean of ``iou_target`` and ``iou_other`` (NaN entries skipped) — the main metric;
    * ``miou_per_roi``: the original's definition — mean of the pooled per-ROI IoUs of classes 1 and 2
      with IoU = 1 for an empty union (``per_roi_iou(empty="one")``);
    * ``miou_per_roi_nonempty``: the same pool without the empty-union entries;
    * ``boundary_f``: mean of ``boundary_f_score`` over ROI/class pairs (classes 1 and 2) that have a
      contour in the target or the prediction, with ``boundary_tolerance`` pixels of tolerance;
    * ``pixel_accuracy``: fraction of all pixels (all classes) predicted correctly;
    * ``pred_share_background``, ``pred_share_target``, ``pred_share_other``: fraction of all pixels
      predicted as each class (0 for a class the head never predicts: a collapsed head).
    """

    def __init__(self, boundary_tolerance: float = 2.0) -> None:
        if boundary_tolerance < 0:
            raise ValueError(f"boundary_tolerance must be >= 0 pixels, got {boundary_tolerance}")
        self.boundary_tolerance = boundary_tolerance
        self.confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
        self.rois = 0
        self.per_roi_sum = 0.0  # Σ per-ROI IoU, empty union = 1, classes 1 and 2 pooled
        self.nonempty_sum = 0.0
        self.nonempty_count = 0
        self.boundary_sum = 0.0
        self.boundary_count = 0

    def update(self, logits: Tensor, targets: Tensor) -> None:
        """Add a batch: ``logits`` [N, 3, M, M], ``targets`` [N, M, M] in {0, 1, 2}."""
        if logits.dim() != 4 or logits.shape[1] != NUM_CLASSES:
            raise ValueError(f"logits must be [N, {NUM_CLASSES}, M, M], got {tuple(logits.shape)}")
        pred = logits.argmax(dim=1)
        self.update_labels(pred, targets)

    def update_labels(self, pred: Tensor, targets: Tensor) -> None:
        """Add a batch of predicted label maps ``pred`` [N, M, M]."""
        _check_labels(pred, targets)
        targets = targets.to(pred.device)
        self.confusion += confusion_counts(pred, targets).cpu()
        iou = per_roi_iou(pred, targets, FOREGROUND, empty="nan")
        defined = ~torch.isnan(iou)
        self.rois += pred.shape[0]
        self.nonempty_sum += float(iou[defined].sum())
        self.nonempty_count += int(defined.sum())
        self.per_roi_sum += float(iou[defined].sum()) + float((~defined).sum())  # empty union counts 1
        f = boundary_f_score(pred, targets, FOREGROUND, self.boundary_tolerance)
        scored = ~torch.isnan(f)
        self.boundary_sum += float(f[scored].sum())
        self.boundary_count += int(scored.sum())

    def merge_ranks(self, sum_over_ranks: Callable[[list[float]], list[float]]) -> None:
        """Replace every count by its sum over the ranks of a process group (``World.sum``), so that
        ``compute`` gives the metrics of the union of the ranks' batches."""
        fields = [self.rois, self.per_roi_sum, self.nonempty_sum, self.nonempty_count]
        fields += [self.boundary_sum, self.boundary_count]
        flat = sum_over_ranks([float(v) for v in self.confusion.flatten().tolist()] + fields)
        cells = self.confusion.numel()
        self.confusion = torch.tensor([round(v) for v in flat[:cells]], dtype=torch.int64).view_as(
            self.confusion
        )
        rois, self.per_roi_sum, self.nonempty_sum, nonempty, self.boundary_sum, boundary = flat[cells:]
        self.rois, self.nonempty_count, self.boundary_count = round(rois), round(nonempty), round(boundary)

    def compute(self) -> dict[str, float]:
        if self.rois == 0:
            raise ValueError("MetricAccumulator.compute() called before any ROI was added with update()")
        c = self.confusion.double()
        intersection = c.diagonal()
        union = c.sum(dim=0) + c.sum(dim=1) - intersection
        iou = [float(i / u) if u > 0 else float("nan") for i, u in zip(intersection, union, strict=True)]
        nan = float("nan")
        return {
            "miou": _nanmean(iou[1:]),
            "iou_background": iou[0],
            "iou_target": iou[1],
            "iou_other": iou[2],
            "miou_per_roi": self.per_roi_sum / (self.rois * len(FOREGROUND)),
            "miou_per_roi_nonempty": self.nonempty_sum / self.nonempty_count if self.nonempty_count else nan,
            "boundary_f": self.boundary_sum / self.boundary_count if self.boundary_count else nan,
            "pixel_accuracy": float(intersection.sum() / c.sum()),
            **{
                f"pred_share_{name}": float(share)
                for name, share in zip(CLASS_NAMES, c.sum(dim=0) / c.sum(), strict=True)
            },
        }
