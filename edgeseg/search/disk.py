"""A search's disk use, bounded and shown: checkpoints of ended trials pruned to the one their ONNX
came from, and the bytes a search holds in its storage folder.

Where a search's bytes are (``<storage>/<name>/``)::

    trial_runs/<trial>/epoch_NNNN/          function executor checkpoints (+ manifest.json)
    train_runs/train-<trial>/checkpoint_*/  Ray Train checkpoints (+ checkpoint_manager_snapshot.json)
    mlflow-outbox/                          MLflow writes not delivered yet, ONNX copies included
                                            (local storage only; see ``outbox.outbox_folder``)
    edgeseg/                                search record, driver record, stop requests
    everything else                         Tune's state: experiment_state-*.json, tuner.pkl,
                                            searcher state, trial_<id>/ result folders

Once a trial's ONNX is logged (``MlflowTracker._log_export``), its checkpoints are pruned to its
best one, the ``best_checkpoint`` the ONNX was exported from; the others are not needed for the
ONNX, delivered or not. A trial that Tune may still run keeps its latest checkpoint too, because
that is where it would resume: one whose status in Tune's newest *saved* experiment state is not
``TERMINATED`` (``ERROR``: ``search resume`` retries it; ``RUNNING``/``PENDING``: the driver has
not saved its end yet, and a driver killed now would restart it). Such a trial is tagged
``checkpoints_pruned=kept_latest`` and listed in ``edgeseg/checkpoints_kept_latest.json``; a later
export of the search prunes it to the best once the saved state says ``TERMINATED`` (and a resumed
trial is pruned again when it ends). The manifest (function executor) or Train's checkpoint manager
snapshot is rewritten before anything is deleted, as ``CheckpointStore`` and Ray Train themselves
do, so a kill mid-prune leaves only unlisted folders, which the next prune deletes. A failed prune
is tagged on the run (``checkpoints_pruned=failed: ...``) and never stops the search.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from edgeseg.search.scratch import remove_stale_attempt_folders
from edgeseg.search.spec import SearchSpec
from edgeseg.search.storage import StorageFolder, control_folder, experiment_uri
from edgeseg.secrets import redact_uri

TUNE_STATE_FILES = "experiment_state-*.json"  # TuneController.CKPT_FILE_TMPL
log = logging.getLogger("edgeseg.search.disk")

TAG_CHECKPOINTS_PRUNED = "checkpoints_pruned"  # true | kept_latest | failed: <why>
TAG_CHECKPOINTS_KEPT = "checkpoints_kept"  # the kept checkpoint folders' names, comma-separated
TAG_CHECKPOINT_BYTES_FREED = "checkpoint_bytes_freed"  # by this run's prunes, all together
PRUNED, KEPT_LATEST = "true", "kept_latest"

TRIAL_RUNS, TRAIN_RUNS, OUTBOX, CONTROL = "trial_runs", "train_runs", "mlflow-outbox", "edgeseg"
TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's list of a run's checkpoints
# In the control folder: trials that kept their latest checkpoint -> {"best": uri, "freed": bytes}
WAITING = "checkpoints_kept_latest.json"


# ----------------------------------------------------------------------------------------------
# Tune's saved view of the trials.
# ----------------------------------------------------------------------------------------------


def saved_trials(uri: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Trial id -> (status, last result) in the newest experiment state Tune saved at ``uri`` (what
    ``search resume`` starts from): one JSON file read, not Ray's ``ExperimentAnalysis``, which
    also reads every trial's result file. Empty when there is none; raises when it is unreadable."""
    folder = StorageFolder(uri)
    # Tune's own lookup (experiment_state._find_newest_experiment_checkpoint) without importing Tune:
    # the newest of its experiment_state-<timestamp>.json files, by name
    saved = fnmatch.filter(folder.list(), TUNE_STATE_FILES) if folder.exists() else []
    if not saved:
        return {}
    with folder.fs.open_input_stream(f"{folder.path}/{max(saved)}") as handle:
        state = json.loads(handle.read().decode())
    trials = {}
    for trial_json, metadata_json in state["trial_data"]:
        trial, metadata = json.loads(trial_json), json.loads(metadata_json)
        trials[str(trial["trial_id"])] = (str(trial["status"]), dict(metadata.get("last_result") or {}))
    return trials


