"""Which feature is worth its cost, with what confidence: a search's MLflow runs as an ablation report.

The search service tags every trial run with its feature flags, state and best value of the search
metric (``search/names.py``); this module reads them back into one row per trial, hands the table to
``report/effects.py`` (main effects and interactions with intervals, verdicts, variance shares, Pareto)
and renders the result as Markdown, CSV files and a self-contained HTML page. ``publish`` logs the
HTML and CSVs to the search's parent run and puts the headline in its description, so the MLflow UI
shows the same answer.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd

from edgeseg.config import FEATURE_FLAGS, ConfigError
from edgeseg.report.analysis import AblationAnalysis, Completeness
from edgeseg.report.effects import analyse
from edgeseg.report.fidelity import at_budget, budget_agreement
from edgeseg.report.html import render_html
from edgeseg.search import names
from edgeseg.search.mlflow_runs import client_for, search_runs

REPORT_ARTIFACTS = "report"  # folder of the parent run that holds report.html and the CSVs
NOTE_TAG = "mlflow.note.content"  # the run description MLflow's UI shows


class ReportError(ConfigError):
    """The search, experiment or metric asked for does not exist; the message names it (and the CLI
    prints it as an error, not a traceback)."""


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _trial_row(run: Any, factors: Sequence[str]) -> dict[str, Any]:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    exported = tags.get(names.TAG_ONNX) == "exported"
    row: dict[str, Any] = {
        "trial": tags.get(names.TAG_TRIAL_NAME, run.info.run_name),
        "run_id": run.info.run_id,
        "state": tags.get(names.TAG_STATE, run.info.status.lower()),
        "epochs": int(tags.get(names.TAG_LAST_EPOCH, 0) or 0),
        "seed": _float(params.get("train.seed")),
        "config": "",  # labelled by its varying factors in effects.analyse
        "score": _float(tags.get(names.TAG_BEST_VALUE)),
        "params_count": metrics.get(names.METRIC_PARAMS_COUNT, math.nan),
        "gflops_per_roi": metrics.get(names.METRIC_GFLOPS, math.nan),
        "latency_ms": metrics.get(names.METRIC_LATENCY_MS, math.nan),
        "onnx_uri": f"{run.info.artifact_uri}/{names.ONNX_ARTIFACT}" if exported else "",
    }
    row.update({flag: tags.get(flag, "") for flag in factors})
    return row


def _curves(client: Any, runs: Sequence[Any], metric: str) -> pd.DataFrame:
    rows = [
        {"trial": run.data.tags.get(names.TAG_TRIAL_NAME, run.info.run_name), "epoch": point.step,
         "value": point.value}
        for run in runs
        for point in client.get_metric_history(run.info.run_id, metric)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["trial", "epoch", "value"])


def _search_state(parent: Any) -> str:
    return parent.data.tags.get(names.TAG_STATE, "unknown") if parent is not None else "unknown"


def build_report(
    experiment: str, tracking_uri: str, search_id: str, *, metric: str | None = None, mode: str | None = None,
    expected: int | None = None, factors: Sequence[str] = FEATURE_FLAGS, rope: float = 0.01,
    effects_budget: int | None = None,
) -> AblationAnalysis:  # fmt: skip
    """The ablation analysis of one search from its MLflow runs.

    ``metric`` and ``mode`` default to the search's own (its parent run's params); a trial's score is
    its best value of that metric over the epochs it ran. ``expected``: how many trials the spec asks
    for (the report says when fewer are done). ``effects_budget`` (default: the spec's
    ``design.effects_budget``; 0 = off) estimates the effects from every trial at that epoch
    (``report/fidelity.py``).
    """
    client = client_for(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ReportError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    ids = {names.TAG_SEARCH_ID: search_id}
    parents = search_runs(client, found.experiment_id, {**ids, names.TAG_ROLE: names.ROLE_SEARCH})
    runs = search_runs(client, found.experiment_id, {**ids, names.TAG_ROLE: names.ROLE_TRIAL})
    if not runs:
        raise ReportError(f"search {search_id!r} in MLflow experiment {experiment!r} has no trial runs")
    parent = parents[0] if parents else None
    params = parent.data.params if parent is not None else {}
    search_metric, search_mode = params.get("metric", "val/miou"), params.get("mode", "max")
    if effects_budget is None:
        effects_budget = int(params.get("effects_budget", 0) or 0)
    if metric not in (None, search_metric):
        raise ReportError(
            f"search {search_id!r} ranked trials by {search_metric!r}; its runs record the best value of that "
            f"metric only, so a report by {metric!r} is not available"
        )
    trials = pd.DataFrame([_trial_row(run, factors) for run in runs])
    curves = _curves(
        client, [r for r in runs if r.data.tags.get(names.TAG_STATE) != "errored"], search_metric
    )
    analysis = analyse(
        trials, search=search_id, metric=search_metric, mode=mode or search_mode, factors=list(factors),
        completeness=Completeness.of(trials, expected, _search_state(parent)), curves=None, rope=rope,
    )  # fmt: skip
    if effects_budget:
        full_budget = int(params.get("max_epochs", 0) or max(curves["epoch"], default=0))
        analysis = _low_budget_effects(analysis, trials, curves, effects_budget, full_budget, list(factors))
    # the analysis labels configurations by their varying factors; give the curves the same labels
    labels = dict(zip(analysis.trials["trial"], analysis.trials["config"], strict=True))
    curves["config"] = curves["trial"].map(labels).fillna("")
    curves = curves[["config", "trial", "epoch", "value"]].sort_values(["config", "trial", "epoch"])
    parent_run_id = parent.info.run_id if parent is not None else None
    return replace(
        analysis,
        curves=curves.reset_index(drop=True),
        extra={**analysis.extra, "parent_run_id": parent_run_id},
    )


def _low_budget_effects(
    analysis: AblationAnalysis, trials: pd.DataFrame, curves: pd.DataFrame, budget: int, full_budget: int,
    factors: list[str],
) -> AblationAnalysis:  # fmt: skip
    """The analysis with its effects, interactions and variance shares taken from every trial at
    ``budget`` epochs, undecided when the cells' ranking at that budget disagrees with the full one."""
    low_trials = at_budget(trials, curves, budget, analysis.mode)
    low = analyse(low_trials, search=analysis.search, metric=analysis.metric, mode=analysis.mode,
                  factors=factors, completeness=analysis.completeness, rope=analysis.rope)  # fmt: skip
    agreement = budget_agreement(low.trials, curves, budget, full_budget, analysis.mode)
    effects = low.effects
    if not agreement.holds:
        effects = effects.assign(verdict="undecided", more_seeds=math.nan)
    used = int((low.trials["state"] == "finished").sum())
    note = (
        f"Multi-fidelity: effects, interactions and variance shares come from all {used} trials at epoch "
        f"{budget} (design.effects_budget); configurations, best trial and Pareto front from the trials "
        f"that trained all {full_budget} epochs. The {agreement.sentence()}."
    )
    return replace(
        analysis, effects=effects, interactions=low.interactions, variance=low.variance,
        method=f"{low.method} (at epoch {budget})", notes=(note, *low.notes),
        extra={**analysis.extra, "effects_budget": budget, "budget_agreement": asdict(agreement)},
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def completeness_line(analysis: AblationAnalysis) -> str:
    c = analysis.completeness
    expected = f" of {c.expected}" if c.expected is not None else ""
    status = "complete" if c.complete else "INCOMPLETE"
    return (
        f"{c.done}{expected} trials done ({c.finished} finished, {c.pruned} pruned, {c.errored} errored, "
        f"{c.running} not ended); search {c.state}: {status}"
    )


def effects_markdown(analysis: AblationAnalysis) -> list[str]:
    """The main-effects table: effect, 95 % CI, verdict, ΔGFLOPs per ROI, Δlatency."""
    if analysis.effects.empty:
        return ["No feature varies between the finished trials, so there is no effect to report."]
    lines = [
        f"| factor | level vs reference | effect on {analysis.metric} | 95 % CI | verdict | ΔGFLOPs/ROI | Δlatency ms |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    for row in analysis.effects.itertuples(index=False):
        verdict = row.verdict
        if verdict == "undecided" and not pd.isna(row.more_seeds):
            verdict = f"undecided, needs {int(row.more_seeds)} more seeds"
        lines.append(
            f"| {row.factor} | {row.level} vs {row.reference} | {_fmt(row.estimate)} | "
            f"[{_fmt(row.ci_low)}, {_fmt(row.ci_high)}] | {verdict} | {_fmt(row.delta_gflops_per_roi)} | "
            f"{_fmt(row.delta_latency_ms, 2)} |"
        )
    return lines


def to_markdown(analysis: AblationAnalysis, top: int = 10) -> str:
    """The report as Markdown: completeness first, then effects, configurations, interactions, Pareto."""
    lines = [f"## Ablation report: {analysis.search}", "", completeness_line(analysis), ""]
    lines += [f"Metric: {analysis.metric} ({analysis.mode}); {analysis.method}", ""]
    lines += [f"- {note}" for note in analysis.notes] + ([""] if analysis.notes else [])
    lines += [
        f"### Main effects (practical equivalence: ±{analysis.rope:g})",
        "",
        *effects_markdown(analysis),
        "",
    ]
    configs = analysis.configs.head(top)
    lines += [f"### Configurations (best {len(configs)} of {len(analysis.configs)}, finished trials)", ""]
    lines += _table(configs[["config", "n", "mean", "std", "ci_low", "ci_high", "gflops_per_roi", "latency_ms",
                             "best_trial"]])  # fmt: skip
    if not analysis.interactions.empty:
        strongest = analysis.interactions.reindex(
            analysis.interactions["estimate"].abs().sort_values(ascending=False).index
        ).head(top)
        lines += ["", "### Two-way interactions (strongest first)", "", *_table(strongest)]
    if not analysis.variance.empty:
        lines += ["", "### Share of variance", "", *_table(analysis.variance)]
    front = analysis.pareto[analysis.pareto["on_front"]]
    if not front.empty:
        lines += ["", "### Pareto front (metric vs cost)", ""]
        lines += _table(front[["cost", "config", "mean", "cost_value", "best_trial", "onnx_uri"]])
    return "\n".join(lines)


def _table(frame: pd.DataFrame) -> list[str]:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return [header, rule, *body]


def write_csvs(analysis: AblationAnalysis, directory: str | Path) -> list[Path]:
    """One CSV per table: trials, configs, effects, interactions, variance, pareto, curves."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("trials", "configs", "effects", "interactions", "variance", "pareto", "curves"):
        path = out / f"{name}.csv"
        getattr(analysis, name).to_csv(path, index=False)
        written.append(path)
    return written


def headline(analysis: AblationAnalysis) -> str:
    """The parent run's description: completeness, the best configuration, the decided effects."""
    lines = [f"**Ablation report** — {completeness_line(analysis)}", ""]
    if not analysis.configs.empty:
        best = analysis.configs.iloc[0]
        lines.append(
            f"Best configuration: `{best['config']}` — {analysis.metric} {best['mean']:.4f} "
            f"(95 % CI [{_fmt(best['ci_low'])}, {_fmt(best['ci_high'])}], n={int(best['n'])}), "
            f"trial {best['best_trial']}"
        )
    lines += ["", *effects_markdown(analysis), "", f"Full report: artifact `{REPORT_ARTIFACTS}/report.html`."]
    return "\n".join(lines)


def publish(analysis: AblationAnalysis, tracking_uri: str) -> str | None:
    """Log report.html and the CSVs to the search's parent run (found by ``build_report``), with the
    headline as its description. Returns the parent run id, or None when the search has no parent run."""
    run_id = analysis.extra.get("parent_run_id")
    if not run_id:
        return None
    client = client_for(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / REPORT_ARTIFACTS
        render_html(analysis, folder / "report.html")
        write_csvs(analysis, folder)
        client.log_artifacts(run_id, str(folder), REPORT_ARTIFACTS)
    client.set_tag(run_id, NOTE_TAG, headline(analysis))
    return str(run_id)
