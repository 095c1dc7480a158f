"""Overlay PNGs of predicted ROI masks on the network input image, for a person to look at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], dtype=np.uint8,
)  # fmt: skip


def paste_in_input_space(labels: torch.Tensor, rois: torch.Tensor, size: int) -> np.ndarray:
    """ROI label maps [K,M,M] -> one map [size,size] in network-input pixels (later ROIs on top)."""
    canvas = np.zeros((size, size), dtype=np.int64)
    owner = np.full((size, size), -1, dtype=np.int64)
    for k in range(labels.shape[0]):
        x1, y1, x2, y2 = rois[k, -4:].tolist()
        ix1, iy1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        ix2, iy2 = min(size, int(np.ceil(x2))), min(size, int(np.ceil(y2)))
        if ix2 <= ix1 or iy2 <= iy1:
            continue
        resized = F.interpolate(labels[k][None, None].float(), size=(iy2 - iy1, ix2 - ix1), mode="nearest")[
            0, 0
        ]
        target = resized.numpy() == 1
        canvas[iy1:iy2, ix1:ix2][target] = 1
        owner[iy1:iy2, ix1:ix2][target] = k
    return owner


def _overlay(image: np.ndarray, owner: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32).copy()
    for k in np.unique(owner):
        if k < 0:
            continue
        colour = PALETTE[k % len(PALETTE)].astype(np.float32)
        region = owner == k
        out[region] = 0.45 * out[region] + 0.55 * colour
    return out.clip(0, 255).astype(np.uint8)


def _draw_boxes(image: Any, rois: torch.Tensor) -> None:

    draw = ImageDraw.Draw(image)
    for k in range(rois.shape[0]):
        x1, y1, x2, y2 = rois[k, -4:].tolist()
        draw.rectangle([x1, y1, x2, y2], outline=tuple(int(c) for c in PALETTE[k % len(PALETTE)]), width=2)
        draw.text((x1 + 3, y1 + 2), f"#{k}", fill=(255, 255, 255))


def save_overlay(
    path: Path, image_chw: torch.Tensor, rois: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor
) -> None:
    """Ground truth (left) next to prediction (right): the target class of each ROI in its colour."""

    image = image_chw.permute(1, 2, 0).numpy().astype(np.uint8)
    size = image.shape[0]
    panels = []
    for title, labels in (("ground truth", gt), ("prediction", pred)):
        panel = Image.fromarray(_overlay(image, paste_in_input_space(labels, rois, size)))
        _draw_boxes(panel, rois)
        ImageDraw.Draw(panel).text((8, 8), title, fill=(255, 255, 255))
        panels.append(panel)
    canvas = Image.new("RGB", (size * 2 + 8, size), (255, 255, 255))
    canvas.paste(panels[0], (0, 0))
    canvas.paste(panels[1], (size + 8, 0))
    canvas.save(path)
