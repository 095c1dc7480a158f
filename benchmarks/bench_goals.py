"""The five performance goals of issue 11, each measured in one run, printed as one JSON object.

    python benchmarks/bench_goals.py [--quick] [--trials 200] [--reference] [--goals 1,2,3,4,5]
        [--out benchmarks/results/goals.json] [--work DIR]

1. trial start: tiny trials one at a time, from the previous trial's end to the next trial's first
   reported epoch (its whole start: actor process, imports, fit's setup, the epoch), for the Ray
   Train executor (target <= 3 s) and the function executor (<= 1.5 s). The breakdown splits it at
   Tune's ``on_trial_start`` (the actor constructed) and shows, timed in a fresh Python with warm
   caches, what a trial's process does first: start, import Ray, import torch + Ray Tune + the trial
   code, ``fit``'s prepare, building the head and counting its FLOPs.
2. ONNX Runtime vs torch eager per ROI at 1 and 16 ROIs for every preset (``bench_onnx.py``'s own
   measurement, target >= 1.5x), and the merged backbone + head graph against the two-step path
   edgeseg's Python runs (the backbone in ONNX Runtime, then the head in torch eager), baseline preset.
3. training FLOP rate of the full-size baseline head (256 channels, mask 56, 640 px) on CPU:
   FLOPs counted by ``FlopCounterMode`` (forward and backward convolutions and matrix multiplies,
   the FLOPs ``edgeseg.complexity`` counts) of one ``train_one_epoch``, divided by the wall time of
   the same epoch run again uncounted, against the FP32 matmul peak measured in the same run with
   the same threads (target >= 70 %); the profile is ``torch.profiler``'s table of that epoch.
4. core-seconds inside epochs (the sum of every epoch's ``epoch_cpu_seconds``, read back from
   MLflow) over the core-seconds of the search's whole process tree (driver, Ray, trials; sampled
   from /proc), for ``searches/smoke.yaml`` (target >= 30 %) and, with ``--reference``, the reference
   ablation ``searches/ablation-video.yaml`` (>= 80 %; without ``--reference`` its last recorded
   figure, labelled with where it came from and when, or "not measured"); each search is an
   ``edgeseg search run`` in a fresh EDGESEG_HOME, so it pays its data, backbone and caches; machine
   CPU busy (all processes, /proc/stat) over the search, target >= 85 %.
5. driver cost of a many-trial search: ``--trials`` trials (and a quarter as many) whose trainable
   reports every epoch at once (fake metrics, no checkpoint, ``export_onnx: false``) through the real
   tracker and outbox to a real ``mlflow server``; driver CPU (this process, every thread) per trial
   (target <= 0.1 core-s), MLflow requests per trial from the server's access log, and the wall time
   of ``edgeseg search status``, ``report`` and ``fetch-best`` (median of 3; target <= 2 s at 1,000
   trials, extrapolated linearly from the two points when ``--trials`` < 1000).

Each goal is measured in its own function; a goal that fails is recorded with its error and the
others still run. ``--goals`` runs some of them; the others are carried over from ``--out``, each
saying which run it came from. The JSON goes to stdout and ``--out`` (``--quick``: smaller sizes,
written to ``goals-quick.json``); a table of goal, figure, target and met goes to stderr.

Durations on 2 cores (estimated from a ``--quick --trials 40`` run, 6 min on a shared machine, and
the scripts reused): goal 1 about 2.5 min, goal 2 about 4 min (27 presets), goal 3 about 1.5 min,
goal 4 about 1 min (the smoke search; ``--reference`` adds the reference ablation, about 9 min),
goal 5 about 7 min at ``--trials 200`` (about 25 min at ``--trials 1000``): about 16 min in all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ray import tune

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "goals.json"
QUICK_OUT = ROOT / "benchmarks" / "results" / "goals-quick.json"
QUICK_PRESETS = ("baseline", "rgb_enhanced_baseline")
DRIVER_EPOCHS = 10  # epochs each instant trial of goal 5 reports
COMMAND_REPEATS = 3


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def median_wall(
    argv: list[str], env: dict[str, str] | None = None, repeats: int = COMMAND_REPEATS
) -> dict[str, Any]:
    """Median wall seconds of a command over ``repeats`` runs; a failing run is reported with its output."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - began)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:4])}... exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}"
            )
    return {"median_s": round(statistics.median(times), 3), "runs_s": [round(t, 3) for t in times]}


@contextlib.contextmanager
def local_ray() -> Iterator[None]:
    """A local Ray for this process (as ``bench_search.py`` starts it), shut down afterwards."""
    import ray

    from edgeseg.secrets import protect_ray_auth_token

    ray.init(address="local", num_cpus=os.cpu_count(), resources={"trial_driver": 2}, log_to_driver=False)
    protect_ray_auth_token()
    try:
        yield
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------------------------
# Goal 1: trial start.
# ----------------------------------------------------------------------------------------------


