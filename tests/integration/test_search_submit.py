"""``search submit`` through the Ray Jobs API of a real (local, token-authenticated) Ray cluster."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import free_port
from search_helpers import tiny_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = tiny_overrides(epochs=2)


def test_auth_token_sources(tmp_path, monkeypatch):
    from edgeseg.search.submit import auth_token

    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert auth_token() == "from-file"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert auth_token() == "from-env"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_token() is None


@pytest.fixture
def head_node(monkeypatch):
    """``ray start --head`` with token auth and its own ports (other Ray clusters may share this host)."""
    token = secrets.token_hex(16)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    dashboard = free_port()
    ports = {name: free_port() for name in ("port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                            "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port")}  # fmt: skip
    # Its own temp dir: `ray start` records its address there, not in the shared /tmp/ray.
    temp_dir = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--num-cpus=2",
               f"--temp-dir={temp_dir}",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
               *(f"--{name}={port}" for name, port in ports.items())]  # fmt: skip
    head = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 90
        while True:
            request = urllib.request.Request(
                f"{address}/api/version", headers={"Authorization": f"Bearer {token}"}
            )
            try:
                urllib.request.urlopen(request, timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                assert head.poll() is None, "ray start --head exited"
                assert time.monotonic() < deadline, "the dashboard did not come up within 90 s"
                time.sleep(1.0)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGINT)  # the head and the processes it started, nothing else
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_runs_the_search_as_a_ray_job(tmp_path, monkeypatch, head_node):
    from mlflow.tracking import MlflowClient

    from edgeseg.search.submit import submit_search

    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "job"\nversion = "0"\ndependencies = []\n')
    home = tmp_path / "home"
    spec = {
        "name": "submitted",
        "base": {"preset": "baseline", "overrides": TINY},
        "space": {"train.lr": {"grid": [1e-2]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"},
        "resources": {"executor": "function"},
        "storage": str(tmp_path / "storage"),
        "home": str(home),  # the job's driver runs elsewhere: the spec says where results go
    }
    (project / "searches").mkdir()
    (project / "searches" / "submitted.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Token auth is on: the Jobs API refuses a request without the token, so a successful submit
    # proves the client sent it.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{head_node}/api/jobs/", timeout=30)
    assert refused.value.code == 401
    submission = submit_search(
        project / "searches" / "submitted.yaml",
        head_node,
        follow=True,
        dependencies=None,
        python=sys.executable,
    )
    assert submission.status == "SUCCEEDED", submission
    assert "searches/submitted.yaml --address auto" in submission.entrypoint

    client = MlflowClient(tracking_uri=f"sqlite:///{home.resolve() / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("submitted")
    (run,) = client.search_runs([experiment.experiment_id], "tags.role = 'trial'")
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/miou")) == [1, 2]
    assert run.info.status == "FINISHED"
    assert (tmp_path / "storage" / "submitted" / "edgeseg" / "search.json").exists()
