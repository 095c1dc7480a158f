"""MLflow tracking of a search, written only from the Ray driver.

Layout (ARCHITECTURE.md, "MLflow layout"): one experiment per search name, created with an explicit
artifact location; one parent run per search (``tags.role = search``); one child run per Tune trial
(``tags.role = trial``), found or created by ``tags.search_id`` + ``tags.ray_trial_id``. Child runs
carry the flattened resolved config as params, the config hash and every feature flag as tags, and
each epoch's metrics with ``step = epoch``; ``params_count`` and ``gflops`` are logged once (step 0).

Resume safety is the point of writing this instead of using ``MLflowLoggerCallback`` (which keeps
trial -> run in memory and duplicates runs after ``Tuner.restore``): runs are looked up by tag every
time the driver starts, and ``tags.last_epoch`` (written in the same batch as the metrics) makes a
re-reported epoch a no-op. When a trial ends (finished, pruned or errored) its best checkpoint is
exported to ONNX in a background thread, checked in ONNX Runtime, and logged as
``onnx/model.onnx`` + ``onnx/model.json`` + ``config.yaml`` with ``latency_ms``. A trial that ended
while the driver was down is exported on resume.

No MLflow write runs on Tune's event loop: each is journaled on disk and delivered in order by one
background thread (``outbox.py``), so an unreachable tracking server never stalls or ends the search;
the writes wait on disk (``mlflow.flush_timeout_s`` at the end, else the next ``resume``). Reads (re-
attaching a restored trial to its run) fail fast and leave the matching to the outbox.

A NaN, infinite or missing metric value never becomes a trial's best value or best checkpoint. A
trial that announces a deterministic failure (``trainable.FAILED_DETERMINISTICALLY``, reported just
before it raises) gets no Tune retry: Tune retries by count only, so its budget ends here, and its
run is tagged ``error_kind = deterministic`` at once (``retries_exhausted`` for any other error).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from edgeseg.config import ConfigError, ExperimentConfig
from edgeseg.search.budget_watch import METRIC, BudgetWatch
from edgeseg.search.disk import prune_after_export
from edgeseg.search.export_jobs import ExportJob, ExportWorker, latency_metric_name, primary_latency
from edgeseg.search.mlflow_runs import (
    batches,
    client_for,
    ensure_experiment,
    epoch_steps,
    param_value,
    search_runs,
    variant_hash,
)
from edgeseg.search.names import EPOCH_KEYS, EPOCH_PREFIXES, ROLE_SEARCH, ROLE_TRIAL, STATIC_KEYS
from edgeseg.search.outbox import TrackingOutbox, outbox_folder, transient
from edgeseg.search.spec import (
    SearchSpec,
    expected_trials,
    improves,
    is_finite_number,
    is_number,
    trial_config,
    trial_overrides,
)
from edgeseg.search.storage import StorageFolder, checkpoint_uri
from edgeseg.search.trainable import deterministic_failure

log = logging.getLogger("edgeseg.search.tracking")

TERMINAL = ("TERMINATED", "ERROR")
PARENT = "parent"  # the search's parent run in the outbox


# ----------------------------------------------------------------------------------------------
# Small MLflow helpers shared by tracking, control and artifacts.
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# ONNX export of a trial's best checkpoint.
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# The Tune callback.
# ----------------------------------------------------------------------------------------------


@dataclass
class _RunState:
    key: str  # the trial's run in the outbox (``trial:<trial id>``); MLflow's run id may not exist yet
    last_epoch: int
    static_logged: bool
    best_value: float | None
    best_checkpoint: str
    config: dict[str, Any] | None
    max_epochs: int
    # last step logged per metric key: a driver killed inside log_batch can leave the epoch's
    # points written but not the ``last_epoch`` tag, so re-attaching reads the histories themselves
    key_steps: dict[str, int] = field(default_factory=dict)
    failed_deterministically: bool = False
    exported: bool = False  # the run already holds the ONNX (a trial restarted after its export)
    params_missing: bool = False


class MlflowTracker(tune.Callback):
    """Driver-side Tune callback: parent/child MLflow runs, per-epoch metrics, ONNX on trial end.

    Constructed from plain data only (it is pickled into the Tuner's state and restored with it).
    """

    def __init__(self, spec: SearchSpec, search_id: str, stop_requests_dir: str | None = None) -> None:
        self.spec = spec
        self.search_id = search_id
        self.stop_requests_dir = stop_requests_dir
        self._reset()

    def _reset(self) -> None:
        self._client: Any = None
        self._experiment_id = ""
        self._parent_id = ""
        self._runs: dict[str, _RunState] = {}
        self._exporter: ExportWorker | None = None
        self._outbox: TrackingOutbox | None = None
        self._earlier_runs: dict[str | None, Any] | None = None  # trial id -> run, read at setup
        self._swept = False
        self._exported: set[str] = set()
        self._ended: set[str] = set()  # trials whose end this driver has handled
        budget = self.spec.design.effects_budget
        # after a resume it sees the trials that end from then on; the report counts every run
        self._budget = BudgetWatch(budget, self.spec.mode) if budget else None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "search_id": self.search_id, "stop_requests_dir": self.stop_requests_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- lifecycle ---------------------------------------------------------------------------
    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        spec = self.spec
        # Reads on the event loop fail fast when the server is down (the outbox retries the writes);
        # MLflow's default (7 retries with back-off) blocks the whole search for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        self._client = client_for(str(spec.mlflow.tracking_uri))
        self._experiment_id = ensure_experiment(
            self._client, spec.experiment_name, spec.mlflow.artifact_location
        )
        self._parent_id = self._ensure_parent()
        self._outbox = TrackingOutbox(self._client, outbox_folder(spec, self.search_id))
        self._outbox.bind(PARENT, self._parent_id)
        # One query for the whole search instead of one per trial: the runs earlier drivers made.
        match = {"search_id": self.search_id, "role": ROLE_TRIAL}
        self._earlier_runs = {
            r.data.tags.get("ray_trial_id"): r for r in search_runs(self._client, self._experiment_id, match)
        }  # fmt: skip
        if self._outbox.replayed:
            log.warning("delivering %d MLflow writes an earlier driver left in %s", self._outbox.replayed,
                        self._outbox.folder)  # fmt: skip
        self._exporter = ExportWorker()

    @property
    def client(self) -> Any:
        if self._client is None:
            self.setup()
        return self._client

    @property
    def parent_run_id(self) -> str:
        return self._parent_id

    @property
    def outbox(self) -> TrackingOutbox:
        if self._outbox is None:
            self.setup()
        assert self._outbox is not None
        return self._outbox

    def run_id(self, trial_id: str, timeout: float = 60.0) -> str | None:
        """The trial's MLflow run id, once every write so far is delivered (None: not delivered)."""
        self.outbox.flush(timeout)
        return self.outbox.run_id(f"trial:{trial_id}")

    def _put(self, key: str, **body: Any) -> None:
        """One MLflow write of a run, journaled and delivered in the background (``outbox.py``)."""
        self.outbox.put("batch", key, **body)

    def _ensure_parent(self) -> str:
        spec = self.spec
        tags = {"search_id": self.search_id, "role": ROLE_SEARCH}
        found = search_runs(self._client, self._experiment_id, tags)
        if found:
            run_id = found[0].info.run_id
            self._client.update_run(run_id, status="RUNNING")
            self._client.set_tag(run_id, "state", "running")
            return str(run_id)
        run = self._client.create_run(
            self._experiment_id,
            run_name=self.search_id,
            tags={
                **tags,
                "search_name": spec.name,
                "searcher": spec.searcher.kind,
                "scheduler": spec.scheduler.kind,
                "executor": spec.resources.executor,
                "state": "running",
            },  # fmt: skip
        )
        run_id = run.info.run_id
        params = {
            "preset": spec.preset, "metric": spec.metric, "mode": spec.mode, "num_samples": spec.num_samples,
            "repeats": spec.repeats, "max_epochs": spec.max_epochs, "max_concurrent_trials": spec.max_concurrent_trials,
            "grace_period": spec.scheduler.grace_period, "reduction_factor": spec.scheduler.reduction_factor,
            "space": ",".join(a.name for a in spec.space), "design": spec.design.kind,
            "effects_budget": spec.design.effects_budget,
            **{f"base.{k}": v for k, v in spec.base_overrides().items()},
        }  # fmt: skip
        self._log_params(run_id, params)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "search.yaml"
            path.write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
            self._client.log_artifact(run_id, str(path))
        return str(run_id)

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, param_value(v)) for k, v in params.items()]
        for batch in batches(items, 100):
            self._client.log_batch(run_id, params=batch)

    # -- child runs --------------------------------------------------------------------------
    def _trial_config(self, trial: Any) -> ExperimentConfig:
        return trial_config(self.spec, trial_overrides(trial.config), int(trial.config.get("repeat", 0)))

    def _max_epochs(self, config: ExperimentConfig | None) -> int:
        epochs = config.train.epochs if config is not None else self.spec.max_epochs
        return min(epochs, self.spec.scheduler.max_t) if self.spec.scheduler.max_t else epochs

    def ensure_run(self, trial: Any) -> _RunState:
        """The trial's run: cached, else found by tag, else created (exactly once per trial id).

        A run found on the server is re-attached from what it holds (epochs, best value). When the
        server cannot be read, the outbox finds or creates the run once it answers, and drops what
        the run already holds then, so nothing waits for it here.
        """
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        key = f"trial:{trial.trial_id}"
        tags = {"search_id": self.search_id, "ray_trial_id": trial.trial_id}
        try:
            config: ExperimentConfig | None = self._trial_config(trial)
            config_error = ""
        except ConfigError as exc:
            config, config_error = None, str(exc)
        state = _RunState(
            key, 0, False, None, "", config.to_dict() if config else None, self._max_epochs(config)
        )
        try:
            found = self._reattach(trial, key, tags, state)
        except Exception as exc:
            if not transient(exc):
                raise
            log.warning("trial %s: MLflow unreadable (%s); its run is found or created later",
                        trial.trial_id, str(exc).splitlines()[0][:200])  # fmt: skip
            found = False
        if found:
            if state.params_missing and config is not None:
                self._put(key, params=_params(config.flat()))
        else:
            self.outbox.put(
                "run", key, experiment_id=self._experiment_id, match=tags, run_name=str(trial),
                tags=self._new_run_tags(trial, tags, config, config_error),
                params=_params(config.flat()) if config is not None else {},
            )  # fmt: skip
        self._runs[trial.trial_id] = state
        return state

    def _reattach(self, trial: Any, key: str, tags: Mapping[str, str], state: _RunState) -> bool:
        """Fill ``state`` from the trial's run on the server, if there is one (True)."""
        client = self.client
        if self._earlier_runs is not None:  # read at setup; later runs are this driver's own
            found = [self._earlier_runs[trial.trial_id]] if trial.trial_id in self._earlier_runs else []
        else:
            found = search_runs(client, self._experiment_id, tags)
        if not found:
            return False
        run = found[0]
        key_steps = epoch_steps(client, run)
        self.outbox.bind(key, run.info.run_id)
        if run.info.status != "RUNNING" and trial.status not in TERMINAL:
            self.outbox.put("status", key, status="RUNNING")
        state.last_epoch = max([int(run.data.tags.get("last_epoch", 0)), *key_steps.values()])
        state.key_steps = key_steps
        state.static_logged = all(k in run.data.metrics for k in STATIC_KEYS)
        state.best_value = _finite_or_none(run.data.tags.get("best_value"))
        state.best_checkpoint = run.data.tags.get("best_checkpoint", "")
        state.failed_deterministically = run.data.tags.get("error_kind") == "deterministic"
        state.exported = run.data.tags.get("onnx") == "exported"
        state.params_missing = not run.data.params
        return True

    def _new_run_tags(
        self, trial: Any, tags: Mapping[str, str], config: ExperimentConfig | None, config_error: str
    ) -> dict[str, str]:
        run_tags = {
            **tags,
            "mlflow.parentRunId": self._parent_id,
            "role": ROLE_TRIAL,
            "search_name": self.spec.name,
            "trial_name": str(trial),
            "repeat": str(int(trial.config.get("repeat", 0))),
            "state": "running",
            "last_epoch": "0",
        }
        if config is not None:
            run_tags.update(config.feature_flags())
            run_tags["config_hash"] = config.hash()
            run_tags["variant_hash"] = variant_hash(config, self.spec.base_config().train.seed)
        else:
            run_tags["config_error"] = config_error[:4000]
        return run_tags

    # -- Tune hooks --------------------------------------------------------------------------
    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not self._swept:
            self._swept = self._sweep(trials)
        self._collect_exports(wait=False)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        state = self.ensure_run(trial)
        self._put(state.key, tags={"state": "running"})

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        if deterministic_failure(result):
            # The trial raises right after this report, and a retry would fail the same way. (With
            # the Train executor, an epoch still queued by Train may come after it.)
            trial.max_failures = trial.num_failures
            state = self.ensure_run(trial)
            state.failed_deterministically = True
            self._put(state.key, tags={"error_kind": "deterministic"})
            return
        if "epoch" not in result:
            return
        state = self.ensure_run(trial)
        epoch = int(result["epoch"])
        now = int(time.time() * 1000)
        metrics = [
            [k, float(v), now, epoch]
            for k, v in result.items()
            if (k.startswith(EPOCH_PREFIXES) or k in EPOCH_KEYS)
            and is_number(v)
            and epoch > state.key_steps.get(k, 0)
        ]
        if epoch <= state.last_epoch and not metrics:
            return  # re-reported after a restore: already logged, never a duplicate point
        if not state.static_logged:
            metrics += [[k, float(result[k]), now, 0] for k in STATIC_KEYS if is_number(result.get(k))]
            state.static_logged = True
        tags = {"last_epoch": str(max(state.last_epoch, epoch))}
        best = None
        if self._budget is not None and is_finite_number(result.get(self.spec.metric)):
            self._budget.observe(trial.trial_id, epoch, float(result[self.spec.metric]))
        path = result.get("checkpoint_path")
        if path:  # both executors persist the epoch's checkpoint before reporting it
            best = self._maybe_best(state, result, checkpoint_uri(str(self.spec.storage), str(path)), epoch)
            tags.update(best or {})
        self._put(state.key, metrics=metrics, tags=tags,
                  best={"value": state.best_value, "mode": self.spec.mode} if best else None)  # fmt: skip
        for key, _, _, step in metrics:
            state.key_steps[key] = max(step, state.key_steps.get(key, 0))
        state.last_epoch = max(state.last_epoch, epoch)

    def _maybe_best(
        self, state: _RunState, result: Mapping[str, Any], uri: str, epoch: int
    ) -> dict[str, str]:
        """The best-checkpoint tags when this epoch improves on the trial's best, else none."""
        raw = result.get(self.spec.metric)
        if not is_finite_number(raw):  # `x > nan` is false: a NaN best would stay the best forever
            return {}
        value = float(raw)
        # On a tie Ray Train's retention keeps the later checkpoint (and may delete the earlier one);
        # the function executor's CheckpointStore keeps the earlier one, as ``improves`` does.
        tie_goes_to_later = self.spec.resources.executor == "train" and value == state.best_value
        if not (improves(value, state.best_value, self.spec.mode) or tie_goes_to_later):
            return {}
        state.best_value, state.best_checkpoint = value, uri
        return {"best_value": repr(value), "best_epoch": str(epoch), "best_checkpoint": uri}

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        state = self.ensure_run(trial)
        epoch = int((trial.last_result or {}).get("epoch", state.last_epoch) or 0)
        pruned = epoch < state.max_epochs
        tags = {"pruned": str(pruned).lower(), "state": "pruned" if pruned else "finished"}
        if pruned:
            tags["pruned_at_epoch"] = str(epoch)
            tags["pruned_by"] = "user" if self._user_stopped(trial.trial_id) else self.spec.scheduler.kind
        self._put(state.key, tags=tags)  # one write
        if self._budget is not None and not pruned:
            self._log_budget_agreement(trial, state)
        self._finish(trial.trial_id, state, "FINISHED", deferred=pruned)

    def _log_budget_agreement(self, trial: Any, state: _RunState) -> None:
        assert self._budget is not None
        # the trial ran to its end, so its config is valid; its cell is shared by the cell's repeats
        cell = variant_hash(self._trial_config(trial), self.spec.base_config().train.seed)
        found = self._budget.finished(trial.trial_id, cell, state.best_value)
        if found is not None and math.isfinite(found[1]):
            self._put(PARENT, metrics=[[METRIC, found[1], int(time.time() * 1000), found[0]]])

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._ended.add(trial.trial_id)
        state = self.ensure_run(trial)
        kind = "deterministic" if state.failed_deterministically else "retries_exhausted"
        self._put(
            state.key, tags={"state": "errored", "error_kind": kind, "error": _trial_error(trial)[:4900]}
        )
        self._finish(trial.trial_id, state, "FAILED")

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if not self._swept:
            self._sweep(trials)
        self._collect_exports(wait=True)
        if self._exporter is not None:
            self._exporter.close()

        ended = len(trials) >= expected_trials(self.spec) and all(t.status in TERMINAL for t in trials)
        errored = any(t.status == "ERROR" for t in trials)
        state = ("incomplete" if errored else "finished") if ended else "stopped"
        for trial in trials:
            if trial.status not in TERMINAL and trial.trial_id in self._runs:
                key = self._runs[trial.trial_id].key
                self._put(key, tags={"state": "interrupted"})
                self.outbox.put("terminate", key, status="KILLED")
        self.finalize_parent(state)
        self.close_outbox()

    def close_outbox(self) -> None:
        """Deliver what is left (waiting at most ``mlflow.flush_timeout_s``); a resume delivers the rest."""
        if self._outbox is None:
            return
        outbox, self._outbox = self._outbox, None
        if not outbox.close(self.spec.mlflow.flush_timeout_s):
            log.warning(
                "MLflow did not answer within %.0f s: %d writes are kept in %s; "
                "`edgeseg search resume %s` delivers them",
                self.spec.mlflow.flush_timeout_s, outbox.pending, outbox.folder, self.spec.name,
            )  # fmt: skip

    # -- end of a trial ----------------------------------------------------------------------
    def _user_stopped(self, trial_id: str) -> bool:
        if not self.stop_requests_dir:
            return False

        return StorageFolder(self.stop_requests_dir).exists(trial_id)

    def _finish(self, trial_id: str, state: _RunState, status: str, deferred: bool = False) -> None:
        end_without_export = (
            "disabled" if not self.spec.export_onnx
            else "no checkpoint" if not state.best_checkpoint
            else "exported" if state.exported  # a trial restarted after its export: never twice
            else None
        )  # fmt: skip
        if end_without_export is not None:
            if not state.exported:
                self._put(state.key, tags={"onnx": end_without_export})
            self.outbox.put("terminate", state.key, status=status)
            return
        if trial_id in self._exported:
            return
        self._exported.add(trial_id)
        assert self._exporter is not None
        self._exporter.submit(
            ExportJob(
                trial_id, state.key, state.best_checkpoint, status, state.config or {}, deferred=deferred
            )
        )

    def _collect_exports(self, wait: bool) -> None:
        if self._exporter is None:
            return
        for job in self._exporter.finished(wait=wait):
            self._log_export(job)

    def _log_export(self, job: ExportJob) -> None:
        try:
            if job.error:
                self._put(job.run_key, tags={"onnx": f"failed: {job.error}"[:4900]})
                return
            result = job.result
            staging = job.out_dir / "stage"
            (staging / "onnx").mkdir(parents=True, exist_ok=True)
            shutil.copy(result.onnx_path, staging / "onnx" / "model.onnx")
            shutil.copy(result.sidecar_path, staging / "onnx" / "model.json")
            (staging / "config.yaml").write_text(yaml.safe_dump(job.config, sort_keys=False))
            self.outbox.put_artifacts(job.run_key, staging)
            now = int(time.time() * 1000)
            metrics: list[list[Any]] = [["onnx_max_abs_diff", float(result.max_abs_diff), now, 0]]
            latency = {str(k): float(v) for k, v in dict(result.latency_ms or {}).items()}
            if latency:
                metrics.append(["latency_ms", primary_latency(latency), now, 0])
                metrics += [[latency_metric_name(k), v, now, 0] for k, v in latency.items()]
            step = job.checkpoint_epoch
            metrics += [
                [f"best/{k}", v, now, step]
                for k, v in job.checkpoint_metrics.items()
                if k.startswith(EPOCH_PREFIXES)
            ]
            metrics += [[k, v, now, step] for k, v in job.mask_ap.items()]
            metrics += [[f"best/{k}", v, now, step] for k, v in job.mask_ap.items()]
            self._put(job.run_key, metrics=metrics, tags={"onnx": "exported", "onnx_epoch": str(step)})
            # the ONNX is logged: the trial's other checkpoints go (disk.py), its run tagged with what is kept
            prune_after_export(
                self.spec,
                job.trial_id,
                job.checkpoint,
                lambda tid, tags: self._put(f"trial:{tid}", tags=tags),
            )
        finally:
            self.outbox.put("terminate", job.run_key, status=job.final_status)
            shutil.rmtree(job.out_dir, ignore_errors=True)

    def _sweep(self, trials: list[Any]) -> bool:
        """After a restore: trials that ended while the driver was down get their end-of-trial work.
        One query for the whole search; False when MLflow cannot be read (tried again next step)."""
        ended = [t for t in trials if t.status in TERMINAL and t.trial_id not in self._ended]
        if not ended:
            return True
        try:
            runs = search_runs(
                self.client, self._experiment_id, {"search_id": self.search_id, "role": ROLE_TRIAL}
            )
        except Exception as exc:
            if not transient(exc):
                raise
            return False
        done = {
            r.data.tags.get("ray_trial_id")
            for r in runs
            if r.info.status != "RUNNING" and r.data.tags.get("onnx")
        }  # fmt: skip
        for trial in ended:
            if trial.trial_id in done:
                continue
            if trial.status == "ERROR":
                self.on_trial_error(0, trials, trial)
            else:
                self.on_trial_complete(0, trials, trial)
        return True

    def finalize_parent(self, state: str) -> None:
        """Tag the parent run with the search's end ``state`` (finished | incomplete | stopped), its
        counts and its best trial, once every earlier write of the search is delivered."""
        self.outbox.put(
            "finalize", PARENT, state=state, search_id=self.search_id, experiment_id=self._experiment_id,
            metric=self.spec.metric, mode=self.spec.mode,
            status={"finished": "FINISHED", "incomplete": "FAILED"}.get(state, "KILLED"),
        )  # fmt: skip


def _params(flat: Mapping[str, Any]) -> dict[str, str]:
    return {k: param_value(v) for k, v in flat.items()}


def _finite_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if is_finite_number(value) else None


def _trial_error(trial: Any) -> str:
    """The trial's error text: the driver's local ``error.txt`` while it runs, else the copy in the
    experiment's storage (a restored driver's staging folder is a new, empty one), else the pickled
    exception. Ray 2.60's ``Trial`` has no ``error_msg``."""
    try:  # outside a Ray session Ray cannot even name the staging folder (AssertionError)
        path = trial.error_file
        if path and Path(path).exists():
            return Path(path).read_text()
    except (AssertionError, OSError):
        pass
    for read in (trial.get_error, trial.get_pickled_error):
        try:
            error = read()
        except Exception as exc:  # storage unreachable or an exception class that no longer unpickles
            log.warning("trial %s: reading its error with %s failed: %s", trial.trial_id, read.__name__, exc)
            continue
        if error:
            return str(error)
    return "unknown error"
