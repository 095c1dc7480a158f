"""The Ray trial: a Tune function that trains one configuration with ``edgeseg.engine.fit``.

Two executors, chosen by the spec's ``resources.executor``:

* ``train`` (default): the Tune function is a Ray Train *driver* (the Train V2 pattern). It runs a
  ``TorchTrainer`` with the trial's ``ScalingConfig``; the Train run is named ``train-<trial id>``
  under the search's storage, so a restarted trial resumes from Train's own checkpoint (after
  reporting every epoch up to it again, see ``_replay_history``), and ``TuneReportCallback``
  forwards every epoch (with ``checkpoint_path``) to Tune. The trial takes
  no CPU itself, only one unit of the custom ``trial_driver`` resource, so drivers never block
  workers. Nothing after ``trainer.fit()`` is guaranteed to run (Tune kills the trial at ASHA stops
  and at max_t), so all logging and export happen in the driver process (``tracking.py``).
* ``function``: the engine runs inside the Tune trial process; checkpoints go to the trial's own
  store on the search storage (see :class:`CheckpointStore`) and every epoch is reported through
  ``tune.report`` with the same ``checkpoint_path`` key the Train executor produces. One process, no
  Train worker group: on 2 CPU cores the first epoch arrives about 10x sooner, which is what small
  CPU trials want.

Both executors report exactly the engine's per-epoch metrics; ``epoch`` is ASHA's time attribute.

Failures have one retry budget, Tune's (``max_failures`` of the spec); the Train executor's own
``FailureConfig`` is 0, or a failure would be retried ``(1 + max_failures)^2`` times. A failure that
any retry would repeat (a non-finite loss, an invalid sampled configuration) is not retried at all.
Tune has no per-exception retry policy, so the trial reports it once under
``FAILED_DETERMINISTICALLY`` and then raises :class:`DeterministicTrialError`; the driver's tracker
sees that report first and ends the trial's retry budget (``tracking.MlflowTracker``).
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeseg import paths
from edgeseg.config import ConfigError
from edgeseg.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint
from edgeseg.engine.fit import fit
from edgeseg.engine.loop import NonFiniteLossError
from edgeseg.search.scratch import attempt_folder
from edgeseg.search.spec import SearchSpec, is_finite_number, trial_config, trial_overrides
from edgeseg.search.storage import StorageFolder, control_folder

TRIAL_DRIVER_RESOURCE = "trial_driver"
log = logging.getLogger("edgeseg.search.trial")

# Errors that a retry of the same configuration would repeat.
DETERMINISTIC_ERRORS: tuple[type[Exception], ...] = (NonFiniteLossError, ConfigError)
# The key of the last result of a trial that failed deterministically (its value: the error).
FAILED_DETERMINISTICALLY = "failed_deterministically"


class DeterministicTrialError(RuntimeError):
    """A trial failed the way any retry would (see ``DETERMINISTIC_ERRORS``); it is not retried."""


def deterministic_failure(result: Mapping[str, Any] | None) -> str:
    """The error of a trial result that announces a deterministic failure, else ``""``."""
    return str((result or {}).get(FAILED_DETERMINISTICALLY) or "")


def failed_trials_folder(spec: SearchSpec) -> StorageFolder:
    """``<storage>/<name>/edgeseg/failed/<trial id>``: the deterministic failure of each trial that had one."""
    return control_folder(str(spec.storage), spec.name).child("failed")


def _fail_deterministically(spec: SearchSpec, message: str, why: str) -> DeterministicTrialError:
    from ray import tune

    # Reported before raising: the driver reads it before Tune decides on a retry. The metric is
    # there because Tune rejects a result without it; NaN never ranks (see is_finite_number).
    tune.report({spec.metric: math.nan, FAILED_DETERMINISTICALLY: message})
    return DeterministicTrialError(f"{message} ({why})")


@contextmanager
def _deterministic_failures_not_retried(spec: SearchSpec, trial_id: str) -> Iterator[None]:
    """A deterministic failure ends the trial for good: Tune does not retry it, and the failure is
    recorded, so ``search resume`` (which retries errored trials) ends it at once instead of training
    it into the same error; ``search resume --retry-failed`` forgets the records."""
    failed = failed_trials_folder(spec)
    if failed.exists(trial_id):
        raise _fail_deterministically(spec, failed.read_text(trial_id), "recorded by an earlier attempt; "
                                      "not run again: `edgeseg search resume NAME --retry-failed` does")  # fmt: skip
    try:
        yield
    except DETERMINISTIC_ERRORS as exc:
        message = f"{type(exc).__name__}: {exc}"
        failed.write_text(trial_id, message)
        raise _fail_deterministically(spec, message, "not retried: a retry would fail the same way") from exc


def train_runs_path(spec: SearchSpec) -> str:
    """Where the Ray Train runs of a search's trials live (next to the Tune experiment)."""
    return f"{str(spec.storage).rstrip('/')}/{spec.name}/train_runs"


