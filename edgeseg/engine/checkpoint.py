"""Checkpoints of one trial: everything to resume exactly (model, optimizer, scheduler, scaler, RNG) and
to rebuild the head without the config file (model config, layer shapes, backbone facts)."""

from __future__ import annotations

import random
import shutil
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeseg.config import (
    ExperimentConfig,
    ModelConfig,
    config_from_dict,
)
from edgeseg.models import build_head

CHECKPOINT_FILE = "checkpoint.pt"


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
    """Load a checkpoint file or directory; errors name the path."""
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"checkpoint {file} does not exist")
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for a damaged file
        raise ValueError(f"checkpoint {file} cannot be read: {exc}") from exc
    for key in ("model", "config", "model_config", "layer_infos", "epoch"):
        if key not in state:
            raise ValueError(f"checkpoint {file} has no {key!r}; it was not written by edgeseg")
    return state


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
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def prune_checkpoints(checkpoints: Path, keep: int) -> None:
    epochs = sorted(p for p in checkpoints.glob("epoch_*") if p.is_dir())
    for old in epochs[: max(0, len(epochs) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
