"""Segmentation losses for the per-ROI heads: pure functions, tensors in, tensors out.

Classes are 0 background, 1 target person, 2 other persons; logits are [N, 3, M, M] and targets
[N, M, M] int64. Every function computes in float32 (so it is safe under autocast) on the device of its
inputs, and keeps no state.

* Cross-entropy and focal loss apply class weights **per pixel** and normalise by the sum of the
  weights (the original collapsed the class weights into one batch-global scalar and applied focal
  alpha twice; see docs/reference original-system.md §6).
* Soft Dice per ROI and class (Milletari et al., V-Net, 2016).
* Distance-aware pixel weights as the seed document describes them: a boundary band that decays
  linearly from ``boundary_weight`` on the boundary between two classes to 1 at ``boundary_width``
  pixels, times ``instance_sep_weight`` on person pixels close to the *other* person class, with an
  optional annealing schedule that moves both weights to ``adaptive_final`` over training ("high early,
  low late"). Distances are exact Euclidean distances computed on the tensor's device.
* The cascade loss (weighted sum over coarse, refined and final stages) and the hierarchical loss
  (bg/fg, target/other on foreground, final, consistency).

``compute_loss`` is the single entry point the engine calls; ``LossSpec`` is its frozen configuration.
A non-finite loss is returned as it is: the engine decides what to do with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from edgeseg.config import NUM_CLASSES, SCHEDULES

_WEIGHT_FLOOR = 1e-12  # denominators of weighted means; a zero total weight gives a zero loss, not NaN


# ----------------------------------------------------------------------------------------------
# Input checks.
# ----------------------------------------------------------------------------------------------


def _check_pair(logits: Tensor, targets: Tensor, channels: int = NUM_CLASSES, name: str = "logits") -> None:
    if logits.dim() != 4 or logits.shape[1] != channels:
        raise ValueError(f"{name} must be [N, {channels}, M, M], got {tuple(logits.shape)}")
    if targets.dim() != 3 or targets.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"targets must be [N, M, M] matching {name} {tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    if targets.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"targets must be an integer label tensor, got dtype {targets.dtype}")


def _pixel_class_weights(targets: Tensor, class_weights: Tensor | None) -> Tensor | None:
    if class_weights is None:
        return None
    if class_weights.dim() != 1 or class_weights.numel() != NUM_CLASSES:
        raise ValueError(
            f"class_weights must have {NUM_CLASSES} entries, got shape {tuple(class_weights.shape)}"
        )
    return class_weights.to(device=targets.device, dtype=torch.float32)[targets]


def _combine(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a * b


def _weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """Σ w·v / Σ w (plain mean without weights); a zero total weight gives 0 with a zero gradient."""
    if weights is None:
        return values.mean() if values.numel() else values.sum()
    weights = weights.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(_WEIGHT_FLOOR)


# ----------------------------------------------------------------------------------------------
# Pixel losses.
# ----------------------------------------------------------------------------------------------


def weighted_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    class_weights: Tensor | None = None,
    pixel_weights: Tensor | None = None,
) -> Tensor:
    """Cross-entropy with per-pixel weights w(p) = class_weights[target(p)] · pixel_weights(p).

    Normalisation: the weighted mean Σ_p w(p)·CE(p) / Σ_p w(p) over all pixels of all ROIs. With class
    weights only this equals ``torch.nn.CrossEntropyLoss(weight=class_weights)``; with pixel weights the
    loss keeps its scale and the weights change only the relative emphasis of pixels. A zero total
    weight gives 0 (not NaN). ``logits`` may be [N, C, M, M] with any C >= 2 when ``class_weights`` is
    None (the hierarchical branches use C = 2).
    """
    _check_pair(logits, targets, channels=logits.shape[1] if logits.dim() == 4 else NUM_CLASSES)
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    weights = _combine(_pixel_class_weights(targets, class_weights), _as_weights(pixel_weights, targets))
    return _weighted_mean(ce, weights)


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    gamma: float = 2.0,
    class_weights: Tensor | None = None,
    pixel_weights: Tensor | None = None,
) -> Tensor:
    """Focal loss (Lin et al., 2017): FL(p) = −α[target(p)] · (1 − p_t)^γ · log p_t.

    alpha is ``class_weights`` and is applied once, per pixel. Normalised like
    ``weighted_cross_entropy``: Σ α·w·(1 − p_t)^γ·(−log p_t) / Σ α·w with w the optional pixel weights, so
    γ = 0 gives exactly the weighted cross-entropy.
    """
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    _check_pair(logits, targets)
    log_pt = F.log_softmax(logits.float(), dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
    modulation = (1.0 - log_pt.exp()).clamp_min(0.0).pow(gamma)
    weights = _combine(_pixel_class_weights(targets, class_weights), _as_weights(pixel_weights, targets))
    return _weighted_mean(-modulation * log_pt, weights)


def dice_loss(logits: Tensor, targets: Tensor, classes: Sequence[int] = (1, 2), eps: float = 1.0) -> Tensor:
    """Soft Dice loss: mean over ROIs n and ``classes`` c of 1 − (2·Σ p·t + eps) / (Σ p + Σ t + eps).

    p is the softmax probability of class c, t its one-hot target, sums run over the M×M pixels of one
    ROI. ``eps`` = 1 (rather than the original's 1e-6) makes the loss of a class absent from a ROI go to
    0 as its predicted probability mass goes to 0, instead of staying near 1 until p is ~1e-6.
    """
    _check_pair(logits, targets)
    if not classes:
        raise ValueError("dice_loss needs at least one class")
    if any(c < 0 or c >= logits.shape[1] for c in classes):
        raise ValueError(f"dice classes {tuple(classes)} out of range for {logits.shape[1]} channels")
    probs = F.softmax(logits.float(), dim=1)
    index = torch.as_tensor(list(classes), device=logits.device)
    p = probs.index_select(1, index)  # [N, K, M, M]
    t = (targets.unsqueeze(1) == index.view(1, -1, 1, 1)).float()
    intersection = (p * t).sum(dim=(2, 3))
    total = p.sum(dim=(2, 3)) + t.sum(dim=(2, 3))
    dice = (2.0 * intersection + eps) / (total + eps)
    return (1.0 - dice).mean() if dice.numel() else dice.sum()


def _as_weights(pixel_weights: Tensor | None, targets: Tensor) -> Tensor | None:
    if pixel_weights is None:
        return None
    if pixel_weights.shape != targets.shape:
        raise ValueError(
            f"pixel_weights must match targets {tuple(targets.shape)}, got {tuple(pixel_weights.shape)}"
        )
    return pixel_weights.float()


# ----------------------------------------------------------------------------------------------
# Geometry on label maps (shared with metrics.py).
# ----------------------------------------------------------------------------------------------


def label_boundaries(labels: Tensor) -> Tensor:
    """Bool [N, H, W]: True where a 4-neighbour carries another label.

    Both sides of a label change are boundary pixels; the border of the ROI is not a boundary (there is
    no neighbour beyond it).
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be [N, H, W], got {tuple(labels.shape)}")
    edge = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    vertical = labels[:, 1:, :] != labels[:, :-1, :]
    horizontal = labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, 1:, :] |= vertical
    edge[:, :-1, :] |= vertical
    edge[:, :, 1:] |= horizontal
    edge[:, :, :-1] |= horizontal
    return edge


