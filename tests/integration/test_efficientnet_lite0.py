"""The default backbone: real ImageNet EfficientNet-Lite0 weights, a real photo, the real ONNX export.

Exported once per session at 224 (the classification size) to keep the test quick; the export code is the
same for 640.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import race_two_processes
from PIL import Image
from skimage import data as skdata

from edgeseg.backbone.efficientnet_lite0 import (
    EfficientNetLite0,
    load_pretrained,
    preprocess,
    weights_path,
)
from edgeseg.backbone.extractor import OnnxFeatureExtractor
from edgeseg.backbone.prepare import load_backbone, prepare_default_backbone

pytestmark = pytest.mark.integration

SIZE = 224
ESPRESSO = 967  # ImageNet-1k class index of "espresso"
# Channels and strides of the taps as documented for the architecture (reference notes, section 2).
DOCUMENTED = {
    "p2": (24, 4),
    "p2_expand": (144, 4),
    "p3": (40, 8),
    "p3_expand": (240, 8),
    "p4": (112, 16),
    "p4_expand": (672, 16),
    "p5": (320, 32),
    "head": (1280, 32),
}


@pytest.fixture(scope="session")
def backbone_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backbones")


@pytest.fixture(scope="session")
def spec(backbone_root: Path):
    return prepare_default_backbone(SIZE, root=backbone_root)


@pytest.fixture(scope="session")
def model() -> EfficientNetLite0:
    return load_pretrained(SIZE)


def coffee_crop() -> np.ndarray:
    """skimage's coffee photo (400x600), centre square crop resized to 224: uint8 [1,3,224,224]."""
    photo = skdata.coffee()
    h, w, _ = photo.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(photo[top : top + side, left : left + side]).resize(
        (SIZE, SIZE), Image.Resampling.BILINEAR
    )
    return np.asarray(crop).transpose(2, 0, 1)[None].copy()


def test_state_dict_loads_strictly():
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    result = EfficientNetLite0(input_size=SIZE).load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")) > 4_600_000


def test_real_photo_is_classified(model: EfficientNetLite0):
    with torch.no_grad():
        probabilities = model(preprocess(torch.from_numpy(coffee_crop()))).softmax(1)[0]
    assert int(probabilities.argmax()) == ESPRESSO
    assert float(probabilities[ESPRESSO]) > 0.5


def test_onnx_matches_torch(spec, model: EfficientNetLite0):
    images = np.concatenate(
        [coffee_crop(), np.random.default_rng(0).integers(0, 256, (1, 3, SIZE, SIZE), np.uint8)]
    )
    got = OnnxFeatureExtractor(spec, intra_op_threads=1)(images)
    with torch.no_grad():
        want = model.forward_taps(preprocess(torch.from_numpy(images)), list(DOCUMENTED))
    for name in DOCUMENTED:
        assert float(np.abs(got[name] - want[name].numpy()).max()) < 1e-3, name
    assert spec.metadata["parity_max_abs_diff"] < 1e-3


def test_taps_have_documented_channels_and_strides(spec):
    info = OnnxFeatureExtractor(spec).layer_info()
    assert set(info) == set(DOCUMENTED)
    for name, (channels, stride) in DOCUMENTED.items():
        assert (info[name].channels, info[name].stride) == (channels, stride)
        assert info[name].height == info[name].width == SIZE // stride


def test_expansion_taps_are_the_next_blocks_expansions(model: EfficientNetLite0):
    """p2_expand / p3_expand / p4_expand are ReLU6(BN(1x1 conv)) of p2 / p3 / p4 with blocks 3 / 5 / 11."""
    x = preprocess(torch.from_numpy(coffee_crop()))
    with torch.no_grad():
        taps = model.forward_taps(x, list(DOCUMENTED))
        for stage, block in (("p2", 3), ("p3", 5), ("p4", 11)):
            b: Any = model._blocks[block]
            by_hand = torch.clamp(b._bn0(b._expand_conv(taps[stage])), 0, 6)
            torch.testing.assert_close(taps[f"{stage}_expand"], by_hand)


def test_roles_follow_the_contract(spec):
    strides = {role: spec.layers[layer_id].stride for role, layer_id in spec.roles.items()}
    assert strides["fine"] == 4 and strides["mid"] == 8 and strides["deep"] >= 8


def test_prepare_is_idempotent_and_sidecar_loads(spec, backbone_root: Path):
    mtime = spec.onnx_path.stat().st_mtime_ns
    again = prepare_default_backbone(SIZE, root=backbone_root)
    assert again == spec and spec.onnx_path.stat().st_mtime_ns == mtime
    assert load_backbone(spec.onnx_path, None, input_size=SIZE) == spec
    assert sorted(p.name for p in backbone_root.iterdir() if not p.name.endswith(".lock")) == [
        "efficientnet_lite0_224.json",
        "efficientnet_lite0_224.onnx",
    ]


def _prepare(root: str, barrier, queue) -> None:
    barrier.wait()
    spec = prepare_default_backbone(SIZE, root=root)
    queue.put((str(spec.onnx_path), spec.metadata["export_seconds"]))


@pytest.mark.slow
def test_concurrent_prepare_exports_once(tmp_path: Path):
    outcomes = race_two_processes(_prepare, (str(tmp_path),), timeout=120)
    # One export: both processes read the same sidecar, hence the same recorded export time.
    assert outcomes[0] == outcomes[1]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        "efficientnet_lite0_224.json",
        "efficientnet_lite0_224.onnx",
    ]
