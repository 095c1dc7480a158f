"""From a spec's search space to what Ray Tune takes: ``param_space`` and a search algorithm.

Every trial's Tune config has the same shape, whatever the searcher::

    {"overrides": {"train.lr": 3e-4, "multiscale": {"model.layers": "fine,mid,deep"}}, "repeat": 1}

``overrides`` holds one entry per axis: a config value, or a bundle (mapping) for a named axis;
``repeat`` indexes the seeds of ``repeats``. :func:`trial_overrides` flattens it into dotted keys.
For the grid searcher the factorial grid is expanded here, so combinations the config rejects (say
the cascade with a hierarchical decoder) are found before any trial starts: they raise, or with
``skip_invalid: true`` they are dropped and listed.
"""

from __future__ import annotations

from typing import Any

from edgeseg.config import ConfigError
from edgeseg.search.adaptive import AdaptiveSeeds, Planner
from edgeseg.search.spec import (
    SearchSpec,
    SpecError,
    apply_overrides,
    grid_variants,
    trial_overrides,
    tune_value,
)


def param_space(spec: SearchSpec) -> dict[str, Any]:
    """The Tuner's ``param_space`` for a spec."""
    from ray import tune

    space: dict[str, Any]
    if spec.design.max_repeats:
        return {}  # adaptive seeds: the searcher hands out every trial's config
    if spec.searcher.kind == "grid":
        variants, _ = grid_variants(spec)
        space = {"overrides": tune.grid_search(variants)}
    else:
        overrides: dict[str, Any] = {}
        for axis in spec.space:
            if axis.kind == "grid":
                overrides[axis.name] = tune.grid_search([tune_value(axis, v) for v in axis.values])
            elif axis.kind == "choice":
                overrides[axis.name] = tune.choice([tune_value(axis, v) for v in axis.values])
            elif axis.kind == "uniform":
                overrides[axis.name] = tune.uniform(axis.low, axis.high)
            elif axis.kind == "loguniform":
                overrides[axis.name] = tune.loguniform(axis.low, axis.high)
            elif axis.kind == "int":
                overrides[axis.name] = tune.randint(int(axis.low), int(axis.high) + 1)  # high is exclusive
            else:  # spec validation makes this unreachable
                raise ConfigError(f"space.{axis.name}: unknown distribution {axis.kind!r}")
        space = {"overrides": overrides}
    if spec.repeats > 1:
        space["repeat"] = tune.grid_search(list(range(spec.repeats)))
    return space


def search_algorithm(spec: SearchSpec, planner: Planner | None = None) -> Any:
    """OptunaSearch (seeded TPE), adaptive seeds over the design's cells, or Tune's grid/random
    variant generator, seeded.

    The variant generator and the Optuna generator (:mod:`edgeseg.search.proposals`) are not a
    ``Searcher``, so Tune would ignore ``max_concurrent_trials`` for them; they take the limit
    themselves. For adaptive seeds, the Tuner wraps them in a ConcurrencyLimiter.
    """
    if spec.design.max_repeats:
        return adaptive_seeds(spec, planner)
    if spec.searcher.kind == "optuna":
        from optuna.samplers import TPESampler

        from edgeseg.search.proposals import resumable_optuna
        from edgeseg.search.storage import control_folder

        # Stable trial ids and a journal of proposals: a resume never re-runs a finished configuration.
        journal = control_folder(str(spec.storage), spec.name).child("proposals").uri
        return resumable_optuna(TPESampler(seed=spec.searcher.seed), spec.metric, spec.mode,
                                spec.max_concurrent_trials, journal)  # fmt: skip
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(max_concurrent=spec.max_concurrent_trials, random_state=spec.searcher.seed)


def adaptive_seeds(spec: SearchSpec, planner: Planner | None) -> AdaptiveSeeds:
    if planner is None:
        raise SpecError(
            f"search spec {spec.source}: design.max_repeats (adaptive seeds) needs a planner: pass "
            "planner=edgeseg.report.adaptive.plan_next_round to run_search (`edgeseg search run` does)"
        )
    base = spec.base_config()
    cells = grid_variants(spec, base)[0]
    flags = [
        apply_overrides(base, trial_overrides({"overrides": c}), source="grid").feature_flags() for c in cells
    ]
    return AdaptiveSeeds(cells, flags, planner=planner, repeats=spec.repeats, max_repeats=spec.design.max_repeats,
                         metric=spec.metric, mode=spec.mode, scored_epochs=spec.design.effects_budget or spec.max_epochs)  # fmt: skip
