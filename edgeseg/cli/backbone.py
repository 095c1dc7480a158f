"""``edgeseg backbone prepare|info``: export the default backbone, or show what a backbone's layers are."""

from __future__ import annotations

import argparse
import json


def _print_description(description: dict) -> None:
    print(f"onnx: {description['onnx']}")
    print(f"sha256: {description['sha256']}")
    print(f"input: {description['input_name']} [B,3,{description['input_size']},{description['input_size']}] uint8 RGB, "
          f"preprocessing {json.dumps(description['preprocessing'])}")  # fmt: skip
    print(f"{'layer':<12} {'role':<8} {'channels':>8} {'stride':>6} {'size':>9}  tensor")
    for layer_id, layer in description["layers"].items():
        size = f"{layer['height']}x{layer['width']}"
        print(
            f"{layer_id:<12} {layer['role']:<8} {layer['channels']:>8} {layer['stride']:>6} {size:>9}  {layer['output_name']}"
        )
    if description["parity_max_abs_diff"] is not None:
        print(f"ONNX Runtime vs torch max |diff|: {description['parity_max_abs_diff']:.3g}")


def _prepare(args: argparse.Namespace) -> int:
    from edgeseg.backbone.prepare import describe_backbone, prepare_default_backbone  # torch: only when run

    _print_description(describe_backbone(prepare_default_backbone(args.input_size)))
    return 0


def _info(args: argparse.Namespace) -> int:
    from edgeseg.backbone.prepare import describe_backbone, load_backbone

    spec = load_backbone(args.onnx, args.layer_map, args.input_size)
    _print_description(describe_backbone(spec))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("backbone", help="prepare or inspect the frozen ONNX backbone")
    commands = parser.add_subparsers(dest="backbone_command", required=True)
    prepare = commands.add_parser(
        "prepare", help="export the default EfficientNet-Lite0 backbone (once per size)"
    )
    prepare.add_argument("--input-size", type=int, default=640, help="network input size (default 640)")
    prepare.set_defaults(func=_prepare)
    info = commands.add_parser("info", help="layers of a backbone: tensors, roles, channels, strides, sizes")
    info.add_argument("--onnx", default=None, help="a user ONNX (default: the EfficientNet-Lite0 export)")
    info.add_argument(
        "--layer-map", default=None, help="yolov9 or a layer map JSON (default: the ONNX's sidecar)"
    )
    info.add_argument("--input-size", type=int, default=None,
                      help="input size (default: the model's; 640 for the default backbone)")  # fmt: skip
    info.set_defaults(func=_info)
