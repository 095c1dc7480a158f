"""Which factor moves the metric, by how much, how sure we are: the statistics of an ablation report.

A search gives one score per trial (its best value of the search metric); every configuration (one
level per factor) is repeated over seeds. From the *finished* trials only (pruned ones were cut short
by ASHA, so their scores are truncated; errored ones have none) this module fills an
:class:`~edgeseg.report.analysis.AblationAnalysis`:

* **Main effects** come from an ordinary least-squares model with main effects only and treatment
  coding, ``score ~ C(f1, Treatment(reference=r1)) + C(f2, ...) + ...``, fitted on the seed-level
  scores. Each coefficient is "level vs the factor's reference level, the other factors held fixed",
  with a t interval. A regression rather than differences of marginal means keeps the contrasts
  right when the design is an incomplete factorial (the cascade only built with the plain decoder, a
  cell missing because it errored). A coefficient the design cannot separate from others (two
  flags that always change together) is detected by an estimability check on the design matrix and
  reported as NaN, never as the arbitrary number a pseudo-inverse would give.
* **Verdicts** compare the interval with a region of practical equivalence (ROPE, ``±rope`` in
  metric units): *equivalent* if the whole interval lies inside it, *better*/*worse* (in the
  direction of the metric) if it excludes zero, else *undecided* with an estimate of how many more
  seeds per configuration would decide it.
* **Interactions**: one model with every main effect and every two-way interaction; an interaction
  coefficient is the difference of differences of the two factors' effects, with a t interval.
* **Variance shares** are a functional-ANOVA decomposition of the total sum of squares into every
  factor, every pair of factors, the higher-order rest (with three factors or more) and the residual
  within configurations (seed noise). Terms enter by sequential projection; for a balanced full
  factorial the terms are orthogonal and the shares are exact, otherwise they depend on the order
  and are approximate (said in the notes).
* **Pareto fronts** of configuration mean against GFLOPs per ROI and against latency.

Pure pandas/numpy/scipy/statsmodels: no torch, no MLflow; the caller builds the trial table.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.tools.sm_exceptions import ModelWarning

from edgeseg.report.analysis import (
    CONFIG_COLUMNS,
    CURVE_COLUMNS,
    EFFECT_COLUMNS,
    INTERACTION_COLUMNS,
    PARETO_COLUMNS,
    TRIAL_COLUMNS,
    VARIANCE_COLUMNS,
    AblationAnalysis,
    Completeness,
)

# The "off" value of a factor, in order of preference, when the caller names no reference level.
REFERENCE_PREFERENCE = ("false", "none", "plain", "off")
COSTS = ("gflops_per_roi", "latency_ms")
MODES = ("max", "min")
HIGHER_ORDER = "higher_order"  # variance term: every interaction of three factors or more
RESIDUAL = "residual"  # variance term: spread between seeds of one configuration

# Factor levels enter the formulas as codes ``f<factor>v<level>`` so that any level string ("a,b",
# "3.0", "it's") is formula-safe and every design column name can be decoded back unambiguously.
_CODE = re.compile(r"f(\d+)v(\d+)")
_ALIAS_TOL = 1e-6  # a coefficient is estimable when its null-space component is below this
_TEXT_DEFAULTS = {"run_id": "", "config": "", "onnx_uri": "", "trial": ""}


class Estimates(NamedTuple):
    """The main-effects table and what the renderers must say about it."""

    table: pd.DataFrame  # EFFECT_COLUMNS
    notes: list[str]
    n: int  # seed-level scores in the model
    residual_df: int
    estimable: int  # model coefficients (intercept included) the design identifies


@dataclass(frozen=True)
class _Design:
    """Finished seed-level scores with each factor recoded as ``x<i>`` holding level codes."""

    data: pd.DataFrame  # "y" and x0, x1, ...
    factors: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]  # per factor, its levels sorted; index j is code f<i>v<j>
    references: tuple[int, ...]  # per factor, the index of its reference level

    def term(self, i: int) -> str:
        return f"C(x{i}, Treatment(reference='f{i}v{self.references[i]}'))"

    def decode(self, column: str) -> list[tuple[int, str]]:
        """(factor index, level) of every non-reference level a design column is about."""
        found: list[tuple[int, str]] = []
        for i_text, j_text in _CODE.findall(column):
            i, j = int(i_text), int(j_text)
            if j != self.references[i] and (i, self.levels[i][j]) not in found:
                found.append((i, self.levels[i][j]))
        return found

    def describe(self, column: str) -> str:
        named = [f"{self.factors[i]}={level}" for i, level in self.decode(column)]
        return " & ".join(named) if named else "the intercept"


@dataclass(frozen=True)
class _Fit:
    columns: list[str]
    estimate: np.ndarray
    std_error: np.ndarray  # NaN where not estimable or without residual degrees of freedom
    estimable: np.ndarray  # bool per column
    aliases: dict[int, list[int]]  # non-estimable column -> the columns it is confounded with
    residual_df: int
    t_critical: float  # NaN without residual degrees of freedom


def analyse(
    trials: pd.DataFrame, *, search: str, metric: str, mode: str, factors: Sequence[str],
    completeness: Completeness, curves: pd.DataFrame | None = None,
    references: Mapping[str, str] | None = None, rope: float = 0.01, confidence: float = 0.95,
) -> AblationAnalysis:  # fmt: skip
    """Every table of an ablation report from one row per trial (TRIAL_COLUMNS + one string column
    per factor). Only finished trials with a finite score enter the statistics."""
    _check_arguments(trials, factors, mode, rope, confidence)
    table = _normalise_trials(trials, factors)
    varying, notes = _varying_factors(_usable(table), factors)
    table["config"] = config_labels(table, varying)
    table = table[[*TRIAL_COLUMNS, *varying]]
    usable = _usable(table)
    refs, reference_notes = resolve_references(usable, varying, references)
    notes += reference_notes + _state_notes(table, completeness)
    configs = config_table(usable, varying, mode=mode, confidence=confidence)
    seeds = float(configs["n"].mean()) if len(configs) else math.nan
    estimates = main_effects(usable, varying, refs, mode=mode, rope=rope, confidence=confidence, seeds=seeds)
    interactions, interaction_notes = interaction_effects(usable, varying, refs, confidence=confidence)
    variance, variance_notes = variance_shares(usable, varying)
    notes += estimates.notes + interaction_notes + variance_notes + _config_notes(configs)
    return AblationAnalysis(
        search=search, metric=metric, mode=mode, factors=tuple(varying), trials=table.reset_index(drop=True),
        configs=configs, effects=estimates.table, interactions=interactions, variance=variance,
        pareto=pareto_table(configs, mode=mode), curves=validate_curves(curves), completeness=completeness,
        rope=rope, method=_method(estimates, confidence, rope), notes=tuple(notes),
        extra={"references": refs, "n_observations": estimates.n, "residual_df": estimates.residual_df,
               "seeds_per_config": seeds},
    )  # fmt: skip


def _check_arguments(
    trials: pd.DataFrame, factors: Sequence[str], mode: str, rope: float, confidence: float
) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), not {confidence}")
    if not rope >= 0:
        raise ValueError(f"rope must be >= 0, not {rope}")
    missing = [c for c in ("trial", "state", "score", *factors) if c not in trials.columns]
    if missing:
        raise ValueError(f"the trial table lacks the columns {missing}")
    if len(set(factors)) != len(factors) or set(factors) & set(TRIAL_COLUMNS):
        raise ValueError(f"factors must be distinct and not trial columns: {list(factors)}")


def _normalise_trials(trials: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    """A copy with every TRIAL_COLUMN present (missing text as "", missing numbers as NaN), the
    score and costs as floats and the factor levels as strings."""
    table = trials.copy()
    for column in TRIAL_COLUMNS:
        if column not in table.columns:
            table[column] = _TEXT_DEFAULTS.get(column, math.nan)
    for column in ("score", "params_count", "gflops_per_roi", "latency_ms"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    for column in ("trial", "run_id", "state", "config", "onnx_uri", *factors):
        table[column] = table[column].fillna("").astype(str)
    return table.reset_index(drop=True)


def _usable(table: pd.DataFrame) -> pd.DataFrame:
    """The rows the statistics may use: finished, with a finite score. Pruned trials are truncated
    by ASHA and would bias every effect towards the configurations it stopped early."""
    keep = (table["state"] == "finished") & np.isfinite(table["score"].to_numpy(dtype=float))
    return table[keep].reset_index(drop=True)


def _varying_factors(usable: pd.DataFrame, factors: Sequence[str]) -> tuple[list[str], list[str]]:
    """The factors that vary, minus those whose main effect the factors before them already span
    (e.g. ``layers`` and ``fusion`` when an axis ``multiscale`` sets both): such a factor adds no
    information, only columns the model cannot separate. A factor that is merely a function of all the
    others, as every factor is in a fractional design with one trial per cell, keeps its effect.
    ``factors`` comes in order of priority (declared axes first)."""
    varying: list[str] = []
    notes = []
    for factor in factors:
        if usable[factor].nunique() <= 1:
            levels = ", ".join(repr(v) for v in sorted(usable[factor].unique())) or "no finished trial"
            notes.append(
                f"factor {factor!r} does not vary among the finished trials ({levels}) and is left out"
            )
        elif (
            varying
            and usable.groupby(varying)[factor].nunique().max() == 1
            and _spanned(usable, varying, factor)
        ):
            notes.append(
                f"factor {factor!r} is determined by {', '.join(varying)} and is left out (no effect of its own)"
            )
        else:
            varying.append(factor)
    return varying, notes


def _spanned(usable: pd.DataFrame, before: Sequence[str], factor: str) -> bool:
    """Whether ``factor``'s treatment dummies add nothing to the main-effects columns of ``before``."""

    def dummies(columns: Sequence[str]) -> np.ndarray:
        coded = pd.get_dummies(usable[list(columns)].astype(str), drop_first=True).to_numpy(dtype=float)
        return np.hstack([np.ones((len(usable), 1)), coded])

    return bool(np.linalg.matrix_rank(dummies([*before, factor])) == np.linalg.matrix_rank(dummies(before)))


