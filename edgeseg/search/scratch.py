"""Local scratch folders of trial attempts: removed when the attempt ends, or by a later attempt.

Each attempt (a function trial, or one Ray Train worker of a trial) trains into a temporary
folder ``edgeseg-<trial id>-[r<rank>-]<random>`` under the process's temp folder (``TMPDIR``), with an
owner file naming its host and pid. The attempt removes it when it returns or raises. A process
that cannot clean up (SIGKILL, a Train worker killed with its trial at an ASHA stop, a node that
lost power) leaves it behind; the next attempt that starts on the same host removes every folder
whose owner process is gone, whatever its trial, and so does the driver once a trial's ONNX is
logged. A folder whose owner lives, or lives on another host (a shared ``TMPDIR``), is never
touched; a folder without an owner file is not one of ours.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("edgeseg.search.scratch")

PREFIX = "edgeseg-"
OWNER_FILE = ".edgeseg-attempt.json"


def attempt_prefix(trial_id: str) -> str:
    """The name every scratch folder of the trial starts with."""
    return f"{PREFIX}{trial_id}-"


def pid_alive(pid: int) -> bool:
    """True when a process with this pid lives on this host (another user's included)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _owner(folder: Path) -> tuple[str, int] | None:
    try:
        body = json.loads((folder / OWNER_FILE).read_text())
        return str(body["host"]), int(body["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stale_attempt_folders(root: Path | None = None) -> list[Path]:
    """Scratch folders under ``root`` (default: the temp folder) whose owner process on this host
    is gone."""
    root = Path(root or tempfile.gettempdir())
    host = socket.gethostname()
    stale = []
    for folder in sorted(root.glob(f"{PREFIX}*")):
        owner = _owner(folder) if folder.is_dir() else None
        if owner is not None and owner[0] == host and not pid_alive(owner[1]):
            stale.append(folder)
    return stale


def remove_stale_attempt_folders(root: Path | None = None) -> list[Path]:
    """Remove the stale scratch folders (see :func:`stale_attempt_folders`); returns them."""
    removed = []
    for folder in stale_attempt_folders(root):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
            log.info("removed the scratch folder %s of a process that is gone", folder)
    return removed


@contextmanager
def attempt_folder(trial_id: str, role: str = "") -> Iterator[Path]:
    """A fresh scratch folder for one attempt of ``trial_id`` (``role``: e.g. ``r0`` for a Train
    worker's rank), removed when the block ends however it ends; stale folders go first."""
    if not trial_id or "/" in trial_id:
        raise ValueError(f"trial id {trial_id!r} cannot name a scratch folder")
    remove_stale_attempt_folders()
    path = Path(tempfile.mkdtemp(prefix=attempt_prefix(trial_id) + (f"{role}-" if role else "")))
    try:
        (path / OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
