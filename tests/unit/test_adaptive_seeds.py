"""Adaptive seeds: more repeats only where a verdict is undecided, on a synthetic objective (no training).

The searcher is driven the way Tune drives it (suggest, results, complete) with scores that carry
planted effects and seed noise; one test runs it under a real local Ray Tune.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from ray.tune.search import Searcher

from edgeseg.report.adaptive import plan_next_round
from edgeseg.search.adaptive import AdaptiveSeeds

BIG = 0.08  # cascade: decided from the first round
SMALL = 0.02  # distance-aware: just outside the region of practical equivalence, needs more seeds
NOISE = 0.012
CELLS = [
    {"model.cascade": c, "loss.distance_aware": d} for c, d in itertools.product([False, True], repeat=2)
]
FLAGS = [{"cascade": str(c["model.cascade"]).lower(), "distance_aware": str(c["loss.distance_aware"]).lower()}
         for c in CELLS]  # fmt: skip


def searcher(repeats: int = 2, max_repeats: int = 6) -> AdaptiveSeeds:
    return AdaptiveSeeds(CELLS, FLAGS, planner=plan_next_round, repeats=repeats, max_repeats=max_repeats,
                         metric="val/miou", mode="max", scored_epochs=2)  # fmt: skip


def score(config: dict, rng: np.random.Generator) -> float:
    o = config["overrides"]
    return 0.4 + BIG * o["model.cascade"] + SMALL * o["loss.distance_aware"] + rng.normal(0, NOISE)


def drive(
    alg: AdaptiveSeeds, rng: np.random.Generator, concurrency: int = 2, stop_after: int | None = None
) -> int:
    """Run trials as Tune would, ``concurrency`` at a time; the number of trials run."""
    live: list[tuple[str, dict]] = []
    count = 0
    while True:
        while len(live) < concurrency and (stop_after is None or count < stop_after):
            trial_id = f"t{count:03d}"
            config = alg.suggest(trial_id)
            if config is None or config == Searcher.FINISHED:
                break
            live.append((trial_id, config))
            count += 1
        if not live:
            return count
        trial_id, config = live.pop(0)
        value = score(config, rng)
        alg.on_trial_result(trial_id, {"epoch": 1, "val/miou": value - 0.05})
        alg.on_trial_complete(trial_id, {"epoch": 2, "val/miou": value})
        if stop_after is not None and count >= stop_after and not live:
            return count


def test_rounds_add_seeds_only_until_the_verdicts_are_decided():
    alg = searcher()
    total = drive(alg, np.random.default_rng(3))
    assert alg.suggest("after") == Searcher.FINISHED
    assert alg.rounds[0] == len(CELLS)  # the first round: every cell with `repeats` seeds
    assert total == sum(alg.seeds) and total < len(CELLS) * alg.max_repeats  # it stopped before the cap
    assert len(alg.rounds) > 1  # and it did add seeds: SMALL is not decided by 2 seeds per cell
    done = [row for row in alg.done if row["state"] == "finished"]
    assert len(done) == total
    # every cell ran repeats 0..n-1, each once
    for cell in range(len(CELLS)):
        assert sorted(r["seed"] for r in done if r["cell"] == cell) == list(range(alg.seeds[cell]))


def test_a_clear_effect_and_clear_winner_need_no_more_seeds():
    alg = AdaptiveSeeds(CELLS[::2], FLAGS[::2], planner=plan_next_round, repeats=3, max_repeats=6,
                        metric="val/miou", mode="max", scored_epochs=2)  # fmt: skip
    total = drive(alg, np.random.default_rng(0))  # only cascade varies: BIG is decided at once
    assert total == 6 and alg.rounds == [2]


def test_state_survives_save_and_restore_mid_round(tmp_path: Path):
    rng = np.random.default_rng(5)
    alg = searcher()
    drive(alg, rng, stop_after=3)  # three trials ended, five of the first round not yet suggested
    alg.save(str(tmp_path / "searcher.pkl"))
    restored = searcher()
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.seeds == alg.seeds and restored.queue == alg.queue and len(restored.done) == 3
    assert drive(restored, rng) > 0 and restored.suggest("end") == Searcher.FINISHED


@pytest.mark.integration
def test_adaptive_seeds_end_a_real_tune_run(tmp_path: Path):
    import ray
    from ray import tune

    big, small, noise = BIG, SMALL, NOISE

    def trainable(config):  # nested and self-contained: Ray's workers cannot import this test module
        o = config["overrides"]
        rng = np.random.default_rng(int(config["repeat"]) * 17 + int(o["model.cascade"]))
        value = 0.4 + big * o["model.cascade"] + small * o["loss.distance_aware"] + rng.normal(0, noise)
        tune.report({"epoch": 1, "val/miou": value - 0.05})
        tune.report({"epoch": 2, "val/miou": value})

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        alg = searcher(max_repeats=4)
        results = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric="val/miou", mode="max", search_alg=alg, num_samples=16, max_concurrent_trials=2
            ),  # fmt: skip
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    assert not results.errors and 2 * len(CELLS) <= len(results) < 16  # ended by the searcher, not the cap
    keys = [(tuple(r.config["overrides"].values()), r.config["repeat"]) for r in results]
    assert len(set(keys)) == len(keys)  # no (cell, seed) twice
    for cell in CELLS:
        seeds = sorted(repeat for values, repeat in keys if values == tuple(cell.values()))
        assert seeds == list(range(len(seeds))) and len(seeds) >= 2


def test_with_an_effects_budget_trials_are_compared_at_it():
    alg = AdaptiveSeeds(CELLS, FLAGS, planner=plan_next_round, repeats=2, max_repeats=4, metric="val/miou",
                        mode="max", scored_epochs=1)  # fmt: skip
    config = alg.suggest("a")
    alg.on_trial_result("a", {"epoch": 1, "val/miou": 0.3})
    alg.on_trial_result("a", {"epoch": 2, "val/miou": 0.9})  # past the budget: not the score
    alg.on_trial_complete("a", {"epoch": 2, "val/miou": 0.9})
    assert config is not None and alg.done[0]["score"] == 0.3 and alg.done[0]["state"] == "finished"
    alg.suggest("b")
    alg.on_trial_complete("b", {"epoch": 0, "val/miou": 0.1})  # stopped before the budget
    assert alg.done[1]["state"] == "pruned"
