"""One live driver per search, SIGTERM as a clean stop, errored trials leave a search incomplete,
and status/stop from a host that sees MLflow (or storage) at another address.

The lease tests race real processes on a real lock file. The search tests run the ``edgeseg`` CLI
as real processes on real local Ray with a SQLite MLflow store, the way a shell, ``ray job stop``,
``docker compose down`` or Kubernetes would drive them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import race_two_processes
from integration.search_helpers import tiny_overrides

# ----------------------------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------------------------


def edgeseg(args: list[str], home: Path) -> subprocess.Popen[str]:
    """``edgeseg ARGS`` as its own process (own session: its local Ray dies with its group)."""
    env = {**os.environ, "EDGESEG_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "edgeseg.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"`edgeseg` did not end within {timeout} s:\n{out[-4000:]}")
    return proc.returncode, out


def wait_for(
    condition: Any, what: str, driver: subprocess.Popen[str] | None = None, timeout: float = 240
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if driver is not None and driver.poll() is not None:
            pytest.fail(f"the driver exited while waiting for {what}:\n{driver.communicate()[0][-4000:]}")
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def kill_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def write_spec(path: Path, body: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def json_of(out: str) -> dict[str, Any]:
    """The JSON document ``--json`` printed (log lines may surround it)."""
    start = out.index("\n{") + 1 if not out.startswith("{") else 0
    return dict(json.JSONDecoder().raw_decode(out[start:])[0])


def mlflow_client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def steps(client: Any, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# ----------------------------------------------------------------------------------------------
# The lease, without Ray.
# ----------------------------------------------------------------------------------------------


def _take_lease(storage: str, barrier: Any, results: Any) -> None:
    from edgeseg.search.control import DriverLease, DriverRunningError

    lease = DriverLease(storage, "race")
    barrier.wait()
    try:
        lease.acquire()
    except DriverRunningError as exc:
        results.put(("refused", os.getpid(), str(exc)))
        return
    results.put(("won", os.getpid(), ""))
    time.sleep(3.0)  # held while the other one tries
    lease.release()


@pytest.mark.timeout(180)
def test_of_two_drivers_started_together_exactly_one_takes_the_lease(tmp_path):
    from edgeseg.search.control import DriverLease

    storage = str(tmp_path / "storage")
    outcomes = race_two_processes(_take_lease, (storage,))
    won = [o for o in outcomes if o[0] == "won"]
    refused = [o for o in outcomes if o[0] == "refused"]
    assert len(won) == 1 and len(refused) == 1, outcomes
    message = refused[0][2]
    assert f"pid {won[0][1]} on host {socket.gethostname()}, since " in message, message
    assert "search 'race' already has a live driver" in message
    with DriverLease(storage, "race"):  # released: free again, for anyone
        pass


@pytest.mark.timeout(60)
def test_the_heartbeat_runs_from_the_record_until_the_driver_exits(tmp_path, monkeypatch):
    """No Tune loop is needed: a driver busy preparing caches (here: sleeping) still beats."""
    from edgeseg.search import control

    monkeypatch.setattr(control, "HEARTBEAT_S", 0.1)
    storage = str(tmp_path / "storage")
    folder = control.control_folder(storage, "busy")

    def beat() -> float:
        return float(json.loads(folder.read_text("driver.json"))["heartbeat"])

    with (
        pytest.raises(RuntimeError, match="cache build failed"),
        control.DriverLease(storage, "busy") as lease,
    ):
        lease.start("preparing")
        first = beat()
        time.sleep(0.8)
        assert beat() > first
        assert control.driver_state("busy", storage)["state"] == "preparing"
        assert control.live_driver(storage, "busy").pid == os.getpid()
        raise RuntimeError("cache build failed")
    record = json.loads(folder.read_text("driver.json"))
    assert record["state"] == "failed" and record["pid"] == os.getpid()
    stopped_at = beat()
    time.sleep(0.5)
    assert beat() == stopped_at  # the heartbeat ended with the driver
    assert control.live_driver(storage, "busy") is None
    assert control.driver_state("busy", storage)["state"] == "failed"


def test_a_live_pid_on_this_host_counts_whatever_the_age_of_its_heartbeat(tmp_path):
    from edgeseg.search.control import GONE, DriverHolder, control_folder, driver_state

    here, hour_ago = socket.gethostname(), time.time() - 3600
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        assert DriverHolder(sleeper.pid, here, hour_ago, hour_ago).presumed_alive()
        assert DriverHolder(sleeper.pid, "elsewhere", hour_ago, time.time()).presumed_alive()
        assert not DriverHolder(sleeper.pid, "elsewhere", hour_ago, hour_ago).presumed_alive()
        # A record without a lease file (an object store's lease gone, or a driver from before
        # leases): a stale heartbeat alone does not make a live process "gone".
        storage = str(tmp_path / "storage")
        record = {
            "pid": sleeper.pid,
            "host": here,
            "since": hour_ago,
            "heartbeat": hour_ago,
            "state": "running",
        }
        control_folder(storage, "old").write_text("driver.json", json.dumps(record))
        assert driver_state("old", storage)["state"] == "running"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not DriverHolder(sleeper.pid, here, hour_ago, time.time()).presumed_alive()
    assert driver_state("old", storage)["state"] == GONE


@pytest.mark.timeout(120)
def test_run_fresh_is_refused_while_the_search_has_a_driver_and_deletes_nothing(tmp_path, monkeypatch):
    from edgeseg.search.control import DriverLease, DriverRunningError
    from edgeseg.search.spec import spec_from_mapping
    from edgeseg.search.tuner import run_search

    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    storage = tmp_path / "storage"
    spec = spec_from_mapping({"name": "busy", "base": {"preset": "baseline", "overrides": tiny_overrides(1)},
                              "space": {"train.lr": {"grid": [1e-2]}}, "searcher": {"kind": "grid"},
                              "storage": str(storage), "resources": {"executor": "function"}})  # fmt: skip
    marker = storage / "busy" / "edgeseg" / "search.json"
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    with DriverLease(str(storage), "busy") as lease:
        lease.start("running")
        with pytest.raises(
            DriverRunningError, match=f"pid {os.getpid()} on host {socket.gethostname()}, since "
        ):
            run_search(spec, fresh=True, progress=False)
    assert marker.read_text() == "{}"


@pytest.mark.timeout(60)
def test_stop_one_trial_needs_only_the_storage_folder(tmp_path, monkeypatch):
    """The recorded MLflow address does not resolve (``.invalid`` never does): stopping a trial
    still works at once, from the trials the storage folder knows."""
    from edgeseg.search.control import DriverLease, request_stop, trial_states, write_record
    from edgeseg.search.spec import spec_from_mapping

    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    storage = tmp_path / "storage"
    spec = spec_from_mapping({"name": "remote", "base": {"preset": "baseline", "overrides": tiny_overrides(1)},
                              "space": {"train.lr": {"grid": [1e-2]}}, "searcher": {"kind": "grid"},
                              "storage": str(storage), "resources": {"executor": "function"},
                              "mlflow": {"tracking_uri": "http://mlflow.invalid:5000"}}).resolved()  # fmt: skip
    write_record(spec, "remote-1")
    (storage / "remote" / "trial_runs" / "a1b2c3d4").mkdir(parents=True)  # a started trial's checkpoints
    (storage / "remote" / "train_runs" / "train-e5f6a7b8").mkdir(parents=True)  # a Ray Train trial's
    assert trial_states(str(storage), "remote") == {"a1b2c3d4": "UNKNOWN", "e5f6a7b8": "UNKNOWN"}
    with DriverLease(str(storage), "remote") as lease:
        lease.start("running")
        started = time.monotonic()
        message = request_stop("remote", trial_id="a1b2c3d4", storage=str(storage))
        assert time.monotonic() - started < 10  # no MLflow client retrying a dead address
        with pytest.raises(Exception, match="has no trial 'nope'; trials: a1b2c3d4, e5f6a7b8"):
            request_stop("remote", trial_id="nope", storage=str(storage))
    assert "asked trial a1b2c3d4 of search 'remote' to stop" in message
    assert (storage / "remote" / "edgeseg" / "stop" / "a1b2c3d4").is_file()


# ----------------------------------------------------------------------------------------------
# A search stopped by SIGTERM, then resumed by the one of two concurrent resumes that wins.
# ----------------------------------------------------------------------------------------------

EPOCHS = 240  # ~0.15 s each here: long enough to be stopped mid-way, twice, on a loaded machine too


@pytest.fixture(scope="module")
def sigterm_search(tmp_path_factory):
    """``search run`` of two trials; one trial stopped with ``search stop --trial`` from another
    process, then the driver SIGTERMed mid-search."""
    root = tmp_path_factory.mktemp("sigterm")
    home, storage = root / "home", root / "storage"
    spec_path = write_spec(root / "relay.yaml", {
        "name": "relay",
        "base": {"preset": "baseline", "overrides": tiny_overrides(EPOCHS)},
        "space": {"train.lr": {"grid": [1e-2, 5e-3]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"},  # nothing else prunes
        "resources": {"executor": "function"},
        "max_concurrent_trials": 2,
        "storage": str(storage),
    })  # fmt: skip
    tracking = f"sqlite:///{(home / 'mlflow' / 'mlflow.db').resolve()}"
    driver = edgeseg(["search", "run", str(spec_path), "--num-cpus", "2", "--quiet"], home)
    try:

        def started() -> list[str]:
            ids = sorted(p.parent.name for p in (storage / "relay" / "trial_runs").glob("*/manifest.json"))
            return ids if len(ids) == 2 else []

        target, other = wait_for(started, "both trials' first epoch", driver)
        stop = ["search", "stop", "relay", "--trial", target, "--storage", str(storage)]
        stop_code, stop_out = finish(edgeseg(stop, home), timeout=120)
        client = mlflow_client(tracking)

        def target_pruned() -> list[Any]:
            experiment = client.get_experiment_by_name("relay")
            return client.search_runs(
                [experiment.experiment_id], f"tags.ray_trial_id = '{target}' and tags.pruned = 'true'"
            )

        if stop_code == 0:
            wait_for(target_pruned, "the stopped trial's end", driver)
        os.kill(driver.pid, signal.SIGTERM)  # the driver only, as docker or Kubernetes would
        code, out = finish(driver, timeout=240)
    finally:
        kill_group(driver)
    return {"root": root, "home": home, "storage": storage, "spec": spec_path, "tracking": tracking,
            "target": target, "other": other, "stop": (stop_code, stop_out), "code": code, "out": out}  # fmt: skip


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stop_trial_from_another_process_prunes_that_trial(sigterm_search):
    code, out = sigterm_search["stop"]
    assert code == 0, out
    assert f"asked trial {sigterm_search['target']} of search 'relay' to stop" in out
    client = mlflow_client(sigterm_search["tracking"])
    experiment = client.get_experiment_by_name("relay")
    (run,) = client.search_runs(
        [experiment.experiment_id], f"tags.ray_trial_id = '{sigterm_search['target']}'"
    )
    assert run.data.tags["pruned"] == "true" and run.data.tags["pruned_by"] == "user"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_stops_the_search_cleanly_and_resumably(sigterm_search):
    from edgeseg.search.control import driver_state, live_driver
    from edgeseg.search.disk import saved_trials

    storage = str(sigterm_search["storage"])
    out = sigterm_search["out"]
    assert sigterm_search["code"] == 3, out  # stopped, resumable: what SIGINT gives
    assert "search relay stopped: 2/2 trials" in out and "resume with `edgeseg search resume relay`" in out
    assert driver_state("relay", storage)["state"] == "stopped"
    assert live_driver(storage, "relay") is None
    # Tune saved its state at the stop: the stopped trial ended, the other one is resumable mid-way.
    trials = saved_trials(f"{storage}/relay")
    assert trials[sigterm_search["target"]][0] == "TERMINATED"
    state, last = trials[sigterm_search["other"]]
    assert state != "TERMINATED" and 1 <= int(last["epoch"]) < EPOCHS


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_of_two_concurrent_resumes_one_is_refused_and_fresh_is_refused_while_it_runs(sigterm_search):
    from edgeseg.search.control import read_record, search_status

    home, storage = sigterm_search["home"], sigterm_search["storage"]
    record = read_record("relay", str(storage))
    resume = ["search", "resume", "relay", "--storage", str(storage), "--num-cpus", "2"]
    first, second = edgeseg(resume, home), edgeseg(resume, home)
    try:
        wait_for(lambda: first.poll() is not None or second.poll() is not None, "one resume to end")
        loser, winner = (first, second) if first.poll() is not None else (second, first)
        code, out = finish(loser, timeout=30)
        assert code == 2, out
        assert "search 'relay' already has a live driver" in out
        assert f"pid {winner.pid} on host {socket.gethostname()}, since " in out
        assert winner.poll() is None, "the winner ended before the refused resume did"

        fresh_code, fresh_out = finish(
            edgeseg(
                ["search", "run", str(sigterm_search["spec"]), "--fresh", "--num-cpus", "2", "--quiet"], home
            ),
            timeout=120,
        )
        assert fresh_code == 2, fresh_out
        assert f"already has a live driver: pid {winner.pid} on host {socket.gethostname()}" in fresh_out
        assert read_record("relay", str(storage)).search_id == record.search_id  # nothing deleted
        assert winner.poll() is None, "the resume ended before --fresh was refused: nothing proven"

        code, out = finish(winner, timeout=600)
    finally:
        kill_group(first)
        kill_group(second)
    assert code == 0, out[-4000:]
    status = search_status("relay", storage=str(storage))
    assert status.state == "finished" and status.driver == "finished"

    # Every trial has every epoch it trained exactly once, across the stop, the SIGTERM and the resume.
    client = mlflow_client(sigterm_search["tracking"])
    experiment = client.get_experiment_by_name("relay")
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.search_id = '{record.search_id}' and tags.role = 'trial'"
    )
    by_trial = {r.data.tags["ray_trial_id"]: r for r in runs}
    assert sorted(by_trial) == sorted([sigterm_search["target"], sigterm_search["other"]])
    stopped_at = int(by_trial[sigterm_search["target"]].data.tags["pruned_at_epoch"])
    assert 1 <= stopped_at < EPOCHS
    for trial_id, last in ((sigterm_search["target"], stopped_at), (sigterm_search["other"], EPOCHS)):
        run = by_trial[trial_id]
        for key in ("val/miou", "train/loss"):
            assert steps(client, run.info.run_id, key) == list(range(1, last + 1)), (trial_id, key)
        assert run.info.status == "FINISHED"
    assert by_trial[sigterm_search["other"]].data.tags["pruned"] == "false"


# ----------------------------------------------------------------------------------------------
# A search whose only trial errors, tracked at a URI that this host then cannot reach.
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def errored_search(tmp_path_factory):
    """A trial that fails as it builds its config (``train.min_lr`` above ``train.lr``; a spec
    cannot rule that out for a sampled choice), in an experiment not named after the search."""
    root = tmp_path_factory.mktemp("errored")
    home, storage = root / "home", root / "storage"
    tracking = f"sqlite:///{root / 'driver-view' / 'mlflow.db'}"
    spec_path = write_spec(root / "doomed.yaml", {
        "name": "doomed",
        "base": {"preset": "baseline", "overrides": tiny_overrides(2)},
        "space": {"train.min_lr": {"choice": [1.0]}},
        "searcher": {"kind": "random"},
        "num_samples": 1,
        "scheduler": {"kind": "fifo"},
        "resources": {"executor": "function"},
        "max_concurrent_trials": 1,
        "max_failures": 0,
        "storage": str(storage),
        "mlflow": {"tracking_uri": tracking, "experiment": "edge-team"},
    })  # fmt: skip
    code, out = finish(edgeseg(["search", "run", str(spec_path), "--num-cpus", "2", "--quiet"], home), 400)
    return {"root": root, "home": home, "storage": storage, "tracking": tracking, "code": code, "out": out}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_search_whose_trials_errored_is_incomplete_not_finished(errored_search):
    code, out = errored_search["code"], errored_search["out"]
    assert code == 4, out[-4000:]
    assert "search doomed incomplete: 1/1 trials, 0 pruned, 1 errored" in out
    assert "`edgeseg search resume doomed` retries the errored trials" in out
    status_code, status_out = finish(
        edgeseg(
            ["search", "status", "doomed", "--storage", str(errored_search["storage"])],
            errored_search["home"],
        ),
        timeout=120,
    )
    assert status_code == 0, status_out
    head = status_out.splitlines()[0]
    assert "incomplete: 1 errored" in head and "driver: incomplete" in head, status_out
    assert " ERROR " in status_out


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_status_takes_the_tracking_uri_seen_from_this_host(errored_search):
    """The driver's MLflow address does not resolve here (its folder is now elsewhere, and a file
    stands where it was); ``--tracking-uri`` reaches the same store under another name."""
    from edgeseg.search.control import read_record

    root, storage, home = errored_search["root"], str(errored_search["storage"]), errored_search["home"]
    record = read_record("doomed", storage)
    shutil.move(root / "driver-view", root / "host-view")
    (root / "driver-view").write_text("not a folder")
    try:
        host_uri = f"sqlite:///{root / 'host-view' / 'mlflow.db'}"
        client = mlflow_client(host_uri)
        assert client.get_experiment_by_name("doomed") is None  # named by the spec, not the search
        (run,) = client.search_runs([record.experiment_id], "tags.role = 'trial'")

        code, out = finish(edgeseg(["search", "status", "doomed", "--storage", storage, "--json"], home), 120)
        assert code == 0, out
        unreachable = json_of(out)
        assert (
            errored_search["tracking"] in unreachable["tracking_error"]
            and "--tracking-uri" in unreachable["tracking_error"]
        )
        assert [row["run_id"] for row in unreachable["trials"]] == [""]
        assert unreachable["state"] == "incomplete: 1 errored"  # Tune's side still shows

        code, out = finish(
            edgeseg(
                ["search", "status", "doomed", "--storage", storage, "--json", "--tracking-uri", host_uri],
                home,
            ),
            timeout=120,
        )
        assert code == 0, out
        reached = json_of(out)
        assert reached["tracking_error"] == "" and reached["tracking_uri"] == host_uri
        assert [row["run_id"] for row in reached["trials"]] == [run.info.run_id]
        assert [row["state"] for row in reached["trials"]] == ["ERROR"]
    finally:
        (root / "driver-view").unlink()
        shutil.move(root / "host-view", root / "driver-view")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_locate_uses_the_recorded_experiment_with_or_without_the_storage_record(
    errored_search, tmp_path, monkeypatch
):
    from edgeseg.search.control import SearchNotFoundError, locate_tracking, read_record

    storage = str(errored_search["storage"])
    record = read_record("doomed", storage)
    assert record.experiment_id
    located = locate_tracking("doomed", storage)
    assert (located.tracking_uri, located.experiment_id, located.experiment_name, located.search_id) == (
        errored_search["tracking"],
        record.experiment_id,
        "edge-team",
        record.search_id,
    )
    # Another machine: no storage record under its own home; the parent run's tags find the search.
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "elsewhere"))
    located = locate_tracking("doomed", tracking_uri=errored_search["tracking"])
    assert (located.experiment_id, located.experiment_name, located.search_id) == (
        record.experiment_id,
        "edge-team",
        record.search_id,
    )
    with pytest.raises(SearchNotFoundError, match="no MLflow run tagged search_name='nobody'"):
        locate_tracking("nobody", tracking_uri=errored_search["tracking"])
