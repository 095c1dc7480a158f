"""MLflow writes of a search driver, journaled on disk and delivered in order by one thread.

Every MLflow write used to run on Tune's event loop: an unreachable tracking server stalled the whole
search through the client's retries, then ended it with a traceback. The tracker now *puts* each
write here instead, and returns at once. A put appends one JSON line to a journal before the write
is queued, so a write survives an outage and a driver that dies (a resumed driver delivers what the
last one left). One background thread delivers the writes in order; a transient failure (connection
refused, timeout, 5xx) is retried with a capped back-off until the server answers again, while the
search goes on training.

Delivery is idempotent, so a write repeated after a crash or a lost response never duplicates
anything:

- a run is *found or created* by its tags (``search_id`` + ``ray_trial_id``), never created twice;
- metric points carry their timestamps, and MLflow's stores drop an identical point;
- a run the outbox found instead of created (an earlier driver made it, and the tracker could not
  read it because the server was down) is read once, and points at or before the epochs it already
  holds are dropped, as is a best value worse than the one it carries.

Folder layout (``outbox_folder``): ``journal.jsonl`` (the writes, numbered), ``delivered`` (the last
number delivered), ``runs.json`` (run key -> MLflow run id), ``artifacts/<n>/`` (folders to upload,
owned here until they are delivered), ``dropped.jsonl`` (writes the server refused for good).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg import paths
from edgeseg.search.mlflow_runs import batches, best_run, epoch_steps, search_runs
from edgeseg.search.names import ROLE_TRIAL
from edgeseg.search.spec import SearchSpec, improves

log = logging.getLogger("edgeseg.search.outbox")

# MLflow error codes that a retry cannot fix: the write is dropped (and kept in dropped.jsonl).
PERMANENT_ERRORS = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "RESOURCE_ALREADY_EXISTS",
        "INVALID_STATE",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "BAD_REQUEST",
        "ENDPOINT_NOT_FOUND",
    }
)
# one merged batch stays inside MLflow's log_batch limits (1000 metrics, 100 params, 100 tags)
MERGE_MAX_METRICS, MERGE_MAX_PARAMS, MERGE_MAX_TAGS = 900, 90, 90
COMPACT_BYTES = 1 << 20  # an idle journal larger than this is truncated (everything in it is delivered)


class UndeliverableError(RuntimeError):
    """A write that can never be delivered (its run was never created, its folder is gone)."""


def outbox_folder(spec: SearchSpec, search_id: str) -> Path:
    """Next to the search's storage when that is a local or NFS folder (a resume on another host
    delivers what is left), else under ``$EDGESEG_HOME/outbox``."""
    storage = str(spec.storage)
    if "://" not in storage:
        return Path(storage) / spec.name / "mlflow-outbox"
    return paths.home() / "outbox" / f"{spec.name}-{search_id}"


def transient(exc: BaseException) -> bool:
    """True when a retry may succeed: the server is down, slow or overloaded."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in PERMANENT_ERRORS
    return isinstance(exc, OSError | TimeoutError | ConnectionError)


@dataclass
class _ServerView:
    """What a run found on the server already holds (runs the outbox created hold nothing)."""

    key_steps: dict[str, int] = field(default_factory=dict)
    best_value: float | None = None

    @classmethod
    def of(cls, client: Any, run: Any) -> _ServerView:
        steps = epoch_steps(client, run)
        steps.update({key: 0 for key in run.data.metrics if key not in steps})  # step-0 keys: present
        try:
            best = float(run.data.tags["best_value"])
        except (KeyError, ValueError):
            best = None
        return cls(steps, best)

    def new_points(self, metrics: list[list[Any]]) -> list[list[Any]]:
        return [m for m in metrics if m[0] not in self.key_steps or m[3] > self.key_steps[m[0]]]


