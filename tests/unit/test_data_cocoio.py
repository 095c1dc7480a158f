"""COCO reading/writing: pycocotools round trips, visible masks, errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from edgeseg.data.cocoio import CocoSceneWriter, DataError, encode_rle, read_json, visible_masks

FIXTURE = Path(__file__).parents[1] / "fixtures" / "coco_people.json"


def test_polygon_and_rle_decode_to_the_hand_drawn_rectangles() -> None:
    coco = COCO(str(FIXTURE))
    expected = {10: (2, 2, 14, 14), 11: (10, 4, 22, 16), 30: (20, 10, 60, 50)}  # x0, y0, x1, y1 (exclusive)
    for ann_id, (x0, y0, x1, y1) in expected.items():
        ann = coco.anns[ann_id]
        info = coco.imgs[ann["image_id"]]
        reference = np.zeros((info["height"], info["width"]), np.uint8)
        reference[y0:y1, x0:x1] = 1
        np.testing.assert_array_equal(coco.annToMask(ann), reference, err_msg=f"annotation {ann_id}")


def test_encode_rle_round_trip_through_pycocotools() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((37, 53)) > 0.6
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [37, 53]
    json.dumps(rle)  # JSON-ready
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_visible_masks_subtract_every_later_mask() -> None:
    a = np.zeros((4, 6), bool)
    a[:, 0:4] = True
    b = np.zeros((4, 6), bool)
    b[:, 2:5] = True
    c = np.zeros((4, 6), bool)
    c[0:2, 3:6] = True
    va, vb, vc = visible_masks([a, b, c])  # painted a (far), b, c (near)
    assert va[0].tolist() == [True, True, False, False, False, False]
    assert vb[0].tolist() == [False, False, True, False, False, False]
    assert vb[3].tolist() == [False, False, True, True, True, False]
    np.testing.assert_array_equal(vc, c)


def test_scene_writer_produces_a_valid_coco_file(tmp_path: Path) -> None:
    image = np.full((20, 30, 3), 90, np.uint8)
    far = np.zeros((20, 30), bool)
    far[2:18, 2:12] = True
    near = np.zeros((20, 30), bool)
    near[5:20, 8:20] = True
    hidden = np.zeros((20, 30), bool)
    hidden[6:8, 9:11] = True  # painted before `near`, fully covered by it: no annotation
    writer = CocoSceneWriter(tmp_path / "train", "test")
    assert writer.add_scene(image, [far, hidden, near]) == 2
    path = writer.write({"seed": 0})
    coco = COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [a["bbox"] for a in anns] == [[2.0, 2.0, 10.0, 16.0], [8.0, 5.0, 12.0, 15.0]]
    assert [a["area"] for a in anns] == [10 * 16 - 4 * 13, 12 * 15]  # far loses x 8..11, y 5..17
    assert cv2.imread(str(tmp_path / "train" / "images" / "000001.jpg")).shape == (20, 30, 3)


def test_malformed_json_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [\n  {"id": 1,, }\n]}')
    with pytest.raises(DataError, match=r"broken\.json: malformed JSON at line 2, column 12"):
        read_json(path)


def test_missing_or_wrong_shape_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.json: annotation file not found"):
        read_json(tmp_path / "nope.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"list\.json: not a COCO instances file"):
        read_json(tmp_path / "list.json")
