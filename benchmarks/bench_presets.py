"""Every preset under one fixed, small budget: size, FLOPs, CPU latency and val mIoU, printed as JSON.

    python benchmarks/bench_presets.py [--presets a,b] [--data synth|video|both] [--out FILE]
        [--home DIR] [--epochs 3] [--input-size 256] [--channels 16] [--roi-scale 0.5]
        [--train-images 32] [--val-images 12] [--batch-size 4] [--threads 2] [--latency-repeats 5]
    python benchmarks/bench_presets.py --latency-only --latency-repeats 30 --out FILE

Per preset: parameters and counted GFLOPs of the head (per ROI; per image for the RGB encoder), torch
eager and ONNX Runtime latency for 1 and 16 ROIs on one image (``--threads`` threads, median and min;
measured once per preset on the head trained on the first data set, as they do not depend on the data),
and the final-epoch ``val/miou`` (dataset-level) and ``val/miou_per_roi`` after the same short training
on the synthetic people and/or the video people (``vtest.avi``), next to the same head untrained. Every
preset keeps its flags, learning rate and loss; the budget overrides only sizes, images, epochs and
batch size (listed under ``budget`` in the JSON). ``--latency-only`` skips training and times each
head as initialised, e.g. again when the machine is quieter. All runs share one EDGESEG_HOME
(``--home``) so the backbone export, data sets and feature caches are built once. The JSON is rewritten
to ``--out`` after every preset, so a long run can be watched and a partial run keeps what it measured;
progress goes to stderr. Figures only; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeseg.engine.checkpoint import head_from_checkpoint, infos_from_dict, load_checkpoint
from edgeseg.engine.fit import fit
from edgeseg.engine.loop import evaluate, loss_spec, make_loader, seed_everything
from edgeseg.engine.prepare import prepare
from edgeseg.models import build_head

DEFAULT_VIDEO = Path.home() / ".cache" / "edgeseg" / "video" / "vtest.avi"
METRICS = ("val/miou", "val/miou_per_roi", "val/iou_target", "val/iou_other", "val/loss", "train/loss")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_report(report: dict[str, Any], out: Path | None) -> None:
    """Rewrite a benchmark's JSON at ``out`` (after every unit of work, so a long run keeps what it
    measured if it is stopped); nothing without ``--out``."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(
    threads: int, note: str = "shared machine: other test suites ran at the same time; see load_average"
) -> dict[str, Any]:
    """The machine a benchmark ran on; ``note`` says what else ran on it."""
    import onnxruntime
    import torch

    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "note": note,
    }


def _scaled(size: int, scale: float) -> int:
    return max(4, round(size * scale))


def budget_overrides(preset: str, args: argparse.Namespace) -> dict[str, Any]:
    """The fixed budget applied to ``preset``: its ROI/mask sizes scaled, everything else from ``args``."""
    from edgeseg.config import load_config

    model = load_config(preset).model
    overrides: dict[str, Any] = {
        "data.input_size": args.input_size,
        "model.channels": args.channels,
        "model.rgb_channels": args.rgb_channels,
        "model.roi_size": _scaled(model.roi_size, args.roi_scale),
        "model.mask_size": max(8, _scaled(model.mask_size, args.roi_scale)),
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.device": "cpu",
        "train.seed": args.seed,
        "backbone.threads": args.threads,
    }
    if model.roi_sizes:
        overrides["model.roi_sizes"] = tuple(_scaled(s, args.roi_scale) for s in model.roi_sizes)
    return overrides


def data_overrides(data: str, args: argparse.Namespace, video_root: Path | None) -> dict[str, Any]:
    if data == "synth":
        return {
            "data.generated_train_images": args.train_images,
            "data.generated_val_images": args.val_images,
        }
    assert video_root is not None
    return {"data.root": str(video_root), "data.min_instance_size": 8}


def ensure_video_data(args: argparse.Namespace) -> Path:
    from edgeseg import paths
    from edgeseg.data.video_people import write_video_people_dataset

    root = paths.subdir("data") / f"video-people-{args.train_images}-{args.val_images}-seed0"
    if not (root / "DONE").exists():
        log(f"writing video people ({args.train_images}/{args.val_images}) from {args.video} to {root}")
        summary = write_video_people_dataset(args.video, root, args.train_images, args.val_images, seed=0)
        (root / "DONE").write_text(json.dumps(summary, default=str))
    return root


