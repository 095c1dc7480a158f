"""Which feature flag moves mIoU, by how much, at what cost: ablation tables from MLflow runs.

A trial's score is its best value of the search metric over the epochs it ran (``tags.best_value``,
written by the search service); pruned trials ran fewer epochs, so their scores are truncated and
are left out of the effects unless asked for. Repeats of one configuration (different seeds) give
the spread reported as ``std``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

# The ablation axes, as tagged on every trial run (``ExperimentConfig.feature_flags``).
FLAG_COLUMNS = (
    "multiscale", "layers", "fusion", "variable_roi", "roi_sizes", "rgb", "decoder", "cascade",
    "distance_aware", "focal", "class_weights", "mask_size",
)  # fmt: skip
COST_COLUMNS = ("gflops", "params_count", "latency_ms")
FALSE_LIKE = ("false", "none", "plain")


class ReportError(ValueError):
    """The search, experiment or metric asked for does not exist; the message names it."""


@dataclass(frozen=True)
class Ablation:
    trials: pd.DataFrame
    effects: pd.DataFrame
    metric: str
    include_pruned: bool = False


def trial_table(experiment: str, tracking_uri: str, search_id: str | None = None) -> pd.DataFrame:
    """One row per trial run: state, epochs, feature flags, best metric and costs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ReportError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    filters = ["tags.role = 'trial'"] + ([f"tags.search_id = '{search_id}'"] if search_id else [])
    runs = client.search_runs([found.experiment_id], filter_string=" and ".join(filters), max_results=50_000)
    rows = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        row: dict[str, object] = {
            "trial": tags.get("trial_name", run.info.run_name),
            "run_id": run.info.run_id,
            "state": tags.get("state", run.info.status.lower()),
            "epochs": int(tags.get("last_epoch", 0) or 0),
            "repeat": int(tags.get("repeat", 0) or 0),
            "best": float(tags["best_value"]) if "best_value" in tags else math.nan,
        }
        row.update({flag: tags.get(flag, "") for flag in FLAG_COLUMNS})
        row.update({cost: metrics.get(cost, math.nan) for cost in COST_COLUMNS})
        rows.append(row)
    columns = ["trial", "run_id", "state", "epochs", "repeat", "best", *FLAG_COLUMNS, *COST_COLUMNS]
    return pd.DataFrame(rows, columns=columns).sort_values("best", ascending=False, na_position="last")


def _reference(values: list[str]) -> str:
    for value in values:
        if value in FALSE_LIKE:
            return value
    return sorted(values)[0]


def flag_effects(trials: pd.DataFrame, include_pruned: bool = False) -> pd.DataFrame:
    """For each flag that varies: mean/std/count of the score per value, and its difference from the
    reference value (off / plain / the first value), with the mean GFLOPs per ROI as the cost."""
    usable = (
        trials[trials["state"] == "finished"] if not include_pruned else trials[trials["state"] != "errored"]
    )
    usable = usable.dropna(subset=["best"])
    rows = []
    for flag in FLAG_COLUMNS:
        values = sorted(v for v in usable[flag].unique() if v != "")
        if len(values) < 2:
            continue
        reference = _reference(values)
        ref_mean = usable.loc[usable[flag] == reference, "best"].mean()
        for value in values:
            scores = usable.loc[usable[flag] == value, "best"]
            rows.append(
                {
                    "flag": flag,
                    "value": value,
                    "trials": int(scores.count()),
                    "mean": float(scores.mean()),
                    "std": float(scores.std(ddof=1)) if scores.count() > 1 else math.nan,
                    "delta": float(scores.mean() - ref_mean),
                    "reference": reference,
                    "gflops": float(usable.loc[usable[flag] == value, "gflops"].mean()),
                }
            )
    return pd.DataFrame(
        rows, columns=["flag", "value", "trials", "mean", "std", "delta", "reference", "gflops"]
    )


def ablation(
    experiment: str, tracking_uri: str, search_id: str | None = None, metric: str = "val/miou",
    include_pruned: bool = False,
) -> Ablation:  # fmt: skip
    trials = trial_table(experiment, tracking_uri, search_id)
    if trials.empty:
        raise ReportError(f"MLflow experiment {experiment!r} at {tracking_uri} has no trial runs")
    return Ablation(trials, flag_effects(trials, include_pruned), metric, include_pruned)


def to_markdown(result: Ablation, top: int = 10) -> str:
    """A short report: the best trials, then the per-flag effects."""
    shown = result.trials.head(top)
    varying = [f for f in FLAG_COLUMNS if result.trials[f].nunique() > 1]
    columns = ["trial", "state", "epochs", "best", *varying, "gflops"]
    lines = [f"### Trials (best {result.metric} per trial, top {len(shown)} of {len(result.trials)})", ""]
    lines += _table(shown[columns])
    which = (
        "finished and pruned trials; pruned scores are truncated"
        if result.include_pruned
        else "finished trials"
    )
    lines += ["", f"### Feature effects on {result.metric} ({which}; delta vs the reference value)", ""]
    if result.effects.empty:
        lines.append(f"No flag varies between the {which.split(';')[0]}, so there is no effect to report.")
    else:
        lines += _table(result.effects)
    return "\n".join(lines)


def _table(frame: pd.DataFrame) -> list[str]:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "–" if math.isnan(value) else f"{value:.4f}"
        return str(value)

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return [header, rule, *body]
