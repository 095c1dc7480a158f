"""ONNX export of every decoder and fusion: graph interface, ORT parity, sidecar, backbone + head merge."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import edgeseg
from edgeseg.backbone.layer_map import Preprocessing
from edgeseg.config import ModelConfig
from edgeseg.export import ExportParityError, export_head, merge_backbone_and_head
from edgeseg.models import build_head, list_components
from edgeseg.models.fusion import SingleLayer
from edgeseg.models.head import RoiSegmentationHead
from edgeseg.models.pooling import MultiLayerRoiPooler


def single_thread() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return options


pytestmark = [
    pytest.mark.usefixtures("single_torch_thread"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning"),
]

INPUT_SIZE = 64


@dataclass(frozen=True)
class FakeLayer:
    channels: int
    stride: int
    height: int
    width: int
    output_name: str = ""


LAYERS = {
    "l4": FakeLayer(12, 4, 16, 16, "feat_s4"),
    "l8": FakeLayer(20, 8, 8, 8, "feat_s8"),
    "l16": FakeLayer(24, 16, 4, 4, "feat_s16"),
}


def tiny_config(decoder: str = "plain", **changes) -> ModelConfig:
    base = dict(layers=("l4", "l8", "l16"), roi_size=8, channels=12, mask_size=16, rgb_channels=8)
    if decoder == "cascade":
        base.update(decoder="plain", cascade=True)
    else:
        base["decoder"] = decoder
    return ModelConfig(**{**base, **changes})


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), single_thread(), providers=["CPUExecutionProvider"])


def torch_logits(head, features, rois, image=None) -> np.ndarray:
    head.eval()
    with torch.no_grad():
        return head([torch.from_numpy(f) for f in features], torch.from_numpy(rois),
                    None if image is None else torch.from_numpy(image))["logits"].numpy()  # fmt: skip


def random_inputs(head, batch_size: int, seed: int):
    rng = np.random.default_rng(seed)
    features = [
        rng.standard_normal((batch_size, LAYERS[lid].channels, LAYERS[lid].height, LAYERS[lid].width)).astype(
            np.float32
        )
        for lid in head.layer_ids
    ]
    image = rng.integers(0, 256, (batch_size, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    return features, (image if head.needs_image else None)


ROIS = np.array(
    [
        [0, 3, 5, 40, 44],
        [2, 30, 20, 70, 66],
        [1, -8, 10, 22, 30],
        [2, 12.2, 40.1, 12.9, 40.6],
        [1, 0, 0, 64, 64],
    ],
    dtype=np.float32,
)

# Every decoder and every fusion at least once (the shorter list cycles, so a new component of either
# kind adds a case instead of breaking collection), with variable ROI sizes and the RGB branch on.
_DECODERS, _FUSIONS = list_components()["decoder"], list_components()["fusion"]
EXPORT_CASES = [
    (_DECODERS[i % len(_DECODERS)], _FUSIONS[i % len(_FUSIONS)])
    for i in range(max(len(_DECODERS), len(_FUSIONS)))
]


@pytest.mark.parametrize(("decoder", "fusion"), EXPORT_CASES)
def test_export_matches_torch_in_onnxruntime(tmp_path, decoder, fusion):
    torch.manual_seed(0)
    head = build_head(tiny_config(decoder, fusion=fusion, roi_sizes=(16, 12, 8), rgb_layers=("l4",)), LAYERS)
    report = export_head(head, LAYERS, INPUT_SIZE, tmp_path / "head.onnx")

    expected_inputs = ["features_l4", "features_l8", "features_l16", "image", "rois"]
    assert list(report.input_names) == expected_inputs
    sess = session(report.onnx_path)
    assert [i.name for i in sess.get_inputs()] == expected_inputs
    assert [o.name for o in sess.get_outputs()] == ["masks"]
    assert report.max_abs_diff <= 1e-3 and report.num_rois_checked >= 3

    # Independently of the built-in check: another batch size and ROI count (dynamic axes), and no ROIs.
    features, image = random_inputs(head, batch_size=3, seed=5)
    feed = dict(zip(expected_inputs[:3], features, strict=True)) | {"image": image}
    for rois in (ROIS, ROIS[:0]):
        (masks,) = sess.run(["masks"], feed | {"rois": rois})
        assert masks.shape == (len(rois), 3, 16, 16)
        if len(rois):
            np.testing.assert_allclose(masks, torch_logits(head, features, rois, image), atol=1e-4, rtol=0)


def test_sidecar_describes_the_graph(tmp_path):
    head = build_head(
        tiny_config("plain", layers=("l8", "l4"), roi_sizes=(8, 16), rgb_layers=("l4",)), LAYERS
    )
    config = {"model": {"decoder": "plain"}}
    preprocessing = {"letterbox": True, "scale": "0..255", "layout": "NCHW RGB"}
    report = export_head(
        head, LAYERS, INPUT_SIZE, tmp_path / "model.onnx",
        config_dict=config, metrics={"val/miou": 0.5}, extra={"preprocessing": preprocessing},
    )  # fmt: skip
    assert report.sidecar_path == tmp_path / "model.json"
    sidecar = json.loads(report.sidecar_path.read_text())
    assert [i["name"] for i in sidecar["inputs"]] == ["features_l8", "features_l4", "image", "rois"]
    assert sidecar["inputs"][0]["shape"] == ["batch", 20, 8, 8]
    assert [
        (layer["id"], layer["stride"], layer["channels"], layer["roi_size"]) for layer in sidecar["layers"]
    ] == [
        ("l8", 8, 20, 8),
        ("l4", 4, 12, 16),
    ]
    assert (
        sidecar["layers"][1]["backbone_output"] == "feat_s4" and sidecar["layers"][1]["rgb_enhanced"] is True
    )
    assert sidecar["class_names"] == ["background", "target", "other"]
    assert sidecar["mask_size"] == 16 and sidecar["outputs"][0]["shape"] == ["num_rois", 3, 16, 16]
    assert sidecar["config"] == config and sidecar["metrics"] == {"val/miou": 0.5}
    assert sidecar["preprocessing"] == preprocessing
    assert sidecar["edgeseg_version"] == edgeseg.__version__
    assert sidecar["parity"]["max_abs_diff"] == report.max_abs_diff
    with pytest.raises(ValueError, match="would overwrite"):
        export_head(head, LAYERS, INPUT_SIZE, tmp_path / "other.onnx", extra={"mask_size": 3})


class DriftingDecoder(nn.Module):
    """Adds how often it has been called: a traced graph freezes that count, so torch and ONNX disagree."""

    mask_size = 8

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(12, 3, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"logits": self.classifier(x) + float(self.calls)}


def test_parity_failure_raises(tmp_path):
    pooler = MultiLayerRoiPooler(["l8"], [20], [8], [8], out_channels=12, out_size=8)
    head = RoiSegmentationHead(pooler, SingleLayer(), DriftingDecoder())
    with pytest.raises(ExportParityError, match="differs from torch by"):
        export_head(head, LAYERS, INPUT_SIZE, tmp_path / "drift.onnx")


def tiny_backbone(path, uint8_input: bool, opset: int = 13) -> None:
    """images [B,3,64,64] -> stride-4 and stride-8 conv features (+ an output the head does not use)."""
    rng = np.random.default_rng(0)
    w4 = numpy_helper.from_array(rng.standard_normal((12, 3, 4, 4)).astype(np.float32) * 0.2, "w4")
    w8 = numpy_helper.from_array(rng.standard_normal((20, 12, 2, 2)).astype(np.float32) * 0.2, "w8")
    nodes = []
    source = "images"
    if uint8_input:
        nodes += [helper.make_node("Cast", ["images"], ["images_f"], to=TensorProto.FLOAT)]
        source = "images_f"
    nodes += [
        helper.make_node("Conv", [source, "w4"], ["feat_s4"], strides=[4, 4]),
        helper.make_node("Conv", ["feat_s4", "w8"], ["feat_s8"], strides=[2, 2]),
        helper.make_node("Relu", ["feat_s8"], ["unused"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_backbone",
        [
            helper.make_tensor_value_info(
                "images", TensorProto.UINT8 if uint8_input else TensorProto.FLOAT, ["B", 3, 64, 64]
            )
        ],  # fmt: skip
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
            for name in ("feat_s4", "feat_s8", "unused")
        ],
        initializer=[w4, w8],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))


def head_and_backbone(tmp_path, rgb: bool, uint8_input: bool):
    """A two-layer head (RGB-enhanced on l4 when ``rgb``) exported to ONNX, and the tiny backbone."""
    layers = {"l4": LAYERS["l4"], "l8": LAYERS["l8"]}
    cfg = tiny_config("plain", layers=("l4", "l8"), rgb_layers=("l4",) if rgb else ())
    head_path = export_head(build_head(cfg, layers), layers, INPUT_SIZE, tmp_path / "head.onnx").onnx_path
    backbone_path = tmp_path / "backbone.onnx"
    tiny_backbone(backbone_path, uint8_input=uint8_input)
    return head_path, backbone_path


@pytest.mark.parametrize("rgb", [False, True])
def test_merged_backbone_and_head_equals_running_them_separately(tmp_path, rgb):
    # opset 13: the merge must convert it to the head's 17
    head_path, backbone_path = head_and_backbone(tmp_path, rgb, uint8_input=rgb)

    merged_path = merge_backbone_and_head(
        backbone_path, {"l4": "feat_s4", "l8": "feat_s8"}, head_path, tmp_path / "merged.onnx",
        image_scale=1.0 if rgb else None,
    )  # fmt: skip
    merged = session(merged_path)
    assert [i.name for i in merged.get_inputs()] == ["images", "rois"]
    assert [o.name for o in merged.get_outputs()] == ["masks"]

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 3, 64, 64)).astype(np.uint8 if rgb else np.float32)
    if not rgb:
        images /= 255.0
    rois = ROIS[ROIS[:, 0] < 2]
    feat_s4, feat_s8 = session(backbone_path).run(["feat_s4", "feat_s8"], {"images": images})
    separate_feed = {"features_l4": feat_s4, "features_l8": feat_s8, "rois": rois}
    if rgb:
        separate_feed["image"] = images.astype(np.float32)
    (expected,) = session(head_path).run(["masks"], separate_feed)
    (actual,) = merged.run(["masks"], {"images": images, "rois": rois})
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)
    assert expected.shape == (len(rois), 3, 16, 16)


@pytest.mark.parametrize("rgb", [False, True])
def test_merged_graph_with_embedded_preprocessing_takes_the_0_255_image(tmp_path, rgb):
    head_path, backbone_path = head_and_backbone(tmp_path, rgb, uint8_input=False)  # takes normalised floats
    prep = Preprocessing(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

    merged_path = merge_backbone_and_head(
        backbone_path,
        {"l4": "feat_s4", "l8": "feat_s8"},
        head_path,
        tmp_path / "merged.onnx",
        preprocessing=prep,
    )
    merged = session(merged_path)
    assert [i.name for i in merged.get_inputs()] == ["image", "rois"]
    assert merged.get_inputs()[0].type == "tensor(float)"

    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (2, 3, 64, 64)).astype(np.float32)
    mean = np.asarray(prep.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(prep.std, np.float32).reshape(1, 3, 1, 1)
    normalised = ((image * np.float32(prep.scale) - mean) / std).astype(np.float32)
    rois = ROIS[ROIS[:, 0] < 2]
    feat_s4, feat_s8 = session(backbone_path).run(["feat_s4", "feat_s8"], {"images": normalised})
    separate_feed = {"features_l4": feat_s4, "features_l8": feat_s8, "rois": rois}
    if rgb:
        separate_feed["image"] = image  # the RGB branch sees the raw 0..255 image, not the normalised one
    (expected,) = session(head_path).run(["masks"], separate_feed)
    (actual,) = merged.run(["masks"], {"image": image, "rois": rois})
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def test_merge_rejects_mismatched_layers(tmp_path):
    layers = {"l4": LAYERS["l4"]}
    head = build_head(tiny_config("plain", layers=("l4",)), layers)
    head_path = export_head(head, layers, INPUT_SIZE, tmp_path / "head.onnx").onnx_path
    backbone_path = tmp_path / "backbone.onnx"
    tiny_backbone(backbone_path, uint8_input=False)
    with pytest.raises(ValueError, match="has no outputs"):
        merge_backbone_and_head(backbone_path, {"l4": "missing_output"}, head_path, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="head feature inputs"):
        merge_backbone_and_head(
            backbone_path, {"l4": "feat_s4", "l8": "feat_s8"}, head_path, tmp_path / "m.onnx"
        )


def exported_masks(head, tmp_path) -> tuple[list[np.ndarray], np.ndarray]:
    """Export ``head``, run it in ONNX Runtime on random features and ``ROIS``, check parity with torch;
    the features and ONNX Runtime's masks."""
    report = export_head(head, LAYERS, INPUT_SIZE, tmp_path / "head.onnx")
    assert report.max_abs_diff <= 1e-3
    features, _ = random_inputs(head, batch_size=3, seed=1)
    feed = dict(zip(["features_l4", "features_l8", "features_l16"], features, strict=True)) | {"rois": ROIS}
    (masks,) = session(report.onnx_path).run(["masks"], feed)
    np.testing.assert_allclose(masks, torch_logits(head, features, ROIS), atol=1e-4, rtol=0)
    return features, masks


def test_roi_coordinates_export_and_matter(tmp_path):
    torch.manual_seed(0)
    head = build_head(tiny_config("plain", roi_coords=True), LAYERS)
    features, masks = exported_masks(head, tmp_path)
    assert head.coordinates is not None
    with torch.no_grad():
        head.coordinates.embed.weight.zero_()
    assert np.abs(torch_logits(head, features, ROIS) - masks).max() > 1e-3  # the coordinates took part


def test_output_prior_exports_and_matters(tmp_path):
    torch.manual_seed(0)
    head = build_head(tiny_config("hierarchical", output_prior="spatial"), LAYERS)
    assert head.prior is not None
    head.prior.initialise(torch.log_softmax(torch.randn(3, 16, 16) * 3, dim=0))
    features, masks = exported_masks(head, tmp_path)
    with torch.no_grad():
        head.prior.bias.zero_()
    assert np.abs(torch_logits(head, features, ROIS) - masks).max() > 1e-1  # the prior took part
