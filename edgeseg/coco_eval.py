"""COCO mask AP for the per-ROI heads: paste ROI masks back into the original image, score with pycocotools.

Each ROI is one detection: the head's class-1 ("target person") mask of the ROI, pasted back into the
original image, scored and evaluated with the standard ``COCOeval(iouType="segm")`` (AP averaged over
IoU 0.50:0.95, AP50, AP75). This measures the same thing as the COCO instance-segmentation benchmark,
given the ROIs (the ROIs come from ground-truth boxes during training, so it is an upper bound on what a
detector-driven pipeline would get).

Pasting inverts the ROI sampling of ``edgeseg.data.targets``: bin (i, j) of an M×M mask sits at
x = x1 + (j + 0.5)(x2 − x1)/M in network-input pixels, and the letterbox maps original pixels by
x_in = x·scale + pad_x (pixel p covers [p, p + 1)). Every original pixel centre is mapped to network-input
pixels; inside the ROI [x1, x2) × [y1, y2) the mask is sampled bilinearly between bin centres (edge bins
extend to the ROI border) and thresholded, outside it the result is False — the Mask R-CNN "paste" with
the letterbox undone.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

PERSON_CATEGORY = 1


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


def paste_roi_masks(
    roi_masks: torch.Tensor | np.ndarray,
    rois: torch.Tensor | np.ndarray,
    letterbox: LetterboxLike,
    threshold: float = 0.5,
) -> list[np.ndarray]:
    """Full-resolution bool masks [orig_h, orig_w], one per ROI.

    ``roi_masks`` [N, M, M]: class-1 probabilities (float in [0, 1]) or label maps (integer or bool;
    pixels equal to 1 are the mask). ``rois`` [N, 4] (x1, y1, x2, y2) or [N, 5] (batch_index, x1, y1,
    x2, y2) in network-input pixels of the image that ``letterbox`` describes. A pixel is set when its
    centre lies in the ROI [x1, x2) × [y1, y2) and the bilinearly resampled value there is >=
    ``threshold``.
    """
    masks = torch.as_tensor(roi_masks)
    boxes = torch.as_tensor(rois, dtype=torch.float64)
    if masks.dim() != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"roi_masks must be [N, M, M], got {tuple(masks.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] not in (4, 5) or boxes.shape[0] != masks.shape[0]:
        raise ValueError(f"rois must be [N, 4] or [N, 5] with N = {masks.shape[0]}, got {tuple(boxes.shape)}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
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
            gx = 2.0 * (xs - x1) / (x2 - x1) - 1.0  # grid_sample, align_corners=False: ±1 = ROI edges
            gy = 2.0 * (ys - y1) / (y2 - y1) - 1.0
            grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).float().unsqueeze(0)
            # Border padding, then a hard cut at the ROI edges: the mask is defined on the whole ROI and
            # nowhere else (zero padding would shave the ROI's edges and corners).
            sampled = F.grid_sample(
                values[n][None, None], grid, mode="bilinear", padding_mode="border", align_corners=False
            )[0, 0]
            inside = ((xs >= x1) & (xs < x2))[None, :] & ((ys >= y1) & (ys < y2))[:, None]
            out[row0 : row1 + 1, col0 : col1 + 1] = ((sampled >= threshold) & inside).numpy()
        pasted.append(out)
    return pasted


def _encode(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_mask_ap(
    gt_coco: Any,
    detections: Sequence[dict[str, Any]],
    image_ids: Iterable[int] | None = None,
    category_id: int = PERSON_CATEGORY,
) -> dict[str, float]:
    """COCO segmentation AP of ``detections`` against ``gt_coco`` (a ``pycocotools.coco.COCO``).

    Each detection is ``{"image_id", "ann_id" (the ground-truth instance whose ROI produced it), "mask"
    (bool [H, W] at the image's original size), "score"}``. Masks are RLE-encoded, loaded with
    ``gt_coco.loadRes`` and evaluated by ``COCOeval(iouType="segm")`` restricted to ``category_id`` and
    to ``image_ids`` (default: every image of ``gt_coco``, so images without detections count as
    misses). Returns ``ap`` (IoU 0.50:0.95), ``ap50``, ``ap75`` with maxDets = 100 and all areas, as in
    ``COCOeval.summarize``; NaN where the evaluated images hold no ground truth of the category, 0 when
    there is ground truth but no detection.
    """
    images = sorted(gt_coco.getImgIds() if image_ids is None else {int(i) for i in image_ids})
    known = set(gt_coco.getImgIds())
    missing_images = [i for i in images if i not in known]
    if missing_images:
        raise ValueError(f"image_ids {missing_images[:10]} are not in the ground truth")
    results = []
    for k, det in enumerate(detections):
        for key in ("image_id", "ann_id", "mask", "score"):
            if key not in det:
                raise KeyError(f"detection {k} has no {key!r} (keys {sorted(det)})")
        image_id, ann_id = int(det["image_id"]), int(det["ann_id"])
        if image_id not in known:
            raise ValueError(f"detection {k}: image_id {image_id} is not in the ground truth")
        if ann_id not in gt_coco.anns or int(gt_coco.anns[ann_id]["image_id"]) != image_id:
            raise ValueError(f"detection {k}: ann_id {ann_id} is not an annotation of image_id {image_id}")
        info = gt_coco.imgs[image_id]
        mask = np.asarray(det["mask"], dtype=bool)
        if mask.shape != (info["height"], info["width"]):
            raise ValueError(
                f"detection {k} (image_id {image_id}, ann_id {ann_id}): mask is {mask.shape}, "
                f"the image is {(info['height'], info['width'])}"
            )
        results.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": _encode(mask),
                "score": float(det["score"]),
            }
        )

    has_gt = bool(gt_coco.getAnnIds(imgIds=images, catIds=[category_id]))
    if not results:
        value = 0.0 if has_gt else float("nan")
        return {"ap": value, "ap50": value, "ap75": value}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        dt_coco = gt_coco.loadRes(results)
        evaluator = COCOeval(gt_coco, dt_coco, iouType="segm")
        evaluator.params.imgIds = images
        evaluator.params.catIds = [category_id]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"]  # [T IoU thresholds, R recall points, K, A areas, M maxDets]
    thresholds = evaluator.params.iouThrs

    def mean_precision(t: slice | int) -> float:
        p = precision[t, :, 0, 0, -1]
        p = p[p > -1]
        return float(p.mean()) if p.size else float("nan")

    return {
        "ap": mean_precision(slice(None)),
        "ap50": mean_precision(int(np.argmin(np.abs(thresholds - 0.5)))),
        "ap75": mean_precision(int(np.argmin(np.abs(thresholds - 0.75)))),
    }
