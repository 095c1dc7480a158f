"""Person-only COCO files: the original project's ``*_person_only_no_crowd{,_100,_500}.json``.

The original kept these files out of its repository and had no script to make them; this is that
script. Kept: annotations of category 1 (person) that are not crowd regions, and the images that have at
least one of them. Subsets are prefixes of one seeded permutation of those images (the same seed gives
the same files on every machine, and smaller subsets are contained in larger ones); images and
annotations keep their original file order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.data.cocoio import PERSON_CATEGORY, DataError, read_json, write_json


def _person_only(data: dict[str, Any], source: Path) -> dict[str, Any]:
    categories = [c for c in data.get("categories", []) if c.get("id") == PERSON_CATEGORY["id"]]
    if not categories:
        raise DataError(f"{source}: no person category (id {PERSON_CATEGORY['id']}) in 'categories'")
    annotations = [
        a
        for a in data.get("annotations", [])
        if a.get("category_id") == PERSON_CATEGORY["id"] and not a.get("iscrowd", 0)
    ]
    with_person = {a["image_id"] for a in annotations}
    images = [im for im in data["images"] if im["id"] in with_person]
    out: dict[str, Any] = {key: data[key] for key in ("info", "licenses") if key in data}
    out.update(images=images, annotations=annotations, categories=categories)
    return out


def _subset(full: dict[str, Any], chosen: set[int]) -> dict[str, Any]:
    out = {key: value for key, value in full.items() if key not in ("images", "annotations")}
    out["images"] = [im for im in full["images"] if im["id"] in chosen]
    out["annotations"] = [a for a in full["annotations"] if a["image_id"] in chosen]
    return out


def write_person_only(
    instances_json: str | Path,
    out_dir: str | Path,
    subsets: Sequence[int] | Iterable[int] = (100, 500),
    seed: int = 0,
) -> list[Path]:
    """Write ``<stem>_person_only_no_crowd.json`` and one ``..._{n}.json`` per subset size; returns the paths.

    A subset larger than the number of images with a person raises (its name would promise more images
    than it holds).
    """
    source = Path(instances_json)
    out_dir = Path(out_dir)
    full = _person_only(read_json(source), source)
    stem = f"{source.stem}_person_only_no_crowd"
    written = [write_json(out_dir / f"{stem}.json", full)]
    # One permutation for all sizes, so the 100-image subset is contained in the 500-image one.
    order = np.random.default_rng(seed).permutation([im["id"] for im in full["images"]]).tolist()
    for size in subsets:
        if not 1 <= size <= len(full["images"]):
            raise DataError(
                f"{source}: subset size {size} must be in [1, {len(full['images'])}] "
                "(the number of images with at least one non-crowd person)"
            )
        written.append(write_json(out_dir / f"{stem}_{size}.json", _subset(full, set(order[:size]))))
    return written
