"""Helpers shared by unit and integration tests (``pythonpath = ["tests"]`` makes this importable)."""

from __future__ import annotations

import multiprocessing
import socket
from collections.abc import Callable
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
