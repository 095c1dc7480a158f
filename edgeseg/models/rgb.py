"""RGB enhancement: low-level image features pooled per ROI next to the backbone's features.

A frozen detector's features are semantic and coarse; edges and texture of the image itself help
the mask boundary. A light trainable encoder turns the network input image (0..255, uint8 or float,
[B,3,S,S]) into a stride-2 feature map; for each RGB-enhanced layer the ROI is pooled from that map
(RoIAlign, scale 1/2) at the layer's ROI size and projected by a 1x1 conv unit. The pooling module
concatenates the result to that layer's ROI features before the layer's reducer.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from edgeseg.models.blocks import ConvNormAct
from edgeseg.models.roi_align import roi_align

RGB_STRIDE = 2


class RgbEncoder(nn.Sequential):
    """Two 3x3 units at full resolution, a stride-2 unit, one more 3x3 unit: [B,3,S,S] -> [B,C,S/2,S/2]."""

    def __init__(self, channels: int) -> None:
        hidden = max(channels // 2, 8)
        super().__init__(
            ConvNormAct(3, hidden, 3),
            ConvNormAct(hidden, hidden, 3),
            ConvNormAct(hidden, channels, 3, stride=RGB_STRIDE),
            ConvNormAct(channels, channels, 3),
        )


class RgbRoiBranch(nn.Module):
    """Image -> encoder -> per-layer RoIAlign at that layer's ROI size -> 1x1 projection.

    ``forward(image, rois)`` returns {layer_id: [N, channels, size, size]} for ``layer_ids``.
    """

    def __init__(
        self, layer_ids: Sequence[str], roi_sizes: Sequence[int], channels: int, sampling_ratio: int = 2
    ) -> None:
        super().__init__()
        if not layer_ids or len(layer_ids) != len(roi_sizes):
            raise ValueError(
                f"layer_ids {list(layer_ids)} and roi_sizes {list(roi_sizes)} must match and be non-empty"
            )
        self.layer_ids = tuple(layer_ids)
        self.roi_sizes = tuple(int(s) for s in roi_sizes)
        self.channels = channels
        self.sampling_ratio = sampling_ratio
        self.encoder = RgbEncoder(channels)
        self.projections = nn.ModuleList(ConvNormAct(channels, channels, 1) for _ in self.layer_ids)

    def forward(self, image: Tensor, rois: Tensor) -> dict[str, Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B,3,S,S] (0..255), got shape {tuple(image.shape)}")
        encoded = self.encoder(image.float() / 255.0)
        pooled_by_size: dict[int, Tensor] = {}
        out: dict[str, Tensor] = {}
        for layer_id, size, projection in zip(self.layer_ids, self.roi_sizes, self.projections, strict=True):
            if size not in pooled_by_size:
                pooled_by_size[size] = roi_align(encoded, rois, size, 1.0 / RGB_STRIDE, self.sampling_ratio)
            out[layer_id] = projection(pooled_by_size[size])
        return out