class TrialGaps(tune.Callback):
    """Per trial, seconds from the previous trial's end to this trial's first result (JSON lines):
    one trial at a time, that is the whole start of a trial, its actor's process and imports included
    (Tune's ``on_trial_start`` comes only once the trial's actor is constructed)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ended: float | None = None
        self.seen: set[str] = set()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.ended = time.perf_counter()

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
    ) -> None:
        if trial.trial_id in self.seen:
            return
        self.seen.add(trial.trial_id)
        if self.ended is not None:
            row = {"trial": trial.trial_id, "end_to_first_result_s": time.perf_counter() - self.ended}
            with open(self.path, "a") as handle:
                handle.write(json.dumps(row) + "\n")


def trial_starts(executor: str, work: Path) -> dict[str, Any]:
    """Four tiny trials, one at a time, no ONNX export (nothing else runs while a trial starts)."""
    from bench_search import TINY, FirstResultTimer, read_rows

    from edgeseg.search.spec import spec_from_mapping
    from edgeseg.search.tuner import run_search

    starts, gaps = work / f"goal1-{executor}-starts.jsonl", work / f"goal1-{executor}-gaps.jsonl"
    spec = spec_from_mapping({
        "name": f"goal1-{executor}", "base": {"preset": "baseline", "overrides": TINY},
        "space": {"train.lr": {"grid": [1e-2, 5e-3, 2e-3, 1e-3]}}, "searcher": {"kind": "grid"},
        "scheduler": {"kind": "fifo"}, "resources": {"executor": executor}, "max_concurrent_trials": 1,
        "export_onnx": False, "storage": str(work / "goal1-storage"),
    }, source=f"<bench_goals goal 1, {executor}>")  # fmt: skip
    callbacks = [FirstResultTimer(str(starts)), TrialGaps(str(gaps))]
    outcome = run_search(spec, progress=False, callbacks=callbacks, log=lambda _: None)
    rows, whole = read_rows(starts), [r["end_to_first_result_s"] for r in read_rows(gaps)]
    after_start = [r["first_result_s"] for r in rows]
    return {
        "trials": outcome.trials,
        "previous_end_to_first_result_s": [round(x, 2) for x in whole],
        "median_s": round(statistics.median(whole), 2) if whole else None,
        "on_trial_start_to_first_result_s": [round(x, 2) for x in after_start],
        "on_trial_start_median_s": round(statistics.median(after_start), 2) if after_start else None,
        "epoch1_s": [round(r["epoch_seconds"], 3) for r in rows if r["epoch_seconds"] is not None],
        "search_wall_s": round(outcome.wall_s, 1),
    }


FRESH_TRIAL_SETUP = """
import json, sys, time
began = time.perf_counter()
import ray
with_ray = time.perf_counter()
import torch, ray.tune, edgeseg.search.trainable
imported = time.perf_counter()
import torch._dynamo  # FlopCounterMode's first use imports it
dynamo = time.perf_counter()
from edgeseg.complexity import flops_report
from edgeseg.config import load_config
from edgeseg.engine.prepare import prepare
from edgeseg.models import build_head
config = load_config("baseline", overrides=json.loads(sys.argv[1]))
started = time.perf_counter()
prepared = prepare(config, log=lambda _: None)
ready = time.perf_counter()
head = build_head(prepared.model, prepared.layer_infos)
built = time.perf_counter()
flops_report(head, prepared.layer_infos, config.data.input_size)
print(json.dumps({"import_ray_s": with_ray - began, "trial_imports_s": imported - with_ray,
                  "import_torch_dynamo_s": dynamo - imported, "prepare_s": ready - started, "build_head_s": built - ready,
                  "flop_count_s": time.perf_counter() - built}))
"""


def fresh_trial_setup(runs: int = 3) -> dict[str, float]:
    """What a trial's process does before its first epoch, timed in a fresh Python with the search's
    caches warm (as a trial finds them): importing Ray, then torch, Ray Tune and the trial code, then
    ``fit``'s preparing (data sets, feature caches, backbone session), building the head and counting
    its FLOPs (``FlopCounterMode``, whose first use imports ``torch._dynamo``: timed apart), each a
    first call in its process. Medians of ``runs``."""
    from bench_search import TINY

    samples: list[dict[str, float]] = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", FRESH_TRIAL_SETUP, json.dumps(TINY)], cwd=ROOT,
                              capture_output=True, text=True, check=True)  # fmt: skip
        samples.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    medians = {key: round(statistics.median(r[key] for r in samples), 3) for key in samples[0]}
    return {"python_start_s": median_wall([sys.executable, "-c", "pass"])["median_s"], **medians}


def start_breakdown(function: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """Each executor's start split at Tune's ``on_trial_start`` (the trial's actor constructed: its
    process started, the trainable unpickled, torch and edgeseg imported); the Train executor's extra
    time inside the trial is its controller, placement group and worker group, and its worker's own
    imports and setup."""
    out: dict[str, Any] = {}
    for name, figures in (("function_executor", function), ("train_executor", train)):
        whole, inside = figures["median_s"], figures["on_trial_start_median_s"]
        if whole is None or inside is None:
            continue
        out[name] = {"whole_s": whole, "actor_start_s": round(whole - inside, 2), "inside_trial_s": inside,
                     "of_which_epoch_s": round(statistics.median(figures["epoch1_s"] or [0.0]), 3)}  # fmt: skip
    if len(out) == 2:
        out["train_inside_minus_function_inside_s"] = round(
            out["train_executor"]["inside_trial_s"] - out["function_executor"]["inside_trial_s"], 2
        )
    return out


def goal_trial_start(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with local_ray():
        function = trial_starts("function", work)
        train = trial_starts("train", work)
    met = all(
        f["median_s"] is not None and f["median_s"] <= limit for f, limit in ((function, 1.5), (train, 3.0))
    )
    return {
        "figure": f"function {function['median_s']} s, train {train['median_s']} s (median, the previous "
        "trial's end to the next one's first epoch)",
        "met": met,
        "details": {"function_executor": function, "train_executor": train},
        "profile": {
            **start_breakdown(function, train),
            "fresh_process_s": fresh_trial_setup(),
            "fresh_process_note": "what a trial's process does before its first epoch, timed alone in a fresh "
            "Python with warm caches; Ray starts worker processes ahead (Ray imported), and in a trial "
            "some of these imports happen while its actor is constructed, some inside the trial",
        },
    }


# ----------------------------------------------------------------------------------------------
# Goal 2: ONNX Runtime against torch eager.
# ----------------------------------------------------------------------------------------------


def merged_vs_two_step(onnx_args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Baseline head on EfficientNet-Lite0: one merged ONNX graph against backbone (ORT) then head
    (torch eager, as edgeseg's Python runs it; and ORT, as two sessions), on one image."""
    import functools

    import numpy as np
    import onnxruntime as ort
    import torch
    from bench_onnx import ROI_COUNTS, preset_head, session_options
    from bench_presets import time_ms

    from edgeseg.backbone.extractor import OnnxFeatureExtractor
    from edgeseg.backbone.prepare import prepare_default_backbone
    from edgeseg.complexity import example_rois
    from edgeseg.export import MERGED_IMAGE_INPUT, export_head, merge_backbone_and_head

    threads, size = onnx_args.threads, onnx_args.input_size
    head, infos, _ = preset_head("baseline", onnx_args)
    backbone = prepare_default_backbone(size)
    folder = work / "goal2-merged"
    head_onnx = export_head(head, infos, size, folder / "head.onnx").onnx_path
    names = {layer: backbone.layers[layer].output_name for layer in head.layer_ids}
    merged = merge_backbone_and_head(backbone.onnx_path, names, head_onnx, folder / "merged.onnx",
                                     preprocessing=backbone.preprocessing)  # fmt: skip
    extractor = OnnxFeatureExtractor(backbone, layers=list(head.layer_ids), intra_op_threads=threads)
    head_session = ort.InferenceSession(
        str(head_onnx), session_options(threads), providers=["CPUExecutionProvider"]
    )
    merged_session = ort.InferenceSession(
        str(merged), session_options(threads), providers=["CPUExecutionProvider"]
    )
    image = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: dict[str, Any] = {
        "input_size": size,
        "threads": threads,
        "head": "baseline preset, as bench_onnx sizes it",
        "two_step": "edgeseg's Python path: OnnxFeatureExtractor (backbone in ONNX Runtime, numpy "
        "preprocessing) then the head in torch eager; speedup_vs_two_step = its min ms / the merged "
        "graph's min ms (two_step_two_ort_sessions_ms: the head in ONNX Runtime instead, for scale)",
    }
    try:
        for count in ROI_COUNTS:
            rois = example_rois(count, size)

            def eager(rois: Any = rois) -> Any:
                features = [torch.from_numpy(extractor(image)[layer]) for layer in head.layer_ids]
                with torch.inference_mode():
                    return head(features, rois, None)["logits"]

            def two_sessions(rois: Any = rois) -> Any:
                feed = {f"features_{k}": v for k, v in extractor(image).items()}
                return head_session.run(["masks"], {**feed, "rois": rois.numpy()})

            merged_feed = {MERGED_IMAGE_INPUT: image.astype(np.float32), "rois": rois.numpy()}
            merged_run = functools.partial(merged_session.run, ["masks"], merged_feed)
            diff = float(np.abs(merged_run()[0] - eager().numpy()).max())
            timed = {name: time_ms(fn, onnx_args.repeats, onnx_args.warmup) for name, fn in (
                ("two_step_ort_backbone_torch_head_ms", eager), ("two_step_two_ort_sessions_ms", two_sessions),
                ("merged_ms", merged_run), ("backbone_only_ms", functools.partial(extractor, image)))}  # fmt: skip
            speedup = timed["two_step_ort_backbone_torch_head_ms"]["min"] / timed["merged_ms"]["min"]
            out[f"rois_{count}"] = {**timed, "speedup_vs_two_step": round(speedup, 3), "max_abs_diff": diff}
    finally:
        torch.set_num_threads(previous)
    return out


