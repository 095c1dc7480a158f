"""``fit``: train one configuration, checkpoint and report after every epoch, resume exactly.

Nothing here knows about Ray or MLflow: a Ray trial's reporter forwards each epoch to Ray; the CLI's
reporter prints a line. ``train`` is the library call behind ``edgeseg train``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

import edgeseg
from edgeseg import paths
from edgeseg.complexity import count_parameters, flops_report
from edgeseg.config import ExperimentConfig
from edgeseg.engine.checkpoint import (
    layer_infos_to_dict,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from edgeseg.engine.loop import (
    PrintReporter,
    Reporter,
    World,
    evaluate,
    loss_spec,
    lr_lambda,
    make_loader,
    seed_everything,
    select_device,
    train_one_epoch,
)
from edgeseg.engine.prepare import Prepared, prepare
from edgeseg.models import build_head


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_metrics: dict[str, float]
    history: list[dict[str, float]]


@dataclass
class _Training:
    """What the epoch loop works with: the head (and its DDP wrapper), optimiser, schedule, loss."""

    head: torch.nn.Module
    model: torch.nn.Module  # the head, or DistributedDataParallel around it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    class_weights: torch.Tensor | None
    loss: Any  # the pure loss functions' LossSpec, translated once from config.loss
    static_metrics: dict[str, float]  # params_count, gflops per ROI and per image
    start_epoch: int = 1
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=lambda: {"val/miou": -1.0})


def fit(
    config: ExperimentConfig,
    reporter: Reporter | None = None,
    *,
    run_dir: str | Path,
    resume_from: str | Path | None = None,
    prepared: Prepared | None = None,
    keep_checkpoints: int = 2,
    log: Callable[[str], None] = print,
    device: torch.device | None = None,
) -> FitResult:
    """Train one configuration; checkpoint and report after every epoch; resume exactly.

    ``device`` overrides ``train.device`` (a Ray Train worker passes the GPU Ray gave it). Inside a
    ``torch.distributed`` group the training is data-parallel (see ``engine/loop.py``); exact
    resume is then per epoch: the data order is the same, but not every rank's random state.
    """
    checkpoints = Path(run_dir) / "checkpoints"
    seed_everything(config.train.seed)
    prepared = prepared or prepare(config, log=log)
    device = device or select_device(config.train.device)
    world = World.current()
    training = _start(config, prepared, device, world)
    if resume_from is not None:
        _restore(training, config, resume_from)
        log(f"resuming from {resume_from} at epoch {training.start_epoch}")
    if world.size > 1:  # after loading a checkpoint: DDP broadcasts rank 0's weights to all ranks
        training.model = DistributedDataParallel(
            training.head, device_ids=None if device.index is None else [device.index]
        )
        log(f"data-parallel training: rank {world.rank} of {world.size}, "
            f"{config.train.batch_size} images per rank and step")  # fmt: skip
    best_dir = last_dir = checkpoints / "best"
    for epoch in range(training.start_epoch, config.train.epochs + 1):
        metrics = _run_epoch(training, config, prepared, device, world, epoch)
        improved = metrics.get("val/miou", -1.0) > training.best.get("val/miou", -1.0)
        if improved:
            training.best = dict(metrics)
        last_dir = save_checkpoint(
            checkpoints / f"epoch_{epoch:04d}", _checkpoint_state(training, config, prepared, metrics, epoch)
        )
        if improved:
            _replace_dir(last_dir, best_dir)
        prune_checkpoints(checkpoints, keep_checkpoints)
        if reporter is not None:
            reporter.report(dict(metrics), last_dir)
    return FitResult(Path(run_dir), best_dir, last_dir, training.best, training.history)


@functools.lru_cache(maxsize=1)
def _model_code_digest() -> str:
    """The heads' and the counter's source: a changed model invalidates the FLOPs counted before."""
    root = Path(edgeseg.__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*root.glob("models/*.py"), root / "complexity.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cached_flops_report(head: Any, model: Any, layer_infos: Any, input_size: int) -> dict[str, float]:
    """The head's counted FLOPs (``flops_report``), kept in ``$EDGESEG_HOME/complexity`` by architecture.

    Counting runs ``FlopCounterMode``, whose first use in a process imports ``torch._dynamo`` (about
    1 s of every trial's start); a search's trials share a few architectures, so most read the file.
    """
    layers = {k: [getattr(v, a, None) for a in ("channels", "stride", "height", "width")]
              for k, v in sorted(layer_infos.items())}  # fmt: skip
    identity = json.dumps([dataclasses.asdict(model), layers, input_size, _model_code_digest()],
                          sort_keys=True, default=str)  # fmt: skip
    path = paths.home() / "complexity" / f"{hashlib.sha256(identity.encode()).hexdigest()[:20]}.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    flops = flops_report(head, layer_infos, input_size)  # counted on the CPU
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # trials of one architecture may race: atomic replace
    tmp.write_text(json.dumps(flops))
    os.replace(tmp, path)
    return flops


def _start(config: ExperimentConfig, prepared: Prepared, device: torch.device, world: World) -> _Training:
    """A fresh head, AdamW, warm-up + cosine schedule and grad scaler for this configuration."""
    t = config.train
    head = build_head(prepared.model, prepared.layer_infos)
    if head.prior is not None:  # a resumed run overwrites it with the checkpoint's
        if prepared.output_prior is None:
            raise ValueError("model.output_prior is set but prepare() computed no prior")
        head.prior.initialise(torch.tensor(prepared.output_prior, dtype=torch.float32))
    flops = cached_flops_report(head, prepared.model, prepared.layer_infos, config.data.input_size)
    static = {"params_count": float(count_parameters(head)), "gflops": flops["gflops_per_roi"],
              "gflops_per_image": flops["gflops_per_image"]}  # fmt: skip
    head.to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(prepared.train) / world.size) / t.batch_size)
    warmup = int(round(t.warmup_epochs * steps_per_epoch))
    schedule = lr_lambda(steps_per_epoch * t.epochs, warmup, t.min_lr / t.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    use_scaler = t.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    weights = prepared.class_weights
    return _Training(
        head=head, model=head, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=use_scaler),
        class_weights=torch.tensor(weights, dtype=torch.float32, device=device) if weights else None,
        loss=loss_spec(config), static_metrics=static,
    )  # fmt: skip


def _restore(training: _Training, config: ExperimentConfig, resume_from: str | Path) -> None:
    state = load_checkpoint(resume_from)
    if state["config_hash"] != config.hash():
        raise ValueError(
            f"checkpoint {resume_from} was trained with config {state['config_hash']}, not {config.hash()}; "
            "resume with the same config (or start a new run)"
        )
    training.head.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.scheduler.load_state_dict(state["scheduler"])
    training.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    training.start_epoch = int(state["epoch"]) + 1
    training.history = list(state.get("history", []))
    training.best = dict(state.get("best_metrics", training.best))


def _run_epoch(
    training: _Training, config: ExperimentConfig, prepared: Prepared, device: torch.device, world: World,
    epoch: int,
) -> dict[str, float]:  # fmt: skip
    """Train one epoch, evaluate when due; the epoch's metrics, appended to the history."""
    t = config.train
    began = time.perf_counter()
    # CPU of this process over all its threads (torch's intra-op pool included; DataLoader worker
    # processes are not): with epoch_seconds it says how busy the epoch kept the cores it had.
    cpu_began = time.process_time()
    spec = training.loss
    loader = make_loader(prepared.train, t.batch_size, shuffle=True, seed=t.seed, epoch=epoch,
                         workers=t.num_workers, world=world)  # fmt: skip
    metrics: dict[str, float] = {"epoch": epoch}
    metrics.update(
        train_one_epoch(
            training.model,
            loader,
            prepared.train_features,
            training.optimizer,
            training.scheduler,
            training.scaler,
            spec,
            training.class_weights,
            device,
            epoch=epoch,
            epochs=t.epochs,
            grad_clip=t.grad_clip,
            amp=t.amp,
        )  # fmt: skip
    )
    if epoch % t.eval_every == 0 or epoch == t.epochs:
        val_loader = make_loader(prepared.val, t.batch_size, shuffle=False, seed=t.seed, epoch=0,
                                 workers=t.num_workers, world=world)  # fmt: skip
        metrics.update(
            evaluate(training.head, val_loader, prepared.val_features, spec, training.class_weights, device)
        )
    metrics["lr"] = training.optimizer.param_groups[0]["lr"]
    metrics.update(training.static_metrics)
    metrics["epoch_cpu_seconds"] = time.process_time() - cpu_began
    metrics["epoch_seconds"] = time.perf_counter() - began
    training.history.append(metrics)
    return metrics


def _checkpoint_state(
    training: _Training, config: ExperimentConfig, prepared: Prepared, metrics: dict[str, float], epoch: int
) -> dict[str, Any]:
    return {
        "model": training.head.state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(),
        "scaler": training.scaler.state_dict(),
        "epoch": epoch,
        "config": config.to_dict(),
        "config_hash": config.hash(),
        "model_config": dataclasses.asdict(prepared.model),
        "layer_infos": layer_infos_to_dict(prepared.layer_infos),
        "backbone": _backbone_info(prepared.spec),
        "class_weights": prepared.class_weights,
        "metrics": metrics,
        "best_metrics": training.best,
        "history": training.history,
        "rng": rng_state(),
        "edgeseg_version": edgeseg.__version__,
    }


def _replace_dir(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` so that a crash leaves either the old or the new copy."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _backbone_info(spec: Any) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for key in ("onnx_path", "input_name", "input_size"):
        if hasattr(spec, key):
            info[key] = str(getattr(spec, key)) if key == "onnx_path" else getattr(spec, key)
    if hasattr(spec, "preprocessing"):
        info["preprocessing"] = dataclasses.asdict(spec.preprocessing)
    if hasattr(spec, "layers"):
        info["layers"] = {
            k: {"output_name": v.output_name, "stride": v.stride} for k, v in spec.layers.items()
        }
    return info


def default_run_dir(config: ExperimentConfig) -> Path:
    return paths.home() / "runs" / f"{config.name}-{config.hash()}"


def train(
    config: ExperimentConfig, run_dir: str | Path | None = None, resume_from: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> FitResult:  # fmt: skip
    run_dir = Path(run_dir) if run_dir else default_run_dir(config)
    log(f"training {config.name} ({config.hash()}) into {run_dir}")
    return fit(config, PrintReporter(log), run_dir=run_dir, resume_from=resume_from, log=log)
