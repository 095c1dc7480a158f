"""COCO instance files: read them with errors that name the file, write them from painted scenes.

Reading goes through pycocotools (the reference decoder for polygons and RLE). Writing is for the
generated data sets: a scene is painted far to near, so an instance's *visible* mask is its pasted mask
minus every mask painted after it; segmentations are compressed RLE from ``pycocotools.mask.encode``.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

PERSON_CATEGORY = {"id": 1, "name": "person", "supercategory": "person"}


class DataError(ValueError):
    """A data file is missing, malformed or unusable; the message names the file (and the id)."""


def read_json(path: str | Path) -> dict[str, Any]:
    """Parse a COCO JSON file; a missing file or a syntax error names the file (and line/column)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    return parse_json(path.read_bytes(), path)


def parse_json(raw: bytes, path: str | Path) -> dict[str, Any]:
    """Parse the bytes of COCO JSON file ``path`` (errors name it)."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: malformed JSON at line {error.lineno}, column {error.colno} (char {error.pos}): {error.msg}"
        ) from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO instances file (expected an object with an 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise DataError(f"{path}: '{key}' must be a list")
    return data


def coco_from_dict(data: Mapping[str, Any]) -> COCO:
    """A pycocotools COCO index over an already parsed file (without pycocotools' progress prints)."""
    coco = COCO()
    coco.dataset = dict(data)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write compact JSON atomically (a crash never leaves half a file under the final name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, separators=(",", ":")))
    partial.replace(path)
    return path


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE of a [H,W] binary mask, JSON-ready (counts as str)."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def visible_masks(masks_in_paint_order: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each mask of a scene painted far to near: the mask minus every later mask."""
    visible: list[np.ndarray] = [np.zeros(0, dtype=bool)] * len(masks_in_paint_order)
    covered: np.ndarray | None = None
    for k in range(len(masks_in_paint_order) - 1, -1, -1):
        mask = masks_in_paint_order[k].astype(bool, copy=False)
        visible[k] = mask if covered is None else mask & ~covered
        covered = mask.copy() if covered is None else covered | mask
    return visible


class CocoSceneWriter:
    """Collects painted scenes of one split and writes ``annotations.json`` + ``images/*.jpg``."""

    def __init__(self, split_dir: str | Path, description: str) -> None:
        self.split_dir = Path(split_dir)
        self.image_dir = self.split_dir / "images"
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self.description = description
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add_scene(
        self, image_rgb: np.ndarray, masks_in_paint_order: Sequence[np.ndarray], jpeg_quality: int = 90
    ) -> int:
        """Save the image as JPEG and annotate the visible part of every mask; returns instances added."""
        height, width = image_rgb.shape[:2]
        image_id = len(self.images) + 1
        file_name = f"{image_id:06d}.jpg"
        ok, encoded = cv2.imencode(
            ".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
        )
        if not ok:
            raise DataError(f"{self.image_dir / file_name}: JPEG encoding failed")
        (self.image_dir / file_name).write_bytes(encoded.tobytes())
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        added = 0
        for mask in visible_masks(masks_in_paint_order):
            if not mask.any():
                continue
            rle = encode_rle(mask)
            compressed = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": PERSON_CATEGORY["id"],
                    "segmentation": rle,
                    "area": int(mask_utils.area(compressed)),
                    "bbox": [float(v) for v in mask_utils.toBbox(compressed)],
                    "iscrowd": 0,
                }
            )
            added += 1
        return added

    def write(self, info: Mapping[str, Any]) -> Path:
        """Write ``annotations.json`` (deterministic: no timestamps)."""
        data = {
            "info": {"description": self.description, **info},
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": [dict(PERSON_CATEGORY)],
        }
        return write_json(self.split_dir / "annotations.json", data)
