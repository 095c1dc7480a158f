"""ONNX export of each trial's best checkpoint, in one background thread of the driver.

Exports are CPU work that must not stall Tune's event loop; the thread makes no MLflow call (the
tracker logs what it returns on the driver's main thread).
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import re
import tempfile
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.engine.checkpoint import load_checkpoint
from edgeseg.evaluation import evaluate_checkpoint
from edgeseg.export import export_checkpoint, verify_onnx

log = logging.getLogger("edgeseg.search.export_jobs")


@dataclass
class ExportJob:
    trial_id: str
    run_key: str  # the trial's run in the tracker's outbox
    checkpoint: str  # path or URI of the best checkpoint directory
    final_status: str  # MLflow status once logged: FINISHED or FAILED
    config: dict[str, Any]
    out_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="edgeseg-export-")))
    result: Any = None
    checkpoint_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint_epoch: int = 0
    mask_ap: dict[str, float] = field(default_factory=dict)  # val/mask_ap, val/mask_ap50, val/mask_ap75
    error: str = ""
    deferred: bool = False  # a pruned trial: exported after every trial that ran its full budget


def run_export(job: ExportJob, latency_cache: dict[str, dict[str, float]] | None = None) -> ExportJob:
    """Export in the background thread: no MLflow calls here. ``latency_cache``: the latencies of
    architectures already timed in this search (a cell's seeds share one architecture)."""
    from ray.train import Checkpoint

    try:
        if "://" in job.checkpoint:
            local = Path(Checkpoint(path=job.checkpoint).to_directory(str(job.out_dir / "checkpoint")))
        else:
            local = Path(job.checkpoint)
        state = load_checkpoint(local)
        job.checkpoint_epoch = int(state["epoch"])
        job.checkpoint_metrics = {
            k: float(v) for k, v in (state.get("metrics") or {}).items() if isinstance(v, int | float)
        }
        job.result = export_checkpoint(local, job.out_dir / "onnx", latency_cache=latency_cache)
        # COCO mask AP of the best checkpoint (too slow to compute every epoch), logged with its ONNX
        metrics, _, _ = evaluate_checkpoint(local, log=lambda _: None)
        job.mask_ap = {k: float(v) for k, v in metrics.items() if k.startswith("val/mask_ap")}
        sidecar = json.loads(Path(job.result.sidecar_path).read_text())
        verify_onnx(Path(job.result.onnx_path), sidecar)
    except Exception as exc:  # the trial's run records why; the search goes on
        job.error = f"{type(exc).__name__}: {exc}"
        log.warning("ONNX export of trial %s failed: %s\n%s", job.trial_id, job.error, traceback.format_exc())
    return job


class ExportWorker:
    """One background thread; exports are CPU work that must not stall Tune's event loop. Trials that
    ran their full budget go first (the best ONNX is among them); pruned ones wait behind them."""

    def __init__(self, start: bool = True) -> None:
        self.todo: queue.PriorityQueue[tuple[int, int, ExportJob | None]] = queue.PriorityQueue()
        self._order = itertools.count()  # first in, first out within a priority
        self.done: queue.Queue[ExportJob] = queue.Queue()
        self.pending = 0
        self.latency_cache: dict[str, dict[str, float]] = {}  # architecture -> latencies, for this driver
        self.thread = threading.Thread(target=self._loop, name="edgeseg-onnx-export", daemon=True)
        if start:
            self.thread.start()

    def _loop(self) -> None:
        while (job := self.todo.get()[2]) is not None:
            self.done.put(run_export(job, self.latency_cache))

    def submit(self, job: ExportJob) -> None:
        self.pending += 1
        self.todo.put((int(job.deferred), next(self._order), job))

    def finished(self, wait: bool = False) -> list[ExportJob]:
        jobs = []
        while self.pending:
            try:
                job = self.done.get(block=wait, timeout=600 if wait else None)
            except queue.Empty:
                break
            self.pending -= 1
            jobs.append(job)
        return jobs

    def close(self) -> None:
        self.todo.put((2, next(self._order), None))  # after every queued export


def primary_latency(latency: Mapping[str, float]) -> float:
    """The one latency of a model: ONNX Runtime's, at the largest ROI count measured (else torch's)."""

    def rois(key: str) -> int:
        found = re.search(r"rois_(\d+)", key)
        return int(found.group(1)) if found else 0

    pool = {k: v for k, v in latency.items() if "onnx" in k} or dict(latency)
    return float(pool[max(pool, key=rois)])


def latency_metric_name(key: str) -> str:
    return key if key.startswith("latency_ms") else f"latency_ms/{key}"