def saved_trial_statuses(storage: str, name: str) -> dict[str, str]:
    """Trial id -> status in Tune's newest saved experiment state; empty when there is none or it
    cannot be read."""
    try:
        return {
            trial_id: status for trial_id, (status, _) in saved_trials(experiment_uri(storage, name)).items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("search %s: Tune's saved experiment state could not be read: %s", name, exc)
        return {}


# ----------------------------------------------------------------------------------------------
# Pruning one trial's checkpoints.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneResult:
    trial_id: str
    kept: tuple[str, ...]  # checkpoint folder names, oldest first
    deleted: tuple[str, ...]
    freed_bytes: int
    kept_latest: bool  # the trial may still run: its latest checkpoint stays as well


def _tree_bytes(folder: StorageFolder, name: str) -> int:
    import pyarrow.fs as pafs

    infos = folder.fs.get_file_info(pafs.FileSelector(f"{folder.path}/{name}", recursive=True))
    return sum(int(i.size or 0) for i in infos if i.type == pafs.FileType.File)


def checkpoint_names(folder: StorageFolder, prefix: str) -> list[str]:
    """The checkpoint folders in a trial's folder (``checkpoint_manager_snapshot.json`` is a file)."""
    import pyarrow.fs as pafs

    if not folder.exists():
        return []
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.path))
    return sorted(
        i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix)
    )


def _delete_unlisted(folder: StorageFolder, prefix: str, kept: set[str]) -> tuple[tuple[str, ...], int]:
    deleted, freed = [], 0
    for name in checkpoint_names(folder, prefix):
        if name not in kept:
            freed += _tree_bytes(folder, name)
            folder.delete_dir(name)
            deleted.append(name)
    return tuple(deleted), freed


def _prune_function_store(folder: StorageFolder, best: str, keep_latest: bool) -> tuple[set[str], bool]:
    """Rewrites the trial's manifest to the kept checkpoints; returns their names."""
    from edgeseg.search.trainable import CheckpointStore  # torch: not for `search status`

    if not folder.exists(CheckpointStore.MANIFEST):
        return {best}, False
    entries = json.loads(folder.read_text(CheckpointStore.MANIFEST))["checkpoints"]
    latest = max(entries, key=lambda e: e["epoch"])["dir"] if entries else best
    kept = {best, latest} if keep_latest else {best}
    survivors = sorted((e for e in entries if e["dir"] in kept), key=lambda e: e["epoch"])
    folder.write_text(CheckpointStore.MANIFEST, json.dumps({"checkpoints": survivors}))
    return kept, keep_latest and latest != best


def _keep_parallel(
    snapshot: dict[str, Any], results: str, partners: str, kept: set[str]
) -> list[tuple[Any, Any]]:
    """Filter two parallel lists of Train's snapshot to the results whose checkpoint is kept."""
    pairs = [
        (result, partner)
        for result, partner in zip(snapshot[results], snapshot[partners], strict=True)
        if result["checkpoint_dir_name"] in kept
    ]
    snapshot[results] = [result for result, _ in pairs]
    snapshot[partners] = [partner for _, partner in pairs]
    return pairs


def _prune_train_snapshot(folder: StorageFolder, best: str, keep_latest: bool) -> tuple[set[str], bool]:
    """Rewrites Ray Train's checkpoint manager snapshot to the kept checkpoints; returns their names.

    The snapshot's ``latest_checkpoint_result`` is where Train resumes, and must be one of its
    ``checkpoint_results``: when only the best is kept, the best becomes the latest.
    """
    if not folder.exists(TRAIN_SNAPSHOT):
        return {best}, False
    snapshot = json.loads(folder.read_text(TRAIN_SNAPSHOT))
    latest_result = snapshot.get("latest_checkpoint_result") or {}
    latest = str(latest_result.get("checkpoint_dir_name") or best)
    kept = {best, latest} if keep_latest else {best}
    pairs = _keep_parallel(snapshot, "checkpoint_results", "checkpoint_report_indices", kept)
    if latest not in kept:
        snapshot["latest_checkpoint_result"] = max(pairs, key=lambda p: p[1])[0] if pairs else None
    _keep_parallel(snapshot, "pending_training_results", "pending_validation_specs", kept)
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):  # fmt: skip
        snapshot[key] = [name for name in snapshot.get(key, []) if name in kept]
    folder.write_text(TRAIN_SNAPSHOT, json.dumps(snapshot))
    return kept, keep_latest and latest != best


