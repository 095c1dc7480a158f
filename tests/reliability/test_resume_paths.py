"""Resume and storage paths of the reliability work that the grid/function resume test leaves open.

* Optuna after ``resume``: a driver SIGKILLed mid-search, then ``search resume``: no finished
  configuration is proposed again and Optuna's study continues from the first driver's trials.
* The Train executor on ``s3://`` storage resumes like the function executor.
* A multi-node cluster whose storage is a node-local folder is refused at search start.

Real local Ray, real MLflow SQLite stores and drivers as their own processes (search_helpers); the
storage check runs on a real two- or three-node Ray cluster on this host (``ray.cluster_utils``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from integration.search_helpers import audit_finished_search, outcome_of, start_driver, tiny_overrides
from s3_server import s3_bucket  # noqa: F401  (the fixture)


def mlflow_client(home: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{home.resolve() / 'mlflow' / 'mlflow.db'}")


def kill_when(driver: Any, condition: Any, what: str, timeout: float = 180) -> None:
    """SIGKILL the driver's process group (driver and its local Ray) once ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            assert driver.poll() is None, driver.communicate()[0][-4000:]
            assert time.monotonic() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the whole group has exited already
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


def snapshot(experiment: Path) -> dict[str, str]:
    """Trial id -> Tune status in the newest experiment state Tune saved (what a resume starts from)."""
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    newest = _find_newest_experiment_checkpoint(str(experiment), None) if experiment.exists() else None
    if newest is None:
        return {}
    # Tune copies the file into place: a read can catch it half-written (JSONDecodeError, the caller retries)
    states = [json.loads(t) for t, _ in json.loads(Path(newest).read_text())["trial_data"]]
    return {t["trial_id"]: t["status"] for t in states}


def finished_trials_on_storage(experiment: Path, epochs: int) -> set[str]:
    """Trials whose function-executor checkpoint store holds their last epoch."""
    found = set()
    for manifest in experiment.glob("trial_runs/*/manifest.json"):
        entries = json.loads(manifest.read_text())["checkpoints"]
        if any(e["epoch"] >= epochs for e in entries):
            found.add(manifest.parent.name)
    return found


def optuna_state(experiment: Path) -> dict[str, Any]:
    """The Optuna searcher's state Tune saved last in an experiment folder (``_ot_study``: the study,
    ``_ot_trials``: Tune trial id -> Optuna trial)."""
    newest = max(experiment.glob("searcher-state-*.pkl"))  # named by session start; mtimes are copy times
    with newest.open("rb") as handle:
        return dict(pickle.load(handle))


