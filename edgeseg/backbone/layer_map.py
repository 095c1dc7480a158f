"""Layer maps: which ONNX tensors are feature layers, at which stride, and which *role* each one plays.

Presets name layers by role (``fine`` stride 4, ``mid`` stride 8 shallow, ``deep`` the deepest usable layer),
never by one backbone's tensor names, so the same experiment runs on the YOLOv9 featext ONNX of the original
work and on the default EfficientNet-Lite0 export. A ``LayerMap`` is the backbone-independent part (layers,
roles, preprocessing); a ``BackboneSpec`` binds it to an ONNX file and is saved as a JSON sidecar
``<stem>.json`` next to the ONNX. Channel counts are never stored here: they are read from the model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SIDECAR_FORMAT = "edgeseg.backbone/1"


@dataclass(frozen=True)
class LayerSpec:
    """One feature layer: the ONNX tensor that holds it and its stride in input pixels."""

    output_name: str
    stride: int

    def __post_init__(self) -> None:
        if not self.output_name:
            raise ValueError("LayerSpec.output_name must be a non-empty tensor name")
        if not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(
                f"LayerSpec {self.output_name!r}: stride must be a positive int, got {self.stride!r}"
            )


def _triple(value: float | Sequence[float], key: str) -> tuple[float, float, float]:
    if isinstance(value, int | float):
        return (float(value),) * 3  # type: ignore[return-value]
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"preprocessing {key} must be a number or 3 numbers (R, G, B), got {value!r}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocessing:
    """``((x_uint8 * scale) - mean) / std`` per RGB channel, on NCHW RGB images."""

    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        object.__setattr__(self, "std", _triple(self.std, "std"))
        if any(s == 0 for s in self.std):
            raise ValueError(f"preprocessing std must be non-zero, got {self.std}")

    def apply_numpy(self, images_uint8: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        return ((images_uint8.astype(np.float32) * np.float32(self.scale) - mean) / std).astype(np.float32)

    def apply_torch(self, images_uint8: Any) -> Any:
        import torch

        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (images_uint8.float() * self.scale - mean) / std

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std), "channel_order": "RGB"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        order = data.get("channel_order", "RGB")
        if order != "RGB":
            raise ValueError(f"preprocessing channel_order must be 'RGB', got {order!r}")
        return cls(scale=float(data.get("scale", 1.0)), mean=data.get("mean", 0.0), std=data.get("std", 1.0))


def _check_roles(layers: Mapping[str, LayerSpec], roles: Mapping[str, str]) -> None:
    if not layers:
        raise ValueError("a layer map needs at least one layer")
    for role, layer_id in roles.items():
        if layer_id not in layers:
            raise ValueError(
                f"role {role!r} points to unknown layer id {layer_id!r}; layer ids: {sorted(layers)}"
            )
        if role in layers and role != layer_id:
            raise ValueError(f"role {role!r} is also a layer id but points to {layer_id!r}; rename the role")


@dataclass(frozen=True)
class LayerMap:
    """The backbone-independent description: layer ids -> tensors, roles -> layer ids, preprocessing."""

    layers: dict[str, LayerSpec]
    roles: dict[str, str]
    preprocessing: Preprocessing
    input_size: int | None = None  # None: the ONNX input decides (or the caller's input size)

    def __post_init__(self) -> None:
        _check_roles(self.layers, self.roles)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "layers": {k: {"output_name": v.output_name, "stride": v.stride} for k, v in self.layers.items()},
            "roles": dict(self.roles),
            "preprocessing": self.preprocessing.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "layer map") -> LayerMap:
        try:
            layers = {str(k): _layer_from_json(v) for k, v in dict(data["layers"]).items()}
            roles = {str(k): str(v) for k, v in dict(data.get("roles", {})).items()}
            preprocessing = Preprocessing.from_dict(data.get("preprocessing", {}))
            size = data.get("input_size")
            return cls(layers, roles, preprocessing, None if size is None else int(size))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"invalid layer map in {source}: {error!r}") from error

    def bind(self, onnx_path: str | Path, input_name: str, input_size: int, **metadata: Any) -> BackboneSpec:
        return BackboneSpec(
            onnx_path=Path(onnx_path),
            input_name=input_name,
            input_size=input_size,
            layers=dict(self.layers),
            roles=dict(self.roles),
            preprocessing=self.preprocessing,
            metadata=dict(metadata),
        )


def _layer_from_json(value: Any) -> LayerSpec:
    if isinstance(value, Mapping):
        return LayerSpec(output_name=str(value["output_name"]), stride=int(value["stride"]))
    name, stride = value  # ["tensor_name", stride]
    return LayerSpec(output_name=str(name), stride=int(stride))


@dataclass(frozen=True)
class BackboneSpec:
    """A layer map bound to one ONNX file (its input name and fixed input size)."""

    onnx_path: Path
    input_name: str
    input_size: int
    layers: dict[str, LayerSpec]
    roles: dict[str, str]
    preprocessing: Preprocessing
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "onnx_path", Path(self.onnx_path))
        if self.input_size < 1:
            raise ValueError(f"backbone {self.onnx_path}: input_size must be positive, got {self.input_size}")
        _check_roles(self.layers, self.roles)

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path(self.onnx_path)

    @property
    def layer_map(self) -> LayerMap:
        return LayerMap(dict(self.layers), dict(self.roles), self.preprocessing, self.input_size)

    def replace(self, **changes: Any) -> BackboneSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        onnx = self.onnx_path
        if relative_to is not None and onnx.parent.resolve() == relative_to.resolve():
            onnx = Path(onnx.name)  # the pair can be moved together
        return {
            "format": SIDECAR_FORMAT,
            "onnx": str(onnx),
            "input_name": self.input_name,
            **self.layer_map.to_dict(),
            "metadata": self.metadata,
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write the sidecar JSON (default ``<stem>.json`` next to the ONNX) atomically."""
        path = Path(path) if path is not None else self.sidecar_path
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(relative_to=path.parent), indent=2, sort_keys=False) + "\n"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> BackboneSpec:
        """Read a sidecar JSON; a relative ``onnx`` entry is resolved next to the JSON file."""
        path = Path(path)
        data = read_json(path)
        if "onnx" not in data or "input_name" not in data:
            raise ValueError(f"backbone sidecar {path} needs the keys 'onnx' and 'input_name'")
        layer_map = LayerMap.from_dict(data, source=str(path))
        if layer_map.input_size is None:
            raise ValueError(f"backbone sidecar {path} needs the key 'input_size'")
        onnx_path = Path(data["onnx"])
        if not onnx_path.is_absolute():
            onnx_path = path.parent / onnx_path
        return layer_map.bind(onnx_path, str(data["input_name"]), layer_map.input_size,
                              **dict(data.get("metadata", {})))  # fmt: skip