class TrackingOutbox:
    """The journal, the queue and the delivery thread (see the module docstring)."""

    def __init__(self, client: Any, folder: Path, backoff_max_s: float = 15.0) -> None:
        self.client = client
        self.folder = folder
        self.backoff_max_s = backoff_max_s
        (folder / "artifacts").mkdir(parents=True, exist_ok=True)
        self._cond = threading.Condition()
        self._queue: deque[dict[str, Any]] = deque()
        self._busy = False
        self._closing = False
        self._views: dict[str, _ServerView] = {}
        self._runs: dict[str, str] = self._read_json("runs.json", {})
        self._delivered = int(self._read_json("delivered", 0))
        self._seq = self._delivered
        self.outage_since: float | None = None
        self.delivered_count = 0  # writes delivered (or dropped)
        self.requests = 0  # deliveries: merged batches count once
        for op in self._journal_ops():
            self._seq = max(self._seq, op["seq"])
            if op["seq"] > self._delivered:
                self._queue.append(op)
        self.replayed = len(self._queue)
        self._journal = open(folder / "journal.jsonl", "a")  # noqa: SIM115 (held for the outbox's life)
        self._thread = threading.Thread(target=self._loop, name="edgeseg-mlflow-outbox", daemon=True)
        self._thread.start()

    # -- the tracker's side ----------------------------------------------------------------------
    def bind(self, key: str, run_id: str) -> None:
        """``key`` is the run ``run_id`` (found or created by the caller itself)."""
        with self._cond:
            if self._runs.get(key) != run_id:
                self._runs[key] = run_id
                self._write_json("runs.json", self._runs)

    def run_id(self, key: str) -> str | None:
        with self._cond:
            return self._runs.get(key)

    def put(self, op: str, key: str, **body: Any) -> None:
        """Journal one write and queue it; returns without waiting for MLflow."""
        with self._cond:
            self._seq += 1
            entry = {"seq": self._seq, "op": op, "key": key, **body}
            self._journal.write(json.dumps(entry) + "\n")
            self._journal.flush()  # in the OS before put returns: a killed driver loses nothing
            self._queue.append(entry)
            self._cond.notify_all()

    def put_artifacts(self, key: str, folder: Path) -> None:
        """Upload ``folder``'s files to the run; the outbox keeps its own copy until delivered."""
        with self._cond:
            owned = self.folder / "artifacts" / f"{self._seq + 1:08d}"
        shutil.rmtree(owned, ignore_errors=True)
        shutil.copytree(folder, owned)
        self.put("artifacts", key, dir=str(owned))

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def flush(self, timeout: float) -> bool:
        """Wait until every write is delivered (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
            return True

    def close(self, timeout: float) -> bool:
        """Flush for at most ``timeout`` s, then stop the thread; the journal keeps what is left."""
        delivered = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=self.backoff_max_s + 5)
        with self._cond:
            if not self._queue:
                self._compact()
            self._journal.close()
        return delivered

    # -- the delivery thread -------------------------------------------------------------------
    def _loop(self) -> None:
        backoff = 0.5
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing and (not self._queue or self.outage_since is not None):
                    return
                op, count = self._next()
            try:
                self._deliver(op)
            except Exception as exc:
                if transient(exc) and not self._closing:
                    self._outage(exc)
                    with self._cond:
                        self._cond.wait(backoff)  # close() wakes it
                    backoff = min(backoff * 2, self.backoff_max_s)
                    continue
                if transient(exc):
                    return  # closing during an outage: the journal keeps it for the next driver
                self._drop(op, exc)
            backoff = 0.5
            self._done(op, count)

    def _next(self) -> tuple[dict[str, Any], int]:
        """The write at the head of the queue, with the batches of the same run right behind it merged
        in (one request instead of one per epoch when writes pile up: a busy search, an outage), within
        MLflow's limits per request. Called with the lock held; returns the write and how many it is."""
        op = self._queue[0]
        if op["op"] != "batch":
            return op, 1
        merged: dict[str, Any] = {**op, "metrics": list(op.get("metrics", [])), "tags": dict(op.get("tags", {})),
                                  "params": dict(op.get("params", {}))}  # fmt: skip
        count = 1
        for nxt in list(self._queue)[1:]:
            fits = (
                len(merged["metrics"]) + len(nxt.get("metrics", [])) <= MERGE_MAX_METRICS
                and len(merged["tags"]) + len(nxt.get("tags", {})) <= MERGE_MAX_TAGS
                and len(merged["params"]) + len(nxt.get("params", {})) <= MERGE_MAX_PARAMS
            )
            if nxt["op"] != "batch" or nxt["key"] != op["key"] or not fits:
                break
            merged["metrics"] += nxt.get("metrics", [])
            merged["tags"].update(nxt.get("tags", {}))  # a later value of a tag wins, as it would have
            merged["params"].update(nxt.get("params", {}))
            merged["best"] = nxt.get("best") or merged.get("best")
            merged["seq"] = nxt["seq"]
            count += 1
        return merged, count

    def _outage(self, exc: BaseException) -> None:
        if self.outage_since is None:
            self.outage_since = time.time()
            log.warning(
                "MLflow is unreachable (%s); %d writes are kept in %s and delivered when it answers",
                str(exc).splitlines()[0][:200], self.pending, self.folder,
            )  # fmt: skip

    def _done(self, op: Mapping[str, Any], count: int = 1) -> None:
        if self.outage_since is not None:
            log.warning(
                "MLflow answers again after %.0f s; delivering the kept writes",
                time.time() - self.outage_since,
            )
            self.outage_since = None
        with self._cond:
            for _ in range(count):
                self._queue.popleft()
            self._delivered = int(op["seq"])
            self.delivered_count += count
            self.requests += 1
            self._write_json("delivered", self._delivered)
            if not self._queue:
                self._compact(only_if_larger_than=COMPACT_BYTES)
            self._cond.notify_all()

    def _drop(self, op: Mapping[str, Any], exc: BaseException) -> None:
        log.warning("MLflow refused a %s write for %s, dropped: %s", op["op"], op["key"], exc)
        with open(self.folder / "dropped.jsonl", "a") as handle:
            handle.write(json.dumps({**op, "error": str(exc)[:2000]}) + "\n")

    def _deliver(self, op: Mapping[str, Any]) -> None:
        handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "run": self._deliver_run,
            "batch": self._deliver_batch,
            "terminate": lambda o: self.client.set_terminated(self._resolve(o), status=o["status"]),
            "status": lambda o: self.client.update_run(self._resolve(o), status=o["status"]),
            "artifacts": self._deliver_artifacts,
            "finalize": self._deliver_finalize,
        }
        handlers[op["op"]](op)

    def _resolve(self, op: Mapping[str, Any]) -> str:
        run_id = self.run_id(op["key"])
        if run_id is None:
            raise UndeliverableError(f"no MLflow run for {op['key']!r} (its creation was refused)")
        return run_id

    def _deliver_run(self, op: Mapping[str, Any]) -> None:
        """Find the run by its identifying tags, else create it; log its params once."""
        from mlflow.entities import Param

        key = op["key"]
        if self.run_id(key) is not None:
            return
        found = search_runs(self.client, op["experiment_id"], op["match"])
        if found:
            run = found[0]
            self._views[key] = _ServerView.of(self.client, run)
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            has_params = bool(run.data.params)
        else:
            run = self.client.create_run(op["experiment_id"], run_name=op["run_name"], tags=op["tags"])
            has_params = False
        if not has_params:
            params = [Param(k, v) for k, v in op.get("params", {}).items()]
            for batch in batches(params, 100):
                self.client.log_batch(run.info.run_id, params=batch)
        self.bind(key, run.info.run_id)

    def _deliver_batch(self, op: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id = self._resolve(op)
        metrics, tags = list(op.get("metrics", [])), dict(op.get("tags", {}))
        view = self._views.get(op["key"])
        best = op.get("best")
        if view is not None:
            metrics = view.new_points(metrics)
            if best is not None and not improves(best["value"], view.best_value, best["mode"]):
                tags = {
                    k: v for k, v in tags.items() if k not in ("best_value", "best_epoch", "best_checkpoint")
                }
        if view is not None and best is not None and "best_value" in tags:
            view.best_value = best["value"]
        params = [Param(k, v) for k, v in op.get("params", {}).items()]
        all_tags = [RunTag(k, str(v)) for k, v in tags.items()]
        points = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in metrics]
        # within MLflow's limits per request; the first one carries the tags (``last_epoch``) with the
        # epoch's metrics, so a re-attaching driver never sees one without the other
        while points or params or all_tags:
            self.client.log_batch(run_id, metrics=points[:900], params=params[:100], tags=all_tags[:100])
            points, params, all_tags = points[900:], params[100:], all_tags[100:]

    def _deliver_artifacts(self, op: Mapping[str, Any]) -> None:
        folder = Path(op["dir"])
        if not folder.is_dir():
            raise UndeliverableError(f"artifact folder {folder} is gone")
        self.client.log_artifacts(self._resolve(op), str(folder))
        shutil.rmtree(folder, ignore_errors=True)

    def _deliver_finalize(self, op: Mapping[str, Any]) -> None:
        """The parent run's end: its state, counts and best trial, read from the trial runs."""
        parent = self._resolve(op)
        match = {"search_id": op["search_id"], "role": ROLE_TRIAL}
        runs = search_runs(self.client, op["experiment_id"], match)
        metric, mode = op["metric"], op["mode"]
        best = best_run(runs, f"best/{metric}", mode) or best_run(runs, metric, mode)
        tags = {
            "state": op["state"],
            "trials": str(len(runs)),
            "trials_pruned": str(sum(r.data.tags.get("pruned") == "true" for r in runs)),
            "trials_errored": str(sum(r.data.tags.get("state") == "errored" for r in runs)),
        }
        if best is not None:
            tags["best_run_id"] = best.info.run_id
        for key, value in tags.items():
            self.client.set_tag(parent, key, value)
        self.client.set_terminated(parent, status=op["status"])

    # -- files ---------------------------------------------------------------------------------
    def _journal_ops(self) -> list[dict[str, Any]]:
        path = self.folder / "journal.jsonl"
        if not path.exists():
            return []
        ops = []
        for line in path.read_text().splitlines():
            try:
                ops.append(json.loads(line))
            except json.JSONDecodeError:  # the last line of a driver killed mid-write
                log.warning("skipping a torn line in %s", path)
        return ops

    def _compact(self, only_if_larger_than: int = 0) -> None:
        """Everything journaled is delivered: start an empty journal (called with the lock held)."""
        path = self.folder / "journal.jsonl"
        if self._journal.closed or path.stat().st_size < only_if_larger_than:
            return
        self._journal.truncate(0)
        self._journal.seek(0)

    def _read_json(self, name: str, default: Any) -> Any:
        try:
            return json.loads((self.folder / name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return default

    def _write_json(self, name: str, value: Any) -> None:
        path = self.folder / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