def distance_to_mask(mask: Tensor, max_distance: float) -> Tensor:
    """Exact Euclidean distance from every pixel to the nearest True pixel of ``mask``, up to a radius.

    ``mask`` is bool [N, H, W]. Returns float32 [N, H, W]: the distance (0 on the mask) where it is
    <= ``max_distance``, +inf beyond. Computed on the mask's device by the separable two-pass
    minimisation of Felzenszwalb & Huttenlocher (column distances, then rows) restricted to offsets
    within the radius: d²(i, j) = min_l [ l² + min_k { k² : mask(i+k, j+l) } ]. Restricting |k|, |l| to
    the radius is exact for every distance within the radius. Agrees with
    ``scipy.ndimage.distance_transform_edt(~mask)`` wherever that is <= ``max_distance``.
    """
    if mask.dim() != 3 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool [N, H, W] tensor, got {mask.dtype} {tuple(mask.shape)}")
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    radius = int(math.floor(max_distance))
    inf = torch.tensor(float("inf"), device=mask.device)
    _, h, w = mask.shape
    # Pass 1: squared distance along each column to the nearest mask pixel within the radius.
    padded = F.pad(mask, (0, 0, radius, radius), value=False)
    column = torch.where(mask, 0.0, inf)
    for k in range(1, radius + 1):  # increasing k: clamping never overwrites a nearer hit
        near = padded[:, radius + k : radius + k + h, :] | padded[:, radius - k : radius - k + h, :]
        column = torch.where(near, column.clamp_max(float(k * k)), column)
    # Pass 2: combine along rows.
    padded_column = F.pad(column, (radius, radius, 0, 0), value=float("inf"))
    squared = column
    for offset in range(1, radius + 1):
        left = padded_column[:, :, radius - offset : radius - offset + w]
        right = padded_column[:, :, radius + offset : radius + offset + w]
        squared = torch.minimum(squared, torch.minimum(left, right) + float(offset * offset))
    distance = squared.sqrt()
    return torch.where(distance <= max_distance, distance, inf)


