"""LocalConditionalDenoiser: exact locality (dense Jacobians), no slack, properties, the one-pass identity."""

from __future__ import annotations

import math

import pytest
import torch
from _nn_helpers import SMALL, cheb_grid, cheb_to_points, dilate, jacobian_cond, jacobian_x
from hypothesis import given
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError
from localscore.denoisers import conditioner_radius, receptive_radius
from localscore.masks import DiscRule, GaussianRule
from localscore.nn import (
    CondContext,
    FourierFeatures,
    LocalConditionalDenoiser,
    LocalNetConfig,
    LocalScoreNet,
    MaskedCrossAttention,
    RenderedConditioning,
    rotate_features,
)


def small(**kw: object) -> LocalConditionalDenoiser:
    cfg = {**SMALL, **kw}
    return LocalConditionalDenoiser(**cfg).double()  # type: ignore[arg-type]


def rand_cond(pos: list[tuple[float, float]], A: int = 3, seed: int = 0) -> Conditions:
    g = torch.Generator().manual_seed(seed)
    p = torch.tensor([pos], dtype=torch.float64)
    return Conditions(p, torch.randn(1, len(pos), A, generator=g, dtype=torch.float64) if A else None)


CONFIGS = [
    {"depth": 1},
    {"depth": 2, "conditioning": "render", "width": 12},
    {"depth": 1, "kernel_size": 5, "cond_blocks": "first", "width": 4, "heads": 1},
    {"depth": 1, "self_attention_radius": 1, "width": 6, "heads": 3},
    {"depth": 2, "cond_blocks": "first", "norm": "none", "relative_freqs": 0},
    {"depth": 1, "head_kernel_size": 5, "width": 10},
]
SIGMAS = [0.8, 0.02, 30.0, 1.3, 5.0, 0.3]


@pytest.mark.parametrize(("kw", "sigma"), list(zip(CONFIGS, SIGMAS)))
def test_pixel_dependence_is_exactly_local_and_tight(kw: dict, sigma: float) -> None:
    torch.manual_seed(1)
    D = small(**kw)
    R = D.receptive_radius
    assert R == receptive_radius(D) and isinstance(R, int)
    H = W = min(2 * R + 3, 15)
    x = torch.randn(1, 3, H, W, dtype=torch.float64)
    cond = rand_cond([(H / 2, W / 2 - 1.3), (1.0, 2.0)])
    J = jacobian_x(D, x, sigma, cond)
    d = cheb_grid(H, W)
    assert torch.all(J[d > R] == 0), "dependence outside the receptive radius"
    assert d[J > 0].max().item() == R, "declared receptive radius has slack (radius - 1 is not violated)"


@pytest.mark.parametrize("kw", [*CONFIGS[:4], {"depth": 1, "cond_rule": "gaussian", "cond_radius": 1.0,
                                               "gaussian_truncate": 2.0},
                                {"depth": 1, "cond_rule": "box", "cond_radius": 1.0}])
def test_conditioner_dependence_is_exactly_local_and_tight(kw: dict) -> None:
    kw = {"cond_radius": 2.0, **kw}
    sigma = float(torch.empty(()).uniform_(0.05, 10.0, generator=torch.Generator().manual_seed(len(str(kw)))))
    torch.manual_seed(2)
    D = small(**kw)
    r = D.conditioner_radius
    assert r == conditioner_radius(D) and isinstance(r, int)
    H = W = 2 * r + 3
    x = torch.randn(1, 3, H, W, dtype=torch.float64)
    c = H // 2
    cond = rand_cond([(float(c), float(c)), (1.0, float(W - 2))])  # on pixel centres
    Jc = jacobian_cond(D, x, sigma, cond)
    dist = cheb_to_points(H, W, cond.pos[0])
    assert torch.all(Jc[dist > r] == 0), "dependence on a conditioner outside the conditioner radius"
    assert dist[..., 0][Jc[..., 0] > 0].max().item() == r, "conditioner radius has slack"
    assert D.conditioner_reach == pytest.approx(D.inner.support + (r - math.ceil(D.inner.support)))


