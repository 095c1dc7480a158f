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
``onnx/model.onnx`` + ``onnx/model.json`` + ``config.yaml`` with ``latency_ms``; all MLflow writes stay
on the driver's main thread. A trial that ended while the driver was down is exported on resume.

A NaN, infinite or missing metric value never becomes a trial's best value or best checkpoint. A
trial that announces a deterministic failure (``trainable.FAILED_DETERMINISTICALLY``, reported just
before it raises) gets no Tune retry: Tune retries by count only, so its budget ends here, and its
run is tagged ``error_kind = deterministic`` at once (``retries_exhausted`` for any other error).
"""

from __future__ import annotations

import logging
import math
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
from edgeseg.search.export_jobs import ExportJob, ExportWorker, latency_metric_name, primary_latency
from edgeseg.search.mlflow_runs import (
    batches,
    best_run,
    client_for,
    ensure_experiment,
    param_value,
    search_runs,
    variant_hash,
)
from edgeseg.search.names import EPOCH_KEYS, EPOCH_PREFIXES, ROLE_SEARCH, ROLE_TRIAL, STATIC_KEYS
from edgeseg.search.space import expected_trials
from edgeseg.search.spec import (
    SearchSpec,
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
    run_id: str
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
        self._swept = False
        self._exported: set[str] = set()
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
        self._client = client_for(str(spec.mlflow.tracking_uri))
        self._experiment_id = ensure_experiment(
            self._client, spec.experiment_name, spec.mlflow.artifact_location
        )
        self._parent_id = self._ensure_parent()
        self._exporter = ExportWorker()

    @property
    def client(self) -> Any:
        if self._client is None:
            self.setup()
        return self._client

    @property
    def parent_run_id(self) -> str:
        return self._parent_id

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
        """The trial's run: cached, else found by tag, else created (exactly once per trial id)."""
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        client = self.client
        tags = {"search_id": self.search_id, "ray_trial_id": trial.trial_id}
        found = search_runs(client, self._experiment_id, tags)
        try:
            config: ExperimentConfig | None = self._trial_config(trial)
            config_error = ""
        except ConfigError as exc:
            config, config_error = None, str(exc)
        if found:
            run = found[0]
            if run.info.status != "RUNNING" and trial.status not in TERMINAL:
                client.update_run(run.info.run_id, status="RUNNING")
            key_steps = {
                key: max((m.step for m in client.get_metric_history(run.info.run_id, key)), default=0)
                for key in run.data.metrics
                if key.startswith(EPOCH_PREFIXES) or key in EPOCH_KEYS
            }
            state = _RunState(
                run_id=run.info.run_id,
                last_epoch=max([int(run.data.tags.get("last_epoch", 0)), *key_steps.values()]),
                key_steps=key_steps,
                static_logged=all(k in run.data.metrics for k in STATIC_KEYS),
                best_value=_finite_or_none(run.data.tags.get("best_value")),
                best_checkpoint=run.data.tags.get("best_checkpoint", ""),
                config=config.to_dict() if config else None,
                max_epochs=self._max_epochs(config),
                failed_deterministically=run.data.tags.get("error_kind") == "deterministic",
            )
            if not run.data.params and config is not None:
                self._log_params(state.run_id, config.flat())
        else:
            base_seed = self.spec.base_config().train.seed
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
                run_tags["variant_hash"] = variant_hash(config, base_seed)
            else:
                run_tags["config_error"] = config_error[:4000]
            run = client.create_run(self._experiment_id, run_name=str(trial), tags=run_tags)
            state = _RunState(run.info.run_id, 0, False, None, "", config.to_dict() if config else None,
                              self._max_epochs(config))  # fmt: skip
            if config is not None:
                self._log_params(state.run_id, config.flat())
        self._runs[trial.trial_id] = state
        return state

    # -- Tune hooks --------------------------------------------------------------------------
    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not self._swept:
            self._swept = True
            self._sweep(trials)
        self._collect_exports(wait=False)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        state = self.ensure_run(trial)
        self.client.set_tag(state.run_id, "state", "running")

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        from mlflow.entities import Metric, RunTag

        if deterministic_failure(result):
            # The trial raises right after this report, and a retry would fail the same way. (With
            # the Train executor, an epoch still queued by Train may come after it.)
            trial.max_failures = trial.num_failures
            state = self.ensure_run(trial)
            state.failed_deterministically = True
            self.client.set_tag(state.run_id, "error_kind", "deterministic")
            return
        if "epoch" not in result:
            return
        state = self.ensure_run(trial)
        epoch = int(result["epoch"])
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, epoch)
            for k, v in result.items()
            if (k.startswith(EPOCH_PREFIXES) or k in EPOCH_KEYS)
            and is_number(v)
            and epoch > state.key_steps.get(k, 0)
        ]
        if epoch <= state.last_epoch and not metrics:
            return  # re-reported after a restore: already logged, never a duplicate point
        if not state.static_logged:
            metrics += [Metric(k, float(result[k]), now, 0) for k in STATIC_KEYS if is_number(result.get(k))]
            state.static_logged = True
        tags = [RunTag("last_epoch", str(max(state.last_epoch, epoch)))]
        if self._budget is not None and is_finite_number(result.get(self.spec.metric)):
            self._budget.observe(trial.trial_id, epoch, float(result[self.spec.metric]))
        path = result.get("checkpoint_path")
        if path:  # both executors persist the epoch's checkpoint before reporting it
            tags += self._maybe_best(state, result, checkpoint_uri(str(self.spec.storage), str(path)), epoch)
        for batch in batches(metrics, 900):
            self.client.log_batch(state.run_id, metrics=batch, tags=tags)
            tags = []
        for metric in metrics:
            state.key_steps[metric.key] = max(metric.step, state.key_steps.get(metric.key, 0))
        state.last_epoch = max(state.last_epoch, epoch)

    def _maybe_best(self, state: _RunState, result: Mapping[str, Any], uri: str, epoch: int) -> list[Any]:
        from mlflow.entities import RunTag

        raw = result.get(self.spec.metric)
        if not is_finite_number(raw):  # `x > nan` is false: a NaN best would stay the best forever
            return []
        value = float(raw)
        if not improves(value, state.best_value, self.spec.mode):
            return []
        state.best_value, state.best_checkpoint = value, uri
        return [
            RunTag("best_value", repr(value)),
            RunTag("best_epoch", str(epoch)),
            RunTag("best_checkpoint", uri),
        ]

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        from mlflow.entities import RunTag

        state = self.ensure_run(trial)
        epoch = int((trial.last_result or {}).get("epoch", state.last_epoch) or 0)
        pruned = epoch < state.max_epochs
        tags = {"pruned": str(pruned).lower(), "state": "pruned" if pruned else "finished"}
        if pruned:
            tags["pruned_at_epoch"] = str(epoch)
            tags["pruned_by"] = "user" if self._user_stopped(trial.trial_id) else self.spec.scheduler.kind
        self.client.log_batch(state.run_id, tags=[RunTag(k, v) for k, v in tags.items()])  # one write
        if self._budget is not None and not pruned:
            self._log_budget_agreement(trial, state)
        self._finish(trial.trial_id, state, "FINISHED", deferred=pruned)

    def _log_budget_agreement(self, trial: Any, state: _RunState) -> None:
        assert self._budget is not None
        # the trial ran to its end, so its config is valid; its cell is shared by the cell's repeats
        cell = variant_hash(self._trial_config(trial), self.spec.base_config().train.seed)
        found = self._budget.finished(trial.trial_id, cell, state.best_value)
        if found is not None and math.isfinite(found[1]):
            self.client.log_metric(self._parent_id, METRIC, found[1], step=found[0])

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        from mlflow.entities import RunTag

        state = self.ensure_run(trial)
        kind = "deterministic" if state.failed_deterministically else "retries_exhausted"
        tags = [
            RunTag("state", "errored"),
            RunTag("error_kind", kind),
            RunTag("error", _trial_error(trial)[:4900]),
        ]
        self.client.log_batch(state.run_id, tags=tags)
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
                run_id = self._runs[trial.trial_id].run_id
                self.client.set_tag(run_id, "state", "interrupted")
                self.client.set_terminated(run_id, status="KILLED")
        self.finalize_parent(state)

    # -- end of a trial ----------------------------------------------------------------------
    def _user_stopped(self, trial_id: str) -> bool:
        if not self.stop_requests_dir:
            return False

        return StorageFolder(self.stop_requests_dir).exists(trial_id)

    def _finish(self, trial_id: str, state: _RunState, status: str, deferred: bool = False) -> None:
        if not self.spec.export_onnx:
            self.client.set_tag(state.run_id, "onnx", "disabled")
            self.client.set_terminated(state.run_id, status=status)
            return
        if not state.best_checkpoint:
            self.client.set_tag(state.run_id, "onnx", "no checkpoint")
            self.client.set_terminated(state.run_id, status=status)
            return
        if trial_id in self._exported:
            return
        self._exported.add(trial_id)
        assert self._exporter is not None
        self._exporter.submit(
            ExportJob(
                trial_id, state.run_id, state.best_checkpoint, status, state.config or {}, deferred=deferred
            )
        )

    def _collect_exports(self, wait: bool) -> None:
        if self._exporter is None:
            return
        for job in self._exporter.finished(wait=wait):
            self._log_export(job)

    def _log_export(self, job: ExportJob) -> None:
        from mlflow.entities import Metric, RunTag

        client = self.client
        try:
            if job.error:
                client.set_tag(job.run_id, "onnx", f"failed: {job.error}"[:4900])
                return
            result = job.result
            staging = job.out_dir / "stage"
            (staging / "onnx").mkdir(parents=True, exist_ok=True)
            shutil.copy(result.onnx_path, staging / "onnx" / "model.onnx")
            shutil.copy(result.sidecar_path, staging / "onnx" / "model.json")
            (staging / "config.yaml").write_text(yaml.safe_dump(job.config, sort_keys=False))
            client.log_artifacts(job.run_id, str(staging))
            now = int(time.time() * 1000)
            metrics = [Metric("onnx_max_abs_diff", float(result.max_abs_diff), now, 0)]
            latency = {str(k): float(v) for k, v in dict(result.latency_ms or {}).items()}
            if latency:
                metrics.append(Metric("latency_ms", primary_latency(latency), now, 0))
                metrics += [Metric(latency_metric_name(k), v, now, 0) for k, v in latency.items()]
            metrics += [
                Metric(f"best/{k}", v, now, job.checkpoint_epoch)
                for k, v in job.checkpoint_metrics.items()
                if k.startswith(EPOCH_PREFIXES)
            ]
            metrics += [Metric(k, v, now, job.checkpoint_epoch) for k, v in job.mask_ap.items()]
            metrics += [Metric(f"best/{k}", v, now, job.checkpoint_epoch) for k, v in job.mask_ap.items()]
            tags = [RunTag("onnx", "exported"), RunTag("onnx_epoch", str(job.checkpoint_epoch))]
            client.log_batch(job.run_id, metrics=metrics, tags=tags)
        finally:
            client.set_terminated(job.run_id, status=job.final_status)
            shutil.rmtree(job.out_dir, ignore_errors=True)

    def _sweep(self, trials: list[Any]) -> None:
        """After a restore: trials that ended while the driver was down get their end-of-trial work."""
        for trial in trials:
            if trial.status not in TERMINAL:
                continue
            found = search_runs(
                self.client,
                self._experiment_id,
                {"search_id": self.search_id, "ray_trial_id": trial.trial_id},
            )
            if found and found[0].info.status != "RUNNING" and found[0].data.tags.get("onnx"):
                continue
            if trial.status == "ERROR":
                self.on_trial_error(0, trials, trial)
            else:
                self.on_trial_complete(0, trials, trial)

    def finalize_parent(self, state: str) -> None:
        """Tag the parent run with the search's end ``state`` (finished | incomplete | stopped) and its counts."""
        client = self.client
        spec = self.spec
        runs = search_runs(client, self._experiment_id, {"search_id": self.search_id, "role": ROLE_TRIAL})
        best = best_run(runs, f"best/{spec.metric}", spec.mode) or best_run(runs, spec.metric, spec.mode)
        tags = {
            "state": state,
            "trials": str(len(runs)),
            "trials_pruned": str(sum(r.data.tags.get("pruned") == "true" for r in runs)),
            "trials_errored": str(sum(r.data.tags.get("state") == "errored" for r in runs)),
        }
        if best is not None:
            tags["best_run_id"] = best.info.run_id
        for key, value in tags.items():
            client.set_tag(self._parent_id, key, value)
        client.set_terminated(
            self._parent_id, status={"finished": "FINISHED", "incomplete": "FAILED"}.get(state, "KILLED")
        )


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
