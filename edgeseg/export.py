"""ONNX export of a ROI segmentation head, with an ONNX Runtime parity check and a sidecar JSON.

The exported graph (opset 17, TorchScript exporter) takes, in this order:

* ``features_<layer_id>``: float32 [B, C, H, W] per layer, in ``head.layer_ids`` order (dynamic B;
  H and W are fixed by the input size);
* ``image`` (RGB-enhanced heads only): float32 [B, 3, S, S], the letterboxed network input in 0..255
  (float rather than uint8 so a caller can feed the same tensor it gave the backbone, scaled);
* ``rois``: float32 [N, 5] = (batch_index, x1, y1, x2, y2) in input-image pixels (dynamic N, N may be 0);

and returns ``masks``: float32 [N, 3, M, M] logits (0 background, 1 target, 2 other persons).
The sidecar ``<stem>.json`` describes all of this plus the layer map, preprocessing, config and metrics,
so the file can be used without edgeseg. :func:`merge_backbone_and_head` joins a backbone ONNX and a
head ONNX into one graph ``image`` (0..255, the backbone's preprocessing inside) + ``rois`` -> ``masks``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import compose, helper
from torch import Tensor, nn

import edgeseg
from edgeseg.backbone.layer_map import Preprocessing
from edgeseg.complexity import (
    count_parameters,
    example_inputs,
    feature_shape,
    flops_report,
    latency_report,
    onnx_feed,
)
from edgeseg.config import CLASS_NAMES
from edgeseg.engine.checkpoint import head_from_checkpoint, infos_from_dict, load_checkpoint
from edgeseg.models.head import RoiSegmentationHead

OPSET = 17
SIDECAR_FORMAT = "edgeseg-head-onnx/1"
_RESERVED_SIDECAR_KEYS = {
    "format", "edgeseg_version", "onnx_file", "opset", "inputs", "outputs", "layers", "input_size",
    "class_names", "mask_size", "roi_size", "config", "metrics", "parity",
}  # fmt: skip


class ExportParityError(RuntimeError):
    """ONNX Runtime's output differs from torch's by more than the tolerance."""


@dataclass(frozen=True)
class ExportReport:
    onnx_path: Path
    sidecar_path: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    max_abs_diff: float
    tolerance: float
    num_rois_checked: int
    opset: int


def input_names(head: RoiSegmentationHead) -> list[str]:
    """Graph input names in order: one per feature layer, ``image`` if the head needs it, ``rois``."""
    names = [f"features_{layer}" for layer in head.layer_ids]
    if head.needs_image:
        names.append("image")
    return [*names, "rois"]


class _GraphInterface(nn.Module):
    """Positional tensors in ``input_names`` order -> the head's final logits."""

    def __init__(self, head: RoiSegmentationHead) -> None:
        super().__init__()
        self.head = head
        self.num_layers = len(head.layer_ids)

    def forward(self, *inputs: Tensor) -> Tensor:
        features = list(inputs[: self.num_layers])
        image = inputs[self.num_layers] if self.head.needs_image else None
        return self.head(features, inputs[-1], image)["logits"]


def _parity_rois(input_size: int, batch_size: int) -> Tensor:
    """ROIs that exercise the pooling: ordinary, partly outside the image (border), tiny, other image."""
    s = float(input_size)
    return torch.tensor(
        [
            [0, 0.10 * s, 0.15 * s, 0.60 * s, 0.90 * s],
            [batch_size - 1, 0.55 * s, 0.40 * s, 1.05 * s, 1.02 * s],  # crosses the right/bottom border
            [0, -0.05 * s, -0.03 * s, 0.30 * s, 0.25 * s],  # crosses the top-left border
            [batch_size - 1, 0.40 * s, 0.40 * s, 0.40 * s + 0.6, 0.40 * s + 0.9],  # smaller than a pixel
        ],
        dtype=torch.float32,
    )


