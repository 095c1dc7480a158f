"""Submit a search to a Ray cluster through the Ray Jobs API.

The job's driver is ``edgeseg search run SPEC --address auto`` running on the cluster, with this
project folder as its ``working_dir`` and the project's dependencies as its ``pip`` runtime env
(Ray builds a virtualenv on top of the node's site-packages, so what the worker image already has
is not installed again). Token auth (Ray >= 2.52) is honoured: a token from ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` is sent as ``Authorization: Bearer`` unless
``RAY_AUTH_MODE=disabled``. The token travels in clear over plain HTTP, so reach a remote dashboard
through a tunnel or a TLS proxy.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edgeseg.search.spec import SpecError, load_spec

# gitignore-style patterns, matched at any depth. The working dir is uploaded to the cluster's storage and
# unpacked on every node, so credentials and local stores never go: env files, databases, token files.
SECRET_EXCLUDES = [
    ".env", "*.env", "*.db", "*.sqlite", "*.sqlite3", "auth_token", "*.token", "*.pem", ".netrc",
]  # fmt: skip
EXCLUDES = [
    ".venv", ".git", "**/__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "*.egg-info", "mlruns",
    "*.onnx", "*.pt", "node_modules", *SECRET_EXCLUDES,
]  # fmt: skip
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AGENT_WAIT_S = 60.0


@dataclass(frozen=True)
class Submission:
    job_id: str
    address: str
    status: str  # the job status when submit returned (final with follow)
    entrypoint: str


def project_root(start: Path) -> Path:
    """The nearest folder at or above ``start`` with a pyproject.toml."""
    for folder in [start, *start.parents]:
        if (folder / "pyproject.toml").exists():
            return folder
    raise SpecError(f"no pyproject.toml at or above {start}; pass working_dir")


def auth_token() -> str | None:
    """The Ray auth token the CLI would use, or None (auth disabled or no token)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if path.is_file():
        return path.read_text().strip() or None
    return None


def pyproject_dependencies(root: Path) -> list[str]:
    data = tomllib.loads((root / "pyproject.toml").read_text())
    return list(data.get("project", {}).get("dependencies", []))


def runtime_env(root: Path, dependencies: str | Path | None) -> dict[str, Any]:
    """``dependencies``: "pyproject" (default), None (the cluster image has them), or a requirements file."""
    env: dict[str, Any] = {"working_dir": str(root), "excludes": list(EXCLUDES)}
    if dependencies == "pyproject":
        env["pip"] = pyproject_dependencies(root)
    elif dependencies is not None:
        path = Path(dependencies)
        if not path.is_file():
            raise SpecError(f"requirements file {path} does not exist")
        env["pip"] = [
            line.strip()
            for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    return env


def submit_search(
    spec_path: str | Path,
    address: str,
    *,
    follow: bool = False,
    working_dir: str | Path | None = None,
    dependencies: str | Path | None = "pyproject",
    python: str = "python",
    extra_args: list[str] | None = None,
    log: Callable[[str], Any] = print,
) -> Submission:
    """Validate the spec locally, then submit ``edgeseg search run`` as a Ray job."""
    from ray.job_submission import JobSubmissionClient

    spec_path = Path(spec_path).resolve()
    spec = load_spec(spec_path)  # fail here, not on the cluster
    root = Path(working_dir).resolve() if working_dir else project_root(spec_path.parent)
    try:
        relative = spec_path.relative_to(root)
    except ValueError as exc:
        raise SpecError(
            f"search spec {spec_path} must be inside the working dir {root} that is shipped"
        ) from exc
    headers = {}
    token = auth_token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
        host = urlparse(address).hostname or ""
        if address.startswith("http://") and host not in ("127.0.0.1", "localhost", "::1"):
            log(f"warning: sending the Ray auth token over plain HTTP to {host}; use a tunnel or TLS proxy")
    client = JobSubmissionClient(address, headers=headers)
    args = " ".join(extra_args or [])
    entrypoint = f"{python} -m edgeseg.cli search run {relative.as_posix()} --address auto {args}".strip()
    submission_id = f"edgeseg-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env(root, dependencies),
                submission_id=submission_id,
                metadata={"edgeseg_search": spec.name},
            )
            break
        except RuntimeError as exc:
            # A cluster that has just started answers 500 until its job agent is up.
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    log(f"submitted search {spec.name} as job {job_id} to {address}")
    status = _status(client.get_job_status(job_id))
    if follow:
        status = follow_job(client, job_id, log)
    return Submission(job_id, address, status, entrypoint)


def follow_job(client: Any, job_id: str, log: Callable[[str], Any] = print) -> str:
    """Stream the job's logs until it ends; return its final status."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(tail())
    while (status := _status(client.get_job_status(job_id))) not in TERMINAL:
        time.sleep(1.0)
    log(f"job {job_id}: {status}")
    return status


def _status(value: Any) -> str:
    return str(getattr(value, "value", value))
