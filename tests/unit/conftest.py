"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def single_torch_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads; idle OpenMP workers spinning on a shared 2-core
    machine cost a lot. Modules opt in with ``pytest.mark.usefixtures("single_torch_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
