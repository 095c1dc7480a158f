"""Every epoch reports the CPU time it took (``epoch_cpu_seconds``), next to its wall time.

The engine measures it with ``time.process_time()``: the trial process's CPU over all its threads,
so ``epoch_cpu_seconds / epoch_seconds`` says how many cores the epoch kept busy (the search
benchmark sums it over a search's epochs against the core-seconds of the search's processes).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import TINY_FIT

from edgeseg.config import load_config
from edgeseg.engine.checkpoint import load_checkpoint
from edgeseg.engine.fit import fit
from edgeseg.engine.prepare import prepare
from edgeseg.search.names import EPOCH_KEYS

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SLEEP_S = 0.25  # per image read: time inside the epoch on the wall clock that uses no CPU


class SlowReads:
    """A data set whose every read first sleeps ``SLEEP_S`` (an epoch that waits, e.g. on a slow disk)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        time.sleep(SLEEP_S)
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dataset, name)


class Collect:
    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def report(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        self.epochs.append(dict(metrics))


def test_each_epoch_reports_the_cpu_it_used_not_the_time_it_waited(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    config = load_config("baseline", overrides=TINY_FIT)
    prepared = prepare(config, log=lambda _: None)
    prepared = dataclasses.replace(prepared, train=SlowReads(prepared.train), val=SlowReads(prepared.val))
    reads_per_epoch = len(prepared.train) + len(prepared.val)  # eval runs every epoch (eval_every 1)
    collect = Collect()

    result = fit(config, collect, run_dir=tmp_path / "run", prepared=prepared, log=lambda _: None)

    cores = len(os.sched_getaffinity(0))
    assert [int(m["epoch"]) for m in collect.epochs] == [1, 2]
    for metrics in collect.epochs:
        cpu, wall = metrics["epoch_cpu_seconds"], metrics["epoch_seconds"]
        assert cpu > 0
        assert wall > reads_per_epoch * SLEEP_S
        # No more than every core for the whole epoch, and none of it while the reads slept (a
        # wall-clock figure breaks this bound once the sleeping is over 1 - 1/cores of the epoch).
        assert cpu <= cores * (wall - reads_per_epoch * SLEEP_S), metrics
    # Kept in the checkpoint's history (a restored trial reports its epochs again from it), and a
    # per-epoch key the tracker logs with step = epoch.
    history = load_checkpoint(result.last_checkpoint)["history"]
    assert [h["epoch_cpu_seconds"] for h in history] == [m["epoch_cpu_seconds"] for m in collect.epochs]
    assert "epoch_cpu_seconds" in EPOCH_KEYS
