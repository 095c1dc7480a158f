"""Model complexity, measured: parameters, FLOPs counted by torch, latency timed in torch and ONNX Runtime.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` running the real forward pass: it counts
convolutions (incl. transposed) and matrix multiplies, with **one multiply-add = 2 FLOPs**. Element-wise
work (normalisation, activations, softmax, bilinear resizes, RoIAlign's sampling) is not counted; it
is small next to the convolutions. FLOPs are reported *per ROI*: the head is run on one image with 1
and with 2 ROIs, and the difference is the marginal cost of one ROI; what remains of the 1-ROI count
is the per-image cost (only the RGB encoder has one).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from edgeseg.models.head import RoiSegmentationHead


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_flops(module: nn.Module, example_inputs: Sequence[Any]) -> int:
    """FLOPs of one eval-mode forward pass on ``example_inputs`` (multiply-add = 2)."""
    was_training = module.training
    module.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(*example_inputs)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def feature_shape(info: Any, input_size: int) -> tuple[int, int, int]:
    """[C, H, W] of a layer: the layer info's own height/width when it has them, else input_size/stride."""
    height = getattr(info, "height", None) or math.ceil(input_size / info.stride)
    width = getattr(info, "width", None) or math.ceil(input_size / info.stride)
    return int(info.channels), int(height), int(width)


def example_rois(num_rois: int, input_size: int, batch_size: int = 1, seed: int = 0) -> Tensor:
    """``num_rois`` random boxes (at least 8 px wide) inside the image, spread over the batch."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(num_rois, 2, generator=generator) * (input_size - 8)
    sizes = 8 + torch.rand(num_rois, 2, generator=generator) * (input_size - corners - 8)
    batch_index = (torch.arange(num_rois) % batch_size).float()
    boxes = torch.cat([corners, corners + sizes], dim=1)
    return torch.cat([batch_index[:, None], boxes], dim=1)


def example_inputs(
    head: Any,
    layer_infos: Mapping[str, Any],
    input_size: int,
    num_rois: int = 1,
    batch_size: int = 1,
    seed: int = 0,
) -> tuple[list[Tensor], Tensor, Tensor | None]:
    """Random (features in head.layer_ids order, rois, image or None) for a head on these layers."""
    generator = torch.Generator().manual_seed(seed)
    features = [
        torch.randn(batch_size, *feature_shape(layer_infos[layer], input_size), generator=generator)
        for layer in head.layer_ids
    ]
    image = None
    if head.needs_image:
        image = torch.randint(0, 256, (batch_size, 3, input_size, input_size), generator=generator).float()
    return features, example_rois(num_rois, input_size, batch_size, seed), image


def flops_report(head: Any, layer_infos: Mapping[str, Any], input_size: int) -> dict[str, float]:
    """FLOPs per ROI (marginal) and per image (fixed, RGB encoder), as counts and GFLOPs."""
    one = count_flops(head, example_inputs(head, layer_infos, input_size, num_rois=1))
    two = count_flops(head, example_inputs(head, layer_infos, input_size, num_rois=2))
    per_roi = two - one
    per_image = one - per_roi
    return {
        "flops_per_roi": per_roi,
        "flops_per_image": per_image,
        "gflops_per_roi": per_roi / 1e9,
        "gflops_per_image": per_image / 1e9,
    }


def _median_ms(run: Any, repeats: int, warmup: int, sync: Any = None) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        run()
        if sync:
            sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def measure_latency_torch(
    head: nn.Module, inputs: Sequence[Any], repeats: int = 20, warmup: int = 3
) -> float:
    """Median wall time in ms of an eval-mode forward on ``inputs`` (on whatever device they live)."""
    was_training = head.training
    head.eval()
    on_cuda = any(isinstance(x, Tensor) and x.is_cuda for x in inputs)
    sync = torch.cuda.synchronize if on_cuda else None
    try:
        with torch.inference_mode():
            return _median_ms(lambda: head(*inputs), repeats, warmup, sync)
    finally:
        head.train(was_training)


def measure_latency_onnx(
    onnx_path: str | Path,
    inputs: Mapping[str, np.ndarray],
    repeats: int = 20,
    warmup: int = 3,
    threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> float:
    """Median wall time in ms of one ONNX Runtime run (``threads`` intra-op threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=list(providers))
    return _median_ms(lambda: session.run(None, dict(inputs)), repeats, warmup)


def latency_report(
    head: Any,
    layer_infos: Mapping[str, Any],
    input_size: int,
    *,
    onnx_path: str | Path | None = None,
    num_rois: Sequence[int] = (1, 16),
    repeats: int = 20,
    warmup: int = 3,
    threads: int = 1,
) -> dict[str, float]:
    """Latency in ms for each ROI count, in torch (CPU, ``threads``) and, given ``onnx_path``, ONNX Runtime.

    Keys: ``latency_ms/torch/rois_<n>`` and ``latency_ms/onnx/rois_<n>``; one image per call.
    """

    report: dict[str, float] = {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for count in num_rois:
            features, rois, image = example_inputs(head, layer_infos, input_size, num_rois=count)
            report[f"latency_ms/torch/rois_{count}"] = measure_latency_torch(
                head, (features, rois, image), repeats, warmup
            )
            if onnx_path is not None:
                feed = onnx_feed(head, features, rois, image)
                report[f"latency_ms/onnx/rois_{count}"] = measure_latency_onnx(
                    onnx_path, feed, repeats, warmup, threads
                )
    finally:
        torch.set_num_threads(previous_threads)
    return report


def onnx_feed(
    head: RoiSegmentationHead, features: Sequence[Tensor], rois: Tensor, image: Tensor | None = None
) -> dict[str, np.ndarray]:
    """The ONNX Runtime input dict for the same inputs a torch ``head(features, rois, image)`` call takes."""
    feed = {
        f"features_{layer}": f.detach().cpu().float().numpy()
        for layer, f in zip(head.layer_ids, features, strict=True)
    }
    if head.needs_image:
        if image is None:
            raise ValueError("this head needs an image input")
        feed["image"] = image.detach().cpu().float().numpy()
    feed["rois"] = rois.detach().cpu().float().numpy()
    return feed
