"""Which cells of a factorial grid an ablation trains: the full grid or a fractional design.

A fractional design trains a balanced subset of the cells chosen so that the main effects (and, when
asked, the two-way interactions) stay estimable. The subset comes from pyDOE3's *generalized subset
design* (GSD, Surowiec et al. 2017), which handles mixed-level factors such as the three decoders.

The seed's axes are not independent: a variable ROI needs several layers, the hierarchical decoder
takes no cascade and no distance-aware loss. A design over the raw axes would pick invalid cells.
So the axes are first grouped, two axes in one group when some pair of their levels never occurs
among the valid cells, and each group becomes one *compound factor* whose levels are the group's
valid sub-combinations (multi-scale x variable ROI: 3 levels; decoder x cascade x distance-aware
loss: 7). The valid grid must be the product of the groups (the constraints stay inside the groups);
then the GSD over the compound factors only picks valid cells, and every original axis's effect is a
contrast between compound levels, estimable when the compound factors' main effects are.

Pure functions of level indices; ``search/spec.py`` maps them to and from the spec's axes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DESIGNS = ("full", "fractional")
ESTIMABLE = ("main", "interactions")  # what a fractional design must keep estimable


class DesignError(ValueError):
    """The grid cannot take the design asked for; the message says why and what would work."""


@dataclass(frozen=True)
class DesignPlan:
    """The cells a design trains, as level-index tuples over the axes, and what it can estimate."""

    kind: str  # "full" | "fractional"
    cells: tuple[tuple[int, ...], ...]
    full_cells: int  # valid cells of the full grid
    groups: tuple[str, ...] = ()  # compound factors: the axes merged into each, joined by "+"
    group_levels: tuple[int, ...] = ()  # levels of each compound factor
    reduction: int = 1  # GSD reduction factor (1: the full grid)
    estimable: str = "interactions"
    aliased_pairs: tuple[tuple[str, str], ...] = ()  # pairs whose interaction is lost even on its own
    # two-level designs only: pyDOE3's alias structure (factors lettered a, b, ... in ``groups`` order)
    aliasing: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "full":
            return f"full factorial: all {self.full_cells} valid cells"
        groups = ", ".join(f"{g} ({n} levels)" for g, n in zip(self.groups, self.group_levels, strict=True))
        lost = "; ".join(" x ".join(p) for p in self.aliased_pairs) or "none"
        aliasing = f"; aliases: {', '.join(self.aliasing)}" if self.aliasing else ""
        return (
            f"fractional factorial (pyDOE3 generalized subset design, reduction {self.reduction}): "
            f"{len(self.cells)} of {self.full_cells} valid cells over the compound factors {groups}; "
            f"main effects estimable; two-way interactions not estimable: {lost}{aliasing}"
        )


def full_plan(valid: Sequence[tuple[int, ...]]) -> DesignPlan:
    return DesignPlan("full", tuple(valid), len(valid))


def fractional_plan(
    valid: Sequence[tuple[int, ...]], names: Sequence[str], *, reduction: int = 0, estimable: str = "main"
) -> DesignPlan:
    """A GSD over the compound factors of ``valid`` (level-index tuples of the valid cells).

    ``reduction`` 0 picks the largest reduction whose design still keeps ``estimable``; a given
    reduction is checked and refused when it loses what ``estimable`` asks for."""
    if estimable not in ESTIMABLE:
        raise DesignError(f"estimable must be one of {', '.join(ESTIMABLE)}, not {estimable!r}")
    groups, compound = compound_factors(valid, names)
    levels = [len(c) for c in compound]
    if reduction:
        rows = _gsd_rows(levels, reduction)
        problem = _estimability_problem(rows, levels, estimable)
        if problem:
            raise DesignError(f"reduction {reduction}: {problem}; use a smaller reduction (or design: full)")
    else:
        reduction, rows = _largest_reduction(levels, estimable)
    cells = tuple(tuple(_merge(compound, row, groups, len(names))) for row in rows)
    group_names = tuple("+".join(names[i] for i in g) for g in groups)
    lost = tuple(
        (group_names[a], group_names[b])
        for a, b in itertools.combinations(range(len(groups)), 2)
        if not _pair_estimable(rows, levels, a, b)
    )
    return DesignPlan("fractional", cells, len(valid), group_names, tuple(levels), reduction, estimable, lost,
                      _library_aliasing(rows, levels))  # fmt: skip


def _library_aliasing(rows: np.ndarray, levels: Sequence[int]) -> tuple[str, ...]:
    """pyDOE3's alias structure of a two-level design (``a = bcd``, ``ab = cd``, ...); empty otherwise."""
    from pyDOE3 import fracfact_aliasing

    if any(n != 2 for n in levels) or len(levels) > 10:
        return ()
    return tuple(fracfact_aliasing((2.0 * rows - 1.0).astype(float))[0])