def tune_configs(experiment: Path) -> dict[str, tuple[int, float]]:
    """Trial id -> (train.batch_size, train.lr) as Tune ran it."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(experiment)).trials
    return {
        t.trial_id: (t.config["overrides"]["train.batch_size"], t.config["overrides"]["train.lr"])
        for t in trials
    }


# ----------------------------------------------------------------------------------------------
# 1. Optuna's history after resume.
# ----------------------------------------------------------------------------------------------


def test_restored_optuna_generator_replays_lost_proposals_under_their_ids(tmp_path):
    """Tune's objects without a cluster: the generator as Tune pickles it at the start, its state as
    Tune saved it after two trials, then two more trials that the save missed (the driver dies). The
    restored generator proposes those two again, with their ids and configurations, although the
    trials end in another order this time and TPE (one startup trial) would propose otherwise."""
    import shutil

    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.experiment import Experiment

    from edgeseg.search.proposals import resumable_optuna

    def trainable(config: dict[str, Any]) -> None:
        pass

    space = {"overrides": {"train.batch_size": tune.choice([2, 4]), "train.lr": tune.uniform(1e-3, 1e-2)}}

    def new_generator(journal: Path) -> Any:
        generator = resumable_optuna(
            TPESampler(seed=0, n_startup_trials=1), "val/miou", "max", 2, str(journal)
        )
        generator.set_search_properties("val/miou", "max", space)
        generator.add_configurations([Experiment("replay", trainable, config=space, num_samples=5,
                                                 storage_path=str(tmp_path / "ray"))])  # fmt: skip
        return generator

    def restored(start: bytes) -> Any:
        generator = pickle.loads(start)
        generator.restore_from_dir(str(tmp_path / "saved"))
        return generator

    generator = new_generator(tmp_path / "proposals")
    start = pickle.dumps(generator)  # what tuner.pkl holds
    t1, t2 = generator.next_trial(), generator.next_trial()
    assert generator.next_trial() is None  # two at a time
    (tmp_path / "saved").mkdir()
    generator.save_to_dir(str(tmp_path / "saved"), "session")  # Tune's last save before the kill
    generator.on_trial_complete(t1.trial_id, {"val/miou": 0.9})
    t3 = generator.next_trial()
    generator.on_trial_complete(t2.trial_id, {"val/miou": 0.1})
    t4 = generator.next_trial()
    prefix = t1.trial_id[:-6]
    assert [t.trial_id for t in (t1, t2, t3, t4)] == [f"{prefix}_{i:05d}" for i in range(1, 5)]

    resumed = restored(start)
    assert resumed.next_trial() is None  # t1 and t2 run again first (Tune restarts them)
    resumed.on_trial_complete(t2.trial_id, {"val/miou": 0.1})  # this time t2 ends first
    r3 = resumed.next_trial()
    resumed.on_trial_complete(t1.trial_id, {"val/miou": 0.9})
    r4 = resumed.next_trial()
    assert [(r.trial_id, r.config) for r in (r3, r4)] == [(t.trial_id, t.config) for t in (t3, t4)]
    resumed.on_trial_complete(r3.trial_id, {"val/miou": 0.5})
    r5 = resumed.next_trial()
    assert r5.trial_id == f"{prefix}_00005" and r5.config not in [t.config for t in (t1, t2, t3, t4)]
    study = resumed.searcher.searcher._ot_study
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert [t.params["overrides/train.lr"] for t in study.trials] == [
        t.config["overrides"]["train.lr"] for t in (t1, t2, t3, t4, r5)
    ]

    # Without the journal the same trial id would get another configuration (and its checkpoints).
    shutil.rmtree(tmp_path / "proposals")
    blind = restored(start)
    blind.next_trial()
    blind.on_trial_complete(t2.trial_id, {"val/miou": 0.1})
    other = blind.next_trial()
    assert other.trial_id == t3.trial_id and other.config != t3.config


OPTUNA_SAMPLES = 5  # two at a time: the kill (when trial 3 or 4 ends) always lands while trial 5 runs


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_optuna_resume_reruns_no_configuration_and_continues_the_study(tmp_path, monkeypatch):
    """The driver is killed after a trial that Tune's last saved state does not know of has finished
    (a real setting, ``TUNE_GLOBAL_CHECKPOINT_S``, widens the window between saves, as slow storage
    does). Before edgeseg.search.proposals the restored sampler proposed the configurations of the
    trials the save missed again, under new ids: a finished trial trained twice, and the first
    driver's runs of them stayed behind (6 MLflow runs for 4 samples, one left RUNNING)."""
    from edgeseg.search.control import read_record

    home, storage = tmp_path / "home", str(tmp_path / "storage")
    body = {
        "name": "optuna-crash",
        "base": {"preset": "baseline", "overrides": tiny_overrides(epochs=2)},
        "space": {"train.batch_size": {"choice": [2, 4]}, "train.lr": {"uniform": [1e-3, 1e-2]}},
        "searcher": {"kind": "optuna", "seed": 3},
        "scheduler": {"kind": "fifo"},
        "resources": {"executor": "function"},
        "num_samples": OPTUNA_SAMPLES,
        "max_concurrent_trials": 2,
        "export_onnx": False,
        "storage": storage,
    }
    experiment = Path(storage) / "optuna-crash"

    def lost_trials() -> set[str]:  # finished on storage, unknown to Tune's saved state
        try:
            return finished_trials_on_storage(experiment, 2) - set(snapshot(experiment))
        except json.JSONDecodeError:
            return set()

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "60")
    kill_when(start_driver("run", body, home), lost_trials, "finished trial missing from Tune's saved state")
    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S")
    lost, saved = lost_trials(), snapshot(experiment)
    saved_study = optuna_state(experiment)["_ot_study"]
    client = mlflow_client(home)
    search_id = read_record("optuna-crash", storage).search_id
    experiment_id = client.get_experiment_by_name("optuna-crash").experiment_id
    query = f"tags.search_id = '{search_id}' and tags.role = 'trial'"

    def ran(run: Any) -> tuple[int, float]:
        return int(run.data.params["train.batch_size"]), float(run.data.params["train.lr"])

    first = {r.data.tags["ray_trial_id"]: ran(r) for r in client.search_runs([experiment_id], query)}
    assert lost and lost <= set(first)
    assert len(finished_trials_on_storage(experiment, 2)) < OPTUNA_SAMPLES, "nothing left to resume"

    resumed = outcome_of(start_driver("resume", body, home), timeout=150)
    assert (resumed["state"], resumed["trials"]) == ("finished", OPTUNA_SAMPLES)
    configs = tune_configs(experiment)
    runs = client.search_runs([experiment_id], query)
    ran_all = {r.data.tags["ray_trial_id"]: ran(r) for r in runs}
    # no configuration ran twice (across both drivers), and no run is left over from the first one
    assert len(set(ran_all.values())) == len(ran_all) == OPTUNA_SAMPLES, ran_all
    assert ran_all == configs
    # every trial the first driver ran went on under its own id and configuration
    assert {t: configs.get(t) for t in first} == first
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/miou")] == [1, 2]
    # Optuna's study: the saved trials first, then one trial per Tune trial, all told
    state = optuna_state(experiment)
    study, by_trial = state["_ot_study"], state["_ot_trials"]
    assert len(saved_study.trials) == len(saved) and len(study.trials) == OPTUNA_SAMPLES
    assert [t.params for t in study.trials[: len(saved)]] == [t.params for t in saved_study.trials]
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    assert sorted(by_trial) == sorted(configs)
    for trial_id, ot_trial in by_trial.items():
        params = ot_trial.params
        assert (params["overrides/train.batch_size"], params["overrides/train.lr"]) == configs[trial_id]


