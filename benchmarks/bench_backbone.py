"""Backbone figures as JSON: EfficientNet-Lite0 export time and size, ONNX Runtime CPU latency, feature cache.

    python benchmarks/bench_backbone.py [--input-size 640] [--threads 2] [--images 16] [--data DIR]

Images for the cache: ``--data DIR`` uses PersonRoiDataset over ``DIR/train``; otherwise the synthetic
people generator writes ``--images`` scenes to a temporary folder (random uint8 images if ``edgeseg.data``
is missing). Everything is written under a temporary EDGESEG_HOME unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


class RandomImages:
    """Seeded random uint8 images that follow the data-set protocol of the feature cache."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def identity(self) -> str:
        return f"random-{self.n}-{self.size}"

    def load_image(self, index: int) -> np.ndarray:
        return np.random.default_rng(index).integers(0, 256, size=(3, self.size, self.size), dtype=np.uint8)


def dataset_for(args: argparse.Namespace, work: Path) -> tuple[Any, str]:
    try:
        from edgeseg.data.dataset import PersonRoiDataset
        from edgeseg.data.synth import write_synth_dataset
    except ImportError:
        return RandomImages(args.images, args.input_size), "random uint8"
    if args.data:
        root = Path(args.data) / "train"
        source = f"PersonRoiDataset {root}"
    else:
        write_synth_dataset(work / "synth", train_images=args.images, val_images=1, seed=0)
        root = work / "synth" / "train"
        source = f"synthetic people ({args.images} scenes, 640x480)"
    dataset = PersonRoiDataset(root / "annotations.json", root / "images", input_size=args.input_size)
    return dataset, source


def latency_ms(extractor: Any, batch: int, size: int, repeats: int) -> float:
    images = np.random.default_rng(0).integers(0, 256, size=(batch, 3, size, size), dtype=np.uint8)
    extractor(images)  # warm-up: memory arenas, thread pool
    started = time.perf_counter()
    for _ in range(repeats):
        extractor(images)
    return (time.perf_counter() - started) / repeats / batch * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input-size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=16, help="images for the feature cache benchmark")
    parser.add_argument("--layers", default="fine,mid,deep", help="roles or layer ids cached")
    parser.add_argument("--data", default=None, help="folder with train/annotations.json + train/images/")
    parser.add_argument("--keep", action="store_true", help="use the real EDGESEG_HOME instead of a temp one")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgeseg-bench-") as tmp:
        work = Path(tmp)
        if not args.keep:
            os.environ["EDGESEG_HOME"] = str(work / "home")
        from edgeseg.backbone import FeatureCache, OnnxFeatureExtractor, prepare_default_backbone

        started = time.perf_counter()
        spec = prepare_default_backbone(args.input_size)
        prepare_seconds = time.perf_counter() - started

        full = OnnxFeatureExtractor(spec, intra_op_threads=args.threads)
        layers = args.layers.split(",")
        chosen = OnnxFeatureExtractor(spec, layers=layers, intra_op_threads=args.threads)
        size = args.input_size
        result: dict[str, Any] = {
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "input_size": size,
            "ort_threads": args.threads,
            "providers": full.active_providers,
            "export_seconds": spec.metadata.get("export_seconds"),
            "prepare_seconds": round(prepare_seconds, 2),
            "onnx_mb": round(spec.onnx_path.stat().st_size / 2**20, 2),
            "parity_max_abs_diff": spec.metadata.get("parity_max_abs_diff"),
            "ms_per_image_all_taps": {
                f"batch{b}": round(latency_ms(full, b, size, args.repeats), 1) for b in (1, 4)
            },
            "ms_per_image_cached_layers": {
                f"batch{b}": round(latency_ms(chosen, b, size, args.repeats), 1) for b in (1, 4)
            },
            "cached_layers": {
                layer_id: [info.channels, info.height, info.width]
                for layer_id, info in chosen.layer_info().items()
            },
        }
        dataset, source = dataset_for(args, work)
        messages: list[str] = []
        started = time.perf_counter()
        cache = FeatureCache.open_or_build(chosen, dataset, root=work / "cache", log=messages.append)
        build_wall = time.perf_counter() - started
        started = time.perf_counter()
        FeatureCache.open_or_build(chosen, dataset, root=work / "cache", log=messages.append)
        reopen = time.perf_counter() - started
        started = time.perf_counter()
        for start in range(0, len(dataset), 8):
            cache.features(list(range(start, min(start + 8, len(dataset)))))
        read_seconds = time.perf_counter() - started
        result["feature_cache"] = {
            "images": len(dataset),
            "source": source,
            "build_seconds": cache.build_seconds,
            "build_wall_seconds": round(build_wall, 2),
            "seconds_per_image": round(cache.build_seconds / len(dataset), 3),
            "mb": round(cache.nbytes / 2**20, 1),
            "mb_per_image": round(cache.nbytes / 2**20 / len(dataset), 2),
            "reopen_seconds": round(reopen, 4),
            "read_all_seconds_batches_of_8": round(read_seconds, 3),
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
