"""The ablation report reads back what the real tracker wrote: planted effects are recovered.

The search service's own ``MlflowTracker`` (the driver-side Tune callback) writes every trial run to a
real SQLite MLflow store, driven through the hooks Tune calls (start, one result per epoch, complete).
The trials are stand-ins for Ray's ``Trial`` objects carrying only what the callback reads; no Ray
cluster is involved because none is under test here. Scores carry planted main effects, one planted
interaction and Gaussian seed noise; ``build_report`` must recover each effect inside its interval
with the right verdict, handle ``mode: min``, and say when a search is incomplete.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from edgeseg.cli.main import main
from edgeseg.report.ablation import build_report, completeness_line, publish, to_markdown
from edgeseg.search.names import EXPERIMENT_KIND_TAG
from edgeseg.search.spec import grid_variants, spec_from_mapping
from edgeseg.search.tracking import MlflowTracker

pytestmark = pytest.mark.integration

EPOCHS = 3
SEEDS = 4
NOISE = 0.004
BASE = 0.40
CASCADE = 0.05  # planted main effect of model.cascade (true vs false), at distance_aware=false
DISTANCE = 0.0  # planted: no effect of the distance-aware loss on its own
INTERACTION = 0.03  # planted: cascade and distance-aware together add this much more


@dataclass
class StandInTrial:
    """What ``MlflowTracker`` reads of a Ray Tune trial."""

    trial_id: str
    config: dict[str, Any]
    status: str = "RUNNING"
    last_result: dict[str, Any] = field(default_factory=dict)
    error_file: str | None = None

    def __str__(self) -> str:
        return f"trial_{self.trial_id}"


def spec_for(tmp_path, metric: str = "val/miou", mode: str = "max", **extra: Any):
    body = {
        "name": f"planted-{mode}",
        "base": {"preset": "baseline", "overrides": {"train.epochs": EPOCHS, "model.channels": 8}},
        "space": {"model.cascade": {"grid": [False, True]}, "loss.distance_aware": {"grid": [False, True]}},
        "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"},
        "metric": metric,
        "mode": mode,
        "repeats": SEEDS,
        "export_onnx": False,
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "storage": str(tmp_path / "searches"),
        "home": str(tmp_path / "home"),
        **extra,
    }
    return spec_from_mapping(body).resolved()


def planted_score(overrides: dict[str, Any], rng: np.random.Generator) -> float:
    cascade, distance = bool(overrides["model.cascade"]), bool(overrides["loss.distance_aware"])
    return (
        BASE
        + CASCADE * cascade
        + DISTANCE * distance
        + INTERACTION * (cascade and distance)
        + rng.normal(0, NOISE)
    )


def run_tracked_search(
    spec, *, finish: int | None = None, sign: float = 1.0, stop_after: Any = None,
    reverse_first_epoch: bool = False,
) -> tuple[str, list[Any]]:  # fmt: skip
    """Drive the tracker through every grid cell x seed; ``finish`` trials only, the rest never start.
    ``stop_after(overrides)``: the epoch after which a trial is stopped early (as ASHA would), or None."""
    rng = np.random.default_rng(0)
    cells = grid_variants(spec)[0]
    trials = [
        StandInTrial(f"t{i:03d}", {"overrides": cell, "repeat": repeat})
        for i, (cell, repeat) in enumerate(itertools.product(cells, range(spec.repeats)))
    ]
    tracker = MlflowTracker(spec, search_id=f"{spec.name}-1")
    tracker.setup()
    for trial in trials[:finish]:
        tracker.on_trial_start(0, trials, trial)
        final = planted_score(trial.config["overrides"], rng)
        last = (stop_after and stop_after(trial.config["overrides"])) or EPOCHS
        for epoch in range(1, last + 1):  # a rising learning curve that ends at the planted score
            value = sign * (final - 0.02 * (EPOCHS - epoch))
            if reverse_first_epoch and epoch == 1:  # the cells rank the other way round after one epoch
                value = sign * (0.3 - final)
            trial.last_result = {"epoch": epoch, spec.metric: value, "params_count": 1000.0, "gflops": 0.01,
                                 "checkpoint_path": f"/checkpoints/{trial.trial_id}/epoch_{epoch}"}  # fmt: skip
            tracker.on_trial_result(0, trials, trial, dict(trial.last_result))
        trial.status = "TERMINATED"
        tracker.on_trial_complete(0, trials, trial)
    tracker.on_experiment_end(trials)
    return f"{spec.name}-1", trials


def effect(analysis, factor: str) -> Any:
    rows = analysis.effects[analysis.effects["factor"] == factor]
    assert len(rows) == 1, analysis.effects
    return rows.iloc[0]


def test_report_recovers_planted_effects_written_by_the_tracker(tmp_path):
    spec = spec_for(tmp_path)
    search_id, _ = run_tracked_search(spec)
    analysis = build_report(spec.experiment_name, spec.mlflow.tracking_uri, search_id, expected=4 * SEEDS)

    assert analysis.completeness.complete and analysis.completeness.finished == 4 * SEEDS
    assert set(analysis.factors) == {"cascade", "distance_aware"}
    # A main-effects model averages each effect over the other factor's levels.
    cascade, distance = effect(analysis, "cascade"), effect(analysis, "distance_aware")
    for row, truth in ((cascade, CASCADE + INTERACTION / 2), (distance, DISTANCE + INTERACTION / 2)):
        assert row["ci_low"] <= truth <= row["ci_high"], row
    assert cascade["verdict"] == "better" and cascade["reference"] == "false"
    interaction = analysis.interactions.iloc[0]
    assert interaction["ci_low"] <= INTERACTION <= interaction["ci_high"], analysis.interactions
    assert analysis.configs["n"].tolist() == [SEEDS] * 4
    best = analysis.configs.iloc[0]
    assert "cascade=true" in best["config"] and "distance_aware=true" in best["config"]
    # every epoch of every trial is a point of the learning curves
    assert len(analysis.curves) == 4 * SEEDS * EPOCHS
    text = to_markdown(analysis)
    assert "| cascade | true vs false |" in text and "better" in text


def test_mode_min_ranks_low_scores_first_and_flips_verdicts(tmp_path):
    spec = spec_for(tmp_path, metric="val/loss", mode="min")
    search_id, _ = run_tracked_search(spec, sign=-1.0)  # the loss falls where mIoU rose
    analysis = build_report(spec.experiment_name, spec.mlflow.tracking_uri, search_id)

    assert analysis.mode == "min" and analysis.metric == "val/loss"
    means = analysis.configs["mean"].tolist()
    assert means == sorted(means)  # best (lowest) first
    cascade = effect(analysis, "cascade")
    assert cascade["estimate"] < 0 and cascade["verdict"] == "better"


def test_incomplete_search_says_so_and_publishes_to_the_parent_run(tmp_path):
    spec = spec_for(tmp_path)
    search_id, _ = run_tracked_search(spec, finish=6)
    analysis = build_report(spec.experiment_name, spec.mlflow.tracking_uri, search_id, expected=4 * SEEDS)

    assert not analysis.completeness.complete
    assert completeness_line(analysis).startswith(f"6 of {4 * SEEDS} trials done")
    assert "INCOMPLETE" in completeness_line(analysis) and "INCOMPLETE" in to_markdown(analysis)

    run_id = publish(analysis, spec.mlflow.tracking_uri)
    client = MlflowClient(spec.mlflow.tracking_uri)
    parent = client.get_run(run_id)
    assert "INCOMPLETE" in parent.data.tags["mlflow.note.content"]
    logged = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/report.html", "report/effects.csv", "report/trials.csv"} <= logged
    experiment = client.get_experiment_by_name(spec.experiment_name)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_report_by_a_metric_the_search_did_not_rank_is_a_clear_cli_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGESEG_HOME", str(tmp_path / "home"))
    spec = spec_for(tmp_path)
    run_tracked_search(spec, finish=2)
    code = main(
        ["report", spec.name, "--tracking-uri", spec.mlflow.tracking_uri, "--metric", "val/boundary_f"]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "edgeseg: error:" in error and "'val/miou'" in error and "'val/boundary_f'" in error


def test_effects_at_a_low_budget_use_every_trial_and_check_the_ranking(tmp_path):
    """Multi-fidelity: the worst cell stops after epoch 1 (as ASHA would); with design.effects_budget 1
    every trial enters the effects at epoch 1, and the ranking of the cells that went on agrees."""
    spec = spec_for(tmp_path, scheduler={"kind": "asha", "grace_period": 1}, design={"effects_budget": 1})
    worst = {"model.cascade": False, "loss.distance_aware": False}
    search_id, _ = run_tracked_search(spec, stop_after=lambda o: 1 if o == worst else None)
    analysis = build_report(spec.experiment_name, spec.mlflow.tracking_uri, search_id)

    assert analysis.extra["effects_budget"] == 1
    agreement = analysis.extra["budget_agreement"]
    assert agreement["cells"] == 3 and agreement["kendall_tau"] == pytest.approx(1.0)
    # the tracker logged the same figure on the parent run while the trials finished
    live = MlflowClient(spec.mlflow.tracking_uri).get_metric_history(
        analysis.extra["parent_run_id"], "effects_budget/kendall_tau"
    )
    assert live and live[-1].step == 3 * SEEDS and live[-1].value == pytest.approx(1.0)
    cascade = effect(analysis, "cascade")  # estimated from all 4 cells, the pruned one included
    assert (
        cascade["ci_low"] <= CASCADE + INTERACTION / 2 <= cascade["ci_high"]
        and cascade["verdict"] == "better"
    )
    assert "Multi-fidelity" in to_markdown(analysis) and "Kendall tau 1.00" in to_markdown(analysis)
    assert analysis.completeness.pruned == SEEDS  # the configurations still list them as pruned
    # the same search without the low budget: the pruned cell is left out, so the effects come from 3 cells
    finished_only = build_report(spec.experiment_name, spec.mlflow.tracking_uri, search_id, effects_budget=0)
    assert "effects_budget" not in finished_only.extra
    assert len(finished_only.configs) == 3


def test_low_budget_effects_are_undecided_when_the_ranking_flips(tmp_path):
    spec = spec_for(tmp_path, scheduler={"kind": "asha", "grace_period": 1}, design={"effects_budget": 1})
    search_id, _ = run_tracked_search(spec, reverse_first_epoch=True)
    analysis = build_report(spec.experiment_name, spec.mlflow.tracking_uri, search_id)

    assert analysis.extra["budget_agreement"]["kendall_tau"] < 0
    assert set(analysis.effects["verdict"]) == {"undecided"}
    client = MlflowClient(spec.mlflow.tracking_uri)
    live = client.get_metric_history(analysis.extra["parent_run_id"], "effects_budget/kendall_tau")
    assert [m.step for m in live] == list(range(2 * SEEDS + 1, 4 * SEEDS + 1)) and live[
        -1
    ].value == pytest.approx(analysis.extra["budget_agreement"]["kendall_tau"])
    assert "so these effects are undecided" in to_markdown(analysis)
