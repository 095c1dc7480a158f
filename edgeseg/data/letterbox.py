"""Letterbox geometry: fit an image into a square network input without changing its aspect ratio.

The image is scaled by ``input_size / max(w, h)``, centred and padded with grey (114, as in YOLO). The
original project stretched every image to 640x640; letterboxing keeps people's proportions.

Coordinates are continuous pixel coordinates: pixel ``i`` covers ``[i, i + 1)``, so a box maps by
``x' = x * scale + pad``. The resized content is ``round(w * scale)`` pixels wide, which can differ
from ``w * scale`` by under half a pixel; images and masks share that exact grid, boxes use ``scale``.

Masks are resampled by coverage where they shrink (a pixel is set when at least half of its area was
set, ``INTER_AREA``) and by pixel-centre nearest neighbour where they grow (``INTER_NEAREST_EXACT``),
so an integer upscale followed by the inverse returns the original mask exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


def _resize_masks(masks: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Resize bool masks [K,H,W] (or [H,W]) to ``size_wh``; coverage >= 0.5 when shrinking."""
    single = masks.ndim == 2
    stack = masks[None] if single else masks
    k, h, w = stack.shape
    out_w, out_h = size_wh
    if k == 0:
        return np.zeros((0, out_h, out_w), dtype=bool)
    shrinking = out_w * out_h < w * h
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_NEAREST_EXACT
    out = np.empty((k, out_h, out_w), dtype=bool)
    # Masks go through cv2 as the channels of one image; INTER_AREA at non-integer scales takes <= 4.
    step = 4 if shrinking else 512
    for start in range(0, k, step):
        chunk = np.ascontiguousarray(stack[start : start + step].transpose(1, 2, 0), dtype=np.uint8) * 255
        resized = cv2.resize(chunk, (out_w, out_h), interpolation=interpolation)
        out[start : start + step] = resized.reshape(out_h, out_w, -1).transpose(2, 0, 1) >= 128
    return out[0] if single else out


@dataclass(frozen=True)
class Letterbox:
    """How one image of size ``orig_w`` x ``orig_h`` sits inside the ``input_size`` square."""

    scale: float
    pad_x: int
    pad_y: int
    input_size: int
    orig_w: int
    orig_h: int

    @classmethod
    def from_size(cls, w: int, h: int, input_size: int) -> Letterbox:
        if w < 1 or h < 1 or input_size < 1:
            raise ValueError(f"letterbox needs positive sizes, got image {w}x{h}, input_size {input_size}")
        scale = input_size / max(w, h)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        return cls(scale, (input_size - new_w) // 2, (input_size - new_h) // 2, input_size, w, h)

    @property
    def content_size(self) -> tuple[int, int]:
        """(width, height) of the resized image inside the square."""
        return max(1, round(self.orig_w * self.scale)), max(1, round(self.orig_h * self.scale))

    @property
    def content_box(self) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2) of the image content inside the square, in input pixels."""
        w, h = self.content_size
        return self.pad_x, self.pad_y, self.pad_x + w, self.pad_y + h

    def boxes_forward(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Original-image boxes [..., 4] (x1, y1, x2, y2) to network-input pixels."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float64)
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float64)
        return (boxes * self.scale + offset).astype(np.float32)

    def boxes_inverse(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Network-input boxes [..., 4] back to original-image pixels."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float64)
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float64)
        return ((boxes - offset) / self.scale).astype(np.float32)

    def image_forward(self, image: np.ndarray) -> np.ndarray:
        """[H,W,C] uint8 image to the [S,S,C] letterboxed input (area resampling when shrinking)."""
        if image.shape[:2] != (self.orig_h, self.orig_w):
            raise ValueError(
                f"image is {image.shape[1]}x{image.shape[0]}, letterbox expects {self.orig_w}x{self.orig_h}"
            )
        w, h = self.content_size
        interpolation = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        resized = (
            image
            if (w, h) == (self.orig_w, self.orig_h)
            else cv2.resize(image, (w, h), interpolation=interpolation)
        )
        resized = resized.reshape(h, w, -1)
        out = np.full((self.input_size, self.input_size, resized.shape[2]), PAD_VALUE, dtype=image.dtype)
        out[self.pad_y : self.pad_y + h, self.pad_x : self.pad_x + w] = resized
        return out if image.ndim == 3 else out[..., 0]

    def masks_forward(self, masks: np.ndarray) -> np.ndarray:
        """Bool masks [K,H,W] (or [H,W]) at original size to [K,S,S] network-input masks (pad = False)."""
        if masks.shape[-2:] != (self.orig_h, self.orig_w):
            raise ValueError(
                f"masks are {masks.shape[-1]}x{masks.shape[-2]}, letterbox expects {self.orig_w}x{self.orig_h}"
            )
        w, h = self.content_size
        resized = _resize_masks(masks.astype(bool, copy=False), (w, h))
        out = np.zeros((*resized.shape[:-2], self.input_size, self.input_size), dtype=bool)
        out[..., self.pad_y : self.pad_y + h, self.pad_x : self.pad_x + w] = resized
        return out

    def masks_inverse(self, masks: np.ndarray) -> np.ndarray:
        """Network-input bool masks [K,S,S] (or [S,S]) back to [K,H,W] at the original size."""
        x1, y1, x2, y2 = self.content_box
        cropped = masks.astype(bool, copy=False)[..., y1:y2, x1:x2]
        return _resize_masks(cropped, (self.orig_w, self.orig_h))
