"""The training loop of one trial: ``train_one_epoch``, ``evaluate`` and ``fit``.

Nothing here knows about Ray or MLflow: ``fit`` writes a checkpoint directory after every epoch and
hands it, with the epoch's metrics, to a reporter. A Ray trial's reporter forwards both to Ray; the
CLI's reporter prints a line. Training reads the frozen backbone's features from the feature cache
(or computes them on the fly when augmentation changes the images), so only the head runs per step.

Data-parallel training: when a ``torch.distributed`` process group is up (a Ray Train worker group
of several workers sets one up), ``fit`` wraps the head in ``DistributedDataParallel``, gives each
rank a disjoint shard of the training images every epoch (``train.batch_size`` is per worker, so the
global batch is ``batch_size x world size``), evaluates a disjoint shard of the validation images on
each rank and sums the metric counts over ranks, so every rank reports the same dataset-level
metrics. Checkpoints hold the unwrapped head and resume on any world size.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgeseg.config import ExperimentConfig
from edgeseg.data.dataset import collate_roi_samples
from edgeseg.losses import LossSpec, compute_loss
from edgeseg.metrics import MetricAccumulator


class Reporter(Protocol):
    def report(self, metrics: dict[str, float], checkpoint_dir: Path) -> None: ...


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message says where, and the last good checkpoint stays."""


