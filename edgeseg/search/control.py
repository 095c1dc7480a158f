"""Control of a running search from another shell or host: status, stop a trial, stop the search.

Everything goes through the search's storage folder (local, NFS or s3://), so it works wherever
the driver runs (a local ``search run`` or a job submitted to a cluster)::

    <storage>/<name>/                 Tune's experiment folder (experiment_state, tuner.pkl, trials)
    <storage>/<name>/edgeseg/search.json   search id, MLflow experiment id + the resolved spec
    <storage>/<name>/edgeseg/driver.json   driver pid, host, since, heartbeat, state
    <storage>/<name>/edgeseg/stop/<trial>  stop request for one trial (read by a tune.Stopper)
    <storage>/<name>/edgeseg/stop/ALL      stop request for the whole search
    <storage>/.edgeseg-drivers/<name>.lock the driver lease (outside the search folder, so that
                                           ``run --fresh`` never deletes the lock it holds)

One live driver per search (:class:`DriverLease`). On a local or NFS path the lease is an exclusive
``fcntl.flock`` on the lock file, taken atomically and dropped by the kernel when the driver dies,
however it dies; whoever finds it held is refused with the holder's pid, host and start time. On
an object store (s3://) pyarrow offers no atomic create, so the lease is a heartbeat file: written,
read back after a second, renewed every ``HEARTBEAT_S`` by a thread; it is best effort (two drivers
starting within that second on different hosts can both pass). Without a lock to ask (object
stores, records of drivers from before the lease), a live pid on the same host is trusted whatever
the age of its heartbeat; a heartbeat older than ``STALE_AFTER_S`` marks a driver gone only on
another host. The heartbeat thread runs from the moment the driver record is written until the
driver exits, so caches being prepared or exports being waited for still count.

Stopping one trial is a manual prune: the :class:`StopRequests` stopper ends it at its next report;
it needs only the storage folder, never MLflow. Stopping the whole search is Tune's clean interrupt:
the driver sees the request and sends itself SIGINT (SIGTERM does the same, see ``tuner.py``), Tune
saves the experiment state and returns, and ``search resume`` continues later.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from edgeseg.search.disk import DiskUse, format_disk_use, saved_trials, search_disk_use
from edgeseg.search.names import ROLE_SEARCH, ROLE_TRIAL
from edgeseg.search.scratch import pid_alive
from edgeseg.search.spec import SearchSpec, SpecError, expected_trials, spec_from_mapping
from edgeseg.search.storage import STOP_ALL, StorageFolder, control_folder, default_storage, experiment_uri
from edgeseg.secrets import redact_uri, scrub, secret_values

log = logging.getLogger("edgeseg.search.control")

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0
LEASE_SETTLE_S = 1.0  # object stores: how long a written lease must survive before it counts
ACTIVE_STATES = ("preparing", "running")
TERMINAL_TRIAL_STATES = ("TERMINATED", "ERROR")
GONE = "not running (driver gone; resume it)"


class SearchNotFoundError(SpecError):
    """No search of that name under the storage folder."""


class DriverRunningError(SpecError):
    """Another driver of the search is alive (its pid, host and start time are in the message)."""


# ----------------------------------------------------------------------------------------------
# The search record (search.json).
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchRecord:
    search_id: str
    spec: SearchSpec
    created: float
    experiment_id: str = ""  # the MLflow experiment's id ("" in records written before it was kept)


def write_record(
    spec: SearchSpec, search_id: str, experiment_id: str = "", created: float | None = None
) -> SearchRecord:
    record = SearchRecord(search_id, spec, time.time() if created is None else created, experiment_id)
    body = {
        "search_id": search_id,
        "created": record.created,
        "experiment_id": experiment_id,
        "spec": spec.to_dict(),
    }
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
    return SearchRecord(
        str(body["search_id"]), spec, float(body.get("created", 0.0)), str(body.get("experiment_id") or "")
    )


# ----------------------------------------------------------------------------------------------
# One live driver per search: the lease and the driver record (driver.json).
# ----------------------------------------------------------------------------------------------

LOCK_FOLDER = ".edgeseg-drivers"


@dataclass(frozen=True)
class DriverHolder:
    """Who drives a search: process, host, when it took the lease, its latest heartbeat."""

    pid: int
    host: str
    since: float
    heartbeat: float

    @classmethod
    def from_mapping(cls, body: Any) -> DriverHolder | None:
        try:
            heartbeat = float(body.get("heartbeat", 0.0))
            return cls(int(body["pid"]), str(body["host"]), float(body.get("since", heartbeat)), heartbeat)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None

    def presumed_alive(self, now: float | None = None) -> bool:
        """On this host the pid decides: a late heartbeat (a long cache build, a slow export) is not
        death. On another host only the heartbeat can tell."""
        if self.host == socket.gethostname():
            return pid_alive(self.pid)
        return (time.time() if now is None else now) - self.heartbeat <= STALE_AFTER_S

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.since))
        return f"pid {self.pid} on host {self.host}, since {since} ({time.time() - self.since:.0f} s ago)"


def _lock_folder(storage: str) -> StorageFolder:
    return StorageFolder(f"{storage.rstrip('/')}/{LOCK_FOLDER}")


def _is_local(folder: StorageFolder) -> bool:
    import pyarrow.fs as pafs

    return isinstance(folder.fs, pafs.LocalFileSystem)


def _busy(exc: OSError) -> bool:
    return exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


def _parse(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError:  # a lock file the holder has not written yet
        return {}
    return body if isinstance(body, dict) else {}


def _recorded_driver(storage: str, name: str) -> dict[str, Any]:
    folder = control_folder(storage, name)
    return _parse(folder.read_text("driver.json")) if folder.exists("driver.json") else {}


class DriverLease:
    """The right to drive one search; at most one process holds it (see the module docstring).

    ``with DriverLease(storage, name) as lease:`` takes it or raises :class:`DriverRunningError`;
    ``lease.start(state)`` writes driver.json and starts the heartbeat thread; ``set_state`` records
    the driver's progress; leaving the block stops the heartbeat, records ``failed`` (or ``stopped``
    after an interrupt) if the driver left without a final state, and releases the lease.
    """

    def __init__(self, storage: str, name: str) -> None:
        self.storage, self.name = storage, name
        self.locks = _lock_folder(storage)
        self.lock_name = f"{name}.lock"
        self.local = _is_local(self.locks)
        now = time.time()
        self.holder = DriverHolder(os.getpid(), socket.gethostname(), now, now)
        self.token = uuid.uuid4().hex
        self.state = ""
        self._fd: int | None = None
        self._held = False
        self._writing = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_spec(cls, spec: SearchSpec) -> DriverLease:
        return cls(str(spec.storage), spec.name)

    @property
    def lock_path(self) -> str:
        return f"{self.locks.path}/{self.lock_name}"

    # -- taking and giving back ----------------------------------------------------------------
    def acquire(self) -> DriverLease:
        if self.local:
            self._lock()
        else:
            self._lease()
        self._held = True
        return self

    def _lock(self) -> None:
        import fcntl

        os.makedirs(self.locks.path, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(3):  # a `search status` probe holds it for microseconds
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if not _busy(exc) or attempt == 2:
                    body = _parse(os.pread(fd, 4096, 0).decode(errors="replace"))
                    os.close(fd)
                    if not _busy(exc):
                        raise
                    raise self._refusal(DriverHolder.from_mapping(body)) from None
                time.sleep(0.2)
        # the holder's identity, written in place: replacing the file would replace the locked inode
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._body()).encode(), 0)
        self._fd = fd

    def _lease(self) -> None:
        current = self._read_lease()
        if current and (holder := DriverHolder.from_mapping(current)) and holder.presumed_alive():
            raise self._refusal(holder)
        self.locks.write_text(self.lock_name, json.dumps(self._body()))
        time.sleep(LEASE_SETTLE_S)  # a driver that wrote after us, within this window, wins instead
        current = self._read_lease()
        if current.get("token") != self.token:
            raise self._refusal(DriverHolder.from_mapping(current))

    def _read_lease(self) -> dict[str, Any]:
        return _parse(self.locks.read_text(self.lock_name)) if self.locks.exists(self.lock_name) else {}

    def _refusal(self, holder: DriverHolder | None) -> DriverRunningError:
        if holder is None:  # the lock is held but its holder has not written itself down yet
            holder = DriverHolder.from_mapping(_recorded_driver(self.storage, self.name))
        who = holder.describe() if holder else "a process that has not recorded itself yet"
        return DriverRunningError(
            f"search {self.name!r} already has a live driver: {who}; wait for it to end or stop it with "
            f"`edgeseg search stop {self.name}` (lock: {self.locks.uri}/{self.lock_name})"
        )

    def release(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * HEARTBEAT_S)
        if not self._held:
            return
        self._held = False
        if self._fd is not None:
            import fcntl

            # The lock file stays: unlinking it would let a waiter lock an inode nobody else sees.
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        elif self._read_lease().get("token") == self.token:
            self.locks.delete(self.lock_name)

    def __enter__(self) -> DriverLease:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            self._stopping.set()
            if self._thread is not None:
                self._thread.join(timeout=2 * HEARTBEAT_S)
            if self.state in ACTIVE_STATES:  # left without a final state: an error or an interrupt
                self.set_state("stopped" if kind is KeyboardInterrupt else "failed")
        finally:
            self.release()

    # -- the driver record and its heartbeat --------------------------------------------------
    def _body(self) -> dict[str, Any]:
        holder = self.holder
        return {"pid": holder.pid, "host": holder.host, "since": holder.since, "heartbeat": time.time(),
                "token": self.token}  # fmt: skip

    def start(self, state: str) -> None:
        """Write driver.json and keep its heartbeat (and an object-store lease) fresh until exit."""
        self.set_state(state)
        self._thread = threading.Thread(target=self._beat, name="edgeseg-driver-heartbeat", daemon=True)
        self._thread.start()

    def set_state(self, state: str) -> None:
        self.state = state
        self._write()

    def _write(self) -> None:
        with self._writing:  # the heartbeat thread and the driver share driver.json's temporary file
            body = {**self._body(), "state": self.state}
            del body["token"]
            control_folder(self.storage, self.name).write_text("driver.json", json.dumps(body))
            if not self.local and self._held:
                current = self._read_lease()
                if current.get("token") not in (None, self.token):
                    log.error("search %s: another driver took over the lease: %s", self.name, current)
                    return
                self.locks.write_text(self.lock_name, json.dumps(self._body()))

    def _beat(self) -> None:
        while not self._stopping.wait(HEARTBEAT_S):
            try:
                self._write()
            except Exception:  # a storage hiccup; the next beat tries again
                log.warning("search %s: driver heartbeat failed", self.name, exc_info=True)


def live_driver(storage: str, name: str) -> DriverHolder | None:
    """The search's live driver, or None. Where there is a lock, the lock decides."""
    locks = _lock_folder(storage)
    lock_name = f"{name}.lock"
    if _is_local(locks):
        path = f"{locks.path}/{lock_name}"
        if os.path.exists(path):
            return _probe_lock(path, storage, name)
    elif locks.exists(lock_name):
        holder = DriverHolder.from_mapping(_parse(locks.read_text(lock_name)))
        return holder if holder is not None and holder.presumed_alive() else None
    # no lease file: a driver from before leases existed, judged by its record
    body = _recorded_driver(storage, name)
    holder = DriverHolder.from_mapping(body)
    if body.get("state") in ACTIVE_STATES and holder is not None and holder.presumed_alive():
        return holder
    return None


