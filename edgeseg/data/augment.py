"""Training augmentation applied consistently to the image, the instance masks and the boxes.

The original project's README promised flip, scale and colour jitter; its code applied none. Here the
geometric part (horizontal flip, zoom about the input centre by a factor in ``[1 - s, 1 + s]``) is one
affine map of the letterboxed input, applied to the image (bilinear), to the masks (nearest) and to the
boxes (exactly), so they cannot disagree. Colour jitter (brightness, contrast, saturation, each a
factor in ``[1 - c, 1 + c]``) touches only the image content, never the letterbox padding. Parameters
are drawn from a generator the caller seeds, e.g. with (seed, epoch, index).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.data.letterbox import PAD_VALUE

_GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, RGB order


@dataclass(frozen=True)
class AugmentConfig:
    hflip_prob: float = 0.0  # probability of a horizontal flip, in [0, 1]
    scale_jitter: float = 0.0  # zoom factor drawn from [1 - s, 1 + s], s in [0, 1)
    color_jitter: float = 0.0  # brightness/contrast/saturation factors from [1 - c, 1 + c], c in [0, 1]

    def __post_init__(self) -> None:
        checks = (
            ("hflip_prob", 0.0 <= self.hflip_prob <= 1.0, "[0, 1]"),
            ("scale_jitter", 0.0 <= self.scale_jitter < 1.0, "[0, 1)"),
            ("color_jitter", 0.0 <= self.color_jitter <= 1.0, "[0, 1]"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"AugmentConfig.{name}={getattr(self, name)!r} must be in {allowed}")

    @property
    def enabled(self) -> bool:
        return self.hflip_prob > 0 or self.scale_jitter > 0 or self.color_jitter > 0


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the augmentation: what was done to a sample."""

    hflip: bool = False
    scale: float = 1.0
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0

    @property
    def geometric(self) -> bool:
        return self.hflip or self.scale != 1.0

    @property
    def photometric(self) -> bool:
        return (self.brightness, self.contrast, self.saturation) != (1.0, 1.0, 1.0)


def sample_params(config: AugmentConfig, rng: np.random.Generator) -> AugmentParams:
    # Always draw the same five numbers, so one setting does not shift the stream of another.
    u = rng.random(5)
    s, c = config.scale_jitter, config.color_jitter
    return AugmentParams(
        hflip=bool(u[0] < config.hflip_prob),
        scale=float(1 - s + 2 * s * u[1]) if s > 0 else 1.0,
        brightness=float(1 - c + 2 * c * u[2]) if c > 0 else 1.0,
        contrast=float(1 - c + 2 * c * u[3]) if c > 0 else 1.0,
        saturation=float(1 - c + 2 * c * u[4]) if c > 0 else 1.0,
    )


def _axis_maps(params: AugmentParams, input_size: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(a, t) per axis of the continuous map x' = a * x + t: zoom about the centre, then flip x."""
    centre = input_size / 2
    ax = -params.scale if params.hflip else params.scale
    ay = params.scale
    return (ax, centre - ax * centre), (ay, centre - ay * centre)


def _cv2_matrix(params: AugmentParams, input_size: int) -> np.ndarray:
    # cv2 indexes pixel centres at integers: index = continuous - 0.5.
    (ax, tx), (ay, ty) = _axis_maps(params, input_size)
    return np.array([[ax, 0, tx + 0.5 * ax - 0.5], [0, ay, ty + 0.5 * ay - 0.5]], dtype=np.float64)


def transform_boxes(boxes_xyxy: np.ndarray, params: AugmentParams, input_size: int) -> np.ndarray:
    """Boxes [K,4] through the geometric augmentation, clipped to the input square."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    (ax, tx), (ay, ty) = _axis_maps(params, input_size)
    xs = np.sort(boxes[:, [0, 2]] * ax + tx, axis=1)
    ys = np.sort(boxes[:, [1, 3]] * ay + ty, axis=1)
    out = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
    return np.clip(out, 0, input_size).astype(np.float32)


def _warp_masks(masks: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    out = np.empty_like(masks, dtype=bool)
    for start in range(0, len(masks), 512):  # cv2 handles up to 512 channels per image
        chunk = np.ascontiguousarray(masks[start : start + 512].transpose(1, 2, 0), dtype=np.uint8)
        warped = cv2.warpAffine(chunk, matrix, (size, size), flags=cv2.INTER_NEAREST, borderValue=0)
        out[start : start + 512] = warped.reshape(size, size, -1).transpose(2, 0, 1).astype(bool)
    return out


def _color_jitter(content: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Brightness b, then contrast c about the mean grey, then saturation s about each pixel's grey.

    The three steps compose into one affine colour map, applied by ``cv2.transform`` (rounds and
    saturates to uint8): out = c*b*(s*x + (1-s)*grey(x)) + (1-c)*b*mean_grey(x).
    """
    b, c, s = params.brightness, params.contrast, params.saturation
    mean_grey = float(np.dot(cv2.mean(content)[:3], _GREY_WEIGHTS))
    colour = c * b * (s * np.eye(3) + (1 - s) * np.tile(_GREY_WEIGHTS, (3, 1)))
    offset = np.full((3, 1), (1 - c) * b * mean_grey)
    return cv2.transform(np.ascontiguousarray(content), np.hstack([colour, offset]))


def apply_augment(
    image: np.ndarray,
    masks: np.ndarray,
    boxes_xyxy: np.ndarray,
    params: AugmentParams,
    content_box: tuple[int, int, int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment a letterboxed sample: image [S,S,3] uint8, masks [K,S,S] bool, boxes [K,4] input pixels.

    ``content_box`` (x1, y1, x2, y2) is where the image content sits (``Letterbox.content_box``); colour
    jitter is applied there only. Returns new arrays; the inputs are not modified.
    """
    size = image.shape[0]
    image = image.copy()
    if params.photometric:
        x1, y1, x2, y2 = content_box
        image[y1:y2, x1:x2] = _color_jitter(image[y1:y2, x1:x2], params)
    if not params.geometric:
        return image, masks.copy(), np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4).copy()
    if params.scale == 1.0:  # a pure flip is an exact permutation of pixels
        image, masks = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(masks[..., ::-1])
    else:
        matrix = _cv2_matrix(params, size)
        image = cv2.warpAffine(
            image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 3
        ).reshape(image.shape)
        masks = _warp_masks(masks, matrix, size)
    return image, masks, transform_boxes(boxes_xyxy, params, size)
