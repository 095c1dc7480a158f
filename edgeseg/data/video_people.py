"""Real people from a static-camera video: background subtraction cut-outs pasted into COCO scenes.

Recipe (OpenCV's ``vtest.avi``, PETS 2009 footage, University of Reading, via OpenCV samples):

1. The per-pixel median of every 5th frame is the background (people keep moving, so it is empty).
2. In every 8th frame, pixels whose LAB distance to the background exceeds 25 are foreground; a 3x3
   opening and a 7x7 closing clean them up. A connected component is one upright person when its
   box aspect h/w is in [2, 4.5], its area in [300, 6000] px, its fill (area / box area) >= 0.45 and it
   does not touch the frame border. Its mask is eroded by 1 px (background-subtraction halos).
3. A scene pastes 3-8 cut-outs onto the median background near where they were filmed (the ground
   under them matches), flips half of them, places 40% next to the previous person (overlaps), rescales
   a moved cut-out by the fitted perspective (height linear in foot y), paints far to near by foot y
   and annotates visible masks (COCO, RLE).
4. Train and val use cut-outs from disjoint frame ranges (< ``split_frame`` vs >=). The same people
   walk through the scene more than once, so the split is weak; it still keeps frames apart.

Frames and scenes are generated locally at run time and never committed (footage licence).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeseg import paths
from edgeseg.data.cocoio import CocoSceneWriter, DataError

BACKGROUND_STEP = 5  # frames used for the median background
CUTOUT_STEP = 8  # frames searched for cut-outs
LAB_THRESHOLD = 25.0
ASPECT_RANGE = (2.0, 4.5)
AREA_RANGE = (300, 6000)
MIN_FILL = 0.45
GROUP_PROB = 0.4
PEOPLE_PER_SCENE = (3, 8)
JPEG_QUALITY = 90


def default_video_path() -> Path:
    """Where ``scripts/fetch-vtest.sh`` puts the video: ``$EDGESEG_HOME/video/vtest.avi``."""
    return paths.home() / "video" / "vtest.avi"


@dataclass(frozen=True)
class Cutout:
    frame: int  # source frame index
    patch: np.ndarray  # RGB uint8 [h,w,3], the component's box in the frame
    mask: np.ndarray  # bool [h,w]
    x: int  # box origin in the frame
    y: int

    @property
    def foot(self) -> tuple[float, float]:
        """Bottom centre of the box: where the person stands."""
        return self.x + self.patch.shape[1] / 2, float(self.y + self.patch.shape[0])


def _frames(video_path: Path, step: int) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR frame) for every ``step``-th frame."""
    capture = cv2.VideoCapture(str(video_path))
    if not capture.isOpened():
        raise DataError(f"{video_path}: cannot open the video (unreadable or unsupported codec)")
    try:
        index = 0
        while capture.grab():
            if index % step == 0:
                ok, frame = capture.retrieve()
                if not ok:
                    raise DataError(f"{video_path}: cannot decode frame {index}")
                yield index, frame
            index += 1
    finally:
        capture.release()


def median_background(video_path: Path) -> np.ndarray:
    """Per-pixel median (BGR uint8) of every 5th frame."""
    decoded = [frame for _, frame in _frames(video_path, BACKGROUND_STEP)]
    if len(decoded) < 3:
        raise DataError(
            f"{video_path}: need at least 3 decodable frames for a median background, got {len(decoded)}"
        )
    frames = np.stack(decoded)
    del decoded
    height = frames.shape[1]
    background = np.empty(frames.shape[1:], dtype=np.uint8)
    middle = len(frames) // 2
    for row in range(0, height, 32):  # row blocks keep the transposed copy small
        block = frames[:, row : row + 32]
        flat = np.ascontiguousarray(block.reshape(len(frames), -1).T)
        # The upper median (exact for an odd count), in O(n) per pixel.
        background[row : row + 32] = np.partition(flat, middle, axis=1)[:, middle].reshape(block.shape[1:])
    return background


