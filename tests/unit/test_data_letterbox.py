"""Letterbox geometry: aspect preserved, centred, grey padding, forward/inverse round trips."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.data.letterbox import PAD_VALUE, Letterbox


@pytest.mark.parametrize(
    ("w", "h", "scale", "pad_x", "pad_y"),
    [
        (640, 480, 1.0, 0, 80),  # landscape: full width, 80 px bars top and bottom
        (1280, 960, 0.5, 0, 80),
        (300, 600, 640 / 600, 160, 0),  # portrait: 320 px wide content, 160 px bars left and right
        (64, 64, 10.0, 0, 0),
    ],
)
def test_from_size(w: int, h: int, scale: float, pad_x: int, pad_y: int) -> None:
    lb = Letterbox.from_size(w, h, 640)
    assert lb.scale == pytest.approx(scale)
    assert (lb.pad_x, lb.pad_y) == (pad_x, pad_y)
    cw, ch = lb.content_size
    assert cw / ch == pytest.approx(w / h, rel=0.01)  # aspect preserved
    assert lb.content_box == (pad_x, pad_y, pad_x + cw, pad_y + ch)


def test_image_forward_centres_content_and_pads_grey() -> None:
    image = np.full((48, 64, 3), 7, np.uint8)  # 64x48 -> 128: scale 2, 128x96 content, 16 px bars
    out = Letterbox.from_size(64, 48, 128).image_forward(image)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert (out[:16] == PAD_VALUE).all() and (out[112:] == PAD_VALUE).all()
    assert (out[16:112] == 7).all()


def test_boxes_round_trip() -> None:
    lb = Letterbox.from_size(500, 375, 640)
    boxes = np.array([[0, 0, 500, 375], [12.5, 40.25, 100.75, 300.5]], np.float32)
    forward = lb.boxes_forward(boxes)
    # by hand: scale 640/500 = 1.28, content 640x480, pad_y = 80
    np.testing.assert_allclose(forward[0], [0, 80, 640, 560], atol=1e-4)
    np.testing.assert_allclose(
        forward[1], [16.0, 40.25 * 1.28 + 80, 100.75 * 1.28, 300.5 * 1.28 + 80], atol=1e-4
    )
    np.testing.assert_allclose(lb.boxes_inverse(forward), boxes, atol=1e-4)


def test_masks_integer_upscale_round_trip_is_exact() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 16, 32)) > 0.5
    lb = Letterbox.from_size(32, 16, 64)  # scale 2, pad_y 16
    forward = lb.masks_forward(masks)
    assert forward.shape == (3, 64, 64) and forward.dtype == bool
    assert not forward[:, :16].any() and not forward[:, 48:].any()  # padding is empty
    # every original pixel (x, y) becomes the 2x2 block at (2x, 2y + 16)
    np.testing.assert_array_equal(forward[:, 16:48], masks.repeat(2, axis=1).repeat(2, axis=2))
    np.testing.assert_array_equal(lb.masks_inverse(forward), masks)


def test_masks_round_trip_at_non_integer_scale_keeps_shapes() -> None:
    yy, xx = np.mgrid[0:375, 0:500]
    ellipse = ((xx - 250) / 120.0) ** 2 + ((yy - 180) / 90.0) ** 2 <= 1.0
    for input_size in (640, 320):  # grow (area-free nearest) and shrink (coverage >= 0.5)
        lb = Letterbox.from_size(500, 375, input_size)
        forward = lb.masks_forward(ellipse)
        # area scales with scale^2
        assert forward.sum() == pytest.approx(ellipse.sum() * lb.scale**2, rel=0.02)
        back = lb.masks_inverse(forward)
        iou = (back & ellipse).sum() / (back | ellipse).sum()
        assert back.shape == ellipse.shape and iou > 0.98


def test_shape_mismatch_names_sizes() -> None:
    lb = Letterbox.from_size(32, 16, 64)
    with pytest.raises(ValueError, match="32x16"):
        lb.image_forward(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="positive"):
        Letterbox.from_size(0, 16, 64)
