"""What several benchmarks measure a search with: core-seconds of a process tree, machine-wide busy.

``CpuMeter`` samples a process and all its descendants from ``/proc`` (the driver of a search, its
local Ray and every trial process); ``MachineBusy`` samples ``/proc/stat`` (every process on the
machine, so figures from a shared machine include other people's work). ``environment`` sets
environment variables for a block (e.g. ``EDGESEG_HOME`` while reading a search's MLflow store).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class CpuMeter:
    """CPU seconds (user + system) of a process and all its descendants, read from ``/proc`` every
    ``period`` seconds. A process counts with the last value seen, so at most one period of each
    process's life is missed (a process that lives less than a period may be missed entirely)."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        self.root = pid
        self.period = period
        self.tick = os.sysconf("SC_CLK_TCK")
        self.seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> cpu seconds
        self.names: dict[tuple[int, int], str] = {}  # (pid, start time) -> process name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _stat(pid: str) -> tuple[int, int, int, int, str] | None:
        """(ppid, utime, stime, starttime, comm) of a process, from /proc/PID/stat."""
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        return int(fields[1]), int(fields[11]), int(fields[12]), int(fields[19]), comm

    def _sample(self) -> None:
        stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := self._stat(p)) is not None}
        children: dict[int, list[int]] = {}
        for pid, (ppid, *_rest) in stats.items():
            children.setdefault(ppid, []).append(pid)
        todo = [self.root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                _ppid, utime, stime, started, comm = stats[pid]
                self.seen[(pid, started)] = (utime + stime) / self.tick
                self.names[(pid, started)] = "driver" if pid == self.root else comm
            todo.extend(children.get(pid, []))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def start(self) -> CpuMeter:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.seen.values())

    def by_name(self) -> dict[str, float]:
        """Core-seconds per process name (the driver, Ray's trial workers ``ray::ImplicitFunc``, ...)."""
        out: dict[str, float] = {}
        for key, seconds in self.seen.items():
            out[self.names[key]] = round(out.get(self.names[key], 0.0) + seconds, 1)
        return dict(sorted(out.items(), key=lambda item: -item[1]))


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from the ``cpu`` line of /proc/stat.

    Idle = ``idle`` + ``iowait``; guest time is already inside ``user``/``nice`` and is not added again.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - fields[3] - fields[4], total


class MachineBusy:
    """Machine-wide CPU busy fraction over a period, and per ``window`` seconds within it (/proc/stat)."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self.windows: list[float] = []
        self._first = self._last = cpu_ticks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.window):
            now = cpu_ticks()
            busy, total = now[0] - self._last[0], now[1] - self._last[1]
            if total > 0:
                self.windows.append(busy / total)
            self._last = now

    def start(self) -> MachineBusy:
        self._first = self._last = cpu_ticks()
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Busy over the whole period, and how the ``window``-second samples spread."""
        self._stop.set()
        self._thread.join()
        end = cpu_ticks()
        total = end[1] - self._first[1]
        ranked = sorted(self.windows)
        return {
            "busy": round((end[0] - self._first[0]) / total, 3) if total else None,
            "window_s": self.window,
            "windows": len(ranked),
            "windows_at_least_85_percent": round(sum(w >= 0.85 for w in ranked) / len(ranked), 3) if ranked else None,
            "p10": round(ranked[len(ranked) // 10], 3) if ranked else None,
            "median": round(statistics.median(ranked), 3) if ranked else None,
        }  # fmt: skip


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
