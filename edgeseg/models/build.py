"""The one place a :class:`~edgeseg.config.ModelConfig` becomes constructor arguments of head parts.

Combinations the model family does not implement raise a ``ConfigError`` (a ``ValueError``) naming the
config key, even when the config was validated elsewhere: a flag is never silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from torch import nn

from edgeseg.config import OUTPUT_PRIORS, ConfigError, ModelConfig
from edgeseg.models.blocks import OutputPrior, RoiCoordinates
from edgeseg.models.fusion import SingleLayer
from edgeseg.models.head import RoiSegmentationHead
from edgeseg.models.pooling import MultiLayerRoiPooler
from edgeseg.models.registry import DECODERS, FUSIONS
from edgeseg.models.rgb import RgbRoiBranch


class LayerInfoLike(Protocol):
    """What the head needs to know about a feature layer (``edgeseg.backbone.extractor.LayerInfo`` fits)."""

    @property
    def channels(self) -> int: ...

    @property
    def stride(self) -> int: ...


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"model.{key}: {message}")


def resolved_roi_sizes(cfg: ModelConfig) -> tuple[int, ...]:
    """Per-layer pooled sizes in ``cfg.layers`` order (``roi_size`` everywhere when ``roi_sizes`` is empty)."""
    if not cfg.roi_sizes:
        return (cfg.roi_size,) * len(cfg.layers)
    if len(cfg.roi_sizes) != len(cfg.layers):
        raise _fail(
            "roi_sizes",
            f"has {len(cfg.roi_sizes)} sizes {cfg.roi_sizes} for {len(cfg.layers)} layers {cfg.layers}",
        )
    return tuple(cfg.roi_sizes)


def decoder_name(cfg: ModelConfig) -> str:
    """The registered decoder a config selects (``cascade=True`` with ``decoder='plain'`` -> ``cascade``)."""
    if cfg.decoder == "cascade":
        raise _fail("decoder", "'cascade' is selected with cascade=true and decoder='plain'")
    if cfg.decoder not in DECODERS:
        raise _fail(
            "decoder", f"{cfg.decoder!r} is not one of {[n for n in DECODERS.names() if n != 'cascade']}"
        )
    if cfg.cascade:
        if cfg.decoder != "plain":
            raise _fail("cascade", f"cascade refinement works with decoder='plain', not {cfg.decoder!r}")
        return "cascade"
    return cfg.decoder


def build_head(cfg: ModelConfig, layers: Mapping[str, LayerInfoLike]) -> RoiSegmentationHead:
    """Head for ``cfg`` on the backbone layers ``layers`` ({layer_id: info with .channels, .stride}).

    ``cfg.layers`` must already be layer ids (roles resolved by the caller).
    """
    if not cfg.layers:
        raise _fail("layers", "needs at least one layer")
    if len(set(cfg.layers)) != len(cfg.layers):
        raise _fail("layers", f"has duplicates: {cfg.layers}")
    missing = [layer for layer in cfg.layers if layer not in layers]
    if missing:
        raise _fail("layers", f"{missing} not among the backbone's layers {sorted(layers)}")
    if cfg.fusion not in FUSIONS:
        raise _fail("fusion", f"{cfg.fusion!r} is not one of {list(FUSIONS.names())}")
    stray = [layer for layer in cfg.rgb_layers if layer not in cfg.layers]
    if stray:
        raise _fail("rgb_layers", f"{stray} are not in model.layers {cfg.layers}")
    for key in ("channels", "roi_size", "mask_size", "sampling_ratio", "rgb_channels"):
        if getattr(cfg, key) < 1:
            raise _fail(key, f"must be >= 1, got {getattr(cfg, key)}")
    roi_sizes = resolved_roi_sizes(cfg)
    if any(size < 1 for size in roi_sizes):
        raise _fail("roi_sizes", f"every size must be >= 1, got {roi_sizes}")
    name = decoder_name(cfg)
    if cfg.output_prior not in OUTPUT_PRIORS:
        raise _fail("output_prior", f"{cfg.output_prior!r} is not one of {OUTPUT_PRIORS}")

    strides = [int(layers[layer].stride) for layer in cfg.layers]
    rgb_layers = [layer for layer in cfg.layers if layer in cfg.rgb_layers]
    pooler = MultiLayerRoiPooler(
        layer_ids=cfg.layers,
        in_channels=[int(layers[layer].channels) for layer in cfg.layers],
        strides=strides,
        roi_sizes=roi_sizes,
        out_channels=cfg.channels,
        out_size=cfg.roi_size,
        sampling_ratio=cfg.sampling_ratio,
        extra_channels={layer: cfg.rgb_channels for layer in rgb_layers},
    )
    fusion: nn.Module
    if len(cfg.layers) == 1:
        fusion = SingleLayer()
    else:
        fusion = FUSIONS.get(cfg.fusion)(len(cfg.layers), cfg.channels, strides)
    decoder = DECODERS.get(name)(cfg.channels, cfg.roi_size, cfg.mask_size)
    rgb = None
    if rgb_layers:
        sizes = [roi_sizes[cfg.layers.index(layer)] for layer in rgb_layers]
        rgb = RgbRoiBranch(rgb_layers, sizes, cfg.rgb_channels, cfg.sampling_ratio)
    coordinates = RoiCoordinates(cfg.channels, cfg.roi_size) if cfg.roi_coords else None
    prior = OutputPrior(cfg.output_prior, cfg.mask_size) if cfg.output_prior != "none" else None
    return RoiSegmentationHead(pooler, fusion, decoder, rgb, coordinates, prior)
