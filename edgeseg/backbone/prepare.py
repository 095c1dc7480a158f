"""Getting a backbone ready: the default EfficientNet-Lite0 export (once per input size) or a user ONNX.

The default export is cached under ``$EDGESEG_HOME/backbones`` and is safe to request from several
processes at once (Ray trials starting together): an exclusive file lock serialises the export, files are
written under temporary names and renamed into place, the sidecar JSON last, so a reader never sees half a
backbone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import onnx

from edgeseg import paths
from edgeseg.backbone.efficientnet_lite0 import export_efficientnet_lite0
from edgeseg.backbone.extractor import OnnxFeatureExtractor
from edgeseg.backbone.layer_map import LAYER_MAPS, BackboneSpec, LayerMap, load_layer_map, sidecar_path
from edgeseg.files import file_lock

DEFAULT_STEM = "efficientnet_lite0_{size}"


def _ready_default(json_path: Path) -> BackboneSpec | None:
    if not json_path.is_file():
        return None
    spec = BackboneSpec.load(json_path)
    return spec if spec.onnx_path.is_file() else None


def prepare_default_backbone(input_size: int = 640, root: str | Path | None = None) -> BackboneSpec:
    """The EfficientNet-Lite0 backbone at ``input_size``: exported on first use, then read from the cache."""
    root = Path(root) if root is not None else paths.subdir("backbones")
    stem = DEFAULT_STEM.format(size=input_size)
    json_path = root / f"{stem}.json"
    spec = _ready_default(json_path)
    if spec is not None:
        return spec
    with file_lock(root / f"{stem}.lock"):
        spec = _ready_default(json_path)  # another process may have exported it while we waited
        if spec is not None:
            return spec

        with tempfile.TemporaryDirectory(dir=root, prefix=f".{stem}.") as tmp:
            exported = export_efficientnet_lite0(tmp, input_size=input_size, stem=stem)
            os.replace(exported.onnx_path, root / f"{stem}.onnx")
            spec = exported.replace(onnx_path=root / f"{stem}.onnx")
            spec.save(json_path)  # written last: its presence means the backbone is complete
    return spec


def _input_of(model_path: Path) -> tuple[str, list[int | None]]:
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - any parse failure is reported with the file name
        raise ValueError(f"{model_path} is not a readable ONNX model: {error}") from error
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"{model_path} must have exactly one image input, has {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    return inputs[0].name, [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _check_size(onnx_path: Path, size: int, input_size: int | None) -> None:
    if input_size is not None and size != input_size:
        raise ValueError(
            f"backbone {onnx_path} takes {size}x{size} images, but input_size={input_size} was asked for "
            "(data.input_size must match the backbone's input size)"
        )


def load_backbone(
    onnx_path: str | Path | None = None, layer_map: str | Path | None = None, input_size: int | None = 640
) -> BackboneSpec:
    """The backbone spec for a config: the default export, or a user ONNX with a layer map.

    ``layer_map`` is "yolov9" (the original featext names), another ready map name, or a JSON file; without
    it a sidecar ``<stem>.json`` next to the ONNX is used. ``input_size`` must match a fixed-size ONNX
    (None accepts whatever the model or sidecar says; a dynamic-size user ONNX then needs it).
    """
    if not onnx_path:
        if layer_map:
            raise ValueError(
                f"layer_map={layer_map!r} needs a user ONNX (backbone.onnx); the default backbone has its own"
            )
        return prepare_default_backbone(640 if input_size is None else input_size)
    onnx_path = Path(onnx_path).expanduser()
    if not onnx_path.is_file():
        raise FileNotFoundError(f"backbone ONNX not found: {onnx_path}")
    if not layer_map:
        sidecar = sidecar_path(onnx_path)
        if not sidecar.is_file():
            raise ValueError(
                f"no layer map for {onnx_path}: pass layer_map='yolov9' (or one of {sorted(LAYER_MAPS)}) "
                f"or a JSON file, or write a sidecar {sidecar}"
            )
        spec = BackboneSpec.load(sidecar)
        if spec.onnx_path.resolve() != onnx_path.resolve():
            spec = spec.replace(onnx_path=onnx_path)
        _check_size(onnx_path, spec.input_size, input_size)
        return spec
    if str(layer_map) in LAYER_MAPS:
        chosen: LayerMap = LAYER_MAPS[str(layer_map)]
    elif Path(layer_map).suffix == ".json" or Path(layer_map).exists():
        chosen = load_layer_map(layer_map)
    else:
        raise ValueError(
            f"layer_map {str(layer_map)!r} is neither a ready map {sorted(LAYER_MAPS)} nor a JSON file"
        )
    input_name, dims = _input_of(onnx_path)
    fixed = [d for d in dims[2:] if d is not None]
    if fixed:
        size = fixed[0]
        _check_size(onnx_path, size, input_size)
    elif input_size is not None:
        size = input_size
    elif chosen.input_size is not None:
        size = chosen.input_size
    else:
        raise ValueError(f"{onnx_path} has a dynamic input size: pass input_size")
    return chosen.bind(onnx_path, input_name, size, layer_map=str(layer_map))


def describe_backbone(spec: BackboneSpec, providers: tuple[str, ...] = ("cpu",)) -> dict[str, Any]:
    """What a backbone gives: per layer id its tensor, channels, stride and size (read from the model)."""
    extractor = OnnxFeatureExtractor(spec, providers=providers)
    role_of = {layer_id: role for role, layer_id in spec.roles.items()}
    return {
        "onnx": str(spec.onnx_path),
        "sha256": extractor.sha256,
        "input_name": spec.input_name,
        "input_size": spec.input_size,
        "preprocessing": spec.preprocessing.to_dict(),
        "layers": {
            layer_id: {
                "output_name": spec.layers[layer_id].output_name,
                "role": role_of.get(layer_id, ""),
                "channels": info.channels,
                "stride": info.stride,
                "height": info.height,
                "width": info.width,
            }
            for layer_id, info in extractor.layer_info().items()
        },
        "roles": dict(spec.roles),
        "parity_max_abs_diff": spec.metadata.get("parity_max_abs_diff"),
    }
