"""Multi-fidelity effects: every cell compared at a low budget, trusted only while ranks hold.

ASHA stops most trials early, and the trials it lets finish are the promising ones, so effects from
finished trials alone are biased toward them (``effects._usable`` leaves pruned trials out for that
reason). But every trial of a search whose ``design.effects_budget`` is at most ASHA's grace period
has trained *that* many epochs: compared at that budget, all cells are on equal terms and the factorial
balance is intact. Whether a low budget says what the full budget would is measured, not assumed:
the rank correlation (Kendall's tau) between the cells' mean scores at the low budget and at the full
budget, over the cells that reached the full budget. Below ``MIN_RANK_CORRELATION`` the low-budget
effects are reported as undecided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_RANK_CORRELATION = 0.6  # Kendall's tau between budgets below which low-budget effects are not trusted


@dataclass(frozen=True)
class BudgetAgreement:
    """How the cells' ranking at ``low`` epochs agrees with their ranking at ``high`` epochs."""

    low: int
    high: int
    cells: int  # cells with trials at both budgets
    kendall_tau: float  # NaN with fewer than 3 cells
    spearman_rho: float

    @property
    def holds(self) -> bool:
        return math.isfinite(self.kendall_tau) and self.kendall_tau >= MIN_RANK_CORRELATION

    def sentence(self) -> str:
        if self.cells < 3:
            return (f"rank correlation between epoch {self.low} and epoch {self.high}: not measurable "
                    f"({self.cells} cells reached epoch {self.high}; 3 needed)")  # fmt: skip
        verdict = (
            "holds" if self.holds else f"is below {MIN_RANK_CORRELATION}, so these effects are undecided"
        )
        return (
            f"rank correlation of the cells' mean scores between epoch {self.low} and epoch {self.high} "
            f"over the {self.cells} cells that reached it: Kendall tau {self.kendall_tau:.2f}, "
            f"Spearman rho {self.spearman_rho:.2f}; it {verdict}"
        )


def best_up_to(curves: pd.DataFrame, budget: int, mode: str) -> pd.DataFrame:
    """Per trial: its best value of the metric within the first ``budget`` epochs, and whether it
    trained that long (columns ``trial``, ``score``, ``reached``)."""
    within = curves[curves["epoch"] <= budget]
    grouped = within.groupby("trial")
    best = grouped["value"].max() if mode == "max" else grouped["value"].min()
    reached = grouped["epoch"].max() >= budget
    return pd.DataFrame({"trial": best.index, "score": best.to_numpy(), "reached": reached.to_numpy()})


def at_budget(trials: pd.DataFrame, curves: pd.DataFrame, budget: int, mode: str) -> pd.DataFrame:
    """The trial table as if every search had stopped at ``budget`` epochs: a trial that trained that
    long (pruned later or not) is *finished* with its best score so far; one that did not is *pruned*."""
    scores = best_up_to(curves, budget, mode).set_index("trial")
    table = trials.copy()
    reached = table["trial"].map(scores["reached"]).fillna(False).astype(bool)
    table["score"] = table["trial"].map(scores["score"]).astype(float)
    alive = table["state"] != "errored"
    table.loc[alive & reached, "state"] = "finished"
    table.loc[alive & ~reached, "state"] = "pruned"
    table.loc[alive & reached, "epochs"] = budget
    return table


def budget_agreement(
    trials: pd.DataFrame, curves: pd.DataFrame, low: int, high: int, mode: str
) -> BudgetAgreement:
    """Kendall's tau and Spearman's rho between the cells' mean scores at ``low`` and ``high`` epochs,
    over the trials that trained ``high`` epochs (``trials`` needs ``trial`` and ``config``)."""
    from scipy.stats import kendalltau, spearmanr

    at_low = best_up_to(curves, low, mode).set_index("trial")
    at_high = best_up_to(curves, high, mode).set_index("trial")
    done = at_high.index[at_high["reached"]]
    frame = trials.set_index("trial").loc[lambda t: t.index.isin(done), ["config"]].copy()
    frame["low"] = at_low["score"].reindex(frame.index)
    frame["high"] = at_high["score"].reindex(frame.index)
    cells = frame.groupby("config")[["low", "high"]].mean().dropna()
    if len(cells) < 3 or np.ptp(cells["low"]) == 0 or np.ptp(cells["high"]) == 0:
        return BudgetAgreement(low, high, len(cells), math.nan, math.nan)
    tau = float(kendalltau(cells["low"], cells["high"]).statistic)
    rho = float(spearmanr(cells["low"], cells["high"]).statistic)
    return BudgetAgreement(low, high, len(cells), tau, rho)