def _person_components(foreground: np.ndarray) -> Iterator[tuple[int, int, int, int, np.ndarray]]:
    """(x, y, w, h, mask in box) of components that look like one upright person."""
    height, width = foreground.shape
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    for label in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[label])
        if not ASPECT_RANGE[0] <= h / w <= ASPECT_RANGE[1] or not AREA_RANGE[0] <= area <= AREA_RANGE[1]:
            continue
        if area / (w * h) < MIN_FILL or x == 0 or y == 0 or x + w >= width or y + h >= height:
            continue
        yield x, y, w, h, labels[y : y + h, x : x + w] == label


def extract_cutouts(video_path: str | Path) -> tuple[np.ndarray, list[Cutout]]:
    """(median background RGB [H,W,3], single-person cut-outs of every 8th frame)."""
    video_path = Path(video_path)
    if not video_path.is_file():
        raise DataError(f"{video_path}: video not found (fetch it with scripts/fetch-vtest.sh)")
    background_bgr = median_background(video_path)
    background_lab = cv2.cvtColor(background_bgr, cv2.COLOR_BGR2LAB).astype(np.float32)
    open_kernel, close_kernel, erode_kernel = (
        np.ones((3, 3), np.uint8),
        np.ones((7, 7), np.uint8),
        np.ones((3, 3), np.uint8),
    )
    cutouts: list[Cutout] = []
    for index, frame in _frames(video_path, CUTOUT_STEP):
        difference = cv2.cvtColor(frame, cv2.COLOR_BGR2LAB).astype(np.float32) - background_lab
        foreground = (np.sqrt((difference * difference).sum(axis=2)) > LAB_THRESHOLD).astype(np.uint8)
        foreground = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, open_kernel)
        foreground = cv2.morphologyEx(foreground, cv2.MORPH_CLOSE, close_kernel)
        for x, y, w, h, mask in _person_components(foreground):
            eroded = cv2.erode(mask.astype(np.uint8), erode_kernel).astype(bool)
            if eroded.any():
                patch = cv2.cvtColor(frame[y : y + h, x : x + w], cv2.COLOR_BGR2RGB)
                cutouts.append(Cutout(index, patch, eroded, x, y))
    return cv2.cvtColor(background_bgr, cv2.COLOR_BGR2RGB), cutouts


def _perspective_fit(cutouts: list[Cutout]) -> tuple[float, float]:
    """(a, b) of person height ~ a * foot_y + b, least squares over the cut-outs."""
    foot_y = np.array([c.foot[1] for c in cutouts])
    heights = np.array([c.patch.shape[0] for c in cutouts], dtype=np.float64)
    if len(cutouts) < 2 or np.ptp(foot_y) == 0:
        return 0.0, float(heights.mean())
    a, b = np.polyfit(foot_y, heights, 1)
    return float(a), float(b)


@dataclass(frozen=True)
class _Placement:
    cutout: Cutout
    foot_x: float
    foot_y: float
    scale: float
    flip: bool


def _place(rng: np.random.Generator, pool: list[Cutout], fit: tuple[float, float]) -> list[_Placement]:
    def height_at(foot_y: float) -> float:
        return max(fit[0] * foot_y + fit[1], 8.0)

    placed: list[_Placement] = []
    for _ in range(int(rng.integers(PEOPLE_PER_SCENE[0], PEOPLE_PER_SCENE[1] + 1))):
        cutout = pool[int(rng.integers(len(pool)))]
        own_x, own_y = cutout.foot
        if placed and rng.random() < GROUP_PROB:
            prev = placed[-1]
            prev_width = prev.cutout.patch.shape[1] * prev.scale
            foot_y = prev.foot_y + rng.uniform(-8, 8)
            foot_x = prev.foot_x + rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.9) * prev_width
        else:
            foot_x, foot_y = own_x + rng.uniform(-30, 30), own_y + rng.uniform(-10, 10)
        scale = height_at(foot_y) / height_at(own_y)
        placed.append(
            _Placement(cutout, float(foot_x), float(foot_y), float(scale), bool(rng.random() < 0.5))
        )
    return sorted(placed, key=lambda p: p.foot_y)


