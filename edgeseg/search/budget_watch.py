"""Multi-fidelity, as the search runs: does the low budget rank the cells as the full budget does?

With ``design.effects_budget`` set, the tracker feeds every trial's metric here. Each time a trial
that trained its full budget ends, Kendall's tau between the cells' mean best scores within the
first ``budget`` epochs and over all epochs is recomputed (over the cells with such a trial) and
logged on the search's parent run (``effects_budget/kendall_tau``, step = trials compared), so the
MLflow UI shows while the search runs whether the low-budget effects will hold. The report
(``report/fidelity.py``) computes the same figure from every run at the end.
"""

from __future__ import annotations

from edgeseg.search.spec import improves

METRIC = "effects_budget/kendall_tau"


class BudgetWatch:
    def __init__(self, budget: int, mode: str) -> None:
        self.budget = budget
        self.mode = mode
        self.low: dict[str, float] = {}  # trial -> best value within the budget
        self.cells: dict[str, list[tuple[float, float]]] = {}  # cell -> (low, full) per finished trial

    def observe(self, trial_id: str, epoch: int, value: float) -> None:
        """One finite metric value of ``trial_id`` at ``epoch``."""
        if epoch <= self.budget and improves(value, self.low.get(trial_id), self.mode):
            self.low[trial_id] = value

    def finished(self, trial_id: str, cell: str, full: float | None) -> tuple[int, float] | None:
        """A trial of ``cell`` trained its full budget with best value ``full``: (trials compared, tau)
        once three cells have such a trial, else None."""
        from scipy.stats import kendalltau

        low = self.low.get(trial_id)
        if low is None or full is None:
            return None
        self.cells.setdefault(cell, []).append((low, full))
        if len(self.cells) < 3:
            return None
        lows = [sum(p[0] for p in pairs) / len(pairs) for pairs in self.cells.values()]
        fulls = [sum(p[1] for p in pairs) / len(pairs) for pairs in self.cells.values()]
        return sum(len(pairs) for pairs in self.cells.values()), float(kendalltau(lows, fulls).statistic)
