"""Frozen-backbone feature extraction with ONNX Runtime, by tensor name.

The original work ran a YOLOv9 "featext" ONNX whose internal Concat tensors were exposed as extra graph
outputs. Here any ONNX works: a requested tensor that is internal is promoted to a graph output, and the
graph is pruned to what the requested layers need (ONNX Runtime itself would run the whole graph).
Channel counts and spatial sizes are read from the model (shape inference, else one dummy run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeseg import paths
from edgeseg.backbone.layer_map import BackboneSpec, resolve_layers
from edgeseg.files import sha256_file

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


@dataclass(frozen=True)
class LayerInfo:
    """A feature layer as the model produces it for one image: [channels, height, width] at ``stride``."""

    channels: int
    stride: int
    height: int
    width: int


def onnx_providers(names: Sequence[str], trt_cache_dir: str | Path | None = None) -> list[Any]:
    """Provider names ("cpu", "cuda", "tensorrt") -> ONNX Runtime providers with their options and fallbacks.

    "tensorrt" means TensorRT (FP16, engine cache) then CUDA then CPU, as in the original work; fallbacks
    that this ONNX Runtime build lacks are left out, a *requested* provider it lacks is an error.
    """
    import onnxruntime as ort

    if not names:
        raise ValueError("no execution provider requested; use one of " + ", ".join(PROVIDER_NAMES))
    available = ort.get_available_providers()
    chain: list[str] = []
    for name in names:
        if name not in PROVIDER_NAMES:
            raise ValueError(f"unknown execution provider {name!r}; use one of {', '.join(PROVIDER_NAMES)}")
        ort_name = PROVIDER_NAMES[name]
        if ort_name not in available:
            raise RuntimeError(
                f"execution provider {name!r} ({ort_name}) is not available in this onnxruntime build; "
                f"available: {', '.join(available)}. For GPUs install onnxruntime-gpu (pip install edgeseg[gpu]) "
                "instead of onnxruntime."
            )
        fallbacks = {
            "tensorrt": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            "cuda": ["CPUExecutionProvider"],
        }
        for candidate in [ort_name, *fallbacks.get(name, [])]:
            if candidate in available and candidate not in chain:
                chain.append(candidate)
    providers: list[Any] = []
    for ort_name in chain:
        if ort_name == "TensorrtExecutionProvider":
            cache = Path(trt_cache_dir) if trt_cache_dir is not None else paths.subdir("trt_engines")
            cache.mkdir(parents=True, exist_ok=True)
            options = {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_fp16_enable": True,
            }
            providers.append((ort_name, options))
        else:
            providers.append(ort_name)
    return providers


def _has_subgraphs(graph: onnx.GraphProto) -> bool:
    return any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in graph.node
        for attr in node.attribute
    )


def feature_model(path: Path, output_names: Sequence[str]) -> onnx.ModelProto:
    """The ONNX at ``path`` with exactly ``output_names`` as graph outputs and the graph pruned to them."""
    model = onnx.load(str(path))
    graph = model.graph
    nodes = list(graph.node)
    producers = {out: index for index, node in enumerate(nodes) for out in node.output if out}
    inputs = {i.name for i in graph.input}
    missing = [name for name in output_names if name not in producers and name not in inputs]
    if missing:
        outputs = [o.name for o in graph.output]
        raise ValueError(
            f"tensors {missing} are not produced by any node of {path}; its graph outputs are {outputs[:20]}"
            f"{' ...' if len(outputs) > 20 else ''} (check the layer map's output_name entries)"
        )
    if not _has_subgraphs(graph):  # outer-scope references in If/Loop bodies would defeat the walk below
        needed: set[int] = set()
        stack = list(output_names)
        while stack:
            index = producers.get(stack.pop(), -1)
            if index < 0 or index in needed:
                continue
            needed.add(index)
            stack.extend(i for i in nodes[index].input if i)
        kept = [node for index, node in enumerate(nodes) if index in needed]
        used = {i for node in kept for i in node.input}
        initializers = [t for t in graph.initializer if t.name in used]
        dropped = {t.name for t in graph.initializer} - {t.name for t in initializers}
        # Old IR versions also list initializers as graph inputs; a dropped one would become a required input.
        graph_inputs = [i for i in graph.input if i.name not in dropped]
        del graph.node[:]
        graph.node.extend(kept)
        del graph.initializer[:]
        graph.initializer.extend(initializers)
        del graph.input[:]
        graph.input.extend(graph_inputs)
    known = {vi.name: vi for vi in [*graph.value_info, *graph.output]}
    new_outputs = [known.get(name) or onnx.helper.make_empty_tensor_value_info(name) for name in output_names]
    del graph.output[:]
    graph.output.extend(new_outputs)
    return model


def _static_dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


class OnnxFeatureExtractor:
    """Runs a frozen ONNX backbone on uint8 RGB images [B,3,S,S] and returns {layer_id: float32 [B,C,H,W]}."""

    def __init__(
        self,
        spec: BackboneSpec,
        layers: Sequence[str] | None = None,
        providers: Sequence[str] = ("cpu",),
        intra_op_threads: int = 0,
        trt_cache_dir: str | Path | None = None,
    ) -> None:
        import onnxruntime as ort

        self.spec = spec
        self.layers = resolve_layers(list(spec.layers) if layers is None else layers, spec)
        self.providers = tuple(providers)
        self.intra_op_threads = intra_op_threads
        self.trt_cache_dir = trt_cache_dir
        if not spec.onnx_path.is_file():
            raise FileNotFoundError(f"backbone ONNX not found: {spec.onnx_path}")
        self._output_names = [spec.layers[layer_id].output_name for layer_id in self.layers]
        model = feature_model(spec.onnx_path, self._output_names)
        names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        if spec.input_name not in names:
            raise ValueError(f"{spec.onnx_path} has no input {spec.input_name!r}; its inputs are {names}")
        input_dims = _static_dims(next(i for i in model.graph.input if i.name == spec.input_name))
        if len(input_dims) != 4 or input_dims[1] not in (3, None):
            raise ValueError(
                f"{spec.onnx_path}: input {spec.input_name!r} must be [B,3,H,W], got {input_dims}"
            )
        for dim in input_dims[2:]:
            if dim is not None and dim != spec.input_size:
                raise ValueError(
                    f"{spec.onnx_path}: input {spec.input_name!r} is fixed to {input_dims[2:]}, "
                    f"but the backbone spec says input_size={spec.input_size}"
                )
        self._batch_one = input_dims[0] == 1  # a fixed batch of 1: run image by image
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            model.SerializeToString(), options, providers=onnx_providers(self.providers, trt_cache_dir)
        )
        self._layer_info = self._read_layer_info(model)
        self._sha256: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # ONNX Runtime sessions cannot be pickled; a copy (Ray worker, DataLoader worker) rebuilds its own.
        return (
            type(self),
            (self.spec, self.layers, self.providers, self.intra_op_threads, self.trt_cache_dir),
        )

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def active_providers(self) -> list[str]:
        return list(self._session.get_providers())

    @property
    def sha256(self) -> str:
        """SHA-256 of the ONNX file bytes (the backbone part of the feature cache key)."""
        if self._sha256 is None:
            self._sha256 = sha256_file(self.spec.onnx_path)
        return self._sha256

    def layer_info(self) -> dict[str, LayerInfo]:
        return dict(self._layer_info)

    def _read_layer_info(self, model: onnx.ModelProto) -> dict[str, LayerInfo]:
        shapes: dict[str, list[int | None]] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            known = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output]}
            shapes = {name: _static_dims(known[name]) for name in self._output_names if name in known}
        except Exception:  # noqa: BLE001 - shape inference is an optimisation; the dummy run below is the truth
            shapes = {}
        complete = all(len(shapes.get(n, [])) == 4 and None not in shapes[n][1:] for n in self._output_names)
        if not complete:
            size = self.spec.input_size
            outputs = self(np.zeros((1, 3, size, size), dtype=np.uint8), _check=False)
            shapes = {self.spec.layers[k].output_name: list(v.shape) for k, v in outputs.items()}
        info: dict[str, LayerInfo] = {}
        for layer_id, name in zip(self.layers, self._output_names, strict=True):
            dims = shapes[name]
            if len(dims) != 4:
                raise ValueError(f"{self.spec.onnx_path}: layer {layer_id} ({name}) is not [B,C,H,W]: {dims}")
            _, channels, height, width = (int(d) if d is not None else 0 for d in dims)
            stride = self.spec.layers[layer_id].stride
            expected = math.ceil(self.spec.input_size / stride)
            if (height, width) != (expected, expected):
                raise ValueError(
                    f"{self.spec.onnx_path}: layer {layer_id} ({name}) is {height}x{width} for input "
                    f"{self.spec.input_size}, but its declared stride {stride} implies {expected}x{expected}"
                )
            info[layer_id] = LayerInfo(channels=channels, stride=stride, height=height, width=width)
        return info

    def __call__(self, images_uint8: Any, _check: bool = True) -> dict[str, np.ndarray]:
        """uint8 RGB [B,3,S,S] (numpy or torch) -> {layer_id: float32 [B,C,H,W]}, one batched run."""
        images = images_uint8.numpy() if hasattr(images_uint8, "numpy") else np.asarray(images_uint8)
        size = self.spec.input_size
        if _check and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, size, size)):
            raise ValueError(
                f"backbone {self.spec.onnx_path.name} expects uint8 images [B,3,{size},{size}], "
                f"got {images.dtype} {list(images.shape)}"
            )
        batch = self.spec.preprocessing.apply_numpy(images)
        if self._batch_one and len(batch) != 1:
            parts = [
                self._session.run(self._output_names, {self.spec.input_name: batch[i : i + 1]})
                for i in range(len(batch))
            ]
            outputs = [np.concatenate(p) for p in zip(*parts, strict=True)]
        else:
            outputs = self._session.run(self._output_names, {self.spec.input_name: batch})
        return {
            layer_id: np.asarray(out, dtype=np.float32)
            for layer_id, out in zip(self.layers, outputs, strict=True)
        }
