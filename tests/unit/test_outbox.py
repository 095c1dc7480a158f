"""The MLflow outbox against real stores: a SQLite tracking store, and a tracking URI nobody answers.

What a driver journals while MLflow is down survives the driver and is delivered by the next one; a
run an earlier driver made is found, not created again, and keeps what it holds; a write that can
never be delivered is set aside without blocking the ones after it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import free_port

from edgeseg.search.outbox import TrackingOutbox

MATCH = {"search_id": "s1", "ray_trial_id": "t1"}


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as the tracker sets it for its driver
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("outbox", artifact_location=(tmp_path / "artifacts").as_uri())
    return client, experiment_id


def _run_op(experiment_id: str) -> dict:
    tags = {**MATCH, "role": "trial"}
    return {
        "experiment_id": experiment_id,
        "match": MATCH,
        "run_name": "t1",
        "tags": tags,
        "params": {"lr": "0.01"},
    }


def _points(epochs: range, value: float = 0.5) -> list[list]:
    return [["val/miou", value + e / 100, 1_000 + e, e] for e in epochs]


def _history(client, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val/miou"))


def test_writes_journaled_while_mlflow_is_down_are_delivered_once_by_the_next_driver(tmp_path, store):
    from mlflow.tracking import MlflowClient

    client, experiment_id = store
    folder = tmp_path / "outbox"
    down = TrackingOutbox(MlflowClient(f"http://127.0.0.1:{free_port()}"), folder, backoff_max_s=0.2)
    down.put("run", "trial:t1", **_run_op(experiment_id))
    down.put("batch", "trial:t1", metrics=_points(range(1, 4)), tags={"last_epoch": "3"})
    down.put("terminate", "trial:t1", status="FINISHED")
    assert not down.close(timeout=1.0)  # nobody answers: kept
    assert down.pending == 3 and down.outage_since is not None
    with open(folder / "journal.jsonl", "a") as journal:
        journal.write('{"seq": 99, "op": "bat')  # a driver killed mid-write leaves a torn line

    up = TrackingOutbox(client, folder)
    assert up.replayed == 3
    assert up.close(timeout=30)
    (run,) = client.search_runs([experiment_id])
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.01"}
    assert _history(client, run.info.run_id) == [(e, pytest.approx(0.5 + e / 100)) for e in (1, 2, 3)]
    assert (folder / "journal.jsonl").read_text() == ""  # all delivered: compacted

    again = TrackingOutbox(client, folder)  # a third driver has nothing to replay
    assert again.replayed == 0 and again.close(timeout=5)
    assert len(client.search_runs([experiment_id])) == 1


def test_a_run_an_earlier_driver_made_is_found_and_keeps_what_it_holds(tmp_path, store):
    from mlflow.entities import Metric

    client, experiment_id = store
    earlier = client.create_run(experiment_id, run_name="t1", tags={**MATCH, "best_value": "0.9"})
    client.log_batch(
        earlier.info.run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in _points(range(1, 4), 0.8)]
    )
    client.set_terminated(earlier.info.run_id, status="KILLED")

    outbox = TrackingOutbox(client, tmp_path / "outbox")
    outbox.put("run", "trial:t1", **_run_op(experiment_id))
    # a driver that could not read the run re-sends epochs 2-5; its best (0.6) is worse than the run's
    best_tags = {"best_value": "0.6", "best_epoch": "5", "best_checkpoint": "/c/epoch_5"}
    outbox.put("batch", "trial:t1", metrics=_points(range(2, 6), 0.5), tags={"last_epoch": "5", **best_tags},
               best={"value": 0.6, "mode": "max"})  # fmt: skip
    assert outbox.close(timeout=30)

    (run,) = client.search_runs([experiment_id])
    assert run.info.run_id == earlier.info.run_id and run.info.status == "RUNNING"  # found, reopened
    assert [step for step, _ in _history(client, run.info.run_id)] == [1, 2, 3, 4, 5]  # no step twice
    assert run.data.tags["best_value"] == "0.9" and "best_checkpoint" not in run.data.tags
    assert run.data.tags["last_epoch"] == "5"


def test_an_undeliverable_write_is_set_aside_and_the_next_ones_still_go(tmp_path, store):
    client, experiment_id = store
    folder = tmp_path / "outbox"
    outbox = TrackingOutbox(client, folder)
    outbox.put("batch", "trial:never-created", tags={"state": "running"})
    outbox.put("run", "trial:t1", **_run_op(experiment_id))
    outbox.put("batch", "trial:t1", tags={"state": "finished"})
    began = time.monotonic()
    assert outbox.close(timeout=30) and time.monotonic() - began < 20
    dropped = [json.loads(line) for line in (folder / "dropped.jsonl").read_text().splitlines()]
    assert [(d["key"], d["op"]) for d in dropped] == [("trial:never-created", "batch")]
    assert "never-created" in dropped[0]["error"]
    (run,) = client.search_runs([experiment_id])
    assert run.data.tags["state"] == "finished"


def test_writes_that_piled_up_go_in_few_requests_within_mlflows_limits(tmp_path, store):
    from mlflow.tracking import MlflowClient

    client, experiment_id = store
    folder = tmp_path / "outbox"
    down = TrackingOutbox(MlflowClient(f"http://127.0.0.1:{free_port()}"), folder, backoff_max_s=0.2)
    down.put("run", "trial:t1", **_run_op(experiment_id))
    for epoch in range(1, 31):  # one write per epoch, as the tracker makes them
        down.put(
            "batch", "trial:t1", metrics=_points(range(epoch, epoch + 1)), tags={"last_epoch": str(epoch)}
        )
    down.put("batch", "trial:t1", params={f"p{i:03d}": str(i) for i in range(150)})  # over 100 per request
    down.put("batch", "trial:t1", tags={"state": "finished"})
    assert not down.close(timeout=0.5)

    up = TrackingOutbox(client, folder)
    assert up.close(timeout=30)
    assert up.delivered_count == 33 and up.requests < 5  # 30 epochs + params + tags, merged
    (run,) = client.search_runs([experiment_id])
    assert [step for step, _ in _history(client, run.info.run_id)] == list(range(1, 31))
    assert run.data.tags["last_epoch"] == "30" and run.data.tags["state"] == "finished"
    assert len(run.data.params) == 1 + 150
