"""The same ablation answer for less compute: ablation strategies against the full grid, as JSON.

    python benchmarks/bench_ablation.py [--arms grid,original,fractional,...] [--epochs 12]
        [--out benchmarks/results/ablation.json] [--rerun ARM] [--home DIR]
    python benchmarks/bench_ablation.py --markdown benchmarks/results/ablation.json   # the README table

The seed's feature axes on the video-people data (``searches/ablation-video.yaml`` with
``train.epochs`` set to ``--epochs``). Every arm except ``original`` is a real ``edgeseg search run``
in its own fresh ``EDGESEG_HOME`` (data set, feature cache, MLflow store and Ray all included in its
cost); its core-seconds are the CPU time of the search's whole process tree (driver, Ray, trials),
sampled from ``/proc`` every half second. The ``grid`` arm (every cell, 3 seeds, every epoch) is
the ground truth; each arm's answer is read back from MLflow with ``edgeseg report``'s library call
and compared with it: the best configuration, Kendall's tau of the main-effect ranking and of the
cell ranking, the verdicts of the effects whose ground-truth interval excludes zero, and how many
ground-truth effects fall inside the arm's intervals.

The ``original`` arm is the research code's way (``../shared/reference/original-system.md`` §1.2,
§17): every cell to the last epoch, one after another, the backbone run again for every ROI sample.
Its epoch cost is *measured* on a sample of cells (the backbone really run for every ROI sample of
one epoch, plus the head's own epoch) and *extrapolated* to every cell, seed and epoch, and said so;
``original_per_image`` is the same with the backbone run once per image and epoch, so the share of
the saving that comes from the feature cache is visible.

Arms already in ``--out`` are kept (the ground truth runs once); ``--rerun`` runs one again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from _measure import CpuMeter, environment

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "searches" / "ablation-video.yaml"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "ablation.json"
VIDEO = Path.home() / ".cache" / "edgeseg" / "video" / "vtest.avi"
GRACE, ETA = 3, 3  # multi-fidelity: every cell to epoch 3, then successive halving by 3 (ASHA)
MULTI_FIDELITY = {
    "scheduler": {"kind": "asha", "grace_period": GRACE, "reduction_factor": ETA},
    "design": {"effects_budget": GRACE},
}
SERVICE_ARMS: dict[str, dict[str, Any]] = {
    # arm -> what it changes in the spec (beyond name and epochs)
    "grid": {"design": {"kind": "full"}},
    "fractional": {"design": {"kind": "fractional"}},
    "multifidelity": MULTI_FIDELITY,
    "fractional+multifidelity": {**MULTI_FIDELITY, "design": {"kind": "fractional", "effects_budget": GRACE}},
    "adaptive": {"repeats": 2, "design": {"max_repeats": 4}},
    "fractional+adaptive": {"repeats": 2, "design": {"kind": "fractional", "max_repeats": 4}},
    "fractional+multifidelity+adaptive": {
        **MULTI_FIDELITY,
        "repeats": 2,
        "design": {"kind": "fractional", "effects_budget": GRACE, "max_repeats": 4},
    },  # fmt: skip
}
ORIGINAL_SAMPLE = 3  # cells whose original-way epoch is measured (first, middle, last of the grid)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def arm_home(base: Path, arm: str) -> Path:
    """A fresh EDGESEG_HOME for one arm, with the video (input data, not a cost) linked in."""
    import shutil

    home = base / arm
    shutil.rmtree(home, ignore_errors=True)
    (home / "video").mkdir(parents=True)
    if not VIDEO.exists():
        raise SystemExit(f"{VIDEO} is missing: run `make video` first")
    (home / "video" / VIDEO.name).symlink_to(VIDEO)
    return home


def write_spec(home: Path, arm: str, epochs: int, changes: dict[str, Any]) -> Path:
    data = yaml.safe_load(SPEC.read_text())
    data["name"] = f"bench-ablation-{arm.replace('+', '-')}"
    data["base"]["overrides"]["train.epochs"] = epochs
    for key, value in changes.items():
        data[key] = value
    path = home / f"{arm}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_service_arm(arm: str, epochs: int, base: Path) -> dict[str, Any]:
    """One ``edgeseg search run`` of the arm's spec; its cost and its answer read back from MLflow."""
    home = arm_home(base, arm)
    spec = write_spec(home, arm, epochs, SERVICE_ARMS[arm])
    env = {**os.environ, "EDGESEG_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "edgeseg.cli", "search", "run", str(spec), "--quiet", "--num-cpus", "2"]
    log(f"{arm}: {' '.join(cmd[1:])} (EDGESEG_HOME={home})")
    began = time.perf_counter()
    with (home / "search.log").open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        meter = CpuMeter(proc.pid).start()
        code = proc.wait()
        core_seconds = meter.stop()
    wall = time.perf_counter() - began
    if code not in (0,):
        raise SystemExit(f"arm {arm}: `edgeseg search run` exited {code}; see {home / 'search.log'}")
    with environment(EDGESEG_HOME=str(home)):
        answer = service_answer(f"bench-ablation-{arm.replace('+', '-')}")
    log(f"{arm}: {wall:.0f} s wall, {core_seconds:.0f} core-s, {answer['epochs_trained']} epochs")
    return {"arm": arm, "kind": "measured", "wall_seconds": round(wall, 1), "core_seconds": round(core_seconds, 1),
            "core_seconds_by_process": meter.by_name(), "spec_changes": SERVICE_ARMS[arm], **answer}  # fmt: skip


def service_answer(name: str) -> dict[str, Any]:
    """What the report says for a finished search: effects, cells and the best configuration."""
    from edgeseg.report.ablation import build_report
    from edgeseg.search.control import locate_tracking

    where = locate_tracking(name, None, None)
    analysis = build_report(where.experiment_name, where.tracking_uri, where.search_id)
    return {**answer_of(analysis), "cells_full_budget": full_budget_cells(where, analysis)}


def full_budget_cells(where: Any, analysis: Any) -> dict[str, dict[str, float]]:
    """Mean score and seeds of every cell over its trials that trained every epoch, keyed by all the
    feature flags (``multiscale=true|variable_roi=false|...``), read from the trial runs' tags."""
    from edgeseg.config import FEATURE_FLAGS
    from edgeseg.search import names
    from edgeseg.search.mlflow_runs import client_for, search_runs

    client = client_for(where.tracking_uri)
    runs = search_runs(client, where.experiment_id,
                       {names.TAG_SEARCH_ID: where.search_id, names.TAG_ROLE: names.ROLE_TRIAL})  # fmt: skip
    key = {r.info.run_id: "|".join(f"{f}={r.data.tags.get(f, '')}" for f in FEATURE_FLAGS) for r in runs}
    done = analysis.trials[analysis.trials["state"] == "finished"]
    groups: dict[str, list[float]] = {}
    for run_id, score in zip(done["run_id"], done["score"], strict=True):
        groups.setdefault(key[run_id], []).append(float(score))
    return {cell: {"mean": sum(v) / len(v), "n": len(v)} for cell, v in groups.items()}


def answer_of(analysis: Any) -> dict[str, Any]:
    trials = analysis.trials
    configs = analysis.configs.sort_values("mean", ascending=analysis.mode == "min")
    effects = analysis.effects
    return {
        "trials": len(trials),
        "finished": int((trials["state"] == "finished").sum()),
        "pruned": int((trials["state"] == "pruned").sum()),
        "epochs_trained": int(trials["epochs"].sum()),
        "best_config": str(configs.iloc[0]["config"]) if len(configs) else None,
        "cells": {
            str(r["config"]): {"mean": float(r["mean"]), "n": int(r["n"])} for _, r in configs.iterrows()
        },
        "effects": {
            f"{r['factor']}={r['level']}": {
                "estimate": float(r["estimate"]),
                "ci_low": float(r["ci_low"]),
                "ci_high": float(r["ci_high"]),
                "verdict": str(r["verdict"]),
                "reference": str(r["reference"]),
            }  # fmt: skip
            for _, r in effects.iterrows()
        },
        "method": analysis.method,
        "budget_agreement": analysis.extra.get("budget_agreement"),
        "notes": list(analysis.notes),
    }


def run_original_arm(epochs: int, base: Path, ground: dict[str, Any]) -> dict[str, Any]:
    """The original way's cost: epochs measured on a sample of grid cells, extrapolated to all of them."""
    from original_way import extrapolate, measure_original

    from edgeseg.search.spec import grid_variants, load_spec, trial_overrides

    home = arm_home(base, "original")
    with environment(EDGESEG_HOME=str(home)):
        spec = load_spec(write_spec(home, "original", epochs, SERVICE_ARMS["grid"]))
        cells = [trial_overrides({"overrides": v}) for v in grid_variants(spec)[0]]
        picks = sorted({0, len(cells) // 2, len(cells) - 1})[:ORIGINAL_SAMPLE]
        base_overrides = spec.base_overrides()
        measured = measure_original([{**base_overrides, **cells[i]} for i in picks], log=log)
    total = extrapolate(measured, cells=len(cells), seeds=spec.repeats, epochs=epochs)
    out = {"kind": "extrapolated", "sampled_cells": len(picks), "measured": measured["mean"],
           "method": f"{measured['method']} {total['method']}", "epochs_trained": len(cells) * spec.repeats * epochs,
           "best_config": None}  # fmt: skip
    return {
        "original": {"arm": "original", **out, "core_seconds": round(total["original_core_seconds"], 1)},
        "original_per_image": {"arm": "original_per_image", **out,
                               "core_seconds": round(total["original_per_image_core_seconds"], 1)},
    }  # fmt: skip


def compare(arm: dict[str, Any], ground: dict[str, Any], original: dict[str, Any] | None) -> dict[str, Any]:
    """How an arm's answer agrees with the ground truth's (the ``grid`` arm)."""
    from scipy.stats import kendalltau

    out: dict[str, Any] = {}
    if original is not None:
        out["compute_vs_original"] = round(arm["core_seconds"] / original["core_seconds"], 4)
    cells_g, cells_a = ground["cells_full_budget"], arm.get("cells_full_budget") or {}
    if cells_a:
        chosen = best_answer(arm, list(cells_g))
        ranked = sorted(cells_g, key=lambda c: -cells_g[c]["mean"])
        out.update(
            best_config=chosen,
            same_best=chosen == ranked[0],
            best_rank_in_ground_truth=ranked.index(chosen) + 1,
        )
        shared = sorted(set(cells_a) & set(cells_g))
        if len(shared) >= 3:
            out["cell_tau"] = round(float(kendalltau([cells_a[c]["mean"] for c in shared],
                                                     [cells_g[c]["mean"] for c in shared]).statistic), 3)  # fmt: skip
        out["cells_compared"] = len(shared)
    effects_g, effects_a = ground["effects"], arm.get("effects") or {}
    shared = sorted(set(effects_a) & set(effects_g))
    if len(shared) >= 3:
        tau = kendalltau(
            [effects_a[e]["estimate"] for e in shared], [effects_g[e]["estimate"] for e in shared]
        )
        out["effect_tau"] = round(float(tau.statistic), 3)
    decided = [e for e in shared if effects_g[e]["ci_low"] > 0 or effects_g[e]["ci_high"] < 0]
    out["verdicts_agree"] = (
        f"{sum(effects_a[e]['verdict'] == effects_g[e]['verdict'] for e in decided)}/{len(decided)}"
    )
    covered = sum(
        effects_a[e]["ci_low"] <= effects_g[e]["estimate"] <= effects_a[e]["ci_high"] for e in shared
    )
    out["coverage"] = f"{covered}/{len(shared)}"
    return out


def best_answer(arm: dict[str, Any], valid_cells: list[str]) -> str:
    """The arm's best configuration: the best cell it trained to the full budget when it trained them
    all; otherwise the valid cell its main effects predict best (effects it could not estimate count 0),
    as a fractional or multi-fidelity design answers."""
    trained = arm["cells_full_budget"]
    if set(valid_cells) <= set(trained):
        return max(trained, key=lambda c: trained[c]["mean"])
    effects = {k: v["estimate"] for k, v in arm["effects"].items() if v["estimate"] == v["estimate"]}

    def predicted(cell: str) -> float:
        return sum(effects.get(level, 0.0) for level in cell.split("|"))

    return max(valid_cells, key=predicted)


def markdown(report: dict[str, Any]) -> str:
    """The README table: one row per arm, cost against the original way and agreement with the grid."""
    head = ["arm", "core-s", "wall s", "epochs", "compute vs original", "same best", "effect tau",
            "cell tau", "verdicts agree", "ground-truth effects in CI"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, arm in report["arms"].items():
        c = report.get("comparison", {}).get(name, {})
        wall = "–" if arm.get("kind") == "extrapolated" else f"{arm['wall_seconds']:.0f}"
        cells = [name + (" (extrapolated)" if arm.get("kind") == "extrapolated" else ""),
                 f"{arm['core_seconds']:.0f}", wall, str(arm["epochs_trained"]),
                 f"{c['compute_vs_original']:.3f}" if "compute_vs_original" in c else "–",
                 same_best(c), str(c.get("effect_tau", "–")),
                 str(c.get("cell_tau", "–")), c.get("verdicts_agree", "–"), c.get("coverage", "–")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def same_best(comparison: dict[str, Any]) -> str:
    if "same_best" not in comparison:
        return "–"
    return (
        "yes"
        if comparison["same_best"]
        else f"no (ground-truth rank {comparison['best_rank_in_ground_truth']})"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default=",".join(SERVICE_ARMS), help="comma-separated arms to run")
    parser.add_argument("--epochs", type=int, default=12, help="train.epochs of every cell (the full budget)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--rerun", action="append", default=[], help="run this arm even if --out has it")
    parser.add_argument("--home", type=Path, default=Path("/tmp/edgeseg-bench-ablation"))
    parser.add_argument("--markdown", type=Path, default=None, help="print the table of this JSON and exit")
    parser.add_argument(
        "--reanswer", action="store_true",
        help="read every measured arm's answer again from its MLflow store under --home (costs are kept)",
    )  # fmt: skip
    return parser.parse_args(argv)


def reanswer(report: dict[str, Any], base: Path) -> None:
    """Each measured arm's answer read again (after a change to the report's statistics)."""
    for arm, entry in report["arms"].items():
        home = base / arm
        if entry.get("kind") != "measured" or not (home / "mlflow").exists():
            continue
        with environment(EDGESEG_HOME=str(home)):
            entry.update(service_answer(f"bench-ablation-{arm.replace('+', '-')}"))
        log(f"{arm}: answer read again from {home}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    from bench_presets import machine_info, write_report

    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    report.setdefault("benchmark", "bench_ablation")
    report.setdefault("arms", {})
    if report.get("epochs", args.epochs) != args.epochs:
        raise SystemExit(
            f"{args.out} holds arms at {report['epochs']} epochs, not {args.epochs}; use another --out"
        )
    report["epochs"] = args.epochs
    if args.reanswer:
        reanswer(report, args.home)
    known = ["original", *SERVICE_ARMS]
    for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
        if arm not in known:
            raise SystemExit(f"--arms: unknown arm {arm!r}; known: {', '.join(known)}")
        if arm in report["arms"] and arm not in args.rerun:
            log(f"{arm}: kept from {args.out}")
            continue
        if arm == "original":
            report["arms"].update(run_original_arm(args.epochs, args.home, report["arms"].get("grid", {})))
        else:
            report["arms"][arm] = run_service_arm(arm, args.epochs, args.home)
        write_report(report, args.out)
    report["machine"] = machine_info(1, note="2 concurrent trials at 1 thread each; core-seconds from /proc")
    ground, original = report["arms"].get("grid"), report["arms"].get("original")
    if ground is not None:
        report["comparison"] = {
            name: compare(arm, ground, original) for name, arm in report["arms"].items() if "effects" in arm
        }
    write_report(report, args.out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
