"""The ROI segmentation head family: RoIAlign, blocks, pooling, fusions, RGB branch, decoders, registry.

``build_head(model_config, layer_infos)`` turns a config into a :class:`RoiSegmentationHead`;
``list_components()`` shows the registered fusions and decoders.
"""

# The component modules register their fusions and decoders on import; import them first.
from edgeseg.models import decoders, fusion  # noqa: F401  (registration)
from edgeseg.models.build import build_head, decoder_name, resolved_roi_sizes
from edgeseg.models.head import RoiSegmentationHead
from edgeseg.models.registry import DECODERS, FUSIONS, list_components
from edgeseg.models.roi_align import RoIAlign, roi_align

__all__ = [
    "DECODERS",
    "FUSIONS",
    "RoIAlign",
    "RoiSegmentationHead",
    "build_head",
    "decoder_name",
    "list_components",
    "resolved_roi_sizes",
    "roi_align",
]
