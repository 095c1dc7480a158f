"""RoIAlign in plain torch (Mask R-CNN, He et al. 2017), exportable to ONNX with a dynamic ROI count.

Every output bin averages ``sampling_ratio**2`` bilinear samples spread evenly over the bin, and
the samples cover the *whole* ROI (the original project's pooling sampled only a patch near the
ROI's top-left corner). The semantics follow the ONNX ``RoiAlign`` operator (mode ``avg``), which the
tests use as the reference: with ``aligned=True`` (``half_pixel``) a box edge at input pixel ``x``
sits at feature coordinate ``x * spatial_scale - 0.5``; samples further than one pixel outside the
map contribute zero; samples within one pixel of the border read the clamped border value.

The feature map is flattened to a table of rows ``[B*H*W, C]``; every output pixel is a weighted sum
of ``(2 * sampling_ratio)**2`` rows (two bilinear taps per axis per sample). In torch that sum is one
``embedding_bag`` call (fast, no large intermediate, differentiable w.r.t. the features); inside
``torch.onnx.export`` it is written as one ``Gather`` per tap, plain ONNX ops whose shapes never
reshape by N, so the graph takes any number of ROIs, zero included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _axis_samples(
    start: Tensor, size: Tensor, bins: int, sampling_ratio: int, length: int
) -> tuple[Tensor, Tensor]:
    """Pixel indices and weights of every bilinear tap along one axis: both [N, bins, 2 * sampling_ratio].

    Sample ``s`` of bin ``b`` sits at ``start + (b + (s + 0.5) / sampling_ratio) * size / bins``; its two
    taps (low, high) carry the linear weights times validity times ``1 / sampling_ratio`` (the average).
    """
    steps = torch.arange(bins, device=start.device, dtype=start.dtype)[:, None]
    offsets = (
        torch.arange(sampling_ratio, device=start.device, dtype=start.dtype)[None, :] + 0.5
    ) / sampling_ratio
    coords = start[:, None, None] + (steps + offsets)[None] * (size / bins)[:, None, None]  # [N, bins, sr]
    valid = ((coords >= -1.0) & (coords <= float(length))).to(coords.dtype) / sampling_ratio
    clamped = coords.clamp(min=0.0, max=float(length - 1))
    low = clamped.floor()
    high_weight = clamped - low
    low_index = low.long()
    high_index = (low_index + 1).clamp(max=length - 1)
    index = torch.cat([low_index, high_index], dim=-1)
    weight = torch.cat([(1.0 - high_weight) * valid, high_weight * valid], dim=-1)
    return index, weight


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> Tensor:
    """Pool ``rois`` ([N,5] = batch_index, x1, y1, x2, y2 in input pixels) from ``features`` [B,C,H,W].

    Returns [N, C, h, w]. ``spatial_scale`` maps input pixels to feature cells (1/stride).
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [B,C,H,W], got shape {tuple(features.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [N,5] (batch_index, x1, y1, x2, y2), got shape {tuple(rois.shape)}")
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
    out_h, out_w = _pair(output_size)
    _, channels, height, width = features.shape

    # Coordinates in float32 even for half-precision features: fp16 cannot resolve pixels near 640.
    rois = rois.float()
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        # Legacy (non-half-pixel) RoIAlign forces ROIs to be at least one cell wide.
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    y_index, y_weight = _axis_samples(y1, roi_h, out_h, sampling_ratio, height)
    x_index, x_weight = _axis_samples(x1, roi_w, out_w, sampling_ratio, width)
    row_offset = (rois[:, 0].long() * (height * width))[:, None, None]
    # Every output pixel reads (2 * sampling_ratio)**2 rows of the [B*H*W, C] table: [N, h, w, 2sr, 2sr].
    index = (y_index * width + row_offset)[:, :, None, :, None] + x_index[:, None, :, None, :]
    weight = (y_weight[:, :, None, :, None] * x_weight[:, None, :, None, :]).to(features.dtype)
    table = features.permute(0, 2, 3, 1).reshape(-1, channels)

    if not torch.onnx.is_in_onnx_export():
        # One fused weighted gather-and-sum: no [N, h, w, taps, C] intermediate in memory.
        num_rois, taps = rois.shape[0], (2 * sampling_ratio) ** 2
        pooled = F.embedding_bag(
            index.reshape(num_rois * out_h * out_w, taps),
            table,
            per_sample_weights=weight.reshape(num_rois * out_h * out_w, taps),
            mode="sum",
        )
        return pooled.reshape(num_rois, out_h, out_w, channels).permute(0, 3, 1, 2)

    # ONNX: one Gather per tap, accumulated. Nothing is reshaped by N, so N = 0 works in ONNX Runtime
    # (Reshape would read a 0 in its target shape as "copy this dimension").
    output = features.new_zeros(())
    for tap_y in range(2 * sampling_ratio):
        for tap_x in range(2 * sampling_ratio):
            tap = F.embedding(index[:, :, :, tap_y, tap_x], table)
            output = output + tap * weight[:, :, :, tap_y, tap_x, None]
    return output.permute(0, 3, 1, 2)


class RoIAlign(nn.Module):
    """:func:`roi_align` with its settings fixed (one per feature layer)."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int = 2,
        aligned: bool = True,
    ) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return roi_align(
            features, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
