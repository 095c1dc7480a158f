"""What the model-layer commands do: train one config, validate a checkpoint, list the variants.

Each function is the library call behind one CLI command, so whatever the CLI does can be done
from Python too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgeseg import engine, paths, pipeline
from edgeseg.config import ExperimentConfig, apply_overrides, list_presets, load_config

PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], dtype=np.uint8,
)  # fmt: skip


def default_run_dir(config: ExperimentConfig) -> Path:
    return paths.home() / "runs" / f"{config.name}-{config.hash()}"


def train(
    config: ExperimentConfig, run_dir: str | Path | None = None, resume_from: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> engine.FitResult:  # fmt: skip
    run_dir = Path(run_dir) if run_dir else default_run_dir(config)
    log(f"training {config.name} ({config.hash()}) into {run_dir}")
    return engine.fit(config, engine.PrintReporter(log), run_dir=run_dir, resume_from=resume_from, log=log)


def variant_table(input_size: int = 640, channels: int | None = None) -> list[dict[str, Any]]:
    """Every preset built on the default backbone: parameters and GFLOPs per ROI (counted)."""
    from edgeseg.complexity import count_parameters, flops_report

    rows = []
    base = load_config("baseline", overrides={"data.input_size": input_size})
    spec = pipeline.backbone_spec(base)
    extractor_cache: dict[tuple[str, ...], Any] = {}
    for preset in list_presets():
        overrides: dict[str, Any] = {"data.input_size": input_size}
        if channels:
            overrides["model.channels"] = channels
        config = load_config(preset.name, overrides=overrides)
        model = pipeline.resolve_model(config, spec)
        if model.layers not in extractor_cache:
            extractor_cache[model.layers] = pipeline.make_extractor(config, spec, model.layers).layer_info()
        infos = extractor_cache[model.layers]
        head = pipeline.build_head(model, infos)
        flops = flops_report(head, infos, input_size)
        rows.append(
            {
                "preset": preset.name,
                "params": count_parameters(head),
                "gflops": flops["gflops_per_roi"],
                "gflops_per_image": flops["gflops_per_image"],
                "flags": config.feature_flags(),
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------
# Validation: metrics JSON, COCO mask AP, overlay PNGs.
# ----------------------------------------------------------------------------------------------


def paste_in_input_space(labels: torch.Tensor, rois: torch.Tensor, size: int) -> np.ndarray:
    """ROI label maps [K,M,M] -> one map [size,size] in network-input pixels (later ROIs on top)."""
    canvas = np.zeros((size, size), dtype=np.int64)
    owner = np.full((size, size), -1, dtype=np.int64)
    for k in range(labels.shape[0]):
        x1, y1, x2, y2 = rois[k, -4:].tolist()
        ix1, iy1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        ix2, iy2 = min(size, int(np.ceil(x2))), min(size, int(np.ceil(y2)))
        if ix2 <= ix1 or iy2 <= iy1:
            continue
        resized = F.interpolate(labels[k][None, None].float(), size=(iy2 - iy1, ix2 - ix1), mode="nearest")[
            0, 0
        ]
        target = resized.numpy() == 1
        canvas[iy1:iy2, ix1:ix2][target] = 1
        owner[iy1:iy2, ix1:ix2][target] = k
    return owner


def _overlay(image: np.ndarray, owner: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32).copy()
    for k in np.unique(owner):
        if k < 0:
            continue
        colour = PALETTE[k % len(PALETTE)].astype(np.float32)
        region = owner == k
        out[region] = 0.45 * out[region] + 0.55 * colour
    return out.clip(0, 255).astype(np.uint8)


def _draw_boxes(image: Any, rois: torch.Tensor) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    for k in range(rois.shape[0]):
        x1, y1, x2, y2 = rois[k, -4:].tolist()
        draw.rectangle([x1, y1, x2, y2], outline=tuple(int(c) for c in PALETTE[k % len(PALETTE)]), width=2)
        draw.text((x1 + 3, y1 + 2), f"#{k}", fill=(255, 255, 255))


def save_overlay(
    path: Path, image_chw: torch.Tensor, rois: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor
) -> None:
    """Ground truth (left) next to prediction (right): the target class of each ROI in its colour."""
    from PIL import Image, ImageDraw

    image = image_chw.permute(1, 2, 0).numpy().astype(np.uint8)
    size = image.shape[0]
    panels = []
    for title, labels in (("ground truth", gt), ("prediction", pred)):
        panel = Image.fromarray(_overlay(image, paste_in_input_space(labels, rois, size)))
        _draw_boxes(panel, rois)
        ImageDraw.Draw(panel).text((8, 8), title, fill=(255, 255, 255))
        panels.append(panel)
    canvas = Image.new("RGB", (size * 2 + 8, size), (255, 255, 255))
    canvas.paste(panels[0], (0, 0))
    canvas.paste(panels[1], (size + 8, 0))
    canvas.save(path)


def validate_checkpoint(
    checkpoint: str | Path, out_dir: str | Path | None = None, data_root: str | None = None, overlays: int = 4,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate a checkpoint on its validation set: metrics JSON, COCO mask AP, overlay PNGs."""
    from edgeseg.coco_eval import coco_mask_ap, paste_roi_masks

    state = engine.load_checkpoint(checkpoint)
    head, config, _ = engine.head_from_checkpoint(state)
    if data_root:
        config = apply_overrides(config, {"data.root": data_root}, source="--data")
    ckpt_path = Path(checkpoint)
    out = Path(out_dir) if out_dir else (ckpt_path if ckpt_path.is_dir() else ckpt_path.parent) / "validation"
    overlay_dir = out / "overlays"
    overlay_dir.mkdir(parents=True, exist_ok=True)
    prepared = pipeline.prepare(config, log=log)
    device = engine.select_device(config.train.device)
    head.to(device)
    weights = torch.tensor(prepared.class_weights, device=device) if prepared.class_weights else None
    detections: list[dict[str, Any]] = []
    image_ids: list[int] = []
    drawn = 0

    def on_batch(batch: Any, outputs: dict[str, torch.Tensor]) -> None:
        nonlocal drawn
        probs = outputs["logits"].float().softmax(1).cpu()
        pred = probs.argmax(1)
        rois = batch.rois.cpu()
        for b in range(batch.images.shape[0]):
            rows = (rois[:, 0] == b).nonzero().flatten()
            image_ids.append(int(batch.image_ids[b]))
            if rows.numel() == 0:
                continue
            target_prob = probs[rows, 1]
            masks = paste_roi_masks(target_prob.numpy(), rois[rows, 1:].numpy(), batch.letterboxes[b])
            for k, mask in zip(rows.tolist(), masks, strict=True):
                inside = pred[k] == 1
                score = float(probs[k, 1][inside].mean()) if inside.any() else 0.0
                detections.append(
                    {"image_id": int(batch.image_ids[b]), "ann_id": int(batch.ann_ids[b][k - int(rows[0])]),
                     "mask": mask, "score": score}
                )  # fmt: skip
            if drawn < overlays:
                save_overlay(
                    overlay_dir / f"image_{int(batch.image_ids[b]):012d}.png", batch.images[b], rois[rows],
                    batch.targets[rows].cpu(), pred[rows],
                )  # fmt: skip
                drawn += 1

    loader = engine.make_loader(
        prepared.val, config.train.batch_size, shuffle=False, seed=0, epoch=0, workers=0
    )
    metrics = engine.evaluate(
        head, loader, prepared.val_features, engine.loss_spec(config), weights, device, on_batch=on_batch
    )
    metrics.update(
        {f"val/mask_{k}": v for k, v in coco_mask_ap(prepared.val.coco, detections, image_ids).items()}
    )
    report = {
        "checkpoint": str(checkpoint),
        "epoch": int(state["epoch"]),
        "config": config.to_dict(),
        "metrics": metrics,
        "metrics_file": str(out / "metrics.json"),
        "overlay_dir": str(overlay_dir),
    }
    (out / "metrics.json").write_text(json.dumps(pipeline.to_jsonable(report), indent=2))
    return report
