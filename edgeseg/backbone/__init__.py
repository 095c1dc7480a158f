"""Frozen ONNX backbones: layer maps and roles, ONNX Runtime feature extraction, the feature cache.

``efficientnet_lite0`` (torch) is imported on demand only: extraction needs ONNX Runtime, not torch models.
"""

from edgeseg.backbone.cache import (
    CachedFeatures,
    FeatureCache,
    FeatureCacheTooLarge,
    OnTheFlyFeatures,
    feature_source,
)
from edgeseg.backbone.extractor import LayerInfo, OnnxFeatureExtractor
from edgeseg.backbone.layer_map import (
    EFFICIENTNET_LITE0,
    LAYER_MAPS,
    YOLOV9_FEATEXT,
    BackboneSpec,
    LayerMap,
    LayerSpec,
    Preprocessing,
    load_layer_map,
    resolve_layers,
)
from edgeseg.backbone.prepare import describe_backbone, load_backbone, prepare_default_backbone

__all__ = [
    "EFFICIENTNET_LITE0",
    "LAYER_MAPS",
    "YOLOV9_FEATEXT",
    "BackboneSpec",
    "CachedFeatures",
    "FeatureCache",
    "FeatureCacheTooLarge",
    "LayerInfo",
    "LayerMap",
    "LayerSpec",
    "OnTheFlyFeatures",
    "OnnxFeatureExtractor",
    "Preprocessing",
    "describe_backbone",
    "feature_source",
    "load_backbone",
    "load_layer_map",
    "prepare_default_backbone",
    "resolve_layers",
]
