"""What an ablation report holds: the tables every output (Markdown, CSV, HTML) is drawn from.

The statistics (``report/effects.py``) fill an :class:`AblationAnalysis` from a trial table; the
renderers (``report/markdown.py``, ``report/html.py``) only read it. Column names are the contract
between them and are listed here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

# One row per trial (finished, pruned and errored alike), the input of the statistics.
TRIAL_COLUMNS = (
    "trial",  # trial name (Tune trial id)
    "run_id",  # MLflow run id
    "state",  # "finished" | "pruned" | "errored" | "running"
    "epochs",  # epochs trained
    "seed",  # the trial's training seed
    "config",  # label of the configuration (factor levels joined), the same for every seed
    "score",  # the trial's best value of the search metric (NaN when none)
    "params_count",
    "gflops_per_roi",
    "latency_ms",  # ONNX Runtime latency per ROI
    "onnx_uri",  # MLflow artifact URI of the exported ONNX ("" when none)
)
# One row per configuration (finished trials only).
CONFIG_COLUMNS = (
    "config",
    "n",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "params_count",
    "gflops_per_roi",
    "latency_ms",
    "best_trial",
    "onnx_uri",
)  # fmt: skip  (factor columns are inserted after "config")
# One row per non-reference level of every factor.
EFFECT_COLUMNS = (
    "factor", "level", "reference", "estimate", "std_error", "ci_low", "ci_high",
    "verdict", "more_seeds", "delta_gflops_per_roi", "delta_latency_ms",
)  # fmt: skip
INTERACTION_COLUMNS = (
    "factor_a", "level_a", "factor_b", "level_b", "estimate", "std_error", "ci_low", "ci_high",
)  # fmt: skip
VARIANCE_COLUMNS = ("term", "share")  # term: "cascade" or "cascade:decoder"; "residual" for seed noise
PARETO_COLUMNS = ("cost", "config", "mean", "cost_value", "best_trial", "onnx_uri", "on_front")
CURVE_COLUMNS = ("config", "trial", "epoch", "value")

VERDICTS = ("better", "worse", "equivalent", "undecided")


@dataclass(frozen=True)
class Completeness:
    """How far the search got: trials done against trials expected, and the driver's state."""

    expected: int | None
    finished: int
    pruned: int
    errored: int
    running: int
    state: str  # "finished" | "incomplete" (trials errored) | "stopped" | "running" | "unknown"

    @classmethod
    def of(cls, trials: pd.DataFrame, expected: int | None, state: str) -> Completeness:
        """Counted from a trial table's ``state`` column (trials in no end state are running)."""
        counts = {s: int((trials["state"] == s).sum()) for s in ("finished", "pruned", "errored")}
        return cls(expected=expected, **counts, running=len(trials) - sum(counts.values()), state=state)

    @property
    def done(self) -> int:
        return self.finished + self.pruned + self.errored

    @property
    def complete(self) -> bool:
        return self.state == "finished" and (self.expected is None or self.done >= self.expected)


@dataclass(frozen=True)
class AblationAnalysis:
    search: str
    metric: str
    mode: str  # "max" | "min"
    factors: tuple[str, ...]  # the columns of ``trials`` that vary between configurations
    trials: pd.DataFrame  # TRIAL_COLUMNS + factors
    configs: pd.DataFrame  # CONFIG_COLUMNS + factors
    effects: pd.DataFrame  # EFFECT_COLUMNS
    interactions: pd.DataFrame  # INTERACTION_COLUMNS
    variance: pd.DataFrame  # VARIANCE_COLUMNS
    pareto: pd.DataFrame  # PARETO_COLUMNS
    curves: pd.DataFrame  # CURVE_COLUMNS
    completeness: Completeness
    rope: float = 0.01  # region of practical equivalence of an effect, in metric units
    method: str = ""  # how effects and intervals were estimated, said in every output
    notes: tuple[str, ...] = field(default_factory=tuple)  # warnings shown at the top of every output
    extra: dict[str, Any] = field(default_factory=dict)
