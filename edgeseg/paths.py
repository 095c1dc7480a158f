"""Where edgeseg keeps what it builds: backbones, generated data sets, feature caches, runs.

Everything lives under one home folder, ``$EDGESEG_HOME`` or ``~/.cache/edgeseg``, so a user can
move it to a large disk with one variable and a test can isolate itself with one ``monkeypatch``.
A search names its home in its spec (``home:``); the driver enters it with :func:`using_home` for the
duration of the search and each trial process with :func:`set_home`, explicitly, instead of writing
``os.environ`` behind the caller's back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_explicit_home: Path | None = None  # set by set_home / using_home; wins over $EDGESEG_HOME


def home() -> Path:
    """The edgeseg home folder (created on first use)."""
    root = _explicit_home or Path(os.environ.get("EDGESEG_HOME", Path.home() / ".cache" / "edgeseg"))
    root = root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def set_home(path: str | Path | None) -> None:
    """Use ``path`` as this process's home from now on (``None``: back to ``$EDGESEG_HOME``).

    For processes that do one job, such as a Ray trial's worker; a caller that goes on afterwards uses
    :func:`using_home`.
    """
    global _explicit_home
    _explicit_home = Path(path).expanduser().resolve() if path else None


@contextmanager
def using_home(path: str | Path | None) -> Iterator[Path]:
    """Use ``path`` as the home inside the block, then restore the previous one."""
    previous = _explicit_home
    set_home(path or previous)
    try:
        yield home()
    finally:
        set_home(previous)


def subdir(*parts: str) -> Path:
    """A folder under the home folder, created on first use."""
    path = home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
