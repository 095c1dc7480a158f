"""Control of a running search from another shell or host: status, stop a trial, stop the search.

Everything goes through the search's storage folder (local, NFS or s3://), so it works wherever
the driver runs (a local ``search run`` or a job submitted to a cluster)::

    <storage>/<name>/                 Tune's experiment folder (experiment_state, tuner.pkl, trials)
    <storage>/<name>/edgeseg/search.json   search id + the resolved spec (what resume needs)
    <storage>/<name>/edgeseg/driver.json   driver pid, host, heartbeat, state
    <storage>/<name>/edgeseg/stop/<trial>  stop request for one trial (read by a tune.Stopper)
    <storage>/<name>/edgeseg/stop/ALL      stop request for the whole search

Stopping one trial is a manual prune: the :class:`StopRequests` stopper ends it at its next report.
Stopping the whole search is Tune's clean interrupt: the driver sees the request and sends itself
SIGINT, Tune saves the experiment state and returns, and ``search resume`` continues later.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from ray import tune

from edgeseg.search.mlflow_runs import best_run, client_for, search_runs
from edgeseg.search.names import ROLE_SEARCH, ROLE_TRIAL
from edgeseg.search.space import expected_trials
from edgeseg.search.spec import SearchSpec, SpecError, spec_from_mapping
from edgeseg.search.storage import StorageFolder, control_folder, default_storage, experiment_uri

STOP_ALL = "ALL"
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


class SearchNotFoundError(SpecError):
    """No search of that name under the storage folder."""


# ----------------------------------------------------------------------------------------------
# The search record (search.json) and the driver record (driver.json).
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchRecord:
    search_id: str
    spec: SearchSpec
    created: float


def write_record(spec: SearchSpec, search_id: str) -> SearchRecord:
    record = SearchRecord(search_id, spec, time.time())
    body = {"search_id": search_id, "created": record.created, "spec": spec.to_dict()}
    control_folder(str(spec.storage), spec.name).write_text("search.json", json.dumps(body, indent=2))
    return record


def read_record(name: str, storage: str | None = None) -> SearchRecord:
    """The search's id and resolved spec, from its storage folder; errors name both."""
    storage = storage or default_storage()
    folder = control_folder(storage, name)
    if not folder.exists("search.json"):
        raise SearchNotFoundError(
            f"no search named {name!r} under {storage} (missing {folder.uri}/search.json); "
            "pass --storage if it was run with another storage path"
        )
    body = json.loads(folder.read_text("search.json"))
    spec = spec_from_mapping(body["spec"], source=f"{folder.uri}/search.json")
    return SearchRecord(str(body["search_id"]), spec, float(body.get("created", 0.0)))


def write_driver_state(spec: SearchSpec, state: str) -> None:
    body = {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time(), "state": state}
    control_folder(str(spec.storage), spec.name).write_text("driver.json", json.dumps(body))


def driver_state(name: str, storage: str) -> dict[str, Any]:
    """``{"state": running|finished|stopped|failed|not running, ...}`` with a stale heartbeat = not running."""
    folder = control_folder(storage, name)
    if not folder.exists("driver.json"):
        return {"state": "not started"}
    body = json.loads(folder.read_text("driver.json"))
    if body.get("state") in ("running", "preparing"):
        stale = time.time() - float(body.get("heartbeat", 0)) > STALE_AFTER_S
        here = body.get("host") == socket.gethostname()
        if stale or (here and not _alive(int(body.get("pid", 0)))):
            body["state"] = "not running (driver gone; resume it)"
    return body


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------
# Stop requests.
# ----------------------------------------------------------------------------------------------


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
    """Heartbeat in driver.json; turns a ``stop/ALL`` request into Tune's clean SIGINT stop."""

    def __init__(self, spec: SearchSpec) -> None:
        self.spec = spec
        self._checked = 0.0
        self._beat = 0.0
        self.stop_requested = False

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "_checked": 0.0, "_beat": 0.0, "stop_requested": False}

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        self._checked = now
        folder = control_folder(str(self.spec.storage), self.spec.name)
        if not self.stop_requested and folder.child("stop").exists(STOP_ALL):
            self.stop_requested = True
            os.kill(os.getpid(), signal.SIGINT)  # Tune's handler saves state and returns from fit()
        if now - self._beat >= HEARTBEAT_S:
            self._beat = now
            write_driver_state(self.spec, "running")