# ----------------------------------------------------------------------------------------------
# Distance-aware weights.
# ----------------------------------------------------------------------------------------------


def boundary_weights(targets: Tensor, boundary_width: int, boundary_weight: float) -> Tensor:
    """Pixel weights 1 + (β − 1)(1 − d / w) where d < w, 1 elsewhere (float32 [N, M, M]).

    d is the exact Euclidean distance (see ``distance_to_mask``) to the nearest boundary pixel of
    ``label_boundaries(targets)``, i.e. a pixel with a 4-neighbour of another class; β =
    ``boundary_weight``, w = ``boundary_width``. So boundary pixels get β, the weight decays linearly to
    1 at distance w. A ROI whose target has a single class has no boundary and gets all ones.
    """
    if boundary_width < 1:
        raise ValueError(f"boundary_width must be >= 1 pixel, got {boundary_width}")
    if boundary_weight <= 0:
        raise ValueError(f"boundary_weight must be > 0, got {boundary_weight}")
    distance = distance_to_mask(label_boundaries(targets), boundary_width)
    ramp = 1.0 + (boundary_weight - 1.0) * (1.0 - distance / boundary_width)
    return torch.where(distance < boundary_width, ramp, torch.ones_like(ramp))


def instance_separation_weights(targets: Tensor, distance: float, weight: float) -> Tensor:
    """Pixel weights γ on person pixels near the other person class, 1 elsewhere (float32 [N, M, M]).

    A class-1 pixel gets γ = ``weight`` when a class-2 pixel lies within Euclidean distance
    ``distance`` (inclusive, pixel centres; a 4-neighbour is at distance 1), and a class-2 pixel when a
    class-1 pixel does. These are the pixels where the target meets or nearly meets another person,
    which is where instances get merged. A ROI without both classes gets all ones.
    """
    if distance < 0:
        raise ValueError(f"instance separation distance must be >= 0, got {distance}")
    if weight <= 0:
        raise ValueError(f"instance separation weight must be > 0, got {weight}")
    target, other = targets == 1, targets == 2
    near_other = torch.isfinite(distance_to_mask(other, distance))
    near_target = torch.isfinite(distance_to_mask(target, distance))
    separating = (target & near_other) | (other & near_target)
    ones = torch.ones(targets.shape, dtype=torch.float32, device=targets.device)
    return torch.where(separating, ones * weight, ones)