def trial_checkpoint_folder(spec: SearchSpec, trial_id: str) -> tuple[StorageFolder, str]:
    """The folder holding a trial's checkpoints, and the prefix of their names."""
    from edgeseg.search.trainable import train_runs_path, trial_runs_path  # torch: not for `search status`

    if spec.resources.executor == "function":
        return StorageFolder(trial_runs_path(spec)).child(trial_id), "epoch_"
    return StorageFolder(train_runs_path(spec)).child(f"train-{trial_id}"), "checkpoint_"


def prune_ended_trial(
    spec: SearchSpec, trial_id: str, best_checkpoint: str, keep_latest: bool
) -> PruneResult:
    """Delete every checkpoint of an ended trial but ``best_checkpoint`` (and, with ``keep_latest``,
    the one it would resume from). The list of checkpoints is rewritten before anything is deleted."""
    folder, prefix = trial_checkpoint_folder(spec, trial_id)
    best = posixpath.basename(best_checkpoint.rstrip("/"))
    parent = posixpath.basename(posixpath.dirname(best_checkpoint.rstrip("/")))
    if parent != posixpath.basename(folder.path) or not best.startswith(prefix):
        raise ValueError(
            f"trial {trial_id}: best checkpoint {best_checkpoint} is not a {prefix}* folder of {folder.uri}; "
            "nothing pruned"
        )
    if not folder.exists(best):
        raise FileNotFoundError(
            f"trial {trial_id}: best checkpoint {best_checkpoint} is missing; nothing pruned"
        )
    rewrite = _prune_function_store if prefix == "epoch_" else _prune_train_snapshot
    kept, kept_latest = rewrite(folder, best, keep_latest)
    deleted, freed = _delete_unlisted(folder, prefix, kept)
    return PruneResult(trial_id, tuple(checkpoint_names(folder, prefix)), deleted, freed, kept_latest)


# ----------------------------------------------------------------------------------------------
# After a trial's ONNX is logged (the one call in tracking.MlflowTracker._log_export).
# ----------------------------------------------------------------------------------------------

# Tags one trial's MLflow run: ``tag(trial_id, tags)`` (the tracker journals it in its outbox).
Tagger = Callable[[str, dict[str, str]], None]


def _prune_and_tag(
    spec: SearchSpec, trial_id: str, best: str, keep_latest: bool, freed_before: int, tag: Tagger
) -> PruneResult | None:
    try:
        result = prune_ended_trial(spec, trial_id, best, keep_latest)
    # storage trouble or an unexpected layout: recorded on the run; the search goes on
    except Exception as exc:
        log.warning("pruning the checkpoints of trial %s failed: %s", trial_id, exc)
        tag(trial_id, {TAG_CHECKPOINTS_PRUNED: f"failed: {type(exc).__name__}: {exc}"[:4900]})
        return None
    tag(trial_id, {
        TAG_CHECKPOINTS_PRUNED: KEPT_LATEST if result.kept_latest else PRUNED,
        TAG_CHECKPOINTS_KEPT: ",".join(result.kept),
        TAG_CHECKPOINT_BYTES_FREED: str(freed_before + result.freed_bytes),
    })  # fmt: skip
    log.info("trial %s: kept checkpoints %s, deleted %s (%s)", trial_id, ", ".join(result.kept),
             ", ".join(result.deleted) or "none", human_bytes(result.freed_bytes))  # fmt: skip
    return result


def _read_waiting(folder: StorageFolder) -> dict[str, dict[str, Any]]:
    try:
        return dict(json.loads(folder.read_text(WAITING))) if folder.exists(WAITING) else {}
    except (OSError, ValueError, TypeError) as exc:  # lost: those trials keep their latest checkpoint
        log.warning("%s/%s could not be read: %s", folder.uri, WAITING, exc)
        return {}


