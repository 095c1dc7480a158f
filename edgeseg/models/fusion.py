"""Fusion of per-layer ROI features that already share one size and width ([N, C, R, R] each).

Registered by name, each built as ``cls(num_layers, channels, strides)``:

* ``adaptive``: learnable per-layer logits (initialised to 0, so equal weights), softmax, weighted sum;
* ``concat``: concatenate, 1x1 conv back to C, norm, ReLU;
* ``sum``: plain sum (no parameters);
* ``fpn``: the top-down pathway of a Feature Pyramid Network (Lin et al. 2017) on ROI features.

A single layer needs no fusion: :class:`SingleLayer` passes it through.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from edgeseg.models.blocks import ConvNormAct
from edgeseg.models.registry import FUSIONS


class SingleLayer(nn.Module):
    """Identity for a one-layer head."""

    def __init__(self, num_layers: int = 1, channels: int = 0, strides: Sequence[int] = ()) -> None:
        super().__init__()
        if num_layers != 1:
            raise ValueError(f"SingleLayer fuses exactly one layer, got {num_layers}")

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != 1:
            raise ValueError(f"SingleLayer expects one feature tensor, got {len(features)}")
        return features[0]


def _check_count(features: Sequence[Tensor], num_layers: int) -> None:
    if len(features) != num_layers:
        raise ValueError(f"expected {num_layers} feature tensors, got {len(features)}")


@FUSIONS.register("adaptive")
class AdaptiveFusion(nn.Module):
    """Softmax-weighted sum with one learnable logit per layer."""

    def __init__(self, num_layers: int, channels: int, strides: Sequence[int]) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        _check_count(features, self.num_layers)
        weights = torch.softmax(self.logits, dim=0)
        fused = features[0] * weights[0]
        for index in range(1, self.num_layers):
            fused = fused + features[index] * weights[index]
        return fused


@FUSIONS.register("concat")
class ConcatFusion(nn.Module):
    """Concatenate along channels, then a 1x1 conv unit back to the head width."""

    def __init__(self, num_layers: int, channels: int, strides: Sequence[int]) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.project = ConvNormAct(num_layers * channels, channels, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        _check_count(features, self.num_layers)
        return self.project(torch.cat(list(features), dim=1))


@FUSIONS.register("sum")
class SumFusion(nn.Module):
    """Plain sum; the per-layer reducers before it already learn each layer's scale."""

    def __init__(self, num_layers: int, channels: int, strides: Sequence[int]) -> None:
        super().__init__()
        self.num_layers = num_layers

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        _check_count(features, self.num_layers)
        fused = features[0]
        for feature in features[1:]:
            fused = fused + feature
        return fused


@FUSIONS.register("fpn")
class FpnFusion(nn.Module):
    """FPN top-down pathway on pooled ROI features.

    Layers are ordered coarse -> fine by stride (at equal stride, a layer listed later in the config
    counts as coarser, i.e. deeper). On full feature maps FPN upsamples each coarser level and adds
    it into the next finer one. Here every layer was already pooled to the same ROI grid, so the
    upsampling is the identity and what remains is the *order*: a chain that starts from the
    coarsest (most semantic) layer and lets each finer layer add its detail on top, with a 3x3
    smoothing conv after every merge, ``p_k = smooth_k(x_k + p_{k+1})``. The finest level's output is
    the fused feature. Unlike ``sum``, the merge is ordered and non-linear.
    """

    def __init__(self, num_layers: int, channels: int, strides: Sequence[int]) -> None:
        super().__init__()
        if len(strides) != num_layers:
            raise ValueError(
                f"fpn fusion needs one stride per layer, got {list(strides)} for {num_layers} layers"
            )
        self.num_layers = num_layers
        # Coarse -> fine; ties broken by listing order (later = deeper = coarser).
        self.order = tuple(sorted(range(num_layers), key=lambda i: (-strides[i], -i)))
        self.smooth = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in range(num_layers))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        _check_count(features, self.num_layers)
        merged = self.smooth[0](features[self.order[0]])
        for step, index in enumerate(self.order[1:], start=1):
            merged = self.smooth[step](features[index] + merged)
        return merged
