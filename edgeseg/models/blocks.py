"""Small building blocks shared by every head: normalisation, conv units, residual blocks, upsampling.

``LayerNorm2d`` normalises each sample over (C, H, W) jointly, i.e. ``GroupNorm(1, C)``: it does not
depend on the number of ROIs in a batch (unlike BatchNorm), so training and single-ROI inference agree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.Module):
    """GroupNorm with one group: normalise over (C, H, W) per sample, then a per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            # The exporter writes GroupNorm as Reshape(N, 1, -1) + InstanceNormalization, which breaks
            # for zero ROIs; plain reductions give the same numbers and keep N free.
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            centered = x - mean
            var = (centered * centered).mean(dim=(1, 2, 3), keepdim=True)
            normalised = centered / torch.sqrt(var + self.eps)
            return normalised * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return F.group_norm(x, 1, self.weight, self.bias, self.eps)


class ConvNormAct(nn.Sequential):
    """Conv (no bias) -> LayerNorm2d -> ReLU; 'same' padding for odd kernels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False),
            LayerNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus the input, then ReLU (He et al. 2016)."""

    def __init__(self, channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm1 = LayerNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm2 = LayerNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + x)


class Upsample2x(nn.Sequential):
    """ConvTranspose k2 s2 (exact x2, no checkerboard overlap) -> norm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
            LayerNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def resize_to(x: Tensor, size: int) -> Tensor:
    """Bilinear resize to a fixed square size (a no-op when it already has that size).

    A fixed output size exports as a static ONNX Resize, unlike ``adaptive_avg_pool2d``.
    """
    if x.shape[-2] == size and x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class RoiCoordinates(nn.Module):
    """Adds where each cell lies in its ROI to the fused features: ``x + conv1x1([u, v])``.

    ``u, v`` run from -1 to 1 across the ROI grid (cell centres). The target person is the one the
    ROI is centred on; everything else inside the box is background or *other* people, and the
    decoder's small receptive field cannot see the box edges from the middle. Relative coordinates,
    as CondInst feeds its mask head, give every cell that cue directly.
    """

    grid: Tensor  # [1, 2, size, size] buffer: (u, v) at each cell centre

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
        v, u = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("grid", torch.stack([u, v])[None], persistent=False)
        self.embed = nn.Conv2d(2, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != self.grid.shape[-2:]:
            raise ValueError(
                f"RoiCoordinates built for {tuple(self.grid.shape[-2:])} cells, got {tuple(x.shape[-2:])}"
            )
        return x + self.embed(self.grid)


class OutputPrior(nn.Module):
    """A learnable logit bias added to every class output of the decoder, set from the training targets.

    ``bias`` is [1, 3, M, M] (``spatial``: one value per class and mask cell) or [1, 3, 1, 1]
    (``global``: per class). :meth:`initialise` sets it to ``log p(class | cell)`` of the training ROI
    targets (plus ``log w_class`` of the loss's class weights, the optimum of a weighted loss that sees
    no features), centred over the classes. It is the class-prior output bias of RetinaNet extended to
    where a class lies in the ROI: from the first step the ROI's centre reads "target person" and its
    rim "other person" or background, so the decoder learns the residual from the features instead of
    first having to find that every ROI is centred on its own person (the "all other" plateau a head
    can sit on for the whole budget).

    Applied to ``logits`` and ``stages`` [.., 3, M, M] as is; to the hierarchical decoder's
    ``bg_fg_logits`` as ``[b, logsumexp(t, o)]`` and ``target_other_logits`` as ``[t, o]``.
    """

    def __init__(self, kind: str, mask_size: int) -> None:
        super().__init__()
        if kind not in ("global", "spatial"):
            raise ValueError(f"output prior {kind!r}: expected 'global' or 'spatial'")
        self.kind = kind
        self.mask_size = mask_size
        size = mask_size if kind == "spatial" else 1
        self.bias = nn.Parameter(torch.zeros(1, 3, size, size))

    @torch.no_grad()
    def initialise(self, log_prior: Tensor) -> None:
        """Set the bias from per-cell log class probabilities [3, M, M] (centred over the classes here)."""
        if log_prior.shape != (3, self.mask_size, self.mask_size):
            raise ValueError(
                f"output prior needs a [3, {self.mask_size}, {self.mask_size}] log prior, "
                f"got {tuple(log_prior.shape)}"
            )
        prior = log_prior.to(self.bias)
        if self.kind == "global":
            prior = prior.exp().mean(dim=(1, 2), keepdim=True).log()
        self.bias.copy_((prior - prior.mean(dim=0, keepdim=True))[None])

    def forward(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        bias = self.bias
        out = dict(outputs)
        out["logits"] = outputs["logits"] + bias
        if "stages" in outputs:
            out["stages"] = outputs["stages"] + bias[None]
        if "bg_fg_logits" in outputs:
            fg = torch.logsumexp(bias[:, 1:3], dim=1, keepdim=True)
            out["bg_fg_logits"] = outputs["bg_fg_logits"] + torch.cat([bias[:, 0:1], fg], dim=1)
        if "target_other_logits" in outputs:
            out["target_other_logits"] = outputs["target_other_logits"] + bias[:, 1:3]
        return out
