"""Run and resume a search: Ray Tune + ASHA + Optuna/grid over ``edgeseg.engine.fit`` trials.

``run_search`` is the driver of one search: it validates the spec, records it in the search's
storage folder, prepares data, backbone and feature caches once (trials then only read caches),
starts or joins Ray, and calls ``Tuner.fit()`` with the MLflow tracker, the stop-request stopper
and the progress table. ``resume_search`` restores the Tuner from its storage folder (searcher and
scheduler state included) with ``resume_errored=True``: unfinished trials continue from their
checkpoints and errored ones are retried.

Both hold the search's :class:`~edgeseg.search.control.DriverLease` for their whole life (one live
driver per search; ``run --fresh`` is refused while another driver lives), and both treat SIGTERM
(``ray job stop``, ``docker compose down``, Kubernetes) exactly like SIGINT: Tune saves the
experiment state and returns, the outcome is ``stopped``, and ``search resume`` continues. A search
whose trials all ended but some errored is ``incomplete``, never ``finished``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg import paths
from edgeseg.engine.prepare import prepare
from edgeseg.search import control
from edgeseg.search.adaptive import Planner
from edgeseg.search.disk import saved_trials
from edgeseg.search.driver_hooks import DriverControl, StopRequests
from edgeseg.search.mlflow_runs import client_for, ensure_experiment, require_store_driver, search_runs
from edgeseg.search.names import ROLE_SEARCH, ROLE_TRIAL
from edgeseg.search.progress import ProgressTable
from edgeseg.search.space import param_space, search_algorithm
from edgeseg.search.spec import (
    SearchSpec,
    SpecError,
    expected_trials,
    grid_variants,
    load_spec,
    trial_config,
    trial_overrides,
)
from edgeseg.search.storage import StorageFolder, control_folder, experiment_uri
from edgeseg.search.tracking import MlflowTracker
from edgeseg.search.trainable import (
    TRIAL_DRIVER_RESOURCE,
    driver_resources_needed,
    failed_trials_folder,
    make_trainable,
)
from edgeseg.secrets import protect_ray_auth_token

DEFAULT_LOG: Callable[[str], Any] = print


class SearchExistsError(SpecError):
    """A search of that name already has state in its storage folder."""


@dataclass(frozen=True)
class SearchOutcome:
    name: str
    search_id: str
    state: str  # finished | incomplete (every trial ended, some errored) | stopped (resumable)
    experiment_path: str
    trials: int
    expected_trials: int
    terminated: int
    errored: int
    pruned: int
    epochs_trained: int
    wall_s: float
    best_run_id: str


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def prepare_once(spec: SearchSpec, log: Callable[[str], Any] = DEFAULT_LOG) -> int:
    """Build data, backbone and feature caches for every distinct feature set the grid can need.

    Continuous axes cannot be enumerated; values they reach that need another cache build it in
    the first trial that uses it (the cache is file-locked), never per trial.
    """

    candidates: list[dict[str, Any]] = [{}]
    if spec.searcher.kind == "grid":
        candidates = [trial_overrides({"overrides": v}) for v in grid_variants(spec)[0]]
    else:
        for axis in spec.space:
            if axis.kind in ("choice", "grid"):
                for value in axis.values:
                    candidates.append(dict(value) if axis.is_bundle else {axis.name: value})
    seen: set[str] = set()
    for overrides in candidates:
        try:
            config = trial_config(spec, overrides)
        except Exception:  # a value that is invalid alone (optuna/random combos are checked per trial)
            continue
        key = repr((config.to_dict()["data"], config.to_dict()["backbone"], config.model.layers, config.model.rgb_layers,
                    config.model.mask_size, config.loss.class_weights))  # fmt: skip
        if key in seen:
            continue
        seen.add(key)
        prepare(config, log=log)
    return len(seen)


def _init_ray(spec: SearchSpec, address: str | None, num_cpus: int | None) -> None:
    import ray

    needed = driver_resources_needed(spec)
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": True}
        if address:
            kwargs["address"] = address
        else:
            # "local": a new Ray for this search, never a stray cluster found via /tmp/ray/ray_current_cluster.
            kwargs["address"] = "local"
            kwargs["num_cpus"] = num_cpus
            if needed:
                kwargs["resources"] = {TRIAL_DRIVER_RESOURCE: needed}
        ray.init(**kwargs)
        protect_ray_auth_token()  # Ray writes its token file world-readable
    if needed and ray.cluster_resources().get(TRIAL_DRIVER_RESOURCE, 0) < 1:
        raise SpecError(
            f"search spec {spec.source}: resources.executor train needs the custom Ray resource "
            f"{TRIAL_DRIVER_RESOURCE!r} (one unit per concurrent trial driver); start the cluster's nodes with "
            f"--resources='{{\"{TRIAL_DRIVER_RESOURCE}\": {needed}}}', or use executor: function"
        )
    from edgeseg.search.shared_storage import check_shared_storage

    check_shared_storage(str(spec.storage))  # more than one node: a local storage folder must be shared


def _callbacks(spec: SearchSpec, search_id: str, progress: bool, extra: list[Any] | None = None) -> list[Any]:

    stop_dir = control_folder(str(spec.storage), spec.name).child("stop").uri
    callbacks: list[Any] = [MlflowTracker(spec, search_id, stop_dir), DriverControl(spec)]
    if progress:
        callbacks.append(ProgressTable(spec.metric, spec.mode, spec.max_epochs))
    return callbacks + list(extra or [])


def build_tuner(
    spec: SearchSpec, search_id: str, progress: bool = True, callbacks: list[Any] | None = None,
    planner: Planner | None = None, trainable: Any = None,
) -> Any:  # fmt: skip
    """The ``tune.Tuner`` of a resolved spec (not started); ``trainable``: see :func:`run_search`."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if spec.scheduler.kind == "asha":
        scheduler = ASHAScheduler(
            time_attr="epoch",  # reported by the engine; Tune's training_iteration restarts after a restore
            max_t=spec.max_epochs,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    searcher = search_algorithm(spec, planner)
    adaptive = bool(spec.design.max_repeats)
    stop_dir = control_folder(str(spec.storage), spec.name).child("stop").uri
    return tune.Tuner(
        make_trainable(spec) if trainable is None else trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            search_alg=searcher,
            scheduler=scheduler,
            # adaptive seeds end the search themselves (Searcher.FINISHED); this is only their upper bound
            num_samples=searcher.max_trials if adaptive else spec.num_samples,
            # The grid/random and Optuna generators take the limit themselves (see space.search_algorithm).
            max_concurrent_trials=spec.max_concurrent_trials if adaptive else None,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
            # A one-process trial's actor (torch and edgeseg imported, caches open) takes the next
            # trial: seconds of start-up per trial saved. A Train driver starts a worker group anyway.
            reuse_actors=spec.resources.executor == "function",
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=str(spec.storage),
            callbacks=_callbacks(spec, search_id, progress, callbacks),
            stop=StopRequests(stop_dir),
            # No Tune checkpoints: both executors keep theirs in storage with their own manifest.
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            verbose=0,  # the ProgressTable callback prints the table
        ),
    )


