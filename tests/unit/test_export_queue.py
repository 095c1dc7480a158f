"""The driver's export worker exports trials that ran their full budget before pruned ones."""

from __future__ import annotations

from pathlib import Path

from edgeseg.search.export_jobs import ExportJob, ExportWorker


def test_pruned_trials_wait_behind_finished_ones(tmp_path: Path):
    worker = ExportWorker(start=False)  # queue everything first, then let the thread run
    jobs = [
        ExportJob(
            f"t{i}",
            f"run{i}",
            str(tmp_path / f"missing{i}"),
            "FINISHED",
            {},
            out_dir=tmp_path / f"o{i}",
            deferred=i % 2 == 0,
        )  # fmt: skip
        for i in range(6)
    ]
    for job in jobs:
        worker.submit(job)
    worker.thread.start()
    done = worker.finished(wait=True)
    worker.close()
    assert [j.trial_id for j in done] == ["t1", "t3", "t5", "t0", "t2", "t4"]
    assert all("missing" in j.error for j in done)  # no checkpoint there: each export failed, and said why
