"""Registries of head components (fusions, decoders) and a summary of a configured variant.

Components register under the name a config uses (``@FUSIONS.register("adaptive")``); a duplicate
name raises, an unknown one raises with the list of known names. Tests parametrize over
:func:`list_components`, so a newly registered component is tested the moment it exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from edgeseg.config import ModelConfig

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> component constructor, for one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(component: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._entries[name]!r})")
            self._entries[name] = component
            return component

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {sorted(self._entries)}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)


FUSIONS: Registry[Callable[..., Any]] = Registry("fusion")
DECODERS: Registry[Callable[..., Any]] = Registry("decoder")


def _load_components() -> None:
    # The component modules register themselves on import.
    import edgeseg.models.decoders  # noqa: F401
    import edgeseg.models.fusion  # noqa: F401


def list_components() -> dict[str, list[str]]:
    """Every registered component name by kind, e.g. {"fusion": [...], "decoder": [...]}."""
    _load_components()
    return {"fusion": list(FUSIONS.names()), "decoder": list(DECODERS.names())}


def variant_flags(cfg: ModelConfig) -> dict[str, Any]:
    """The feature flags a model config turns on, under the names the ablation tables use."""
    roi_sizes = tuple(cfg.roi_sizes) or (cfg.roi_size,) * len(cfg.layers)
    multiscale = len(cfg.layers) > 1
    return {
        "multiscale": multiscale,
        "fusion": cfg.fusion if multiscale else "none",
        "variable_roi": any(size != cfg.roi_size for size in roi_sizes),
        "rgb": bool(cfg.rgb_layers),
        "cascade": bool(cfg.cascade),
        "decoder": cfg.decoder,
        "num_layers": len(cfg.layers),
    }


def variant_summary(
    cfg: ModelConfig, layer_infos: Mapping[str, Any], input_size: int | None = None
) -> dict[str, Any]:
    """Parameter count and feature flags of the head ``cfg`` builds on these layers.

    With ``input_size`` (the network input side in pixels) it also counts FLOPs: ``gflops_per_roi``
    and ``gflops_per_image`` (see :func:`edgeseg.complexity.flops_report`).
    """
    from edgeseg.complexity import count_parameters, flops_report
    from edgeseg.models.build import build_head

    head = build_head(cfg, layer_infos)
    summary: dict[str, Any] = {"params": count_parameters(head), "flags": variant_flags(cfg)}
    if input_size is not None:
        flops = flops_report(head, layer_infos, input_size)
        summary["gflops_per_roi"] = flops["gflops_per_roi"]
        summary["gflops_per_image"] = flops["gflops_per_image"]
    return summary
