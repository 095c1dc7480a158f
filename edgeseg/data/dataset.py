"""Person ROI data set: one sample is one letterboxed image with the 3-class targets of all its ROIs.

The original made one sample per (image, person), so an image with ten people was loaded, resized and
had all its masks decoded ten times per epoch, and the backbone ran on it ten times. Here one sample
carries every ROI of its image (``rois`` [K,4], ``targets`` [K,M,M]) and the collate function stacks
them into the ``[N,5]`` (batch_index, x1, y1, x2, y2) contract. Instance masks are decoded once per
image, letterboxed, and kept bit-packed in a bounded LRU cache.

Kept instances: person, not crowd, original-resolution box width and height >= ``min_instance_size``.
The first ``max_rois_per_image`` of them (annotation order) become ROIs. These rules only choose which
people get a ROI: class-2 ("other person") pixels come from EVERY person annotation of the image — kept
instances past the cap, people under ``min_instance_size`` and crowd regions included — because a person
is a person in the pixels whether or not it got a ROI of its own (painting them background would teach
the head that small or crowded people are background). Images without a kept instance are left out of the
index. ``target_key()`` names every setting that changes targets or which ROIs exist.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from edgeseg.data.augment import AugmentConfig, AugmentParams, apply_augment, sample_params
from edgeseg.data.cocoio import DataError, coco_from_dict, parse_json
from edgeseg.data.letterbox import Letterbox
from edgeseg.data.targets import roi_from_box, roi_targets

# Bump when the rules that turn annotations into targets change, so caches keyed on target_key() (class
# pixel statistics) are recomputed. 2: class 2 from every person annotation, crowd regions included.
TARGETS_VERSION = 2
OTHER_PERSON_SOURCE = "every person annotation of the image, crowd regions included"


@dataclass(frozen=True)
class RoiSample:
    image: torch.Tensor  # uint8 [3,S,S] RGB, letterboxed (and augmented when the data set augments)
    rois: torch.Tensor  # float32 [K,4] (x1, y1, x2, y2) in network-input pixels
    targets: torch.Tensor  # int64 [K,M,M]: 0 background, 1 target person, 2 other persons
    image_id: int
    index: int  # position in the data set
    letterbox: Letterbox  # original image -> input square (before augmentation)
    ann_ids: list[int]  # annotation id of each ROI
    augment: AugmentParams | None = None  # what augmentation did to this sample, None when off


@dataclass
class RoiBatch:
    images: torch.Tensor  # uint8 [B,3,S,S]
    rois: torch.Tensor  # float32 [N,5] (batch_index, x1, y1, x2, y2)
    targets: torch.Tensor  # int64 [N,M,M]
    indices: torch.Tensor  # int64 [B] data set indices
    image_ids: list[int]
    letterboxes: list[Letterbox]
    ann_ids: list[list[int]]

    def pin_memory(self) -> RoiBatch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return dataclasses.replace(
            self,
            images=self.images.pin_memory(),
            rois=self.rois.pin_memory(),
            targets=self.targets.pin_memory(),
        )


def collate_roi_samples(samples: Sequence[RoiSample]) -> RoiBatch:
    """Stack samples; each ROI gets its sample's batch index as column 0."""
    batch_index = torch.cat(
        [torch.full((len(s.rois), 1), float(b), dtype=torch.float32) for b, s in enumerate(samples)]
    )
    return RoiBatch(
        images=torch.stack([s.image for s in samples]),
        rois=torch.cat([batch_index, torch.cat([s.rois for s in samples])], dim=1),
        targets=torch.cat([s.targets for s in samples]),
        indices=torch.tensor([s.index for s in samples], dtype=torch.int64),
        image_ids=[s.image_id for s in samples],
        letterboxes=[s.letterbox for s in samples],
        ann_ids=[list(s.ann_ids) for s in samples],
    )


@dataclass(frozen=True)
class _Entry:
    image_id: int
    path: Path
    letterbox: Letterbox
    ann_ids: tuple[int, ...]  # all kept instances, annotation order
    boxes: np.ndarray  # [K,4] float32 xyxy in network-input pixels
    other_ann_ids: tuple[int, ...] = ()  # the image's other person annotations (crowd, small): class 2 only


