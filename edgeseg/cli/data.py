"""``edgeseg data ...``: thin commands over the data library (each is one public call + a summary line)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_SUBSETS = (100, 500)


def _coco_person(args: argparse.Namespace) -> int:
    from edgeseg.data.coco_person import write_person_only

    subsets = tuple(args.subset) if args.subset else DEFAULT_SUBSETS
    written = write_person_only(args.instances, args.out, subsets=subsets, seed=args.seed)
    print(f"wrote {len(written)} person-only files to {args.out}: " + ", ".join(p.name for p in written))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from edgeseg.data.synth import write_synth_dataset

    val_images = args.val_images if args.val_images is not None else max(1, args.images // 4)
    summary = write_synth_dataset(args.out, args.images, val_images, seed=args.seed)
    print(
        f"wrote synthetic people to {args.out}: train {summary['train']['images']} images / "
        f"{summary['train']['instances']} people, val {summary['val']['images']} images / "
        f"{summary['val']['instances']} people in {summary['seconds']:.1f} s"
    )
    return 0


def _video_people(args: argparse.Namespace) -> int:
    from edgeseg.data.video_people import default_video_path, write_video_people_dataset

    video = args.video or default_video_path()
    summary = write_video_people_dataset(video, args.out, args.images, args.val_images, seed=args.seed)
    print(
        f"wrote video people to {args.out}: {summary['cutouts_train']}/{summary['cutouts_val']} train/val cut-outs, "
        f"train {summary['train']['images']} images / {summary['train']['instances']} people, "
        f"val {summary['val']['images']} images / {summary['val']['instances']} people in {summary['seconds']:.1f} s"
    )
    return 0


def _stats(args: argparse.Namespace) -> int:
    from edgeseg.data.stats import split_statistics

    stats = split_statistics(
        args.data,
        input_size=args.input_size,
        mask_size=args.mask_size,
        min_instance_size=args.min_instance_size,
    )
    print(json.dumps(stats))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data {coco-person, synth, video-people, stats}`` to the edgeseg CLI."""
    data = subparsers.add_parser(
        "data", help="prepare data sets (COCO person subsets, synthetic, video people)"
    )
    commands = data.add_subparsers(dest="data_command", required=True)

    coco = commands.add_parser("coco-person", help="person-only, no-crowd COCO files + deterministic subsets")
    coco.add_argument("--instances", required=True, type=Path, help="COCO instances_*.json")
    coco.add_argument("--out", required=True, type=Path, help="output folder")
    coco.add_argument(
        "--subset", type=int, action="append", help="subset size (repeatable; default 100 and 500)"
    )
    coco.add_argument("--seed", type=int, default=0)
    coco.set_defaults(func=_coco_person)

    synth = commands.add_parser("synth", help="procedural people on person-free backgrounds (no downloads)")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--images", required=True, type=int, help="training images")
    synth.add_argument("--val-images", type=int, default=None, help="validation images (default images/4)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_synth)

    video = commands.add_parser("video-people", help="real people cut out of vtest.avi, pasted into scenes")
    video.add_argument("--video", type=Path, default=None, help="default $EDGESEG_HOME/video/vtest.avi")
    video.add_argument("--out", required=True, type=Path)
    video.add_argument("--images", type=int, default=200, help="training images")
    video.add_argument("--val-images", type=int, default=50, help="validation images")
    video.add_argument("--seed", type=int, default=0)
    video.set_defaults(func=_video_people)

    stats = commands.add_parser("stats", help="pixel ratios + log class weights of DIR/train, as JSON")
    stats.add_argument("--data", required=True, type=Path, help="folder with train/annotations.json")
    stats.add_argument("--input-size", type=int, default=640)
    stats.add_argument("--mask-size", type=int, default=56)
    stats.add_argument("--min-instance-size", type=int, default=16)
    stats.set_defaults(func=_stats)
