"""Checkpoints of one trial: everything to resume exactly (model, optimizer, scheduler, scaler, RNG) and
to rebuild the head without the config file (model config, layer shapes, backbone facts).

A checkpoint holds tensors and plain Python data only, and is read with ``torch.load(weights_only=True)``:
checkpoints come from shared storage, and a full pickle could run any code on the machine that loads it.
"""

from __future__ import annotations

import pickle
import random
import re
import shutil
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from edgeseg.config import (
    ExperimentConfig,
    ModelConfig,
    config_from_dict,
)
from edgeseg.models import build_head

CHECKPOINT_FILE = "checkpoint.pt"


def _legacy_numpy_globals() -> list[Any]:
    """What a checkpoint written before the RNG state was stored as plain lists references: the
    numpy RNG key, a uint32 array. Array data only; nothing that calls code."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def layer_infos_to_dict(infos: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    return {
        k: {f: int(getattr(v, f)) for f in ("channels", "stride", "height", "width") if hasattr(v, f)}
        for k, v in infos.items()
    }


def infos_from_dict(data: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    return {k: types.SimpleNamespace(**v) for k, v in data.items()}


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(directory / CHECKPOINT_FILE)
    return directory


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file or directory (tensors and plain data only); errors name the path.

    A file that references any other Python object (a class, a function) is refused unread: with a full
    unpickler, such an object can run arbitrary code.
    """
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"checkpoint {file} does not exist")
    allowed = _legacy_numpy_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        foreign = _foreign_globals(file, allowed)
        if foreign:
            raise ValueError(
                f"checkpoint {file} was refused: it references {', '.join(foreign)}, which loading would call; "
                "edgeseg checkpoints hold tensors and plain data only (torch.load weights_only=True). "
                "Do not load this file with weights_only=False unless you trust whoever wrote it."
            ) from None
        # torch's text advises weights_only=False, the one thing not to do with a file one cannot read
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", str(exc), re.S)
        raise ValueError(
            f"checkpoint {file} cannot be read (damaged, or not a torch checkpoint): "
            f"{reason[1] if reason else exc}"
        ) from exc
    except Exception as exc:  # torch raises several types for a damaged file
        raise ValueError(f"checkpoint {file} cannot be read: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(
            f"checkpoint {file} holds a {type(state).__name__}, not a dict; it was not written by edgeseg"
        )
    for key in ("model", "config", "model_config", "layer_infos", "epoch"):
        if key not in state:
            raise ValueError(f"checkpoint {file} has no {key!r}; it was not written by edgeseg")
    return state


def _foreign_globals(file: Path, allowed: list[Any]) -> list[str]:
    """The globals (``module.name``) the pickle in ``file`` references beyond tensors, plain data and
    ``allowed``, found without executing it; [] when the file cannot even be scanned (damaged)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(file)
    except Exception:
        return []
    known = {f"{g.__module__}.{g.__qualname__}" for g in allowed}
    return [name for name in names if name not in known]


def head_from_checkpoint(state: Mapping[str, Any]) -> tuple[Any, ExperimentConfig, ModelConfig]:
    config = config_from_dict(state["config"])
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in state["model_config"].items()
    }
    model_cfg = ModelConfig(**values)
    head = build_head(model_cfg, infos_from_dict(state["layer_infos"]))
    head.load_state_dict(state["model"])
    return head, config, model_cfg


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states, as tuples, lists and a tensor (what weights_only loads)."""
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    name, key, position, has_gauss, cached_gaussian = legacy
    numpy_state = (str(name), key.tolist(), int(position), int(has_gauss), float(cached_gaussian))
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state` (older checkpoints hold the numpy key as an array; both work)."""
    name, key, position, has_gauss, cached_gaussian = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])


def prune_checkpoints(checkpoints: Path, keep: int) -> None:
    epochs = sorted(p for p in checkpoints.glob("epoch_*") if p.is_dir())
    for old in epochs[: max(0, len(epochs) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
