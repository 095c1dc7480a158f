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

import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from edgeseg.config import ConfigError, ExperimentConfig, apply_overrides, validate

if TYPE_CHECKING:
    from edgeseg.search.spec import Axis, SearchSpec


def axis_keys(axis: Axis) -> list[str]:
    """The dotted config keys an axis sets."""
    if axis.is_bundle:
        return sorted({k for bundle in axis.values for k, _ in bundle})
    return [axis.name]


def _value(axis: Axis, value: Any) -> Any:
    """A Tune-side value: bundles become plain dicts, tuples become lists (YAML/JSON-friendly)."""
    if axis.is_bundle:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in value}
    return list(value) if isinstance(value, tuple) else value


def trial_overrides(trial_config: Mapping[str, Any]) -> dict[str, Any]:
    """A Tune trial config -> flat dotted overrides (bundles merged in)."""
    out: dict[str, Any] = {}
    for name, value in (trial_config.get("overrides") or {}).items():
        if isinstance(value, Mapping):
            out.update(value)
        else:
            out[name] = value
    return out


def axis_labels(trial_config: Mapping[str, Any], spec: SearchSpec) -> dict[str, str]:
    """A short label per axis for tables and tags (bundles are named by their index in the axis)."""
    labels: dict[str, str] = {}
    raw = trial_config.get("overrides") or {}
    for axis in spec.space:
        if axis.name not in raw:
            continue
        value = raw[axis.name]
        if axis.is_bundle:
            as_tuple = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in value.items())
            index = axis.values.index(as_tuple) if as_tuple in axis.values else -1
            labels[axis.name] = ",".join(f"{k}={_fmt(v)}" for k, v in value.items()) or f"#{index}"
        else:
            labels[axis.name] = _fmt(value)
    return labels


def _fmt(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def grid_variants(
    spec: SearchSpec, base: ExperimentConfig | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The factorial grid as Tune ``overrides`` dicts, and descriptions of the skipped combinations."""
    base = base or spec.base_config()
    axes = [axis for axis in spec.space if axis.kind == "grid"]
    variants: list[dict[str, Any]] = []
    skipped: list[str] = []
    for combo in itertools.product(*(axis.values for axis in axes)):
        entry = {axis.name: _value(axis, value) for axis, value in zip(axes, combo, strict=True)}
        try:
            validate(apply_overrides(base, trial_overrides({"overrides": entry}), source="grid"))
        except ConfigError as exc:
            label = ", ".join(f"{k}={_fmt(v)}" for k, v in entry.items())
            if not spec.skip_invalid:
                raise ConfigError(
                    f"grid combination {{{label}}} is invalid: {exc} (set skip_invalid: true to drop such cells)"
                ) from exc
            skipped.append(f"{{{label}}}: {exc}")
            continue
        variants.append(entry)
    if not variants:
        raise ConfigError(f"search {spec.name}: every grid combination is invalid: {skipped[:3]}")
    return variants, skipped


def param_space(spec: SearchSpec) -> dict[str, Any]:
    """The Tuner's ``param_space`` for a spec."""
    from ray import tune

    space: dict[str, Any]
    if spec.searcher.kind == "grid":
        variants, _ = grid_variants(spec)
        space = {"overrides": tune.grid_search(variants)}
    else:
        overrides: dict[str, Any] = {}
        for axis in spec.space:
            if axis.kind == "grid":
                overrides[axis.name] = tune.grid_search([_value(axis, v) for v in axis.values])
            elif axis.kind == "choice":
                overrides[axis.name] = tune.choice([_value(axis, v) for v in axis.values])
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


def search_algorithm(spec: SearchSpec) -> Any:
    """OptunaSearch (seeded TPE) or Tune's grid/random variant generator, seeded.

    The variant generator is not a ``Searcher``, so Tune would ignore ``max_concurrent_trials`` for
    it; it takes the limit itself. For Optuna, the Tuner wraps it in a ConcurrencyLimiter.
    """
    if spec.searcher.kind == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=TPESampler(seed=spec.searcher.seed), metric=spec.metric, mode=spec.mode)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(max_concurrent=spec.max_concurrent_trials, random_state=spec.searcher.seed)


def expected_trials(spec: SearchSpec) -> int:
    """How many trials the search runs in total."""
    if spec.searcher.kind == "grid":
        return len(grid_variants(spec)[0]) * spec.repeats
    grid_cells = 1
    for axis in spec.space:
        if axis.kind == "grid":
            grid_cells *= len(axis.values)
    repeats = spec.repeats if spec.searcher.kind == "random" else 1
    return spec.num_samples * grid_cells * repeats