def adaptive_scale(progress: float, schedule: str, final: float, *, initial: float) -> float:
    """The value of an annealed weight at ``progress`` ∈ [0, 1] of training.

    Goes from ``initial`` at progress 0 to ``final`` at progress 1 (``final`` = 1.0 means no extra
    weight at the end): value = final + (initial − final)·a(progress) with a = 1 for "constant" (no
    annealing: always ``initial``), a = 1 − progress for "linear", a = (1 + cos(π·progress)) / 2 for
    "cosine" (the seed's "high early, low late").
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    if schedule == "constant":
        factor = 1.0
    elif schedule == "linear":
        factor = 1.0 - progress
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown adaptive schedule {schedule!r}; expected one of {SCHEDULES}")
    return final + (initial - final) * factor


def distance_aware_weights(
    targets: Tensor,
    boundary_width: int,
    boundary_weight: float,
    instance_sep_distance: float,
    instance_sep_weight: float,
    progress: float = 0.0,
    schedule: str = "constant",
    final: float = 1.0,
) -> Tensor:
    """Boundary weights × instance-separation weights, with β and γ annealed by ``adaptive_scale``.

    With the default "constant" schedule the weights do not depend on ``progress``.
    """
    beta = adaptive_scale(progress, schedule, final, initial=boundary_weight)
    gamma = adaptive_scale(progress, schedule, final, initial=instance_sep_weight)
    return boundary_weights(targets, boundary_width, beta) * instance_separation_weights(
        targets, instance_sep_distance, gamma
    )


# ----------------------------------------------------------------------------------------------
# Multi-output losses.
# ----------------------------------------------------------------------------------------------


def cascade_loss(
    stage_logits: Sequence[Tensor] | Tensor,
    targets: Tensor,
    stage_weights: Sequence[float],
    base_loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> tuple[Tensor, dict[str, Tensor]]:
    """Σ_i stage_weights[i] · base_loss_fn(stage_logits[i], targets) over (coarse, refined, final).

    ``stage_logits`` is a list of [N, 3, M, M] (or a stacked [S, N, 3, M, M] tensor). Returns the total
    and the unweighted per-stage losses under ``stage1``, ``stage2``, ...
    """
    stages = list(stage_logits)
    if len(stages) != len(stage_weights):
        raise ValueError(
            f"cascade has {len(stages)} stages but {len(stage_weights)} stage_weights {tuple(stage_weights)}"
        )
    if not stages:
        raise ValueError("cascade_loss needs at least one stage")
    parts = {f"stage{i + 1}": base_loss_fn(logits, targets) for i, logits in enumerate(stages)}
    return _weighted_sum(stage_weights, list(parts.values())), parts


def _weighted_sum(weights: Sequence[float], values: Sequence[Tensor]) -> Tensor:
    total = weights[0] * values[0]
    for weight, value in zip(weights[1:], values[1:], strict=True):
        total = total + weight * value
    return total


def hierarchical_loss(
    outputs: Mapping[str, Tensor],
    targets: Tensor,
    class_weights: Tensor | None = None,
    bg_fg_weight: float = 1.0,
    target_other_weight: float = 1.5,
    final_weight: float = 1.0,
    consistency_weight: float = 0.1,
) -> dict[str, Tensor]:
    """Loss of the hierarchical decoder (original-system.md §9.2), as a dict of tensors.

    * ``bg_fg``: CE of ``bg_fg_logits`` [N, 2, M, M] against foreground = (targets > 0);
    * ``target_other``: CE of ``target_other_logits`` [N, 2, M, M] against (targets == 2), a weighted mean
      over foreground pixels only; 0 (and no gradient, no NaN) when the batch has no foreground;
    * ``final``: CE of the final ``logits`` [N, 3, M, M] against targets;
    * ``consistency``: MSE between p(background) from the bg/fg branch and from the final logits;
    * ``loss``: the weighted sum of the four.

    ``class_weights`` (3 entries) weight every pixel of the three CE terms by the weight of its true
    3-class label, each term normalised by its sum of weights.
    """
    for key in ("logits", "bg_fg_logits", "target_other_logits"):
        if key not in outputs:
            raise KeyError(f"hierarchical_loss needs outputs[{key!r}]; got keys {sorted(outputs)}")
    final_logits = outputs["logits"]
    bg_fg_logits, target_other_logits = outputs["bg_fg_logits"], outputs["target_other_logits"]
    _check_pair(final_logits, targets)
    _check_pair(bg_fg_logits, targets, channels=2, name="bg_fg_logits")
    _check_pair(target_other_logits, targets, channels=2, name="target_other_logits")
    weights = _pixel_class_weights(targets, class_weights)
    foreground = targets > 0

    bg_fg = weighted_cross_entropy(bg_fg_logits, foreground.long(), None, weights)
    fg_weights = foreground.float() if weights is None else weights * foreground
    target_other = weighted_cross_entropy(target_other_logits, (targets == 2).long(), None, fg_weights)
    final = weighted_cross_entropy(final_logits, targets, class_weights, None)
    p_bg_branch = F.softmax(bg_fg_logits.float(), dim=1)[:, 0]
    p_bg_final = F.softmax(final_logits.float(), dim=1)[:, 0]
    consistency = F.mse_loss(p_bg_branch, p_bg_final)
    loss = (
        bg_fg_weight * bg_fg
        + target_other_weight * target_other
        + final_weight * final
        + consistency_weight * consistency
    )
    return {
        "loss": loss,
        "bg_fg": bg_fg,
        "target_other": target_other,
        "final": final,
        "consistency": consistency,
    }


# ----------------------------------------------------------------------------------------------
# The entry point.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossSpec:
    """What ``compute_loss`` computes; ``edgeseg.engine.loss_spec`` builds it from the user config."""

    ce_weight: float = 1.0
    dice_weight: float = 1.0
    focal: bool = False
    focal_gamma: float = 2.0
    distance_aware: bool = False
    boundary_width: int = 5
    boundary_weight: float = 2.0
    instance_sep_distance: int = 5
    instance_sep_weight: float = 3.0
    adaptive: bool = False
    adaptive_schedule: str = "cosine"
    adaptive_final: float = 1.0
    cascade_stage_weights: tuple[float, ...] = (0.3, 0.3, 0.4)
    hierarchical: bool = False
    bg_fg_weight: float = 1.0
    target_other_weight: float = 1.5
    final_weight: float = 1.0
    consistency_weight: float = 0.1


def compute_loss(
    outputs: Mapping[str, Tensor],
    targets: Tensor,
    cfg: LossSpec,
    class_weights: Tensor | None,
    progress: float,
) -> tuple[Tensor, dict[str, float]]:
    """The training loss of one batch of ROIs and its components as floats.

    * ``outputs["stages"]`` present (cascade): ``loss`` = Σ_i stage_weight_i · base(stage_i);
    * ``cfg.hierarchical``: ``loss`` = ce_weight · hierarchical_loss + dice_weight · Dice(final logits);
    * otherwise ``loss`` = base(``outputs["logits"]``),

    where base = ce_weight · (CE or focal, with the distance-aware pixel weights when
    ``cfg.distance_aware``) + dice_weight · Dice(classes 1, 2). ``progress`` ∈ [0, 1] drives the
    annealing of the distance-aware weights when ``cfg.adaptive``.

    Components: ``loss``; ``ce`` and ``dice`` such that loss = ce_weight·ce + dice_weight·dice in every
    mode (``ce`` is the focal term with ``cfg.focal``, the stage-weighted sum in a cascade, and the
    hierarchical total for the hierarchical decoder); ``focal`` with ``cfg.focal``; ``stage1..3`` in a
    cascade (each stage's base loss); ``bg_fg``, ``target_other``, ``final``, ``consistency`` for the
    hierarchical decoder; ``boundary_weight_mean`` (mean distance-aware pixel weight) when on.
    """
    _check_outputs(outputs, cfg)
    if cfg.hierarchical:
        components = _hierarchical_components(outputs, targets, cfg, class_weights)
    else:
        components = _flat_components(outputs, targets, cfg, class_weights, progress)
    return components["loss"], {key: float(value.detach()) for key, value in components.items()}


def _check_outputs(outputs: Mapping[str, Tensor], cfg: LossSpec) -> None:
    if "logits" not in outputs:
        raise KeyError(f"head outputs need 'logits'; got keys {sorted(outputs)}")
    has_hierarchy = "bg_fg_logits" in outputs or "target_other_logits" in outputs
    if has_hierarchy != cfg.hierarchical:
        raise ValueError(
            f"LossSpec.hierarchical={cfg.hierarchical} but the head outputs are {sorted(outputs)}; "
            "the hierarchical loss and the hierarchical decoder go together"
        )
    if cfg.hierarchical and (cfg.focal or cfg.distance_aware or "stages" in outputs):
        raise ValueError(
            "the hierarchical loss does not combine with focal, distance_aware or cascade stages"
        )
    if cfg.adaptive and not cfg.distance_aware:
        raise ValueError("LossSpec.adaptive anneals the distance-aware weights; set distance_aware=True")


def _hierarchical_components(
    outputs: Mapping[str, Tensor], targets: Tensor, cfg: LossSpec, class_weights: Tensor | None
) -> dict[str, Tensor]:
    parts = hierarchical_loss(
        outputs, targets, class_weights, cfg.bg_fg_weight, cfg.target_other_weight, cfg.final_weight,
        cfg.consistency_weight,
    )  # fmt: skip
    ce = parts.pop("loss")
    dice = dice_loss(outputs["logits"], targets)
    return {**parts, "ce": ce, "dice": dice, "loss": cfg.ce_weight * ce + cfg.dice_weight * dice}


def _flat_components(
    outputs: Mapping[str, Tensor], targets: Tensor, cfg: LossSpec, class_weights: Tensor | None,
    progress: float,
) -> dict[str, Tensor]:  # fmt: skip
    """CE-or-focal + Dice on the logits, or on every cascade stage, stage-weighted."""
    components: dict[str, Tensor] = {}
    pixel_weights = None
    if cfg.distance_aware:
        pixel_weights = distance_aware_weights(
            targets, cfg.boundary_width, cfg.boundary_weight, cfg.instance_sep_distance,
            cfg.instance_sep_weight, progress, cfg.adaptive_schedule if cfg.adaptive else "constant",
            cfg.adaptive_final,
        )  # fmt: skip
        components["boundary_weight_mean"] = pixel_weights.mean()
    seen: list[tuple[Tensor, Tensor]] = []  # (ce-or-focal, dice) of each call of the base loss

    def base(logits: Tensor, labels: Tensor) -> Tensor:
        if cfg.focal:
            pixel = focal_loss(logits, labels, cfg.focal_gamma, class_weights, pixel_weights)
        else:
            pixel = weighted_cross_entropy(logits, labels, class_weights, pixel_weights)
        dice = dice_loss(logits, labels)
        seen.append((pixel, dice))
        return cfg.ce_weight * pixel + cfg.dice_weight * dice

    if "stages" in outputs:
        weights = cfg.cascade_stage_weights
        loss, stage_parts = cascade_loss(outputs["stages"], targets, weights, base)
        components.update(stage_parts)
        ce = _weighted_sum(weights, [pixel for pixel, _ in seen])
        dice = _weighted_sum(weights, [dice for _, dice in seen])
    else:
        loss = base(outputs["logits"], targets)
        ce, dice = seen[0]
    components.update(ce=ce, dice=dice, loss=loss)
    if cfg.focal:
        components["focal"] = ce
    return components
