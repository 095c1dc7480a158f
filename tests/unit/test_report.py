"""Ablation tables from a real MLflow store (SQLite), with effects checked by hand."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from edgeseg.report.ablation import ReportError, ablation, to_markdown


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("abl", artifact_location=(tmp_path / "artifacts").as_uri())
    trials = [
        # (cascade, distance_aware, state, best, gflops)
        ("false", "false", "finished", 0.40, 1.0),
        ("false", "false", "finished", 0.42, 1.0),
        ("true", "false", "finished", 0.50, 3.0),
        ("true", "false", "finished", 0.46, 3.0),
        ("false", "true", "finished", 0.41, 1.0),
        ("true", "true", "pruned", 0.10, 3.0),  # truncated: left out of the effects
        ("true", "true", "errored", math.nan, 3.0),
    ]
    for i, (cascade, distance, state, best, gflops) in enumerate(trials):
        tags = {
            "role": "trial", "search_id": "s1", "trial_name": f"t{i}", "state": state, "last_epoch": "4",
            "cascade": cascade, "distance_aware": distance, "decoder": "plain",
        }  # fmt: skip
        if not math.isnan(best):
            tags["best_value"] = repr(best)
        run = client.create_run(experiment, tags=tags)
        client.log_metric(run.info.run_id, "gflops", gflops, step=0)
        client.set_terminated(run.info.run_id)
    other = client.create_run(experiment, tags={"role": "trial", "search_id": "s2", "best_value": "0.99"})
    client.set_terminated(other.info.run_id)
    return uri


def test_effects_are_differences_of_means(store) -> None:
    result = ablation("abl", store, search_id="s1")
    assert len(result.trials) == 7
    assert result.trials.iloc[0]["best"] == pytest.approx(0.50)
    effects = result.effects.set_index(["flag", "value"])
    cascade_on = effects.loc[("cascade", "true")]
    # finished trials only: off = (0.40, 0.42, 0.41), on = (0.50, 0.46)
    assert cascade_on["trials"] == 2
    assert cascade_on["mean"] == pytest.approx(0.48)
    assert cascade_on["delta"] == pytest.approx(0.48 - 0.41)
    assert cascade_on["std"] == pytest.approx(math.sqrt(((0.02) ** 2 + (0.02) ** 2) / 1))
    assert cascade_on["gflops"] == pytest.approx(3.0)
    assert effects.loc[("distance_aware", "true")]["delta"] == pytest.approx(
        0.41 - (0.40 + 0.42 + 0.50 + 0.46) / 4
    )
    assert "decoder" not in set(result.effects["flag"])  # does not vary
    text = to_markdown(result)
    assert "| cascade | true | 2 |" in text


def test_pruned_trials_can_be_included(store) -> None:
    result = ablation("abl", store, search_id="s1", include_pruned=True)
    on = result.effects.set_index(["flag", "value"]).loc[("cascade", "true")]
    assert on["trials"] == 3


def test_unknown_experiment_is_named(store) -> None:
    with pytest.raises(ReportError, match="nope"):
        ablation("nope", store)
