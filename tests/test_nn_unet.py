"""The global U-Net baseline, enforce_locality (the intervention) and localize (the sampling-time form)."""

from __future__ import annotations

import pytest
import torch
from _nn_helpers import cheb_to_points, jacobian_cond

from localscore import Conditions, LocalScoreError
from localscore.compose import projective_from
from localscore.denoisers import conditioner_radius
from localscore.masks import DiscRule
from localscore.nn import (
    GlobalConditionalDenoiser,
    LocalConditionalDenoiser,
    MaskedCrossAttention,
    UNetConfig,
    enforce_locality,
    localize,
    register_locality_patch,
)

TINY = {"base_width": 8, "channel_mult": (1, 2), "attention_levels": (0, 1), "attr_dim": 3, "token_dim": 8,
        "heads": 2, "groups": 4, "sigma_embed_dim": 16, "fourier_freqs": 3}
# the same U-Net without its whole-image pathways: only downsampling remains non-local
PIXEL_LOCALISH = {**TINY, "norm": "channel", "mid_self_attention": False, "pooled_embedding": False}


def unet(**kw: object) -> GlobalConditionalDenoiser:
    torch.manual_seed(11)
    return GlobalConditionalDenoiser(**{**TINY, **kw}).double()  # type: ignore[arg-type]


def one_object(pos: tuple[float, float], seed: int = 0) -> Conditions:
    g = torch.Generator().manual_seed(seed)
    return Conditions(torch.tensor([[pos]], dtype=torch.float64), torch.randn(1, 1, 3, generator=g,
                                                                               dtype=torch.float64))


def test_global_baseline_is_global() -> None:
    D = unet()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    Jc = jacobian_cond(D, x, 1.0, one_object((0.0, 0.0)))
    assert bool((Jc[..., 0] > 0).all()), "a corner object should influence every pixel of the global U-Net"
    assert D.receptive_radius is None and conditioner_radius(D) is None


@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("layers", [0, 2])
def test_token_encoder_makes_tokens_see_each_other(layers: int) -> None:
    D = unet(token_encoder_layers=layers, attention_levels=(), mid_cross_attention=False, pooled_embedding=True)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    cond = Conditions(torch.tensor([[[1.0, 1.0], [6.0, 6.0]]], dtype=torch.float64),
                      torch.randn(1, 2, 3, dtype=torch.float64))
    tok = D.inner.encoder(cond.pos, cond.attr)
    if D.inner.token_encoder is not None:
        J = torch.func.jacrev(lambda a: D.inner.token_encoder(D.inner.encoder(cond.pos, a), cond.valid))(cond.attr)
        assert float(J[0, 0, :, 0, 1].detach().abs().sum()) > 0  # token 0 depends on object 1's attributes
    else:
        J = torch.func.jacrev(lambda a: D.inner.encoder(cond.pos, a))(cond.attr)
        assert float(J[0, 0, :, 0, 1].detach().abs().sum()) == 0
    assert tok.shape == (1, 2, 8)
    # and an empty set works (the global token keeps the sequence non-empty)
    out = D(x, 1.0, Conditions.empty(1, attr_dim=3, dtype=torch.float64))
    assert torch.isfinite(out).all()


def test_unet_sizes_and_bad_input() -> None:
    D = unet(channel_mult=(1, 2, 2), attention_levels=(2,))
    assert D.config.downsampling == 4
    assert D(torch.randn(2, 3, 12, 8, dtype=torch.float64), 0.5).shape == (2, 3, 12, 8)
    with pytest.raises(LocalScoreError, match="multiples of 4"):
        D(torch.randn(1, 3, 10, 8, dtype=torch.float64), 0.5)
    with pytest.raises(LocalScoreError, match="channels"):
        D(torch.randn(1, 1, 8, 8, dtype=torch.float64), 0.5)
    with pytest.raises(LocalScoreError, match="attention_levels"):
        UNetConfig(attention_levels=(5,))
    with pytest.raises(LocalScoreError, match="divisible"):
        UNetConfig(base_width=10, groups=4)


def test_unet_state_dict_round_trip() -> None:
    D = unet(token_encoder_layers=1)
    E = GlobalConditionalDenoiser(UNetConfig.from_dict(D.config.to_dict())).double()
    E.load_state_dict(D.state_dict())
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    c = one_object((2.0, 5.0))
    assert torch.equal(D(x, 0.3, c), E(x, 0.3, c))