def test_sigma_dependent_rule_with_a_bound() -> None:
    torch.manual_seed(13)
    rule = DiscRule(lambda s: 1.0 + s, bound=2.0)  # grows with the noise level, capped at 2 px
    D = LocalConditionalDenoiser(LocalNetConfig(**{**SMALL, "depth": 1}), rule=rule).double()  # type: ignore[arg-type]
    assert D.conditioner_radius == 2 + 3
    H = 13
    x = torch.randn(1, 3, H, H, dtype=torch.float64)
    cond = rand_cond([(6.0, 6.0)])
    dist = cheb_to_points(H, H, cond.pos[0])[..., 0]
    for sigma, reach in ((0.3, 1 + 3), (5.0, 2 + 3)):  # radius 1.3 -> floor 1 on the pixel grid; capped 2
        Jc = jacobian_cond(D, x, sigma, cond)[..., 0]
        assert float(dist[Jc > 0].max()) == reach


@pytest.mark.parametrize("R", [3, 4, 5, 6, 7, 10, 11])
def test_config_for_a_requested_receptive_radius(R: int) -> None:
    cfg = LocalNetConfig.for_receptive_radius(R, width=8, heads=2)
    assert cfg.receptive_radius == R
    assert LocalConditionalDenoiser(cfg).receptive_radius == R


def test_radii_formula_and_group_norm_declares_none() -> None:
    cfg = LocalNetConfig(depth=3, kernel_size=5, self_attention_radius=2, cond_radius=2.5)
    assert cfg.receptive_radius == 2 + 3 * (4 + 2) + 2
    assert cfg.conditioner_radius == 3 + 3 * (4 + 2) + 2
    D = LocalConditionalDenoiser(cfg)
    assert (D.receptive_radius, D.conditioner_radius) == (cfg.receptive_radius, cfg.conditioner_radius)
    G = LocalConditionalDenoiser(width=8, heads=2, groups=4, norm="group", attr_dim=0)
    assert G.receptive_radius is None and G.conditioner_radius is None


def test_group_norm_really_is_global() -> None:
    torch.manual_seed(3)
    D = LocalConditionalDenoiser(**{**SMALL, "norm": "group", "groups": 4, "depth": 1}).double()
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    J = jacobian_x(D, x, 0.5, None)
    assert bool((J[0, 0] > 0).all()), "GroupNorm statistics should make the corner depend on every pixel"


# ---------------------------------------------------------------- hypothesis: edits of the conditioner set

_NET: dict[str, LocalConditionalDenoiser] = {}


def net() -> LocalConditionalDenoiser:
    if "D" not in _NET:
        torch.manual_seed(4)
        _NET["D"] = small(depth=1, cond_radius=2.0).eval()
    return _NET["D"]


HW = 14
coord = st.floats(0.0, HW - 1.0, allow_nan=False).map(lambda v: round(v * 4) / 4)
point = st.tuples(coord, coord)


def _setup(points: list[tuple[float, float]], seed: int) -> tuple[torch.Tensor, Conditions]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, HW, HW, generator=g, dtype=torch.float64)
    return x, rand_cond(points, seed=seed)


def _max_outside(diff: torch.Tensor, region: torch.Tensor) -> float:
    outside = diff[~region]
    return float(outside.max()) if outside.numel() else 0.0


def _influence_region(D: LocalConditionalDenoiser, cond: Conditions, j: int) -> torch.Tensor:
    """[H, W]: conditioner j's mask support, dilated by the radius after the first conditioned layer."""
    m = D.inner.rule(cond.select(j), (HW, HW))[0, 0] > 0
    assert D.conditioner_radius is not None
    after = D.conditioner_radius - math.ceil(D.inner.support)
    return dilate(m, after)


@given(pts=st.lists(point, min_size=1, max_size=4), j=st.integers(0, 3), seed=st.integers(0, 100))
def test_deleting_a_conditioner_changes_only_its_dilated_support(pts: list, j: int, seed: int) -> None:
    D = net()
    j = j % len(pts)
    x, cond = _setup(pts, seed)
    with torch.no_grad():
        diff = (D(x, 0.9, cond) - D(x, 0.9, cond.drop(j))).abs().amax(1)[0]
    region = _influence_region(D, cond, j)
    assert _max_outside(diff, region) < 1e-12