def config_labels(trials: pd.DataFrame, factors: Sequence[str]) -> pd.Series:
    """The configuration of every trial: its own non-empty ``config`` value when it has one, else
    "factor=level, ..." over ``factors`` ("all" when no factor varies)."""
    built = (
        trials[list(factors)]
        .astype(str)
        .apply(lambda row: ", ".join(f"{f}={row[f]}" for f in factors), axis=1)
        if factors and len(trials)
        else pd.Series("all", index=trials.index, dtype=object)
    )
    if "config" not in trials.columns:
        return built.astype(str)
    given = trials["config"].fillna("").astype(str)
    return given.where(given != "", built).astype(str)


def default_reference(levels: Iterable[str]) -> str:
    """The first of REFERENCE_PREFERENCE among ``levels``, else the sorted-first level."""
    present = sorted(set(levels))
    for candidate in REFERENCE_PREFERENCE:
        if candidate in present:
            return candidate
    return present[0]


def resolve_references(
    usable: pd.DataFrame, factors: Sequence[str], references: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """Each factor's reference level: the caller's when it has finished trials, else the default."""
    resolved: dict[str, str] = {}
    notes: list[str] = []
    for factor in factors:
        levels = set(usable[factor])
        wanted = (references or {}).get(factor)
        resolved[factor] = wanted if wanted is not None and wanted in levels else default_reference(levels)
        if wanted is not None and wanted not in levels:
            notes.append(
                f"reference {wanted!r} of factor {factor!r} has no finished trial; "
                f"effects are against {resolved[factor]!r} instead"
            )
    return resolved, notes


def _state_notes(table: pd.DataFrame, completeness: Completeness) -> list[str]:
    notes = []
    if not completeness.complete:
        expected = "?" if completeness.expected is None else str(completeness.expected)
        notes.append(
            f"the search is not complete (state {completeness.state!r}, {completeness.done} of {expected} "
            "trials done): effects may change as more trials finish"
        )
    counts = table["state"].value_counts()
    parts = [
        f"{int(counts[state])} {state}" for state in ("pruned", "errored", "running") if counts.get(state, 0)
    ]
    unusable = int(((table["state"] == "finished") & ~np.isfinite(table["score"])).sum())
    parts += [f"{unusable} finished without a score"] if unusable else []
    if parts:
        listed = ", ".join(parts)
        notes.append(f"left out of the statistics: {listed} (only finished trials with a score count)")
    return notes


def config_table(
    usable: pd.DataFrame, factors: Sequence[str], *, mode: str, confidence: float = 0.95
) -> pd.DataFrame:
    """One row per configuration label: seeds, mean, sample std and t interval of the mean (NaN for a
    single seed), mean costs, and the best trial (per ``mode``) with its ONNX. Best first."""
    columns = [CONFIG_COLUMNS[0], *factors, *CONFIG_COLUMNS[1:]]
    if usable.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for label, group in usable.groupby("config", sort=True):
        scores = group["score"].to_numpy(dtype=float)
        n, mean = len(scores), float(scores.mean())
        std = float(scores.std(ddof=1)) if n > 1 else math.nan
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
        best = group.loc[group["score"].idxmax() if mode == "max" else group["score"].idxmin()]
        row = {"config": label, **{f: group[f].iloc[0] for f in factors}}
        row |= {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}
        row |= {c: float(group[c].mean()) for c in ("params_count", "gflops_per_roi", "latency_ms")}
        row |= {"best_trial": best["trial"], "onnx_uri": best["onnx_uri"]}
        rows.append(row)
    configs = pd.DataFrame(rows, columns=columns)
    configs = configs.sort_values(["mean", "config"], ascending=[mode == "min", True], kind="stable")
    return configs.reset_index(drop=True)


def _config_notes(configs: pd.DataFrame) -> list[str]:
    single = int((configs["n"] < 2).sum()) if len(configs) else 0
    if not single:
        return []
    return [f"{single} of {len(configs)} configurations have a single finished seed: no interval for them"]


def _design(usable: pd.DataFrame, factors: Sequence[str], references: Mapping[str, str]) -> _Design:
    data = pd.DataFrame({"y": usable["score"].to_numpy(dtype=float)})
    levels, refs = [], []
    for i, factor in enumerate(factors):
        ordered = tuple(sorted(set(usable[factor])))
        codes = {level: f"f{i}v{j}" for j, level in enumerate(ordered)}
        data[f"x{i}"] = usable[factor].map(codes).to_numpy(dtype=object)
        levels.append(ordered)
        refs.append(ordered.index(references[factor]))
    return _Design(data, tuple(factors), tuple(levels), tuple(refs))


def _main_formula(design: _Design) -> str:
    terms = [design.term(i) for i in range(len(design.factors))]
    return "y ~ " + " + ".join(["1", *terms])


def _null_projector(exog: np.ndarray) -> tuple[np.ndarray, int]:
    """Projector onto the null space of the design matrix, and its rank. Coefficient j is estimable
    iff the unit vector e_j lies in the row space, i.e. iff the projector's (j, j) entry is ~0."""
    _, singular, vt = np.linalg.svd(exog, full_matrices=True)
    tol = singular.max() * max(exog.shape) * np.finfo(float).eps if singular.size else 0.0
    rank = int((singular > tol).sum())
    null = vt[rank:].T
    return null @ null.T, rank


def _fit(design: _Design, formula: str, confidence: float) -> _Fit:
    """OLS via statsmodels (pseudo-inverse, so a rank-deficient design does not fail). Estimates of
    estimable coefficients and their standard errors do not depend on the generalised inverse used;
    the others are arbitrary and are blanked here."""
    with warnings.catch_warnings():
        # statsmodels warns that a rank-deficient design leaves parameters undetermined; the
        # estimability check below is the answer to that, so the warning would only be noise.
        warnings.simplefilter("ignore", ModelWarning)
        result = smf.ols(formula, design.data).fit()
    exog = np.asarray(result.model.exog, dtype=float)
    projector, rank = _null_projector(exog)
    estimable = np.abs(np.diag(projector)) < _ALIAS_TOL
    aliases = {
        j: [k for k in range(exog.shape[1]) if k != j and abs(projector[j, k]) > _ALIAS_TOL]
        for j in map(int, np.flatnonzero(~estimable))
    }
    residual_df = exog.shape[0] - rank
    estimate = np.where(estimable, np.asarray(result.params, dtype=float), math.nan)
    std_error = np.full(len(estimate), math.nan)
    if residual_df > 0:  # without residual degrees of freedom there is no scale, so no error
        std_error = np.where(estimable, np.asarray(result.bse, dtype=float), math.nan)
    t_critical = float(stats.t.ppf((1 + confidence) / 2, residual_df)) if residual_df > 0 else math.nan
    return _Fit(
        list(result.model.exog_names), estimate, std_error, estimable, aliases, residual_df, t_critical
    )


def verdict(estimate: float, ci_low: float, ci_high: float, *, mode: str, rope: float) -> str:
    """The verdict on one effect: "equivalent" if the interval lies inside [-rope, rope]; else
    "better"/"worse" (in the direction of the metric: for mode "min" a negative effect is better) if
    it excludes zero; else "undecided" (also when there is no interval)."""
    if not all(math.isfinite(v) for v in (estimate, ci_low, ci_high)):
        return "undecided"
    if -rope <= ci_low and ci_high <= rope:
        return "equivalent"
    if ci_low > 0 or ci_high < 0:
        gain = estimate if mode == "max" else -estimate
        return "better" if gain > 0 else "worse"
    return "undecided"


def more_seeds_needed(estimate: float, half_width: float, rope: float, seeds: float) -> int | None:
    """How many more seeds per configuration would likely decide an undecided effect.

    The interval half-width ``h`` shrinks as 1/sqrt(seeds). Assuming the estimate stays where it is,
    the effect is decided once the half-width drops below ``target = max(|estimate|, rope - |estimate|)``:
    below ``|estimate|`` the interval excludes zero, below ``rope - |estimate|`` it fits inside the
    ROPE; whichever comes first. So ``seeds * (h / target)**2`` seeds are needed; the answer is the
    difference, rounded up, at least 1. It ignores that the t quantile also shrinks with more
    residual degrees of freedom, so it errs on the side of more seeds. None when it cannot be said
    (no interval, no seeds, or an estimate of exactly 0 with a ROPE of 0)."""
    if not all(math.isfinite(v) for v in (estimate, half_width, seeds)) or seeds <= 0 or half_width <= 0:
        return None
    target = max(abs(estimate), rope - abs(estimate))
    if target <= 0:
        return None
    needed = seeds * (half_width / target) ** 2
    return max(1, math.ceil(needed - seeds - 1e-9))


def main_effects(
    usable: pd.DataFrame, factors: Sequence[str], references: Mapping[str, str], *, mode: str,
    rope: float = 0.01, confidence: float = 0.95, seeds: float = math.nan,
) -> Estimates:  # fmt: skip
    """Every non-reference level against its factor's reference level, from one treatment-coded OLS
    model with main effects only on the seed-level scores, with verdicts and cost deltas. ``seeds``
    (seeds per configuration, for ``more_seeds``) defaults to the mean over the factor cells."""
    if usable.empty or not factors:
        return Estimates(pd.DataFrame(columns=EFFECT_COLUMNS), [], len(usable), max(len(usable) - 1, 0), 1)
    design = _design(usable, factors, references)
    fit = _fit(design, _main_formula(design), confidence)
    if not math.isfinite(seeds):
        seeds = float(usable.groupby(list(factors)).size().mean())
    rows, notes = [], []
    for j, column in enumerate(fit.columns):
        decoded = design.decode(column)
        if len(decoded) != 1:
            continue  # the intercept
        ((i, level),) = decoded
        factor = factors[i]
        row = _effect_row(fit, j, factor, level, references[factor], mode=mode, rope=rope, seeds=seeds)
        row |= _cost_deltas(usable, factor, level, references[factor])
        rows.append(row)
        if not fit.estimable[j]:
            partners = ", ".join(design.describe(fit.columns[k]) for k in fit.aliases[j])
            notes.append(
                f"effect of {factor}={level} (vs {references[factor]}) cannot be estimated: the design "
                f"never separates it from {partners or 'other levels'}"
            )
    if fit.residual_df <= 0:
        notes.append("no residual degrees of freedom (one seed per configuration?): effects have no interval")
    table = pd.DataFrame(rows, columns=EFFECT_COLUMNS)
    table["more_seeds"] = pd.array(table["more_seeds"].tolist(), dtype="Int64")
    return Estimates(table, notes, len(usable), fit.residual_df, int(fit.estimable.sum()))


def _effect_row(
    fit: _Fit, j: int, factor: str, level: str, reference: str, *, mode: str, rope: float, seeds: float
) -> dict[str, object]:
    estimate, std_error = float(fit.estimate[j]), float(fit.std_error[j])
    half = fit.t_critical * std_error
    low, high = estimate - half, estimate + half
    decided = verdict(estimate, low, high, mode=mode, rope=rope)
    more = more_seeds_needed(estimate, half, rope, seeds) if decided == "undecided" else None
    return {
        "factor": factor, "level": level, "reference": reference, "estimate": estimate,
        "std_error": std_error, "ci_low": low, "ci_high": high, "verdict": decided,
        "more_seeds": pd.NA if more is None else more,
    }  # fmt: skip


def _cost_deltas(usable: pd.DataFrame, factor: str, level: str, reference: str) -> dict[str, float]:
    """Mean cost of the level minus mean cost of the reference level, over finished trials."""
    at_level, at_reference = usable[usable[factor] == level], usable[usable[factor] == reference]
    return {
        f"delta_{cost}": float(at_level[cost].mean() - at_reference[cost].mean())
        for cost in ("gflops_per_roi", "latency_ms")
    }


def interaction_effects(
    usable: pd.DataFrame, factors: Sequence[str], references: Mapping[str, str], *, confidence: float = 0.95
) -> tuple[pd.DataFrame, list[str]]:
    """Two-way interactions from one treatment-coded OLS model: every main effect plus every pair's
    interaction, so each interaction is adjusted for the others (fitting one pair at a time would, in
    an incomplete design, blame one pair for another's interaction). A coefficient is the extra
    effect of level_a when factor_b is at level_b (difference of differences against the references).
    Cells the design cannot estimate are left out and counted in the notes."""
    rows: list[dict[str, object]] = []
    notes: list[str] = []
    if usable.empty or len(factors) < 2:
        return pd.DataFrame(columns=INTERACTION_COLUMNS), notes
    design = _design(usable, factors, references)
    fit = _fit(design, _pairs_formula(design), confidence)
    skipped = 0
    for j, column in enumerate(fit.columns):
        decoded = sorted(design.decode(column))
        if len(decoded) != 2:
            continue  # intercept and main effects
        if not fit.estimable[j]:
            skipped += 1
            continue
        (a, level_a), (b, level_b) = decoded
        half = fit.t_critical * fit.std_error[j]
        rows.append({
            "factor_a": factors[a], "level_a": level_a, "factor_b": factors[b], "level_b": level_b,
            "estimate": float(fit.estimate[j]), "std_error": float(fit.std_error[j]),
            "ci_low": float(fit.estimate[j] - half), "ci_high": float(fit.estimate[j] + half),
        })  # fmt: skip
    if skipped:
        notes.append(
            f"{skipped} interaction cells cannot be estimated (combinations missing from the design)"
        )
    if fit.residual_df <= 0:
        notes.append(
            "the interaction model has no residual degrees of freedom: interactions have no interval"
        )
    return pd.DataFrame(rows, columns=INTERACTION_COLUMNS), notes


def _pairs_formula(design: _Design) -> str:
    pairs = itertools.combinations(range(len(design.factors)), 2)
    return _main_formula(design) + "".join(f" + {design.term(a)}:{design.term(b)}" for a, b in pairs)


def _rss(exog: np.ndarray, y: np.ndarray) -> float:
    coef, *_ = np.linalg.lstsq(exog, y, rcond=None)
    residual = y - exog @ coef
    return float(residual @ residual)


def _term_blocks(design: _Design) -> tuple[np.ndarray, list[tuple[str, list[int]]]]:
    """The design matrix of every main effect and every pair, and the columns of each term in order:
    main effects first (factor order), then the pairs."""
    model = smf.ols(_pairs_formula(design), design.data)
    exog, names = np.asarray(model.exog, dtype=float), list(model.exog_names)
    owners = [tuple(sorted({i for i, _ in design.decode(name)})) for name in names]
    terms: list[tuple[int, ...]] = [(i,) for i in range(len(design.factors))]
    terms += list(itertools.combinations(range(len(design.factors)), 2))
    blocks = [
        (":".join(design.factors[i] for i in term), [k for k, owner in enumerate(owners) if owner == term])
        for term in terms
    ]
    return exog, blocks


def _is_balanced(usable: pd.DataFrame, factors: Sequence[str]) -> bool:
    """Every combination of factor levels present, each with the same number of seeds."""
    cells = usable.groupby(list(factors)).size()
    full = math.prod(usable[f].nunique() for f in factors)
    return len(cells) == full and cells.nunique() == 1


def variance_shares(usable: pd.DataFrame, factors: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Functional-ANOVA shares of the total sum of squares: each factor, each pair, the higher-order
    rest (three factors or more) and the residual within configurations (seed noise). Terms enter by
    sequential projection in the listed order: exact for a balanced full factorial."""
    y = usable["score"].to_numpy(dtype=float)
    total = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0
    if total <= 0:
        return pd.DataFrame(columns=VARIANCE_COLUMNS), ["all finished scores are equal: no variance to share"]
    within = (
        float(usable.groupby(list(factors))["score"].transform(lambda s: (s - s.mean()) ** 2).sum())
        if factors
        else total
    )
    rows: list[tuple[str, float]] = []
    if factors:
        exog, blocks = _term_blocks(_design(usable, factors, {f: usable[f].iloc[0] for f in factors}))
        taken = [0]  # the intercept
        previous = _rss(exog[:, taken], y)
        for name, columns in blocks:
            taken += columns
            current = _rss(exog[:, taken], y) if columns else previous
            rows.append((name, max(previous - current, 0.0)))
            previous = current
        if len(factors) >= 3:  # what mains and pairs leave of the between-configuration spread
            rows.append((HIGHER_ORDER, max(total - within - sum(ss for _, ss in rows), 0.0)))
    rows.append((RESIDUAL, within))
    table = pd.DataFrame([(name, ss / total) for name, ss in rows], columns=VARIANCE_COLUMNS)
    notes = []
    if factors and not _is_balanced(usable, factors):
        notes.append(
            "the design is not a balanced full factorial: variance shares are sequential sums of squares "
            "(factors, then pairs, in the listed order) and approximate; effects assume additive factors"
        )
    return table, notes


def pareto_table(configs: pd.DataFrame, *, mode: str) -> pd.DataFrame:
    """For each cost, every configuration with its mean and mean cost; ``on_front`` when no other
    configuration is at least as good on both (metric per ``mode``, lower cost) and strictly better on
    one. A configuration with no cost value is listed but never on the front."""
    frames = []
    for cost in COSTS:
        if configs.empty:
            break
        means = configs["mean"].to_numpy(dtype=float)
        values = configs[cost].to_numpy(dtype=float)
        gain = means if mode == "max" else -means  # larger is better from here on
        known = np.isfinite(values) & np.isfinite(gain)
        on_front = np.zeros(len(configs), dtype=bool)
        for k in np.flatnonzero(known):
            no_worse = known & (gain >= gain[k]) & (values <= values[k])
            strictly = (gain > gain[k]) | (values < values[k])
            on_front[k] = not bool((no_worse & strictly).any())
        frame = pd.DataFrame({
            "cost": cost, "config": configs["config"].to_numpy(), "mean": means, "cost_value": values,
            "best_trial": configs["best_trial"].to_numpy(), "onnx_uri": configs["onnx_uri"].to_numpy(),
            "on_front": on_front,
        })  # fmt: skip
        frames.append(
            frame.sort_values(["cost_value", "mean"], ascending=[True, mode == "min"], kind="stable")
        )
    if not frames:
        return pd.DataFrame(columns=PARETO_COLUMNS)
    return pd.concat(frames, ignore_index=True)[list(PARETO_COLUMNS)]


def validate_curves(curves: pd.DataFrame | None) -> pd.DataFrame:
    """The per-epoch curves with exactly CURVE_COLUMNS, or an empty frame with them."""
    if curves is None:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    missing = [c for c in CURVE_COLUMNS if c not in curves.columns]
    if missing:
        raise ValueError(f"the curves table lacks the columns {missing}")
    return curves[list(CURVE_COLUMNS)].reset_index(drop=True)


def _method(estimates: Estimates, confidence: float, rope: float) -> str:
    return (
        f"OLS main-effects model, treatment coding against each factor's reference level, fitted on "
        f"n={estimates.n} seed-level scores of finished trials ({estimates.estimable} coefficients "
        f"estimable, residual df={estimates.residual_df}); {confidence:.0%} t intervals; verdicts against "
        f"a ROPE of ±{rope:g}; interactions from one model with all main effects and all two-way interactions; "
        "variance shares by sequential sums of squares (exact for a balanced full factorial)"
    )
