"""Fractional designs: balanced as promised, only valid cells, estimability checked, errors clear."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgeseg.search.design import DesignError, compound_factors, fractional_plan, model_matrix
from edgeseg.search.spec import (
    SpecError,
    design_plan,
    expected_trials,
    grid_variants,
    load_spec,
    spec_from_mapping,
)

SEARCHES = Path(__file__).resolve().parents[2] / "searches"
AXES = ("multiscale", "variable_roi", "rgb", "decoder", "cascade", "distance_aware")
LEVELS = (2, 2, 2, 3, 2, 2)


def seed_valid(cell: tuple[int, ...]) -> bool:
    """The seed ablation's constraints: a variable ROI needs multi-scale; the hierarchical decoder (1)
    takes no cascade and no distance-aware loss; the class-specific decoder (2) takes no cascade."""
    multiscale, variable, _rgb, decoder, cascade, distance = cell
    if variable and not multiscale:
        return False
    if decoder == 1 and (cascade or distance):
        return False
    return not (decoder == 2 and cascade)


VALID = [c for c in itertools.product(*(range(n) for n in LEVELS)) if seed_valid(c)]


def compound_rows(plan_cells, valid=VALID, names=AXES) -> tuple[np.ndarray, list[int]]:
    groups, compound = compound_factors(valid, names)
    rows = [
        [compound[g].index(tuple(cell[i] for i in group)) for g, group in enumerate(groups)]
        for cell in plan_cells
    ]
    return np.asarray(rows), [len(c) for c in compound]


def test_seed_axes_group_into_three_compound_factors():
    groups, compound = compound_factors(VALID, AXES)
    assert len(VALID) == 42
    assert sorted(tuple(AXES[i] for i in g) for g in groups) == sorted(
        [("multiscale", "variable_roi"), ("rgb",), ("decoder", "cascade", "distance_aware")]
    )
    assert sorted(len(c) for c in compound) == [2, 3, 7]


@pytest.mark.parametrize("reduction", [2, 3])
def test_fractional_design_picks_valid_balanced_cells_with_estimable_main_effects(reduction):
    plan = fractional_plan(VALID, AXES, reduction=reduction)
    assert plan.kind == "fractional" and plan.reduction == reduction
    assert len(plan.cells) < len(VALID) and len(set(plan.cells)) == len(plan.cells)
    assert set(plan.cells) <= set(VALID)  # never an invalid cell
    rows, levels = compound_rows(plan.cells)
    for factor, n in enumerate(levels):
        counts = Counter(rows[:, factor])
        assert sorted(counts) == list(range(n))  # every level of every compound factor is trained
        assert max(counts.values()) - min(counts.values()) <= 1  # balanced
    matrix = model_matrix(rows, levels)
    assert np.linalg.matrix_rank(matrix) == matrix.shape[1]
    for axis, n in enumerate(LEVELS):  # every original axis keeps all its levels, so its effect exists
        assert {cell[axis] for cell in plan.cells} == set(range(n))


def test_default_reduction_is_the_largest_that_keeps_main_effects():
    plan = fractional_plan(VALID, AXES)
    assert len(plan.cells) == 14 and plan.reduction == 3
    with pytest.raises(DesignError, match="reduction 4"):
        fractional_plan(VALID, AXES, reduction=4)  # one more loses a main effect
    assert plan.aliased_pairs  # and the two-way interactions are given up, said in the plan
    assert "not estimable" in plan.describe() and "14 of 42" in plan.describe()


def test_two_level_design_is_orthogonal_with_the_library_alias_structure():
    valid = list(itertools.product(range(2), repeat=4))
    plan = fractional_plan(valid, ["a", "b", "c", "d"], reduction=2)
    coded = 2.0 * np.asarray(plan.cells) - 1.0
    assert len(plan.cells) == 8
    assert np.array_equal(coded.T @ coded, 8 * np.eye(4))  # main effects orthogonal
    assert np.allclose(coded.sum(axis=0), 0)
    # pyDOE3 reports a resolution IV half fraction: no main effect aliased with another or with a 2fi
    assert {"a = bcd", "ab = cd"} <= set(plan.aliasing)
    mains = [a for a in plan.aliasing if len(a.split(" = ")[0]) == 1]
    assert all(len(alias) >= 3 for entry in mains for alias in entry.split(" = ")[1:])


def test_interactions_kept_when_asked():
    valid = list(itertools.product(range(2), repeat=5))
    plan = fractional_plan(valid, list("abcde"), estimable="interactions")
    rows, levels = np.asarray(plan.cells), [2] * 5
    pairs = list(itertools.combinations(range(5), 2))
    matrix = model_matrix(rows, levels, pairs)
    assert len(plan.cells) < 32 and np.linalg.matrix_rank(matrix) == matrix.shape[1]
    assert plan.aliased_pairs == ()
    with pytest.raises(DesignError, match="interactions are aliased"):
        fractional_plan(valid, list("abcde"), reduction=4, estimable="interactions")


def test_constraints_across_groups_are_refused():
    valid = [c for c in itertools.product(range(2), repeat=3) if c != (1, 1, 1)]
    with pytest.raises(DesignError, match="not a product of independent groups"):
        fractional_plan(valid, ["a", "b", "c"])


def spec_body(design: dict, **extra) -> dict:
    body = yaml.safe_load((SEARCHES / "ablation-video.yaml").read_text())
    body.update(design=design, **extra)
    return body


def test_adaptive_seeds_spec_hands_every_trial_to_the_searcher():
    from edgeseg.report.adaptive import plan_next_round
    from edgeseg.search.adaptive import AdaptiveSeeds
    from edgeseg.search.space import param_space, search_algorithm

    spec = spec_from_mapping(spec_body({"kind": "fractional", "max_repeats": 5}))
    assert param_space(spec) == {}  # no grid_search: the searcher suggests cells and seeds
    alg = search_algorithm(spec, plan_next_round)
    assert isinstance(alg, AdaptiveSeeds) and len(alg.cells) == 14 and len(alg.queue) == 14 * spec.repeats
    assert {f["multiscale"] for f in alg.flags} == {"true", "false"}
    assert expected_trials(spec) == 14 * spec.repeats  # the first round; later rounds add to it
    with pytest.raises(SpecError, match="needs a planner"):
        search_algorithm(spec)


def test_spec_with_fractional_design_trains_the_plan_cells():
    full = spec_from_mapping(spec_body({"kind": "full"}), source="full.yaml")
    spec = load_spec(SEARCHES / "ablation-video.yaml")  # ships with the fractional design
    variants, _ = grid_variants(spec)
    full_variants, _ = grid_variants(full)
    assert len(variants) == 14 and all(v in full_variants for v in variants)
    assert expected_trials(spec) == 14 * spec.repeats
    assert design_plan(full).kind == "full" and len(design_plan(full).cells) == 42
    assert spec_from_mapping(spec.to_dict()).design == spec.design  # round-trips


@pytest.mark.parametrize(
    ("design", "extra", "message"),
    [
        ({"kind": "fractional", "reduction": 4}, {}, "design: reduction 4: main effects are aliased"),
        ({"kind": "fractional", "estimable": "interactions", "reduction": 2}, {}, "interactions are aliased"),
        ({"kind": "full", "reduction": 2}, {}, "'design.reduction': only applies"),
        ({"kind": "fractional"}, {"searcher": {"kind": "random"}}, "'design.kind'.*needs searcher.kind grid"),
        ({"kind": "halves"}, {}, "'design.kind'.*not one of full, fractional"),
        ({"kind": "fractional", "resolution": 4}, {}, "resolution"),
        ({"max_repeats": 2}, {}, "'design.max_repeats': 2 is below repeats=3"),
        (
            {"max_repeats": 5},
            {"searcher": {"kind": "random"}},
            "'design.max_repeats'.*need searcher.kind grid",
        ),
        ({"effects_budget": 30}, {}, "'design.effects_budget': 30 exceeds the trials' 20 epochs"),
        (
            {"effects_budget": 4},
            {"scheduler": {"kind": "asha", "grace_period": 2}},
            "exceeds scheduler.grace_period=2",
        ),
    ],
)
def test_bad_design_is_refused_naming_the_key(design, extra, message):
    with pytest.raises(SpecError, match=message) as info:
        spec_from_mapping(spec_body(design, **extra), source="bad.yaml")
    assert "bad.yaml" in str(info.value)