def parity_check(
    head: RoiSegmentationHead,
    onnx_path: str | Path,
    layer_infos: Mapping[str, Any],
    input_size: int,
    seed: int = 0,
) -> tuple[float, int]:
    """Max |torch - ONNX Runtime| of the final logits on random features, 2 images and 4 ROIs."""
    import onnxruntime as ort

    batch_size = 2
    features, _, image = example_inputs(head, layer_infos, input_size, batch_size=batch_size, seed=seed)
    rois = _parity_rois(input_size, batch_size)
    was_training = head.training
    head.eval()
    try:
        with torch.no_grad():
            expected = head(features, rois, image)["logits"].numpy()
    finally:
        head.train(was_training)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    (actual,) = session.run(["masks"], onnx_feed(head, features, rois, image))
    if actual.shape != expected.shape:
        raise ExportParityError(f"{onnx_path}: ONNX output shape {actual.shape} != torch {expected.shape}")
    return float(np.abs(actual - expected).max()), len(rois)


def _layer_entries(
    head: RoiSegmentationHead, layer_infos: Mapping[str, Any], input_size: int
) -> list[dict[str, Any]]:
    entries = []
    for layer, stride, roi_size in zip(
        head.layer_ids, head.pooler.strides, head.pooler.roi_sizes, strict=True
    ):
        channels, height, width = feature_shape(layer_infos[layer], input_size)
        entry: dict[str, Any] = {"id": layer, "input": f"features_{layer}", "stride": stride, "channels": channels,
                                 "height": height, "width": width, "roi_size": roi_size,
                                 "rgb_enhanced": layer in head.pooler.extra_channels}  # fmt: skip
        output_name = getattr(layer_infos[layer], "output_name", None)
        if output_name:
            entry["backbone_output"] = output_name
        entries.append(entry)
    return entries


def export_head(
    head: RoiSegmentationHead,
    layer_infos: Mapping[str, Any],
    input_size: int,
    out_path: str | Path,
    *,
    config_dict: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    tolerance: float = 1e-3,
    opset: int = OPSET,
) -> ExportReport:
    """Export ``head`` to ``out_path`` (+ ``<stem>.json``), check it in ONNX Runtime, return a report.

    ``layer_infos`` maps every id in ``head.layer_ids`` to an object with ``channels``, ``stride`` and
    optionally ``height``/``width``/``output_name``. ``extra`` entries (e.g. ``preprocessing``) are added
    to the sidecar at top level. Raises :class:`ExportParityError` when the max |diff| exceeds ``tolerance``.
    """
    missing = [layer for layer in head.layer_ids if layer not in layer_infos]
    if missing:
        raise ValueError(f"layer_infos lacks layers {missing} of the head (has {sorted(layer_infos)})")
    clash = _RESERVED_SIDECAR_KEYS & set(extra or {})
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} would overwrite sidecar fields")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    names = input_names(head)

    _trace_to_onnx(head, layer_infos, input_size, out_path, names, opset)

    max_diff, num_rois = parity_check(head, out_path, layer_infos, input_size)
    if not max_diff <= tolerance:
        raise ExportParityError(
            f"{out_path}: ONNX Runtime differs from torch by {max_diff:.3g} > tolerance {tolerance:.3g}"
        )

    sidecar_path = out_path.with_suffix(".json")
    sidecar = _sidecar(head, layer_infos, input_size, out_path, opset, config_dict, metrics, extra)
    sidecar["parity"] = {"max_abs_diff": max_diff, "tolerance": tolerance, "num_rois": num_rois,
                         "runtime": "onnxruntime"}  # fmt: skip
    sidecar_path.write_text(json.dumps(to_jsonable(sidecar), indent=2, sort_keys=False))
    return ExportReport(
        out_path, sidecar_path, tuple(names), ("masks",), max_diff, tolerance, num_rois, opset
    )


