"""Seed stability of every preset: val mIoU over several seeds at one budget, and collapse, as JSON.

    python benchmarks/bench_stability.py [--presets a,b] [--seeds 0,1,2,3,4] [--budget ablation-video]
        [--set KEY=VALUE ...] [--out FILE] [--home DIR]
    python benchmarks/bench_stability.py --markdown results/stability.json   # the table for docs/presets.md
    python benchmarks/bench_stability.py --markdown a.json b.json --out results/stability.json
        # runs split over processes (--presets) merged into one JSON, in PRESETS order, and its table

A preset is *stable* at a budget when no seed leaves a class never predicted (``val/pred_share_target``
or ``val/pred_share_other`` is 0: the head collapsed) and the sample standard deviation of the
final-epoch ``val/miou`` over the seeds is at most 0.02. The budget is the reference ablation's
(``searches/ablation-video.yaml``: its ``base.overrides`` minus the preset, on the same video-people
data), so the table in ``docs/presets.md`` and the ablation's verdicts speak of the same training.
``--set`` adds or replaces overrides (to try a change before making it the default). Each seed is a
fresh ``fit`` with ``train.seed`` set (head initialisation, data order and augmentation all follow it);
the data set itself is fixed. The JSON is rewritten to ``--out`` after every run. Figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_SPEC = Path(__file__).resolve().parents[1] / "edgeseg" / "searches" / "ablation-video.yaml"
FIELDS = (
    "val/miou",
    "val/iou_target",
    "val/iou_other",
    "val/miou_per_roi",
    "val/pred_share_background",
    "val/pred_share_target",
    "val/pred_share_other",
    "train/loss",
)
MAX_STD = 0.02


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def spec_budget(spec_path: Path) -> tuple[str, dict[str, Any]]:
    """The reference ablation's base preset and overrides: the budget every preset is trained at here."""
    from edgeseg.search.spec import load_spec

    spec = load_spec(spec_path)
    return spec.preset, spec.base_overrides()


