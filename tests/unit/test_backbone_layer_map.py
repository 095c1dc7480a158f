"""Layer maps, roles and preprocessing (no ONNX needed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeseg.backbone.layer_map import (
    EFFICIENTNET_LITE0,
    LAYER_MAPS,
    YOLOV9_FEATEXT,
    BackboneSpec,
    LayerMap,
    LayerSpec,
    Preprocessing,
    load_layer_map,
    resolve_layers,
)


def test_yolov9_map_is_the_original_featext_table():
    # Names and strides from the original system's table (reference doc, section 2).
    expected = {
        "layer_3": ("segmentation_model_3_Concat_output_0", 4),
        "layer_19": ("segmentation_model_19_Concat_output_0", 4),
        "layer_5": ("segmentation_model_5_Concat_output_0", 8),
        "layer_22": ("segmentation_model_22_Concat_output_0", 8),
        "layer_34": ("segmentation_model_34_Concat_output_0", 8),
    }
    assert {k: (v.output_name, v.stride) for k, v in YOLOV9_FEATEXT.layers.items()} == expected
    assert resolve_layers(["fine", "mid", "deep"], YOLOV9_FEATEXT) == ("layer_3", "layer_22", "layer_34")
    pixels = np.broadcast_to(np.array([0, 51, 255], dtype=np.uint8), (1, 3, 1, 3))
    assert np.allclose(YOLOV9_FEATEXT.preprocessing.apply_numpy(pixels)[0, 0, 0], [0.0, 0.2, 1.0])
    assert LAYER_MAPS["yolov9"] is YOLOV9_FEATEXT


def test_efficientnet_roles_match_the_role_contract():
    strides = {role: EFFICIENTNET_LITE0.layers[lid].stride for role, lid in EFFICIENTNET_LITE0.roles.items()}
    assert strides["fine"] == 4
    assert strides["mid"] == 8
    assert strides["deep"] >= 8
    pixels = np.array([[[[0, 127, 255]]] * 3], dtype=np.uint8)
    assert np.allclose(EFFICIENTNET_LITE0.preprocessing.apply_numpy(pixels)[0, 0, 0], [-127 / 128, 0.0, 1.0])


def test_resolve_mixes_roles_and_layer_ids_in_order():
    assert resolve_layers(["layer_5", "deep"], YOLOV9_FEATEXT) == ("layer_5", "layer_34")


def test_unknown_name_lists_roles_and_layer_ids():
    with pytest.raises(ValueError) as error:
        resolve_layers(["fine", "coarse"], YOLOV9_FEATEXT)
    message = str(error.value)
    assert "'coarse'" in message
    assert "fine->layer_3" in message and "deep->layer_34" in message
    assert "layer_19" in message and "layer_5" in message


def test_same_layer_twice_is_an_error():
    with pytest.raises(ValueError, match="layer_34"):
        resolve_layers(["deep", "layer_34"], YOLOV9_FEATEXT)


def test_role_must_point_to_a_layer():
    with pytest.raises(ValueError, match="'deep'.*'nope'"):
        LayerMap({"a": LayerSpec("t", 4)}, {"deep": "nope"}, Preprocessing())


def test_layer_stride_must_be_positive():
    with pytest.raises(ValueError, match="stride"):
        LayerSpec("t", 0)


def test_preprocessing_per_channel_matches_hand_values():
    pre = Preprocessing(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    image = np.full((1, 3, 2, 2), 255, dtype=np.uint8)
    got = pre.apply_numpy(image)[0, :, 0, 0]
    assert np.allclose(got, [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], atol=1e-6)
    assert torch.allclose(pre.apply_torch(torch.from_numpy(image)), torch.from_numpy(pre.apply_numpy(image)))


def test_sidecar_round_trip_and_move(tmp_path: Path):
    onnx_path = tmp_path / "a" / "net.onnx"
    onnx_path.parent.mkdir()
    onnx_path.write_bytes(b"not used here")
    spec = YOLOV9_FEATEXT.bind(onnx_path, "images", 640, note="x")
    written = spec.save()
    assert written == tmp_path / "a" / "net.json"
    assert json.loads(written.read_text())["onnx"] == "net.onnx"  # relative: the pair can move together
    assert BackboneSpec.load(written) == spec
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = BackboneSpec.load(tmp_path / "b" / "net.json")
    assert moved.onnx_path == tmp_path / "b" / "net.onnx"
    assert moved.layers == spec.layers and moved.roles == spec.roles and moved.metadata == {"note": "x"}


def test_layer_map_file_accepts_pairs_and_reports_bad_files(tmp_path: Path):
    path = tmp_path / "map.json"
    path.write_text(
        json.dumps({"layers": {"x": ["t1", 8]}, "roles": {"deep": "x"}, "preprocessing": {"scale": 2}})
    )
    layer_map = load_layer_map(path)
    assert layer_map.layers == {"x": LayerSpec("t1", 8)} and layer_map.preprocessing.scale == 2.0
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_layer_map(broken)
    no_layers = tmp_path / "empty.json"
    no_layers.write_text("{}")
    with pytest.raises(ValueError, match="empty.json"):
        load_layer_map(no_layers)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_layer_map(tmp_path / "missing.json")