def compound_factors(
    valid: Sequence[tuple[int, ...]], names: Sequence[str]
) -> tuple[list[tuple[int, ...]], list[list[tuple[int, ...]]]]:
    """Groups of axes linked by invalid combinations, and each group's valid sub-combinations.

    Raises DesignError when the valid cells are not the product of the groups' sub-combinations."""
    n = len(names)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in itertools.combinations(range(n), 2):
        seen = {(cell[a], cell[b]) for cell in valid}
        if len(seen) < len({c[a] for c in valid}) * len({c[b] for c in valid}):
            parent[root(b)] = root(a)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    groups = [tuple(m) for m in members.values()]
    compound = [sorted({tuple(cell[i] for i in g) for cell in valid}) for g in groups]
    if len(valid) != int(np.prod([len(c) for c in compound])):
        raise DesignError(
            "the valid cells are not a product of independent groups of axes "
            f"({' | '.join(', '.join(names[i] for i in g) for g in groups)}), so no fractional design "
            "keeps every picked cell valid; use design: full"
        )
    return groups, compound


def _merge(
    compound: list[list[tuple[int, ...]]], row: Sequence[int], groups: list[tuple[int, ...]], n: int
) -> list[int]:
    cell = [0] * n
    for group, levels, level in zip(groups, compound, row, strict=True):
        for axis, value in zip(group, levels[level], strict=True):
            cell[axis] = value
    return cell


def _gsd_rows(levels: Sequence[int], reduction: int) -> np.ndarray:
    from pyDOE3 import fullfact, gsd

    if reduction == 1:  # GSD takes reductions > 1; 1 is the full product
        return np.asarray(fullfact(list(levels)), dtype=int)
    if len(levels) == 1:  # a GSD needs two factors; one factor's "fraction" keeps every level
        return np.arange(levels[0])[:, None]
    return np.asarray(gsd(list(levels), reduction), dtype=int)


def _largest_reduction(levels: Sequence[int], estimable: str) -> tuple[int, np.ndarray]:
    best = (1, _gsd_rows(levels, 1))
    for reduction in range(2, int(np.prod(levels)) + 1):
        try:
            rows = _gsd_rows(levels, reduction)
        except ValueError:  # pyDOE3 refuses reductions the levels cannot take
            continue
        if _estimability_problem(rows, levels, estimable):
            break
        best = (reduction, rows)
    return best


def model_matrix(
    rows: np.ndarray, levels: Sequence[int], pairs: Sequence[tuple[int, int]] = ()
) -> np.ndarray:
    """Intercept, treatment-coded main effects of every factor and the products for ``pairs``."""
    dummies = [np.eye(n)[rows[:, f]][:, 1:] for f, n in enumerate(levels)]
    columns = [np.ones((len(rows), 1)), *dummies]
    for a, b in pairs:
        columns.append(np.einsum("ri,rj->rij", dummies[a], dummies[b]).reshape(len(rows), -1))
    return np.hstack(columns)


def _full_rank(matrix: np.ndarray) -> bool:
    return bool(np.linalg.matrix_rank(matrix) == matrix.shape[1])


def _estimability_problem(rows: np.ndarray, levels: Sequence[int], estimable: str) -> str | None:
    missing = [f for f, n in enumerate(levels) if len(set(rows[:, f])) < n]
    if missing:
        return f"compound factor(s) {missing} lose a level"
    if not _full_rank(model_matrix(rows, levels)):
        return "main effects are aliased with each other"
    pairs = list(itertools.combinations(range(len(levels)), 2))
    if estimable == "interactions" and not _full_rank(model_matrix(rows, levels, pairs)):
        return "two-way interactions are aliased"
    return None


def _pair_estimable(rows: np.ndarray, levels: Sequence[int], a: int, b: int) -> bool:
    return _full_rank(model_matrix(rows, levels, [(a, b)]))
