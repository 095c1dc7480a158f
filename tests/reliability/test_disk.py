"""Bounded, visible disk use: scratch folders of trial attempts are removed, checkpoints of exported
trials are pruned to their best one, and ``search status`` shows what a search holds.

The unit tests use real processes (an attempt killed with SIGKILL) and a real ``CheckpointStore``.
The search tests run real local Ray in this process with ``TMPDIR`` pointed at a folder of the test
(the driver through ``tempfile.tempdir``, the raylet and its workers through the environment Ray
starts them with), so "no scratch folder is left" is checked exactly, and a Tune callback records
that the folders were there while the trials ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import posixpath
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from integration.search_helpers import tiny_overrides
from ray import tune
from s3_server import s3_bucket  # noqa: F401  (the fixture)

TRIAL = "d15c0_00000"

# ----------------------------------------------------------------------------------------------
# Scratch folders of attempts.
# ----------------------------------------------------------------------------------------------

ATTEMPT = """
import sys, time
from edgeseg.search.scratch import attempt_folder
with attempt_folder(sys.argv[1]) as folder:
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "weights.bin").write_bytes(b"x" * 1000)
    print(folder, flush=True)
    time.sleep(600)
"""


def _attempt(trial_id: str, root: Path) -> tuple[subprocess.Popen[str], Path]:
    """An attempt of ``trial_id`` in its own interpreter, holding its scratch folder under ``root``."""
    env = {**os.environ, "TMPDIR": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-c", ATTEMPT, trial_id], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


@pytest.mark.timeout(60)
def test_a_killed_attempts_scratch_folder_is_removed_when_the_next_attempt_starts(tmp_path, monkeypatch):
    from edgeseg.search.scratch import OWNER_FILE, attempt_folder

    root = tmp_path / "tmp"
    root.mkdir()
    killed, killed_folder = _attempt(TRIAL, root)
    alive, alive_folder = _attempt(TRIAL, root)  # e.g. another Train worker of the same trial
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert killed_folder.is_dir() and alive_folder.is_dir()  # SIGKILL: nobody cleaned up
        elsewhere = root / f"edgeseg-{TRIAL}-shared-tmpdir"  # a dead pid, but on another host
        elsewhere.mkdir()
        (elsewhere / OWNER_FILE).write_text(
            json.dumps({"host": f"not-{socket.gethostname()}", "pid": killed.pid})
        )
        not_ours = root / "edgeseg-export-abc"  # no owner file (the driver's export folders)
        not_ours.mkdir()

        monkeypatch.setattr(tempfile, "tempdir", str(root))
        with attempt_folder(TRIAL, "r0") as folder:
            assert not killed_folder.exists()
            assert alive_folder.is_dir() and (alive_folder / "checkpoints" / "weights.bin").is_file()
            assert elsewhere.is_dir() and not_ours.is_dir()
            assert folder.parent == root and folder.name.startswith(f"edgeseg-{TRIAL}-r0-")
            assert json.loads((folder / OWNER_FILE).read_text()) == {
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
        assert not folder.exists()  # the attempt ended normally

        with pytest.raises(RuntimeError, match="epoch 2 failed"), attempt_folder(TRIAL) as failed:
            raise RuntimeError("epoch 2 failed")
        assert not failed.exists()  # ... or by an exception
        assert sorted(p.name for p in root.iterdir()) == sorted(
            [alive_folder.name, elsewhere.name, not_ours.name]
        )
    finally:
        alive.kill()
        alive.wait(timeout=30)


# ----------------------------------------------------------------------------------------------
# Pruning one trial's checkpoints (function executor store, no Ray).
# ----------------------------------------------------------------------------------------------


def _spec(root: Path, name: str, executor: str = "function", storage: str = "", **extra: Any) -> Any:
    from edgeseg.search.spec import spec_from_mapping

    body = {
        "name": name,
        "base": {"preset": "baseline", "overrides": tiny_overrides(epochs=3)},
        "storage": storage or str(root / "storage"),
        "home": str(root / "home"),
        "mlflow": {
            "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "artifact_location": (root / "artifacts").as_uri(),
        },
        "space": {"train.lr": {"grid": [1e-2]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"},
        "resources": {"executor": executor, "cpus_per_worker": 1},
        **extra,
    }
    return spec_from_mapping(body, source=f"<test {name}>").resolved()


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _stored_bytes(uri: str) -> int:
    """The bytes under a folder of any storage (local or s3://), as pyarrow lists them."""
    import pyarrow.fs as pafs

    from edgeseg.search.storage import StorageFolder

    folder = StorageFolder(uri)
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
    return sum(i.size for i in infos if i.type == pafs.FileType.File)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["local", "s3"])
