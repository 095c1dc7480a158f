"""``edgeseg``: thin commands, each one call into the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from edgeseg import __version__


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="a named experiment (see `edgeseg presets`)")
    parser.add_argument("--config", help="a YAML file with sections data/backbone/model/loss/train")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="dotted override, e.g. train.lr=5e-4"
    )
    parser.add_argument("--data", help="data folder with train/ and val/ (same as --set data.root=DIR)")


def _load(args: argparse.Namespace):
    from edgeseg.config import load_config, parse_set_arguments

    overrides = parse_set_arguments(args.set)
    if getattr(args, "data", None):
        overrides["data.root"] = args.data
    return load_config(args.preset, args.config, overrides)


def cmd_presets(args: argparse.Namespace) -> int:
    from edgeseg.config import list_presets, load_config

    for preset in list_presets():
        flags = load_config(preset.name).feature_flags()
        if args.json:
            print(json.dumps({"name": preset.name, "description": preset.description, "flags": flags}))
        else:
            short = " ".join(f"{k}={v}" for k, v in flags.items())
            print(f"{preset.name:34s} {preset.description}\n{'':34s} {short}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from edgeseg.catalog import variant_table

    for row in variant_table(input_size=args.input_size, channels=args.channels):
        print(json.dumps(row) if args.json else f"{row['preset']:34s} params={row['params']:>11,d}  "
              f"gflops/roi={row['gflops']:.3f}")  # fmt: skip
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from edgeseg.engine.fit import train

    result = train(_load(args), run_dir=args.run_dir, resume_from=args.resume)
    print(
        f"best checkpoint: {result.best_checkpoint}  val/miou={result.best_metrics.get('val/miou', float('nan')):.4f}"
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from edgeseg.evaluation import validate_checkpoint

    report = validate_checkpoint(
        args.checkpoint, out_dir=args.out, data_root=args.data, overlays=args.overlays
    )
    print(json.dumps(report["metrics"], indent=2))
    print(f"metrics: {report['metrics_file']}\noverlays: {report['overlay_dir']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edgeseg.export import export_checkpoint

    result = export_checkpoint(
        args.checkpoint, args.out, merge_backbone=args.merge_backbone, tolerance=args.tolerance
    )
    print(
        f"onnx: {result.onnx_path}\nsidecar: {result.sidecar_path}\nmax |torch - onnxruntime| = {result.max_abs_diff:.3g}"
    )
    if result.merged_path:
        print(f"backbone+head onnx: {result.merged_path}")
    print("latency ms: " + json.dumps(result.latency_ms))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from edgeseg.report.ablation import build_report, publish, to_markdown, write_csvs
    from edgeseg.report.html import render_html
    from edgeseg.search.artifacts import search_expected_trials
    from edgeseg.search.control import locate_tracking

    where = locate_tracking(args.name, args.storage, args.tracking_uri)
    analysis = build_report(where.experiment_name, where.tracking_uri, where.search_id, metric=args.metric, rope=args.rope,
                            expected=search_expected_trials(args.name, args.storage))  # fmt: skip
    print(to_markdown(analysis, top=args.top))
    if args.csv:
        print(f"\nCSV tables: {', '.join(str(p) for p in write_csvs(analysis, args.csv))}")
    if args.html:
        print(f"HTML report: {render_html(analysis, args.html)}")
    if not args.no_publish and publish(analysis, where.tracking_uri):
        print("logged to the search's parent run in MLflow (artifacts report/, description)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edgeseg.cli.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    from edgeseg.cli import backbone as backbone_commands
    from edgeseg.cli import data as data_commands
    from edgeseg.cli import search as search_commands
    from edgeseg.cli import ui as ui_commands

    parser = argparse.ArgumentParser(prog="edgeseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edgeseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the named experiments and their feature flags")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser(
        "models", help="every preset's head: parameters and GFLOPs per ROI on the default backbone"
    )
    p.add_argument("--input-size", type=int, default=640)
    p.add_argument("--channels", type=int, default=None, help="override model.channels")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train one configuration (no Ray)")
    _config_args(p)
    p.add_argument(
        "--run-dir", default=None, help="where checkpoints go (default: $EDGESEG_HOME/runs/NAME-HASH)"
    )
    p.add_argument("--resume", default=None, help="a checkpoint directory to continue from")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("validate", help="metrics JSON and overlay PNGs for a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--out", default=None)
    p.add_argument("--data", default=None, help="evaluate on DIR/val instead of the training config's data")
    p.add_argument("--overlays", type=int, default=4, help="how many images to draw")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("export", help="ONNX + sidecar for a checkpoint, checked in ONNX Runtime")
    p.add_argument("checkpoint")
    p.add_argument("--out", default=None)
    p.add_argument(
        "--merge-backbone",
        action="store_true",
        help="also write one ONNX: image (RGB 0..255, letterboxed) + rois -> masks, backbone preprocessing inside",
    )
    p.add_argument("--tolerance", type=float, default=1e-3)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "report", help="which feature is worth its cost: effects with 95 %% intervals, verdicts, Pareto, HTML"
    )
    p.add_argument("name", help="the search name")
    p.add_argument("--storage", default=None)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--metric", default=None, help="default: the search's metric (the only one it ranks by)")
    p.add_argument("--rope", type=float, default=0.01, help="practical-equivalence margin of an effect")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--csv", default=None, metavar="DIR", help="write every table as CSV into DIR")
    p.add_argument("--html", default=None, metavar="FILE", help="write the self-contained HTML report")
    p.add_argument("--no-publish", action="store_true", help="do not log the report to the parent run")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="the smoke search end to end on this machine")
    p.set_defaults(func=cmd_demo)

    data_commands.register(sub)
    backbone_commands.register(sub)
    search_commands.register(sub)
    ui_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from edgeseg.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"edgeseg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