def goal_onnx(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from bench_onnx import ROI_COUNTS, bench_preset, parse_args

    from edgeseg.config import PRESETS

    onnx_args = parse_args(["--repeats", "5", "--warmup", "2"] if args.quick else [])
    presets = list(QUICK_PRESETS if args.quick else PRESETS)
    rows = {}
    (work / "goal2").mkdir(parents=True, exist_ok=True)
    for index, preset in enumerate(presets, start=1):
        log(f"goal 2: {index}/{len(presets)} {preset}")
        entry = bench_preset(preset, onnx_args, work / "goal2")
        rows[preset] = {
            **{f"speedup_rois_{n}": round(entry[f"rois_{n}"]["speedup"]["min"], 2) for n in ROI_COUNTS},
            **{f"torch_ms_rois_{n}": round(entry[f"rois_{n}"]["torch_ms"]["min"], 3) for n in ROI_COUNTS},
            **{f"onnx_ms_rois_{n}": round(entry[f"rois_{n}"]["onnx_ms"]["min"], 3) for n in ROI_COUNTS},
            "meets_target": entry["meets_target"],
        }
    merged = merged_vs_two_step(onnx_args, work)
    meeting = sum(r["meets_target"] for r in rows.values())
    worst = {n: min(r[f"speedup_rois_{n}"] for r in rows.values()) for n in ROI_COUNTS}
    merged_speedups = {n: merged[f"rois_{n}"]["speedup_vs_two_step"] for n in ROI_COUNTS}
    return {
        "figure": f"{meeting}/{len(rows)} presets >= 1.5x at 1 and 16 ROIs (worst {worst[1]}x / {worst[16]}x); "
        f"merged graph {merged_speedups[1]}x / {merged_speedups[16]}x the two-step path",
        "met": meeting == len(rows) and all(s >= 1.5 for s in merged_speedups.values()),
        "details": {
            "settings": {
                k: getattr(onnx_args, k)
                for k in ("channels", "input_size", "roi_scale", "threads", "repeats", "warmup")
            },
            "speedup": "torch eager ms / ONNX Runtime ms, minima of the repeats (bench_onnx.py)",
            "presets": rows,
            "merged_vs_two_step": merged,
        },
        "profile": {
            "presets_below_target": {p: r for p, r in rows.items() if not r["meets_target"]},
            "merged_backbone_share": {
                n: round(
                    merged[f"rois_{n}"]["backbone_only_ms"]["min"] / merged[f"rois_{n}"]["merged_ms"]["min"],
                    3,
                )
                for n in ROI_COUNTS
            },
        },
    }


# ----------------------------------------------------------------------------------------------
# Goal 3: training FLOP rate against the matmul peak.
# ----------------------------------------------------------------------------------------------

# The baseline preset's own sizes (written out: they are the goal), on 16 training images.
FULL_SIZE = {"data.input_size": 640, "model.channels": 256, "model.mask_size": 56, "model.roi_size": 28,
             "train.batch_size": 8, "data.generated_train_images": 16, "data.generated_val_images": 4}  # fmt: skip
QUICK_SIZE = {"data.input_size": 320, "model.channels": 64, "model.mask_size": 28, "model.roi_size": 14,
              "train.batch_size": 4, "data.generated_train_images": 8, "data.generated_val_images": 4}  # fmt: skip


def matmul_peak(sizes: tuple[int, ...], repeats: int = 5) -> dict[str, Any]:
    """FP32 n x n x n matrix products with torch's current threads, two ways: ``torch.mm`` (BLAS) and
    the same product as a 1x1 convolution (oneDNN, which the head's convolutions run on); the peak
    is the best rate over ``sizes``, both ways and ``repeats`` (the figure load disturbs least)."""
    import torch
    import torch.nn.functional as F

    def best_s(run: Callable[[], Any]) -> float:
        run()
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - began)
        return best

    rates: dict[str, float] = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        rates[f"mm_{n}"] = 2 * n**3 / best_s(lambda a=a, b=b: torch.mm(a, b))
        x, w = torch.randn(n // 256, n, 16, 16), torch.randn(n, n, 1, 1)  # (n/256 * 16 * 16) x n x n
        rates[f"conv1x1_{n}"] = 2 * n**3 / best_s(lambda x=x, w=w: F.conv2d(x, w))
    way = max(rates, key=lambda k: rates[k])
    return {
        "flops_per_s": rates[way],
        "way": way,
        "gflops_per_s": {k: round(v / 1e9, 1) for k, v in rates.items()},
    }


def make_epoch_loader(config: Any, prepared: Any) -> Any:
    """Epoch 1's loader: the same batches (so the same FLOPs) every time it is made."""
    from edgeseg.engine.loop import make_loader

    t = config.train
    return make_loader(prepared.train, t.batch_size, shuffle=True, seed=t.seed, epoch=1, workers=0)


def epoch_runner(config: Any, prepared: Any) -> Callable[[], dict[str, float]]:
    """``train_one_epoch`` over the same batches each call (epoch 1's order), on a fresh head set up
    as ``fit`` sets it up (AdamW, warm-up + cosine schedule, class weights, the config's loss)."""
    import math

    import torch

    from edgeseg.engine.loop import loss_spec, lr_lambda, seed_everything, train_one_epoch
    from edgeseg.models import build_head

    t = config.train
    seed_everything(t.seed)
    head = build_head(prepared.model, prepared.layer_infos)
    optimizer = torch.optim.AdamW(head.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    steps = math.ceil(len(prepared.train) / t.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps * t.epochs, 0, t.min_lr / t.lr))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    weights = torch.tensor(prepared.class_weights) if prepared.class_weights else None
    spec, device = loss_spec(config), torch.device("cpu")

    def run() -> dict[str, float]:
        loader = make_epoch_loader(config, prepared)
        return train_one_epoch(head, loader, prepared.train_features, optimizer, scheduler, scaler, spec,
                               weights, device, epoch=1, epochs=t.epochs, grad_clip=t.grad_clip, amp=False)  # fmt: skip

    return run


def profile_table(prof: Any, flops: int, epoch_s: float, top: int = 15) -> dict[str, Any]:
    """The ops that took the epoch's time (self CPU time on the calling thread), and the counted FLOP
    rate inside the convolutions and matrix multiplies alone."""
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total_us = sum(e.self_cpu_time_total for e in events) or 1.0
    compute = [e for e in events if re.search(r"conv|mm|linear|mkldnn", e.key)]
    compute_us = sum(e.self_cpu_time_total for e in compute)
    return {
        "top_ops": [
            {
                "op": e.key,
                "calls": e.count,
                "self_s": round(e.self_cpu_time_total / 1e6, 3),
                "share": round(e.self_cpu_time_total / total_us, 3),
            }  # fmt: skip
            for e in events[:top]
        ],
        "conv_and_matmul_share": round(compute_us / total_us, 3),
        "counted_flops_per_s_inside_conv_and_matmul": flops / (compute_us / 1e6) if compute_us else None,
        "profiled_self_s": round(total_us / 1e6, 3),
        "timed_epoch_s": round(epoch_s, 3),
        "note": "shares of the profiled epoch's self CPU time on the main thread (an op's intra-op threads "
        "run inside its time; the profiler adds its own overhead per op); every FLOP counted is in a conv "
        "or matmul op, so the rest of the epoch is time at zero counted FLOPs",
    }


def goal_flop_rate(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from edgeseg.complexity import flops_report
    from edgeseg.config import load_config
    from edgeseg.engine.prepare import prepare
    from edgeseg.models import build_head

    sizes = QUICK_SIZE if args.quick else FULL_SIZE
    config = load_config("baseline", overrides={**sizes, "train.device": "cpu", "train.warmup_epochs": 0})
    prepared = prepare(config, log=log)
    peaks = [matmul_peak((1024, 2048))]
    run = epoch_runner(config, prepared)
    counter = FlopCounterMode(display=False)
    with counter:
        run()  # counted (and the warm-up: allocator, the feature cache's pages)
    flops = int(counter.get_total_flops())
    walls, cpus = [], []
    for _ in range(3 if args.quick else 2):
        began, cpu_began = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - began)
        cpus.append(time.process_time() - cpu_began)
    epoch_s = min(walls)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    head = build_head(prepared.model, prepared.layer_infos)
    forward = flops_report(head, prepared.layer_infos, config.data.input_size)["flops_per_roi"]
    loader_rois = sum(int(b.rois.shape[0]) for b in make_epoch_loader(config, prepared))
    peaks.append(matmul_peak((1024, 2048)))  # before and after the epochs: the better one is the peak
    peak = max(peaks, key=lambda p: p["flops_per_s"])
    rate = flops / epoch_s
    share = rate / peak["flops_per_s"]
    return {
        "figure": f"{share:.0%} of the matmul peak ({rate / 1e9:.1f} of {peak['flops_per_s'] / 1e9:.1f} GFLOP/s)",
        "met": share >= 0.70,
        "details": {
            "overrides": sizes,
            "threads": torch.get_num_threads(),
            "train_images": len(prepared.train),
            "rois_per_epoch": loader_rois,
            "counted_flops_per_epoch": flops,
            "forward_flops_per_roi": forward,
            "counted_over_forward": round(flops / max(1, forward * loader_rois), 2),
            "epoch_wall_s": [round(w, 3) for w in walls],
            "epoch_cpu_s": [round(c, 3) for c in cpus],
            "training_flops_per_s": rate,
            "matmul_peak": peak,
            "matmul_peaks_before_and_after_gflops_per_s": [round(p["flops_per_s"] / 1e9, 1) for p in peaks],
            "caution": "over 100 %: the peak was measured under other load (see the load averages) or the "
            "epoch's kernels beat both matrix-product kernels; rerun on a quiet machine"
            if share > 1
            else "",
        },
        "profile": {
            **profile_table(prof, flops, epoch_s),
            "cores_busy_in_timed_epochs": [round(c / w, 2) for c, w in zip(cpus, walls, strict=True)],
        },
    }


# ----------------------------------------------------------------------------------------------
# Goal 4: core-seconds inside epochs.
# ----------------------------------------------------------------------------------------------


def epoch_cpu_from_mlflow(name: str, home: Path) -> dict[str, Any]:
    """Sum of every epoch's ``epoch_cpu_seconds`` (and ``epoch_seconds``) over the search's trial runs."""
    from _measure import environment

    from edgeseg.search.control import locate_tracking
    from edgeseg.search.mlflow_runs import client_for, search_runs
    from edgeseg.search.names import ROLE_TRIAL, TAG_ROLE, TAG_SEARCH_ID

    with environment(EDGESEG_HOME=str(home)):
        where = locate_tracking(name, None, None)
        client = client_for(where.tracking_uri)
        runs = search_runs(
            client, where.experiment_id, {TAG_SEARCH_ID: where.search_id, TAG_ROLE: ROLE_TRIAL}
        )
        cpu = [m.value for r in runs for m in client.get_metric_history(r.info.run_id, "epoch_cpu_seconds")]
        wall = [m.value for r in runs for m in client.get_metric_history(r.info.run_id, "epoch_seconds")]
    return {"trials": len(runs), "epochs": len(cpu), "in_epoch_core_s": round(sum(cpu), 1),
            "in_epoch_wall_s": round(sum(wall), 1)}  # fmt: skip


def measured_search(spec: Path, name: str, home: Path) -> dict[str, Any]:
    """``edgeseg search run SPEC`` in ``home``: core-seconds of its process tree, machine busy, epochs' CPU."""
    from _measure import CpuMeter, MachineBusy

    env = {**os.environ, "EDGESEG_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cores = os.cpu_count() or 1
    cmd = [sys.executable, "-m", "edgeseg.cli", "search", "run", str(spec), "--quiet", "--num-cpus", str(cores)]  # fmt: skip
    log(f"goal 4: {' '.join(cmd[2:])} (EDGESEG_HOME={home})")
    began = time.perf_counter()
    with (home / "search.log").open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        meter, busy = CpuMeter(proc.pid).start(), MachineBusy().start()
        code = proc.wait()
        core_s, machine = meter.stop(), busy.stop()
    wall = time.perf_counter() - began
    if code != 0:
        raise RuntimeError(f"`edgeseg search run {spec.name}` exited {code}; see {home / 'search.log'}")
    epochs = epoch_cpu_from_mlflow(name, home)
    by_name = meter.by_name()
    trial_s = sum(s for n, s in by_name.items() if n.startswith("ray::ImplicitFu"))
    return {
        "source": "measured", "measured_at": now(), "spec": str(spec.relative_to(ROOT)),
        "in_epoch_share": round(epochs["in_epoch_core_s"] / core_s, 3) if core_s else None,
        "search_core_s": round(core_s, 1), "wall_s": round(wall, 1), "cores": cores,
        "process_tree_busy": round(core_s / (wall * cores), 3), "machine_busy": machine, **epochs,
        "core_s_by_part": {
            "driver (preparing data and caches, Tune, tracking)": by_name.get("driver", 0.0),
            "trial processes inside epochs": epochs["in_epoch_core_s"],
            "trial processes outside epochs (start, imports, prepare, FLOPs, checkpoints)": round(trial_s - epochs["in_epoch_core_s"], 1),
            "Ray's own and other child processes (raylet, GCS, dashboard, idle workers)": round(core_s - by_name.get("driver", 0.0) - trial_s, 1),
        },
        "core_s_by_process": by_name,
    }  # fmt: skip


def recorded_reference() -> dict[str, Any]:
    """Goal 4's reference figure from the last recorded run (``benchmarks/results/goals.json``), labelled."""
    try:
        report = json.loads(DEFAULT_OUT.read_text())
        goal = next(g for g in report["goals"] if g["goal"] == 4)
        reference = dict(goal["details"]["reference"])
    except (OSError, ValueError, KeyError, StopIteration, TypeError):
        return {
            "source": "not measured",
            "why": f"no recorded reference in {DEFAULT_OUT.relative_to(ROOT)}; run with --reference",
        }
    if reference.get("source") == "measured":
        reference["source"] = (
            f"recorded in {DEFAULT_OUT.relative_to(ROOT)} (run of {report.get('started_at', '?')})"
        )
    return reference


def goal_in_epoch(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from bench_ablation import arm_home

    home = work / "goal4-smoke"
    home.mkdir(parents=True)
    smoke = measured_search(ROOT / "searches" / "smoke.yaml", "smoke", home)
    if args.reference:
        try:
            reference_home = arm_home(work, "goal4-reference")  # fresh, with vtest.avi linked in
        except SystemExit as exc:  # the video is missing
            raise RuntimeError(str(exc)) from exc
        reference = measured_search(
            ROOT / "searches" / "ablation-video.yaml", "ablation-video", reference_home
        )
    else:
        reference = recorded_reference()

    def part(name: str, entry: dict[str, Any], target: float) -> tuple[str, bool]:
        if "in_epoch_share" not in entry:
            return f"{name} not measured", False
        busy = entry["machine_busy"]["busy"]
        label = "" if entry["source"] == "measured" else f"; {entry['source']}"
        ok = entry["in_epoch_share"] >= target and busy is not None and busy >= 0.85
        return f"{name} {entry['in_epoch_share']:.0%} (CPU busy {busy:.0%}{label})", ok

    texts, oks = zip(part("reference", reference, 0.80), part("smoke", smoke, 0.30), strict=True)
    return {
        "figure": "; ".join(texts),
        "met": all(oks),
        "details": {"reference": reference, "smoke": smoke},
        "profile": {
            name: entry.get("core_s_by_part") for name, entry in (("reference", reference), ("smoke", smoke))
        },
    }


# ----------------------------------------------------------------------------------------------
# Goal 5: the driver's cost per trial.
# ----------------------------------------------------------------------------------------------

FAKE_KEYS = ("train/ce", "train/dice", "train/loss", "val/iou_background", "val/iou_target", "val/iou_other",
             "val/miou_per_roi", "val/miou_per_roi_nonempty", "val/boundary_f", "val/pixel_accuracy",
             "val/pred_share_background", "val/pred_share_target", "val/pred_share_other", "val/loss")  # fmt: skip


def instant_trial(config: dict[str, Any], spec: Any) -> None:
    """A trial that reports every epoch of ``spec`` at once: the keys a real epoch reports, with fake
    values (a deterministic score per configuration), and no checkpoint."""
    import zlib

    from ray import tune

    score = zlib.crc32(json.dumps(config, sort_keys=True, default=str).encode()) / 2**32
    for epoch in range(1, spec.max_epochs + 1):
        value = score * epoch / spec.max_epochs
        tune.report({"epoch": epoch, spec.metric: value, **dict.fromkeys(FAKE_KEYS, value), "lr": 1e-3,
                     "epoch_seconds": 0.0, "epoch_cpu_seconds": 0.0, "params_count": 1000.0, "gflops": 0.01,
                     "gflops_per_image": 0.0})  # fmt: skip


def instant_trainable(spec: Any) -> Any:
    import ray.cloudpickle
    from ray import tune

    if __name__ != "__main__":  # imported (not run as a script): Ray workers cannot import this module
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return tune.with_resources(
        tune.with_parameters(instant_trial, spec=spec), {"cpu": spec.resources.cpus_per_worker}
    )


def access_log(path: Path, offset: int) -> Counter[str]:
    """MLflow requests in the server's uvicorn access log after byte ``offset``, by method and path."""
    pattern = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) ([^ ?"]+)[^"]* HTTP/[\d.]+" \d{3}')
    with path.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    return Counter(f"{m.group(1)} {m.group(2)}" for m in pattern.finditer(text))


def driver_search(trials: int, server: Any) -> dict[str, Any]:
    """One search of ``trials`` instant trials through ``server``: the driver's CPU and MLflow's requests."""
    from bench_search import TINY

    from edgeseg.search.spec import spec_from_mapping
    from edgeseg.search.tuner import run_search

    spec = spec_from_mapping({
        "name": f"bench-goals-driver-{trials}",
        "base": {"preset": "baseline", "overrides": {**TINY, "train.epochs": DRIVER_EPOCHS}},
        "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}, "loss.dice_weight": {"uniform": [0.5, 1.5]}},
        "searcher": {"kind": "random", "seed": 0}, "scheduler": {"kind": "fifo"}, "num_samples": trials,
        "max_concurrent_trials": 2, "resources": {"executor": "function", "cpus_per_worker": 1},
        "export_onnx": False, "mlflow": {"tracking_uri": server.url.rstrip("/")},
    }, source="<bench_goals goal 5>")  # fmt: skip
    offset = server.log_path.stat().st_size
    cpu_began, main_began, began = os.times(), time.thread_time(), time.perf_counter()
    outcome = run_search(spec, progress=False, log=log, trainable=instant_trainable(spec))
    wall = time.perf_counter() - began
    main_s = time.thread_time() - main_began
    ended = os.times()
    cpu_s = (ended.user - cpu_began.user) + (ended.system - cpu_began.system)
    time.sleep(1.0)  # the server writes its access lines as it answers; let the last ones land
    requests = access_log(server.log_path, offset)
    total = sum(requests.values())
    return {
        "name": spec.name, "trials": outcome.trials, "state": outcome.state, "epochs_per_trial": spec.max_epochs,
        "wall_s": round(wall, 1), "driver_cpu_s": round(cpu_s, 2), "driver_cpu_s_per_trial": round(cpu_s / trials, 4),
        "driver_main_thread_cpu_s": round(main_s, 2), "driver_other_threads_cpu_s": round(cpu_s - main_s, 2),
        "mlflow_requests": total, "mlflow_requests_per_trial": round(total / trials, 2),
        "mlflow_requests_by_endpoint": dict(requests.most_common()),
    }  # fmt: skip


def mark_exported(name: str, work: Path) -> None:
    """Make the finished search look exported, as ``fetch-best`` expects (every trial tagged
    ``onnx=exported`` with its ``best/`` score; a small ONNX + sidecar logged to the best one):
    ``fetch-best`` then ranks every trial and downloads one model, as after a real search."""
    import onnx
    from mlflow.entities import Metric, RunTag
    from onnx import TensorProto, helper

    from edgeseg.search.control import locate_tracking
    from edgeseg.search.mlflow_runs import client_for, search_runs
    from edgeseg.search.names import ROLE_TRIAL, TAG_ONNX, TAG_ROLE, TAG_SEARCH_ID

    where = locate_tracking(name, None, None)
    client = client_for(where.tracking_uri)
    runs = search_runs(client, where.experiment_id, {TAG_SEARCH_ID: where.search_id, TAG_ROLE: ROLE_TRIAL})
    stamp = int(time.time() * 1000)
    for run in runs:
        score = run.data.metrics.get("val/miou", 0.0)
        client.log_batch(run.info.run_id, metrics=[Metric("best/val/miou", score, stamp, 0)],
                         tags=[RunTag(TAG_ONNX, "exported")])  # fmt: skip
    best = max(runs, key=lambda r: r.data.metrics.get("val/miou", 0.0))
    folder = work / f"goal5-onnx-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["masks"])], "stand_in",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("masks", TensorProto.FLOAT, [1])])  # fmt: skip
    onnx.save(helper.make_model(graph), str(folder / "model.onnx"))
    (folder / "model.json").write_text(json.dumps({"note": "stand-in model of bench_goals goal 5"}))
    client.log_artifacts(best.info.run_id, str(folder), artifact_path="onnx")


def cli_commands(name: str, work: Path) -> dict[str, list[str]]:
    return {
        "status": ["search", "status", name],
        "report": ["report", name],
        "fetch-best": ["fetch-best", name, "-o", str(work / f"goal5-best-{name}.onnx")],
    }


def command_times(name: str, work: Path) -> dict[str, Any]:
    """Wall time of ``edgeseg search status``, ``report`` and ``fetch-best`` on a finished search."""
    cli = Path(sys.executable).with_name("edgeseg")
    base = [str(cli)] if cli.exists() else [sys.executable, "-m", "edgeseg.cli"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out: dict[str, Any] = {}
    for label, argv in cli_commands(name, work).items():
        try:
            out[label] = median_wall(base + argv, env)
        except RuntimeError as exc:  # recorded: the driver's figures still stand
            out[label] = {"median_s": None, "error": str(exc)}
    return out


def top_imports(stderr: str, top: int) -> dict[str, float]:
    """The top-level imports of ``python -X importtime`` output, by cumulative seconds."""
    rows: dict[str, float] = {}
    for line in stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        if len(name) - len(name.lstrip()) == 1:  # nested imports are indented further
            rows[name.strip()] = rows.get(name.strip(), 0.0) + int(parts[1]) / 1e6
    return {k: round(v, 3) for k, v in sorted(rows.items(), key=lambda kv: -kv[1])[:top]}


def profile_command(argv: list[str], env: dict[str, str], stats_file: Path, top: int = 8) -> dict[str, Any]:
    """One run under ``-X importtime`` (which imports took the time) and one under ``cProfile`` (its
    total import time, and edgeseg's own calls by cumulative seconds; cProfile slows Python code)."""
    import pstats

    cli = [sys.executable, "-X", "importtime", "-m", "edgeseg.cli", *argv]
    timed = subprocess.run(cli, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    cmd = [sys.executable, "-m", "cProfile", "-o", str(stats_file), "-m", "edgeseg.cli", *argv]
    profiled = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if timed.returncode != 0 or profiled.returncode != 0:
        return {"error": (profiled.stdout + profiled.stderr + timed.stderr)[-1500:]}
    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    cumulative = {key: value[3] for key, value in stats.items()}
    imports = max((v for (_f, _l, func), v in cumulative.items() if func == "_find_and_load"), default=0.0)
    own = sorted(((k, v) for k, v in cumulative.items() if "/edgeseg/" in k[0] and k[2] != "<module>"),
                 key=lambda kv: -kv[1])  # fmt: skip
    return {
        "top_level_imports_s": top_imports(timed.stderr, top),
        "under_cprofile_total_s": round(max(cumulative.values(), default=0.0), 3),
        "under_cprofile_imports_s": round(imports, 3),
        "edgeseg_calls_cumulative_s": {
            f"{Path(f).name}:{line}({func})": round(v, 3) for (f, line, func), v in own[:top]
        },
    }


def command_profiles(name: str, work: Path) -> dict[str, Any]:
    """Where each command's time goes, on the larger search."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {
        label: profile_command(argv, env, work / f"goal5-{label}.prof")
        for label, argv in cli_commands(name, work).items()
    }


def extrapolate(small: dict[str, Any], large: dict[str, Any], key: str, at: int) -> float | None:
    """A command's seconds at ``at`` trials, on the line through the two measured points (never
    below the larger point: a command does not get faster with more trials, whatever the noise)."""
    x0, x1 = small["trials"], large["trials"]
    y0, y1 = small["commands"][key]["median_s"], large["commands"][key]["median_s"]
    if y0 is None or y1 is None:
        return None
    slope = max(0.0, (y1 - y0) / (x1 - x0)) if x1 != x0 else 0.0
    return round(y1 + slope * (at - x1), 2)


def goal_driver(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from edgeseg.search.ui import serve_ui

    folder = work / "goal5-mlflow"
    folder.mkdir(parents=True)
    server = serve_ui(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}", host="127.0.0.1", port=0,
                      artifacts=str(folder / "artifacts"), block=False)  # fmt: skip
    points = []
    try:
        with local_ray():
            for trials in (max(1, args.trials // 4), args.trials):
                log(f"goal 5: {trials} instant trials through {server.url}")
                point = driver_search(trials, server)
                mark_exported(point["name"], work)
                point["commands"] = command_times(point["name"], work)
                points.append(point)
        profiles = command_profiles(points[-1]["name"], work)  # while the server still answers
    finally:
        server.stop()
    small, large = points
    span = large["trials"] - small["trials"]
    marginal = (
        (large["driver_cpu_s"] - small["driver_cpu_s"]) / span if span else large["driver_cpu_s_per_trial"]
    )
    calls = (
        (large["mlflow_requests"] - small["mlflow_requests"]) / span
        if span
        else large["mlflow_requests_per_trial"]
    )
    at_1000 = {k: (v["median_s"] if large["trials"] >= 1000 else extrapolate(small, large, k, 1000))
               for k, v in large["commands"].items()}  # fmt: skip
    basis = (
        "measured"
        if large["trials"] >= 1000
        else f"extrapolated from {small['trials']} and {large['trials']} trials"
    )
    return {
        "figure": f"driver {marginal:.3f} core-s per added trial ({small['driver_cpu_s_per_trial']:.3f} / "
        f"{large['driver_cpu_s_per_trial']:.3f} per trial at {small['trials']} / {large['trials']}); MLflow "
        f"{small['mlflow_requests_per_trial']} / {large['mlflow_requests_per_trial']} requests per trial; at 1,000 trials ({basis}): "
        + ", ".join(f"{k} {v} s" for k, v in at_1000.items()),
        "met": marginal <= 0.1
        and large["driver_cpu_s_per_trial"] <= 0.1
        and all(v is not None and v <= 2.0 for v in at_1000.values()),
        "details": {
            "points": points,
            "driver_cpu_s_per_added_trial": round(marginal, 4),
            "mlflow_requests_per_added_trial": round(calls, 2),
            "commands_at_1000_trials_s": at_1000,
            "commands_basis": basis,
        },  # fmt: skip
        "profile": {
            "mlflow_requests_per_trial_by_endpoint": {
                k: round(v / large["trials"], 2) for k, v in large["mlflow_requests_by_endpoint"].items()
            },
            "driver_threads_cpu_s": {
                "main (Tune's loop, callbacks)": large["driver_main_thread_cpu_s"],
                "other (outbox delivery, Ray's threads)": large["driver_other_threads_cpu_s"],
            },
            "commands_at_the_larger_search": profiles,
        },  # fmt: skip
    }


# ----------------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------------

GOALS: dict[int, tuple[str, str, Callable[[argparse.Namespace, Path], dict[str, Any]]]] = {
    1: ("trial start to the first reported epoch", "train executor <= 3 s, function executor <= 1.5 s", goal_trial_start),
    2: ("ONNX Runtime speed-up over torch eager per ROI", ">= 1.5x at 1 and 16 ROIs for every preset and for the merged graph vs the two-step path", goal_onnx),
    3: ("training FLOP rate, full-size baseline head", ">= 70 % of the matmul peak measured in the same run", goal_flop_rate),
    4: ("core-seconds inside epochs", "reference ablation >= 80 %, smoke search >= 30 %, CPU busy >= 85 %", goal_in_epoch),
    5: ("driver cost of a many-trial search", "<= 0.1 driver core-s per trial; status, report, fetch-best <= 2 s at 1,000 trials", goal_driver),
}  # fmt: skip
ORDER = (2, 3, 1, 5, 4)  # compute benchmarks first, on a machine no Ray has run on yet


def measure(number: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One goal, never raising: a failure is recorded with its error and the run goes on."""
    name, target, function = GOALS[number]
    log(f"--- goal {number}: {name}")
    began = time.perf_counter()
    entry: dict[str, Any] = {"goal": number, "name": name, "target": target}
    try:
        entry.update(function(args, work))
    except Exception as exc:  # noqa: BLE001 - one goal's failure must not lose the others
        entry.update(figure=None, met=False, error=f"{type(exc).__name__}: {exc}",
                     traceback=traceback.format_exc()[-4000:])  # fmt: skip
        log(f"goal {number} failed: {type(exc).__name__}: {exc}")
    entry["seconds"] = round(time.perf_counter() - began, 1)
    entry["measured_at"] = now()
    return entry


def carried(out: Path, numbers: set[int]) -> list[dict[str, Any]]:
    """The goals not run this time, from the earlier report at ``out``, each saying so."""
    try:
        earlier = json.loads(out.read_text())
    except (OSError, ValueError):
        return []
    kept = [dict(g) for g in earlier.get("goals", []) if g.get("goal") not in numbers]
    for goal in kept:
        goal.setdefault("carried_from", f"the run of {earlier.get('started_at', '?')}")
    return kept


def table(report: dict[str, Any]) -> str:
    lines = [f"{'goal':<5} {'met':<5} figure  |  target"]
    for goal in report["goals"]:
        figure = goal.get("figure") or f"ERROR {goal.get('error', '')}"[:200]
        note = f"  [{goal['carried_from']}]" if goal.get("carried_from") else ""
        lines.append(
            f"{goal['goal']:<5} {'yes' if goal['met'] else 'NO':<5} {figure}  |  {goal['target']}{note}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes: a smoke check of the benchmark itself"
    )
    parser.add_argument(
        "--trials", type=int, default=200, help="goal 5's larger search (also run at a quarter)"
    )
    parser.add_argument(
        "--reference", action="store_true", help="goal 4: also run the reference ablation (~9 min)"
    )
    parser.add_argument("--goals", default="1,2,3,4,5", help="comma-separated goals to measure")
    parser.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT.relative_to(ROOT)} "
                        f"({QUICK_OUT.relative_to(ROOT)} with --quick)")  # fmt: skip
    parser.add_argument(
        "--work", type=Path, default=None, help="keep the work folder here (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    try:
        args.numbers = sorted({int(x) for x in args.goals.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--goals {args.goals!r}: expected numbers 1-5 separated by commas")
    if not args.numbers or not set(args.numbers) <= set(GOALS):
        parser.error(f"--goals {args.goals!r}: each goal is one of 1-5")
    if args.trials < 4:
        parser.error(f"--trials {args.trials}: at least 4 (goal 5 also runs a quarter as many)")
    args.out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    return args


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch
    from bench_presets import load_average, machine_info, write_report

    os.environ["EDGESEG_HOME"] = str(work / "home")  # before edgeseg reads it: one home for goals 1, 2, 3, 5
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    report: dict[str, Any] = {
        "benchmark": "bench_goals", "issue": 11, "started_at": now(), "quick": args.quick,
        "trials": args.trials, "reference": args.reference,
        "machine": {**machine_info(torch.get_num_threads(), note="see the load averages"),
                    "load_average_start": load_average()},
        "goals": carried(args.out, set(args.numbers)),
    }  # fmt: skip
    began = time.perf_counter()
    for number in (n for n in ORDER if n in args.numbers):
        report["goals"].append(measure(number, args, work))
        report["goals"].sort(key=lambda g: g["goal"])
        report["machine"]["load_average_end"] = load_average()
        report["wall_s"] = round(time.perf_counter() - began, 1)
        write_report(report, args.out)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)  # Ray, Tune and the subprocesses print on fd 1: stdout is kept for the JSON alone
    try:
        if args.work:
            args.work.mkdir(parents=True, exist_ok=True)
            report = run(args, args.work.resolve())
        else:
            with tempfile.TemporaryDirectory(prefix="edgeseg-bench-goals-") as tmp:
                report = run(args, Path(tmp))
    finally:
        sys.stdout.flush()
        os.dup2(stdout, 1)
        os.close(stdout)
    print(table(report), file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