@given(pts=st.lists(point, min_size=1, max_size=3), new=point, seed=st.integers(0, 100))
def test_moving_a_conditioner_changes_only_old_and_new_dilated_supports(pts: list, new: tuple, seed: int) -> None:
    D = net()
    x, cond = _setup(pts, seed)
    moved_pos = cond.pos.clone()
    moved_pos[0, 0] = torch.tensor(new, dtype=torch.float64)
    moved = Conditions(moved_pos, cond.attr, cond.valid)
    with torch.no_grad():
        diff = (D(x, 0.9, cond) - D(x, 0.9, moved)).abs().amax(1)[0]
    region = _influence_region(D, cond, 0) | _influence_region(D, moved, 0)
    assert _max_outside(diff, region) < 1e-12


@given(pts=st.lists(point, min_size=0, max_size=3), far=st.tuples(st.floats(-60, -20), st.floats(-60, 80)),
       seed=st.integers(0, 100))
def test_adding_far_conditioners_changes_nothing(pts: list, far: tuple, seed: int) -> None:
    D = net()
    x, _ = _setup([(0.0, 0.0)], seed)
    A = 3
    g = torch.Generator().manual_seed(seed)
    pos = torch.tensor([pts], dtype=torch.float64).reshape(1, len(pts), 2)
    attr = torch.randn(1, len(pts), A, generator=g, dtype=torch.float64)
    cond = Conditions(pos, attr)
    more = Conditions(torch.cat([pos, torch.tensor([[far]], dtype=torch.float64)], 1),
                      torch.cat([attr, torch.randn(1, 1, A, generator=g, dtype=torch.float64)], 1))
    with torch.no_grad():
        a, b = D(x, 0.9, cond), D(x, 0.9, more)
    assert float((a - b).abs().max()) < 1e-12


@given(pts=st.lists(point, min_size=2, max_size=4), seed=st.integers(0, 100), data=st.data())
def test_permuting_conditioners_changes_nothing(pts: list, seed: int, data: st.DataObject) -> None:
    D = net()
    x, cond = _setup(pts, seed)
    perm = data.draw(st.permutations(list(range(len(pts)))))
    idx = torch.tensor(perm)
    assert cond.attr is not None
    permuted = Conditions(cond.pos[:, idx], cond.attr[:, idx])
    with torch.no_grad():
        assert torch.allclose(D(x, 0.9, cond), D(x, 0.9, permuted), atol=1e-12, rtol=0)


def test_empty_padding_and_none_are_the_same_unconditional_path() -> None:
    D = net()
    x, cond = _setup([(3.0, 3.0)], 0)
    padded = Conditions(cond.pos, cond.attr, torch.zeros(1, 1, dtype=torch.bool))
    with torch.no_grad():
        a = D(x, 0.9, None)
        assert torch.equal(a, D(x, 0.9, Conditions.empty(1, attr_dim=3, dtype=torch.float64)))
        assert torch.allclose(a, D(x, 0.9, padded), atol=1e-12, rtol=0)


def test_translation_equivariance_away_from_borders() -> None:
    D = net()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 24, 24, generator=g, dtype=torch.float64)
    cond = rand_cond([(10.0, 9.5), (13.25, 14.0)])
    shift = (2, 3)
    xs = torch.roll(x, shifts=shift, dims=(2, 3))
    cs = Conditions(cond.pos + torch.tensor(shift, dtype=torch.float64), cond.attr)
    with torch.no_grad():
        a = D(x, 0.9, cond)
        b = D(xs, 0.9, cs)
    r = D.receptive_radius
    assert r is not None
    inner = slice(r + 3, 24 - r - 3)
    assert torch.allclose(torch.roll(a, shifts=shift, dims=(2, 3))[..., inner, inner], b[..., inner, inner],
                          atol=1e-10)


# ---------------------------------------------------------------- the one-pass identity

def _composition(D: LocalConditionalDenoiser, x: torch.Tensor, sigma: float, cond: Conditions) -> torch.Tensor:
    none = D(x, sigma, cond.drop_all())
    return none + sum(D(x, sigma, c) - none for c in cond.singletons())


