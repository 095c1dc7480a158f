"""Procedural people: a deterministic COCO person data set with exact masks and no downloads.

Each person is an articulated figure: head ellipse with a hair cap, neck, trapezoid torso, two-segment
arms and legs, feet, drawn as anti-aliased capsules with a walking/standing pose, random body
proportions and skin/cloth colours, a vertical light gradient and texture noise. People stand on a
ground plane seen in perspective (the lower the feet, the taller the person), are painted far to near
and annotated by their visible masks; about 40% are placed next to a previous person so that "other
person" pixels (class 2) are common inside ROIs. Backgrounds are person-free real images shipped in
the scikit-image wheel (grass, gravel, brick textures; rocket, motorcycle garage, coffee, cat photos),
randomly cropped, flipped and tinted. Camera effects: blur, noise, JPEG quality 60-95.

Realism is low (cartoon figures); the point is exact, controllable ground truth that drives every
code path. Scene ``i`` of a split is drawn from ``default_rng([seed, split, i])``: same seed, same files.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg.data.cocoio import CocoSceneWriter, DataError

_TEXTURES = ("grass.png", "gravel.png", "brick.png")  # greyscale, tinted at use
_PHOTOS = ("rocket.jpg", "motorcycle_left.png", "coffee.png", "chelsea.png")  # colour, no people
_SKIN = np.array(
    [[255, 224, 196], [234, 192, 160], [198, 144, 108], [160, 110, 75], [110, 72, 48], [70, 45, 30]]
)
_SHIFT = 4  # cv2 sub-pixel drawing: coordinates are fixed point with 4 fractional bits
_GENERATOR_VERSION = 1


@functools.lru_cache(maxsize=1)
def _backgrounds() -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(grey textures, RGB photos), read straight from the scikit-image wheel (never fetched)."""
    import skimage.data

    root = Path(skimage.data.__file__).parent

    def read(name: str, flags: int) -> np.ndarray:
        image = cv2.imread(str(root / name), flags)
        if image is None:
            raise DataError(f"{root / name}: background image missing from the scikit-image package")
        return image

    textures = tuple(read(n, cv2.IMREAD_GRAYSCALE) for n in _TEXTURES)
    photos = tuple(cv2.cvtColor(read(n, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for n in _PHOTOS)
    return textures, photos


# -- background -------------------------------------------------------------------------------------
def _random_crop(rng: np.random.Generator, source: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """A random crop with the aspect of ``size_wh``, covering 40-100% of the source, resized and maybe flipped."""
    w, h = size_wh
    sh, sw = source.shape[:2]
    frac = rng.uniform(0.4, 1.0)
    cw = min(sw, max(8, int(sw * frac)))
    ch = min(sh, max(8, int(cw * h / w)))
    cw = min(sw, max(8, int(ch * w / h)))
    x0, y0 = rng.integers(0, sw - cw + 1), rng.integers(0, sh - ch + 1)
    crop = cv2.resize(source[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def _tinted(rng: np.random.Generator, grey: np.ndarray) -> np.ndarray:
    tint = (rng.uniform(0.55, 1.15, size=3) * rng.uniform(0.7, 1.2)).astype(np.float32)
    return np.clip(grey[..., None].astype(np.float32) * tint, 0, 255)


def _ground(rng: np.random.Generator, texture: np.ndarray, width: int, depth: int) -> np.ndarray:
    """Ground texture seen in perspective: the far edge (top) is squeezed, the near edge stretched."""
    side = int(texture.shape[0] * rng.uniform(0.5, 1.0))  # a random square crop, no tiling seams
    x0, y0 = (int(v) for v in rng.integers(0, texture.shape[0] - side + 1, size=2))
    tile = texture[y0 : y0 + side, x0 : x0 + side]
    spread = rng.uniform(1.5, 3.0)
    src = np.array([[0, 0], [side, 0], [side, side], [0, side]], dtype=np.float32)
    near_left, near_right = width / 2 - spread * width / 2, width / 2 + spread * width / 2
    dst = np.array([[0, 0], [width, 0], [near_right, depth], [near_left, depth]], dtype=np.float32)
    # Map the texture so its top edge is the horizon line and its bottom edge a wide near edge.
    matrix = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(
        tile, matrix, (width, depth), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )


def _background(rng: np.random.Generator, width: int, height: int, horizon: int) -> np.ndarray:
    textures, photos = _backgrounds()
    if rng.random() < 0.5:
        upper = _random_crop(rng, photos[rng.integers(len(photos))], (width, horizon)).astype(np.float32)
    else:
        upper = _tinted(rng, _random_crop(rng, textures[2 if rng.random() < 0.6 else 1], (width, horizon)))
    ground = _tinted(rng, _ground(rng, textures[rng.integers(2)], width, height - horizon))
    scene = np.concatenate([upper, ground], axis=0)
    light = np.linspace(rng.uniform(0.8, 1.15), rng.uniform(0.85, 1.2), height, dtype=np.float32)
    return scene * light[:, None, None]


# -- people -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Person:
    foot_x: float
    foot_y: float
    height: float


def _hsv_to_rgb(rng: np.random.Generator, saturation: tuple[int, int], value: tuple[int, int]) -> np.ndarray:
    """A random colour: any hue, saturation and value drawn from the given [low, high) ranges."""
    hsv = [rng.integers(180), rng.integers(*saturation), rng.integers(*value)]
    pixel = np.array([[hsv]], dtype=np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2RGB)[0, 0]


def _colours(rng: np.random.Generator) -> dict[str, np.ndarray]:
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.9, 1.08)
    shirt = _hsv_to_rgb(rng, saturation=(40, 256), value=(60, 250))
    trousers = _hsv_to_rgb(rng, saturation=(0, 200), value=(30, 170))
    hair = np.array([40, 28, 20]) * rng.uniform(0.5, 3.0)
    shoes = np.array([35, 32, 30]) * rng.uniform(0.5, 2.5)
    return {k: np.clip(v, 0, 255).astype(np.float32) for k, v in dict(
        skin=skin, shirt=shirt, trousers=trousers, hair=hair, shoes=shoes
    ).items()}  # fmt: skip


def _limb(origin: np.ndarray, angle1: float, length1: float, angle2: float, length2: float):
    """Joint positions of a two-segment limb; angles in radians from straight down, +x forward."""
    joint = origin + length1 * np.array([math.sin(angle1), math.cos(angle1)])
    end = joint + length2 * np.array([math.sin(angle2), math.cos(angle2)])
    return joint, end


class _Canvas:
    """Premultiplied colour + alpha of one figure, composited part by part ("over")."""

    def __init__(self, width: int, height: int, origin: np.ndarray) -> None:
        self.colour = np.zeros((height, width, 3), dtype=np.float32)
        self.alpha = np.zeros((height, width), dtype=np.float32)
        self.origin = origin  # image position of canvas pixel (0, 0)
        self._part = np.zeros((height, width), dtype=np.uint8)

    def _fixed(self, point: np.ndarray) -> tuple[int, int]:
        p = (np.asarray(point) - self.origin) * (1 << _SHIFT)
        return int(round(p[0])), int(round(p[1]))

    def _composite(self, colour: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """Composite the freshly drawn part (inside image box lo..hi) over the figure."""
        height, width = self.alpha.shape
        x0, y0 = (int(v) for v in np.maximum(np.floor(lo - self.origin) - 2, 0))
        x1, y1 = (
            int(min(np.ceil(hi[0] - self.origin[0]) + 3, width)),
            int(min(np.ceil(hi[1] - self.origin[1]) + 3, height)),
        )
        if x1 <= x0 or y1 <= y0:
            return
        part = self._part[y0:y1, x0:x1]
        a = part.astype(np.float32) * (1.0 / 255.0)
        colour_view, alpha_view = self.colour[y0:y1, x0:x1], self.alpha[y0:y1, x0:x1]
        colour_view *= (1.0 - a)[..., None]
        colour_view += a[..., None] * colour
        alpha_view *= 1.0 - a
        alpha_view += a
        part[:] = 0

    def capsule(self, p: np.ndarray, q: np.ndarray, thickness: float, colour: np.ndarray) -> None:
        cv2.line(
            self._part, self._fixed(p), self._fixed(q), 255, max(1, round(thickness)), cv2.LINE_AA, _SHIFT
        )
        r = thickness / 2 + 1
        self._composite(colour, np.minimum(p, q) - r, np.maximum(p, q) + r)

    def polygon(self, points: np.ndarray, colour: np.ndarray) -> None:
        fixed = np.array([self._fixed(p) for p in points], dtype=np.int32)
        cv2.fillPoly(self._part, [fixed], 255, cv2.LINE_AA, _SHIFT)
        self._composite(colour, points.min(axis=0), points.max(axis=0))

    def ellipse(
        self, centre: np.ndarray, axes: tuple[float, float], colour: np.ndarray, arc=(0, 360)
    ) -> None:
        size = (max(1, round(axes[0] * (1 << _SHIFT))), max(1, round(axes[1] * (1 << _SHIFT))))
        cv2.ellipse(self._part, self._fixed(centre), size, 0, arc[0], arc[1], 255, -1, cv2.LINE_AA, _SHIFT)
        extent = np.array(axes, dtype=np.float64) + 1
        self._composite(colour, centre - extent, centre + extent)


def _draw_person(rng: np.random.Generator, person: _Person, canvas: _Canvas) -> None:
    h, foot = person.height, np.array([person.foot_x, person.foot_y])
    c = _colours(rng)
    facing = 1.0 if rng.random() < 0.5 else -1.0
    stride = rng.uniform(0.0, 0.45)  # 0 = standing, larger = longer walking stride
    phase = rng.uniform(-1, 1)
    broad = rng.uniform(0.85, 1.2)
    shoulder_y, hip_y = foot[1] - 0.81 * h, foot[1] - 0.50 * h
    half_shoulder, half_hip = 0.105 * h * broad, 0.075 * h * broad
    thigh, shin, upper_arm, forearm = 0.25 * h, 0.245 * h, 0.17 * h, 0.16 * h

    def leg(sign: float) -> None:
        hip = np.array([foot[0] + sign * 0.35 * half_hip, hip_y])
        swing = facing * sign * stride * phase
        knee, ankle = _limb(hip, swing, thigh, swing - facing * rng.uniform(0, 0.5) * abs(phase), shin)
        canvas.capsule(hip, knee, 0.075 * h * broad, c["trousers"])
        canvas.capsule(knee, ankle, 0.06 * h, c["trousers"])
        canvas.capsule(ankle, ankle + np.array([facing * 0.06 * h, 0.005 * h]), 0.04 * h, c["shoes"])

    def arm(sign: float) -> None:
        shoulder = np.array([foot[0] + sign * 0.9 * half_shoulder, shoulder_y + 0.015 * h])
        raised = rng.random() < 0.08
        swing = rng.uniform(1.8, 2.6) * sign if raised else -facing * sign * stride * phase * 1.2
        swing += sign * rng.uniform(0.05, 0.25)  # arms hang slightly outwards
        elbow, hand = _limb(shoulder, swing, upper_arm, swing + facing * rng.uniform(0, 0.9), forearm)
        canvas.capsule(shoulder, elbow, 0.05 * h * broad, c["shirt"])
        canvas.capsule(elbow, hand, 0.04 * h, c["skin"] if rng.random() < 0.6 else c["shirt"])

    back, front = (-1.0, 1.0) if facing > 0 else (1.0, -1.0)
    leg(back)
    arm(back)
    torso = np.array(
        [
            [foot[0] - half_shoulder, shoulder_y],
            [foot[0] + half_shoulder, shoulder_y],
            [foot[0] + half_hip, hip_y + 0.03 * h],
            [foot[0] - half_hip, hip_y + 0.03 * h],
        ]
    )
    canvas.polygon(torso, c["shirt"])
    canvas.capsule(
        np.array([foot[0] - half_hip, hip_y]), np.array([foot[0] + half_hip, hip_y]), 0.06 * h, c["trousers"]
    )
    leg(front)
    arm(front)
    head = np.array([foot[0] + facing * 0.01 * h, foot[1] - 0.925 * h])
    canvas.capsule(head + [0, 0.05 * h], np.array([foot[0], shoulder_y]), 0.045 * h, c["skin"])
    canvas.ellipse(head, (0.055 * h, 0.068 * h), c["skin"])
    canvas.ellipse(head - [0, 0.01 * h], (0.058 * h, 0.062 * h), c["hair"], arc=(180, 360))


def _paint_person(rng: np.random.Generator, scene: np.ndarray, person: _Person) -> np.ndarray:
    """Paint one figure (with a soft shadow) onto ``scene`` in place; returns its full-frame mask."""
    height, width = scene.shape[:2]
    h = person.height
    x0, x1 = int(math.floor(person.foot_x - 0.55 * h)), int(math.ceil(person.foot_x + 0.55 * h))
    y0, y1 = int(math.floor(person.foot_y - 1.05 * h)), int(math.ceil(person.foot_y + 0.06 * h))
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    mask = np.zeros((height, width), dtype=bool)
    if cx1 <= cx0 or cy1 <= cy0:
        return mask
    region = scene[cy0:cy1, cx0:cx1]
    canvas = _Canvas(cx1 - cx0, cy1 - cy0, np.array([cx0, cy0], dtype=np.float64))
    # Shadow first: a dark ellipse on the ground under the feet, not part of the person.
    canvas.ellipse(np.array([person.foot_x, person.foot_y]), (0.16 * h, 0.025 * h), np.zeros(3, np.float32))
    region *= 1.0 - 0.45 * canvas.alpha[..., None]
    canvas.alpha[:] = 0
    _draw_person(rng, person, canvas)
    rows = np.linspace(rng.uniform(1.0, 1.15), rng.uniform(0.7, 0.9), canvas.alpha.shape[0], dtype=np.float32)
    noise = 1.0 + 0.05 * rng.standard_normal(canvas.alpha.shape, dtype=np.float32)
    shade = (rows[:, None] * noise)[..., None]
    region *= (1.0 - canvas.alpha)[..., None]
    region += canvas.colour * shade
    mask[cy0:cy1, cx0:cx1] = canvas.alpha >= 0.5
    return mask


def _place_people(rng: np.random.Generator, width: int, height: int, horizon: int) -> list[_Person]:
    """1-6 people on the ground plane; about 40% stand next to the previous one (overlaps)."""
    camera = rng.uniform(0.7, 1.05)  # person height per pixel below the horizon
    min_foot = horizon + 64 / camera  # >= 64 px tall adults: boxes clear the default 16 px minimum
    people: list[_Person] = []
    for _ in range(int(rng.integers(1, 7))):
        size = rng.uniform(0.55, 0.75) if rng.random() < 0.1 else rng.uniform(0.85, 1.1)
        if people and rng.random() < 0.4:
            prev = people[-1]
            foot_y = float(np.clip(prev.foot_y + rng.normal(0, 0.03 * height), min_foot, 1.04 * height))
            foot_x = prev.foot_x + rng.choice([-1, 1]) * rng.uniform(0.08, 0.45) * prev.height
        else:
            foot_y = float(rng.uniform(min_foot, 1.04 * height))
            foot_x = float(rng.uniform(-0.05, 1.05) * width)
        tall = min((foot_y - horizon) * camera * size, 1.1 * height)
        people.append(_Person(float(foot_x), foot_y, float(tall)))
    return people


def render_scene(
    rng: np.random.Generator, image_size: tuple[int, int]
) -> tuple[np.ndarray, list[np.ndarray], int]:
    """One scene: (RGB uint8 image [H,W,3], pasted masks far to near, JPEG quality)."""
    width, height = image_size
    horizon = int(height * rng.uniform(0.2, 0.45))
    scene = _background(rng, width, height, horizon)
    people = sorted(_place_people(rng, width, height, horizon), key=lambda p: p.foot_y)
    masks = [_paint_person(rng, scene, p) for p in people]
    if rng.random() < 0.5:
        scene = cv2.GaussianBlur(scene, (3, 3), rng.uniform(0.5, 1.0))
    scene += np.float32(rng.uniform(1.0, 4.0)) * rng.standard_normal((height, width, 1), dtype=np.float32)
    image = np.clip(scene, 0, 255).astype(np.uint8)
    return image, masks, int(rng.integers(60, 96))


def _write_split(
    out_dir: Path, split: str, split_code: int, count: int, seed: int, image_size: tuple[int, int]
) -> dict[str, Any]:
    writer = CocoSceneWriter(out_dir / split, description=f"edgeseg synthetic people ({split})")
    instances = 0
    for index in range(count):
        image, masks, quality = render_scene(np.random.default_rng([seed, split_code, index]), image_size)
        instances += writer.add_scene(image, masks, jpeg_quality=quality)
    path = writer.write(
        {"generator": "edgeseg.data.synth", "version": _GENERATOR_VERSION, "seed": seed, "split": split}
    )
    return {"images": count, "instances": instances, "annotations": str(path)}


def write_synth_dataset(
    out_dir: str | Path,
    train_images: int,
    val_images: int,
    seed: int = 0,
    image_size: tuple[int, int] = (640, 480),
) -> dict[str, Any]:
    """Write ``out_dir/{train,val}/annotations.json + images/*.jpg``; returns a summary."""
    if train_images < 1 or val_images < 1:
        raise ValueError(
            f"write_synth_dataset: train_images={train_images} and val_images={val_images} must be >= 1"
        )
    if min(image_size) < 64:
        raise ValueError(f"write_synth_dataset: image_size={image_size} must be at least 64x64")
    out_dir = Path(out_dir)
    start = time.perf_counter()
    summary: dict[str, Any] = {"out_dir": str(out_dir), "seed": seed}
    summary["train"] = _write_split(out_dir, "train", 0, train_images, seed, image_size)
    summary["val"] = _write_split(out_dir, "val", 1, val_images, seed, image_size)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary
