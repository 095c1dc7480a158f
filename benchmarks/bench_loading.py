"""Data loading per epoch with and without the feature cache (prints JSON).

One epoch = every training image through the DataLoader plus its backbone features, exactly as
``train_one_epoch`` reads them, but without the head. "cache" reads the fp16 memory maps;
"on the fly" runs the ONNX backbone per batch. Usage: python benchmarks/bench_loading.py [--input-size 640]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import onnxruntime as ort
import torch

from edgeseg.engine.loop import make_loader
from edgeseg.engine.prepare import make_extractor, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input-size", type=int, default=640)
    parser.add_argument("--preset", default="baseline")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("EDGESEG_HOME", tempfile.mkdtemp(prefix="edgeseg-bench-"))

    from edgeseg.backbone.cache import OnTheFlyFeatures
    from edgeseg.config import load_config

    config = load_config(
        args.preset,
        overrides={"data.input_size": args.input_size, "data.generated_train_images": args.images,
                   "data.generated_val_images": 8, "backbone.threads": 2},
    )  # fmt: skip
    began = time.perf_counter()
    prepared = prepare(config, log=lambda _: None)
    prepare_s = time.perf_counter() - began

    def one_epoch(features) -> float:
        start = time.perf_counter()
        loader = make_loader(prepared.train, args.batch_size, shuffle=True, seed=0, epoch=1, workers=0)
        for batch in loader:
            feats = features.features(batch.indices.tolist(), batch.images)
            assert all(torch.isfinite(t).all() for t in feats.values())
        return time.perf_counter() - start

    cached = prepared.train_features
    extractor = make_extractor(config, prepared.spec, prepared.model.layers)
    result = {
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "gpu": "none",
                    "load_average_1min": os.getloadavg()[0], "onnxruntime": ort.__version__},
        "preset": args.preset,
        "layers": list(prepared.model.layers),
        "input_size": args.input_size,
        "train_images": len(prepared.train),
        "prepare_s_first_call": round(prepare_s, 2),
        "cache_mb": round(cached.nbytes / 2**20, 1),
        "cache_build_s": round(cached.build_seconds, 2),
        "epoch_s_with_cache_first": round(one_epoch(cached), 3),
        "epoch_s_with_cache_warm": round(one_epoch(cached), 3),
        "epoch_s_on_the_fly": round(one_epoch(OnTheFlyFeatures(extractor)), 3),
    }  # fmt: skip
    result["speedup"] = round(result["epoch_s_on_the_fly"] / max(1e-9, result["epoch_s_with_cache_warm"]), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