@pytest.mark.parametrize("kw", [{"depth": 1}, {"depth": 2, "conditioning": "render"},
                                {"depth": 1, "cond_rule": "gaussian", "cond_radius": 0.75}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_pass_equals_projective_composition_when_far_apart(kw: dict, dtype: torch.dtype) -> None:
    torch.manual_seed(5)
    D = LocalConditionalDenoiser(**{**SMALL, "cond_radius": 1.5, **kw}).to(dtype)
    r = D.conditioner_radius
    assert r is not None
    sep = 2 * r + 1  # more than 2 (r_cond + R) apart, in Chebyshev distance
    H = W = sep + 6
    pts = [(2.0, 2.0), (2.0, 2.0 + sep), (2.0 + sep, 2.5), (2.0 + sep, 2.0 + sep)]
    x = torch.randn(2, 3, H, W, dtype=dtype)
    cond = Conditions(torch.tensor([pts, pts[::-1]], dtype=dtype), torch.randn(2, 4, 3, dtype=dtype))
    with torch.no_grad():
        one = D(x, torch.tensor([0.4, 2.0], dtype=dtype), cond)
        comp = _composition(D, x, torch.tensor([0.4, 2.0], dtype=dtype), cond)  # type: ignore[arg-type]
        solo = D(x, torch.tensor([0.4, 2.0], dtype=dtype), cond.select(0))
    assert float((one - comp).abs().max()) < (1e-5 if dtype == torch.float32 else 1e-12)
    assert float((one - solo).abs().max()) > 1e-3  # the other objects do matter


def test_one_pass_differs_from_composition_when_supports_overlap() -> None:
    torch.manual_seed(6)
    D = small(depth=1, cond_radius=2.0)
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    cond = rand_cond([(5.0, 5.0), (5.0, 7.0)])  # masks overlap
    with torch.no_grad():
        residual = (D(x, 0.7, cond) - _composition(D, x, 0.7, cond)).abs().max()  # type: ignore[arg-type]
    assert float(residual) > 1e-4


# ---------------------------------------------------------------- layers against explicit formulas

def test_relative_features_match_explicit_offsets_in_cross_attention() -> None:
    torch.manual_seed(7)
    ff = FourierFeatures(3, max_wavelength=8.0)
    attn = MaskedCrossAttention(6, 5, heads=2, relative=ff).double()
    B, K, h, w, s = 1, 3, 3, 4, 2
    pos = torch.tensor([[[0.5, 1.0], [4.0, 6.5], [2.0, 3.0]]], dtype=torch.float64)
    tokens = torch.randn(B, K, 5, dtype=torch.float64)
    feats = torch.randn(B, 6, h, w, dtype=torch.float64)
    mask = torch.rand(B, K, h, w, dtype=torch.float64)
    mask[0, 1, 0] = 0.0
    ctx = CondContext(tokens, pos, torch.ones(B, K, dtype=torch.bool), (h * s, w * s))
    out = attn(feats, ctx, stride=s, mask=mask)
    # explicit oracle: phi(p_k - x_q) for every pair
    nh, d = attn.heads, attn.head_dim
    xq = torch.stack(torch.meshgrid(torch.arange(h) * s + 0.5, torch.arange(w) * s + 0.5, indexing="ij"), -1)
    xq = xq.reshape(-1, 2).double()
    rel = ff(pos[0][None, :, :] - xq[:, None, :])  # [N, K, 4F]
    hq = feats.flatten(2)[0].T  # [N, C]
    q = attn.to_q(hq).view(-1, nh, d)
    k = attn.to_k(tokens[0]).view(K, nh, d)
    v = attn.to_v(tokens[0]).view(K, nh, d)
    g = attn.to_g(hq)  # type: ignore[misc]
    logits = (torch.einsum("nhd,khd->nhk", q, k) + torch.einsum("nf,nkf->nk", g, rel)[:, None]) / math.sqrt(d)
    m = mask[0].flatten(1).T[:, None, :]  # [N, 1, K]
    logits = torch.where(m > 0, logits + torch.log(m.clamp_min(1e-300)), torch.tensor(float("-inf")).double())
    null = torch.einsum("nhd,hd->nh", q, attn.null_k)[..., None] / math.sqrt(d)
    a = torch.softmax(torch.cat([null, logits], -1), -1)
    o = a[..., :1] * attn.null_v + torch.einsum("nhk,khd->nhd", a[..., 1:], v)
    u = torch.einsum("nk,nkf->nf", a[..., 1:].mean(1), rel)
    expected = attn.to_out(torch.cat([o.reshape(h * w, -1), u], -1)).T.reshape(1, 6, h, w)
    assert torch.allclose(out, expected, atol=1e-12)


def test_rendered_conditioning_matches_explicit_formula() -> None:
    torch.manual_seed(8)
    ff = FourierFeatures(2)
    layer = RenderedConditioning(4, 5, relative=ff).double()
    pos = torch.tensor([[[1.0, 1.0], [3.0, 0.0]]], dtype=torch.float64)
    tokens = torch.randn(1, 2, 5, dtype=torch.float64)
    mask = torch.rand(1, 2, 4, 4, dtype=torch.float64)
    ctx = CondContext(tokens, pos, torch.tensor([[True, False]]), (4, 4), mask)
    out = layer(torch.zeros(1, 4, 4, 4, dtype=torch.float64), ctx)
    i, j = 2, 3
    m = mask[0, 0, i, j]  # slot 1 is padding
    rel = ff(pos[0, 0] - torch.tensor([i, j], dtype=torch.float64))
    expected = layer.to_out(torch.cat([m * layer.to_t(tokens[0, 0]), m * rel, m[None]]))
    assert torch.allclose(out[0, :, i, j], expected, atol=1e-12)


def test_rotate_features_is_the_offset_identity() -> None:
    ff = FourierFeatures(4, min_wavelength=1.5, max_wavelength=40.0).double()
    p = torch.randn(7, 2, dtype=torch.float64) * 10
    x = torch.randn(7, 2, dtype=torch.float64) * 10
    assert torch.allclose(rotate_features(ff(p), ff.angles(x)), ff(p - x), atol=1e-12)
    a = torch.randn(7, ff.dim, dtype=torch.float64)
    lhs = (a * rotate_features(ff(p), ff.angles(x))).sum(-1)
    rhs = (rotate_features(a, ff.angles(x), inverse=True) * ff(p)).sum(-1)
    assert torch.allclose(lhs, rhs, atol=1e-12)


# ---------------------------------------------------------------- configs, state dicts, bad input

def test_state_dict_round_trip_through_config_dict() -> None:
    torch.manual_seed(9)
    D = LocalConditionalDenoiser(**{**SMALL, "depth": 1})
    cfg = LocalNetConfig.from_dict(D.config.to_dict())
    E = LocalConditionalDenoiser(cfg)
    E.load_state_dict(D.state_dict())
    x = torch.randn(2, 3, 9, 9)
    cond = Conditions.from_lists([[(2.0, 2.0)], [(4.0, 5.0), (1.0, 1.0)]], attrs=[[[1.0, 0, 0]], [[0, 1.0, 0]] * 2])
    with torch.no_grad():
        assert torch.equal(D(x, 0.5, cond), E(x, 0.5, cond))


def test_tagged_config_dicts_build_the_right_denoiser() -> None:
    from localscore.nn import GlobalConditionalDenoiser, UNetConfig, build_denoiser, config_from_dict, config_to_dict

    for cfg in (LocalNetConfig(width=8, heads=2), UNetConfig(base_width=8, heads=2, groups=4, token_dim=8)):
        data = config_to_dict(cfg)
        assert config_from_dict(data) == cfg
        D = build_denoiser(data)
        assert isinstance(D, LocalConditionalDenoiser if isinstance(cfg, LocalNetConfig) else GlobalConditionalDenoiser)
        assert D.config == cfg
    with pytest.raises(LocalScoreError, match="kind"):
        config_from_dict({"width": 3})


def test_defaults_for_clevr_like_scenes() -> None:
    c16, c32 = LocalNetConfig.for_image_size(16), LocalNetConfig.for_image_size(32)
    assert c16.attr_dim == 13 and c16.receptive_radius == 6  # 13x13 field (the earlier 16x16 study)
    assert c32.receptive_radius is not None and c32.receptive_radius > c16.receptive_radius  # type: ignore[operator]
    D = LocalConditionalDenoiser(c32)
    cond = Conditions.from_lists([[(5.0, 5.0), (20.0, 25.0)]], attrs=[[[0.0] * 12 + [1.0]] * 2])
    assert D(torch.randn(1, 3, 32, 32), 2.0, cond).shape == (1, 3, 32, 32)


def test_bad_input_raises_clear_errors() -> None:
    D = LocalConditionalDenoiser(**{**SMALL, "depth": 1})
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(LocalScoreError, match="channels"):
        D(torch.randn(1, 4, 8, 8), 1.0)
    with pytest.raises(LocalScoreError, match="B = 2"):
        D(x, 1.0, Conditions.from_lists([[(1, 1)], [(2, 2)]], attrs=[[[1, 0, 0]], [[1, 0, 0]]]))
    with pytest.raises(LocalScoreError, match="attr"):
        D(x, 1.0, Conditions.from_lists([[(1, 1)]]))
    with pytest.raises(LocalScoreError, match="attr_dim"):
        D(x, 1.0, Conditions.from_lists([[(1, 1)]], attrs=[[[1.0, 0.0]]]))
    with pytest.raises(LocalScoreError, match="cond_radius"):
        LocalNetConfig(cond_radius=-1.0)
    with pytest.raises(LocalScoreError, match="support radius"):
        LocalScoreNet(LocalNetConfig(**SMALL), rule=DiscRule(-1.0))  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="support radius"):
        LocalScoreNet(LocalNetConfig(**SMALL), rule=GaussianRule(1.0, truncate=None))  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="kernel_size"):
        LocalNetConfig(kernel_size=4)
    with pytest.raises(LocalScoreError, match="smallest"):
        LocalNetConfig.for_receptive_radius(2)
    with pytest.raises(LocalScoreError, match="sigma"):
        D(x, -1.0)
    with pytest.raises(LocalScoreError, match="unknown keys"):
        LocalNetConfig.from_dict({"widht": 3})
    attn = MaskedCrossAttention(4, 4, heads=1)
    c = Conditions.from_lists([[(1.0, 1.0)]])
    ctx = CondContext(torch.randn(1, 1, 4), c.pos, c.valid, (4, 4))
    with pytest.raises(LocalScoreError, match="mask has shape"):
        attn(torch.randn(1, 4, 4, 4), ctx, mask=torch.ones(1, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(LocalScoreError, match="stride"):
        attn(torch.randn(1, 4, 3, 3), ctx)


def test_conditions_on_another_device_raise() -> None:
    D = LocalConditionalDenoiser(**{**SMALL, "depth": 1, "attr_dim": 0})
    cond = Conditions.from_lists([[(1.0, 1.0)]])
    fake = object.__new__(Conditions)
    for name in ("pos", "valid"):
        object.__setattr__(fake, name, getattr(cond, name).to("meta"))
    object.__setattr__(fake, "attr", None)
    with pytest.raises(LocalScoreError, match="meta"):
        D(torch.randn(1, 3, 8, 8), 1.0, fake)


def test_custom_rule_whose_masks_exceed_its_declared_support_is_caught() -> None:
    class Liar:
        def __call__(self, cond: Conditions, size: tuple[int, int], sigma: object = None) -> torch.Tensor:
            return DiscRule(4.0)(cond, size, sigma)

        def support_radius(self, sigma: object = None) -> float:
            return 1.0

    D = LocalConditionalDenoiser(LocalNetConfig(**{**SMALL, "depth": 1}), rule=Liar())  # type: ignore[arg-type]
    assert D.conditioner_radius == 1 + 3
    with pytest.raises(LocalScoreError, match="declared support"):
        D(torch.randn(1, 3, 10, 10), 1.0, Conditions.from_lists([[(5.0, 5.0)]], attrs=[[[1.0, 0, 0]]]))


# ---------------------------------------------------------------- fuzzed bad input: always a LocalScoreError

_bad_x = st.sampled_from([
    "list", "int_dtype", "3d", "nan", "empty_batch", "wrong_channels",
])
_bad_sigma = st.sampled_from([-1.0, 0.0, float("nan"), float("inf"), "text", None])


@given(kind=_bad_x)
def test_fuzzed_bad_images_raise_localscore_error(kind: str) -> None:
    D = net()
    x = {
        "list": [[1.0]],
        "int_dtype": torch.zeros(1, 3, 8, 8, dtype=torch.long),
        "3d": torch.zeros(3, 8, 8, dtype=torch.float64),
        "nan": torch.full((1, 3, 8, 8), float("nan"), dtype=torch.float64),
        "empty_batch": torch.zeros(0, 3, 8, 8, dtype=torch.float64),
        "wrong_channels": torch.zeros(1, 2, 8, 8, dtype=torch.float64),
    }[kind]
    with pytest.raises(LocalScoreError):
        D(x, 1.0)


@given(sigma=_bad_sigma)
def test_fuzzed_bad_sigmas_raise_localscore_error(sigma: object) -> None:
    with pytest.raises(LocalScoreError):
        net()(torch.zeros(1, 3, 8, 8, dtype=torch.float64), sigma)


@given(what=st.sampled_from(["tuple", "batch", "attr_len", "no_attr"]))
def test_fuzzed_bad_conditions_raise_localscore_error(what: str) -> None:
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    cond = {
        "tuple": ((1.0, 2.0),),
        "batch": Conditions(torch.zeros(2, 1, 2), torch.zeros(2, 1, 3)),
        "attr_len": Conditions(torch.zeros(1, 1, 2), torch.zeros(1, 1, 5)),
        "no_attr": Conditions(torch.zeros(1, 1, 2)),
    }[what]
    with pytest.raises(LocalScoreError):
        net()(x, 1.0, cond)  # type: ignore[arg-type]


_FAR: dict[str, LocalConditionalDenoiser] = {}


@given(cells=st.lists(st.sampled_from([(0, 0), (0, 1), (1, 0), (1, 1)]), min_size=1, max_size=4, unique=True),
       offsets=st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 2.0)), min_size=4, max_size=4),
       seed=st.integers(0, 50), sigma=st.floats(0.05, 20.0))