def _paste(scene: np.ndarray, placement: _Placement) -> np.ndarray:
    """Paste one cut-out into ``scene`` in place; returns its full-frame mask."""
    height, width = scene.shape[:2]
    patch, mask = placement.cutout.patch, placement.cutout.mask
    ph, pw = patch.shape[:2]
    new_w, new_h = max(1, round(pw * placement.scale)), max(1, round(ph * placement.scale))
    if (new_w, new_h) != (pw, ph):
        patch = cv2.resize(patch, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_LINEAR) >= 0.5
    if placement.flip:
        patch, mask = patch[:, ::-1], mask[:, ::-1]
    x0, y0 = round(placement.foot_x - new_w / 2), round(placement.foot_y - new_h)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + new_w, width), min(y0 + new_h, height)
    full = np.zeros((height, width), dtype=bool)
    if cx1 <= cx0 or cy1 <= cy0:
        return full
    full[cy0:cy1, cx0:cx1] = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    region = scene[cy0:cy1, cx0:cx1]
    inside = full[cy0:cy1, cx0:cx1]
    region[inside] = patch[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0][inside]
    return full


def _write_split(
    out_dir: Path, split: str, split_code: int, count: int, seed: int, background: np.ndarray,
    pool: list[Cutout], fit: tuple[float, float],
) -> dict[str, Any]:  # fmt: skip
    writer = CocoSceneWriter(out_dir / split, description=f"edgeseg video people ({split})")
    instances = 0
    for index in range(count):
        rng = np.random.default_rng([seed, split_code, index])
        scene = background.copy()
        masks = [_paste(scene, placement) for placement in _place(rng, pool, fit)]
        instances += writer.add_scene(scene, masks, jpeg_quality=JPEG_QUALITY)
    path = writer.write({"generator": "edgeseg.data.video_people", "seed": seed, "split": split})
    return {"images": count, "instances": instances, "annotations": str(path)}


def write_video_people_dataset(
    video_path: str | Path,
    out_dir: str | Path,
    train_images: int,
    val_images: int,
    seed: int = 0,
    split_frame: int = 560,
) -> dict[str, Any]:
    """Write ``out_dir/{train,val}/annotations.json + images/*.jpg`` from the video; returns a summary."""
    if train_images < 1 or val_images < 1:
        raise ValueError(
            f"write_video_people_dataset: train_images={train_images}, val_images={val_images} must be >= 1"
        )
    video_path, out_dir = Path(video_path), Path(out_dir)
    start = time.perf_counter()
    background, cutouts = extract_cutouts(video_path)
    seconds_cutouts = time.perf_counter() - start
    train_pool = [c for c in cutouts if c.frame < split_frame]
    val_pool = [c for c in cutouts if c.frame >= split_frame]
    if not train_pool or not val_pool:
        raise DataError(
            f"{video_path}: {len(train_pool)} cut-outs before frame {split_frame} and {len(val_pool)} from it on; "
            "both splits need at least one (choose another split_frame)"
        )
    fit = _perspective_fit(cutouts)
    summary: dict[str, Any] = {
        "video": str(video_path),
        "out_dir": str(out_dir),
        "seed": seed,
        "split_frame": split_frame,
        "cutouts_train": len(train_pool),
        "cutouts_val": len(val_pool),
        "perspective_fit": {"height_per_foot_y": round(fit[0], 4), "offset": round(fit[1], 2)},
    }
    summary["train"] = _write_split(out_dir, "train", 0, train_images, seed, background, train_pool, fit)
    summary["val"] = _write_split(out_dir, "val", 1, val_images, seed, background, val_pool, fit)
    summary["seconds_cutouts"] = round(seconds_cutouts, 3)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary
