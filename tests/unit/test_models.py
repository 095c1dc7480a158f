"""The head family, driven by the component registry: every decoder x fusion x variable-ROI x RGB combination."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from edgeseg.complexity import count_flops, count_parameters
from edgeseg.config import DECODER_NAMES as CONFIG_DECODERS
from edgeseg.config import FUSION_NAMES as CONFIG_FUSIONS
from edgeseg.config import ModelConfig
from edgeseg.models import build_head, list_components
from edgeseg.models.blocks import LayerNorm2d, ResidualBlock
from edgeseg.models.decoders import upsample_steps
from edgeseg.models.fusion import FpnFusion, SingleLayer
from edgeseg.models.pooling import ResizeConv
from edgeseg.models.registry import Registry

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@dataclass(frozen=True)
class FakeLayer:
    channels: int
    stride: int


INPUT_SIZE = 64
LAYERS = {"l4": FakeLayer(12, 4), "l8": FakeLayer(20, 8), "l16": FakeLayer(24, 16)}
ROIS = torch.tensor(
    [[0, 4.0, 6.0, 40.0, 50.0], [1, 30.0, 10.0, 64.0, 64.0], [1, -6.0, -4.0, 20.0, 12.0]], dtype=torch.float32
)


def make_features(layer_ids, batch_size=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(
            batch_size,
            LAYERS[lid].channels,
            INPUT_SIZE // LAYERS[lid].stride,
            INPUT_SIZE // LAYERS[lid].stride,
            generator=generator,
        )  # fmt: skip
        for lid in layer_ids
    ]


def make_image(batch_size=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(
        0, 256, (batch_size, 3, INPUT_SIZE, INPUT_SIZE), generator=generator, dtype=torch.uint8
    )


def config_for(
    decoder: str, fusion: str = "adaptive", variable: bool = False, rgb: bool = False, **kw
) -> ModelConfig:
    """A tiny config; the registered decoder 'cascade' is the plain decoder with cascade=True."""
    base = dict(
        layers=("l4", "l8", "l16"), fusion=fusion, roi_size=8, channels=16, mask_size=16, rgb_channels=8
    )
    if variable:
        base["roi_sizes"] = (16, 12, 8)  # 2x (stride-2 conv), 1.5x (resize + conv), equal (identity)
    if rgb:
        base["rgb_layers"] = ("l4", "l16")
    if decoder == "cascade":
        base.update(decoder="plain", cascade=True)
    else:
        base["decoder"] = decoder
    base.update(kw)
    return ModelConfig(**base)


EXTRA_OUTPUTS = {
    "plain": set(),
    "cascade": {"stages"},
    "hierarchical": {"bg_fg_logits", "target_other_logits"},
    "class_specific": set(),
}
DECODER_NAMES = list_components()["decoder"]
FUSION_NAMES = list_components()["fusion"]


def _covering_combinations() -> list[tuple[str, str, bool, bool]]:
    """Every decoder x fusion pair once; (variable, rgb) = the two bits of i XOR j, so for any one decoder
    (or any one fusion) the four rows also cover all four (variable, rgb) settings."""
    return [
        (decoder, fusion, bool((i ^ j) & 1), bool((i ^ j) & 2))
        for i, decoder in enumerate(DECODER_NAMES)
        for j, fusion in enumerate(FUSION_NAMES)
    ]


FAST_COMBINATIONS = _covering_combinations()
SLOW_COMBINATIONS = [
    combo
    for combo in itertools.product(DECODER_NAMES, FUSION_NAMES, [False, True], [False, True])
    if combo not in FAST_COMBINATIONS
]


def test_registry_matches_the_config_choices():
    components = list_components()
    assert set(components["fusion"]) == set(CONFIG_FUSIONS)
    assert set(components["decoder"]) == set(CONFIG_DECODERS) | {"cascade"}
    assert set(EXTRA_OUTPUTS) == set(components["decoder"]), (
        "a new decoder needs its expected outputs listed here"
    )


def test_registry_rejects_duplicates_and_unknown_names():
    registry: Registry = Registry("widget")
    registry.register("a")(nn.Identity)
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.register("a")(nn.ReLU)
    with pytest.raises(ValueError, match=r"unknown widget 'b'; registered: \['a'\]"):
        registry.get("b")


@pytest.mark.parametrize(("decoder", "fusion", "variable", "rgb"), FAST_COMBINATIONS)
def test_every_variant_trains_end_to_end(decoder, fusion, variable, rgb):
    check_variant(decoder, fusion, variable, rgb)


@pytest.mark.slow
@pytest.mark.parametrize(("decoder", "fusion", "variable", "rgb"), SLOW_COMBINATIONS)
def test_every_variant_trains_end_to_end_full_product(decoder, fusion, variable, rgb):
    check_variant(decoder, fusion, variable, rgb)


def check_variant(decoder: str, fusion: str, variable: bool, rgb: bool) -> None:
    torch.manual_seed(0)
    cfg = config_for(decoder, fusion, variable, rgb)
    head = build_head(cfg, LAYERS)
    assert head.needs_image == rgb
    assert head.layer_ids == ("l4", "l8", "l16")
    features = make_features(head.layer_ids)
    image = make_image() if rgb else None

    out = head(features, ROIS, image)
    assert out["logits"].shape == (len(ROIS), 3, cfg.mask_size, cfg.mask_size)
    assert set(out) == {"logits"} | EXTRA_OUTPUTS[decoder]
    assert torch.isfinite(out["logits"]).all()

    # Every parameter must shape the final logits: no dead modules reach the optimizer.
    weights = torch.randn_like(out["logits"])
    (out["logits"] * weights).sum().backward()
    dead = [name for name, p in head.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert dead == []

    assert count_parameters(head) > 0
    assert count_flops(head, (features, ROIS[:1], image)) > 0


@pytest.mark.parametrize("decoder", DECODER_NAMES)
def test_zero_rois_give_empty_logits(decoder):
    head = build_head(config_for(decoder, rgb=True), LAYERS).eval()
    with torch.no_grad():
        out = head(make_features(head.layer_ids), torch.zeros(0, 5), make_image())
    assert out["logits"].shape == (0, 3, 16, 16)


def test_cascade_is_three_real_stages_on_top_of_the_plain_head():
    # Built from the same seed, the cascade's pooler, fusion, trunk, upsampling and first classifier are
    # created exactly like the plain head's, so its coarse stage must equal the plain head's logits,
    # while the refined and final stages must change them.
    features = make_features(("l4", "l8", "l16"))
    torch.manual_seed(3)
    plain = build_head(config_for("plain"), LAYERS).eval()
    torch.manual_seed(3)
    cascade = build_head(config_for("cascade"), LAYERS).eval()
    with torch.no_grad():
        plain_logits = plain(features, ROIS)["logits"]
        out = cascade(features, ROIS)
    coarse, refined, final = out["stages"]
    assert out["stages"].shape == (3, len(ROIS), 3, 16, 16)
    torch.testing.assert_close(coarse, plain_logits)
    torch.testing.assert_close(final, out["logits"])
    assert (refined - coarse).abs().max() > 1e-3
    assert (final - refined).abs().max() > 1e-3
    assert (out["logits"] - plain_logits).abs().max() > 1e-3


@pytest.mark.parametrize("training", [True, False])
def test_hierarchical_combines_its_branches_as_specified(training):
    head = build_head(config_for("hierarchical", variable=True), LAYERS).train(training)
    out = head(make_features(head.layer_ids), ROIS)
    bg_fg, target_other = out["bg_fg_logits"].detach(), out["target_other_logits"].detach()
    assert bg_fg.shape == target_other.shape == (len(ROIS), 2, 16, 16)
    p_fg = torch.exp(bg_fg[:, 1]) / (torch.exp(bg_fg[:, 0]) + torch.exp(bg_fg[:, 1]))
    expected = torch.stack(
        [bg_fg[:, 0], bg_fg[:, 1] + target_other[:, 0] * p_fg, bg_fg[:, 1] + target_other[:, 1] * p_fg], dim=1
    )
    torch.testing.assert_close(out["logits"].detach(), expected)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"decoder": "hierarchical", "cascade": True}, "model.cascade"),
        ({"decoder": "class_specific", "cascade": True}, "model.cascade"),
        ({"rgb_layers": ("l4", "l32")}, "model.rgb_layers"),
        ({"roi_sizes": (16, 8)}, "model.roi_sizes"),
        ({"fusion": "attention"}, "model.fusion"),
        ({"decoder": "unet"}, "model.decoder"),
        ({"decoder": "cascade"}, "model.decoder"),
        ({"layers": ("l4", "l64")}, "model.layers"),
        ({"layers": ("l4", "l4")}, "model.layers"),
        ({"output_prior": "learned"}, "model.output_prior"),
    ],
)
def test_unsupported_combinations_raise_naming_the_field(changes, key):
    cfg = ModelConfig(**{**config_for("plain").__dict__, **changes})
    with pytest.raises(ValueError, match=key):
        build_head(cfg, LAYERS)


def test_plain_head_parameter_count_by_hand():
    # One layer (12 ch) -> reducer 1x1 12->16 (no bias) + norm: 12*16 + 2*16 = 224
    # trunk ResBlock(16) x2: 2 * (2*9*16*16 + 4*16) = 9344
    # up ConvT 16->8 k2 (no bias) + norm: 16*8*4 + 2*8 = 528;  ResBlock(8): 2*9*8*8 + 4*8 = 1184
    # classifier 1x1 8->3 with bias: 27
    head = build_head(config_for("plain", layers=("l4",)), LAYERS)
    assert isinstance(head.fusion, SingleLayer)
    assert count_parameters(head) == 224 + 9344 + 528 + 1184 + 27
    assert count_parameters(ResidualBlock(256)) == 2 * 9 * 256 * 256 + 4 * 256


def test_variable_roi_sizes_pick_the_right_adjusters():
    head = build_head(config_for("plain", variable=True), LAYERS)
    adjusters = [branch.adjust for branch in head.pooler.branches]
    assert isinstance(adjusters[0][0], nn.Conv2d) and adjusters[0][0].stride == (2, 2)  # 16 -> 8
    assert isinstance(adjusters[1], ResizeConv)  # 12 -> 8
    assert isinstance(adjusters[2], nn.Identity)  # 8 == 8
    pooled = head.pooler(make_features(head.layer_ids), ROIS)
    assert [tuple(p.shape) for p in pooled] == [(len(ROIS), 16, 8, 8)] * 3
    assert [b.align.output_size for b in head.pooler.branches] == [(16, 16), (12, 12), (8, 8)]


def test_rgb_branch_uses_the_image_and_only_on_its_layers():
    head = build_head(config_for("plain", rgb=True), LAYERS).eval()
    assert head.pooler.extra_channels == {"l4": 8, "l16": 8}
    assert head.rgb is not None and head.rgb.roi_sizes == (8, 8)
    features = make_features(head.layer_ids)
    with torch.no_grad():
        a = head(features, ROIS, make_image(seed=1))["logits"]
        b = head(features, ROIS, make_image(seed=2))["logits"]
        c = head(features, ROIS, make_image(seed=1).float())["logits"]  # uint8 and float 0..255 agree
    assert (a - b).abs().max() > 1e-4
    torch.testing.assert_close(a, c)
    with pytest.raises(ValueError, match="pass image"):
        head(features, ROIS)
    plain = build_head(config_for("plain"), LAYERS)
    with pytest.raises(ValueError, match="no RGB branch"):
        plain(features, ROIS, make_image())


def test_adaptive_fusion_starts_as_the_mean_and_fpn_orders_coarse_to_fine():
    head = build_head(config_for("plain", fusion="adaptive"), LAYERS)
    parts = [torch.randn(2, 16, 8, 8) for _ in range(3)]
    torch.testing.assert_close(head.fusion(parts), sum(parts) / 3)
    assert FpnFusion(3, 16, [4, 8, 16]).order == (2, 1, 0)
    # Equal strides: the layer listed later counts as deeper (coarser).
    assert FpnFusion(3, 16, [4, 8, 8]).order == (2, 1, 0)
    assert FpnFusion(3, 16, [8, 4, 8]).order == (2, 0, 1)


def test_upsample_steps_and_mask_sizes():
    assert [upsample_steps(r, m) for r, m in [(28, 56), (14, 28), (12, 28), (28, 28), (7, 56), (28, 16)]] == [
        1, 1, 1, 0, 3, 0,
    ]  # fmt: skip
    for roi_size, mask_size in [(12, 28), (10, 10), (14, 20)]:
        head = build_head(
            config_for("cascade", roi_size=roi_size, mask_size=mask_size, layers=("l8",)), LAYERS
        )
        out = head(make_features(head.layer_ids), ROIS)
        assert out["logits"].shape[-2:] == (mask_size, mask_size)
        assert head.mask_size == mask_size


def test_layernorm2d_is_groupnorm_with_one_group():
    x = torch.randn(3, 6, 5, 4)
    norm, reference = LayerNorm2d(6), nn.GroupNorm(1, 6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6))
        norm.bias.copy_(torch.randn(6))
        reference.weight.copy_(norm.weight)
        reference.bias.copy_(norm.bias)
    torch.testing.assert_close(norm(x), reference(x))
    # Per-sample statistics: a sample's output does not depend on the others in the batch.
    torch.testing.assert_close(norm(x[:1]), norm(x)[:1])


def test_roi_coordinates_give_each_cell_its_place_in_the_roi():
    plain = build_head(config_for("plain", layers=("l4",)), LAYERS)
    head = build_head(config_for("plain", layers=("l4",), roi_coords=True), LAYERS)
    assert plain.coordinates is None and head.coordinates is not None
    assert count_parameters(head) == count_parameters(plain) + 2 * 16  # one 1x1 conv 2 -> 16, no bias
    grid = head.coordinates.grid
    assert grid.shape == (1, 2, 8, 8)
    assert grid[0, 0, 0, 0] == pytest.approx(-7 / 8) and grid[0, 0, 0, -1] == pytest.approx(
        7 / 8
    )  # u along x
    assert torch.equal(grid[0, 1, :, 0], grid[0, 0, 0, :])  # v along y
    flat = torch.zeros(3, 16, 8, 8)
    embedded = head.coordinates(flat)
    assert embedded[0].flatten(1).std(dim=1).max() > 0  # identical cells become different by position
    torch.testing.assert_close(embedded[0], embedded[2])  # the same place in every ROI
    with pytest.raises(ValueError, match="built for"):
        head.coordinates(torch.zeros(1, 16, 4, 4))


@pytest.mark.parametrize("decoder", ["plain", "cascade", "hierarchical", "class_specific"])
def test_output_prior_biases_every_class_output_by_the_same_map(decoder):
    torch.manual_seed(0)
    head = build_head(config_for(decoder, output_prior="spatial"), LAYERS).eval()
    assert head.prior is not None and head.prior.bias.shape == (1, 3, 16, 16)
    probabilities = torch.softmax(torch.randn(3, 16, 16), dim=0)
    head.prior.initialise(probabilities.log())
    bias = head.prior.bias.detach()[0]
    torch.testing.assert_close(bias.sum(dim=0), torch.zeros(16, 16), atol=1e-5, rtol=0)  # centred
    torch.testing.assert_close(torch.softmax(bias, dim=0), probabilities)  # same probabilities
    features = make_features(head.layer_ids)
    with torch.no_grad():
        out = head(features, ROIS)
        raw = head.decoder(head.fusion(head.pooler(features, ROIS)))  # no ROI coordinates in config_for
    torch.testing.assert_close(out["logits"] - raw["logits"], bias.expand_as(out["logits"]))
    assert set(out) == set(raw)
    if decoder == "cascade":
        torch.testing.assert_close(out["stages"] - raw["stages"], bias.expand_as(out["stages"]))
    if decoder == "hierarchical":
        fg = torch.logsumexp(bias[1:3], dim=0)
        torch.testing.assert_close(out["bg_fg_logits"][0, 0] - raw["bg_fg_logits"][0, 0], bias[0])
        torch.testing.assert_close(out["bg_fg_logits"][0, 1] - raw["bg_fg_logits"][0, 1], fg)
        torch.testing.assert_close(out["target_other_logits"][0] - raw["target_other_logits"][0], bias[1:3])


def test_global_output_prior_is_one_bias_per_class_and_trains():
    head = build_head(config_for("plain", output_prior="global"), LAYERS)
    assert head.prior is not None and head.prior.bias.shape == (1, 3, 1, 1)
    cells = torch.tensor([0.5, 0.3, 0.2])[:, None, None].expand(3, 16, 16).clone()
    cells[:, :8] = torch.tensor([0.1, 0.6, 0.3])[:, None, None]  # the mean over cells is 0.3 / 0.45 / 0.25
    head.prior.initialise(cells.log())
    torch.testing.assert_close(
        torch.softmax(head.prior.bias.detach().flatten(), 0), torch.tensor([0.3, 0.45, 0.25])
    )
    plain = build_head(config_for("plain"), LAYERS)
    assert count_parameters(head) == count_parameters(plain) + 3
    head(make_features(head.layer_ids), ROIS)["logits"].sum().backward()
    assert head.prior.bias.grad is not None and head.prior.bias.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[3, 16, 16\] log prior"):
        head.prior.initialise(torch.zeros(3, 8, 8))
