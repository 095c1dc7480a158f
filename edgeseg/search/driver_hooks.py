"""The driver's Tune hooks for stop requests (see ``control.py`` for the folder layout).

``StopRequests`` is the Tuner's stopper: it ends one trial at its next report once
``<storage>/<name>/edgeseg/stop/<trial id>`` exists. ``DriverControl`` turns a ``stop/ALL`` request into
Tune's clean SIGINT stop. They are apart from ``control.py`` because they need Ray Tune, which the
commands that only read a search's state (``search status``, ``stop``) do not import.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from ray import tune

from edgeseg.search.spec import SearchSpec
from edgeseg.search.storage import STOP_ALL, StorageFolder, control_folder


class StopRequests(tune.Stopper):
    """Stops a trial at its next report once ``stop/<trial id>`` exists (listing cached ~1 s)."""

    def __init__(self, folder_uri: str, refresh_s: float = 1.0) -> None:
        self.folder_uri = folder_uri
        self.refresh_s = refresh_s
        self._cache: tuple[float, frozenset[str]] = (0.0, frozenset())

    def requested(self) -> frozenset[str]:
        stamp, names = self._cache
        if time.monotonic() - stamp > self.refresh_s:
            names = frozenset(StorageFolder(self.folder_uri).list())
            self._cache = (time.monotonic(), names)
        return names

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return trial_id in self.requested()

    def stop_all(self) -> bool:
        return False  # the whole search stops through SIGINT (resumable), see DriverControl


class DriverControl(tune.Callback):
    """Turns a ``stop/ALL`` request into Tune's clean SIGINT stop (the heartbeat is DriverLease's)."""

    def __init__(self, spec: SearchSpec) -> None:
        self.spec = spec
        self._checked = 0.0
        self.stop_requested = False

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "_checked": 0.0, "stop_requested": False}

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        folder = control_folder(str(self.spec.storage), self.spec.name)
        if not self.stop_requested and folder.child("stop").exists(STOP_ALL):
            self.stop_requested = True
            os.kill(os.getpid(), signal.SIGINT)  # Tune's handler saves state and returns from fit()
