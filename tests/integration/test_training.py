"""The engine end to end on the synthetic people with the real EfficientNet-Lite0 backbone.

One short training is shared by the module; the tests then check what it produced: the loss falls
and mIoU rises well above the untrained head, a resume reproduces the next epoch exactly, a
non-finite loss stops with a clear error and keeps the checkpoints, ``validate`` agrees with the
training-time metrics, and the exported ONNX gives the same masks in ONNX Runtime as torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from edgeseg.cli.main import main
from edgeseg.config import load_config
from edgeseg.engine.checkpoint import CHECKPOINT_FILE, head_from_checkpoint, load_checkpoint
from edgeseg.engine.fit import fit
from edgeseg.engine.loop import (
    NonFiniteLossError,
    evaluate,
    head_inputs,
    loss_spec,
    make_loader,
    seed_everything,
)
from edgeseg.engine.prepare import prepare
from edgeseg.evaluation import validate_checkpoint
from edgeseg.export import export_checkpoint
from edgeseg.models import build_head

pytestmark = pytest.mark.integration

EPOCHS = 6
OVERRIDES = {
    "data.input_size": 192,
    "data.generated_train_images": 32,
    "data.generated_val_images": 8,
    "model.channels": 32,
    "model.roi_size": 14,
    "model.mask_size": 28,
    "train.epochs": EPOCHS,
    "train.batch_size": 4,
    "train.lr": 3e-3,
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("edgeseg-home")
    old = os.environ.get("EDGESEG_HOME")
    os.environ["EDGESEG_HOME"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EDGESEG_HOME", None)
    else:
        os.environ["EDGESEG_HOME"] = old


@pytest.fixture(scope="module")
def trained(home: Path, tmp_path_factory: pytest.TempPathFactory):
    config = load_config("baseline", overrides=OVERRIDES)
    prepared = prepare(config, log=lambda _: None)
    # the untrained head: same seed, same construction as fit's
    seed_everything(config.train.seed)
    untrained = build_head(prepared.model, prepared.layer_infos)
    loader = make_loader(prepared.val, 4, shuffle=False, seed=0, epoch=0, workers=0)
    weights = torch.tensor(prepared.class_weights)
    before = evaluate(
        untrained, loader, prepared.val_features, loss_spec(config), weights, torch.device("cpu")
    )
    reports: list[tuple[dict, Path]] = []

    class Collect:
        def report(self, metrics: dict, checkpoint_dir: Path) -> None:
            assert (checkpoint_dir / CHECKPOINT_FILE).exists()
            reports.append((metrics, checkpoint_dir))

    run_dir = tmp_path_factory.mktemp("run")
    result = fit(config, Collect(), run_dir=run_dir, prepared=prepared, log=lambda _: None)
    return config, prepared, before, result, reports


def test_training_lowers_the_loss_and_raises_miou(trained) -> None:
    _, _, before, result, reports = trained
    assert [int(m["epoch"]) for m, _ in reports] == list(range(1, EPOCHS + 1))
    first, last = result.history[0], result.history[-1]
    assert last["train/loss"] < 0.9 * first["train/loss"]
    assert result.best_metrics["val/miou"] > before["val/miou"] + 0.1
    assert result.best_metrics["val/iou_target"] > 0.3
    assert last["params_count"] > 0 and last["gflops"] > 0


def test_checkpoint_holds_what_resume_needs(trained) -> None:
    config, _, _, result, _ = trained
    state = load_checkpoint(result.last_checkpoint)
    for key in ("model", "optimizer", "scheduler", "epoch", "config", "metrics", "rng", "layer_infos"):
        assert key in state
    assert state["epoch"] == EPOCHS
    assert state["config_hash"] == config.hash()
    best = load_checkpoint(result.best_checkpoint)
    assert best["metrics"]["val/miou"] == pytest.approx(result.best_metrics["val/miou"])
    # only the newest checkpoints are kept (plus best)
    kept = sorted(p.name for p in (result.run_dir / "checkpoints").glob("epoch_*"))
    assert kept == [f"epoch_{EPOCHS - 1:04d}", f"epoch_{EPOCHS:04d}"]


def test_resume_reproduces_the_next_epoch_exactly(trained, tmp_path: Path) -> None:
    config, prepared, _, result, _ = trained
    resumed = fit(
        config,
        run_dir=tmp_path,
        resume_from=result.run_dir / "checkpoints" / f"epoch_{EPOCHS - 1:04d}",
        prepared=prepared,
        log=lambda _: None,
    )
    assert [int(m["epoch"]) for m in resumed.history] == list(range(1, EPOCHS + 1))
    original, again = result.history[-1], resumed.history[-1]
    for key in ("train/loss", "val/loss", "val/miou"):
        assert again[key] == pytest.approx(original[key], rel=1e-5, abs=1e-6), key


def test_resume_with_another_config_is_refused(trained, tmp_path: Path) -> None:
    config, prepared, _, result, _ = trained
    other = load_config("baseline", overrides={**OVERRIDES, "train.lr": 1e-3})
    with pytest.raises(ValueError, match="config"):
        fit(
            other, run_dir=tmp_path, resume_from=result.last_checkpoint, prepared=prepared, log=lambda _: None
        )


def test_non_finite_loss_stops_clearly_and_keeps_checkpoints(trained, tmp_path: Path, monkeypatch) -> None:
    config, prepared, _, result, _ = trained
    import edgeseg.losses

    def nan_loss(outputs, targets, spec, class_weights, progress):
        return outputs["logits"].sum() * float("nan"), {"loss": float("nan")}

    monkeypatch.setattr(edgeseg.engine.loop, "compute_loss", nan_loss)
    start = result.run_dir / "checkpoints" / f"epoch_{EPOCHS - 1:04d}"
    with pytest.raises(NonFiniteLossError, match=f"epoch {EPOCHS}, step 0"):
        fit(config, run_dir=tmp_path, resume_from=start, prepared=prepared, log=lambda _: None)
    assert (start / CHECKPOINT_FILE).exists()
    assert not list((tmp_path / "checkpoints").glob("epoch_*"))  # the failed epoch wrote no checkpoint


def test_validate_agrees_with_training_and_draws_overlays(trained, tmp_path: Path) -> None:
    _, _, _, result, _ = trained
    report = validate_checkpoint(result.best_checkpoint, out_dir=tmp_path, overlays=2, log=lambda _: None)
    metrics = json.loads(Path(report["metrics_file"]).read_text())["metrics"]
    assert metrics["val/miou"] == pytest.approx(result.best_metrics["val/miou"], abs=1e-6)
    assert 0.0 <= metrics["val/mask_ap"] <= 1.0 and metrics["val/mask_ap50"] >= metrics["val/mask_ap75"]
    pngs = sorted((tmp_path / "overlays").glob("*.png"))
    assert len(pngs) == 2
    pixels = np.asarray(Image.open(pngs[0]).convert("RGB"))
    assert pixels.shape[1] > pixels.shape[0]  # ground truth next to prediction
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_export_matches_torch_on_real_features(trained, tmp_path: Path) -> None:
    _, prepared, _, result, _ = trained
    exported = export_checkpoint(result.best_checkpoint, tmp_path, latency_rois=(1,))
    assert exported.max_abs_diff < 1e-3
    sidecar = json.loads(exported.sidecar_path.read_text())
    assert sidecar["mask_size"] == 28 and sidecar["class_names"] == ["background", "target", "other"]
    state = load_checkpoint(result.best_checkpoint)
    head, _, _ = head_from_checkpoint(state)
    head.eval()
    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    batch = next(iter(make_loader(prepared.val, 4, shuffle=False, seed=0, epoch=0, workers=0)))
    inputs, rois, _ = head_inputs(head, batch, prepared.val_features, torch.device("cpu"))
    feed = {f"features_{k}": t.numpy() for k, t in zip(head.layer_ids, inputs, strict=True)}
    feed["rois"] = rois.numpy()
    onnx_masks = session.run(["masks"], feed)[0]
    with torch.no_grad():
        torch_masks = head(inputs, rois)["logits"].numpy()
    assert np.abs(onnx_masks - torch_masks).max() < 1e-3
    agree = (onnx_masks.argmax(1) == torch_masks.argmax(1)).mean()
    assert agree > 0.999


def test_seeds_of_one_architecture_are_timed_once(trained, tmp_path: Path) -> None:
    """A search passes one latency cache: the same architecture with other weights reuses its timing,
    but the graph itself is exported from its own weights."""
    _, _, _, result, _ = trained
    before_last, last = (result.run_dir / "checkpoints" / f"epoch_{e:04d}" for e in (EPOCHS - 1, EPOCHS))
    cache: dict[str, dict[str, float]] = {}
    a = export_checkpoint(last, tmp_path / "a", latency_rois=(1,), latency_cache=cache)
    b = export_checkpoint(before_last, tmp_path / "b", latency_rois=(1,), latency_cache=cache)
    assert len(cache) == 1 and a.latency_ms == b.latency_ms
    assert a.onnx_path.read_bytes() != b.onnx_path.read_bytes()  # other weights, other graph
    c = export_checkpoint(before_last, tmp_path / "c", latency_rois=(1, 4), latency_cache=cache)
    assert len(cache) == 2 and "latency_ms/onnx/rois_4" in c.latency_ms


def test_cli_bad_override_names_the_key(home: Path, capsys) -> None:
    code = main(["train", "--preset", "baseline", "--set", "train.learning_rate=1"])
    assert code == 2
    assert "train.learning_rate" in capsys.readouterr().err


@pytest.mark.parametrize("rgb", [False, True], ids=["features-only", "rgb-enhanced"])
def test_merged_onnx_takes_the_letterboxed_image(trained, home: Path, tmp_path: Path, rgb: bool) -> None:
    """``export --merge-backbone``: one graph ``image`` (0..255) + ``rois`` -> ``masks`` with the real
    EfficientNet-Lite0 and its ImageNet normalisation inside, RGB-enhanced heads included; it agrees
    with the head run on the backbone's features (the cache keeps them in fp16, hence the tolerance)."""
    config, prepared, _, result, _ = trained
    checkpoint = result.best_checkpoint
    if rgb:
        config = load_config(
            "baseline",
            overrides={**OVERRIDES, "model.rgb_layers": "deep", "train.epochs": 1, "train.warmup_epochs": 0},
        )
        prepared = prepare(config, log=lambda _: None)
        fitted = fit(config, run_dir=tmp_path / "rgb", prepared=prepared, log=lambda _: None)
        checkpoint = fitted.best_checkpoint
    exported = export_checkpoint(checkpoint, tmp_path / "onnx", merge_backbone=True, latency_rois=(1,))
    assert exported.merged_path is not None
    merged = ort.InferenceSession(str(exported.merged_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in merged.get_inputs()] == ["image", "rois"]

    head, _, _ = head_from_checkpoint(load_checkpoint(checkpoint))
    head.eval()
    assert head.needs_image == rgb
    batch = next(iter(make_loader(prepared.val, 2, shuffle=False, seed=0, epoch=0, workers=0)))
    inputs, rois, image = head_inputs(head, batch, prepared.val_features, torch.device("cpu"))
    with torch.no_grad():
        expected = head(inputs, rois, image)["logits"].numpy()
    (actual,) = merged.run(["masks"], {"image": batch.images.float().numpy(), "rois": rois.numpy()})
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() < 0.05 * max(1.0, np.abs(expected).max())
    assert (actual.argmax(1) == expected.argmax(1)).mean() > 0.99