def test_pruning_keeps_the_best_checkpoint_and_the_resume_point_while_the_trial_may_run(
    tmp_path, where, request
):
    from edgeseg.search.disk import prune_ended_trial, search_disk_use
    from edgeseg.search.trainable import CheckpointStore, trial_runs_path

    storage = request.getfixturevalue("s3_bucket") if where == "s3" else ""
    spec = _spec(tmp_path, "prune-unit", storage=storage)
    store = CheckpointStore(trial_runs_path(spec), TRIAL, keep=2, metric="val/miou", mode="max")
    for epoch, miou in enumerate([0.1, 0.5, 0.3, 0.2], start=1):
        local = tmp_path / f"local_{epoch}"
        local.mkdir()
        (local / "checkpoint.pt").write_bytes(bytes(epoch) * 1000 * epoch)
        store.save(local, {"epoch": epoch, "val/miou": miou})
    on_storage = [name for name in store.folder.list() if name.startswith("epoch_")]
    assert on_storage == ["epoch_0002", "epoch_0003", "epoch_0004"]
    best = store.uri({"dir": "epoch_0002"})
    assert best.startswith(storage or str(tmp_path))

    # ERROR, or an end Tune has not saved yet: the latest checkpoint is where a resume starts
    third = _stored_bytes(store.uri({"dir": "epoch_0003"}))
    result = prune_ended_trial(spec, TRIAL, best, keep_latest=True)
    assert (result.kept, result.deleted, result.freed_bytes, result.kept_latest) == (
        ("epoch_0002", "epoch_0004"), ("epoch_0003",), third, True,
    )  # fmt: skip
    assert [e["dir"] for e in store.entries()] == ["epoch_0002", "epoch_0004"]
    assert store.latest()["dir"] == "epoch_0004"

    # TERMINATED in Tune's saved state: only the best, and the manifest says so before anything goes
    fourth = _stored_bytes(store.uri({"dir": "epoch_0004"}))
    result = prune_ended_trial(spec, TRIAL, best, keep_latest=False)
    assert (result.kept, result.deleted, result.freed_bytes, result.kept_latest) == (
        ("epoch_0002",), ("epoch_0004",), fourth, False,
    )  # fmt: skip
    assert [e["dir"] for e in store.entries()] == ["epoch_0002"]
    assert [name for name in store.folder.list() if name.startswith("epoch_")] == ["epoch_0002"]
    use = search_disk_use(str(spec.storage), spec.name)
    assert (use.checkpoints, use.checkpoint_bytes) == (1, _stored_bytes(best))
    assert use.total_bytes == use.trial_runs_bytes == _stored_bytes(f"{spec.storage}/{spec.name}")

    # a best checkpoint outside the trial's folder: refused, naming it, nothing deleted
    foreign = str(tmp_path / "elsewhere" / "epoch_0002")
    with pytest.raises(ValueError, match=f"best checkpoint {foreign} is not a epoch_\\* folder of"):
        prune_ended_trial(spec, TRIAL, foreign, keep_latest=False)
    with pytest.raises(FileNotFoundError, match="epoch_0009 is missing"):
        prune_ended_trial(spec, TRIAL, store.uri({"dir": "epoch_0009"}), keep_latest=False)
    assert [name for name in store.folder.list() if name.startswith("epoch_")] == ["epoch_0002"]


