"""Person-only COCO files: crowd and other categories removed, deterministic nested subsets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from edgeseg.data.coco_person import write_person_only
from edgeseg.data.cocoio import DataError


def _instances(path: Path, images: int = 30) -> Path:
    """Images 1..30; image i has one person (ann 100+i), a crowd person (200+i) on even i, a dog (300+i)
    on every image, and image 30 has only the dog and the crowd."""
    anns = []
    for i in range(1, images + 1):
        poly = [[1, 1, 9, 1, 9, 9, 1, 9]]
        if i != images:
            anns.append(
                {
                    "id": 100 + i,
                    "image_id": i,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": [1, 1, 8, 8],
                    "area": 64,
                    "segmentation": poly,
                }
            )
        if i % 2 == 0:
            anns.append(
                {
                    "id": 200 + i,
                    "image_id": i,
                    "category_id": 1,
                    "iscrowd": 1,
                    "bbox": [1, 1, 8, 8],
                    "area": 64,
                    "segmentation": poly,
                }
            )
        anns.append(
            {
                "id": 300 + i,
                "image_id": i,
                "category_id": 18,
                "iscrowd": 0,
                "bbox": [1, 1, 8, 8],
                "area": 64,
                "segmentation": poly,
            }
        )
    data = {
        "info": {"year": 2017},
        "licenses": [{"id": 4, "name": "cc"}],
        "images": [
            {"id": i, "file_name": f"{i:012d}.jpg", "width": 10, "height": 10} for i in range(1, images + 1)
        ],
        "annotations": anns,
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 18, "name": "dog", "supercategory": "animal"},
        ],
    }
    path.write_text(json.dumps(data))
    return path


def test_filters_crowd_and_other_categories(tmp_path: Path) -> None:
    source = _instances(tmp_path / "instances_val2017.json")
    paths = write_person_only(source, tmp_path / "out", subsets=(5, 12), seed=0)
    assert [p.name for p in paths] == [
        "instances_val2017_person_only_no_crowd.json",
        "instances_val2017_person_only_no_crowd_5.json",
        "instances_val2017_person_only_no_crowd_12.json",
    ]
    full = json.loads(paths[0].read_text())
    assert [a["id"] for a in full["annotations"]] == [100 + i for i in range(1, 30)]
    assert [im["id"] for im in full["images"]] == list(range(1, 30))  # image 30 has no non-crowd person
    assert full["categories"] == [{"id": 1, "name": "person", "supercategory": "person"}]
    assert full["info"] == {"year": 2017} and full["licenses"] == [{"id": 4, "name": "cc"}]
    COCO(str(paths[0]))  # loads in pycocotools


def test_subsets_are_deterministic_nested_and_consistent(tmp_path: Path) -> None:
    source = _instances(tmp_path / "instances_train2017.json")
    first = write_person_only(source, tmp_path / "a", subsets=(5, 12), seed=7)
    second = write_person_only(source, tmp_path / "b", subsets=(5, 12), seed=7)
    other_seed = write_person_only(source, tmp_path / "c", subsets=(5, 12), seed=8)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    small, large = (json.loads(p.read_text()) for p in first[1:])
    small_ids = [im["id"] for im in small["images"]]
    large_ids = [im["id"] for im in large["images"]]
    assert len(small_ids) == 5 and len(large_ids) == 12
    assert set(small_ids) <= set(large_ids)
    assert small_ids == sorted(small_ids)  # original file order
    assert {a["image_id"] for a in small["annotations"]} == set(small_ids)
    assert all(a["category_id"] == 1 and a["iscrowd"] == 0 for a in large["annotations"])
    assert json.loads(other_seed[1].read_text())["images"] != small["images"]


def test_subset_larger_than_the_person_images_names_file(tmp_path: Path) -> None:
    source = _instances(tmp_path / "instances_val2017.json")
    with pytest.raises(DataError, match=r"instances_val2017\.json: subset size 500 must be in \[1, 29\]"):
        write_person_only(source, tmp_path / "out", subsets=(500,))


def test_no_person_category_names_file(tmp_path: Path) -> None:
    path = tmp_path / "cats.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 17, "name": "cat"}]}))
    with pytest.raises(DataError, match=r"cats\.json: no person category"):
        write_person_only(path, tmp_path / "out")
