"""Validate a checkpoint: dataset-level mIoU, boundary F, COCO mask AP and overlay PNGs in one pass."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edgeseg.coco_eval import coco_mask_ap, roi_detections
from edgeseg.config import ExperimentConfig, apply_overrides
from edgeseg.engine.checkpoint import head_from_checkpoint, load_checkpoint
from edgeseg.engine.loop import evaluate, loss_spec, make_loader, select_device
from edgeseg.engine.prepare import prepare
from edgeseg.export import to_jsonable
from edgeseg.visualize import save_overlay


class _Collector:
    """Per batch of validation ROIs: COCO detections from the argmax class map, and a few overlays."""

    def __init__(self, overlay_dir: Path | None, overlays: int) -> None:
        self.detections: list[dict[str, Any]] = []
        self.image_ids: list[int] = []
        self.roi_ann_ids: list[int] = []
        self.overlay_dir, self.overlays_left = overlay_dir, overlays

    def __call__(self, batch: Any, outputs: dict[str, torch.Tensor]) -> None:
        logits = outputs["logits"].float().cpu()
        rois = batch.rois.cpu()
        self.detections += roi_detections(logits, rois, batch.letterboxes, batch.image_ids, batch.ann_ids)
        self.image_ids += [int(i) for i in batch.image_ids]
        self.roi_ann_ids += [int(a) for ids in batch.ann_ids for a in ids]
        if self.overlay_dir is None:
            return
        pred = logits.argmax(1)
        for b in range(len(batch.image_ids)):
            rows = (rois[:, 0] == b).nonzero().flatten()
            if self.overlays_left > 0 and rows.numel():
                save_overlay(
                    self.overlay_dir / f"image_{int(batch.image_ids[b]):012d}.png", batch.images[b], rois[rows],
                    batch.targets[rows].cpu(), pred[rows],
                )  # fmt: skip
                self.overlays_left -= 1

    def mask_ap(self, coco: Any) -> dict[str, float]:
        """``val/mask_ap``, ``val/mask_ap50``, ``val/mask_ap75``: COCOeval over the people given a ROI."""
        found = coco_mask_ap(coco, self.detections, self.image_ids, roi_ann_ids=self.roi_ann_ids)
        return {f"val/{k}": v for k, v in found.items()}


def evaluate_checkpoint(
    checkpoint: str | Path, *, data_root: str | None = None, overlay_dir: Path | None = None, overlays: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, float], ExperimentConfig, int]:  # fmt: skip
    """The validation metrics of a checkpoint (mIoU, boundary F, losses) with COCO mask AP; its config
    and epoch. The search logs this for each trial's best checkpoint; ``validate`` adds overlays."""
    state = load_checkpoint(checkpoint)
    head, config, _ = head_from_checkpoint(state)
    if data_root:
        config = apply_overrides(config, {"data.root": data_root}, source="--data")
    prepared = prepare(config, log=log)
    device = select_device(config.train.device)
    head.to(device)
    weights = torch.tensor(prepared.class_weights, device=device) if prepared.class_weights else None
    collector = _Collector(overlay_dir, overlays)
    loader = make_loader(prepared.val, config.train.batch_size, shuffle=False, seed=0, epoch=0, workers=0)
    metrics = evaluate(
        head, loader, prepared.val_features, loss_spec(config), weights, device, on_batch=collector
    )
    metrics.update(collector.mask_ap(prepared.val.coco))
    return metrics, config, int(state["epoch"])


def validate_checkpoint(
    checkpoint: str | Path, out_dir: str | Path | None = None, data_root: str | None = None, overlays: int = 4,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate a checkpoint on its validation set: metrics JSON, COCO mask AP, overlay PNGs."""
    ckpt_path = Path(checkpoint)
    out = Path(out_dir) if out_dir else (ckpt_path if ckpt_path.is_dir() else ckpt_path.parent) / "validation"
    overlay_dir = out / "overlays"
    overlay_dir.mkdir(parents=True, exist_ok=True)
    metrics, config, epoch = evaluate_checkpoint(
        checkpoint, data_root=data_root, overlay_dir=overlay_dir, overlays=overlays, log=log
    )
    report = {
        "checkpoint": str(checkpoint),
        "epoch": epoch,
        "config": config.to_dict(),
        "metrics": metrics,
        "metrics_file": str(out / "metrics.json"),
        "overlay_dir": str(overlay_dir),
    }
    (out / "metrics.json").write_text(json.dumps(to_jsonable(report), indent=2))
    return report
