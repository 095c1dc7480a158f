"""Helpers shared by unit and integration tests (``pythonpath = ["tests"]`` makes this importable)."""

from __future__ import annotations

import base64
import http.client
import multiprocessing
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeseg.search.ui import free_port

__all__ = [
    "CHROMIUM",
    "CHROMIUM_FLAGS",
    "free_port",
    "http_get",
    "needs_chromium",
    "race_two_processes",
    "stop_cli",
    "TINY_FIT",
]

# Overrides that make ``fit`` on the generated people data take seconds: 4 + 2 images at 64 px, a
# head 8 channels wide, 2 epochs of batch 2, on the CPU.
TINY_FIT = {
    "data.input_size": 64,
    "data.generated_train_images": 4,
    "data.generated_val_images": 2,
    "model.channels": 8,
    "model.mask_size": 8,
    "model.roi_size": 7,
    "train.batch_size": 2,
    "train.warmup_epochs": 0,
    "train.device": "cpu",
    "train.epochs": 2,
}

# Debian's headless Chromium, as the browser tests start it: no network chatter, a fresh profile each run.
CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: run scripts/ensure-chromium.sh (CI does)"
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def race_two_processes(target: Callable[..., None], args: tuple[Any, ...], timeout: float = 120) -> list[Any]:
    """Run ``target(*args, barrier, results)`` in two spawned interpreters released together by a barrier;
    return what each put on ``results``. Spawn, not fork: a process holding ONNX Runtime's thread pools
    must not fork. Each process must exit 0."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=target, args=(*args, barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=timeout) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0, f"a racing process exited with {worker.exitcode}"
    return outcomes


def http_get(port: int, path: str, user: str | None = None, password: str | None = None) -> tuple[int, bytes]:
    """(status, body) of ``GET path`` on 127.0.0.1:``port``, with basic auth when ``user`` is given."""
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def stop_cli(cli: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM a command started in its own process group (``edgeseg ui`` stops its server's group,
    then exits); SIGKILL the group and raise if it outlives ``timeout``."""
    cli.send_signal(signal.SIGTERM)
    try:
        cli.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(cli.pid, signal.SIGKILL)
        raise
