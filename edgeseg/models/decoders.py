"""Mask decoders: fused ROI features [N, C, R, R] -> 3-class logits [N, 3, M, M].

Registered by name, each built as ``cls(channels, roi_size, mask_size)``; ``forward`` returns a dict
with ``logits`` (class 0 background, 1 target person, 2 other persons) and, per decoder, the extra
tensors its loss needs:

* ``plain``: residual trunk at R, then exact x2 upsampling steps (channels halve at each step);
* ``cascade``: the plain trunk and upsampling, then three real stages (coarse -> boundary refinement
  -> instance separation with dilated context); ``stages`` = stacked [coarse, refined, final]
  logits, shape [3, N, 3, M, M];
* ``hierarchical``: background-vs-foreground, then target-vs-other on foreground-gated features;
  ``bg_fg_logits`` and ``target_other_logits`` [N, 2, M, M] in training and in eval;
* ``class_specific``: one light background decoder and two heavy person decoders, each on its own
  class-attended features, plus a cross-class interaction residual.

Resolution: the upsampling path takes the largest number k of x2 steps with R * 2**k <= M. Only when
R * 2**k != M (e.g. R=12, M=28) is the result bilinearly resized to M (a fixed-size Resize in ONNX);
with R=28, M=56 or R=14, M=28 no interpolation happens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgeseg.config import NUM_CLASSES
from edgeseg.models.blocks import ConvNormAct, ResidualBlock, Upsample2x, resize_to
from edgeseg.models.registry import DECODERS


def upsample_steps(roi_size: int, mask_size: int) -> int:
    """The largest k with roi_size * 2**k <= mask_size (0 when the mask is not larger than the ROI)."""
    steps = 0
    while roi_size * 2 ** (steps + 1) <= mask_size:
        steps += 1
    return steps


def _halve(channels: int) -> int:
    return max(channels // 2, min(channels, 8))


class UpPath(nn.Sequential):
    """``steps`` x [Upsample2x(c -> c/2), optional ResidualBlock]; ``out_channels`` is the final width."""

    def __init__(self, channels: int, steps: int, residual: bool = True) -> None:
        layers: list[nn.Module] = []
        for _ in range(steps):
            out = _halve(channels)
            layers.append(Upsample2x(channels, out))
            if residual:
                layers.append(ResidualBlock(out))
            channels = out
        super().__init__(*layers)
        self.out_channels = channels


def _trunk(channels: int, blocks: int = 2) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(channels) for _ in range(blocks)))


@DECODERS.register("plain")
class PlainDecoder(nn.Module):
    """ResBlock x2 at R -> upsampling path -> 1x1 classifier."""

    def __init__(self, channels: int, roi_size: int, mask_size: int) -> None:
        super().__init__()
        self.mask_size = mask_size
        self.trunk = _trunk(channels)
        self.up = UpPath(channels, upsample_steps(roi_size, mask_size))
        self.classifier = nn.Conv2d(self.up.out_channels, NUM_CLASSES, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        # Resizing the 3-channel logits equals resizing the features first (1x1 conv and bilinear
        # interpolation commute) and is cheaper.
        return {"logits": resize_to(self.classifier(self.up(self.trunk(x))), self.mask_size)}


@DECODERS.register("cascade")
class CascadeDecoder(nn.Module):
    """Plain trunk + upsampling, then coarse -> boundary refinement -> instance separation.

    Stage 1 classifies the mask-resolution features (coarse). Stage 2 sees the features and the coarse
    probabilities and predicts a residual: ``refined = coarse + residual``. Stage 3 sees the features
    and the refined probabilities, widens its view with dilated (2, 4) context convs to tell
    neighbouring people apart, and predicts the final logits (not residual).
    """

    def __init__(self, channels: int, roi_size: int, mask_size: int) -> None:
        super().__init__()
        self.mask_size = mask_size
        self.trunk = _trunk(channels)
        self.up = UpPath(channels, upsample_steps(roi_size, mask_size))
        width = self.up.out_channels
        self.coarse = nn.Conv2d(width, NUM_CLASSES, 1)
        self.refine = nn.Sequential(
            ConvNormAct(width + NUM_CLASSES, width, 3),
            ConvNormAct(width, width, 3),
            ResidualBlock(width),
            ResidualBlock(width),
            nn.Conv2d(width, NUM_CLASSES, 1),
        )
        self.separate_in = ConvNormAct(width + NUM_CLASSES, width, 5)
        self.context_dilation2 = ConvNormAct(width, width, 3, dilation=2)
        self.context_dilation4 = ConvNormAct(width, width, 3, dilation=4)
        self.separate_out = nn.Sequential(
            ResidualBlock(width), ResidualBlock(width), nn.Conv2d(width, NUM_CLASSES, 1)
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = resize_to(self.up(self.trunk(x)), self.mask_size)
        coarse = self.coarse(features)
        refined = coarse + self.refine(torch.cat([features, coarse.softmax(dim=1)], dim=1))
        instance = self.separate_in(torch.cat([features, refined.softmax(dim=1)], dim=1))
        context = instance + self.context_dilation2(instance) + self.context_dilation4(instance)
        final = self.separate_out(context)
        return {"logits": final, "stages": torch.stack([coarse, refined, final])}


class _Branch(nn.Sequential):
    """ResBlock at R -> upsampling path -> 1x1 to ``out`` channels."""

    def __init__(self, channels: int, steps: int, out: int) -> None:
        up = UpPath(channels, steps)
        super().__init__(ResidualBlock(channels), up, nn.Conv2d(up.out_channels, out, 1))


@DECODERS.register("hierarchical")
class HierarchicalDecoder(nn.Module):
    """Background vs foreground first, then target vs other on foreground-gated features.

    ``p_fg = softmax(bg_fg)[1]``; final logits ``[bg_fg_0, bg_fg_1 + to_0 * p_fg, bg_fg_1 + to_1 * p_fg]``.
    The foreground gate is computed from the bg/fg logits resized to the trunk's resolution R (the
    original multiplied a 56x56 gate into 28x28 features and crashed).
    """

    def __init__(self, channels: int, roi_size: int, mask_size: int) -> None:
        super().__init__()
        self.roi_size = roi_size
        self.mask_size = mask_size
        steps = upsample_steps(roi_size, mask_size)
        self.shared = nn.Sequential(ConvNormAct(channels, channels, 3), _trunk(channels))
        self.bg_fg = _Branch(channels, steps, 2)
        hidden = max(channels // 4, 8)
        self.gate = nn.Sequential(
            nn.Conv2d(2, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
        )
        self.target_other = _Branch(channels, steps, 2)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        shared = self.shared(x)
        bg_fg = resize_to(self.bg_fg(shared), self.mask_size)
        gate = self.gate(resize_to(bg_fg, self.roi_size))
        target_other = resize_to(self.target_other(shared * gate), self.mask_size)
        p_fg = bg_fg.softmax(dim=1)[:, 1:2]
        fg = bg_fg[:, 1:2]
        logits = torch.cat(
            [bg_fg[:, 0:1], fg + target_other[:, 0:1] * p_fg, fg + target_other[:, 1:2] * p_fg], 1
        )
        return {"logits": logits, "bg_fg_logits": bg_fg, "target_other_logits": target_other}


class _LightClassDecoder(nn.Sequential):
    """Background: 3x3 unit -> upsampling without residual blocks -> 1 channel."""

    def __init__(self, channels: int, steps: int) -> None:
        hidden = _halve(channels)
        up = UpPath(hidden, steps, residual=False)
        super().__init__(ConvNormAct(channels, hidden, 3), up, nn.Conv2d(up.out_channels, 1, 1))


class _HeavyClassDecoder(nn.Sequential):
    """Person classes: 3x3 unit -> ResBlock x2 -> upsampling with residual blocks -> 3x3 unit -> 1 channel."""

    def __init__(self, channels: int, steps: int) -> None:
        hidden = _halve(channels)
        up = UpPath(hidden, steps, residual=True)
        tail = _halve(up.out_channels)
        super().__init__(
            ConvNormAct(channels, hidden, 3),
            ResidualBlock(hidden),
            ResidualBlock(hidden),
            up,
            ConvNormAct(up.out_channels, tail, 3),
            nn.Conv2d(tail, 1, 1),
        )


@DECODERS.register("class_specific")
class ClassSpecificDecoder(nn.Module):
    """One decoder per class so the dominant background cannot crowd out the person classes' gradients.

    Shared refinement (ResBlock + 1x1), then one spatial attention map per class; each class decoder
    reads the refined features weighted by *its own* map (the original averaged the three attended
    maps into one tensor, which collapses them to a single gate). The three 1-channel outputs are
    concatenated and a small 1x1 network adds a cross-class interaction residual.
    """

    def __init__(self, channels: int, roi_size: int, mask_size: int) -> None:
        super().__init__()
        self.mask_size = mask_size
        steps = upsample_steps(roi_size, mask_size)
        self.refine = nn.Sequential(ResidualBlock(channels), nn.Conv2d(channels, channels, 1))
        hidden = max(channels // 4, 4)
        # Three independent 1x1 -> ReLU -> 1x1 attention nets, run as one grouped pair of convs.
        self.attention = nn.Sequential(
            nn.Conv2d(channels, NUM_CLASSES * hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(NUM_CLASSES * hidden, NUM_CLASSES, 1, groups=NUM_CLASSES),
            nn.Sigmoid(),
        )
        self.background = _LightClassDecoder(channels, steps)
        self.target = _HeavyClassDecoder(channels, steps)
        self.other = _HeavyClassDecoder(channels, steps)
        self.interaction = nn.Sequential(
            nn.Conv2d(NUM_CLASSES, 4 * NUM_CLASSES, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * NUM_CLASSES, NUM_CLASSES, 1),
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        refined = self.refine(x)
        attention = self.attention(refined)
        per_class = [
            decoder(refined * attention[:, index : index + 1])
            for index, decoder in enumerate((self.background, self.target, self.other))
        ]
        logits = resize_to(torch.cat(per_class, dim=1), self.mask_size)
        return {"logits": logits + self.interaction(logits)}