def _save_tune_state(spec: Any, statuses: dict[str, str], stamp: str) -> None:
    """An experiment state file as Tune's controller writes it (its own ``Trial.get_json_state``)."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

    trials = []
    for trial_id, status in statuses.items():
        trial = Trial("edgeseg_test", config={}, trial_id=trial_id, stub=True)
        trial.set_status(status)
        trials.append(trial.get_json_state())
    folder = Path(str(spec.storage)) / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    state = {"trial_data": trials, "runner_data": {}, "stats": {}}
    (folder / TuneController.CKPT_FILE_TMPL.format(stamp)).write_text(json.dumps(state))


def test_a_trial_keeps_its_resume_point_until_tune_has_saved_its_end(tmp_path):
    """Pruned after its export while Tune's saved state still shows it running (a driver killed now
    would restart it from its latest checkpoint), then pruned to the best by a later export."""
    from edgeseg.search.disk import WAITING, prune_after_export, saved_trial_statuses
    from edgeseg.search.storage import control_folder
    from edgeseg.search.trainable import CheckpointStore, trial_runs_path

    spec = _spec(tmp_path, "waiting")
    trials: dict[str, Any] = {}
    for trial_id in ("a_00000", "b_00001", "c_00002"):
        store = CheckpointStore(trial_runs_path(spec), trial_id, keep=1, metric="val/miou", mode="max")
        for epoch, miou in enumerate([0.5, 0.2, 0.1], start=1):  # best: epoch 1; latest: epoch 3
            local = tmp_path / f"{trial_id}_{epoch}"
            local.mkdir()
            (local / "checkpoint.pt").write_bytes(b"w" * 500)
            store.save(local, {"epoch": epoch, "val/miou": miou})
        trials[trial_id] = store
    tags: list[tuple[str, dict[str, str]]] = []

    def kept(trial_id: str) -> list[str]:
        return [e["dir"] for e in trials[trial_id].entries()]

    def tagged(trial_id: str) -> str:
        return [t for tid, t in tags if tid == trial_id][-1]["checkpoints_pruned"]

    _save_tune_state(spec, {"a_00000": "RUNNING", "b_00001": "RUNNING"}, "2026-11-25_10-00-00")
    prune_after_export(
        spec, "a_00000", trials["a_00000"].uri({"dir": "epoch_0001"}), lambda t, v: tags.append((t, v))
    )
    assert kept("a_00000") == ["epoch_0001", "epoch_0003"] and tagged("a_00000") == "kept_latest"

    # Tune saved both ends (c errored: `search resume` retries it, so it keeps its resume point)
    _save_tune_state(
        spec, {"a_00000": "TERMINATED", "b_00001": "TERMINATED", "c_00002": "ERROR"}, "2026-11-25_10-00-10"
    )
    assert saved_trial_statuses(str(spec.storage), spec.name)["a_00000"] == "TERMINATED"
    prune_after_export(
        spec, "c_00002", trials["c_00002"].uri({"dir": "epoch_0001"}), lambda t, v: tags.append((t, v))
    )
    assert kept("c_00002") == ["epoch_0001", "epoch_0003"] and tagged("c_00002") == "kept_latest"
    assert kept("a_00000") == ["epoch_0001"] and tagged("a_00000") == "true"  # swept by c's export
    prune_after_export(
        spec, "b_00001", trials["b_00001"].uri({"dir": "epoch_0001"}), lambda t, v: tags.append((t, v))
    )
    assert kept("b_00001") == ["epoch_0001"] and tagged("b_00001") == "true"
    assert kept("c_00002") == ["epoch_0001", "epoch_0003"]  # still ERROR in the saved state
    waiting = json.loads(control_folder(str(spec.storage), spec.name).read_text(WAITING))
    assert list(waiting) == ["c_00002"]
    on_disk = sorted(f"{p.parent.name}/{p.name}" for p in Path(trial_runs_path(spec)).glob("*/epoch_*"))
    assert on_disk == ["a_00000/epoch_0001", "b_00001/epoch_0001", "c_00002/epoch_0001", "c_00002/epoch_0003"]


def test_disk_use_sorts_every_byte_into_one_area(tmp_path):
    from edgeseg.search.disk import OUTBOX, disk_use_of, format_disk_use, human_bytes
    from edgeseg.search.outbox import outbox_folder

    spec = _spec(tmp_path, "areas")
    assert (
        outbox_folder(spec, "areas-1") == Path(str(spec.storage)) / "areas" / OUTBOX
    )  # the same folder name
    files = [
        ("trial_runs/t1/epoch_0002/checkpoint.pt", 1000),
        ("trial_runs/t1/manifest.json", 10),
        ("train_runs/train-t2/checkpoint_epoch_0003/checkpoint.pt", 2000),
        ("train_runs/train-t2/checkpoint_manager_snapshot.json", 20),
        ("mlflow-outbox/artifacts/00000001/onnx/model.onnx", 300),
        ("edgeseg/search.json", 4),
        ("experiment_state-2026-11-25_00-00-00.json", 50),
        ("trial_t1/result.json", 6),
    ]
    use = disk_use_of(files)
    assert (use.total_bytes, use.checkpoint_bytes, use.checkpoints) == (3390, 3000, 2)
    assert (use.trial_runs_bytes, use.train_runs_bytes, use.outbox_bytes) == (1010, 2020, 300)
    assert (use.tune_state_bytes, use.control_bytes) == (56, 4)
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 1024**3)] == ["0 B", "1023 B", "1.0 KiB", "5.0 GiB"]
    assert format_disk_use(use).startswith("disk: 3.3 KiB (checkpoints 2.9 KiB in 2; ")


# ----------------------------------------------------------------------------------------------
# Real searches.
# ----------------------------------------------------------------------------------------------


class ScratchWatch(tune.Callback):
    """Records the scratch folders present under ``root`` at every trial result (driver side)."""

    def __init__(self, root: str, record: str) -> None:
        self.root, self.record = root, record

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        names = [p.name for p in Path(self.root).glob("edgeseg-*")]
        with open(self.record, "a") as handle:
            handle.write(json.dumps(names) + "\n")


@pytest.fixture(scope="module")
def ray_tmp(tmp_path_factory):
    """One local Ray for the module, with the driver's and the workers' temp folder in ``root/tmp``."""
    import ray

    root = tmp_path_factory.mktemp("disk")
    scratch = root / "tmp"
    scratch.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESEG_HOME", str(root / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TMPDIR", str(scratch))  # inherited by the raylet and every worker it starts
        mp.setenv("RAY_TMPDIR", os.environ.get("RAY_TMPDIR", "/tmp"))  # Ray's sockets: short paths
        mp.setattr(tempfile, "tempdir", str(scratch))  # this process (the driver) read TMPDIR already
        ray.init(address="local", num_cpus=2, resources={"trial_driver": 1}, log_to_driver=False)
        try:
            yield root
        finally:
            ray.shutdown()


def _search(root: Path, name: str, **extra: Any) -> tuple[Any, Any, list[set[str]]]:
    from edgeseg.search.tuner import run_search

    spec = _spec(root, name, **extra)
    record = root / f"{name}-scratch.jsonl"
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = run_search(spec, callbacks=[ScratchWatch(str(root / "tmp"), str(record))])
    assert outcome.state == "finished", outcome
    seen = [set(json.loads(line)) for line in record.read_text().splitlines()]
    return spec, outcome, seen


def _runs(spec: Any, outcome: Any) -> list[Any]:
    from edgeseg.search.mlflow_runs import client_for, search_runs

    client = client_for(str(spec.mlflow.tracking_uri))
    experiment = client.get_experiment_by_name(spec.experiment_name)
    runs = search_runs(client, experiment.experiment_id, {"search_id": outcome.search_id, "role": "trial"})
    assert len(runs) == outcome.trials
    return runs


def _assert_no_scratch_left(root: Path, trial_ids: list[str], seen: list[set[str]], role: str) -> None:
    for trial_id in trial_ids:
        prefix = f"edgeseg-{trial_id}-{role}"
        assert any(name.startswith(prefix) for names in seen for name in names), (prefix, seen)  # used TMPDIR
        assert [p.name for p in (root / "tmp").glob(f"edgeseg-{trial_id}-*")] == []


def _assert_status_counts_every_byte(spec: Any, kept: list[Path]) -> Any:
    """``search status`` (text and JSON) against the bytes on disk; returns its DiskUse."""
    from edgeseg.search.control import format_status, search_status
    from edgeseg.search.disk import human_bytes

    status = search_status(spec.name, storage=str(spec.storage))
    use = status.disk
    assert use is not None and status.disk_error == ""
    search_folder = Path(str(spec.storage)) / spec.name
    assert use.total_bytes == _tree_bytes(search_folder)  # every file of the search, counted once
    assert (use.checkpoints, use.checkpoint_bytes) == (len(kept), sum(_tree_bytes(p) for p in kept))
    assert use.total_bytes == (
        use.trial_runs_bytes
        + use.train_runs_bytes
        + use.tune_state_bytes
        + use.outbox_bytes
        + use.control_bytes
    )
    assert f"disk: {human_bytes(use.total_bytes)} (checkpoints " in format_status(status)
    assert dataclasses.asdict(status)["disk"]["total_bytes"] == use.total_bytes  # `status --json`
    return use


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_function_search_keeps_only_each_exported_trials_best_checkpoint(ray_tmp):
    from edgeseg.engine.checkpoint import load_checkpoint
    from edgeseg.search.trainable import CheckpointStore

    spec, outcome, seen = _search(
        ray_tmp, "disk-function", space={"train.lr": {"grid": [1e-2, 3e-3]}}, max_concurrent_trials=2,
        keep_checkpoints=2,
    )  # fmt: skip
    runs = _runs(spec, outcome)
    trial_ids = [run.data.tags["ray_trial_id"] for run in runs]
    _assert_no_scratch_left(ray_tmp, trial_ids, seen, role="")
    kept = []
    for run in runs:
        tags = run.data.tags
        folder = Path(str(spec.storage)) / spec.name / "trial_runs" / tags["ray_trial_id"]
        best = posixpath.basename(tags["best_checkpoint"])
        assert tags["onnx"] == "exported" and tags["checkpoints_pruned"] == "true", tags
        assert [p.name for p in folder.glob("epoch_*")] == [best] == [tags["checkpoints_kept"]]
        manifest = json.loads((folder / CheckpointStore.MANIFEST).read_text())["checkpoints"]
        assert [e["dir"] for e in manifest] == [best]
        assert load_checkpoint(folder / best)["epoch"] == int(tags["best_epoch"])  # still loadable
        # keep_checkpoints 2 over 3 epochs left at least 2 checkpoints: at least one was deleted
        assert int(tags["checkpoint_bytes_freed"]) >= _tree_bytes(folder / best) // 2
        kept.append(folder / best)
    use = _assert_status_counts_every_byte(spec, kept)
    # Bounded by the checkpoints: one per trial, and everything else the search keeps (Tune's state,
    # manifests, the control files) is smaller than one more checkpoint.
    checkpoint = max(_tree_bytes(p) for p in kept)
    assert use.total_bytes < (len(runs) + 1) * checkpoint, use


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_train_search_keeps_only_the_best_checkpoint_in_a_snapshot_ray_train_can_load(ray_tmp):
    from ray.train import CheckpointConfig
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager
    from ray.train.v2._internal.execution.storage import StorageContext

    from edgeseg.engine.checkpoint import load_checkpoint
    from edgeseg.search.trainable import train_runs_path

    spec, outcome, seen = _search(ray_tmp, "disk-train", executor="train", keep_checkpoints=1)
    (run,) = _runs(spec, outcome)
    tags = run.data.tags
    trial_id = tags["ray_trial_id"]
    _assert_no_scratch_left(ray_tmp, [trial_id], seen, role="r0-")
    folder = Path(train_runs_path(spec)) / f"train-{trial_id}"
    best = posixpath.basename(tags["best_checkpoint"])
    assert tags["onnx"] == "exported" and tags["checkpoints_pruned"] == "true", tags
    assert [p.name for p in folder.glob("checkpoint_*") if p.is_dir()] == [best]
    assert load_checkpoint(folder / best)["epoch"] == int(tags["best_epoch"])
    use = _assert_status_counts_every_byte(spec, [folder / best])
    assert use.total_bytes < 2 * _tree_bytes(folder / best), use
    # Ray Train's own loader accepts the rewritten snapshot: every checkpoint it lists exists
    storage = StorageContext(train_runs_path(spec), f"train-{trial_id}", read_only=True)
    manager = CheckpointManager(CheckpointConfig(), storage)
    assert [posixpath.basename(r.checkpoint.path) for r in manager._checkpoint_results] == [best]
    assert posixpath.basename(manager.latest_checkpoint_result.checkpoint.path) == best
