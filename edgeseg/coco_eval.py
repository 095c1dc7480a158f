"""COCO mask AP for the per-ROI heads: paste ROI masks back into the original image, score with pycocotools.

Each ROI is one detection: the pixels where the head's argmax is class 1 ("target person") — the same
decision the mIoU scores — pasted back into the original image, scored by the mean P(target) over those
pixels, and evaluated with the standard ``COCOeval(iouType="segm")`` (AP averaged over IoU 0.50:0.95,
AP50, AP75). AP is computed over the people given a ROI (``AP_SCOPE``): a person who got no ROI (below
``min_instance_size``, past ``max_rois_per_image``) is ignored like a crowd region, not counted as a
miss, because the head never saw it. The ROIs come from ground-truth boxes during training, so this is
an upper bound on what a detector-driven pipeline would get.

Pasting inverts the ROI sampling of ``edgeseg.data.targets``: bin (i, j) of an M×M mask sits at
x = x1 + (j + 0.5)(x2 − x1)/M in network-input pixels, and the letterbox maps original pixels by
x_in = x·scale + pad_x (pixel p covers [p, p + 1)). Every original pixel centre is mapped to network-input
pixels; inside the ROI [x1, x2) × [y1, y2) the mask is read there — bilinearly between bin centres (edge
bins extend to the ROI border) and thresholded, or from the bin containing the point (``mode="nearest"``,
used for argmax masks) — and outside it the result is False: the Mask R-CNN "paste" with the letterbox
undone.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from edgeseg.data.targets import TARGET

PERSON_CATEGORY = 1
NUM_CLASSES = 3
# Which people coco_mask_ap scores: those given a ROI. Everyone else is ignored (like a crowd region).
AP_SCOPE = "people given a ROI"
PasteMode = Literal["bilinear", "nearest"]


class LetterboxLike(Protocol):
    scale: float
    pad_x: int
    pad_y: int
    orig_w: int
    orig_h: int


def _pixel_window(lo: float, hi: float, pad: float, scale: float, size: int) -> tuple[int, int]:
    """Original pixels p (inclusive range) whose centre maps into [lo, hi] of network-input pixels."""
    first = max(0, math.floor((lo - pad) / scale - 0.5))
    last = min(size - 1, math.ceil((hi - pad) / scale - 0.5))
    return first, last


def _sample_roi(
    values: torch.Tensor,
    box: tuple[float, float, float, float],
    xs: torch.Tensor,
    ys: torch.Tensor,
    mode: str,
) -> torch.Tensor:
    """Mask values [M,M] read at network-input points xs (columns) × ys (rows) inside ``box``."""
    x1, y1, x2, y2 = box
    if mode == "nearest":
        # The bin containing the point: exactly the bin whose label the targets sampled at that pixel
        # when ROI bins and pixels coincide, and no interpolation between argmax labels.
        m = values.shape[-1]
        cols = torch.floor((xs - x1) / (x2 - x1) * m).clamp(0, m - 1).long()
        rows = torch.floor((ys - y1) / (y2 - y1) * m).clamp(0, m - 1).long()
        return values[rows[:, None], cols[None, :]]
    gx = 2.0 * (xs - x1) / (x2 - x1) - 1.0  # grid_sample, align_corners=False: ±1 = ROI edges
    gy = 2.0 * (ys - y1) / (y2 - y1) - 1.0
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).float().unsqueeze(0)
    # Border padding, then a hard cut at the ROI edges (by the caller): the mask is defined on the whole
    # ROI and nowhere else (zero padding would shave the ROI's edges and corners).
    return F.grid_sample(
        values[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0, 0]


def paste_roi_masks(
    roi_masks: torch.Tensor | np.ndarray,
    rois: torch.Tensor | np.ndarray,
    letterbox: LetterboxLike,
    threshold: float = 0.5,
    mode: PasteMode = "bilinear",
) -> list[np.ndarray]:
    """Full-resolution bool masks [orig_h, orig_w], one per ROI.

    ``roi_masks`` [N, M, M]: class-1 probabilities (float in [0, 1]) or label maps (integer or bool;
    pixels equal to 1 are the mask). ``rois`` [N, 4] (x1, y1, x2, y2) or [N, 5] (batch_index, x1, y1,
    x2, y2) in network-input pixels of the image that ``letterbox`` describes. A pixel is set when its
    centre lies in the ROI [x1, x2) × [y1, y2) and the mask value there is >= ``threshold``: resampled
    bilinearly between bin centres (``mode="bilinear"``) or taken from the bin that contains the centre
    (``mode="nearest"``, the paste for argmax masks: every pixel gets the decision of one bin).
    """
    masks = torch.as_tensor(roi_masks)
    boxes = torch.as_tensor(rois, dtype=torch.float64)
    if masks.dim() != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"roi_masks must be [N, M, M], got {tuple(masks.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] not in (4, 5) or boxes.shape[0] != masks.shape[0]:
        raise ValueError(f"rois must be [N, 4] or [N, 5] with N = {masks.shape[0]}, got {tuple(boxes.shape)}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if letterbox.scale <= 0:
        raise ValueError(f"letterbox.scale must be > 0, got {letterbox.scale}")
    boxes = boxes[:, -4:].cpu()
    values = (masks.float() if masks.is_floating_point() else (masks == 1).float()).cpu()
    width, height = int(letterbox.orig_w), int(letterbox.orig_h)
    scale, pad_x, pad_y = float(letterbox.scale), float(letterbox.pad_x), float(letterbox.pad_y)

    pasted = []
    for n in range(values.shape[0]):
        x1, y1, x2, y2 = (float(v) for v in boxes[n])
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"ROI {n} has no area: {(x1, y1, x2, y2)}")
        out = np.zeros((height, width), dtype=bool)
        col0, col1 = _pixel_window(x1, x2, pad_x, scale, width)
        row0, row1 = _pixel_window(y1, y2, pad_y, scale, height)
        if col0 <= col1 and row0 <= row1:
            xs = (torch.arange(col0, col1 + 1, dtype=torch.float64) + 0.5) * scale + pad_x
            ys = (torch.arange(row0, row1 + 1, dtype=torch.float64) + 0.5) * scale + pad_y
            sampled = _sample_roi(values[n], (x1, y1, x2, y2), xs, ys, mode)
            inside = ((xs >= x1) & (xs < x2))[None, :] & ((ys >= y1) & (ys < y2))[:, None]
            out[row0 : row1 + 1, col0 : col1 + 1] = ((sampled >= threshold) & inside).numpy()
        pasted.append(out)
    return pasted


def roi_detections(
    logits: torch.Tensor,
    rois: torch.Tensor,
    letterboxes: Sequence[LetterboxLike],
    image_ids: Sequence[int],
    ann_ids: Sequence[Sequence[int]],
) -> list[dict[str, Any]]:
    """One COCO detection per ROI from a batch of head outputs, for ``coco_mask_ap``.

    ``logits`` [N, 3, M, M] (any device); ``rois`` [N, 5] (batch_index, x1, y1, x2, y2) in network-input
    pixels; ``letterboxes``, ``image_ids`` and ``ann_ids`` are per image of the batch (``RoiBatch``
    fields): ``ann_ids[b]`` holds the annotation id of each ROI of image b, in row order. The mask is the
    pixels whose argmax over the three classes is class 1 — the decision mIoU scores — pasted into the
    original image with ``mode="nearest"``; the score is the mean P(target) over those pixels, 0 when
    there are none (the detection is kept: its person still counts as a miss). Returns dicts
    ``{"image_id", "ann_id", "mask" (bool [orig_h, orig_w]), "score"}``, in ROI row order.
    """
    if logits.dim() != 4 or logits.shape[1] != NUM_CLASSES or logits.shape[2] != logits.shape[3]:
        raise ValueError(f"logits must be [N, {NUM_CLASSES}, M, M], got {tuple(logits.shape)}")
    if rois.dim() != 2 or rois.shape != (logits.shape[0], 5):
        raise ValueError(f"rois must be [N, 5] with N = {logits.shape[0]}, got {tuple(rois.shape)}")
    if not len(letterboxes) == len(image_ids) == len(ann_ids):
        raise ValueError(
            f"letterboxes ({len(letterboxes)}), image_ids ({len(image_ids)}) and ann_ids ({len(ann_ids)}) "
            "must have one entry per image"
        )
    probs = logits.detach().float().softmax(1).cpu()
    target = probs.argmax(1) == TARGET
    batch_index = rois[:, 0].detach().cpu().long()
    if len(batch_index) and not (int(batch_index.min()) >= 0 and int(batch_index.max()) < len(image_ids)):
        raise ValueError(
            f"rois batch indices {sorted(set(batch_index.tolist()))} out of range for {len(image_ids)} images"
        )
    detections: list[dict[str, Any]] = []
    for b in range(len(image_ids)):
        rows = (batch_index == b).nonzero().flatten()
        if len(rows) != len(ann_ids[b]):
            raise ValueError(
                f"image {b} (image_id {image_ids[b]}): {len(rows)} ROIs but {len(ann_ids[b])} ann_ids"
            )
        if len(rows) == 0:
            continue
        masks = paste_roi_masks(target[rows], rois[rows, 1:].detach().cpu(), letterboxes[b], mode="nearest")
        for k, ann_id, mask in zip(rows.tolist(), ann_ids[b], masks, strict=True):
            score = float(probs[k, TARGET][target[k]].mean()) if bool(target[k].any()) else 0.0
            detections.append(
                {"image_id": int(image_ids[b]), "ann_id": int(ann_id), "mask": mask, "score": score}
            )
    return detections


def _encode(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _coco_results(
    gt_coco: Any, detections: Sequence[dict[str, Any]], roi_ann_ids: set[int], category_id: int
) -> list[dict[str, Any]]:
    """Checked, RLE-encoded ``loadRes`` entries of ``detections``."""
    results = []
    for k, det in enumerate(detections):
        for key in ("image_id", "ann_id", "mask", "score"):
            if key not in det:
                raise KeyError(f"detection {k} has no {key!r} (keys {sorted(det)})")
        image_id, ann_id = int(det["image_id"]), int(det["ann_id"])
        if image_id not in gt_coco.imgs:
            raise ValueError(f"detection {k}: image_id {image_id} is not in the ground truth")
        if ann_id not in gt_coco.anns or int(gt_coco.anns[ann_id]["image_id"]) != image_id:
            raise ValueError(f"detection {k}: ann_id {ann_id} is not an annotation of image_id {image_id}")
        if ann_id not in roi_ann_ids:
            raise ValueError(f"detection {k}: ann_id {ann_id} was not given a ROI (it is not in roi_ann_ids)")
        info = gt_coco.imgs[image_id]
        mask = np.asarray(det["mask"], dtype=bool)
        if mask.shape != (info["height"], info["width"]):
            raise ValueError(
                f"detection {k} (image_id {image_id}, ann_id {ann_id}): mask is {mask.shape}, "
                f"the image is {(info['height'], info['width'])}"
            )
        score = float(det["score"])
        results.append(
            {"image_id": image_id, "category_id": category_id, "segmentation": _encode(mask), "score": score}
        )
    return results


def _roi_scoped_ground_truth(gt_coco: Any, roi_ann_ids: set[int]) -> COCO:
    """A copy of ``gt_coco`` where every annotation without a ROI is a crowd region (ignored).

    COCOeval derives ``ignore`` from ``iscrowd`` (it overwrites an ``ignore`` field), so ``iscrowd`` is
    what marks them; ``ignore`` is set too for readers. Every annotation dict is copied because COCOeval
    writes ``ignore`` and RLE segmentations into the dicts it evaluates: the caller's COCO stays intact.
    """
    annotations = []
    for ann in gt_coco.dataset.get("annotations", []):
        copy = dict(ann)
        if int(ann["id"]) not in roi_ann_ids:
            copy["iscrowd"], copy["ignore"] = 1, 1
        annotations.append(copy)
    scoped = COCO()
    scoped.dataset = {**gt_coco.dataset, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        scoped.createIndex()
    return scoped


def _summary(evaluator: COCOeval) -> dict[str, float]:
    """AP at IoU 0.50:0.95, 0.50 and 0.75 with maxDets = 100 and all areas, as ``COCOeval.summarize``."""
    precision = evaluator.eval["precision"]  # [T IoU thresholds, R recall points, K, A areas, M maxDets]
    thresholds = evaluator.params.iouThrs

    def mean_precision(t: slice | int) -> float:
        p = precision[t, :, 0, 0, -1]
        p = p[p > -1]
        return float(p.mean()) if p.size else float("nan")

    return {
        "mask_ap": mean_precision(slice(None)),
        "mask_ap50": mean_precision(int(np.argmin(np.abs(thresholds - 0.5)))),
        "mask_ap75": mean_precision(int(np.argmin(np.abs(thresholds - 0.75)))),
    }


def coco_mask_ap(
    gt_coco: Any,
    detections: Sequence[dict[str, Any]],
    image_ids: Iterable[int] | None = None,
    category_id: int = PERSON_CATEGORY,
    *,
    roi_ann_ids: Iterable[int],
) -> dict[str, float]:
    """COCO segmentation AP of ``detections`` over the people given a ROI (``AP_SCOPE``).

    ``gt_coco`` is a ``pycocotools.coco.COCO``; it is not modified. Each detection is ``{"image_id",
    "ann_id" (the ground-truth instance whose ROI produced it), "mask" (bool [H, W] at the image's
    original size), "score"}`` (``roi_detections`` makes them). ``roi_ann_ids``: the annotation ids of
    every person given a ROI (required: the scope must be explicit). Only those people count: all
    other ground truth of the evaluated images — below ``min_instance_size``, past
    ``max_rois_per_image`` — is ignored like a crowd region, so it is neither a miss nor, when a mask
    covers it, a false positive. A ROI person without a detection is a miss. Masks are RLE-encoded,
    loaded with ``loadRes`` and evaluated by ``COCOeval(iouType="segm")`` restricted to ``category_id``
    and ``image_ids`` (default: every image of ``gt_coco``). Returns ``mask_ap`` (IoU 0.50:0.95),
    ``mask_ap50``, ``mask_ap75`` with maxDets = 100 and all areas; NaN where no ROI person of the
    category is in the evaluated images, 0 when there is one but no detection.
    """
    images = sorted(gt_coco.getImgIds() if image_ids is None else {int(i) for i in image_ids})
    missing_images = [i for i in images if i not in gt_coco.imgs]
    if missing_images:
        raise ValueError(f"image_ids {missing_images[:10]} are not in the ground truth")
    roi_set = {int(a) for a in roi_ann_ids}
    unknown = sorted(a for a in roi_set if a not in gt_coco.anns)
    if unknown:
        raise ValueError(f"roi_ann_ids {unknown[:10]} are not annotations of the ground truth")
    results = _coco_results(gt_coco, detections, roi_set, category_id)

    scored = [
        a
        for a in gt_coco.loadAnns(gt_coco.getAnnIds(imgIds=images, catIds=[category_id]))
        if int(a["id"]) in roi_set and not a.get("iscrowd", 0)
    ]
    if not results:
        value = 0.0 if scored else float("nan")
        return {"mask_ap": value, "mask_ap50": value, "mask_ap75": value}
    scoped = _roi_scoped_ground_truth(gt_coco, roi_set)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        evaluator = COCOeval(scoped, scoped.loadRes(results), iouType="segm")
        evaluator.params.imgIds = images
        evaluator.params.catIds = [category_id]
        evaluator.evaluate()
        evaluator.accumulate()
    return _summary(evaluator)
