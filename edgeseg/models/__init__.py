"""The ROI segmentation head family: RoIAlign, blocks, pooling, fusions, RGB branch, decoders, registry.

``build_head(model_config, layer_infos)`` turns a config into a :class:`RoiSegmentationHead`;
``list_components()`` shows the registered fusions and decoders.
"""

from edgeseg.models.build import build_head, decoder_name, resolved_roi_sizes
from edgeseg.models.head import CLASS_NAMES, RoiSegmentationHead
from edgeseg.models.registry import DECODERS, FUSIONS, list_components, variant_flags, variant_summary
from edgeseg.models.roi_align import RoIAlign, roi_align

__all__ = [
    "CLASS_NAMES",
    "DECODERS",
    "FUSIONS",
    "RoIAlign",
    "RoiSegmentationHead",
    "build_head",
    "decoder_name",
    "list_components",
    "resolved_roi_sizes",
    "roi_align",
    "variant_flags",
    "variant_summary",
]