# ---------------------------------------------------------------- enforce_locality

def test_enforce_locality_shares_weights_reports_and_restores() -> None:
    D = unet(token_encoder_layers=1)
    local = enforce_locality(D, DiscRule(1.5))
    names = " ".join(local.report.patched)
    assert len(local.report.patched) == 5 and "MaskedCrossAttention" in names
    kinds = " ".join(r for _, r in local.report.nonlocal_pathways)
    for word in ("token encoder", "pooled set embedding", "global self-attention", "normalisation", "downsampling"):
        assert word in kinds
    assert not local.report.exact and "coarse" in local.report.guarantee
    # weights shared, original untouched
    assert all(p is q for p, q in zip(D.parameters(), local.inner.parameters()))
    assert all(m.locality_rule is None for m in D.modules() if isinstance(m, MaskedCrossAttention))
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    c = one_object((1.0, 1.0))
    with torch.no_grad():
        before = D(x, 1.0, c)
        patched = local(x, 1.0, c)
    assert float((patched - before).abs().max()) > 1e-6  # the mask changes the function
    local.restore()
    assert torch.equal(local(x, 1.0, c), before)
    # in place, as a context manager
    with enforce_locality(D, DiscRule(1.5), copy=False) as inplace:
        assert torch.allclose(inplace(x, 1.0, c), patched, atol=1e-12)
        assert torch.allclose(D(x, 1.0, c), patched, atol=1e-12)
    assert torch.equal(D(x, 1.0, c), before)
    assert "UNPATCHED" not in str(local.report)


def test_masking_a_downsampling_unet_gives_only_coarse_locality() -> None:
    """Measured: after enforce_locality the global U-Net's conditioner influence still reaches every pixel;
    without its whole-image pathways it is bounded, but far beyond the rule's support."""
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c = one_object((3.0, 3.0))
    dist = cheb_to_points(16, 16, c.pos[0])[..., 0]
    rule = DiscRule(1.0)
    full = enforce_locality(unet(), rule)
    J = jacobian_cond(full, x, 1.0, c)[..., 0]
    assert bool((J > 0).all()), "GroupNorm / pooled embedding / self-attention keep it global"
    part = enforce_locality(unet(**PIXEL_LOCALISH), rule)
    assert [n for n, _ in part.report.nonlocal_pathways] == ["inner.downsamplers.0"]
    J = jacobian_cond(part, x, 1.0, c)[..., 0]
    reach = float(dist[J > 0].max())
    far_share = float(J[dist > 1 + 3].sum() / J.sum())  # beyond support + a 3 px conv stack
    print(f"masked pixel-local-ish U-Net: reach {reach} px, {far_share:.1%} of influence beyond 4 px")
    assert 1 + 3 < reach < 15, reach  # bounded, but coarse
    assert far_share > 0.01, far_share


def test_enforce_locality_on_the_local_network_is_exact_and_tight() -> None:
    torch.manual_seed(12)
    D = LocalConditionalDenoiser(width=8, heads=2, token_dim=8, sigma_embed_dim=16, relative_freqs=3, attr_dim=3,
                                 depth=1, cond_radius=3.0).double()
    assert D.conditioner_radius == 3 + 3
    local = enforce_locality(D, DiscRule(1.0))
    assert local.report.exact and "exact" in local.report.guarantee
    assert local.conditioner_radius == 1 + 3 and conditioner_radius(local) == 4
    assert D.conditioner_radius == 6  # the original is untouched
    H = 13
    x = torch.randn(1, 3, H, H, dtype=torch.float64)
    c = one_object((6.0, 6.0))
    J = jacobian_cond(local, x, 0.8, c)[..., 0]
    dist = cheb_to_points(H, H, c.pos[0])[..., 0]
    assert torch.all(J[dist > 4] == 0) and float(dist[J > 0].max()) == 4


