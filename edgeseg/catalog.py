"""The catalogue of variants: every preset's parameters and GFLOPs per ROI, counted on the default backbone."""

from __future__ import annotations

from typing import Any

from edgeseg.complexity import count_parameters, flops_report
from edgeseg.config import list_presets, load_config
from edgeseg.engine.prepare import backbone_spec, make_extractor, resolve_model
from edgeseg.models import build_head


def variant_table(input_size: int = 640, channels: int | None = None) -> list[dict[str, Any]]:
    """Every preset built on the default backbone: parameters and GFLOPs per ROI (counted)."""

    rows = []
    base = load_config("baseline", overrides={"data.input_size": input_size})
    spec = backbone_spec(base)
    extractor_cache: dict[tuple[str, ...], Any] = {}
    for preset in list_presets():
        overrides: dict[str, Any] = {"data.input_size": input_size}
        if channels:
            overrides["model.channels"] = channels
        config = load_config(preset.name, overrides=overrides)
        model = resolve_model(config, spec)
        if model.layers not in extractor_cache:
            extractor_cache[model.layers] = make_extractor(config, spec, model.layers).layer_info()
        infos = extractor_cache[model.layers]
        head = build_head(model, infos)
        flops = flops_report(head, infos, input_size)
        rows.append(
            {
                "preset": preset.name,
                "params": count_parameters(head),
                "gflops": flops["gflops_per_roi"],
                "gflops_per_image": flops["gflops_per_image"],
                "flags": config.feature_flags(),
            }
        )
    return rows
