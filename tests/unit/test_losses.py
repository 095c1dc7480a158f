"""Losses on tiny hand-made tensors; expected values are computed by hand (math), not by the code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from edgeseg.losses import (
    LossSpec,
    adaptive_scale,
    boundary_weights,
    cascade_loss,
    compute_loss,
    dice_loss,
    distance_aware_weights,
    distance_to_mask,
    focal_loss,
    hierarchical_loss,
    instance_separation_weights,
    label_boundaries,
    weighted_cross_entropy,
)

# One ROI of 2x2 pixels with distinct logits per pixel, so per-pixel CE values differ.
LOGITS = [
    [[2.0, 0.0, -1.0], [0.5, 1.0, 0.0]],
    [[0.0, 0.0, 3.0], [-1.0, 2.0, 1.0]],
]  # [row][col][class]
TARGETS = [[0, 1], [2, 2]]
CLASS_WEIGHTS = [0.5, 1.0, 2.0]


def _logits() -> torch.Tensor:
    return torch.tensor(LOGITS).permute(2, 0, 1).unsqueeze(0)  # [1, 3, 2, 2]


def _targets() -> torch.Tensor:
    return torch.tensor([TARGETS])


def _hand_ce() -> list[float]:
    out = []
    for r in range(2):
        for c in range(2):
            z = LOGITS[r][c]
            out.append(-(z[TARGETS[r][c]] - math.log(sum(math.exp(v) for v in z))))
    return out


def _hand_pt() -> list[float]:
    return [math.exp(-ce) for ce in _hand_ce()]


def _labels() -> list[int]:
    return [TARGETS[r][c] for r in range(2) for c in range(2)]


# ---------------------------------------------------------------------------------------------
# Cross-entropy, focal, Dice.
# ---------------------------------------------------------------------------------------------


def test_class_weights_are_applied_per_pixel_not_as_a_scalar() -> None:
    ce, labels = _hand_ce(), _labels()
    w = [CLASS_WEIGHTS[t] for t in labels]
    per_pixel = sum(wi * ci for wi, ci in zip(w, ce, strict=True)) / sum(w)
    original_scalar_bug = (sum(ce) / 4) * (sum(w) / 4)
    got = weighted_cross_entropy(_logits(), _targets(), torch.tensor(CLASS_WEIGHTS), None)
    assert got.item() == pytest.approx(per_pixel, rel=1e-6)
    assert abs(per_pixel - original_scalar_bug) > 0.05  # the two definitions really differ here
    reference = torch.nn.CrossEntropyLoss(weight=torch.tensor(CLASS_WEIGHTS))(_logits(), _targets())
    assert got.item() == pytest.approx(reference.item(), rel=1e-6)


def test_pixel_weights_multiply_class_weights() -> None:
    ce, labels = _hand_ce(), _labels()
    pixel = [1.0, 3.0, 0.5, 2.0]
    w = [CLASS_WEIGHTS[t] * p for t, p in zip(labels, pixel, strict=True)]
    expected = sum(wi * ci for wi, ci in zip(w, ce, strict=True)) / sum(w)
    got = weighted_cross_entropy(
        _logits(), _targets(), torch.tensor(CLASS_WEIGHTS), torch.tensor([[[1.0, 3.0], [0.5, 2.0]]])
    )
    assert got.item() == pytest.approx(expected, rel=1e-6)
    unweighted = weighted_cross_entropy(_logits(), _targets())
    assert unweighted.item() == pytest.approx(sum(ce) / 4, rel=1e-6)


def test_focal_alpha_is_applied_once_per_pixel() -> None:
    gamma = 2.0
    ce, pt, labels = _hand_ce(), _hand_pt(), _labels()
    alpha = [CLASS_WEIGHTS[t] for t in labels]
    terms = [a * (1 - p) ** gamma * c for a, p, c in zip(alpha, pt, ce, strict=True)]
    expected = sum(terms) / sum(alpha)
    got = focal_loss(_logits(), _targets(), gamma, torch.tensor(CLASS_WEIGHTS))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # The original multiplied the alpha-weighted mean by mean(alpha) once more.
    applied_twice = (sum(terms) / 4) * (sum(alpha) / 4)
    assert abs(got.item() - applied_twice) > 1e-3


def test_focal_with_gamma_zero_is_weighted_cross_entropy() -> None:
    weights = torch.tensor(CLASS_WEIGHTS)
    focal = focal_loss(_logits(), _targets(), 0.0, weights)
    assert focal.item() == pytest.approx(
        weighted_cross_entropy(_logits(), _targets(), weights).item(), rel=1e-6
    )


def test_dice_per_roi_per_class_by_hand() -> None:
    # Zero logits: every class has probability 1/3 at every pixel.
    logits = torch.zeros(1, 3, 2, 2)
    targets = torch.tensor([[[1, 1], [2, 0]]])
    eps = 1.0
    dice1 = (2 * (2 / 3) + eps) / (4 / 3 + 2 + eps)  # I = 2·1/3, Σp = 4/3, Σt = 2
    dice2 = (2 * (1 / 3) + eps) / (4 / 3 + 1 + eps)
    expected = ((1 - dice1) + (1 - dice2)) / 2
    assert dice_loss(logits, targets, (1, 2), eps).item() == pytest.approx(expected, rel=1e-6)
    assert dice_loss(logits, targets, (1,), eps).item() == pytest.approx(1 - dice1, rel=1e-6)


def test_dice_is_mean_over_rois() -> None:
    logits = torch.zeros(2, 3, 2, 2)
    logits[1, 1] = 20.0  # ROI 1 predicts class 1 everywhere, matching its all-1 target
    targets = torch.tensor([[[1, 1], [1, 1]], [[1, 1], [1, 1]]])
    roi0 = 1 - (2 * (4 / 3) + 1) / (4 / 3 + 4 + 1)
    roi1 = 0.0  # p ≈ 1 on all 4 target pixels
    got = dice_loss(logits, targets, (1,), eps=1.0)
    assert got.item() == pytest.approx((roi0 + roi1) / 2, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Distance-aware weights.
# ---------------------------------------------------------------------------------------------


def test_boundary_weights_on_a_vertical_edge() -> None:
    targets = torch.zeros(1, 4, 6, dtype=torch.long)
    targets[:, :, 3:] = 1  # label change between columns 2 and 3: both are boundary pixels (d = 0)
    w3 = boundary_weights(targets, boundary_width=3, boundary_weight=2.0)
    expected_row = [1 + (1 - 2 / 3), 1 + (1 - 1 / 3), 2.0, 2.0, 1 + (1 - 1 / 3), 1 + (1 - 2 / 3)]
    assert torch.allclose(w3[0], torch.tensor([expected_row] * 4))
    w2 = boundary_weights(targets, boundary_width=2, boundary_weight=3.0)
    expected_row = [1.0, 1 + 2 * (1 - 1 / 2), 3.0, 3.0, 1 + 2 * (1 - 1 / 2), 1.0]
    assert torch.allclose(w2[0], torch.tensor([expected_row] * 4))


def test_boundary_weights_use_euclidean_distance() -> None:
    targets = torch.zeros(1, 7, 7, dtype=torch.long)
    targets[0, 3, 3] = 2  # boundary: the centre and its four neighbours
    w = boundary_weights(targets, boundary_width=3, boundary_weight=3.0)
    # (1, 1): nearest boundary pixel (2, 3) or (3, 2), distance √5 (chessboard would say 1).
    assert w[0, 1, 1].item() == pytest.approx(1 + 2 * (1 - math.sqrt(5) / 3), rel=1e-6)
    assert w[0, 3, 5].item() == pytest.approx(1 + 2 * (1 - 1 / 3), rel=1e-6)  # (3, 4) is 1 away
    assert w[0, 3, 3].item() == pytest.approx(3.0)
    assert w[0, 0, 0].item() == 1.0  # nearest boundary (2, 3) or (3, 2): √13 > 3


def test_boundary_weights_without_a_boundary_are_all_ones() -> None:
    for label in (0, 1, 2):
        targets = torch.full((2, 5, 5), label, dtype=torch.long)
        assert torch.equal(boundary_weights(targets, 5, 2.0), torch.ones(2, 5, 5))


def test_label_boundaries_are_4_neighbour_changes() -> None:
    targets = torch.tensor([[[0, 0, 0], [0, 1, 0], [0, 0, 0]]])
    expected = torch.tensor([[[False, True, False], [True, True, True], [False, True, False]]])
    assert torch.equal(label_boundaries(targets), expected)


def test_distance_to_mask_matches_scipy_edt() -> None:
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(6, 24, 24, generator=generator) > 0.98
    mask[0] = False  # an empty mask: every distance is beyond the radius
    for radius in (0.0, 1.0, 2.5, 4.0, 7.0):
        got = distance_to_mask(mask, radius).numpy()
        for n in range(mask.shape[0]):
            if mask[n].any():
                edt = ndimage.distance_transform_edt(~mask[n].numpy())
                expected = np.where(edt <= radius, edt, np.inf)
            else:
                expected = np.full(mask.shape[1:], np.inf)
            np.testing.assert_allclose(got[n], expected, rtol=1e-6)


def test_instance_separation_only_near_the_other_instance() -> None:
    row = [1, 1, 1, 0, 0, 2, 2, 2]  # class-1 column 2 and class-2 column 5 are 3 px apart
    targets = torch.tensor([[row] * 3])
    w = instance_separation_weights(targets, distance=3, weight=4.0)
    expected_row = [1.0, 1.0, 4.0, 1.0, 1.0, 4.0, 1.0, 1.0]
    assert torch.equal(w[0], torch.tensor([expected_row] * 3))
    w4 = instance_separation_weights(targets, distance=4, weight=4.0)
    assert torch.equal(w4[0], torch.tensor([[1.0, 4.0, 4.0, 1.0, 1.0, 4.0, 4.0, 1.0]] * 3))
    w2 = instance_separation_weights(targets, distance=2, weight=4.0)
    assert torch.equal(w2, torch.ones_like(w2))
    only_target = torch.tensor([[[1, 1, 0], [0, 1, 0], [0, 0, 0]]])
    assert torch.equal(instance_separation_weights(only_target, 5, 3.0), torch.ones(1, 3, 3))


def test_adaptive_scale_really_anneals() -> None:
    assert adaptive_scale(0.0, "cosine", 1.0, initial=3.0) == pytest.approx(3.0)
    assert adaptive_scale(0.5, "cosine", 1.0, initial=3.0) == pytest.approx(2.0)
    assert adaptive_scale(0.25, "cosine", 1.0, initial=3.0) == pytest.approx(
        1 + 2 * (1 + math.cos(math.pi / 4)) / 2
    )
    assert adaptive_scale(1.0, "cosine", 1.0, initial=3.0) == pytest.approx(1.0)
    assert adaptive_scale(0.25, "linear", 1.0, initial=3.0) == pytest.approx(2.5)
    assert adaptive_scale(0.9, "constant", 1.0, initial=3.0) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="'step'"):
        adaptive_scale(0.5, "step", 1.0, initial=3.0)
    with pytest.raises(ValueError, match="1.5"):
        adaptive_scale(1.5, "linear", 1.0, initial=3.0)


def test_distance_aware_weights_follow_the_schedule() -> None:
    targets = torch.tensor([[[1, 1, 2, 2]] * 4])  # classes 1|2 meet between columns 1 and 2
    start = distance_aware_weights(targets, 2, 2.0, 1, 3.0, progress=0.0, schedule="linear")
    # Column 1 and 2: boundary (β = 2) and adjacent to the other instance (γ = 3); columns 0, 3: d = 1.
    assert torch.allclose(start[0, 0], torch.tensor([1.5, 6.0, 6.0, 1.5]))
    middle = distance_aware_weights(targets, 2, 2.0, 1, 3.0, progress=0.5, schedule="linear")
    assert torch.allclose(middle[0, 0], torch.tensor([1.25, 1.5 * 2.0, 1.5 * 2.0, 1.25]))
    end = distance_aware_weights(targets, 2, 2.0, 1, 3.0, progress=1.0, schedule="linear")
    assert torch.equal(end, torch.ones_like(end))
    constant = distance_aware_weights(targets, 2, 2.0, 1, 3.0, progress=1.0, schedule="constant")
    assert torch.equal(constant, start)


# ---------------------------------------------------------------------------------------------
# Cascade and hierarchical.
# ---------------------------------------------------------------------------------------------


def test_cascade_loss_weights_the_stages() -> None:
    stages = [torch.full((1, 3, 2, 2), v) for v in (1.0, 2.0, 4.0)]
    total, parts = cascade_loss(stages, _targets(), (0.3, 0.3, 0.4), lambda logits, _t: logits.mean())
    assert total.item() == pytest.approx(0.3 * 1 + 0.3 * 2 + 0.4 * 4)
    assert {k: v.item() for k, v in parts.items()} == pytest.approx(
        {"stage1": 1.0, "stage2": 2.0, "stage3": 4.0}
    )
    with pytest.raises(ValueError, match="3 stages but 2"):
        cascade_loss(stages, _targets(), (0.5, 0.5), lambda logits, _t: logits.mean())


def test_compute_loss_cascade_sums_stage_losses() -> None:
    generator = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 3, (2, 6, 6), generator=generator)
    stages = [torch.randn(2, 3, 6, 6, generator=generator) for _ in range(3)]
    spec = LossSpec(cascade_stage_weights=(0.2, 0.3, 0.5))
    loss, parts = compute_loss({"logits": stages[2], "stages": torch.stack(stages)}, targets, spec, None, 0.0)
    singles = [compute_loss({"logits": s}, targets, spec, None, 0.0)[1] for s in stages]
    for i, single in enumerate(singles):
        assert parts[f"stage{i + 1}"] == pytest.approx(single["loss"], rel=1e-6)
    assert loss.item() == pytest.approx(
        sum(w * s["loss"] for w, s in zip((0.2, 0.3, 0.5), singles, strict=True)), rel=1e-6
    )
    assert parts["ce"] == pytest.approx(
        sum(w * s["ce"] for w, s in zip((0.2, 0.3, 0.5), singles, strict=True)), rel=1e-6
    )


def _hierarchical_outputs(n: int = 1, size: int = 2) -> dict[str, torch.Tensor]:
    return {
        "logits": torch.zeros(n, 3, size, size, requires_grad=True),
        "bg_fg_logits": torch.zeros(n, 2, size, size, requires_grad=True),
        "target_other_logits": torch.zeros(n, 2, size, size, requires_grad=True),
    }


def test_hierarchical_loss_by_hand() -> None:
    outputs = _hierarchical_outputs()
    with torch.no_grad():
        outputs["target_other_logits"][0, 1] = torch.tensor([[5.0, 0.0], [1.0, 7.0]])
    targets = torch.tensor([[[0, 1], [2, 0]]])  # foreground: (0, 1) is target, (1, 0) is other
    parts = hierarchical_loss(outputs, targets)
    # target/other over the 2 foreground pixels only: (0, 1) logits (0, 0) label 0; (1, 0) logits (0, 1) label 1.
    to_expected = (math.log(2) + (math.log(1 + math.e) - 1.0)) / 2
    assert parts["bg_fg"].item() == pytest.approx(math.log(2))
    assert parts["target_other"].item() == pytest.approx(to_expected, rel=1e-6)
    assert parts["final"].item() == pytest.approx(math.log(3))
    assert parts["consistency"].item() == pytest.approx((0.5 - 1 / 3) ** 2)
    expected_total = math.log(2) + 1.5 * to_expected + math.log(3) + 0.1 * (0.5 - 1 / 3) ** 2
    assert parts["loss"].item() == pytest.approx(expected_total, rel=1e-6)


def test_hierarchical_target_other_is_zero_without_foreground() -> None:
    outputs = _hierarchical_outputs()
    targets = torch.zeros(1, 2, 2, dtype=torch.long)
    parts = hierarchical_loss(outputs, targets, torch.tensor(CLASS_WEIGHTS))
    assert parts["target_other"].item() == 0.0
    parts["loss"].backward()
    for key, tensor in outputs.items():
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all(), key
    assert torch.equal(outputs["target_other_logits"].grad, torch.zeros(1, 2, 2, 2))


def test_compute_loss_hierarchical_and_mismatch_errors() -> None:
    outputs = _hierarchical_outputs()
    targets = torch.tensor([[[0, 1], [2, 0]]])
    loss, parts = compute_loss(outputs, targets, LossSpec(hierarchical=True, dice_weight=0.5), None, 0.0)
    assert set(parts) >= {"loss", "ce", "dice", "bg_fg", "target_other", "final", "consistency"}
    assert parts["loss"] == pytest.approx(parts["ce"] + 0.5 * parts["dice"], rel=1e-6)
    with pytest.raises(ValueError, match="hierarchical"):
        compute_loss(outputs, targets, LossSpec(), None, 0.0)
    with pytest.raises(ValueError, match="hierarchical"):
        compute_loss({"logits": outputs["logits"]}, targets, LossSpec(hierarchical=True), None, 0.0)


# ---------------------------------------------------------------------------------------------
# The entry point, gradients and half precision.
# ---------------------------------------------------------------------------------------------


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.zeros(3, 12, 12, dtype=torch.long)
    targets[:, 2:9, 2:6] = 1
    targets[:, 3:10, 7:11] = 2
    targets[2] = 0  # one ROI with background only
    return torch.randn(3, 3, 12, 12, generator=generator), targets


def test_compute_loss_components_add_up() -> None:
    logits, targets = _batch()
    weights = torch.tensor(CLASS_WEIGHTS)
    spec = LossSpec(ce_weight=0.7, dice_weight=0.4)
    loss, parts = compute_loss({"logits": logits}, targets, spec, weights, 0.0)
    assert parts["ce"] == pytest.approx(weighted_cross_entropy(logits, targets, weights).item(), rel=1e-6)
    assert parts["dice"] == pytest.approx(dice_loss(logits, targets).item(), rel=1e-6)
    assert loss.item() == pytest.approx(0.7 * parts["ce"] + 0.4 * parts["dice"], rel=1e-6)
    _, focal_parts = compute_loss(
        {"logits": logits}, targets, LossSpec(focal=True, focal_gamma=1.0), weights, 0.0
    )
    assert focal_parts["focal"] == pytest.approx(focal_loss(logits, targets, 1.0, weights).item(), rel=1e-6)


def test_compute_loss_distance_aware_and_adaptive() -> None:
    logits, targets = _batch()
    spec = LossSpec(distance_aware=True, adaptive=True, adaptive_schedule="linear")
    means = [
        compute_loss({"logits": logits}, targets, spec, None, p)[1]["boundary_weight_mean"]
        for p in (0.0, 0.5, 1.0)
    ]
    assert means[0] > means[1] > means[2] == pytest.approx(1.0)
    pixel = distance_aware_weights(targets, 5, 2.0, 5, 3.0)
    _, parts = compute_loss({"logits": logits}, targets, LossSpec(distance_aware=True), None, 0.7)
    assert parts["ce"] == pytest.approx(weighted_cross_entropy(logits, targets, None, pixel).item(), rel=1e-6)
    assert parts["boundary_weight_mean"] == pytest.approx(pixel.mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="distance_aware"):
        compute_loss({"logits": logits}, targets, LossSpec(adaptive=True), None, 0.0)


SPECS = {
    "ce_dice": LossSpec(),
    "focal": LossSpec(focal=True),
    "distance_aware": LossSpec(distance_aware=True, adaptive=True),
    "focal_distance": LossSpec(focal=True, distance_aware=True),
    "cascade": LossSpec(distance_aware=True),
    "hierarchical": LossSpec(hierarchical=True),
}


def _outputs_for(name: str, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    if name == "cascade":
        return {"logits": logits, "stages": [logits * 0.5, logits * 0.8, logits]}
    if name == "hierarchical":
        return {
            "logits": logits,
            "bg_fg_logits": logits[:, :2] * 1.5,
            "target_other_logits": logits[:, 1:] - 0.3,
        }
    return {"logits": logits}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gradients_flow(name: str) -> None:
    base, targets = _batch()
    logits = base.clone().requires_grad_(True)
    loss, _ = compute_loss(_outputs_for(name, logits), targets, SPECS[name], torch.tensor(CLASS_WEIGHTS), 0.3)
    loss.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(SPECS))
def test_finite_with_half_precision_logits(name: str) -> None:
    base, targets = _batch()
    logits = (base * 30).half().requires_grad_(True)  # large logits: float16 softmax would saturate
    loss, parts = compute_loss(
        _outputs_for(name, logits), targets, SPECS[name], torch.tensor(CLASS_WEIGHTS), 0.3
    )
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(math.isfinite(v) for v in parts.values())
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_finite_under_cpu_autocast() -> None:
    base, targets = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = torch.nn.functional.conv2d(base, torch.eye(3).view(3, 3, 1, 1))  # a bf16 head output
        loss, _ = compute_loss(
            {"logits": logits}, targets, LossSpec(distance_aware=True, focal=True), None, 0.0
        )
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_bad_inputs_name_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(1, 2, 2\)"):
        weighted_cross_entropy(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="class_weights"):
        weighted_cross_entropy(_logits(), _targets(), torch.ones(2))
    with pytest.raises(ValueError, match="boundary_width"):
        boundary_weights(_targets(), 0, 2.0)
    with pytest.raises(KeyError, match="logits"):
        compute_loss({"masks": _logits()}, _targets(), LossSpec(), None, 0.0)