def test_register_locality_patch_and_unpatchable_layers_are_reported() -> None:
    class ThirdPartyCrossAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rule = None

    class Other(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = ThirdPartyCrossAttention()
            self.mha = torch.nn.MultiheadAttention(4, 1)

    model = Other()
    rep = enforce_locality(model, DiscRule(1.0)).report
    assert not rep.patched and {n for n, _ in rep.unpatched} == {"a", "mha"}
    assert rep.guarantee.startswith("none")

    def patch(m: torch.nn.Module, rule: object):  # type: ignore[no-untyped-def]
        old, m.rule = m.rule, rule
        return lambda: setattr(m, "rule", old)

    register_locality_patch(ThirdPartyCrossAttention, patch)
    with enforce_locality(model, DiscRule(1.0), copy=False) as local:
        assert model.a.rule == DiscRule(1.0)
        assert local.report.patched == ["a (ThirdPartyCrossAttention, registered patch)"]
    assert model.a.rule is None
    with pytest.raises(LocalScoreError, match="MaskRule"):
        enforce_locality(model, 3.0)  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match=r"nn\.Module"):
        enforce_locality(lambda x: x, DiscRule(1.0))  # type: ignore[arg-type]


# ---------------------------------------------------------------- localize: the sampling-time form

@pytest.mark.parametrize("crop", [None, 8])
def test_localize_makes_the_global_unet_exactly_conditionally_local(crop: int | None) -> None:
    D = unet()
    rule = DiscRule(2.0)
    L = localize(D, rule, crop=crop)
    assert L.conditioner_radius == 2 and conditioner_radius(L) == 2
    H = 12
    x = torch.randn(1, 3, H, H, dtype=torch.float64)
    cond = Conditions(torch.tensor([[[3.0, 4.0], [8.0, 9.0]]], dtype=torch.float64),
                      torch.randn(1, 2, 3, dtype=torch.float64))
    Jc = jacobian_cond(L, x, 1.0, cond)
    dist = cheb_to_points(H, H, cond.pos[0])
    assert torch.all(Jc[dist > 2] == 0)
    assert float(dist[..., 0][Jc[..., 0] > 0].max()) == 2
    if crop is not None:  # the conditional part only reads pixels in the object's window
        def f(xx: torch.Tensor) -> torch.Tensor:
            return L(xx, 1.0, cond)[0, :, 3, 4] - D(xx, 1.0, None)[0, :, 3, 4]

        J = torch.func.jacrev(f)(x)[:, 0].detach().abs().sum((0, 1))  # [H, W]
        assert float(J.sum()) > 0
        assert torch.all(J[8:, :] == 0) and torch.all(J[:, 8:] == 0)  # window rows 0..7, cols 0..7


def test_localize_matches_explicit_gated_composition_and_checks_input() -> None:
    D = unet()
    rule = DiscRule(1.5)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    cond = Conditions(torch.tensor([[[1.0, 1.0], [5.0, 6.0]], [[3.0, 3.0], [0.0, 0.0]]], dtype=torch.float64),
                      torch.randn(2, 2, 3, dtype=torch.float64), torch.tensor([[True, True], [True, False]]))
    out = localize(D, rule)(x, 0.7, cond)
    d0 = D(x, 0.7, None)
    expected = d0.clone()
    for j in range(2):
        m = rule(cond.select(j), (8, 8)).to(x.dtype)  # [B, 1, H, W]
        expected = expected + m * (D(x, 0.7, cond.select(j)) - d0)
    assert torch.allclose(out, expected, atol=1e-10)
    with pytest.raises(LocalScoreError, match="too small"):
        localize(D, rule, crop=4)
    with pytest.raises(LocalScoreError, match="larger than the image"):
        localize(D, rule, crop=16)(x, 0.7, cond)


def test_localize_bad_input() -> None:
    D = unet()
    with pytest.raises(LocalScoreError, match="Conditions"):
        localize(D, DiscRule(1.0))(torch.randn(1, 3, 8, 8, dtype=torch.float64), 1.0, [(1, 1)])  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="support"):
        localize(D, DiscRule(lambda s: s))
    with pytest.raises(LocalScoreError, match="MaskRule"):
        localize(D, 2.0)  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="B = 2"):
        localize(D, DiscRule(1.0))(torch.randn(1, 3, 8, 8, dtype=torch.float64), 1.0,
                                   Conditions.from_lists([[(1, 1)], [(2, 2)]], attrs=[[[1, 0, 0]], [[1, 0, 0]]],
                                                         dtype=torch.float64))
    # no conditioners: exactly the unconditional model
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    assert torch.equal(localize(D, DiscRule(1.0))(x, 1.0, None), D(x, 1.0, None))