def short_flags(config: Any) -> str:
    """E.g. ``fine,mid,deep · sum · roi 28/21/14 · rgb deep · cascade · dist · focal 2 · cw 1,1,1`` (no pipes: Markdown)."""
    m, loss = config.model, config.loss
    parts = [",".join(m.layers)]
    if len(m.layers) > 1:
        parts.append(m.fusion)
    if m.roi_sizes and len(set(m.roi_sizes)) > 1:
        parts.append("roi " + "/".join(map(str, m.roi_sizes)))
    if m.rgb_layers:
        parts.append("rgb " + ",".join(m.rgb_layers))
    if m.decoder != "plain":
        parts.append(m.decoder)
    if m.cascade:
        parts.append("cascade")
    if loss.distance_aware:
        parts.append("dist-adaptive" if loss.adaptive else "dist")
    if loss.focal:
        parts.append(f"focal {loss.focal_gamma:g}")
    if loss.class_weights != "log":
        parts.append(f"cw {loss.class_weights}")
    return " · ".join(parts)


def time_ms(run: Callable[[], object], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median and minimum wall time of ``run`` in ms; under shared load the minimum is the steadier figure."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median": statistics.median(times), "min": min(times)}


def latency(
    head: Any, infos: dict[str, Any], size: int, onnx_path: Path, threads: int, repeats: int
) -> dict[str, Any]:
    """Torch eager (``threads`` threads) and ONNX Runtime (``threads`` intra-op) on one image, 1 and 16 ROIs."""
    import onnxruntime as ort
    import torch

    from edgeseg.complexity import example_inputs
    from edgeseg.export import onnx_feed

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    head.eval()
    out: dict[str, Any] = {}
    try:
        for count in (1, 16):
            features, rois, image = example_inputs(head, infos, size, num_rois=count)
            feed = onnx_feed(head, features, rois, image)
            with torch.inference_mode():
                out[f"torch/rois_{count}"] = time_ms(functools.partial(head, features, rois, image), repeats)
            out[f"onnx/rois_{count}"] = time_ms(functools.partial(session.run, None, feed), repeats)
    finally:
        torch.set_num_threads(previous)
    return out