# ----------------------------------------------------------------------------------------------
# 2. The Train executor on s3:// storage.
# ----------------------------------------------------------------------------------------------

TRAIN_EPOCHS = 4


def train_checkpoints_stored(storage: str, name: str) -> int:
    """Ray Train checkpoints persisted so far (``<search>/train_runs/train-<trial>/checkpoint_*``)."""
    import pyarrow.fs as pafs

    from edgeseg.search.storage import StorageFolder

    folder = StorageFolder(f"{storage}/{name}/train_runs")
    if not folder.exists():
        return 0
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
    return sum(
        1 for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_executor_on_s3_resumes_after_sigkill(tmp_path, s3_bucket):  # noqa: F811  (the fixture)
    import onnxruntime as ort

    from edgeseg.search.storage import StorageFolder

    home, storage = tmp_path / "home", s3_bucket
    body = {
        "name": "crash-train",
        "base": {"preset": "baseline", "overrides": tiny_overrides(epochs=TRAIN_EPOCHS)},
        "space": {"train.lr": {"grid": [1e-2, 5e-3]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"},
        "resources": {"executor": "train", "cpus_per_worker": 1},
        "max_concurrent_trials": 2,
        "storage": storage,
    }
    kill_when(
        start_driver("run", body, home),
        lambda: train_checkpoints_stored(storage, "crash-train") >= 2,
        "2 Train checkpoints on s3",
    )
    client = mlflow_client(home)
    experiment = client.get_experiment_by_name("crash-train")
    runs = client.search_runs([experiment.experiment_id], "tags.role = 'trial'") if experiment else []
    logged = sum(len(client.get_metric_history(r.info.run_id, "val/miou")) for r in runs)
    assert logged < 2 * TRAIN_EPOCHS, "the search finished before it was killed; nothing to resume"

    resumed = outcome_of(start_driver("resume", body, home), timeout=240)
    assert (resumed["state"], resumed["trials"]) == ("finished", 2)
    runs = audit_finished_search(client, storage, "crash-train", TRAIN_EPOCHS)
    for run in runs:
        assert run.data.tags["best_checkpoint"].startswith(f"{storage}/crash-train/train_runs/")
        model = client.download_artifacts(run.info.run_id, "onnx/model.onnx", str(tmp_path))
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == ["masks"]
    assert not (tmp_path / "storage").exists()  # nothing went to local disk instead of s3
    assert len(StorageFolder(f"{storage}/crash-train/train_runs").list()) == 2


# ----------------------------------------------------------------------------------------------
# 3. Node-local storage on a multi-node cluster is refused.
# ----------------------------------------------------------------------------------------------


def alive_nodes() -> list[str]:
    import ray

    return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


def wait_for_nodes(count: int, proc: Any = None, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(alive_nodes()) < count:
        assert proc is None or proc.poll() is None, "the Ray node process exited"
        assert time.monotonic() < deadline, f"fewer than {count} alive Ray nodes after {timeout} s"
        time.sleep(0.2)
    return alive_nodes()


@pytest.fixture
def cluster():
    """A real Ray cluster on this host (``ray.cluster_utils.Cluster``), head node only; the test
    process is its driver and adds nodes."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def stop_node(proc: subprocess.Popen[bytes]) -> None:
    """End a ``ray start --block`` node: its raylet and workers are all in its own process group."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def node_local_storage_possible() -> bool:
    """Can this host give a process a mount namespace of its own (root, or CAP_SYS_ADMIN)?"""
    probe = ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /mnt"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_local_storage_every_node_sees_passes_and_remote_or_single_node_is_not_probed(cluster, tmp_path):
    from edgeseg.search.shared_storage import NodeLocalStorageError, check_shared_storage

    storage = tmp_path / "storage"
    assert check_shared_storage(str(storage)) == []  # one node: nothing to probe
    (head,) = alive_nodes()
    cluster.add_node(num_cpus=1)
    (worker,) = set(wait_for_nodes(2)) - {head}

    (view,) = check_shared_storage(str(storage))  # both nodes on this host see one folder
    assert (view.node_id, view.error) == (worker, "") and len(view.seen or "") == 32
    assert check_shared_storage("s3://edgeseg-searches/team") == []  # shared by nature: not probed
    with pytest.raises(NodeLocalStorageError) as refused:
        check_shared_storage(str(storage), timeout_s=0.001)
    message = str(refused.value)
    assert str(storage) in message and worker[:12] in message
    assert "did not answer within the probe's timeout of 0.001 s" in message
    assert not list(storage.glob(".edgeseg-storage-probe-*"))  # the marker is removed either way


@pytest.mark.integration
@pytest.mark.timeout(90)
@pytest.mark.skipif(not node_local_storage_possible(), reason="needs `unshare -m` (root or CAP_SYS_ADMIN)")
def test_a_node_with_its_own_folder_at_the_storage_path_is_refused(cluster, tmp_path):
    """Two more nodes run in mount namespaces of their own, where the storage path is a tmpfs: the
    same path on another disk, as on other machines. One is empty; the other holds a marker of the
    same name from an earlier driver (another nonce). Nothing about the probe is faked."""
    import socket

    from edgeseg.config import ConfigError
    from edgeseg.search.shared_storage import NodeLocalStorageError
    from edgeseg.search.spec import spec_from_mapping
    from edgeseg.search.tuner import _init_ray

    storage = tmp_path / "storage"
    storage.mkdir()
    cluster.add_node(num_cpus=1)  # shares the folder: not blamed
    shared = set(wait_for_nodes(2))

    def node_in_own_namespace(setup: str) -> subprocess.Popen[bytes]:
        ray_start = (
            f"{sys.executable} -m ray.scripts.scripts start --address={cluster.address} --num-cpus=0 --block"
        )
        command = f"mount -t tmpfs none {storage} && {setup}exec {ray_start}"
        return subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", command],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip

    stale = f"echo -n stale > {storage}/.edgeseg-storage-probe-{socket.gethostname()}-{os.getpid()} && "
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        for setup in ("", stale):  # one after the other: a node takes free ports when it starts
            nodes.append(node_in_own_namespace(setup))
            wait_for_nodes(len(shared) + len(nodes), nodes[-1])
        own_folders = set(alive_nodes()) - shared
        spec = spec_from_mapping(
            {"name": "shared", "base": {"preset": "baseline"}, "searcher": {"kind": "grid"},
             "resources": {"executor": "function"}, "storage": str(storage)},
            source="<test shared storage>",
        ).resolved()  # fmt: skip
        with pytest.raises(NodeLocalStorageError) as refused:
            _init_ray(spec, None, None)  # where run and resume meet Ray; connected already
        message = str(refused.value)
        assert f"search storage {storage} is not shared by the 4 alive nodes" in message
        assert "2 node(s) could not read it back" in message
        blamed = [line for line in message.splitlines() if line.startswith("  - node ")]
        assert sorted(line.split("node id ")[1][:12] for line in blamed) == sorted(
            n[:12] for n in own_folders
        )
        assert sorted(line.split("): ")[1] for line in blamed) == [
            "found the marker with another nonce: a folder of its own at the same path",
            "no such file there",
        ]
        assert "NFS path mounted at the same place on every node, or to s3://" in message
        assert isinstance(refused.value, ConfigError)  # the CLI prints it and exits 2
        assert not list(storage.glob(".edgeseg-storage-probe-*"))
    finally:
        for node in nodes:
            stop_node(node)