def _enter_home(spec: SearchSpec) -> None:
    # Trials share the driver's prepared data and feature caches through the search's home folder.
    paths.set_home(spec.home)


def _clean(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[key] = int(value) if key == "epoch" else float(value)
    return out


def _stored_history(checkpoint_dir: Path) -> list[dict[str, float]]:
    """Each epoch's metrics up to a checkpoint's own epoch, oldest first, as ``fit`` stored them."""
    state = load_checkpoint(checkpoint_dir)
    history = state.get("history") or [state.get("metrics") or {"epoch": state["epoch"]}]
    return [_clean(metrics) for metrics in history if int(metrics["epoch"]) <= int(state["epoch"])]


def _fit(
    spec: SearchSpec,
    trial: Mapping[str, Any],
    reporter: Any,
    resume_dir: Path | None,
    run_dir: Path,
    device: Any = None,
) -> None:

    config = trial_config(spec, trial_overrides(trial), int(trial.get("repeat", 0)))
    fit(
        config,
        reporter,
        run_dir=run_dir,
        resume_from=resume_dir,
        keep_checkpoints=1,
        log=log.info,
        device=device,
    )


# ----------------------------------------------------------------------------------------------
# Function executor.
# ----------------------------------------------------------------------------------------------


def trial_runs_path(spec: SearchSpec) -> str:
    """Where the function executor keeps each trial's checkpoints (``<trial id>/epoch_NNNN``)."""
    return f"{str(spec.storage).rstrip('/')}/{spec.name}/trial_runs"


class CheckpointStore:
    """A trial's checkpoints on the search storage, with a manifest written before any deletion.

    Tune's own checkpoint retention by score can delete the checkpoint its last experiment snapshot
    points to; a driver killed in that window cannot restore the trial ("does not exist on storage
    anymore" — seen here). Ray Train avoids this with a manifest next to the checkpoints; this is the
    same idea for one-process trials: the best ``keep`` by the search metric plus the latest survive,
    and the manifest is replaced atomically before anything is deleted.
    """

    MANIFEST = "manifest.json"

    def __init__(self, root_uri: str, trial_id: str, keep: int, metric: str, mode: str) -> None:

        self.folder = StorageFolder(f"{root_uri.rstrip('/')}/{trial_id}")
        self.keep, self.metric, self.mode = keep, metric, mode

    def entries(self) -> list[dict[str, Any]]:
        if not self.folder.exists(self.MANIFEST):
            return []
        return list(json.loads(self.folder.read_text(self.MANIFEST))["checkpoints"])

    def latest(self) -> dict[str, Any] | None:
        entries = self.entries()
        return max(entries, key=lambda e: e["epoch"]) if entries else None

    def uri(self, entry: Mapping[str, Any]) -> str:
        return f"{self.folder.uri}/{entry['dir']}"

    def ranked(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Best first by the search metric; a NaN, infinite or missing value ranks after every
        finite one (``x > nan`` is always false, so a plain sort would let it pass as the best)."""
        sign = -1.0 if self.mode == "max" else 1.0

        def rank(entry: Mapping[str, Any]) -> tuple[bool, float]:
            value = entry["metrics"].get(self.metric)
            return (False, sign * float(value)) if is_finite_number(value) else (True, 0.0)

        return sorted(entries, key=rank)

    def save(self, local_dir: Path, metrics: Mapping[str, float]) -> str:
        epoch = int(metrics["epoch"])
        name = f"epoch_{epoch:04d}"
        self.folder.delete_dir(name)  # a re-run epoch after a restore replaces its old copy
        uri = self.folder.upload_dir(local_dir, name)
        entries = [e for e in self.entries() if e["epoch"] < epoch]  # later ones belong to a lost future
        entries.append({"dir": name, "epoch": epoch, "metrics": dict(metrics)})
        kept = {e["dir"] for e in self.ranked(entries)[: self.keep]} | {name}
        survivors = sorted((e for e in entries if e["dir"] in kept), key=lambda e: e["epoch"])
        self.folder.write_text(self.MANIFEST, json.dumps({"checkpoints": survivors}))
        listed = {e["dir"] for e in survivors}
        for old in self.folder.list():
            if old.startswith("epoch_") and old not in listed:
                self.folder.delete_dir(old)
        return uri


class TuneReporter:
    """engine reporter -> the trial's checkpoint store, then ``tune.report`` with ``checkpoint_path``."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store

    def report(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        from ray import tune

        clean = _clean(metrics)
        uri = self.store.save(checkpoint_dir, clean)
        tune.report({**clean, "checkpoint_path": uri})


def function_trial(config: dict[str, Any], spec: SearchSpec) -> None:
    """The Tune trial of the ``function`` executor: the engine in this process."""
    from ray import tune
    from ray.train import Checkpoint

    _enter_home(spec)
    trial_id = tune.get_context().get_trial_id()
    store = CheckpointStore(trial_runs_path(spec), trial_id, spec.keep_checkpoints, spec.metric, spec.mode)
    latest = store.latest()
    with attempt_folder(trial_id) as run_dir, _deterministic_failures_not_retried(spec, trial_id):
        if latest is None:
            _fit(spec, config, TuneReporter(store), None, run_dir)
            return
        uri = store.uri(latest)
        # A restarted trial (Tuner.restore or a retry) continues after its latest checkpoint; that
        # epoch is reported again in case the driver died before logging it (the tracker skips it
        # otherwise).
        tune.report({**_clean(latest["metrics"]), "checkpoint_path": uri})
        with Checkpoint(path=uri).as_directory() as directory:
            _fit(spec, config, TuneReporter(store), Path(directory), run_dir)


# ----------------------------------------------------------------------------------------------
# Ray Train executor.
# ----------------------------------------------------------------------------------------------


def train_checkpoint_name(epoch: int) -> str:
    """An epoch's checkpoint folder in its Train run (``train-<trial id>/checkpoint_epoch_NNNN``).

    Named by the epoch (Ray Train's default is a timestamp), so the epoch history that ``fit`` stores
    in every checkpoint also names the checkpoint of each earlier epoch.
    """
    return f"checkpoint_epoch_{epoch:04d}"


class TrainReporter:
    """engine reporter -> ``ray.train.report``; rank 0 attaches the checkpoint."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def report(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        import ray.train

        clean = _clean(metrics)
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if self.rank == 0 else None
        ray.train.report(
            clean,
            checkpoint=checkpoint,
            checkpoint_dir_name=train_checkpoint_name(int(clean["epoch"])),
            # uploaded synchronously first; fit never reads an epoch's folder after reporting it
            delete_local_checkpoint_after_upload=True,
        )


def _kept_checkpoint_path(restored: Any, epoch: int, restored_epoch: int) -> str | None:
    """The storage path of ``epoch``'s checkpoint in the restored checkpoint's Train run, in the form
    ``TuneReportCallback`` reports it; None when Train's retention has deleted it."""
    import pyarrow.fs

    if epoch == restored_epoch:
        return str(restored.path)
    path = posixpath.join(posixpath.dirname(str(restored.path).rstrip("/")), train_checkpoint_name(epoch))
    found = restored.filesystem.get_file_info(posixpath.join(path, CHECKPOINT_FILE))
    return path if found.type == pyarrow.fs.FileType.File else None


def _replay_history(restored: Any, directory: Path) -> None:
    """Report every epoch up to the restored checkpoint again, each with its checkpoint's path.

    Train may have registered epochs that Tune, and so MLflow, never saw: their reports were on
    their way to Tune when the Tune driver died. The tracker skips what it has logged (per metric
    key, so nothing is logged twice) and logs the rest; with the path, a replayed epoch can still
    become the trial's best checkpoint. Every rank replays (a report is a collective call in Train),
    and each replayed report waits for one poll of Train's controller (2 s by default).
    """
    import ray.train

    history = _stored_history(directory)
    restored_epoch = int(history[-1]["epoch"])
    for metrics in history:
        path = _kept_checkpoint_path(restored, int(metrics["epoch"]), restored_epoch)
        ray.train.report({**metrics, "checkpoint_path": path} if path else metrics)


def train_worker_loop(loop_config: dict[str, Any]) -> None:
    """Runs in each Ray Train worker. With ``resources.workers > 1`` TorchTrainer has set up a
    ``torch.distributed`` group (gloo on CPU, NCCL on GPU) and ``fit`` trains data-parallel in it."""
    import ray.train
    import ray.train.torch

    spec: SearchSpec = loop_config["spec"]
    trial: dict[str, Any] = loop_config["trial"]
    _enter_home(spec)
    rank = ray.train.get_context().get_world_rank()
    reporter = TrainReporter(rank)
    trial_id = ray.train.get_context().get_experiment_name().removeprefix("train-")  # the Train run's name
    with attempt_folder(trial_id, f"r{rank}") as run_dir:
        # the GPU Ray gave this worker (cuda:<local index>); CPU workers follow train.device
        device = ray.train.torch.get_device() if spec.resources.gpus_per_worker > 0 else None
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            _fit(spec, trial, reporter, None, run_dir, device)
            return
        with checkpoint.as_directory() as directory:
            _replay_history(checkpoint, Path(directory))
            _fit(spec, trial, reporter, Path(directory), run_dir, device)


def train_driver_trial(config: dict[str, Any], spec: SearchSpec) -> None:
    """The Tune trial of the ``train`` executor: one TorchTrainer run, reported back to Tune."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    res = spec.resources
    per_worker = {"CPU": res.cpus_per_worker}
    if res.gpus_per_worker:
        per_worker["GPU"] = res.gpus_per_worker
    with _deterministic_failures_not_retried(spec, trial_id):
        # An invalid sampled configuration fails here, before a worker group is started for it.
        trial_config(spec, trial_overrides(config), int(config.get("repeat", 0)))
        report_to_tune: list[Any] = [TuneReportCallback()]
        trainer = TorchTrainer(
            train_worker_loop,
            train_loop_config={"spec": spec, "trial": dict(config)},
            scaling_config=ray.train.ScalingConfig(
                num_workers=res.workers, use_gpu=res.gpus_per_worker > 0, resources_per_worker=per_worker
            ),
            run_config=ray.train.RunConfig(
                name=f"train-{trial_id}",  # stable: a restarted trial resumes from Train's checkpoint
                storage_path=train_runs_path(spec),
                callbacks=report_to_tune,
                checkpoint_config=ray.train.CheckpointConfig(
                    num_to_keep=spec.keep_checkpoints,
                    checkpoint_score_attribute=spec.metric,
                    checkpoint_score_order=spec.mode,
                ),
                # Tune's FailureConfig holds the one retry budget (a Tune retry resumes from Train's
                # checkpoint); retries here too would multiply the two.
                failure_config=ray.train.FailureConfig(max_failures=0),
            ),
        )
        try:
            trainer.fit()
        except ray.train.WorkerGroupError as exc:
            # Ray Train hands back each failed worker's own exception.
            cause = next(
                (e for e in exc.worker_failures.values() if isinstance(e, DETERMINISTIC_ERRORS)), None
            )
            if cause is None:
                raise
            raise cause from exc
    # Nothing below fit() is guaranteed to run (Tune stops the trial actor at ASHA decisions).


def make_trainable(spec: SearchSpec) -> Any:
    """The Tune trainable for a (resolved) spec, with its resource request."""
    from ray import tune

    res = spec.resources
    if res.executor == "function":
        fn: Callable[..., None] = function_trial
        resources: dict[str, float] = {"cpu": res.cpus_per_worker}
        if res.gpus_per_worker:
            resources["gpu"] = res.gpus_per_worker
    elif res.executor == "train":
        fn = train_driver_trial
        # {"cpu": 0} alone is rejected by Ray; the custom resource also caps concurrent drivers.
        resources = {"cpu": 0, TRIAL_DRIVER_RESOURCE: 1}
    else:  # spec validation makes this unreachable
        raise ValueError(f"resources.executor {res.executor!r} is not one of train, function")
    return tune.with_resources(tune.with_parameters(fn, spec=spec), resources)


def driver_resources_needed(spec: SearchSpec) -> int:
    """How many ``trial_driver`` units a local Ray needs for the train executor."""
    return max(1, math.ceil(spec.max_concurrent_trials)) if spec.resources.executor == "train" else 0