def request_stop(name: str, trial_id: str | None = None, storage: str | None = None) -> str:
    """Ask a running search to stop one trial, or the whole search (resumable). Returns a message."""
    storage = storage or default_storage()
    record = read_record(name, storage)
    driver = driver_state(name, str(record.spec.storage))
    if driver.get("state") != "running":
        raise SpecError(
            f"search {name!r} is not running (driver state: {driver.get('state')}); nothing to stop"
        )
    stop = control_folder(str(record.spec.storage), name).child("stop")
    if trial_id is None:
        stop.write_text(STOP_ALL, str(time.time()))
        return f"asked search {name!r} to stop; it saves its state and can be resumed with `edgeseg search resume {name}`"
    rows = {row.trial_id: row for row in search_status(name, storage).trials}
    if trial_id not in rows:
        raise SpecError(
            f"search {name!r} has no trial {trial_id!r}; trials: {', '.join(sorted(rows)) or 'none yet'}"
        )
    if rows[trial_id].state in ("TERMINATED", "ERROR"):
        raise SpecError(f"trial {trial_id!r} of search {name!r} has already ended ({rows[trial_id].state})")
    stop.write_text(trial_id, str(time.time()))
    return f"asked trial {trial_id} of search {name!r} to stop at its next epoch report"


def clear_stop_all(spec: SearchSpec) -> None:
    control_folder(str(spec.storage), spec.name).child("stop").delete(STOP_ALL)


# ----------------------------------------------------------------------------------------------
# Status.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    state: str  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    epoch: int
    metric: float | None  # the latest value of the search metric
    best: float | None  # the best value (the exported checkpoint's)
    pruned: str  # "", "asha@2", "user@1"
    run_id: str
    onnx: str


@dataclass(frozen=True)
class SearchStatus:
    name: str
    search_id: str
    driver: str
    metric: str
    expected_trials: int
    trials: list[TrialRow] = field(default_factory=list)
    best_run_id: str = ""


def search_status(name: str, storage: str | None = None) -> SearchStatus:
    """Trials from Tune's experiment state, joined with their MLflow runs."""

    storage = storage or default_storage()
    record = read_record(name, storage)
    spec = record.spec
    known = tune_trials(experiment_uri(str(spec.storage), name))
    client = client_for(str(spec.mlflow.tracking_uri))
    experiment = client.get_experiment_by_name(spec.experiment_name)
    runs: dict[str, Any] = {}
    best_id = ""
    if experiment is not None:
        found = search_runs(
            client, experiment.experiment_id, {"search_id": record.search_id, "role": ROLE_TRIAL}
        )
        runs = {r.data.tags.get("ray_trial_id", ""): r for r in found}
        parent = search_runs(
            client, experiment.experiment_id, {"search_id": record.search_id, "role": ROLE_SEARCH}
        )
        best = best_run(found, f"best/{spec.metric}", spec.mode)
        best_id = (
            best.info.run_id
            if best is not None
            else (parent[0].data.tags.get("best_run_id", "") if parent else "")
        )
    rows = []
    for trial_id in sorted(set(known) | set(runs)):
        state, last = known.get(trial_id, ("UNKNOWN", {}))
        run = runs.get(trial_id)
        tags = run.data.tags if run else {}
        metrics = run.data.metrics if run else {}
        pruned = (
            f"{tags.get('pruned_by', '')}@{tags.get('pruned_at_epoch', '')}"
            if tags.get("pruned") == "true"
            else ""
        )
        epoch = max(int(last.get("epoch", 0) or 0), int(tags.get("last_epoch", 0) or 0))
        value = metrics.get(spec.metric, last.get(spec.metric))
        rows.append(
            TrialRow(
                trial_id,
                state,
                epoch,
                value,
                metrics.get(f"best/{spec.metric}"),
                pruned,
                run.info.run_id if run else "",
                tags.get("onnx", ""),
            )  # fmt: skip
        )
    return SearchStatus(name, record.search_id, driver_state(name, str(spec.storage)).get("state", ""), spec.metric,
                        expected_trials(spec), rows, best_id)  # fmt: skip


def tune_trials(uri: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Trial id -> (Tune status, last result) from the newest saved experiment state."""
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    folder = StorageFolder(uri)
    if not folder.exists():
        return {}
    newest = _find_newest_experiment_checkpoint(folder.path, folder.fs)
    if newest is None:
        return {}
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    analysis = ExperimentAnalysis(uri)
    return {t.trial_id: (t.status, dict(t.last_result or {})) for t in analysis.trials}


def format_status(status: SearchStatus) -> str:
    """A plain-text table (the ``search status`` output)."""
    head = (
        f"search {status.name} ({status.search_id})  driver: {status.driver}  "
        f"trials: {len(status.trials)}/{status.expected_trials}"
    )
    lines = [
        head,
        f"{'trial':12s} {'state':11s} {'epoch':>5s} {status.metric:>10s} {'best':>8s} {'pruned':9s} onnx",
    ]
    for row in status.trials:
        value = f"{row.metric:.4f}" if row.metric is not None else "-"
        best = f"{row.best:.4f}" if row.best is not None else "-"
        marker = " *" if row.run_id and row.run_id == status.best_run_id else ""
        lines.append(
            f"{row.trial_id:12s} {row.state:11s} {row.epoch:5d} {value:>10s} {best:>8s} {row.pruned or '-':9s} "
            f"{row.onnx or '-'}{marker}"
        )
    if status.best_run_id:
        lines.append(f"* best MLflow run: {status.best_run_id}")
    return "\n".join(lines)