def sidecar_path(onnx_path: str | Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"layer map / sidecar file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def load_layer_map(path: str | Path) -> LayerMap:
    """A layer map JSON file (``layers``, ``roles``, ``preprocessing``; a backbone sidecar also works)."""
    path = Path(path)
    return LayerMap.from_dict(read_json(path), source=str(path))


def resolve_layers(names: Sequence[str], spec: LayerMap | BackboneSpec) -> tuple[str, ...]:
    """Roles (``fine``, ``mid``, ``deep``, ...) or layer ids -> layer ids, in the given order."""
    resolved: list[str] = []
    for name in names:
        layer_id = spec.roles.get(name, name)
        if layer_id not in spec.layers:
            where = f" of {spec.onnx_path}" if isinstance(spec, BackboneSpec) else ""
            roles = ", ".join(f"{r}->{lid}" for r, lid in spec.roles.items()) or "none"
            raise ValueError(
                f"unknown layer or role {name!r} for the backbone{where}; roles: {roles}; "
                f"layer ids: {', '.join(spec.layers)}"
            )
        if layer_id in resolved:
            raise ValueError(f"layer {name!r} resolves to {layer_id!r}, which is already in {list(names)}")
        resolved.append(layer_id)
    return tuple(resolved)


# The original work's YOLOv9 "wholebody25" featext ONNX: internal Concat outputs exposed as graph outputs,
# float RGB in [0, 1]. Roles as in the original experiments (layer_3, layer_22, layer_34).
YOLOV9_FEATEXT = LayerMap(
    layers={
        "layer_3": LayerSpec("segmentation_model_3_Concat_output_0", 4),
        "layer_19": LayerSpec("segmentation_model_19_Concat_output_0", 4),
        "layer_5": LayerSpec("segmentation_model_5_Concat_output_0", 8),
        "layer_22": LayerSpec("segmentation_model_22_Concat_output_0", 8),
        "layer_34": LayerSpec("segmentation_model_34_Concat_output_0", 8),
    },
    roles={"fine": "layer_3", "mid": "layer_22", "deep": "layer_34"},
    preprocessing=Preprocessing(scale=1.0 / 255.0),
    input_size=640,
)

# The default EfficientNet-Lite0 export (``efficientnet_lite0.py``): tensors are named by their layer id.
# Stage outputs p2..p5 and the 6x wider MBConv expansion outputs; see efficientnet_lite0.ROLES for the roles.
EFFICIENTNET_LITE0 = LayerMap(
    layers={
        name: LayerSpec(name, stride)
        for name, stride in (
            ("p2", 4),
            ("p2_expand", 4),
            ("p3", 8),
            ("p3_expand", 8),
            ("p4", 16),
            ("p4_expand", 16),
            ("p5", 32),
            ("head", 32),
        )  # fmt: skip
    },
    roles={"fine": "p2_expand", "mid": "p3_expand", "deep": "p4_expand", "coarse": "head"},
    preprocessing=Preprocessing(scale=1.0, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)),
)

LAYER_MAPS: dict[str, LayerMap] = {"yolov9": YOLOV9_FEATEXT, "efficientnet_lite0": EFFICIENTNET_LITE0}