def _trace_to_onnx(
    head: RoiSegmentationHead, layer_infos: Mapping[str, Any], input_size: int, out_path: Path,
    names: list[str], opset: int,
) -> None:  # fmt: skip
    """Trace the head in eval mode on example inputs; batch and ROI count stay dynamic."""
    features, _, image = example_inputs(head, layer_infos, input_size, num_rois=3, batch_size=2, seed=1)
    trace_args = (*features, *([image] if image is not None else []), _parity_rois(input_size, 2)[:3])
    dynamic_axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in names[:-1]}
    dynamic_axes["rois"] = {0: "num_rois"}
    dynamic_axes["masks"] = {0: "num_rois"}
    was_training = head.training
    head.eval()
    try:
        with warnings.catch_warnings():
            # Spatial sizes are fixed per export by design; the tracer's notes about them are expected.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            torch.onnx.export(
                _GraphInterface(head),
                trace_args,
                str(out_path),
                input_names=names,
                output_names=["masks"],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        head.train(was_training)


def _sidecar(
    head: RoiSegmentationHead, layer_infos: Mapping[str, Any], input_size: int, out_path: Path, opset: int,
    config_dict: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None, extra: Mapping[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    """What a deployer needs besides the graph: inputs, layers, classes, sizes, config, metrics."""
    return {
        "format": SIDECAR_FORMAT,
        "edgeseg_version": edgeseg.__version__,
        "onnx_file": out_path.name,
        "opset": opset,
        "inputs": _input_entries(head, layer_infos, input_size),
        "outputs": [
            {
                "name": "masks",
                "dtype": "float32",
                "shape": ["num_rois", 3, head.mask_size, head.mask_size],
                "meaning": "logits per class; softmax over dim 1, argmax gives the class map",
            }
        ],  # fmt: skip
        "layers": _layer_entries(head, layer_infos, input_size),
        "input_size": input_size,
        "class_names": list(CLASS_NAMES),
        "mask_size": head.mask_size,
        "roi_size": head.roi_size,
        "config": dict(config_dict or {}),
        "metrics": dict(metrics or {}),
        **dict(extra or {}),
    }


def _input_entries(
    head: RoiSegmentationHead, layer_infos: Mapping[str, Any], input_size: int
) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = [
        {
            "name": f"features_{layer}",
            "layer_id": layer,
            "dtype": "float32",
            "shape": ["batch", *feature_shape(layer_infos[layer], input_size)],
        }  # fmt: skip
        for layer in head.layer_ids
    ]
    if head.needs_image:
        entries.append({"name": "image", "dtype": "float32", "shape": ["batch", 3, input_size, input_size],
                        "meaning": "letterboxed network input image, RGB, 0..255 (not normalised)"})  # fmt: skip
    entries.append({"name": "rois", "dtype": "float32", "shape": ["num_rois", 5],
                    "meaning": "(batch_index, x1, y1, x2, y2) in input-image pixels"})  # fmt: skip
    return entries


def to_jsonable(value: Any) -> Any:
    """Mappings, sequences, numpy scalars and paths as plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------------
# Backbone + head in one graph


def _align_versions(first: Any, second: Any) -> tuple[Any, Any]:
    """Same default-domain opset and IR version for both models (``onnx.compose`` requires it)."""
    from onnx import version_converter

    def default_opset(model: Any) -> int:
        return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    target = max(default_opset(first), default_opset(second))
    if default_opset(first) != target:
        first = version_converter.convert_version(first, target)
    if default_opset(second) != target:
        second = version_converter.convert_version(second, target)
    ir_version = max(first.ir_version, second.ir_version)
    first.ir_version = ir_version
    second.ir_version = ir_version
    return first, second


MERGED_IMAGE_INPUT = "image"


def _rename_input(model: Any, old: str, new: str) -> None:
    for value in model.graph.input:
        if value.name == old:
            value.name = new
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new


def _embed_preprocessing(model: Any, source: Any, preprocessing: Preprocessing) -> None:
    """Replace ``model``'s image input ``source`` by ``image`` (float 0..255) and compute ``source``
    from it in the graph: ``(image * scale - mean) / std`` per channel, cast to the input's type."""
    import onnx
    from onnx import helper, numpy_helper

    if any(n.name == MERGED_IMAGE_INPUT for n in model.graph.input):
        raise ValueError(f"the backbone already has an input named {MERGED_IMAGE_INPUT!r}")
    dims = [d.dim_param or d.dim_value for d in source.type.tensor_type.shape.dim]
    elem_type = source.type.tensor_type.elem_type
    model.graph.initializer.extend([
        numpy_helper.from_array(np.asarray(preprocessing.scale, np.float32), "edgeseg_prep_scale"),
        numpy_helper.from_array(np.asarray(preprocessing.mean, np.float32).reshape(1, 3, 1, 1), "edgeseg_prep_mean"),
        numpy_helper.from_array(np.asarray(preprocessing.std, np.float32).reshape(1, 3, 1, 1), "edgeseg_prep_std"),
    ])  # fmt: skip
    normalised = source.name if elem_type == onnx.TensorProto.FLOAT else "edgeseg_prep_normalised"
    nodes = [
        helper.make_node("Mul", [MERGED_IMAGE_INPUT, "edgeseg_prep_scale"], ["edgeseg_prep_scaled"]),
        helper.make_node("Sub", ["edgeseg_prep_scaled", "edgeseg_prep_mean"], ["edgeseg_prep_centred"]),
        helper.make_node("Div", ["edgeseg_prep_centred", "edgeseg_prep_std"], [normalised]),
    ]
    if normalised != source.name:
        nodes.append(helper.make_node("Cast", [normalised], [source.name], to=elem_type))
    for node in reversed(nodes):  # before every node that reads the old input
        model.graph.node.insert(0, node)
    inputs = [i for i in model.graph.input if i.name != source.name]
    del model.graph.input[:]
    model.graph.input.extend(
        [helper.make_tensor_value_info(MERGED_IMAGE_INPUT, onnx.TensorProto.FLOAT, dims), *inputs]
    )


def _check_mergeable(
    backbone: Any, head: Any, backbone_onnx: str | Path, head_onnx: str | Path, layers: Mapping[str, str]
) -> None:
    """The head's feature inputs are the layers given, which the backbone outputs; no name collides."""
    head_inputs = [i.name for i in head.graph.input]
    feature_inputs = [name for name in head_inputs if name.startswith("features_")]
    wanted = {f"features_{layer}" for layer in layers}
    if set(feature_inputs) != wanted:
        raise ValueError(
            f"{head_onnx}: head feature inputs {feature_inputs} != layers given {sorted(layers)}"
        )
    backbone_outputs = {o.name for o in backbone.graph.output}
    unknown = {n for n in layers.values() if n not in backbone_outputs}
    if unknown:
        raise ValueError(
            f"{backbone_onnx}: has no outputs {sorted(unknown)} (outputs: {sorted(backbone_outputs)})"
        )
    initializers = {i.name for i in backbone.graph.initializer}
    backbone_inputs = [i for i in backbone.graph.input if i.name not in initializers]
    if {i.name for i in backbone_inputs} & {"rois", "masks"}:
        raise ValueError(f"{backbone_onnx}: input names 'rois'/'masks' collide with the head's")


def _expose_image(backbone: Any, source: str, image_scale: float) -> None:
    """Add ``backbone/image_0_255`` (the backbone's input as float, times ``image_scale``) as an output."""
    # Expose the image as a backbone output, computed from the backbone's own input.
    backbone.graph.node.extend([
        helper.make_node("Cast", [source], ["backbone/image_float"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Constant", [], ["backbone/image_scale"],
                         value=helper.make_tensor("scale", onnx.TensorProto.FLOAT, [], [float(image_scale)])),
        helper.make_node("Mul", ["backbone/image_float", "backbone/image_scale"], ["backbone/image_0_255"]),
    ])  # fmt: skip
    backbone.graph.output.append(
        helper.make_tensor_value_info("backbone/image_0_255", onnx.TensorProto.FLOAT, None)
    )


def merge_backbone_and_head(
    backbone_onnx: str | Path,
    backbone_output_names_by_layer: Mapping[str, str],
    head_onnx: str | Path,
    out_path: str | Path,
    *,
    preprocessing: Preprocessing | None = None,
    image_scale: float | None = None,
) -> Path:
    """One ONNX graph for deployment: image + ``rois`` -> ``masks``.

    ``backbone_output_names_by_layer`` maps each head layer id to the backbone output feeding
    ``features_<layer_id>``.

    With ``preprocessing`` (the backbone's, as its sidecar records it), the
    merged graph takes ``image``: float32 [B, 3, S, S] RGB in 0..255, the letterboxed network input,
    and applies ``(image * scale - mean) / std`` itself before the backbone, so a caller needs no
    knowledge of the backbone; an RGB-enhanced head gets the same 0..255 ``image``.

    Without it, the merged graph keeps the backbone's own image input, fed as the backbone wants it;
    an RGB-enhanced head then gets ``float(input) * image_scale`` (e.g. 255 for a backbone that takes
    0..1 floats, 1 for one that takes uint8 or 0..255 floats), and ``image_scale`` is required.
    """
    backbone = onnx.load(str(backbone_onnx))
    head = onnx.load(str(head_onnx))
    head_inputs = [i.name for i in head.graph.input]
    _check_mergeable(backbone, head, backbone_onnx, head_onnx, backbone_output_names_by_layer)
    initializers = {i.name for i in backbone.graph.initializer}
    backbone_inputs = [i for i in backbone.graph.input if i.name not in initializers]
    backbone, head = _align_versions(backbone, head)
    # Prefix internal names so the two graphs cannot collide; graph inputs and outputs keep their names.
    backbone = compose.add_prefix(backbone, "backbone/", rename_inputs=False, rename_outputs=False)
    head = compose.add_prefix(head, "head/", rename_inputs=False, rename_outputs=False)

    needs_image = "image" in head_inputs
    if preprocessing is not None:
        if len(backbone_inputs) != 1:
            raise ValueError(
                f"{backbone_onnx}: embedding preprocessing needs exactly one image input, has {len(backbone_inputs)}"
            )
        _embed_preprocessing(backbone, backbone_inputs[0], preprocessing)
        backbone_inputs = [i for i in backbone.graph.input if i.name not in initializers]
        image_scale = 1.0  # the graph input is the 0..255 image itself
    if needs_image:
        if image_scale is None:
            raise ValueError("the head is RGB-enhanced (input 'image'): pass image_scale")
        if len(backbone_inputs) != 1:
            raise ValueError(
                f"{backbone_onnx}: needs exactly one image input to feed 'image', has {len(backbone_inputs)}"
            )
        _expose_image(backbone, backbone_inputs[0].name, image_scale)

    io_map = [(output, f"features_{layer}") for layer, output in backbone_output_names_by_layer.items()]
    if needs_image:
        # the merged graph may itself take an input named "image": the head's is renamed out of its way
        _rename_input(head, "image", "head/image")
        io_map.append(("backbone/image_0_255", "head/image"))
    merged = compose.merge_models(
        backbone,
        head,
        io_map=io_map,
        inputs=[i.name for i in backbone_inputs] + ["rois"],
        outputs=["masks"],
        producer_name="edgeseg",
        producer_version=edgeseg.__version__,
    )
    onnx.checker.check_model(merged)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, str(out_path))
    return out_path


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    sidecar_path: Path
    max_abs_diff: float
    latency_ms: dict[str, float]
    params_count: int
    gflops: float
    merged_path: Path | None = None


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    *,
    merge_backbone: bool = False,
    tolerance: float = 1e-3,
    latency_rois: Sequence[int] = (1, 16),
    latency_cache: MutableMapping[str, dict[str, float]] | None = None,
) -> ExportResult:
    """ONNX + sidecar for a checkpoint, parity-checked in ONNX Runtime, with latency and complexity.

    ``latency_cache``: latencies already measured for an architecture (the weights do not change
    them), keyed by the head's model config, layers, input size and ROI counts; a search passes one
    so that the seeds of a cell are timed once.

    With ``merge_backbone`` it also writes ``model_with_backbone.onnx``: one graph taking ``image``
    (float32 [B, 3, S, S], letterboxed RGB in 0..255; the backbone's preprocessing is inside the graph)
    and ``rois``, returning ``masks``, for deployment. Every head merges, RGB-enhanced ones included.
    """

    state = load_checkpoint(checkpoint)
    head, config, model_cfg = head_from_checkpoint(state)
    head.eval()
    ckpt = Path(checkpoint)
    out = Path(out_dir) if out_dir else (ckpt if ckpt.is_dir() else ckpt.parent) / "onnx"
    out.mkdir(parents=True, exist_ok=True)
    infos = infos_from_dict(state["layer_infos"])
    ordered = {k: infos[k] for k in head.layer_ids}
    input_size = config.data.input_size
    flops = flops_report(head, ordered, input_size)
    params = count_parameters(head)
    backbone = state.get("backbone", {})
    report = export_head(
        head, ordered, input_size, out / "model.onnx",
        config_dict=config.to_dict(), metrics=to_jsonable(state.get("metrics", {})),
        extra={
            "backbone": to_jsonable(backbone),
            "preprocessing": to_jsonable(backbone.get("preprocessing", {})),
            "epoch": int(state["epoch"]),
            "config_hash": state.get("config_hash", config.hash()),
            "params_count": params,
            "gflops_per_roi": flops["gflops_per_roi"],
            "gflops_per_image": flops["gflops_per_image"],
        },
        tolerance=tolerance,
    )  # fmt: skip
    key = _architecture_key(state, input_size, latency_rois)
    latency = (latency_cache or {}).get(key)
    if latency is None:
        latency = latency_report(
            head, ordered, input_size, onnx_path=report.onnx_path, num_rois=tuple(latency_rois)
        )
        if latency_cache is not None:
            latency_cache[key] = latency
    merged = None
    if merge_backbone:
        onnx_file = backbone.get("onnx_path")
        if not onnx_file or not Path(onnx_file).exists():
            raise FileNotFoundError(
                f"checkpoint {checkpoint}: backbone ONNX {onnx_file!r} is not on this machine"
            )
        names = {k: backbone["layers"][k]["output_name"] for k in head.layer_ids}

        recorded = backbone.get("preprocessing")
        prep = Preprocessing.from_dict(recorded) if recorded else Preprocessing()
        merged = merge_backbone_and_head(onnx_file, names, report.onnx_path, out / "model_with_backbone.onnx",
                                         preprocessing=prep)  # fmt: skip
    return ExportResult(
        report.onnx_path,
        report.sidecar_path,
        report.max_abs_diff,
        latency,
        params,
        flops["gflops_per_roi"],
        merged,
    )


def _architecture_key(state: Mapping[str, Any], input_size: int, rois: Sequence[int]) -> str:
    body = {"model": state.get("model_config"), "layers": state.get("layer_infos"), "input": input_size,
            "rois": list(rois)}  # fmt: skip
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def verify_onnx(onnx_path: Path, sidecar: Mapping[str, Any]) -> tuple[int, ...]:
    """Run the model in ONNX Runtime on inputs built from its sidecar; return the output shape."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    size = int(sidecar["input_size"])
    feeds: dict[str, Any] = {}
    for entry in session.get_inputs():
        if entry.name == "rois":
            feeds["rois"] = np.array([[0, 4, 6, size // 2, size - 8], [0, size // 4, 2, size - 3, size // 2]],
                                     dtype=np.float32)  # fmt: skip
        else:
            shape = [1 if not isinstance(d, int) else d for d in entry.shape]
            feeds[entry.name] = (
                rng.random(shape, dtype=np.float32) * (255 if entry.name == "image" else 1)
            ).astype(np.float32)
    (masks,) = session.run(["masks"], feeds)
    mask = int(sidecar["mask_size"])
    if tuple(masks.shape) != (2, 3, mask, mask) or not np.isfinite(masks).all():
        raise RuntimeError(
            f"{onnx_path}: ONNX Runtime gave masks {masks.shape}, expected (2, 3, {mask}, {mask})"
        )
    return tuple(masks.shape)
