"""The driver's progress table stays the same size however many trials a search has."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edgeseg.search.progress import ProgressTable


def trial(trial_id: str, status: str, epoch: int, value: float | None) -> SimpleNamespace:
    result = {"epoch": epoch} if value is None else {"epoch": epoch, "val/loss": value}
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=result)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_table_shows_live_trials_and_the_top_ended_ones(mode):
    table = ProgressTable("val/loss", mode, max_epochs=4, top=3)
    ended = [trial(f"done{i:03d}", "TERMINATED", 4, i / 100) for i in range(200)]
    live = [
        trial("run1", "RUNNING", 2, 0.5),
        trial("wait1", "PENDING", 0, None),
        trial("err1", "ERROR", 1, 0.7),
    ]
    trials = ended[:100] + live + ended[100:]
    for t in trials:
        if "val/loss" in t.last_result:
            table.on_trial_result(0, trials, t, t.last_result)

    lines = table.render(trials).splitlines()
    rows = [line.split()[0] for line in lines[2:-1]]
    best = ["done199", "done198", "done197"] if mode == "max" else ["done000", "done001", "done002"]
    assert sorted(rows) == sorted(["run1", "wait1", "err1", *best])
    assert lines[-1].startswith("... and 197 more ended trials")
    assert len(lines) == 2 + 6 + 1  # header, 3 live + 3 best, the count: not 203 rows


def test_small_searches_show_every_trial():
    table = ProgressTable("val/loss", "min", max_epochs=4, top=5)
    trials = [trial(f"t{i}", "TERMINATED", 4, i / 10) for i in range(4)]
    for t in trials:
        table.on_trial_result(0, trials, t, t.last_result)
    lines = table.render(trials).splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["t0", "t1", "t2", "t3"]  # in the search's order