class _PackedMaskCache:
    """LRU of bit-packed letterboxed masks, bounded in bytes (8x smaller than bool arrays)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[int, np.ndarray] = OrderedDict()

    def get(self, key: int, size: int) -> np.ndarray | None:
        packed = self._items.get(key)
        if packed is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return np.unpackbits(packed, axis=-1, count=size).view(bool)

    def put(self, key: int, masks: np.ndarray) -> None:
        packed = np.packbits(masks, axis=-1)
        if packed.nbytes > self.max_bytes:
            return
        self._items[key] = packed
        self.bytes += packed.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes


class PersonRoiDataset(torch.utils.data.Dataset):
    """COCO person instances as ``RoiSample``s (see the module docstring); pair with ``collate_roi_samples``.

    ``mask_cache_mb`` bounds the decoded-mask cache (each DataLoader worker holds its own copy).
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path,
        *,
        input_size: int = 640,
        roi_padding: float = 0.1,
        mask_size: int = 56,
        min_instance_size: int = 16,
        max_rois_per_image: int = 16,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        mask_cache_mb: float = 256.0,
    ) -> None:
        for name, value, ok in (
            ("input_size", input_size, input_size >= 1),
            ("roi_padding", roi_padding, 0 <= roi_padding <= 1),
            ("mask_size", mask_size, mask_size >= 1),
            ("min_instance_size", min_instance_size, min_instance_size >= 0),
            ("max_rois_per_image", max_rois_per_image, max_rois_per_image >= 1),
            ("mask_cache_mb", mask_cache_mb, mask_cache_mb >= 0),
        ):
            if not ok:
                raise ValueError(f"PersonRoiDataset: {name}={value!r} is out of range")
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.input_size = input_size
        self.roi_padding = roi_padding
        self.mask_size = mask_size
        self.min_instance_size = min_instance_size
        self.max_rois_per_image = max_rois_per_image
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.epoch = 0
        if not self.annotation_file.is_file():
            raise DataError(f"{self.annotation_file}: annotation file not found")
        raw = self.annotation_file.read_bytes()
        self._annotation_sha256 = hashlib.sha256(raw).hexdigest()
        self.coco = coco_from_dict(parse_json(raw, self.annotation_file))
        self._entries, self._file_sizes = self._build_index()
        self._masks = _PackedMaskCache(int(mask_cache_mb * 2**20))
        self._identity: str | None = None

    # -- index ---------------------------------------------------------------------------------
    def _build_index(self) -> tuple[list[_Entry], list[int]]:
        source = self.annotation_file
        person_ids = {c["id"] for c in self.coco.dataset.get("categories", []) if c.get("name") == "person"}
        if not person_ids:
            raise DataError(f"{source}: no person category (a category named 'person') in 'categories'")
        entries: list[_Entry] = []
        sizes: list[int] = []
        for image_id, info in self.coco.imgs.items():
            people = [a for a in self.coco.imgToAnns.get(image_id, []) if a.get("category_id") in person_ids]
            kept = [a for a in people if self._gets_roi(a)]
            if not kept:
                continue
            path = self.image_dir / info["file_name"]
            if not path.is_file():
                raise DataError(f"{path}: image file not found (image id {image_id} in {source})")
            letterbox = Letterbox.from_size(int(info["width"]), int(info["height"]), self.input_size)
            xywh = np.array([ann["bbox"] for ann in kept], dtype=np.float64)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            entries.append(
                _Entry(
                    image_id,
                    path,
                    letterbox,
                    tuple(int(a["id"]) for a in kept),
                    letterbox.boxes_forward(xyxy),
                    tuple(int(a["id"]) for a in people if not self._gets_roi(a)),
                )
            )
            sizes.append(path.stat().st_size)
        if not entries:
            raise DataError(
                f"{source}: no usable person instance (non-crowd, box width and height >= "
                f"min_instance_size={self.min_instance_size} px)"
            )
        return entries, sizes

    def _gets_roi(self, ann: dict[str, Any]) -> bool:
        """A person annotation is a ROI candidate: not crowd, box at least ``min_instance_size``."""
        return not ann.get("iscrowd", 0) and min(ann["bbox"][2], ann["bbox"][3]) >= self.min_instance_size

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def image_ids(self) -> list[int]:
        return [e.image_id for e in self._entries]

    @property
    def num_rois(self) -> int:
        return sum(min(len(e.ann_ids), self.max_rois_per_image) for e in self._entries)

    def image_info(self, index: int) -> dict[str, Any]:
        return self.coco.imgs[self._entries[index].image_id]

    def identity(self) -> str:
        """Stable hash of what determines the letterboxed images: the annotation file bytes, the kept
        images (id, file name, file size) in index order, and the input size. Not mask_size or
        roi_padding: they change targets, not images (a feature cache stays valid across them); key
        anything computed from targets on ``target_key()``."""
        if self._identity is None:
            kept = [
                [e.image_id, e.path.name, size]
                for e, size in zip(self._entries, self._file_sizes, strict=True)
            ]
            digest = hashlib.sha256()
            digest.update(self._annotation_sha256.encode())
            digest.update(json.dumps({"images": kept, "input_size": self.input_size}).encode())
            self._identity = digest.hexdigest()
        return self._identity

    def target_key(self) -> dict[str, Any]:
        """Every setting that changes ``targets(index)`` or which ROIs exist, JSON-serialisable.

        Key caches of anything computed from the un-augmented targets on it (class pixel statistics):
        the annotation file bytes (which people exist, their masks and boxes), the input size (letterbox),
        mask size and ROI padding (sampling), ``min_instance_size`` and ``max_rois_per_image`` (which
        people get a ROI), and the target rules (``TARGETS_VERSION``, where class 2 comes from). Not the
        augmentation or its seed (``targets()`` is never augmented), image files or the mask cache.
        """
        return {
            "annotations_sha256": self._annotation_sha256,
            "input_size": self.input_size,
            "mask_size": self.mask_size,
            "roi_padding": self.roi_padding,
            "min_instance_size": self.min_instance_size,
            "max_rois_per_image": self.max_rois_per_image,
            "targets_version": TARGETS_VERSION,
            "other_person": OTHER_PERSON_SOURCE,
        }

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws from (seed, epoch, index): the same epoch replays the same samples.

        Call it before creating the epoch's DataLoader iterator (workers copy the data set when they
        start, so with ``persistent_workers=True`` a later call does not reach them).
        """
        self.epoch = int(epoch)

    # -- pixels --------------------------------------------------------------------------------
    def _read_rgb(self, entry: _Entry) -> np.ndarray:
        # COCO's width/height describe the stored pixels, so EXIF orientation is ignored.
        image = cv2.imread(str(entry.path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None:
            raise DataError(
                f"{entry.path}: cannot read image (image id {entry.image_id} in {self.annotation_file})"
            )
        lb = entry.letterbox
        if image.shape[:2] != (lb.orig_h, lb.orig_w):
            raise DataError(
                f"{entry.path}: image is {image.shape[1]}x{image.shape[0]} but {self.annotation_file} says "
                f"{lb.orig_w}x{lb.orig_h} (image id {entry.image_id})"
            )
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _letterboxed_rgb(self, index: int) -> np.ndarray:
        entry = self._entries[index]
        return entry.letterbox.image_forward(self._read_rgb(entry))

    def load_image(self, index: int) -> torch.Tensor:
        """Letterboxed uint8 [3,S,S] RGB image, never augmented (what the feature cache stores)."""
        return torch.from_numpy(np.ascontiguousarray(self._letterboxed_rgb(index).transpose(2, 0, 1)))

    def _decode(self, ann_ids: Sequence[int], height: int, width: int) -> np.ndarray:
        """Bool masks [K,H,W] at the original size; polygons and (crowd) RLEs alike via ``annToRLE``."""
        if not ann_ids:
            return np.zeros((0, height, width), dtype=bool)
        rles = [self.coco.annToRLE(self.coco.anns[ann_id]) for ann_id in ann_ids]
        return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)  # the same decode as annToMask

    def _person_masks(self, index: int) -> np.ndarray:
        """Letterboxed bool masks [K+1,S,S]: the K kept instances, then the union of the image's other
        people (crowd regions, people under ``min_instance_size``). Decoded once, cached."""
        cached = self._masks.get(index, self.input_size)
        if cached is not None:
            return cached
        entry = self._entries[index]
        lb = entry.letterbox
        kept = self._decode(entry.ann_ids, lb.orig_h, lb.orig_w)
        # One union row: the others only ever paint class 2, and resampling the union (not each person)
        # keeps a pixel that several small people cover together.
        others = self._decode(entry.other_ann_ids, lb.orig_h, lb.orig_w).any(axis=0, keepdims=True)
        masks = lb.masks_forward(np.concatenate([kept, others]))
        self._masks.put(index, masks)
        return masks

    def instance_masks(self, index: int) -> np.ndarray:
        """Letterboxed bool masks [K,S,S] of all kept instances of an image (decoded once, cached)."""
        return self._person_masks(index)[: len(self._entries[index].ann_ids)]

    def other_people_mask(self, index: int) -> np.ndarray:
        """Letterboxed bool mask [S,S] of the image's people without a ROI candidate (crowd, small)."""
        return self._person_masks(index)[len(self._entries[index].ann_ids)]

    def mask_cache_info(self) -> dict[str, int]:
        return {"hits": self._masks.hits, "misses": self._masks.misses, "bytes": self._masks.bytes}

    # -- samples -------------------------------------------------------------------------------
    def _augmented(
        self, index: int, image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, roi_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, AugmentParams]:
        assert self.augment is not None
        params = sample_params(self.augment, np.random.default_rng([self.seed, self.epoch, index]))
        content_box = self._entries[index].letterbox.content_box
        aug_image, aug_masks, aug_boxes = apply_augment(image, masks, boxes, params, content_box)
        selected = aug_boxes[roi_ids]
        visible = roi_ids[(selected[:, 2] - selected[:, 0] >= 1) & (selected[:, 3] - selected[:, 1] >= 1)]
        if len(visible) == 0:  # zoomed every ROI person out of the frame: keep the sample, drop the zoom
            params = dataclasses.replace(params, scale=1.0)
            aug_image, aug_masks, aug_boxes = apply_augment(image, masks, boxes, params, content_box)
            visible = roi_ids
        return aug_image, aug_masks, aug_boxes, visible, params

    def _rois_and_targets(
        self, masks: np.ndarray, boxes: np.ndarray, roi_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        # masks: [K+1,S,S] (kept instances + the others' union), so class 2 covers every person.
        rois = np.stack([roi_from_box(boxes[k], self.roi_padding, self.input_size) for k in roi_ids])
        return rois, roi_targets(masks, rois, roi_ids, self.mask_size)

    def _roi_ids(self, index: int) -> np.ndarray:
        return np.arange(min(len(self._entries[index].ann_ids), self.max_rois_per_image))

    def targets(self, index: int) -> np.ndarray:
        """Un-augmented targets [K,M,M] of one image, without decoding its pixels (for statistics)."""
        return self._rois_and_targets(
            self._person_masks(index), self._entries[index].boxes, self._roi_ids(index)
        )[1]

    def __getitem__(self, index: int) -> RoiSample:
        if not 0 <= index < len(self._entries):
            raise IndexError(f"index {index} out of range for {len(self._entries)} images")
        entry = self._entries[index]
        image = self._letterboxed_rgb(index)
        masks = self._person_masks(index)  # the others' union rides along as the last row (class 2 only)
        boxes = entry.boxes
        roi_ids = self._roi_ids(index)
        params = None
        if self.augment is not None:
            image, masks, boxes, roi_ids, params = self._augmented(index, image, masks, boxes, roi_ids)
        rois, targets = self._rois_and_targets(masks, boxes, roi_ids)
        return RoiSample(
            image=torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            rois=torch.from_numpy(rois),
            targets=torch.from_numpy(targets),
            image_id=entry.image_id,
            index=index,
            letterbox=entry.letterbox,
            ann_ids=[entry.ann_ids[k] for k in roi_ids],
            augment=params,
        )
