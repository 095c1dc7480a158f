"""Data pipeline throughput on one core; prints JSON (figures are never asserted in tests).

    python benchmarks/bench_data.py [--synth-images 60] [--video-images 40] [--dataset-images 48]

- synth: procedural scenes written per second (render + JPEG + RLE + JSON);
- video: cut-outs found in vtest.avi, seconds to find them, scenes pasted per second (if the video is
  present, see scripts/fetch-vtest.sh);
- dataset: ``PersonRoiDataset.__getitem__`` seconds per epoch over N images: first pass (decodes
  masks), second pass (masks from the cache), and an augmented pass.
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

import cv2
import torch

from edgeseg.data.augment import AugmentConfig
from edgeseg.data.dataset import PersonRoiDataset
from edgeseg.data.synth import write_synth_dataset
from edgeseg.data.video_people import default_video_path, write_video_people_dataset


def _epoch_seconds(dataset: PersonRoiDataset) -> float:
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return time.perf_counter() - start


def _dataset_figures(split_dir: Path, input_size: int) -> dict[str, Any]:
    plain = PersonRoiDataset(split_dir / "annotations.json", split_dir / "images", input_size=input_size)
    first, second = _epoch_seconds(plain), _epoch_seconds(plain)
    augmented = PersonRoiDataset(
        split_dir / "annotations.json",
        split_dir / "images",
        input_size=input_size,
        augment=AugmentConfig(hflip_prob=0.5, scale_jitter=0.25, color_jitter=0.3),
    )
    _epoch_seconds(augmented)  # fill its mask cache
    return {
        "images": len(plain),
        "rois": plain.num_rois,
        "input_size": input_size,
        "epoch_s_first_pass_decode": round(first, 3),
        "epoch_s_second_pass_cached": round(second, 3),
        "epoch_s_augmented_cached": round(_epoch_seconds(augmented), 3),
        "ms_per_image_first": round(1000 * first / len(plain), 2),
        "ms_per_image_cached": round(1000 * second / len(plain), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--synth-images", type=int, default=60)
    parser.add_argument("--video-images", type=int, default=40)
    parser.add_argument("--dataset-images", type=int, default=48)
    parser.add_argument("--video", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    result: dict[str, Any] = {
        "threads": 1,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # others' work on a shared machine skews wall time
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start, start_cpu = time.perf_counter(), time.process_time()
        summary = write_synth_dataset(root / "synth", args.synth_images, 1)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        result["synth"] = {
            "scenes": args.synth_images + 1,
            "instances": summary["train"]["instances"] + summary["val"]["instances"],
            "seconds": round(seconds, 3),
            "scenes_per_s": round((args.synth_images + 1) / seconds, 1),
            # CPU time is what one core delivers when the machine is shared (wall time is not)
            "scenes_per_cpu_s": round((args.synth_images + 1) / cpu_seconds, 1),
        }
        data_root = root / "data"
        write_synth_dataset(data_root, args.dataset_images, 1)
        result["dataset_synth_640"] = _dataset_figures(data_root / "train", 640)

        video = args.video or default_video_path()
        if video.is_file():
            summary = write_video_people_dataset(video, root / "video", args.video_images, 1)
            paste_seconds = summary["seconds"] - summary["seconds_cutouts"]
            result["video_people"] = {
                "cutouts_train": summary["cutouts_train"],
                "cutouts_val": summary["cutouts_val"],
                "seconds_cutouts": summary["seconds_cutouts"],
                "scenes": args.video_images + 1,
                "instances": summary["train"]["instances"] + summary["val"]["instances"],
                "scenes_per_s": round((args.video_images + 1) / paste_seconds, 1),
                "perspective_fit": summary["perspective_fit"],
            }
            result["dataset_video_640"] = _dataset_figures(root / "video" / "train", 640)
        else:
            result["video_people"] = f"skipped: {video} missing (scripts/fetch-vtest.sh)"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