def run_search(
    spec: SearchSpec | str | Path,
    *,
    fresh: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    callbacks: list[Any] | None = None,
    log: Callable[[str], Any] = DEFAULT_LOG,
    planner: Planner | None = None,
    trainable: Any = None,
) -> SearchOutcome:
    """Run a search from its spec (a path or a loaded spec) to the end, or until it is stopped.

    ``callbacks``: extra ``tune.Callback`` objects (picklable; they are restored with the search).
    ``planner``: what adaptive seeds (``design.max_repeats``) decide with; the CLI passes
    ``edgeseg.report.adaptive.plan_next_round``.
    ``trainable``: the Tune trainable, with its resources, in place of ``make_trainable(spec)``
    (the default). Only for benchmarks of the driver (``benchmarks/bench_goals.py`` runs trials that
    report every epoch at once); ``resume_search`` always resumes with ``make_trainable(spec)``.
    """
    if not isinstance(spec, SearchSpec):
        spec = load_spec(spec)
    spec = spec.resolved()
    require_store_driver(str(spec.mlflow.tracking_uri))  # before anything is written or started
    # The lease first: a live driver must not see its folder deleted by --fresh.
    with SigtermAsInterrupt() as sigterm, control.DriverLease.for_spec(spec) as lease:
        experiment = StorageFolder(experiment_uri(str(spec.storage), spec.name))
        if experiment.exists():
            if not fresh:
                raise SearchExistsError(
                    f"search {spec.name!r} already exists at {experiment.uri}; `edgeseg search resume {spec.name}` "
                    "continues it, --fresh starts over (its MLflow runs stay, under the old search id)"
                )
            experiment.delete_tree()
        search_id = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid() % 10000:04d}"
        record = control.write_record(spec, search_id)
        lease.start("preparing")
        started = time.perf_counter()
        with paths.using_home(spec.home):
            prepared = prepare_once(spec, log)
            log(
                f"search {spec.name} ({search_id}): prepared {prepared} feature set(s) in {time.perf_counter() - started:.1f} s"
            )
            _init_ray(spec, address, num_cpus)
            sigterm.install()  # ray.init put its own SIGTERM handler (a hard exit) in place of ours
            # The experiment's id goes into the record (status and fetch-best find it after a rename).
            # Created here, when the tracker would create it: a fresh SQLite store must not be
            # initialised while another process initialises it too (Alembic fails on that race).
            client = client_for(str(spec.mlflow.tracking_uri))
            experiment_id = ensure_experiment(client, spec.experiment_name, spec.mlflow.artifact_location)
            control.write_record(spec, search_id, experiment_id, created=record.created)
            tuner = build_tuner(spec, search_id, progress, callbacks, planner, trainable)
            return _fit(tuner, spec, search_id, started, log, lease)


