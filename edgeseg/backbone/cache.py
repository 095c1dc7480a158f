"""The feature cache: a frozen backbone's features, computed once per data set and reused by every trial.

The backbone never trains, so running it again for each epoch and each trial of a search is pure waste
(the original work did exactly that). Features are stored as float16 ``.npy`` files, one per layer
[N,C,H,W], opened memory-mapped. The folder is keyed by a hash of everything that changes the
features: the ONNX bytes, the data set identity, the input size, the layer set (with tensor names and
strides) and the preprocessing; any change gives a new folder, so a stale cache is never read.
Builds happen in a temporary folder that is renamed into place with its ``manifest.json`` written last,
under an exclusive file lock, so trials starting together build one cache and all read it.

``CachedFeatures`` and ``OnTheFlyFeatures`` share ``features(indices, images)`` so the training loop can
use either (on-the-fly is for augmented images or caches that would not fit on disk).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edgeseg import paths
from edgeseg.backbone.extractor import LayerInfo
from edgeseg.files import file_lock

GIB = 1024**3
CACHE_FORMAT = 1
DTYPE = np.float16
MANIFEST = "manifest.json"


class ImageDataset(Protocol):
    """What the cache needs from a data set: a size, a stable identity and letterboxed uint8 RGB [3,S,S]."""

    def __len__(self) -> int: ...

    def identity(self) -> str: ...

    def load_image(self, index: int) -> Any: ...


class Extractor(Protocol):
    """What the cache needs from a backbone (``OnnxFeatureExtractor`` is one)."""

    layers: tuple[str, ...]

    @property
    def sha256(self) -> str: ...

    @property
    def input_size(self) -> int: ...

    @property
    def spec(self) -> Any: ...

    def layer_info(self) -> dict[str, LayerInfo]: ...

    def __call__(self, images_uint8: Any) -> dict[str, np.ndarray]: ...


class FeatureCacheTooLarge(RuntimeError):
    """The cache would exceed the configured size limit (``data.cache_max_gb``)."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def cache_key_parts(extractor: Extractor, dataset: ImageDataset) -> dict[str, Any]:
    """Everything the cached values depend on; its hash names the cache folder."""
    spec = extractor.spec
    return {
        "format": CACHE_FORMAT,
        "dtype": np.dtype(DTYPE).name,
        "backbone_sha256": extractor.sha256,
        "dataset": dataset.identity(),
        "input_size": int(extractor.input_size),
        "layers": [
            [lid, spec.layers[lid].output_name, spec.layers[lid].stride] for lid in sorted(extractor.layers)
        ],
        "preprocessing": spec.preprocessing.to_dict(),
    }


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def required_bytes(layer_info: dict[str, LayerInfo], num_images: int) -> int:
    per_image = sum(i.channels * i.height * i.width for i in layer_info.values())
    return num_images * per_image * np.dtype(DTYPE).itemsize


def _to_torch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}


class CachedFeatures:
    """A built cache folder: memory-mapped float16 layers, served as float32 torch tensors."""

    def __init__(self, path: Path, manifest: dict[str, Any], hit: bool) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.hit = hit
        self.key: str = manifest["key"]
        self.layers: tuple[str, ...] = tuple(manifest["layers"])
        self.build_seconds: float = float(manifest["build_seconds"])
        self.nbytes: int = int(manifest["nbytes"])
        self._arrays: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.manifest["num_images"])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = None  # memory maps are reopened in the receiving process
        return state

    def layer_info(self) -> dict[str, LayerInfo]:
        return {lid: LayerInfo(**self.manifest["layer_info"][lid]) for lid in self.layers}

    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {
                lid: np.load(self.path / self.manifest["files"][lid], mmap_mode="r") for lid in self.layers
            }
        return self._arrays

    def select(self, layers: Sequence[str]) -> CachedFeatures:
        """A view serving only ``layers`` (layer ids), e.g. one trial's layers from a search-wide cache."""
        missing = [layer_id for layer_id in layers if layer_id not in self.layers]
        if missing:
            raise ValueError(
                f"feature cache {self.path} has no layers {missing}; it holds {list(self.layers)}"
            )
        view = copy.copy(self)
        view.layers, view._arrays = tuple(layers), None
        return view

    def features(self, indices: Sequence[int], images: Any = None) -> dict[str, torch.Tensor]:
        """Features of data set images ``indices`` as float32 [B,C,H,W]; ``images`` is ignored."""
        index = np.asarray(indices, dtype=np.int64)
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(
                f"feature cache {self.path} holds {len(self)} images, asked for indices {index.tolist()}"
            )
        return _to_torch({lid: array[index] for lid, array in self.arrays().items()})


