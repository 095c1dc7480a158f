"""The ROI segmentation head, composed from its parts: pooler -> fusion -> (+ ROI coordinates) -> decoder
(+ output prior) (+ RGB branch).

Feature maps of a frozen backbone and person ROIs go in; 3-class mask logits per ROI come out
(0 background, 1 the ROI's own person = target, 2 any other person). Each part is built from plain
arguments and handed in (see :func:`edgeseg.models.build.build_head` for the config -> parts
translation), so a head variant is a choice of parts, never a model wrapped in another model.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from edgeseg.models.blocks import OutputPrior, RoiCoordinates
from edgeseg.models.pooling import MultiLayerRoiPooler
from edgeseg.models.rgb import RgbRoiBranch


class RoiSegmentationHead(nn.Module):
    """``forward(features, rois, image=None) -> dict``.

    * ``features``: one [B, C_l, H_l, W_l] map per layer, in ``layer_ids`` order;
    * ``rois``: float [N, 5] = (batch_index, x1, y1, x2, y2) in input-image pixels;
    * ``image``: [B, 3, S, S] network input image in 0..255 (uint8 or float), only when ``needs_image``.

    Returns ``logits`` [N, 3, M, M] plus the decoder's extra outputs (``stages``, ``bg_fg_logits``,
    ``target_other_logits``) when it has them.
    """

    def __init__(
        self,
        pooler: MultiLayerRoiPooler,
        fusion: nn.Module,
        decoder: nn.Module,
        rgb: RgbRoiBranch | None = None,
        coordinates: RoiCoordinates | None = None,
        prior: OutputPrior | None = None,
    ) -> None:
        super().__init__()
        wanted = set(pooler.extra_channels)
        given = set(rgb.layer_ids) if rgb is not None else set()
        if wanted != given:
            raise ValueError(
                f"pooler expects RGB features for layers {sorted(wanted)}, rgb branch gives {sorted(given)}"
            )
        if rgb is not None:
            for layer_id in rgb.layer_ids:
                if pooler.extra_channels[layer_id] != rgb.channels:
                    raise ValueError(
                        f"layer {layer_id!r}: pooler expects {pooler.extra_channels[layer_id]} RGB channels, "
                        f"rgb branch gives {rgb.channels}"
                    )
        mask_size = getattr(decoder, "mask_size", None)
        if not isinstance(mask_size, int):
            raise ValueError(f"decoder {type(decoder).__name__} must expose an int mask_size")
        self._mask_size = mask_size
        self.pooler = pooler
        self.fusion = fusion
        self.decoder = decoder
        self.rgb = rgb
        self.coordinates = coordinates
        if prior is not None and prior.mask_size != mask_size:
            raise ValueError(
                f"output prior is {prior.mask_size}x{prior.mask_size}, the decoder's masks {mask_size}"
            )
        self.prior = prior

    @property
    def layer_ids(self) -> tuple[str, ...]:
        return self.pooler.layer_ids

    @property
    def needs_image(self) -> bool:
        return self.rgb is not None

    @property
    def mask_size(self) -> int:
        return self._mask_size

    @property
    def roi_size(self) -> int:
        return self.pooler.out_size

    def forward(
        self, features: Sequence[Tensor], rois: Tensor, image: Tensor | None = None
    ) -> dict[str, Tensor]:
        if len(features) != len(self.layer_ids):
            raise ValueError(
                f"expected {len(self.layer_ids)} feature maps (layers {list(self.layer_ids)}), got {len(features)}"
            )
        extras = None
        if self.rgb is not None:
            if image is None:
                raise ValueError(f"this head enhances layers {list(self.rgb.layer_ids)} with RGB: pass image")
            extras = self.rgb(image, rois)
        elif image is not None:
            raise ValueError("this head has no RGB branch; pass image=None (see head.needs_image)")
        fused = self.fusion(self.pooler(features, rois, extras))
        if self.coordinates is not None:
            fused = self.coordinates(fused)
        outputs = self.decoder(fused)
        return self.prior(outputs) if self.prior is not None else outputs
