"""Adaptive seeds: more repeats only where a verdict is still undecided.

A Tune ``Searcher`` over the design's cells. Round 1 trains every cell with ``repeats`` seeds. When a
round has ended, a *planner* (``edgeseg.report.adaptive.plan_next_round``: the same statistics as
``edgeseg report``) estimates the effects from what finished so far and picks the cells that get one
more seed in the next round, those that can still change an answer:

- the cells at either level of an *undecided* effect whose "needs N more seeds" fits in what is left
  of ``max_repeats`` (an effect that would need more is left undecided rather than chased);
- the *contenders* for the best configuration: cells whose confidence interval overlaps the best's.

The search ends when no cell is picked or every picked cell has ``max_repeats`` seeds. The trial
configs have the grid searcher's shape (``{"overrides": cell, "repeat": r}``), so everything
downstream (trainable, tracker, report) is unchanged.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from ray.tune.search import Searcher

from edgeseg.search.spec import improves, is_finite_number


class Planner(Protocol):
    """Picks the cells of the next round from the ended trials (``edgeseg.report.adaptive`` has the
    one the CLI passes; the statistics live in the analysis layer, above this one)."""

    def __call__(
        self, done: pd.DataFrame, flags: Sequence[Mapping[str, str]], *, left: int, metric: str, mode: str,
        rope: float,
    ) -> Sequence[int]: ...  # fmt: skip


class AdaptiveSeeds(Searcher):
    def __init__(
        self, cells: Sequence[Mapping[str, Any]], flags: Sequence[Mapping[str, str]], *, planner: Planner,
        repeats: int, max_repeats: int, metric: str, mode: str, scored_epochs: int, rope: float = 0.01,
    ) -> None:  # fmt: skip
        super().__init__()  # Tune sets metric and mode from TuneConfig; the score is ours
        self.planner = planner  # a module-level function: pickled by reference with the search state
        self.score_metric, self.score_mode = metric, mode
        self.cells = [dict(c) for c in cells]
        self.flags = [dict(f) for f in flags]
        self.max_repeats = max_repeats
        self.scored_epochs = scored_epochs  # the epoch trials are compared at
        self.rope = rope
        self.seeds = [0] * len(self.cells)  # seeds given to each cell so far
        self.queue: list[tuple[int, int]] = []  # (cell, repeat) still to suggest
        self.live: dict[str, tuple[int, int]] = {}
        self.best: dict[str, float] = {}  # trial -> best metric value so far
        self.done: list[dict[str, Any]] = []  # one row per ended trial
        self.rounds: list[int] = []  # cells picked per round
        self._add_round(range(len(self.cells)), repeats)

    @property
    def max_trials(self) -> int:
        """Every cell at ``max_repeats`` seeds: the most trials the search can run."""
        return len(self.cells) * self.max_repeats

    # -- Searcher API ---------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | None:  # or Searcher.FINISHED, as Tune documents
        if not self.queue and not self.live:
            self._add_round(self.next_cells(), 1)
            if not self.queue:
                return Searcher.FINISHED  # type: ignore[return-value]
        if not self.queue:
            return None  # wait for the round to end
        cell, repeat = self.queue.pop(0)
        self.live[trial_id] = (cell, repeat)
        return {"overrides": self.cells[cell], "repeat": repeat}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        value = result.get(self.score_metric)
        if int(result.get("epoch", 0) or 0) > self.scored_epochs:
            return  # past the scored budget (design.effects_budget): the planner compares cells there
        if is_finite_number(value) and improves(value, self.best.get(trial_id), self.score_mode):
            self.best[trial_id] = float(value)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id not in self.live:
            return
        if result:
            self.on_trial_result(trial_id, result)

        cell, repeat = self.live.pop(trial_id)
        epoch = int((result or {}).get("epoch", 0) or 0)
        state = "errored" if error else ("finished" if epoch >= self.scored_epochs else "pruned")
        self.done.append({"trial": trial_id, "cell": cell, "seed": float(repeat), "state": state,
                          "score": self.best.get(trial_id, math.nan), **self.flags[cell]})  # fmt: skip

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(pickle.dumps(self.__dict__))

    def restore(self, checkpoint_path: str) -> None:
        state = pickle.loads(Path(checkpoint_path).read_bytes())
        # trials that were live when the driver stopped are restarted by Tune under the same id
        self.__dict__.update(state)

    # -- rounds ---------------------------------------------------------------------------------
    def _add_round(self, cells: Sequence[int], seeds: int) -> None:
        picked = [c for c in cells if self.seeds[c] < self.max_repeats]
        for cell in picked:
            for _ in range(min(seeds, self.max_repeats - self.seeds[cell])):
                self.queue.append((cell, self.seeds[cell]))
                self.seeds[cell] += 1
        if picked:
            self.rounds.append(len(picked))

    def next_cells(self) -> list[int]:
        """The cells the planner gives one more seed (none: the search is done)."""
        done = pd.DataFrame(self.done)
        if done.empty or not (done["state"] == "finished").any():
            return []
        left = self.max_repeats - min(self.seeds)
        return list(self.planner(done, self.flags, left=left, metric=self.score_metric, mode=self.score_mode,
                                 rope=self.rope))  # fmt: skip