class OnTheFlyFeatures:
    """Runs the backbone on each batch of images (for augmented images, or when no cache is wanted)."""

    hit = False

    def __init__(self, extractor: Extractor) -> None:
        self.extractor = extractor
        self.layers = extractor.layers

    def layer_info(self) -> dict[str, LayerInfo]:
        return self.extractor.layer_info()

    def features(self, indices: Sequence[int], images: Any = None) -> dict[str, torch.Tensor]:
        """Features of ``images`` (uint8 [B,3,S,S]) as float32 [B,C,H,W], one batched backbone run."""
        if images is None:
            raise ValueError("OnTheFlyFeatures.features needs the images of the batch (uint8 [B,3,S,S])")
        if len(images) != len(indices):
            raise ValueError(f"got {len(images)} images for {len(indices)} indices")
        return _to_torch(self.extractor(images))


def _safe_name(layer_id: str, used: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", layer_id) or "layer"
    while name + ".npy" in used:
        name += "_"
    used.add(name + ".npy")
    return name + ".npy"


def _read_manifest(folder: Path, key: str) -> dict[str, Any] | None:
    """The manifest of a complete cache with this exact key, else None."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if manifest.get("key") != key:
        return None
    if not all((folder / f).is_file() for f in manifest.get("files", {}).values()):
        return None
    return manifest


def _image(dataset: ImageDataset, index: int, size: int) -> np.ndarray:
    image = dataset.load_image(index)
    array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype != np.uint8 or array.shape != (3, size, size):
        raise ValueError(
            f"data set {dataset.identity()!r} image {index}: expected uint8 [3,{size},{size}] (letterboxed RGB), "
            f"got {array.dtype} {list(array.shape)}"
        )
    return array


class FeatureCache:
    """Opens the cache for (backbone, data set, layers), building it first when it does not exist yet."""

    @staticmethod
    def default_root() -> Path:
        return paths.subdir("feature_cache")

    @classmethod
    def open_or_build(
        cls,
        extractor: Extractor,
        dataset: ImageDataset,
        root: str | Path | None = None,
        max_bytes: int = 8 * GIB,
        batch_size: int = 4,
        log: Callable[[str], Any] = print,
    ) -> CachedFeatures:
        root = Path(root) if root is not None else cls.default_root()
        root.mkdir(parents=True, exist_ok=True)
        parts = cache_key_parts(extractor, dataset)
        key = cache_key(parts)
        folder = root / key[:16]
        manifest = _read_manifest(folder, key)
        if manifest is not None:
            log(f"feature cache hit: {folder} ({human_bytes(manifest['nbytes'])})")
            return CachedFeatures(folder, manifest, hit=True)

        info = {lid: extractor.layer_info()[lid] for lid in extractor.layers}
        num_images = len(dataset)
        need = required_bytes(info, num_images)
        log(
            f"feature cache: {num_images} images x layers {', '.join(extractor.layers)} "
            f"will take {human_bytes(need)} at {folder}"
        )
        if need > max_bytes:
            raise FeatureCacheTooLarge(
                f"the feature cache for data set {parts['dataset']!r} needs {human_bytes(need)} ({need} bytes), "
                f"over the limit of {human_bytes(max_bytes)} (config key data.cache_max_gb = {max_bytes / GIB:g}); "
                "raise data.cache_max_gb, use fewer layers or images, or set data.feature_cache=false"
            )
        free = shutil.disk_usage(root).free
        if need > free:
            raise FeatureCacheTooLarge(
                f"the feature cache needs {human_bytes(need)}, {root} has {human_bytes(free)} free"
            )

        with file_lock(root / f"{key[:16]}.lock"):
            manifest = _read_manifest(folder, key)
            if manifest is not None:  # built by another process while we waited for the lock
                log(f"feature cache hit (built by another process): {folder}")
                return CachedFeatures(folder, manifest, hit=True)
            if folder.exists():
                log(f"feature cache: {folder} is incomplete or from another key; rebuilding")
                shutil.rmtree(folder)
            for stale in root.glob(f".{key[:16]}.tmp-*"):  # left by a crashed build; we hold the lock
                shutil.rmtree(stale, ignore_errors=True)
            tmp = root / f".{key[:16]}.tmp-{os.getpid()}"
            tmp.mkdir()
            manifest = cls._build(extractor, dataset, tmp, info, parts, key, batch_size)
            manifest["nbytes"] = need
            (tmp / MANIFEST).write_text(
                json.dumps(manifest, indent=2) + "\n"
            )  # last: marks the cache complete
            os.rename(tmp, folder)
        log(f"feature cache built in {manifest['build_seconds']:.1f} s: {folder}")
        return CachedFeatures(folder, manifest, hit=False)

    @staticmethod
    def _build(
        extractor: Extractor,
        dataset: ImageDataset,
        folder: Path,
        info: dict[str, LayerInfo],
        parts: dict[str, Any],
        key: str,
        batch_size: int,
    ) -> dict[str, Any]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        started = time.perf_counter()
        num_images = len(dataset)
        used: set[str] = set()
        files = {lid: _safe_name(lid, used) for lid in extractor.layers}
        arrays = {
            lid: np.lib.format.open_memmap(
                folder / files[lid], mode="w+", dtype=DTYPE, shape=(num_images, i.channels, i.height, i.width)
            )
            for lid, i in info.items()
        }
        size = extractor.input_size
        for start in range(0, num_images, batch_size):
            indices = range(start, min(start + batch_size, num_images))
            images = np.stack([_image(dataset, i, size) for i in indices])
            for lid, values in extractor(images).items():
                with np.errstate(over="ignore"):  # overflow is detected and reported just below
                    half = values.astype(DTYPE)
                if not np.isfinite(half).all() and np.isfinite(values).all():
                    raise ValueError(
                        f"layer {lid} has values beyond the float16 range (max |v| = {np.abs(values).max():.3g}); "
                        "set data.feature_cache=false to compute features on the fly"
                    )
                arrays[lid][start : start + len(indices)] = half
        for array in arrays.values():
            array.flush()
        del arrays
        return {
            "key": key,
            "key_parts": parts,
            "layers": list(extractor.layers),
            "files": files,
            "num_images": num_images,
            "dtype": np.dtype(DTYPE).name,
            "shapes": {lid: [num_images, i.channels, i.height, i.width] for lid, i in info.items()},
            "layer_info": {
                lid: {"channels": i.channels, "stride": i.stride, "height": i.height, "width": i.width}
                for lid, i in info.items()
            },
            "build_seconds": round(time.perf_counter() - started, 3),
        }


def feature_source(
    extractor: Extractor,
    dataset: ImageDataset,
    use_cache: bool = True,
    cache_max_gb: float = 8.0,
    root: str | Path | None = None,
    log: Callable[[str], Any] = print,
) -> CachedFeatures | OnTheFlyFeatures:
    """The features for a data set as a config asks for them (``data.feature_cache``, ``data.cache_max_gb``)."""
    if not use_cache:
        return OnTheFlyFeatures(extractor)
    return FeatureCache.open_or_build(
        extractor, dataset, root=root, max_bytes=int(cache_max_gb * GIB), log=log
    )