def prune_after_export(spec: SearchSpec, trial_id: str, best_checkpoint: str, tag: Tagger) -> None:
    """A trial's ONNX is logged: prune its checkpoints to ``best_checkpoint`` (plus its latest while
    Tune may still run it, see the module docstring), then every earlier trial of the search that
    kept its latest checkpoint and has since ended for good in Tune's saved state. Scratch folders
    of gone processes on this host go too. Never raises: a failure is tagged on the trial's run."""
    try:
        remove_stale_attempt_folders()
        statuses = saved_trial_statuses(str(spec.storage), spec.name)
        control = control_folder(str(spec.storage), spec.name)
        waiting = _read_waiting(control)
        earlier = int(waiting.get(trial_id, {}).get("freed", 0))  # a resumed trial, pruned before
        todo: dict[str, dict[str, Any]] = {trial_id: {"best": best_checkpoint, "freed": earlier}}
        todo.update({t: w for t, w in waiting.items() if t != trial_id and statuses.get(t) == "TERMINATED"})
        for tid, entry in todo.items():
            freed = int(entry.get("freed", 0))
            result = _prune_and_tag(
                spec, tid, str(entry["best"]), statuses.get(tid) != "TERMINATED", freed, tag
            )
            if result is not None and result.kept_latest:
                waiting[tid] = {"best": entry["best"], "freed": freed + result.freed_bytes}
            elif result is not None or tid == trial_id:
                waiting.pop(tid, None)
        control.write_text(WAITING, json.dumps(waiting, indent=1))
    except Exception as exc:  # never the search's end
        log.warning("pruning checkpoints after the export of trial %s failed: %s", trial_id, exc)
        tag(trial_id, {TAG_CHECKPOINTS_PRUNED: f"failed: {type(exc).__name__}: {exc}"[:4900]})


# ----------------------------------------------------------------------------------------------
# Disk use of a search.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskUse:
    """Bytes of a search's storage folder (file sizes, as the storage reports them)."""

    total_bytes: int
    checkpoint_bytes: int  # trial checkpoints, both executors (inside trial_runs and train_runs)
    checkpoints: int
    trial_runs_bytes: int  # function executor: checkpoints and manifests
    train_runs_bytes: int  # Train executor: checkpoints and snapshots
    tune_state_bytes: int  # Tune's experiment state, searcher state and trial result folders
    outbox_bytes: int  # MLflow writes not delivered yet (local storage)
    control_bytes: int  # edgeseg's search record, driver record and stop requests
    uri: str = ""


def _checkpoint_of(parts: list[str]) -> str | None:
    """The checkpoint folder (``area/trial/name``) a file belongs to, if any."""
    if len(parts) > 3 and parts[0] == TRIAL_RUNS and parts[2].startswith("epoch_"):
        return "/".join(parts[:3])
    if len(parts) > 3 and parts[0] == TRAIN_RUNS and parts[2].startswith("checkpoint_"):
        return "/".join(parts[:3])
    return None


def disk_use_of(files: Iterable[tuple[str, int]], uri: str = "") -> DiskUse:
    """Sum ``(path relative to the search folder, size)`` pairs into a :class:`DiskUse`."""
    areas = {TRIAL_RUNS: 0, TRAIN_RUNS: 0, OUTBOX: 0, CONTROL: 0, "": 0}
    checkpoint_bytes, checkpoints = 0, set()
    for path, size in files:
        parts = path.split("/")
        areas[parts[0] if parts[0] in areas else ""] += size
        checkpoint = _checkpoint_of(parts)
        if checkpoint is not None:
            checkpoint_bytes += size
            checkpoints.add(checkpoint)
    return DiskUse(sum(areas.values()), checkpoint_bytes, len(checkpoints), areas[TRIAL_RUNS],
                   areas[TRAIN_RUNS], areas[""], areas[OUTBOX], areas[CONTROL], uri)  # fmt: skip


def search_disk_use(storage: str, name: str) -> DiskUse:
    """What the search ``name`` holds under ``<storage>/<name>`` (local or ``s3://``), by area."""
    import pyarrow.fs as pafs

    folder = StorageFolder(experiment_uri(storage, name))
    if not folder.exists():
        return disk_use_of([], redact_uri(folder.uri))
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
    root = folder.path.rstrip("/") + "/"
    files = [(i.path[len(root) :], int(i.size or 0)) for i in infos if i.type == pafs.FileType.File]
    return disk_use_of(files, redact_uri(folder.uri))


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_disk_use(use: DiskUse) -> str:
    return (
        f"disk: {human_bytes(use.total_bytes)} (checkpoints {human_bytes(use.checkpoint_bytes)} in "
        f"{use.checkpoints}; trial_runs {human_bytes(use.trial_runs_bytes)}, train_runs "
        f"{human_bytes(use.train_runs_bytes)}, Tune state {human_bytes(use.tune_state_bytes)}, "
        f"MLflow outbox {human_bytes(use.outbox_bytes)}, control {human_bytes(use.control_bytes)})"
    )
