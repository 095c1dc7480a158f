"""Where edgeseg keeps what it builds: backbones, generated data sets, feature caches, runs.

Everything lives under one home folder, ``$EDGESEG_HOME`` or ``~/.cache/edgeseg``, so a user can
move it to a large disk with one variable and a test can isolate itself with one ``monkeypatch``.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The edgeseg home folder (created on first use)."""
    root = Path(os.environ.get("EDGESEG_HOME", Path.home() / ".cache" / "edgeseg")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(*parts: str) -> Path:
    """A folder under the home folder, created on first use."""
    path = home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
