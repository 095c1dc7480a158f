"""Multi-layer ROI pooling with per-layer ROI sizes ("variable ROI").

Each feature layer is pooled with its own RoIAlign (scale 1/stride) at its own size: a fine stride-4
layer can be pooled at 56x56 to keep detail while coarse layers stay at 28x28. Per layer, a 1x1
reducer maps its channels (plus the RGB branch's channels when that layer is RGB-enhanced) to the
head width, and a size adjuster brings the result to the common ``roi_size`` the fusion and the
decoder work at:

* equal size: identity;
* exactly twice the target: a learnable 3x3 stride-2 conv (exact 2x downsampling);
* any other ratio: bilinear resize to the fixed target size, then a 3x3 conv. A fixed output size
  exports as a static ONNX Resize (``adaptive_avg_pool2d`` would not).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from edgeseg.models.blocks import ConvNormAct, resize_to
from edgeseg.models.roi_align import RoIAlign


class ResizeConv(nn.Module):
    """Bilinear resize to ``size`` x ``size`` followed by a 3x3 conv unit."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.conv = ConvNormAct(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(resize_to(x, self.size))


def size_adjuster(channels: int, in_size: int, out_size: int) -> nn.Module:
    """The module that brings [N, channels, in_size, in_size] to out_size (see module docstring)."""
    if in_size == out_size:
        return nn.Identity()
    if in_size == 2 * out_size:
        return ConvNormAct(channels, channels, 3, stride=2)
    return ResizeConv(channels, out_size)


class RoiLayerBranch(nn.Module):
    """One layer: RoIAlign at its own size -> (concat RGB ROI features) -> 1x1 reducer -> size adjuster."""

    def __init__(
        self,
        in_channels: int,
        stride: int,
        roi_size: int,
        out_channels: int,
        out_size: int,
        sampling_ratio: int,
        extra_channels: int = 0,
    ) -> None:
        super().__init__()
        self.roi_size = roi_size
        self.extra_channels = extra_channels
        self.align = RoIAlign(roi_size, 1.0 / stride, sampling_ratio, aligned=True)
        self.reduce = ConvNormAct(in_channels + extra_channels, out_channels, 1)
        self.adjust = size_adjuster(out_channels, roi_size, out_size)

    def forward(self, features: Tensor, rois: Tensor, extra: Tensor | None = None) -> Tensor:
        pooled = self.align(features, rois)
        if self.extra_channels:
            if extra is None:
                raise ValueError(f"this layer expects {self.extra_channels} extra ROI channels (RGB branch)")
            pooled = torch.cat([pooled, extra], dim=1)
        elif extra is not None:
            raise ValueError("this layer takes no extra ROI channels")
        return self.adjust(self.reduce(pooled))


class MultiLayerRoiPooler(nn.Module):
    """Pools every layer, reduces it to ``out_channels`` and resizes it to ``out_size``.

    ``forward(features, rois, extras)`` takes the feature maps in ``layer_ids`` order and, for the
    RGB-enhanced layers, their RGB ROI features keyed by layer id; it returns one
    [N, out_channels, out_size, out_size] tensor per layer, in ``layer_ids`` order.
    """

    def __init__(
        self,
        layer_ids: Sequence[str],
        in_channels: Sequence[int],
        strides: Sequence[int],
        roi_sizes: Sequence[int],
        out_channels: int,
        out_size: int,
        sampling_ratio: int = 2,
        extra_channels: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        lengths = {len(layer_ids), len(in_channels), len(strides), len(roi_sizes)}
        if len(lengths) != 1 or not layer_ids:
            raise ValueError(
                f"layer_ids {list(layer_ids)}, in_channels {list(in_channels)}, strides {list(strides)} "
                f"and roi_sizes {list(roi_sizes)} must be non-empty and of equal length"
            )
        extra_channels = dict(extra_channels or {})
        unknown = set(extra_channels) - set(layer_ids)
        if unknown:
            raise ValueError(
                f"extra_channels names layers {sorted(unknown)} not in layer_ids {list(layer_ids)}"
            )
        self.layer_ids = tuple(layer_ids)
        self.strides = tuple(int(s) for s in strides)
        self.roi_sizes = tuple(int(s) for s in roi_sizes)
        self.out_size = out_size
        self.extra_channels = {k: int(v) for k, v in extra_channels.items() if v}
        self.branches = nn.ModuleList(
            RoiLayerBranch(
                channels,
                stride,
                size,
                out_channels,
                out_size,
                sampling_ratio,
                self.extra_channels.get(lid, 0),
            )
            for lid, channels, stride, size in zip(layer_ids, in_channels, strides, roi_sizes, strict=True)
        )

    def forward(
        self, features: Sequence[Tensor], rois: Tensor, extras: Mapping[str, Tensor] | None = None
    ) -> list[Tensor]:
        if len(features) != len(self.layer_ids):
            raise ValueError(
                f"expected {len(self.layer_ids)} feature maps for {self.layer_ids}, got {len(features)}"
            )
        extras = extras or {}
        return [
            branch(feature, rois, extras.get(lid))
            for lid, branch, feature in zip(self.layer_ids, self.branches, features, strict=True)
        ]