@dataclass(frozen=True)
class World:
    """This process's place in a ``torch.distributed`` group (rank 0 of 1 without one)."""

    rank: int = 0
    size: int = 1

    @staticmethod
    def current() -> World:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return World(dist.get_rank(), dist.get_world_size())
        return World()

    def all_ranks(self, flag: bool) -> bool:
        """True only if ``flag`` is true on every rank (one collective; no-op for one process)."""
        if self.size == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over ranks (float64)."""
        if self.size == 1:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor]


class PrintReporter:
    """Prints one line per epoch (the CLI's reporter)."""

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.log = log

    def report(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        keys = (
            "train/loss",
            "val/loss",
            "val/miou",
            "val/iou_target",
            "val/iou_other",
            "lr",
            "epoch_seconds",
        )
        body = "  ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics)
        self.log(f"epoch {int(metrics['epoch'])}: {body}")


# ----------------------------------------------------------------------------------------------
# Small pieces.
# ----------------------------------------------------------------------------------------------


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def loss_spec(config: ExperimentConfig):
    """The one translation of ``LossConfig`` into the pure loss functions' ``LossSpec``."""

    c = config.loss
    hierarchical = config.model.decoder == "hierarchical"
    bg_fg, target_other, final, consistency = c.hierarchical_weights
    return LossSpec(
        ce_weight=c.ce_weight,
        dice_weight=c.dice_weight,
        focal=c.focal,
        focal_gamma=c.focal_gamma,
        distance_aware=c.distance_aware,
        boundary_width=c.boundary_width,
        boundary_weight=c.boundary_weight,
        instance_sep_distance=c.instance_sep_distance,
        instance_sep_weight=c.instance_sep_weight,
        adaptive=c.adaptive,
        adaptive_schedule=c.adaptive_schedule,
        adaptive_final=c.adaptive_final,
        cascade_stage_weights=tuple(c.cascade_stage_weights),
        hierarchical=hierarchical,
        bg_fg_weight=bg_fg,
        target_other_weight=target_other,
        final_weight=final,
        consistency_weight=consistency,
    )


def make_loader(
    dataset: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    workers: int,
    world: World = World(),
) -> DataLoader:
    """One epoch's loader; the order depends only on (seed, epoch), so a resume sees the same order.

    With several ranks, a training loader (``shuffle``) takes this rank's shard of one shuffled order
    (``DistributedSampler``: equal lengths, padded by repeating a few images, so every rank runs the
    same number of steps); an evaluation loader takes every ``world.size``-th image from ``rank``, so
    the shards are disjoint and cover the data set exactly once.
    """
    from torch.utils.data import DistributedSampler, Subset

    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    common: dict[str, Any] = {
        "batch_size": batch_size, "num_workers": workers, "collate_fn": collate_roi_samples, "drop_last": False,
    }  # fmt: skip
    if world.size > 1 and shuffle:
        sampler: DistributedSampler[Any] = DistributedSampler(
            dataset,
            num_replicas=world.size,
            rank=world.rank,
            shuffle=True,
            seed=seed * 100_003,
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        return DataLoader(dataset, sampler=sampler, **common)
    if world.size > 1:
        dataset = Subset(dataset, range(world.rank, len(dataset), world.size))
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)  # same order after a resume
    return DataLoader(dataset, shuffle=shuffle, generator=generator, **common)


def head_inputs(head: Any, batch: Any, features: Any, device: torch.device):
    head = getattr(head, "module", head)  # DistributedDataParallel keeps the head as .module
    feats = features.features(batch.indices.tolist(), batch.images)
    inputs = [feats[layer].to(device, non_blocking=True) for layer in head.layer_ids]
    image = batch.images.to(device).float() if head.needs_image else None
    return inputs, batch.rois.to(device), image


def lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up then cosine decay to ``min_ratio`` of the base learning rate, per step."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def autocast_for(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


# ----------------------------------------------------------------------------------------------
# One epoch of training, one pass of evaluation.
# ----------------------------------------------------------------------------------------------


def train_one_epoch(
    head: torch.nn.Module,
    loader: DataLoader,
    features: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    spec: Any,
    class_weights: torch.Tensor | None,
    device: torch.device,
    *,
    epoch: int,
    epochs: int,
    grad_clip: float,
    amp: bool,
) -> dict[str, float]:

    world = World.current()
    head.train()
    totals: dict[str, float] = {}
    steps = 0
    for step, batch in enumerate(loader):
        # Under DDP every rank must take the same steps: a batch without ROIs on any rank skips the step.
        if not world.all_ranks(batch.rois.shape[0] > 0):
            continue
        inputs, rois, image = head_inputs(head, batch, features, device)
        targets = batch.targets.to(device)
        progress = ((epoch - 1) + step / max(1, len(loader))) / epochs
        with autocast_for(device, amp):
            outputs = head(inputs, rois, image)
        loss, parts = compute_loss(outputs, targets, spec, class_weights, progress)
        if not world.all_ranks(bool(torch.isfinite(loss))):
            raise NonFiniteLossError(
                f"non-finite loss {loss.item()} at epoch {epoch}, step {step} on rank {world.rank} of "
                f"{world.size} (components {parts}); "
                "lower train.lr or enable train.grad_clip; the last checkpoint is kept"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(head.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + float(value)
        steps += 1
    keys = sorted(totals)
    summed = world.sum([totals[k] for k in keys] + [float(steps)])  # the mean over all ranks' steps
    return {f"train/{k}": v / max(1.0, summed[-1]) for k, v in zip(keys, summed, strict=False)}


@torch.no_grad()
def evaluate(
    head: torch.nn.Module,
    loader: DataLoader,
    features: Any,
    spec: Any,
    class_weights: torch.Tensor | None,
    device: torch.device,
    *,
    on_batch: Callable[[Any, dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, float]:
    """Metrics over ``loader``; under ``torch.distributed`` each rank passes its own shard and the
    counts are summed over ranks, so every rank returns the metrics of the whole data set."""

    head.eval()
    metrics = MetricAccumulator()
    loss_total, batches = 0.0, 0
    for batch in loader:
        if batch.rois.shape[0] == 0:
            continue
        inputs, rois, image = head_inputs(head, batch, features, device)
        targets = batch.targets.to(device)
        outputs = head(inputs, rois, image)
        loss, _ = compute_loss(outputs, targets, spec, class_weights, 1.0)
        loss_total += float(loss)
        batches += 1
        metrics.update(outputs["logits"].float().cpu(), targets.cpu())
        if on_batch is not None:
            on_batch(batch, outputs)
    world = World.current()
    metrics.merge_ranks(world.sum)
    loss_total, batches_total = world.sum([loss_total, float(batches)])
    result = {f"val/{k}": float(v) for k, v in metrics.compute().items()}
    result["val/loss"] = loss_total / max(1.0, batches_total)
    return result


# ----------------------------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------
