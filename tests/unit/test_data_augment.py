"""Augmentation: validated config; image, masks and boxes stay in agreement."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.data.augment import AugmentConfig, AugmentParams, apply_augment, sample_params, transform_boxes


@pytest.mark.parametrize(
    ("field", "value"),
    [("hflip_prob", 1.5), ("hflip_prob", -0.1), ("scale_jitter", 1.0), ("color_jitter", 2.0)],
)
def test_out_of_range_values_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"AugmentConfig\.{field}="):
        AugmentConfig(**{field: value})


def test_enabled() -> None:
    assert not AugmentConfig().enabled
    assert AugmentConfig(color_jitter=0.1).enabled


def test_sample_params_stay_in_range_and_follow_the_seed() -> None:
    config = AugmentConfig(hflip_prob=0.5, scale_jitter=0.2, color_jitter=0.4)
    draws = [sample_params(config, np.random.default_rng([0, 0, i])) for i in range(200)]
    assert all(0.8 <= p.scale <= 1.2 and 0.6 <= p.brightness <= 1.4 for p in draws)
    assert 60 < sum(p.hflip for p in draws) < 140
    assert draws[7] == sample_params(config, np.random.default_rng([0, 0, 7]))
    assert sample_params(AugmentConfig(), np.random.default_rng(0)) == AugmentParams()


def _scene(size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A red person rectangle (x 10..25, y 20..49) on grey; its mask and box agree by construction."""
    image = np.full((size, size, 3), 60, np.uint8)
    image[20:50, 10:26] = (255, 0, 0)
    mask = np.zeros((1, size, size), bool)
    mask[0, 20:50, 10:26] = True
    return image, mask, np.array([[10, 20, 26, 50]], np.float32)


def _red(image: np.ndarray) -> np.ndarray:
    return (image[..., 0] > 150) & (image[..., 1] < 100)


def test_flip_moves_image_mask_and_box_together() -> None:
    image, mask, boxes = _scene()
    out_image, out_mask, out_boxes = apply_augment(
        image, mask, boxes, AugmentParams(hflip=True), (0, 0, 64, 64)
    )
    # x -> 64 - x: columns 10..25 become 38..53
    np.testing.assert_allclose(out_boxes, [[38, 20, 54, 50]])
    expected = np.zeros((64, 64), bool)
    expected[20:50, 38:54] = True
    np.testing.assert_array_equal(out_mask[0], expected)
    np.testing.assert_array_equal(_red(out_image), expected)
    np.testing.assert_array_equal(mask[0, 20:50, 10:26], True)  # inputs untouched


@pytest.mark.parametrize("hflip", [False, True])
def test_scale_moves_image_mask_and_box_together(hflip: bool) -> None:
    image, mask, boxes = _scene()
    params = AugmentParams(hflip=hflip, scale=1.5)
    out_image, out_mask, out_boxes = apply_augment(image, mask, boxes, params, (0, 0, 64, 64))
    # zoom about the centre 32: x' = 32 + 1.5 (x - 32): box (10, 20, 26, 50) -> (-1, 14, 23, 59), clipped at 0
    expected_box = [0, 14, 23, 59] if not hflip else [41, 14, 64, 59]
    np.testing.assert_allclose(out_boxes[0], expected_box, atol=1e-4)
    ys, xs = np.nonzero(out_mask[0])
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(expected_box)
    red = _red(out_image)
    iou = (red & out_mask[0]).sum() / (red | out_mask[0]).sum()
    assert iou > 0.95  # bilinear image edges vs nearest mask edges


def test_zoom_out_fills_with_letterbox_grey() -> None:
    image, mask, boxes = _scene()
    out_image, _, out_boxes = apply_augment(image, mask, boxes, AugmentParams(scale=0.5), (0, 0, 64, 64))
    assert (out_image[0, 0] == 114).all() and (out_image[63, 63] == 114).all()
    np.testing.assert_allclose(out_boxes, transform_boxes(boxes, AugmentParams(scale=0.5), 64))
    np.testing.assert_allclose(out_boxes[0], [21, 26, 29, 41])


def test_color_jitter_touches_content_only() -> None:
    image, mask, boxes = _scene()
    image[:8] = 114  # a letterbox bar
    params = AugmentParams(brightness=1.3, contrast=0.8, saturation=0.5)
    out_image, out_mask, out_boxes = apply_augment(image, mask, boxes, params, (0, 8, 64, 64))
    assert (out_image[:8] == 114).all()
    # grey background pixel 60: brightness 78, contrast about the mean grey, saturation keeps grey grey
    grey = image[8:].astype(np.float64) @ [0.299, 0.587, 0.114]
    mean = 1.3 * grey.mean()
    expected = round(0.8 * 78 + 0.2 * mean)
    assert abs(int(out_image[10, 40, 0]) - expected) <= 1 and len(set(out_image[10, 40].tolist())) == 1
    np.testing.assert_array_equal(out_mask, mask)
    np.testing.assert_array_equal(out_boxes, boxes)
