"""`edgeseg ui` in a real browser: what the MLflow UI draws for a search-shaped store.

A real SQLite store holds one experiment shaped like a search (a parent run and two trial runs with
`val/miou` steps, written with the MLflow client directly). `serve_ui` serves it; Debian's headless
Chromium renders the experiment page; the tests assert what was drawn (names in the DOM, the order by
`val/miou`, a non-blank screenshot), MLflow's Host-header check, the loopback-only bind, and basic auth.
"""

from __future__ import annotations

import http.client
import importlib.util
import io
import json
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import CHROMIUM, CHROMIUM_FLAGS, http_get, needs_chromium
from mlflow.entities import Metric
from PIL import Image

from edgeseg.search.mlflow_runs import ensure_experiment
from edgeseg.search.ui import UiError, UiServer, default_tracking_uri, serve_ui
from mlflow import MlflowClient

pytestmark = pytest.mark.integration

WINDOW = (1400, 900)


@dataclass(frozen=True)
class SearchStore:
    uri: str
    experiment_id: str
    experiment_name: str
    parent_name: str
    trial_final_miou: dict[str, float]  # run name -> val/miou at the last step


@pytest.fixture(scope="module")
def search_store(tmp_path_factory: pytest.TempPathFactory) -> SearchStore:
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    name = "edgeseg-smoke"
    # Created the way a search creates its experiment, so it carries the same experiment tags.
    experiment_id = ensure_experiment(client, name, (root / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="search-smoke", tags={"role": "search"})
    # Three epochs each; bravo ends higher (0.65) than alpha (0.60).
    curves = {"trial-alpha": [0.40, 0.50, 0.60], "trial-bravo": [0.45, 0.55, 0.65]}
    now = int(time.time() * 1000)
    for trial_name, values in curves.items():
        run = client.create_run(
            experiment_id,
            run_name=trial_name,
            tags={"mlflow.parentRunId": parent.info.run_id, "role": "trial"},
        )
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("val/miou", v, now + step, step) for step, v in enumerate(values, start=1)],
            params=[],
        )
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)
    client.create_experiment("made-by-hand", artifact_location=(root / "other").as_uri())
    return SearchStore(
        uri=uri,
        experiment_id=experiment_id,
        experiment_name=name,
        parent_name="search-smoke",
        trial_final_miou={k: v[-1] for k, v in curves.items()},
    )


