"""The planner of adaptive seeds (``search/adaptive.py``): which cells get one more seed.

From the trials that ended so far (one row per trial: ``cell``, ``seed``, ``state``, ``score`` and
the feature flags), the effects are estimated as ``edgeseg report`` estimates them, and the next
round goes to

- the cells at either level of an *undecided* effect whose "needs N more seeds" fits in ``left``
  (an effect that would need more stays undecided rather than being chased);
- the *contenders* for the best configuration: cells whose confidence interval overlaps the best's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from edgeseg.report.analysis import Completeness
from edgeseg.report.effects import analyse


def plan_next_round(
    done: pd.DataFrame, flags: Sequence[Mapping[str, str]], *, left: int, metric: str, mode: str, rope: float
) -> list[int]:
    """The indices (into ``flags``) of the cells that get one more seed; empty: nothing more to learn."""
    trials = done.copy()
    trials["config"] = trials["cell"].map(lambda c: f"cell {c}")
    cell_of = dict(zip(trials["config"], trials["cell"], strict=True))
    analysis = analyse(trials, search="adaptive", metric=metric, mode=mode, factors=list(flags[0]),
                       completeness=Completeness.of(trials, None, "running"), rope=rope)  # fmt: skip
    picked: set[int] = set()
    for _, effect in analysis.effects.iterrows():
        needs = effect["more_seeds"]
        if effect["verdict"] == "undecided" and pd.notna(needs) and 0 < needs <= left:
            levels = {effect["level"], effect["reference"]}
            picked |= {i for i, f in enumerate(flags) if f.get(effect["factor"]) in levels}
    return sorted(picked | {int(cell_of[label]) for label in contenders(analysis.configs, mode)})


def contenders(configs: pd.DataFrame, mode: str) -> set[str]:
    """The configurations whose interval overlaps the best one's (none when the best stands alone)."""
    if configs.empty:
        return set()
    ordered = configs.sort_values("mean", ascending=mode == "min")
    best = ordered.iloc[0]
    overlap = (
        ordered[ordered["ci_high"] >= best["ci_low"]]
        if mode == "max"
        else ordered[ordered["ci_low"] <= best["ci_high"]]
    )
    if len(overlap) < 2:
        return set()
    return set(overlap["config"])
