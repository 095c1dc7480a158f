"""3-class ROI targets: 0 background, 1 the target person, 2 any other person inside the ROI.

A target is sampled where the head's features come from. An aligned RoIAlign (``aligned=True``) with
one sample per bin reads bin ``(i, j)`` of an ``M x M`` grid at the continuous image position

    x = x1 + (j + 0.5) * (x2 - x1) / M,    y = y1 + (i + 0.5) * (y2 - y1) / M

(pixel ``p`` covers ``[p, p + 1)``; the aligned op shifts by -0.5 only to interpolate between pixel
centres). The label of bin ``(i, j)`` is the label of the pixel containing that point,
``(floor(y), floor(x))`` clamped to the image, so features and targets line up exactly. Non-square ROIs
are resampled anisotropically to ``M x M``, as RoIAlign does. The original cropped an int-truncated ROI
and resized it with nearest neighbour, which shifts labels by up to a pixel against the features.
"""

from __future__ import annotations

import numpy as np

BACKGROUND, TARGET, OTHER = 0, 1, 2


def roi_from_box(box_xyxy: np.ndarray, padding: float, input_size: int) -> np.ndarray:
    """ROI of a person box: pad by ``padding`` * w left/right and * h top/bottom, clip, >= 1 px.

    Float coordinates throughout (the original truncated to int). A ROI thinner than one pixel after
    clipping is widened to one pixel around its centre, kept inside the image.
    """
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    pad_w, pad_h = padding * (x2 - x1), padding * (y2 - y1)
    roi = np.clip([x1 - pad_w, y1 - pad_h, x2 + pad_w, y2 + pad_h], 0.0, float(input_size))
    for lo, hi in ((0, 2), (1, 3)):
        if roi[hi] - roi[lo] < 1.0:
            centre = min(max((roi[lo] + roi[hi]) / 2, 0.5), input_size - 0.5)
            roi[lo], roi[hi] = centre - 0.5, centre + 0.5
    return roi.astype(np.float32)


def roi_sample_indices(rois: np.ndarray, mask_size: int, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows [R,M] and columns [R,M] at the bin centres of each ROI [R,4] (see module doc)."""
    rois = np.asarray(rois, dtype=np.float64).reshape(-1, 4)
    centres = (np.arange(mask_size, dtype=np.float64) + 0.5) / mask_size
    xs = rois[:, 0:1] + centres[None, :] * (rois[:, 2:3] - rois[:, 0:1])
    ys = rois[:, 1:2] + centres[None, :] * (rois[:, 3:4] - rois[:, 1:2])
    cols = np.clip(np.floor(xs), 0, input_size - 1).astype(np.intp)
    rows = np.clip(np.floor(ys), 0, input_size - 1).astype(np.intp)
    return rows, cols


def roi_targets(
    instance_masks: np.ndarray, rois: np.ndarray, target_ids: np.ndarray, mask_size: int
) -> np.ndarray:
    """Labels [R,M,M] int64 for ROIs [R,4] over instance masks [K,S,S] (bool, network-input pixels).

    ``target_ids[r]`` is the index into ``instance_masks`` of ROI r's person. Target pixels are 1,
    pixels of any other mask are 2 (the target wins where they overlap), the rest 0. Pass every person
    of the image, not only those with a ROI (people without one — crowd regions, small people — may
    come as one union mask): a person left out would be painted background.
    """
    masks = np.asarray(instance_masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"instance_masks must be [K,S,S], got shape {masks.shape}")
    target_ids = np.asarray(target_ids, dtype=np.intp).reshape(-1)
    rois = np.asarray(rois).reshape(-1, 4)
    if len(target_ids) != len(rois):
        raise ValueError(f"{len(rois)} rois but {len(target_ids)} target ids")
    if len(target_ids) and not (target_ids.min() >= 0 and target_ids.max() < len(masks)):
        raise ValueError(f"target ids {target_ids.tolist()} out of range for {len(masks)} instance masks")
    rows, cols = roi_sample_indices(rois, mask_size, masks.shape[1])
    r_idx, c_idx = rows[:, :, None], cols[:, None, :]
    is_target = masks[target_ids[:, None, None], r_idx, c_idx]
    is_any = masks[:, r_idx, c_idx].any(axis=0)
    labels = np.where(is_target, TARGET, np.where(is_any, OTHER, BACKGROUND))
    return labels.astype(np.int64)