def test_one_pass_identity_for_any_well_separated_objects(cells: list, offsets: list, seed: int,
                                                          sigma: float) -> None:
    if "D" not in _FAR:
        torch.manual_seed(14)
        _FAR["D"] = small(depth=1, cond_radius=1.5).eval()
    D = _FAR["D"]
    r = D.conditioner_radius
    assert r == 5
    # one object per chosen 13 px cell, anywhere in its first 2 px: pairwise Chebyshev distance >= 11 > 2 r
    pts = [(13.0 * i + 3 + du, 13.0 * j + 3 + dv) for (i, j), (du, dv) in zip(cells, offsets)]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, 26, 26, generator=g, dtype=torch.float64)
    cond = Conditions(torch.tensor([pts], dtype=torch.float64),
                      torch.randn(1, len(pts), 3, generator=g, dtype=torch.float64))
    with torch.no_grad():
        gap = float((D(x, sigma, cond) - _composition(D, x, sigma, cond)).abs().max())  # type: ignore[arg-type]
    assert gap < 1e-12


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_metrics_colored_jacobian_agrees_with_the_declared_radius() -> None:
    """Dogfood localscore.metrics: the compressed Jacobian at the declared radius equals the dense one, and a
    radius one smaller is detected as wrong (an invariant of docs/design.md)."""
    from localscore.metrics import jacobian

    torch.manual_seed(15)
    D = small(depth=1)
    R = D.receptive_radius
    assert R == 4
    x = torch.randn(1, 3, 11, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    cond = rand_cond([(5.0, 5.0), (2.0, 8.0)])

    def fn(z: torch.Tensor) -> torch.Tensor:
        return D(z, 0.6, cond)

    dense = jacobian(fn, x)
    banded = jacobian(fn, x, method="colored", radius=R)
    torch.testing.assert_close(banded.to_dense(), dense, rtol=0, atol=1e-12)  # type: ignore[union-attr]
    with pytest.raises(LocalScoreError, match="less local than the declared radius"):
        jacobian(fn, x, method="colored", radius=R - 1)