def complexity(
    head: Any, config: Any, infos: dict[str, Any], out_dir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Params, counted FLOPs, ONNX export (parity-checked) and latency of ``head``."""
    from edgeseg.complexity import count_parameters, flops_report
    from edgeseg.export import export_head

    head.eval()
    ordered = {k: infos[k] for k in head.layer_ids}
    size = config.data.input_size
    flops = flops_report(head, ordered, size)
    report = export_head(head, ordered, size, out_dir / "model.onnx", config_dict=config.to_dict())
    timings = latency(head, ordered, size, report.onnx_path, args.threads, args.latency_repeats)
    per_roi = {
        stat: {
            "torch_rois_1": timings["torch/rois_1"][stat],
            "onnx_rois_1": timings["onnx/rois_1"][stat],
            "torch_rois_16": timings["torch/rois_16"][stat] / 16,
            "onnx_rois_16": timings["onnx/rois_16"][stat] / 16,
        }
        for stat in ("median", "min")
    }
    return {
        "params": count_parameters(head),
        "gflops_per_roi": flops["gflops_per_roi"],
        "gflops_per_image": flops["gflops_per_image"],
        "onnx_max_abs_diff": report.max_abs_diff,
        "latency_ms": timings,
        "ms_per_roi": per_roi,
    }


def trained_head(result: Any) -> tuple[Any, Any, dict[str, Any]]:

    state = load_checkpoint(result.last_checkpoint)
    head, config, _ = head_from_checkpoint(state)
    return head, config, infos_from_dict(state["layer_infos"])


def latency_only(preset: str, args: argparse.Namespace) -> dict[str, Any]:
    """Complexity and latency of the preset's head as initialised (latency does not depend on training)."""
    import torch

    from edgeseg import paths
    from edgeseg.config import load_config

    config = load_config(
        preset, overrides={**budget_overrides(preset, args), **data_overrides("synth", args, None)}
    )
    torch.set_num_threads(args.threads)
    prepared = prepare(config, log=log, build_features=False)
    seed_everything(config.train.seed)
    head = build_head(prepared.model, prepared.layer_infos)
    entry: dict[str, Any] = {
        "preset": preset,
        "flags": short_flags(config),
        "feature_flags": config.feature_flags(),
    }
    entry.update(
        complexity(
            head, config, dict(prepared.layer_infos), paths.subdir("bench-presets", "onnx", preset), args
        )
    )
    entry["load_average"] = load_average()
    return entry


def untrained_metrics(config: Any, prepared: Any) -> dict[str, float]:
    """Val metrics of the head as ``fit`` initialises it (same seed): what the budget starts from."""
    import torch

    seed_everything(config.train.seed)
    head = build_head(prepared.model, prepared.layer_infos)
    loader = make_loader(prepared.val, config.train.batch_size, shuffle=False, seed=0, epoch=0, workers=0)
    weights = torch.tensor(prepared.class_weights) if prepared.class_weights else None
    spec = loss_spec(config)
    return evaluate(head, loader, prepared.val_features, spec, weights, torch.device("cpu"))


def train_one(
    preset: str, data: str, args: argparse.Namespace, video_root: Path | None
) -> tuple[Any, Any, dict[str, float]]:
    import torch

    from edgeseg import paths
    from edgeseg.config import load_config

    config = load_config(
        preset, overrides={**budget_overrides(preset, args), **data_overrides(data, args, video_root)}
    )
    torch.set_num_threads(args.threads)
    prepared = prepare(config, log=log)
    before = untrained_metrics(config, prepared)
    run_dir = paths.subdir("bench-presets", data, preset)
    result = fit(config, run_dir=run_dir, prepared=prepared, log=log, keep_checkpoints=1)
    return config, result, before


def run_preset(
    preset: str, args: argparse.Namespace, datasets: list[str], video_root: Path | None
) -> dict[str, Any]:
    from edgeseg import paths

    entry: dict[str, Any] = {"preset": preset}
    for data in datasets:
        began = time.perf_counter()
        config, result, before = train_one(preset, data, args, video_root)
        seconds = time.perf_counter() - began
        last = result.history[-1]
        entry[data] = {
            **{key: last.get(key) for key in METRICS},
            "best_val/miou": result.best_metrics.get("val/miou"),
            "untrained": {key: before.get(key) for key in ("val/miou", "val/miou_per_roi")},
            "train_seconds": round(seconds, 1),
        }
        if "flags" not in entry:
            entry["flags"] = short_flags(config)
            entry["feature_flags"] = config.feature_flags()
            entry["lr"] = config.train.lr
            head, trained_config, infos = trained_head(result)
            out_dir = paths.subdir("bench-presets", "onnx", preset)
            entry.update(complexity(head, trained_config, infos, out_dir, args))
        log(f"{preset} on {data}: val/miou={last.get('val/miou'):.4f} per-ROI={last.get('val/miou_per_roi'):.4f} "
            f"(untrained {before['val/miou']:.4f}) in {seconds:.0f} s")  # fmt: skip
    entry["load_average"] = load_average()
    return entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="", help="comma-separated preset names (default: all)")
    parser.add_argument("--data", choices=("synth", "video", "both"), default="both")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the JSON here (after every preset)"
    )
    parser.add_argument("--home", type=Path, default=Path("/tmp/edgeseg-bench-presets"), help="EDGESEG_HOME")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--rgb-channels", type=int, default=8)
    parser.add_argument("--roi-scale", type=float, default=0.5, help="ROI and mask sizes are scaled by this")
    parser.add_argument("--train-images", type=int, default=32)
    parser.add_argument("--val-images", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--latency-repeats", type=int, default=5, help="timed runs per latency")
    parser.add_argument(
        "--latency-only", action="store_true", help="no training: params, FLOPs and latency of each head only"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["EDGESEG_HOME"] = str(args.home)  # before edgeseg reads it: one home, shared caches

    from edgeseg.config import PRESETS

    presets = [p.strip() for p in args.presets.split(",") if p.strip()] or list(PRESETS)
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise SystemExit(f"--presets: unknown {unknown}; known: {', '.join(PRESETS)}")
    datasets = ["synth", "video"] if args.data == "both" else [args.data]
    if args.latency_only:
        datasets = []
    video_root = ensure_video_data(args) if "video" in datasets else None

    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "bench_presets",
        "mode": "latency-only" if args.latency_only else "train",
        "machine": machine_info(args.threads),
        "budget": {
            "input_size": args.input_size,
            "channels": args.channels,
            "rgb_channels": args.rgb_channels,
            "roi_and_mask_scale": args.roi_scale,
            "train_images": args.train_images,
            "val_images": args.val_images,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "threads": args.threads,
            "kept_from_preset": "layers, fusion, ROI size ratios, RGB layers, decoder, cascade, loss, lr",
            "data": {
                "synth": "embedded synthetic people (edgeseg.data.synth, seed 0)",
                "video": f"video people from {args.video.name} (seed 0), data.min_instance_size=8",
            },
            "backbone": "EfficientNet-Lite0 ONNX export (ImageNet weights), frozen, features cached",
            "latency": f"median and min of {args.latency_repeats} runs after 3 warm-up runs; one image, "
            "1 and 16 ROIs, eval mode; ms_per_roi divides the 16-ROI time by 16",
            "metric": "final-epoch val/miou (dataset-level) and val/miou_per_roi; 'untrained' = the same "
            "head at initialisation (same seed), evaluated before training",
        },
        "datasets": datasets,
        "load_average_start": load_average(),
        "presets": [],
    }
    for index, preset in enumerate(presets, start=1):
        log(f"--- {index}/{len(presets)} {preset}")
        if args.latency_only:
            report["presets"].append(latency_only(preset, args))
        else:
            report["presets"].append(run_preset(preset, args, datasets, video_root))
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
        report["load_average_end"] = load_average()
        write_report(report, args.out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
