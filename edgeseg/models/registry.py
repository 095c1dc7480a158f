"""Registries of head components (fusions, decoders).

Components register under the name a config uses (``@FUSIONS.register("adaptive")``); a duplicate
name raises, an unknown one raises with the list of known names. Tests parametrize over
:func:`list_components`, so a newly registered component is tested the moment it exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from edgeseg.config import DECODER_NAMES, FUSION_NAMES

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> component constructor, for one kind of component."""

    def __init__(self, kind: str, allowed: tuple[str, ...] | None = None) -> None:
        self.kind = kind
        self.allowed = allowed  # the config's vocabulary (``config.FUSION_NAMES``); None: any name
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(component: T) -> T:
            if self.allowed is not None and name not in self.allowed:
                raise ValueError(
                    f"{self.kind} {name!r} is not a config value; add it to {self.allowed} first"
                )
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


FUSIONS: Registry[Callable[..., Any]] = Registry("fusion", FUSION_NAMES)
# "cascade" is the plain decoder's refinement, selected by ``model.cascade`` rather than by name.
DECODERS: Registry[Callable[..., Any]] = Registry("decoder", (*DECODER_NAMES, "cascade"))


def list_components() -> dict[str, list[str]]:
    """Every registered component name by kind, e.g. {"fusion": [...], "decoder": [...]}.

    The component modules register themselves when ``edgeseg.models`` is imported (its ``__init__``
    imports them), as timm's registry does, so this module imports none of them.
    """
    return {"fusion": list(FUSIONS.names()), "decoder": list(DECODERS.names())}
