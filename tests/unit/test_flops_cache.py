"""A trial reads its head's counted FLOPs from ``$EDGESEG_HOME/complexity`` when another trial of the
same architecture counted them (counting imports ``torch._dynamo``, about a second of trial start)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from edgeseg.complexity import flops_report
from edgeseg.config import ModelConfig
from edgeseg.engine.fit import cached_flops_report
from edgeseg.models import build_head


@dataclass(frozen=True)
class FakeLayer:
    channels: int
    stride: int


LAYERS = {"l4": FakeLayer(12, 4)}


def test_flops_are_counted_once_per_architecture_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path))
    small = ModelConfig(layers=("l4",), roi_size=8, channels=16, mask_size=16)
    head = build_head(small, LAYERS)
    first = cached_flops_report(head, small, LAYERS, 64)
    assert first == flops_report(head, LAYERS, 64)
    (cached,) = (tmp_path / "complexity").glob("*.json")

    cached.write_text(cached.read_text().replace(str(first["flops_per_roi"]), "12345"))
    assert cached_flops_report(head, small, LAYERS, 64)["flops_per_roi"] == 12345  # read, not counted

    wider = ModelConfig(layers=("l4",), roi_size=8, channels=32, mask_size=16)
    counted = cached_flops_report(build_head(wider, LAYERS), wider, LAYERS, 64)
    assert counted["flops_per_roi"] > first["flops_per_roi"]  # another architecture: its own entry
    assert cached_flops_report(head, small, LAYERS, 128) == pytest.approx(flops_report(head, LAYERS, 128))
    assert len(list((tmp_path / "complexity").glob("*.json"))) == 3

    cached.write_text("{not json")  # a damaged entry is counted again
    assert cached_flops_report(head, small, LAYERS, 64) == first
