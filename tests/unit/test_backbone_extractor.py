"""ONNX Runtime feature extraction on a tiny backbone built here with onnx.helper, checked against numpy.

The tiny backbone is three strided 3x3 convs (ReLU after the first two). Its first feature layer is an
internal tensor, not a graph output, as with the YOLOv9 featext Concat tensors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.backbone.extractor import OnnxFeatureExtractor, onnx_providers
from edgeseg.backbone.layer_map import LayerMap, LayerSpec, Preprocessing
from edgeseg.backbone.prepare import load_backbone
from edgeseg.cli.backbone import register

CHANNELS = (4, 6, 8)
TINY_SIZE = 64


def tiny_weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    c_in = (3, *CHANNELS[:-1])
    return [
        rng.normal(0, 0.3, size=(co, ci, 3, 3)).astype(np.float32)
        for ci, co in zip(c_in, CHANNELS, strict=True)
    ]


def make_tiny_onnx(
    path: Path,
    seed: int = 0,
    size: int = TINY_SIZE,
    batch: str | int = "N",
    tensor_names=("t1", "t2", "t3"),
    weights_as_inputs: bool = False,
) -> Path:
    """x [B,3,size,size] -> conv s2 -> relu (t1) -> conv s2 -> relu (t2) -> conv s2 (t3); only t3 is an output."""
    nodes, inits, prev = [], [], "x"
    for i, w in enumerate(tiny_weights(seed)):
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        conv = f"conv{i}" if i < 2 else tensor_names[2]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [conv], strides=[2, 2], pads=[1, 1, 1, 1]))
        if i < 2:
            nodes.append(helper.make_node("Relu", [conv], [tensor_names[i]]))
        prev = tensor_names[i]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])]
    if weights_as_inputs:  # as old exporters did: initializers also listed as graph inputs
        inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    graph = helper.make_graph(
        nodes,
        "tiny",
        inputs,
        [
            helper.make_tensor_value_info(
                tensor_names[2], TensorProto.FLOAT, [batch, CHANNELS[2], size // 8, size // 8]
            )
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


TINY_MAP = LayerMap(
    layers={"s2": LayerSpec("t1", 2), "s4": LayerSpec("t2", 4), "s8": LayerSpec("t3", 8)},
    roles={"fine": "s2", "mid": "s4", "deep": "s8"},
    preprocessing=Preprocessing(scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)),
)


def tiny_spec(tmp_path: Path, seed: int = 0, name: str = "tiny.onnx"):
    return TINY_MAP.bind(make_tiny_onnx(tmp_path / name, seed), "x", TINY_SIZE)


def conv2d_reference(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Plain zero-padded cross-correlation, as ONNX Conv defines it."""
    b, _, h, width = x.shape
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (width + 2 * pad - k) // stride + 1
    out = np.zeros((b, w.shape[0], ho, wo), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return out


def tiny_reference(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    mean = np.array([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1)
    std = np.array([0.2, 0.25, 0.3]).reshape(1, 3, 1, 1)
    x = (images.astype(np.float64) / 255 - mean) / std
    w = tiny_weights(seed)
    t1 = np.maximum(conv2d_reference(x, w[0], 2, 1), 0)
    t2 = np.maximum(conv2d_reference(t1, w[1], 2, 1), 0)
    t3 = conv2d_reference(t2, w[2], 2, 1)
    return {"s2": t1, "s4": t2, "s8": t3}


def random_images(n: int, seed: int = 1, size: int = TINY_SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)


def test_features_match_numpy_convolution(tmp_path: Path):
    extractor = OnnxFeatureExtractor(tiny_spec(tmp_path))
    images = random_images(3)
    got = extractor(images)
    want = tiny_reference(images)
    assert list(got) == ["s2", "s4", "s8"]
    for layer_id in want:
        assert got[layer_id].dtype == np.float32
        np.testing.assert_allclose(got[layer_id], want[layer_id], rtol=1e-4, atol=1e-4)


def test_layer_info_is_read_from_the_model(tmp_path: Path):
    info = OnnxFeatureExtractor(tiny_spec(tmp_path)).layer_info()
    assert {k: (v.channels, v.stride, v.height, v.width) for k, v in info.items()} == {
        "s2": (4, 2, 32, 32),
        "s4": (6, 4, 16, 16),
        "s8": (8, 8, 8, 8),
    }


def test_roles_select_a_subset_in_order(tmp_path: Path):
    extractor = OnnxFeatureExtractor(tiny_spec(tmp_path), layers=["deep", "fine"])
    assert extractor.layers == ("s8", "s2")
    images = random_images(1)
    got = extractor(images)
    assert list(got) == ["s8", "s2"]
    np.testing.assert_allclose(got["s2"], tiny_reference(images)["s2"], rtol=1e-4, atol=1e-4)


def test_internal_tensor_alone_is_extracted(tmp_path: Path):
    extractor = OnnxFeatureExtractor(tiny_spec(tmp_path), layers=["s4"])
    assert extractor.layer_info()["s4"].channels == 6
    assert extractor(random_images(2))["s4"].shape == (2, 6, 16, 16)


def test_pruning_keeps_initializer_inputs_consistent(tmp_path: Path):
    spec = TINY_MAP.bind(make_tiny_onnx(tmp_path / "old.onnx", weights_as_inputs=True), "x", TINY_SIZE)
    images = random_images(1)
    got = OnnxFeatureExtractor(spec, layers=["fine"])(images)  # w1, w2 are pruned away
    np.testing.assert_allclose(got["s2"], tiny_reference(images)["s2"], rtol=1e-4, atol=1e-4)


def test_unknown_role_names_the_backbone_layers(tmp_path: Path):
    with pytest.raises(ValueError, match=r"'coarse'.*fine->s2.*s8"):
        OnnxFeatureExtractor(tiny_spec(tmp_path), layers=["coarse"])


def test_missing_tensor_names_tensor_and_file(tmp_path: Path):
    spec = tiny_spec(tmp_path).replace(layers={"s2": LayerSpec("no_such_tensor", 2)}, roles={})
    with pytest.raises(ValueError, match=r"no_such_tensor.*tiny\.onnx"):
        OnnxFeatureExtractor(spec)


def test_declared_stride_is_checked_against_the_model(tmp_path: Path):
    spec = tiny_spec(tmp_path).replace(layers={"s4": LayerSpec("t2", 8)}, roles={})
    with pytest.raises(ValueError, match=r"s4.*16x16.*stride 8"):
        OnnxFeatureExtractor(spec)


def test_bad_images_are_rejected(tmp_path: Path):
    extractor = OnnxFeatureExtractor(tiny_spec(tmp_path))
    with pytest.raises(ValueError, match=r"uint8 images \[B,3,64,64\]"):
        extractor(random_images(1).astype(np.float32))
    with pytest.raises(ValueError, match=r"\[1, 3, 32, 32\]"):
        extractor(random_images(1, size=32))


def test_missing_provider_is_a_clear_error():
    available = ort.get_available_providers()
    if "TensorrtExecutionProvider" in available:
        pytest.skip("this onnxruntime has TensorRT; the error path needs a build without it")
    with pytest.raises(RuntimeError) as error:
        onnx_providers(["tensorrt"])
    message = str(error.value)
    assert "TensorrtExecutionProvider" in message and "edgeseg[gpu]" in message
    assert all(name in message for name in available)
    with pytest.raises(ValueError, match="'tpu'"):
        onnx_providers(["tpu"])


def test_cpu_provider_chain():
    assert onnx_providers(["cpu"]) == ["CPUExecutionProvider"]


def test_sha256_is_the_hash_of_the_file(tmp_path: Path):
    spec = tiny_spec(tmp_path)
    assert OnnxFeatureExtractor(spec).sha256 == hashlib.sha256(spec.onnx_path.read_bytes()).hexdigest()


def test_pickled_extractor_rebuilds_its_session(tmp_path: Path):
    extractor = OnnxFeatureExtractor(tiny_spec(tmp_path), layers=["mid"])
    copy = pickle.loads(pickle.dumps(extractor))
    images = random_images(2)
    np.testing.assert_array_equal(copy(images)["s4"], extractor(images)["s4"])


def test_fixed_batch_of_one_runs_image_by_image(tmp_path: Path):
    spec = TINY_MAP.bind(make_tiny_onnx(tmp_path / "b1.onnx", batch=1), "x", TINY_SIZE)
    images = random_images(3)
    got = OnnxFeatureExtractor(spec)(images)
    np.testing.assert_allclose(got["s8"], tiny_reference(images)["s8"], rtol=1e-4, atol=1e-4)


def test_user_onnx_with_yolov9_names(tmp_path: Path):
    # The tiny model's stride-4 and stride-8 tensors carry the featext names of layer_3 and layer_34.
    names = ("t1", "segmentation_model_3_Concat_output_0", "segmentation_model_34_Concat_output_0")
    path = make_tiny_onnx(tmp_path / "featext.onnx", size=128, tensor_names=names)
    spec = load_backbone(path, "yolov9", input_size=None)
    assert (spec.input_name, spec.input_size) == ("x", 128)
    extractor = OnnxFeatureExtractor(spec, layers=["fine", "deep"])
    info = extractor.layer_info()
    assert (info["layer_3"].channels, info["layer_3"].height) == (6, 32)
    assert (info["layer_34"].channels, info["layer_34"].height) == (8, 16)
    with pytest.raises(ValueError, match="segmentation_model_22_Concat_output_0"):
        OnnxFeatureExtractor(spec, layers=["mid"])


def test_load_backbone_errors_name_the_file(tmp_path: Path):
    path = make_tiny_onnx(tmp_path / "net.onnx")
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        load_backbone(tmp_path / "absent.onnx", "yolov9")
    with pytest.raises(ValueError, match=r"no layer map for .*net\.onnx"):
        load_backbone(path, None)
    with pytest.raises(FileNotFoundError, match="map.json"):
        load_backbone(path, tmp_path / "map.json")
    with pytest.raises(ValueError, match=r"takes 64x64 images, but input_size=640"):
        load_backbone(path, "yolov9", input_size=640)
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="junk.onnx"):
        load_backbone(not_onnx, "yolov9")


def test_sidecar_and_layer_map_file_give_the_same_spec(tmp_path: Path):
    spec = tiny_spec(tmp_path)
    spec.save()
    from_sidecar = load_backbone(spec.onnx_path, None, input_size=TINY_SIZE)
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(TINY_MAP.to_dict()))
    from_file = load_backbone(spec.onnx_path, map_file, input_size=TINY_SIZE)
    assert from_sidecar.layers == from_file.layers == spec.layers
    assert from_sidecar.preprocessing == from_file.preprocessing == spec.preprocessing


def test_backbone_info_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    spec = tiny_spec(tmp_path)
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(TINY_MAP.to_dict()))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["backbone", "info", "--onnx", str(spec.onnx_path), "--layer-map", str(map_file)]
    )
    assert args.func(args) == 0
    lines = {
        line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("s")
    }
    assert lines["s2"][1:6] == ["fine", "4", "2", "32x32", "t1"]
    assert lines["s8"][1:6] == ["deep", "8", "8", "8x8", "t3"]