def test_masked_unet_sampled_on_windows_changes_only_inside_the_objects_mask() -> None:
    D = unet()
    rule = DiscRule(2.0)
    L = localize(enforce_locality(D, rule), rule, crop=8)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pos = torch.tensor([[[4.0, 4.0], [11.0, 10.0]]], dtype=torch.float64)
    attr = torch.randn(1, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    attr2 = attr.clone()
    attr2[0, 1] += 1.0  # edit object 1 only
    with torch.no_grad():
        diff = (L(x, 0.5, Conditions(pos, attr)) - L(x, 0.5, Conditions(pos, attr2))).abs().amax(1)[0]
    inside = rule(Conditions(pos[:, 1:]), (16, 16))[0, 0]
    assert float(diff[~inside].max()) == 0.0 and float(diff[inside].max()) > 0


class _Declared:
    """Declares radii for the network it wraps (``inner``), so that only the translation flag can stop a crop."""

    receptive_radius = 1
    conditioner_radius = 3

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def __call__(self, x: torch.Tensor, sigma: object, cond: Conditions | None = None) -> torch.Tensor:
        return self.inner(x, sigma, cond)  # type: ignore[operator]


def test_translation_equivariance_declarations() -> None:
    """compose's crop strategy reads the flag through the .inner chain (public route: evaluate and plan)."""
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    cond = one_object((4.0, 5.0))
    assert GlobalConditionalDenoiser(**TINY).translation_equivariant is False
    for D in (unet(), localize(unet(), DiscRule(1.0))):
        comp = projective_from(_Declared(D), cond)
        with pytest.raises(LocalScoreError, match="GlobalConditionalDenoiser declares translation_equivariant = False"):
            comp.evaluate(x, 1.0, strategy="crop")
        assert comp.plan(x, 1.0) == "sequential"  # auto never crops it (on the CPU)
    local = LocalConditionalDenoiser(width=8, heads=2, attr_dim=3).double()
    assert local.translation_equivariant is True
    assert projective_from(local, cond).plan(x, 1.0) == "crop"
    assert LocalConditionalDenoiser(width=8, heads=2, absolute_positions=True).translation_equivariant is False


def test_relative_freqs_give_every_cross_attention_the_token_offsets_and_stay_global() -> None:
    """relative_freqs: each cross-attention gets Fourier features of p_k - x_q, wavelengths 2..position_scale."""
    D = unet(relative_freqs=3, position_scale=8.0)
    layers = [m for m in D.modules() if isinstance(m, MaskedCrossAttention)]
    assert len(layers) == 2 * 2 + 1  # down and up at levels 0 and 1, and the middle
    for layer in layers:
        assert layer.relative is not None
        torch.testing.assert_close(layer.relative.omega.double(), 2 * torch.pi / torch.tensor([2.0, 4.0, 8.0],
                                                                                               dtype=torch.float64))
    assert all(m.relative is None for m in unet().modules() if isinstance(m, MaskedCrossAttention))
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    Jc = jacobian_cond(D, x, 1.0, one_object((0.0, 0.0)))
    assert bool((Jc[..., 0] > 0).all()), "every pixel still attends to every token: the U-Net stays global"
    with pytest.raises(LocalScoreError, match="relative_freqs"):
        UNetConfig(relative_freqs=-1)


def test_concept_tokens_ignore_positions_and_still_condition() -> None:
    """``token_positions=False``: the output depends on the attributes only (a colour concept has no place)."""
    D = unet(token_positions=False)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = torch.full((2,), 0.7, dtype=torch.float64)
    attr = torch.randn(2, 1, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    here = Conditions(torch.zeros(2, 1, 2, dtype=torch.float64), attr)
    there = Conditions(torch.tensor([[[6.0, 1.0]], [[2.0, 7.0]]], dtype=torch.float64), attr)
    with torch.no_grad():
        out = D(x, sigma, here)
        torch.testing.assert_close(D(x, sigma, there), out, atol=0, rtol=0)
        other = Conditions(here.pos, attr + 1.0)
        assert float((D(x, sigma, other) - out).abs().max()) > 1e-6      # the attributes do condition
        with_pos = unet()
        assert float((with_pos(x, sigma, there) - with_pos(x, sigma, here)).abs().max()) > 1e-6
    for bad, match in (({"relative_freqs": 2}, "relative_freqs"), ({"attr_dim": 0}, "attr_dim"),
                       ({"token_positions": 0}, "token_positions")):
        with pytest.raises(LocalScoreError, match=match):
            UNetConfig(**{**TINY, "token_positions": False, **bad})  # type: ignore[arg-type]