@pytest.fixture(scope="module")
def ui_server(search_store: SearchStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESEG_HOME", str(tmp_path_factory.mktemp("edgeseg-home")))
        mp.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
        server = serve_ui(search_store.uri, port=0, block=False)
    try:
        yield server
    finally:
        server.stop()


def visible_text(dom: str) -> str:
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


def render(url: str, workdir: Path, expect: Sequence[str], screenshot: Path | None = None) -> str:
    """Load ``url`` in headless Chromium and return its DOM; retry with more JS time until ``expect`` shows."""
    text = ""
    for budget_ms in (10_000, 20_000, 40_000):
        user_data_dir = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
        command = [
            str(CHROMIUM),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={user_data_dir}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
        ]
        if screenshot is not None:
            command.append(f"--screenshot={screenshot}")
        result = subprocess.run(command + [url], capture_output=True, text=True, timeout=180)
        shutil.rmtree(user_data_dir, ignore_errors=True)
        text = visible_text(result.stdout)
        if all(s in text for s in expect):
            break
    return text


@needs_chromium
@pytest.mark.slow
def test_experiment_page_shows_the_search(
    ui_server: UiServer, search_store: SearchStore, tmp_path: Path
) -> None:
    url = f"{ui_server.url}#/experiments/{search_store.experiment_id}?workflowType=machine_learning"
    n_runs = 1 + len(search_store.trial_final_miou)
    expect = [search_store.experiment_name, search_store.parent_name, f"{n_runs} matching runs"]
    text = render(url, tmp_path, expect)
    for s in expect:
        assert s in text, f"{s!r} not drawn at {url}; page text starts: {text[:600]}"


@needs_chromium
@pytest.mark.slow
def test_experiment_opens_on_training_runs_with_trials_under_parent(
    ui_server: UiServer, search_store: SearchStore, tmp_path: Path
) -> None:
    # The link `edgeseg ui` prints. MLflow 3.17's UI picks its view from the URL's workflowType (or the
    # browser's last choice) and ignores the experiment's mlflow.experimentKind tag, so the link says it.
    links = dict(ui_server.search_links())
    assert list(links) == [search_store.experiment_name]  # the hand-made experiment is not a search
    url = links[search_store.experiment_name]
    n_runs = 1 + len(search_store.trial_final_miou)
    text = render(url, tmp_path, [search_store.parent_name, f"{n_runs} matching runs"])
    assert search_store.parent_name in text, f"runs table not drawn at {url}; page text starts: {text[:600]}"
    assert f"{n_runs} matching runs" in text
    assert "Model registry" in text and "Observability" not in text, "not the model-training view"
    # One row is drawn for three matching runs: the trials are folded under their parent run.
    for trial in search_store.trial_final_miou:
        assert trial not in text, f"trial {trial!r} drawn as a top-level row: {text[:600]}"


@needs_chromium
@pytest.mark.slow
def test_runs_table_sorted_by_val_miou_and_screenshot(
    ui_server: UiServer, search_store: SearchStore, tmp_path: Path
) -> None:
    # Sorting by a metric un-nests the child runs, so every trial gets its own row.
    order_by = urllib.parse.quote("metrics.`val/miou`")
    url = f"{ui_server.experiment_url(search_store.experiment_id)}&orderByKey={order_by}&orderByAsc=false"
    screenshot = tmp_path / "experiment-runs.png"
    trials = search_store.trial_final_miou
    text = render(url, tmp_path, [search_store.experiment_name, *trials], screenshot=screenshot)

    for name in [search_store.experiment_name, search_store.parent_name, *trials]:
        assert name in text, f"{name!r} not drawn at {url}; page text starts: {text[:600]}"
    best_first = sorted(trials, key=lambda n: trials[n], reverse=True)
    # Runs without the metric (the parent) sort last.
    positions = [text.index(n) for n in [*best_first, search_store.parent_name]]
    assert positions == sorted(positions), f"rows not in val/miou order {best_first}: {text[:600]}"

    assert screenshot.is_file(), "chromium wrote no screenshot"
    with Image.open(io.BytesIO(screenshot.read_bytes())) as image:
        assert image.format == "PNG"
        assert image.size == WINDOW
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    distinct = np.unique(pixels, axis=0)
    assert len(distinct) > 1, "screenshot is one flat colour"
    assert len(distinct) > 50, f"screenshot has almost no detail ({len(distinct)} colours)"


def test_foreign_host_header_is_rejected(ui_server: UiServer) -> None:
    def status_for(host_header: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", ui_server.port, timeout=30)
        try:
            conn.request("GET", "/", headers={"Host": host_header})
            return conn.getresponse().status
        finally:
            conn.close()

    assert status_for(f"127.0.0.1:{ui_server.port}") == 200
    assert status_for("evil.example") == 403  # DNS-rebinding guard of MLflow's security middleware


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of LISTEN sockets on ``port``, read from the kernel's tables."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:  # 0A = TCP_LISTEN
                continue
            if width == 8:
                found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
            else:
                found.add("ipv6:" + address)
    return found


def test_server_listens_on_loopback_only(ui_server: UiServer) -> None:
    assert ui_server.host == "127.0.0.1"
    assert _listening_addresses(ui_server.port) == {"127.0.0.1"}


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::"])
def test_non_loopback_host_refused_without_auth(
    host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    with pytest.raises(UiError) as excinfo:
        serve_ui(host=host, port=0, block=False)
    message = str(excinfo.value)
    assert host in message and "MLFLOW_AUTH_ADMIN_PASSWORD" in message and "--insecure" in message


def test_tracking_server_url_is_not_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path))
    with pytest.raises(UiError, match="http://mlflow.internal:5000"):
        serve_ui("http://mlflow.internal:5000", port=0, block=False)


def test_default_tracking_uri_follows_home_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri() == "sqlite:///" + str(tmp_path.resolve() / "mlflow" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://db.internal/mlflow")
    assert default_tracking_uri() == "postgresql://db.internal/mlflow"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("flask_wtf") is None, reason="basic auth needs mlflow[auth] (Flask-WTF)"
)
def test_basic_auth_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    password = secrets.token_urlsafe(16)
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", password)
    # The repository's ini (what start-server.sh and the compose image use), not the one inside the wheel.
    monkeypatch.setenv(
        "MLFLOW_AUTH_CONFIG_PATH", str(Path(__file__).resolve().parents[2] / "mlflow" / "basic_auth.ini")
    )
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)

    api = "/api/2.0/mlflow/experiments/search?max_results=10"
    with serve_ui(f"sqlite:///{tmp_path / 'auth-store.db'}", port=0, block=False) as server:
        assert server.basic_auth
        assert http_get(server.port, "/health")[0] == 200
        assert http_get(server.port, api)[0] == 401
        assert http_get(server.port, api, "admin", password + "x")[0] == 401
        status, body = http_get(server.port, api, "admin", password)
        assert status == 200
        assert [e["name"] for e in json.loads(body)["experiments"]] == ["Default"]
    # The user store lands next to the tracking store's home, not in the caller's working directory.
    assert (tmp_path / "home" / "mlflow" / "basic_auth.db").is_file()
