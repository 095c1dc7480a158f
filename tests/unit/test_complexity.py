"""Parameter and FLOP counts checked against hand counts; latency measured in torch and ONNX Runtime."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from edgeseg.complexity import (
    count_flops,
    count_parameters,
    example_inputs,
    flops_report,
    latency_report,
    measure_latency_onnx,
    measure_latency_torch,
)
from edgeseg.config import ModelConfig
from edgeseg.export import export_head, onnx_feed
from edgeseg.models import build_head

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@dataclass(frozen=True)
class FakeLayer:
    channels: int
    stride: int


LAYERS = {"l4": FakeLayer(12, 4), "l8": FakeLayer(20, 8)}
INPUT_SIZE = 64


def test_count_parameters_all_and_trainable():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
    assert count_parameters(model) == 3 * 4 + 4 + 4 * 2
    model[0].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 4 + 4 * 2


def test_count_flops_counts_a_multiply_add_as_two():
    conv = nn.Conv2d(3, 5, kernel_size=3, padding=1)
    # 5 outputs x 6x7 positions, each a 3x3x3 dot product: 2 * 5*6*7 * 27 (bias adds are not counted)
    assert count_flops(conv, (torch.randn(1, 3, 6, 7),)) == 2 * 5 * 6 * 7 * 27
    linear = nn.Linear(10, 4)
    assert count_flops(linear, (torch.randn(8, 10),)) == 2 * 8 * 10 * 4


def test_plain_head_flops_per_roi_by_hand():
    head = build_head(ModelConfig(layers=("l4",), roi_size=8, channels=16, mask_size=16), LAYERS)
    by_hand = (
        2 * 12 * 16 * 8 * 8  # reducer 1x1 12 -> 16 at 8x8
        + 4 * 2 * 16 * 16 * 9 * 8 * 8  # trunk: two residual blocks, 3x3 16 -> 16 at 8x8
        + 2 * 16 * 8 * 4 * 8 * 8  # ConvTranspose k2 16 -> 8, one 2x2 kernel per input pixel
        + 2 * 2 * 8 * 8 * 9 * 16 * 16  # residual block, 3x3 8 -> 8 at 16x16
        + 2 * 8 * 3 * 16 * 16  # classifier 1x1 8 -> 3
    )
    report = flops_report(head, LAYERS, INPUT_SIZE)
    assert report["flops_per_roi"] == by_hand
    assert report["flops_per_image"] == 0
    assert report["gflops_per_roi"] == pytest.approx(by_hand / 1e9)


def test_rgb_encoder_flops_are_per_image():
    cfg = ModelConfig(
        layers=("l4", "l8"), roi_size=8, channels=16, mask_size=16, rgb_layers=("l8",), rgb_channels=8
    )
    head = build_head(cfg, LAYERS)
    assert head.rgb is not None
    encoder_flops = count_flops(head.rgb.encoder, (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),))
    report = flops_report(head, LAYERS, INPUT_SIZE)
    assert report["flops_per_image"] == encoder_flops > 0
    features, rois, image = example_inputs(head, LAYERS, INPUT_SIZE, num_rois=3)
    assert count_flops(head, (features, rois, image)) == encoder_flops + 3 * report["flops_per_roi"]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_latency_in_torch_and_onnxruntime(tmp_path):
    head = build_head(ModelConfig(layers=("l4", "l8"), roi_size=8, channels=8, mask_size=16), LAYERS)
    onnx_path = export_head(head, LAYERS, INPUT_SIZE, tmp_path / "head.onnx").onnx_path
    features, rois, image = example_inputs(head, LAYERS, INPUT_SIZE, num_rois=4)
    assert measure_latency_torch(head, (features, rois, image), repeats=3, warmup=1) > 0
    assert measure_latency_onnx(onnx_path, onnx_feed(head, features, rois, image), repeats=3, warmup=1) > 0
    report = latency_report(
        head, LAYERS, INPUT_SIZE, onnx_path=onnx_path, num_rois=(1, 4), repeats=2, warmup=1
    )
    assert set(report) == {f"latency_ms/{rt}/rois_{n}" for rt in ("torch", "onnx") for n in (1, 4)}
    assert all(value > 0 for value in report.values())
    assert head.training, "measuring must not leave the head in eval mode"
