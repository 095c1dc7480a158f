"""Torch eager vs ONNX Runtime on CPU for every preset's head: is the exported graph worth deploying?

    python benchmarks/bench_onnx.py [--presets a,b] [--channels 64] [--input-size 320] [--roi-scale 0.5]
        [--threads 2] [--repeats 30] [--warmup 5] [--target 1.5] [--out FILE]

Per preset: the head as the preset configures it on EfficientNet-Lite0 (roles resolved through the
layer map, channels from its taps; no backbone export, no data), with ``--channels`` as head width and
ROI and mask sizes scaled by ``--roi-scale`` (0.5 gives the 28-pixel masks the latency budget was set
at). Untrained: latency does not depend on the weights. The head is exported with
``edgeseg.export.export_head`` (parity-checked in ONNX Runtime) and timed on one image with 1 and 16
ROIs: torch eager under ``inference_mode`` with ``--threads`` threads, ONNX Runtime with
``ORT_ENABLE_ALL``, ``--threads`` intra-op threads and one inter-op thread. Each figure is the median
and the minimum of ``--repeats`` runs after ``--warmup`` runs; ``speedup`` is torch / ONNX Runtime,
and ``meets_target`` says whether the speed-up of the minima reaches ``--target`` at both ROI counts.
The machine (CPU, cores, load average before and after) is recorded: figures from a loaded machine
are not comparable. Figures only; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_presets import load_average, time_ms, write_report
from bench_presets import machine_info as presets_machine_info

ROI_COUNTS = (1, 16)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_info(threads: int) -> dict[str, Any]:
    return {
        **presets_machine_info(threads, note="see the load averages"),
        "load_average_start": load_average(),
    }


def _scaled(size: int, scale: float, minimum: int) -> int:
    return max(minimum, round(size * scale))


def preset_head(preset: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any]:
    """(head, {layer_id: LayerInfo}, config) for ``preset`` on EfficientNet-Lite0, sized by ``args``."""
    import torch

    from edgeseg.backbone.efficientnet_lite0 import TAPS
    from edgeseg.backbone.extractor import LayerInfo
    from edgeseg.backbone.layer_map import EFFICIENTNET_LITE0
    from edgeseg.config import load_config
    from edgeseg.engine.prepare import resolve_model
    from edgeseg.models import build_head

    model = load_config(preset).model
    overrides: dict[str, Any] = {
        "data.input_size": args.input_size,
        "model.channels": args.channels,
        "model.roi_size": _scaled(model.roi_size, args.roi_scale, 4),
        "model.mask_size": _scaled(model.mask_size, args.roi_scale, 8),
    }
    if model.roi_sizes:
        overrides["model.roi_sizes"] = tuple(_scaled(s, args.roi_scale, 4) for s in model.roi_sizes)
    if args.rgb_channels:
        overrides["model.rgb_channels"] = args.rgb_channels
    config = load_config(preset, overrides=overrides)
    resolved = resolve_model(config, EFFICIENTNET_LITE0)
    infos = {}
    for layer in resolved.layers:
        stride = EFFICIENTNET_LITE0.layers[layer].stride
        side = -(-args.input_size // stride)  # TF "SAME" padding: ceil(size / stride)
        infos[layer] = LayerInfo(TAPS[layer].channels, stride, side, side)
    torch.manual_seed(0)
    head = build_head(resolved, infos).eval()
    return head, infos, config


def session_options(threads: int) -> Any:
    """The ONNX Runtime settings a deployment would use: all graph optimisations, ``threads`` intra-op."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def timings(head: Any, infos: dict[str, Any], onnx_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """ms (median, min) of torch eager and ONNX Runtime on one image at each ROI count, and the speed-ups."""
    import onnxruntime as ort
    import torch

    from edgeseg.complexity import example_inputs, onnx_feed

    session = ort.InferenceSession(
        str(onnx_path), session_options(args.threads), providers=["CPUExecutionProvider"]
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {}
    try:
        for count in ROI_COUNTS:
            features, rois, image = example_inputs(head, infos, args.input_size, num_rois=count)
            feed = onnx_feed(head, features, rois, image)
            with torch.inference_mode():
                eager = time_ms(functools.partial(head, features, rois, image), args.repeats, args.warmup)
            onnx = time_ms(functools.partial(session.run, ["masks"], feed), args.repeats, args.warmup)
            out[f"rois_{count}"] = {
                "torch_ms": eager,
                "onnx_ms": onnx,
                "speedup": {stat: eager[stat] / onnx[stat] for stat in ("min", "median")},
            }
    finally:
        torch.set_num_threads(previous)
    return out


def bench_preset(preset: str, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    from edgeseg.complexity import count_parameters
    from edgeseg.export import export_head

    head, infos, config = preset_head(preset, args)
    began = time.perf_counter()
    report = export_head(head, infos, args.input_size, work_dir / f"{preset}.onnx")
    export_seconds = time.perf_counter() - began
    measured = timings(head, infos, report.onnx_path, args)
    model = config.model
    return {
        "preset": preset,
        "layers": list(head.layer_ids),
        "roi_sizes": list(head.pooler.roi_sizes),
        "mask_size": head.mask_size,
        "rgb_layers": list(model.rgb_layers),
        "decoder": model.decoder,
        "cascade": model.cascade,
        "params": count_parameters(head),
        "export_seconds": round(export_seconds, 2),
        "onnx_max_abs_diff": report.max_abs_diff,
        **measured,
        "meets_target": all(measured[f"rois_{n}"]["speedup"]["min"] >= args.target for n in ROI_COUNTS),
        "load_average": load_average(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="", help="comma-separated preset names (default: all)")
    parser.add_argument("--channels", type=int, default=64, help="head width (model.channels)")
    parser.add_argument("--rgb-channels", type=int, default=0, help="RGB branch width (0: the preset's)")
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--roi-scale", type=float, default=0.5, help="ROI and mask sizes are scaled by this")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads and ONNX Runtime intra-op threads"
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per figure")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs before them")
    parser.add_argument("--target", type=float, default=1.5, help="speed-up (torch / ONNX Runtime) to reach")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the JSON here (after every preset)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from edgeseg.config import PRESETS

    presets = [p.strip() for p in args.presets.split(",") if p.strip()] or list(PRESETS)
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise SystemExit(f"--presets: unknown {unknown}; known: {', '.join(PRESETS)}")

    report: dict[str, Any] = {
        "benchmark": "bench_onnx",
        "machine": machine_info(args.threads),
        "settings": {
            "channels": args.channels,
            "rgb_channels": args.rgb_channels or "preset",
            "input_size": args.input_size,
            "roi_and_mask_scale": args.roi_scale,
            "threads": args.threads,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "target_speedup": args.target,
            "backbone": "EfficientNet-Lite0 layer map (channels and strides only; features are random)",
            "onnxruntime": "CPUExecutionProvider, ORT_ENABLE_ALL, sequential, intra-op = threads, inter-op 1",
            "timing": "one image per call; speedup = torch ms / ONNX Runtime ms; meets_target uses the minima",
        },
        "summary": {},
        "presets": [],
    }
    with tempfile.TemporaryDirectory(prefix="edgeseg-bench-onnx-") as work_dir:
        for index, preset in enumerate(presets, start=1):
            log(f"--- {index}/{len(presets)} {preset}")
            entry = bench_preset(preset, args, Path(work_dir))
            report["presets"].append(entry)
            report["summary"][preset] = {
                **{f"speedup_rois_{n}": round(entry[f"rois_{n}"]["speedup"]["min"], 2) for n in ROI_COUNTS},
                "meets_target": entry["meets_target"],
            }
            report["machine"]["load_average_end"] = load_average()
            write_report(report, args.out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