def resume_search(
    name: str,
    *,
    storage: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    log: Callable[[str], Any] = DEFAULT_LOG,
    retry_failed: bool = False,
) -> SearchOutcome:
    """Continue a stopped or crashed search: unfinished trials resume, errored ones are retried
    (a trial that failed deterministically fails again at once, unless ``retry_failed``).

    Refused (:class:`~edgeseg.search.control.DriverRunningError`) while another driver of the search lives.
    """
    from ray import tune

    record = control.read_record(name, storage)
    spec = record.spec
    require_store_driver(str(spec.mlflow.tracking_uri))
    path = experiment_uri(str(spec.storage), name)
    with SigtermAsInterrupt() as sigterm, control.DriverLease.for_spec(spec) as lease:
        if not tune.Tuner.can_restore(path):
            raise SpecError(
                f"search {name!r} has no Tune state to resume at {path} (it never started its trials)"
            )
        control.clear_stop_all(spec)
        if retry_failed:
            failed_trials_folder(spec).delete_tree()
        lease.start("preparing")
        started = time.perf_counter()
        with paths.using_home(spec.home):
            prepare_once(spec, log)
            _init_ray(spec, address, num_cpus)
            sigterm.install()
            tuner = tune.Tuner.restore(
                path, trainable=make_trainable(spec), resume_unfinished=True, resume_errored=True
            )
            log(f"resuming search {name} ({record.search_id}) from {path}")
            return _fit(tuner, spec, record.search_id, started, log, lease)


class SigtermAsInterrupt:
    """SIGTERM stops the driver the way SIGINT does (``ray job stop``, ``docker compose down`` and
    Kubernetes send SIGTERM): during ``Tuner.fit()`` Tune's own SIGINT handler saves the experiment
    state and returns, so the search can be resumed; elsewhere it is a KeyboardInterrupt. A second
    signal is a hard stop, as a second Ctrl+C is. The previous handler comes back on exit (in the
    main thread only: Python delivers signals there).
    """

    def __enter__(self) -> SigtermAsInterrupt:
        self.main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if self.main else None
        self.previous = signal.SIG_DFL if previous is None else previous  # None: not set from Python
        self.install()
        return self

    def install(self) -> None:
        if self.main:
            signal.signal(signal.SIGTERM, self._handle)

    @staticmethod
    def _handle(signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):  # SIGINT ignored (a background job) or default: stop all the same
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    def __exit__(self, *exc: object) -> None:
        if self.main:
            signal.signal(signal.SIGTERM, self.previous)


def _fit(
    tuner: Any,
    spec: SearchSpec,
    search_id: str,
    started: float,
    log: Callable[[str], Any],
    lease: control.DriverLease,
) -> SearchOutcome:

    lease.set_state("running")
    tuner.fit()  # an exception or a second interrupt leaves through the lease: driver state failed/stopped
    control.clear_stop_all(spec)
    path = experiment_uri(str(spec.storage), spec.name)
    trials = saved_trials(path)
    terminated = sum(1 for state, _ in trials.values() if state == "TERMINATED")
    errored = sum(1 for state, _ in trials.values() if state == "ERROR")
    expected = expected_trials(spec)
    ended = len(trials) >= expected and terminated + errored == len(trials)
    # Errored trials are work not done: `search resume` retries them, so the search is not finished.
    state = ("incomplete" if errored else "finished") if ended else "stopped"
    lease.set_state(state)

    client = client_for(str(spec.mlflow.tracking_uri))
    experiment = client.get_experiment_by_name(spec.experiment_name)
    runs = search_runs(client, experiment.experiment_id, {"search_id": search_id, "role": ROLE_TRIAL})
    parent = search_runs(client, experiment.experiment_id, {"search_id": search_id, "role": ROLE_SEARCH})
    pruned = sum(1 for r in runs if r.data.tags.get("pruned") == "true")
    epochs = sum(int(r.data.tags.get("last_epoch", 0) or 0) for r in runs)
    best_run_id = parent[0].data.tags.get("best_run_id", "") if parent else ""
    outcome = SearchOutcome(
        spec.name, search_id, state, path, len(trials), expected, terminated, errored, pruned, epochs,
        time.perf_counter() - started, best_run_id,
    )  # fmt: skip
    advice = {
        "finished": "",
        "incomplete": f"; `edgeseg search resume {spec.name}` retries the errored trials",
        "stopped": f"; resume with `edgeseg search resume {spec.name}`",
    }[state]
    log(
        f"search {spec.name} {state}: {len(trials)}/{expected} trials, {pruned} pruned, {errored} errored, "
        f"{epochs} epochs in {outcome.wall_s:.1f} s{advice}"
    )
    return outcome
