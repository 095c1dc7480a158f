"""Every preset, as the engine would build it on EfficientNet-Lite0: roles, head, loss, gradients, FLOPs, ONNX.

Parametrized over ``edgeseg.config.PRESETS``, so a preset is tested the moment it is registered. Each
preset is shrunk (8 channels, 128 px input, ROI and mask sizes divided by 4 with their equal/unequal
pattern kept) but keeps every feature flag it has. The layer infos are those of the real EfficientNet-Lite0
taps at 128 px (channels from the architecture: stage outputs 24/40/112/320, MBConv expansions 6x their
stage input, head 1280; TF "SAME" padding gives ceil(128 / stride) maps), so no ONNX backbone is needed.
A second group checks that presets differing in one flag differ exactly there, in config, head and loss.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgeseg.backbone.layer_map import EFFICIENTNET_LITE0
from edgeseg.complexity import count_parameters, flops_report
from edgeseg.config import PRESETS, ExperimentConfig, ModelConfig, load_config, parse_class_weights
from edgeseg.engine.loop import loss_spec
from edgeseg.engine.prepare import resolve_model
from edgeseg.export import export_head
from edgeseg.losses import compute_loss
from edgeseg.models import build_head
from edgeseg.models.head import RoiSegmentationHead

pytestmark = [
    pytest.mark.usefixtures("single_torch_thread"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning"),
]

INPUT_SIZE = 128
CHANNELS = 8
SCALE = 4
# EfficientNet-Lite0 taps: (channels, stride), written from the architecture, not read from edgeseg.
TAPS = {
    "p2": (24, 4),
    "p2_expand": (144, 4),
    "p3": (40, 8),
    "p3_expand": (240, 8),
    "p4": (112, 16),
    "p4_expand": (672, 16),
    "p5": (320, 32),
    "head": (1280, 32),
}
ROLES = {"fine": "p2_expand", "mid": "p3_expand", "deep": "p4_expand", "coarse": "head"}
LAYER_INFOS = {
    name: types.SimpleNamespace(
        channels=channels, stride=stride, height=-(-INPUT_SIZE // stride), width=-(-INPUT_SIZE // stride)
    )
    for name, (channels, stride) in TAPS.items()
}
SPEC = EFFICIENTNET_LITE0.bind("/nonexistent/efficientnet_lite0_128.onnx", "images", INPUT_SIZE)
# Boxes in input pixels over a batch of 2: ordinary, crossing the border, small, on the second image.
ROIS = torch.tensor(
    [
        [0, 10.0, 12.0, 70.0, 120.0],
        [1, 60.0, 30.0, 140.0, 131.0],
        [0, -8.0, -5.0, 40.0, 36.0],
        [1, 50.0, 50.0, 58.0, 62.0],
        [1, 5.0, 70.0, 90.0, 126.0],
    ]
)


def _shrink(size: int) -> int:
    return max(4, round(size / SCALE))


def small_config(name: str) -> ExperimentConfig:
    """The preset with every flag kept and sizes shrunk; equal ROI sizes stay equal, unequal stay unequal."""
    model = load_config(name).model
    overrides: dict[str, object] = {
        "model.channels": CHANNELS,
        "model.rgb_channels": CHANNELS,
        "data.input_size": INPUT_SIZE,
        "model.roi_size": _shrink(model.roi_size),
        "model.mask_size": max(8, _shrink(model.mask_size)),
    }
    if model.roi_sizes:
        small = tuple(_shrink(s) for s in model.roi_sizes)
        pattern = [[a == b for b in model.roi_sizes] for a in model.roi_sizes]
        assert [[a == b for b in small] for a in small] == pattern, f"{name}: shrinking merged ROI sizes"
        overrides["model.roi_sizes"] = small
    return load_config(name, overrides=overrides)


def build(name: str, seed: int = 0) -> tuple[ExperimentConfig, RoiSegmentationHead]:
    config = small_config(name)
    model = resolve_model(config, SPEC)
    torch.manual_seed(seed)
    head = build_head(model, {layer: LAYER_INFOS[layer] for layer in model.layers})
    return config, head


def inputs_for(head: RoiSegmentationHead, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    generator = torch.Generator().manual_seed(seed)
    features = [
        torch.randn(2, LAYER_INFOS[layer].channels, LAYER_INFOS[layer].height, LAYER_INFOS[layer].width,
                    generator=generator)
        for layer in head.layer_ids
    ]  # fmt: skip
    image = None
    if head.needs_image:
        image = torch.randint(0, 256, (2, 3, INPUT_SIZE, INPUT_SIZE), generator=generator).float()
    return features, image


def random_targets(mask_size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (len(ROIS), mask_size, mask_size), generator=generator)


def class_weights(config: ExperimentConfig) -> torch.Tensor | None:
    if config.loss.class_weights == "none":
        return None
    explicit = parse_class_weights(config.loss.class_weights)
    # "log" weights come from training-set statistics; any positive triple exercises the same path here.
    return torch.tensor(explicit or (0.4, 1.6, 1.2))


def expected_outputs(config: ExperimentConfig) -> set[str]:
    if config.model.cascade:
        return {"logits", "stages"}
    if config.model.decoder == "hierarchical":
        return {"logits", "bg_fg_logits", "target_other_logits"}
    return {"logits"}


@dataclass
class OnnxFiles:
    """ONNX exports by model config: presets that differ only in their loss share one graph.

    A shared file is still checked against each preset's own torch head (same model config and seed
    give the same weights; if they did not, that check would fail).
    """

    folder: Path
    by_model: dict[ModelConfig, Path] = field(default_factory=dict)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> OnnxFiles:
    return OnnxFiles(tmp_path_factory.mktemp("onnx"))


def test_the_layer_map_agrees_with_the_taps_used_here() -> None:
    assert {k: v.stride for k, v in EFFICIENTNET_LITE0.layers.items()} == {k: s for k, (_, s) in TAPS.items()}
    assert EFFICIENTNET_LITE0.roles == ROLES


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_builds_trains_counts_and_exports(name: str, exported: OnnxFiles) -> None:
    config, head = build(name)
    m = config.model
    mask = m.mask_size

    # Roles resolve to the EfficientNet-Lite0 taps; the head is wired as the flags say.
    assert head.layer_ids == tuple(ROLES[role] for role in m.layers)
    assert head.pooler.roi_sizes == (m.roi_sizes or (m.roi_size,) * len(m.layers))
    assert head.needs_image == bool(m.rgb_layers)
    if head.rgb is not None:
        assert set(head.rgb.layer_ids) == {ROLES[role] for role in m.rgb_layers}
    assert head.mask_size == mask

    # Forward + backward with the preset's own loss: every parameter learns from it.
    head.train()
    features, image = inputs_for(head)
    outputs = head(features, ROIS, image)
    assert set(outputs) == expected_outputs(config)
    assert outputs["logits"].shape == (len(ROIS), 3, mask, mask)
    if m.cascade:
        assert outputs["stages"].shape == (3, len(ROIS), 3, mask, mask)
        assert torch.equal(outputs["stages"][-1], outputs["logits"])
    loss, parts = compute_loss(outputs, random_targets(mask), loss_spec(config), class_weights(config), 0.5)
    assert torch.isfinite(loss) and loss.item() > 0
    assert parts["loss"] == pytest.approx(
        config.loss.ce_weight * parts["ce"] + config.loss.dice_weight * parts["dice"], rel=1e-5
    )
    assert ("boundary_weight_mean" in parts) == config.loss.distance_aware
    assert ("focal" in parts) == config.loss.focal
    loss.backward()
    params = dict(head.named_parameters())
    no_grad = [n for n, p in params.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not no_grad, f"{name}: parameters without gradient: {no_grad}"
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())

    # Complexity: parameters counted by hand; FLOPs per ROI always, per image only with the RGB encoder.
    assert count_parameters(head) == sum(p.numel() for p in params.values()) > 0
    infos = {layer: LAYER_INFOS[layer] for layer in head.layer_ids}
    flops = flops_report(head, infos, INPUT_SIZE)
    assert flops["flops_per_roi"] > 0
    assert (flops["flops_per_image"] > 0) == head.needs_image

    # ONNX: the export's own parity check, then ONNX Runtime on other inputs and a different ROI count.
    if m not in exported.by_model:
        path = exported.folder / f"{name}.onnx"
        report = export_head(head, infos, INPUT_SIZE, path, config_dict=config.to_dict())
        assert report.max_abs_diff < 1e-3
        exported.by_model[m] = report.onnx_path
    onnx_path = exported.by_model[m]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == [f"features_{layer}" for layer in head.layer_ids] + (
        ["image"] if head.needs_image else []
    ) + ["rois"]
    features, image = inputs_for(head, seed=7)
    feed = {f"features_{layer}": f.numpy() for layer, f in zip(head.layer_ids, features, strict=True)}
    if image is not None:
        feed["image"] = image.numpy()
    feed["rois"] = ROIS.numpy()
    (onnx_logits,) = session.run(["masks"], feed)
    head.eval()
    with torch.no_grad():
        torch_logits = head(features, ROIS, image)["logits"].numpy()
    assert onnx_logits.shape == (len(ROIS), 3, mask, mask)
    assert np.abs(onnx_logits - torch_logits).max() < 1e-3


# ----------------------------------------------------------------------------------------------
# Presets one flag apart.
# ----------------------------------------------------------------------------------------------

NEIGHBOURS = [
    ("multiscale", "baseline", {"model.layers"}),
    ("multiscale_distance", "multiscale", {"loss.distance_aware"}),
    ("multiscale_cascade", "multiscale", {"model.cascade"}),
    ("full", "multiscale_distance", {"model.cascade", "loss.adaptive"}),
    ("full", "multiscale_cascade", {"loss.distance_aware", "loss.adaptive"}),
    ("variable_roi_progressive", "multiscale_distance", {"model.roi_sizes"}),
    ("variable_roi_progressive4", "variable_roi_progressive", {"model.roi_sizes"}),
    ("variable_roi_progressive5", "variable_roi_progressive", {"loss.class_weights"}),
    ("rgb_enhanced_baseline", "variable_roi_progressive", {"model.rgb_layers"}),
    ("rgb_enhanced_dual_layer", "rgb_enhanced_lightweight", {"model.rgb_layers", "train.batch_size"}),
    (
        "class_specific_decoder",
        "variable_roi_progressive_focal2",
        {"model.decoder", "train.lr", "train.batch_size", "loss.class_weights"},
    ),  # fmt: skip
]


def differing_keys(a: ExperimentConfig, b: ExperimentConfig) -> set[str]:
    flat_a, flat_b = a.flat(), b.flat()
    return {k for k in flat_a if k not in ("name", "description") and flat_a[k] != flat_b[k]}


@pytest.mark.parametrize(("one", "other", "keys"), NEIGHBOURS, ids=[f"{a}-vs-{b}" for a, b, _ in NEIGHBOURS])
def test_neighbouring_presets_differ_only_in_their_flags(one: str, other: str, keys: set[str]) -> None:
    assert differing_keys(load_config(one), load_config(other)) == keys


def _shapes(head: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in head.state_dict().items()}


def test_loss_only_flags_leave_the_head_unchanged() -> None:
    # distance-aware / adaptive / class weights change the loss, never the architecture
    for one, other in [("multiscale_distance", "multiscale"), ("full", "multiscale_cascade"),
                       ("variable_roi_progressive5", "variable_roi_progressive")]:  # fmt: skip
        _, a = build(one)
        _, b = build(other)
        assert _shapes(a) == _shapes(b), (one, other)
        assert all(
            torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        )


def test_cascade_adds_stages_and_parameters() -> None:
    _, plain = build("multiscale")
    _, cascade = build("multiscale_cascade")
    features, _ = inputs_for(plain)
    with torch.no_grad():
        assert "stages" not in plain(features, ROIS)
        assert cascade(features, ROIS)["stages"].shape[0] == 3
    assert count_parameters(cascade) > count_parameters(plain)


def test_more_layers_rgb_and_larger_rois_cost_more() -> None:
    def cost(name: str) -> tuple[int, dict[str, float]]:
        _, head = build(name)
        infos = {layer: LAYER_INFOS[layer] for layer in head.layer_ids}
        return count_parameters(head), flops_report(head, infos, INPUT_SIZE)

    baseline, multiscale = cost("baseline"), cost("multiscale")
    assert multiscale[0] > baseline[0] and multiscale[1]["flops_per_roi"] > baseline[1]["flops_per_roi"]
    progressive, large = cost("variable_roi_progressive"), cost("variable_roi_progressive4")
    # (160, 80, 80) vs (56, 42, 28), both shrunk by 4
    assert large[1]["flops_per_roi"] > progressive[1]["flops_per_roi"]
    rgb = cost("rgb_enhanced_baseline")
    assert rgb[0] > progressive[0]
    assert rgb[1]["flops_per_image"] > 0 and progressive[1]["flops_per_image"] == 0
    assert rgb[1]["flops_per_roi"] > progressive[1]["flops_per_roi"]


def test_adaptive_anneals_from_distance_aware_to_plain() -> None:
    """``full`` = cascade + distance-aware with adaptive annealing to 1: at progress 0 its loss is the
    non-adaptive distance-aware cascade loss, at progress 1 the plain cascade loss, in between neither."""
    full, head = build("full")
    constant = load_config("full", overrides={**_small_overrides(full), "loss.adaptive": False})
    plain = load_config("multiscale_cascade", overrides=_small_overrides(full))
    features, _ = inputs_for(head)
    with torch.no_grad():
        outputs = head(features, ROIS)
    targets = random_targets(full.model.mask_size, seed=3)
    weights = torch.tensor((0.4, 1.6, 1.2))

    def loss(config: ExperimentConfig, progress: float) -> float:
        return compute_loss(outputs, targets, loss_spec(config), weights, progress)[0].item()

    assert loss(full, 0.0) == pytest.approx(loss(constant, 0.7), rel=1e-6)
    assert loss(full, 1.0) == pytest.approx(loss(plain, 0.3), rel=1e-6)
    assert loss(constant, 0.0) != pytest.approx(loss(plain, 0.0), rel=1e-3)  # the weights do matter here
    middle = loss(full, 0.5)
    assert middle != pytest.approx(loss(full, 0.0), rel=1e-4) and middle != pytest.approx(
        loss(full, 1.0), rel=1e-4
    )


def _small_overrides(config: ExperimentConfig) -> dict[str, object]:
    m = config.model
    return {"model.channels": m.channels, "model.rgb_channels": m.rgb_channels, "data.input_size": INPUT_SIZE,
            "model.roi_size": m.roi_size, "model.mask_size": m.mask_size}  # fmt: skip
