"""A live progress table on the driver's console while a search runs.

Ray 2.60's new console output ignores ``progress_reporter`` (``CLIReporter``) unless
``RAY_AIR_NEW_OUTPUT=0``, so the search runs Tune with ``verbose=0`` and prints its own table from a
driver-side callback: one row per trial with its state, epoch, latest and best metric, and whether
ASHA (or a user) pruned it. The table is printed at most every ``interval_s`` seconds, and whenever
a trial ends. It lists the live trials (running, pending, errored) and the ``top`` best of the ended
ones, and counts the rest, so its size does not grow with the search (`edgeseg search status` lists
every trial). A NaN or infinite value is shown but never becomes a trial's best.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from ray import tune

from edgeseg.search.spec import improves, is_finite_number
from edgeseg.search.trainable import deterministic_failure


class ProgressTable(tune.Callback):
    def __init__(
        self, metric: str, mode: str, max_epochs: int, interval_s: float = 15.0, top: int = 5
    ) -> None:
        self.metric = metric
        self.top = top
        self.mode = mode
        self.max_epochs = max_epochs
        self.interval_s = interval_s
        self._best: dict[str, float] = {}
        self._epoch: dict[str, int] = {}  # a failed trial's last result may carry no epoch
        self._not_retried: set[str] = set()  # trials that failed deterministically
        self._last_print = 0.0
        self._started = time.monotonic()
        self.write: Callable[[str], Any] = _stdout

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("write", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.write = _stdout
        self._started = time.monotonic()

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        if deterministic_failure(result):
            self._not_retried.add(trial.trial_id)
        if "epoch" in result:
            self._epoch[trial.trial_id] = int(result["epoch"] or 0)
        value = result.get(self.metric)
        # `x > nan` is false: a NaN best would stay the best forever
        if is_finite_number(value) and improves(value, self._best.get(trial.trial_id), self.mode):
            self._best[trial.trial_id] = float(value)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self._last_print >= self.interval_s:
            self.print_table(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.print_table(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.print_table(trials)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.print_table(trials)

    def render(self, trials: list[Any]) -> str:
        elapsed = time.monotonic() - self._started
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        lines = [
            f"== search progress {elapsed:6.0f}s: {summary}",
            f"{'trial':12s} {'state':11s} {'epoch':>7s} {self.metric:>10s} {'best':>8s}  note",
        ]
        rows, hidden = self._rows(trials)
        for trial in rows:
            result = trial.last_result or {}
            epoch = self._epoch.get(trial.trial_id, int(result.get("epoch", 0) or 0))
            value = result.get(self.metric)
            shown = f"{value:.4f}" if isinstance(value, int | float) else "-"
            best = self._best.get(trial.trial_id)
            note = ""
            if trial.status == "TERMINATED" and epoch < self.max_epochs:
                note = f"pruned at epoch {epoch}"
            elif trial.status == "ERROR":
                note = "error, not retried" if trial.trial_id in self._not_retried else "error"
            lines.append(
                f"{trial.trial_id:12s} {trial.status:11s} {epoch:3d}/{self.max_epochs:<3d} {shown:>10s} "
                f"{(f'{best:.4f}' if best is not None else '-'):>8s}  {note}"
            )
        if hidden:
            lines.append(f"... and {hidden} more ended trials (`edgeseg search status` lists all)")
        return "\n".join(lines)

    def _rows(self, trials: list[Any]) -> tuple[list[Any], int]:
        """The trials shown, in their order: live and errored ones, and the ``top`` best ended ones;
        and how many ended trials are left out."""
        ended = [t for t in trials if t.status == "TERMINATED" and t.trial_id in self._best]
        sign = -1.0 if self.mode == "max" else 1.0
        best = {t.trial_id for t in sorted(ended, key=lambda t: sign * self._best[t.trial_id])[: self.top]}
        shown = [
            t
            for t in trials
            if t.status != "TERMINATED" or t.trial_id in best or t.trial_id not in self._best
        ]
        return shown, len(trials) - len(shown)

    def print_table(self, trials: list[Any]) -> None:
        self._last_print = time.monotonic()
        self.write(self.render(trials))


def _stdout(text: str) -> None:
    print(text, file=sys.stdout, flush=True)