def parse_sets(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def collapsed(metrics: dict[str, float]) -> list[str]:
    """The person classes a head never predicts on the val set."""
    return [name for name in ("target", "other") if not metrics.get(f"val/pred_share_{name}", 0.0) > 0.0]


def preset_overrides(preset: str, budget: dict[str, Any], base_preset: str) -> dict[str, Any]:
    """The budget for ``preset``: ROI and mask sizes scaled from the preset's own by the factor the
    budget applies to its base preset (56/42/28 becomes 28/21/14 at half size); the rest as is."""
    from edgeseg.config import load_config

    base = load_config(base_preset).model
    scale = float(budget.get("model.roi_size", base.roi_size)) / base.roi_size
    model = load_config(preset).model
    out = dict(budget)
    out["model.roi_size"] = max(4, round(model.roi_size * scale))
    out["model.mask_size"] = max(8, round(model.mask_size * scale))
    if model.roi_sizes:
        out["model.roi_sizes"] = tuple(max(4, round(s * scale)) for s in model.roi_sizes)
    return out


def run_seed(preset: str, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    import torch

    from edgeseg import paths
    from edgeseg.config import load_config
    from edgeseg.engine.fit import fit
    from edgeseg.engine.prepare import prepare

    config = load_config(preset, overrides={**overrides, "train.seed": seed})
    torch.set_num_threads(int(overrides.get("backbone.threads", 2)))
    began = time.perf_counter()
    prepared = prepare(config, log=lambda _m: None)
    run_dir = paths.subdir("bench-stability", preset, f"seed{seed}")
    result = fit(config, run_dir=run_dir, prepared=prepared, log=lambda _m: None, keep_checkpoints=1)
    last = result.history[-1]
    entry = {key: last.get(key) for key in FIELDS}
    entry.update(seed=seed, seconds=round(time.perf_counter() - began, 1), collapsed=collapsed(last))
    entry["best_val/miou"] = result.best_metrics.get("val/miou")
    return entry


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    values = [float(r["val/miou"]) for r in runs]
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    collapsed_seeds = [r["seed"] for r in runs if r["collapsed"]]
    return {
        "mean": statistics.fmean(values),
        "std": std,
        "min": min(values),
        "max": max(values),
        "collapsed_seeds": collapsed_seeds,
        "stable": not collapsed_seeds and std <= MAX_STD,
    }


def markdown(report: dict[str, Any]) -> str:
    """The preset x seed table of a finished run (val/miou per seed; collapsed seeds marked)."""
    seeds = report["seeds"]
    head = [
        "preset",
        *(f"seed {s}" for s in seeds),
        "mean",
        "std",
        "min pred. share (target / other)",
        "stable",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + ":---:|"]
    for p in report["presets"]:
        by_seed = {r["seed"]: r for r in p["runs"]}
        cells = []
        for seed in seeds:
            run = by_seed.get(seed)
            cells.append(
                "–"
                if run is None
                else f"{run['val/miou']:.3f}" + (" (collapsed)" if run["collapsed"] else "")
            )
        shares = [min(r[f"val/pred_share_{c}"] for r in p["runs"]) for c in ("target", "other")]
        mark = "yes" if p["stable"] else "**no**"
        std = f"{p['std']:.3f}" if p["std"] <= MAX_STD else f"**{p['std']:.3f}**"
        lines.append(f"| {p['preset']} | " + " | ".join(cells)
                     + f" | {p['mean']:.3f} | {std} | {shares[0]:.2f} / {shares[1]:.2f} | {mark} |")  # fmt: skip
    return "\n".join(lines)


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from runs of the same budget and seeds split by preset (presets in PRESETS order)."""
    from edgeseg.config import PRESETS

    first = reports[0]
    for other in reports[1:]:
        for key in ("budget", "seeds"):
            if other[key] != first[key]:
                raise SystemExit(f"--markdown: the reports differ in {key}: {first[key]} vs {other[key]}")
    presets = [p for report in reports for p in report["presets"]]
    names = [p["preset"] for p in presets]
    if len(set(names)) != len(names):
        raise SystemExit(f"--markdown: a preset appears in more than one report: {sorted(names)}")
    order = {name: index for index, name in enumerate(PRESETS)}
    presets.sort(key=lambda p: order.get(p["preset"], len(order)))
    merged = {**first, "presets": presets, "all_stable": all(p["stable"] for p in presets)}
    merged["wall_seconds"] = max(r.get("wall_seconds", 0.0) for r in reports)
    merged["processes"] = len(reports)
    return merged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="", help="comma-separated preset names (default: all)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="the search whose budget is used")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (after every run)")
    parser.add_argument(
        "--markdown", type=Path, nargs="+", default=None,
        help="print the table of these JSONs (merged; with --out, also write the merged JSON) and exit",
    )  # fmt: skip
    parser.add_argument(
        "--home", type=Path, default=Path("/tmp/edgeseg-bench-stability"), help="EDGESEG_HOME"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        report = merge([json.loads(path.read_text()) for path in args.markdown])
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(markdown(report))
        return 0
    os.environ.setdefault("EDGESEG_HOME", str(args.home))

    from bench_presets import machine_info, write_report

    from edgeseg.config import PRESETS

    presets = [p.strip() for p in args.presets.split(",") if p.strip()] or list(PRESETS)
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise SystemExit(f"--presets: unknown {unknown}; known: {', '.join(PRESETS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    base_preset, budget = spec_budget(args.spec)
    overrides = {**budget, **parse_sets(args.set)}
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "bench_stability",
        "machine": machine_info(int(overrides.get("backbone.threads", 2)), note="see the per-run seconds"),
        "budget": {"spec": args.spec.name, "overrides": overrides},
        "criterion": f"no collapsed seed and std(val/miou) <= {MAX_STD}",
        "seeds": seeds,
        "presets": [],
    }
    for index, preset in enumerate(presets, start=1):
        runs = []
        for seed in seeds:
            runs.append(run_seed(preset, seed, preset_overrides(preset, overrides, base_preset)))
            log(f"{index}/{len(presets)} {preset} seed {seed}: val/miou={runs[-1]['val/miou']:.4f} "
                f"collapsed={runs[-1]['collapsed']} ({runs[-1]['seconds']} s)")  # fmt: skip
        summary = summarise(runs)
        log(f"{preset}: mean {summary['mean']:.4f} std {summary['std']:.4f} stable={summary['stable']}")
        report["presets"].append({"preset": preset, **summary, "runs": runs})
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
        report["all_stable"] = all(p["stable"] for p in report["presets"])
        write_report(report, args.out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