def _probe_lock(path: str, storage: str, name: str) -> DriverHolder | None:
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if not _busy(exc):
                raise
            body = _parse(os.pread(fd, 4096, 0).decode(errors="replace")) or _recorded_driver(storage, name)
            return DriverHolder.from_mapping(body) or DriverHolder(0, "unknown", 0.0, 0.0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def driver_state(name: str, storage: str) -> dict[str, Any]:
    """driver.json, with ``state`` one of preparing, running, finished, incomplete, stopped, failed,
    ``not started`` or ``not running (driver gone; resume it)`` when its driver died unannounced."""
    body = _recorded_driver(storage, name)
    holder = live_driver(storage, name)
    if holder is not None:
        if (body.get("pid"), body.get("host")) != (holder.pid, holder.host):
            # its record is not written yet (or ``run --fresh`` is replacing the folder)
            body = {"pid": holder.pid, "host": holder.host, "since": holder.since, "state": "preparing"}
        return body
    if not body:
        return {"state": "not started"}
    if body.get("state") in ACTIVE_STATES:
        body["state"] = GONE
    return body


# ----------------------------------------------------------------------------------------------
# Stop requests.
# ----------------------------------------------------------------------------------------------


def __getattr__(name: str) -> Any:
    """``StopRequests`` and ``DriverControl`` live in ``driver_hooks`` (they need Ray Tune, a second
    of imports that ``search status`` and ``stop`` do without); Tune states saved before they moved
    pickled them under this module's name, so they still resolve here."""
    if name in ("StopRequests", "DriverControl"):
        from edgeseg.search import driver_hooks

        return getattr(driver_hooks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def trial_states(storage: str, name: str) -> dict[str, str]:
    """Trial id -> Tune status, from the storage folder alone (no MLflow): the saved experiment
    state, plus trials that started since it was saved (their folders exist; status UNKNOWN)."""
    experiment = StorageFolder(experiment_uri(storage, name))
    states = {trial_id: state for trial_id, (state, _) in saved_trials(experiment.uri).items()}
    runs = "trial_runs"  # the function executor's checkpoints, next to Tune's trial_<id> folders
    seen = [n.removeprefix("trial_") for n in experiment.list() if n.startswith("trial_") and n != runs]
    seen += experiment.child(runs).list()
    seen += [n.removeprefix("train-") for n in experiment.child("train_runs").list()]  # Ray Train runs
    return {**dict.fromkeys(seen, "UNKNOWN"), **states}


def request_stop(name: str, trial_id: str | None = None, storage: str | None = None) -> str:
    """Ask a running search to stop one trial, or the whole search (resumable). Returns a message.

    Needs only the search's storage folder: no MLflow, so it works where the tracking server is
    out of reach.
    """
    storage = storage or default_storage()
    record = read_record(name, storage)
    spec_storage = str(record.spec.storage)
    driver = driver_state(name, spec_storage)
    if driver.get("state") not in ACTIVE_STATES:
        raise SpecError(
            f"search {name!r} is not running (driver state: {driver.get('state')}); nothing to stop"
        )
    stop = control_folder(spec_storage, name).child("stop")
    if trial_id is None:
        stop.write_text(STOP_ALL, str(time.time()))
        return f"asked search {name!r} to stop; it saves its state and can be resumed with `edgeseg search resume {name}`"
    states = trial_states(spec_storage, name)
    if trial_id not in states:
        raise SpecError(
            f"search {name!r} has no trial {trial_id!r}; trials: {', '.join(sorted(states)) or 'none yet'}"
        )
    if states[trial_id] in TERMINAL_TRIAL_STATES:
        raise SpecError(f"trial {trial_id!r} of search {name!r} has already ended ({states[trial_id]})")
    stop.write_text(trial_id, str(time.time()))
    return f"asked trial {trial_id} of search {name!r} to stop at its next epoch report"


def clear_stop_all(spec: SearchSpec) -> None:
    control_folder(str(spec.storage), spec.name).child("stop").delete(STOP_ALL)


# ----------------------------------------------------------------------------------------------
# Where a search's MLflow runs are.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackingLocation:
    tracking_uri: str
    experiment_id: str  # "" when the experiment does not exist (yet)
    experiment_name: str
    search_id: str


def recorded_experiment(client: Any, record: SearchRecord) -> Any:
    """The search's MLflow experiment: by the recorded id (survives a rename), else by the recorded name."""
    from mlflow.exceptions import MlflowException

    if record.experiment_id:
        try:
            return client.get_experiment(record.experiment_id)
        except MlflowException:  # another store than the one the driver wrote to
            pass
    return client.get_experiment_by_name(record.spec.experiment_name)


def locate_tracking(
    name: str, storage: str | None = None, tracking_uri: str | None = None
) -> TrackingLocation:
    """Tracking URI, experiment and search id of a search: from its storage record (the URI the driver
    used unless ``tracking_uri`` is given), or, without a record, from the newest parent run tagged
    ``search_name = name`` in any experiment of ``tracking_uri`` (default: this machine's)."""
    from edgeseg.search.mlflow_runs import client_for, quote

    try:
        record = read_record(name, storage)
    except SearchNotFoundError:
        if storage is not None:
            raise
        record = None
    if record is not None:
        uri = str(tracking_uri or record.spec.mlflow.tracking_uri)
        experiment = recorded_experiment(client_for(uri), record)
        return TrackingLocation(uri, str(experiment.experiment_id) if experiment else "",
                                experiment.name if experiment else record.spec.experiment_name,
                                record.search_id)  # fmt: skip
    uri = str(tracking_uri or SearchSpec(name=name, preset="baseline").resolved().mlflow.tracking_uri)
    client = client_for(uri)
    experiments = {str(e.experiment_id): e.name for e in _all_experiments(client)}
    parents = []
    if experiments:
        parents = client.search_runs(
            list(experiments),
            filter_string=f"tags.search_name = {quote(name)} and tags.role = {quote(ROLE_SEARCH)}",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not parents:
        raise SearchNotFoundError(
            f"no search named {name!r}: no storage record and no MLflow run tagged search_name={name!r} "
            f"at {redact_uri(uri)}"
        )
    parent = parents[0]
    experiment_id = str(parent.info.experiment_id)
    return TrackingLocation(uri, experiment_id, experiments[experiment_id], parent.data.tags["search_id"])


def _all_experiments(client: Any) -> list[Any]:
    found: list[Any] = []
    token = None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


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
    # finished | incomplete: N errored | the driver's state while it runs or after it stopped
    state: str = ""
    errored: int = 0
    tracking_uri: str = ""  # the one read (a password in it masked)
    tracking_error: str = ""  # MLflow could not be read: the table shows Tune's side only
    disk: DiskUse | None = None  # what the search holds in its storage folder
    disk_error: str = ""  # the storage folder could not be listed


def search_state(driver: str, trials: list[TrialRow], expected: int) -> str:
    """``finished`` only when every expected trial ended without an error; errored trials leave the
    search ``incomplete: N errored`` (``search resume`` retries them)."""
    errored = sum(row.state == "ERROR" for row in trials)
    ended = len(trials) >= expected and all(row.state in TERMINAL_TRIAL_STATES for row in trials)
    if driver in ACTIVE_STATES or not ended:
        return f"{driver} ({errored} errored)" if errored else driver
    return f"incomplete: {errored} errored" if errored else "finished"


def search_status(name: str, storage: str | None = None, tracking_uri: str | None = None) -> SearchStatus:
    """Trials from Tune's experiment state, joined with their MLflow runs.

    ``tracking_uri`` replaces the one the driver recorded (which may not resolve from here, e.g.
    ``http://mlflow:5000`` inside a compose network). When MLflow cannot be read, the status still
    shows Tune's side and says why in ``tracking_error``.
    """
    storage = storage or default_storage()
    record = read_record(name, storage)
    spec = record.spec
    known = saved_trials(experiment_uri(str(spec.storage), name))
    uri = str(tracking_uri or spec.mlflow.tracking_uri)
    tracking_error = ""
    try:
        runs, best_id = _tracked_runs(uri, record)
    except Exception as exc:  # unreachable or unreadable store: still show the trials
        runs, best_id = {}, ""
        first = scrub((str(exc).strip().splitlines() or [""])[0][:300], secret_values(uri))
        tracking_error = f"MLflow at {redact_uri(uri)} could not be read ({type(exc).__name__}: {first}); pass --tracking-uri"
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
    driver = str(driver_state(name, str(spec.storage)).get("state", ""))
    expected = expected_trials(spec)
    disk, disk_error = None, ""
    try:
        disk = search_disk_use(str(spec.storage), name)
    except OSError as exc:  # storage unreachable from here: the rest of the status still shows
        disk_error = f"{type(exc).__name__}: {scrub(str(exc)[:300], secret_values(str(spec.storage)))}"
    return SearchStatus(name, record.search_id, driver, spec.metric, expected, rows, best_id,
                        search_state(driver, rows, expected), sum(r.state == "ERROR" for r in rows),
                        redact_uri(uri), tracking_error, disk, disk_error)  # fmt: skip


def _tracked_runs(uri: str, record: SearchRecord) -> tuple[dict[str, Any], str]:
    """The search's trial runs by Ray trial id, and the best run's id."""
    from edgeseg.search.mlflow_runs import best_run, client_for, search_runs

    spec = record.spec
    client = client_for(uri)
    experiment = recorded_experiment(client, record)
    if experiment is None:
        return {}, ""
    experiment_id = experiment.experiment_id
    found = search_runs(client, experiment_id, {"search_id": record.search_id, "role": ROLE_TRIAL})
    parent = search_runs(client, experiment_id, {"search_id": record.search_id, "role": ROLE_SEARCH})
    best = best_run(found, f"best/{spec.metric}", spec.mode)
    best_id = (
        best.info.run_id
        if best is not None
        else (parent[0].data.tags.get("best_run_id", "") if parent else "")
    )
    return {r.data.tags.get("ray_trial_id", ""): r for r in found}, str(best_id)


def format_status(status: SearchStatus) -> str:
    """A plain-text table (the ``search status`` output)."""
    head = (
        f"search {status.name} ({status.search_id})  {status.state}  driver: {status.driver}  "
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
    if status.disk is not None:
        lines.append(format_disk_use(status.disk))
    if status.disk_error:
        lines.append(f"warning: disk use unknown ({status.disk_error})")
    if status.tracking_error:
        lines.append(f"warning: {status.tracking_error}")
    return "\n".join(lines)
