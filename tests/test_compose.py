"""Composition operators: algebra, strategies, masks, weights, errors (hand-built local conv oracles).

Numerics are checked against the formula evaluated here from direct model calls, or between strategies
whose equality the crop proof guarantees; the oracle-based tests (CPC) live in test_compose_oracles.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from _compose_models import LocalConvDenoiser
from hypothesis import example, given
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError, bind, score
from localscore.compose import (
    Composition,
    WeightSchedule,
    guidance,
    masked,
    masked_from,
    projective,
    projective_from,
    residual,
)
from localscore.masks import BoxRule, DiscRule, GaussianRule, box_masks

H = W = 12


def _cond(positions: list[list[tuple[float, float]]], attr: bool = False, seed: int = 0) -> Conditions:
    if not attr:
        return Conditions.from_lists(positions)
    g = torch.Generator().manual_seed(seed)
    attrs = [[torch.rand(2, generator=g).tolist() for _ in p] for p in positions]
    return Conditions.from_lists(positions, attrs)


def _x(B: int, C: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32, size: int = H) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, size, size, generator=g, dtype=torch.float64).to(dtype)


def _formula(D, x, sigma, cond, weights=None, masks=None):
    """D(none) + sum_j w_j m_j (D(c_j) - D(none)), from direct calls (padding slots skipped per image)."""
    s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(x.shape[0])
    base = D(x, s, cond.drop_all())
    out = base.clone()
    for j, c in enumerate(cond.singletons()):
        w = 1.0 if weights is None else weights[j]
        d = D(x, s, c)
        m = 1.0 if masks is None else masks[:, j : j + 1].to(x.dtype)
        on = c.valid[:, 0].to(x.dtype).view(-1, 1, 1, 1)
        out = out + on * w * m * (d - base)
    return out


# ----------------------------------------------------------------------------------------- algebra
def test_projective_matches_formula_and_zero_components_give_background():
    D = LocalConvDenoiser(dtype=torch.float64)
    x = _x(2, dtype=torch.float64)
    cond = _cond([[(2.0, 3.0), (8.0, 8.0), (5.0, 1.0)], [(6.0, 6.0)]])
    for strategy in ("sequential", "batched", "crop"):
        got = projective_from(D, cond, [0.5, 2.0, -1.0], strategy=strategy)(x, 0.7)
        torch.testing.assert_close(got, _formula(D, x, 0.7, cond, [0.5, 2.0, -1.0]), rtol=1e-12, atol=1e-12)
    bg = bind(D, cond.drop_all())
    empty = projective(bg, [])
    assert torch.equal(empty(x, 0.7), D(x, torch.full((2,), 0.7, dtype=torch.float64), cond.drop_all()))
    assert torch.equal(projective_from(D, Conditions.empty(2))(x, 0.7), bg(x, 0.7))


def test_score_form_identity():
    D = LocalConvDenoiser(dtype=torch.float64)
    x = _x(2, dtype=torch.float64)
    cond = _cond([[(2.0, 3.0), (8.0, 8.0)], [(6.0, 6.0), (1.0, 9.0)]])
    w = [1.5, -0.5]
    comp = projective_from(D, cond, w)
    s_hat = score(comp)(x, 0.3)
    s = score(D)
    sig = torch.full((2,), 0.3, dtype=torch.float64)
    s_bg = s(x, sig, cond.drop_all())
    expect = s_bg + sum(wj * (s(x, sig, c) - s_bg) for wj, c in zip(w, cond.singletons()))
    torch.testing.assert_close(s_hat, expect, rtol=1e-10, atol=1e-10)


@given(perm_seed=st.integers(0, 10_000), k=st.integers(1, 5))
def test_permutation_of_components_changes_nothing(perm_seed, k):
    D = LocalConvDenoiser(dtype=torch.float64)
    g = torch.Generator().manual_seed(perm_seed)
    pos = (torch.rand(1, k, 2, generator=g, dtype=torch.float64) * (H - 1))
    cond = Conditions(pos)
    w = torch.randn(k, generator=g, dtype=torch.float64)
    perm = torch.randperm(k, generator=g)
    x = _x(1, dtype=torch.float64, seed=perm_seed)
    comps = [bind(D, c) for c in cond.singletons()]
    a = projective(bind(D, cond.drop_all()), comps, w)(x, 1.1)
    b = projective(bind(D, cond.drop_all()), [comps[i] for i in perm.tolist()], w[perm])(x, 1.1)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@given(seed=st.integers(0, 10_000), alpha=st.floats(-3, 3, allow_nan=False))
def test_weights_are_linear(seed, alpha):
    D = LocalConvDenoiser(dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    cond = Conditions(torch.rand(2, 3, 2, generator=g, dtype=torch.float64) * (H - 1))
    x = _x(2, dtype=torch.float64, seed=seed)
    w1 = torch.randn(2, 3, generator=g, dtype=torch.float64)
    w2 = torch.randn(3, generator=g, dtype=torch.float64)
    bg = bind(D, cond.drop_all())(x, 0.5)

    def delta(w):
        return projective_from(D, cond, w, strategy="sequential")(x, 0.5) - bg

    torch.testing.assert_close(delta(w1 + w2), delta(w1) + delta(w2), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(delta(alpha * w1), alpha * delta(w1), rtol=1e-9, atol=1e-9)


@given(seed=st.integers(0, 10_000), j=st.integers(0, 3))
def test_zero_weight_removes_component(seed, j):
    D = LocalConvDenoiser(dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    cond = Conditions(torch.rand(1, 4, 2, generator=g, dtype=torch.float64) * (H - 1))
    x = _x(1, dtype=torch.float64, seed=seed)
    w = torch.randn(4, generator=g, dtype=torch.float64)
    w[j] = 0.0
    comps = [bind(D, c) for c in cond.singletons()]
    keep = [i for i in range(4) if i != j]
    D.calls.clear()
    a = projective(bind(D, cond.drop_all()), comps, w, strategy="sequential")(x, 2.0)
    assert len(D.calls) == 4  # background + 3 components: the zero-weight one is not evaluated
    b = projective(bind(D, cond.drop_all()), [comps[i] for i in keep], w[keep], strategy="sequential")(x, 2.0)
    assert torch.equal(a, b)


@given(seed=st.integers(0, 10_000))
def test_masks_of_ones_and_zeros(seed):
    D = LocalConvDenoiser(dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    cond = Conditions(torch.rand(2, 3, 2, generator=g, dtype=torch.float64) * (H - 1))
    x = _x(2, dtype=torch.float64, seed=seed)
    comps = [bind(D, c) for c in cond.singletons()]
    bg = bind(D, cond.drop_all())
    w = torch.randn(3, generator=g, dtype=torch.float64)
    proj = projective(bg, comps, w, strategy="sequential")(x, 0.8)
    ones = masked(bg, comps, torch.ones(2, 3, H, W, dtype=torch.bool), w, strategy="sequential")(x, 0.8)
    torch.testing.assert_close(ones, proj, rtol=1e-12, atol=1e-12)
    per_comp = masked(bg, comps, [torch.ones(1, 2, H, W, dtype=torch.float64)] * 3, w)(x, 0.8)
    torch.testing.assert_close(per_comp, proj, rtol=1e-12, atol=1e-12)
    zeros = masked(bg, comps, torch.zeros(2, 3, H, W), w)(x, 0.8)
    assert torch.equal(zeros, bg(x, 0.8))


def test_masked_matches_formula_soft_and_rule():
    D = LocalConvDenoiser(dtype=torch.float64)
    x = _x(2, dtype=torch.float64)
    cond = _cond([[(2.0, 3.0), (8.0, 8.0)], [(6.0, 6.0)]])
    rule = GaussianRule(lambda s: 1.0 + s, truncate=2.0)  # sigma-dependent soft masks
    for strategy in ("sequential", "batched", "crop"):
        got = masked_from(D, cond, rule, [1.0, 0.5], strategy=strategy)(x, 0.6)
        m = rule(cond, (H, W), 0.6)
        torch.testing.assert_close(got, _formula(D, x, 0.6, cond, [1.0, 0.5], masks=m), rtol=1e-12, atol=1e-12)


def test_regional_composition_with_disjoint_masks_pastes_components():
    bg = lambda x, s, c=None: torch.zeros_like(x)  # noqa: E731
    d1 = lambda x, s, c=None: torch.full_like(x, 1.0)  # noqa: E731
    d2 = lambda x, s, c=None: torch.full_like(x, 2.0)  # noqa: E731
    left = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    left[..., :2] = True
    out = masked(bg, [d1, d2], [left, ~left])(torch.zeros(1, 3, 4, 4), 1.0)
    assert out[..., :2].eq(1).all() and out[..., 2:].eq(2).all()


# ----------------------------------------------------------------------------------------- weights and windows
def test_weight_forms_agree():
    D = LocalConvDenoiser(dtype=torch.float64)
    x = _x(2, dtype=torch.float64)
    cond = _cond([[(2.0, 3.0), (8.0, 8.0)], [(6.0, 6.0), (3.0, 9.0)]])
    sig = torch.tensor([0.5, 2.0], dtype=torch.float64)
    wmat = torch.tensor([[0.5, 2.0], [1.0, -1.0]], dtype=torch.float64)
    ref = projective_from(D, cond, wmat)(x, sig)
    forms = [
        [torch.tensor([0.5, 1.0]), torch.tensor([2.0, -1.0])],
        lambda s: torch.where(s[:, None] < 1, torch.tensor([[0.5, 2.0]]), torch.tensor([[1.0, -1.0]])),
        [lambda s: torch.where(s < 1, 0.5, 1.0), WeightSchedule([0.5, 2.0], [2.0, -1.0])],
    ]
    for f in forms:
        torch.testing.assert_close(projective_from(D, cond, f)(x, sig), ref, rtol=1e-12, atol=1e-12)


def test_weight_schedule_interpolates_in_log_sigma():
    ws = WeightSchedule([0.01, 1.0, 100.0], [0.0, 1.0, 3.0])
    got = ws(torch.tensor([0.001, 0.1, 1.0, 10.0, 1e4], dtype=torch.float64))
    assert got.tolist() == pytest.approx([0.0, 0.5, 1.0, 2.0, 3.0])
    assert WeightSchedule([1.0], [4.0])(torch.tensor([0.1, 10.0])).tolist() == [4.0, 4.0]


def test_sigma_window_switches_components_off():
    D = LocalConvDenoiser(dtype=torch.float64)
    x = _x(3, dtype=torch.float64)
    cond = _cond([[(2.0, 3.0), (8.0, 8.0)]] * 3)
    sig = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    comp = projective_from(D, cond, windows=[(0.5, 5.0), None])
    got = comp(x, sig)
    only_second = projective_from(D, cond, [0.0, 1.0])(x, sig)
    both = projective_from(D, cond)(x, sig)
    torch.testing.assert_close(got[[0, 2]], only_second[[0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(got[1], both[1], rtol=1e-12, atol=1e-12)


def test_guidance_convention():
    D = LocalConvDenoiser(dtype=torch.float64)
    x = _x(2, dtype=torch.float64)
    cond = _cond([[(2.0, 3.0), (8.0, 8.0)], [(6.0, 6.0)]])
    Dc, Du = bind(D, cond), bind(D, cond.drop_all())
    c, u = Dc(x, 0.4), Du(x, 0.4)
    torch.testing.assert_close(guidance(Dc, Du, 1.0)(x, 0.4), c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(guidance(Dc, Du, 0.0)(x, 0.4), u, rtol=0, atol=0)
    torch.testing.assert_close(guidance(Dc, Du, 4.5)(x, 0.4), u + 4.5 * (c - u), rtol=1e-12, atol=1e-12)
    off = guidance(Dc, Du, 4.5, window=(1.0, 80.0))(x, 0.4)
    torch.testing.assert_close(off, u, rtol=0, atol=0)
    neg = guidance(Dc, Du, torch.tensor([2.0, -1.0], dtype=torch.float64))(x, 0.4)  # per-image, negation
    torch.testing.assert_close(neg, u + torch.tensor([2.0, -1.0]).view(2, 1, 1, 1) * (c - u))


def test_compositions_nest():
    D = LocalConvDenoiser(dtype=torch.float64)
    x = _x(1, dtype=torch.float64)
    cond = _cond([[(2.0, 3.0), (8.0, 8.0), (5.0, 10.0)]])
    inner = projective_from(D, cond)
    bg = bind(D, cond.drop_all())
    # guidance on top of a composition: u + w (inner - u)
    outer = guidance(inner, bg, 2.0)
    u = bg(x, 0.9)
    torch.testing.assert_close(outer(x, 0.9), u + 2.0 * (inner(x, 0.9) - u), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outer(x, 0.9), _formula(D, x, 0.9, cond, [2.0, 2.0, 2.0]), rtol=1e-10, atol=1e-10)
    assert outer.receptive_radius == 2
    # a nested composition holds conditions in full-image coordinates: never cropped, auto falls back
    box = box_masks(cond, (H, W), 1.0)[:, 1:2]  # around (8, 8): a crop would shift the coordinates
    outer2 = masked(bg, [inner], [box])
    ref = outer2.evaluate(x, 0.9, strategy="sequential")
    torch.testing.assert_close(ref, _formula(D, x, 0.9, cond, masks=box.expand(1, 3, H, W)), rtol=1e-10, atol=1e-10)
    assert outer2.plan(x, 0.9) == "sequential"  # on the CPU
    torch.testing.assert_close(outer2(x, 0.9), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(LocalScoreError, match="translation_equivariant = False"):
        outer2.evaluate(x, 0.9, strategy="crop")


# ----------------------------------------------------------------------------------------- strategies
@given(
    seed=st.integers(0, 100_000),
    counts=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    paint=st.integers(0, 2),
    layers=st.integers(1, 3),
    padding=st.sampled_from(["zeros", "reflect", "replicate"]),
    with_attr=st.booleans(),
    size=st.integers(6, 16),
)
def test_sequential_batched_crop_agree_float32(seed, counts, paint, layers, padding, with_attr, size):
    D = LocalConvDenoiser(paint=paint, layers=layers, padding_mode=padding, seed=seed % 7)
    g = torch.Generator().manual_seed(seed)
    # positions anywhere, including on and just outside the border
    positions = [[tuple((torch.rand(2, generator=g) * (size + 2) - 1).tolist()) for _ in range(k)] for k in counts]
    cond = _cond(positions, attr=with_attr and sum(counts) > 0, seed=seed)
    x = _x(len(counts), seed=seed, size=size)
    sig = torch.rand(len(counts), generator=g) * 3 + 0.05
    w = torch.randn(max(counts) if max(counts) else 0, generator=g)
    comp = projective_from(D, cond, w)
    seq = comp.evaluate(x, sig, strategy="sequential")
    bat = comp.evaluate(x, sig, strategy="batched")
    crp = comp.evaluate(x, sig, strategy="crop")
    torch.testing.assert_close(bat, seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(crp, seq, rtol=1e-5, atol=1e-5)
    mcomp = masked_from(D, cond, DiscRule(lambda s: 1.0 + s), w)
    mseq = mcomp.evaluate(x, sig, strategy="sequential")
    torch.testing.assert_close(mcomp.evaluate(x, sig, strategy="batched"), mseq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mcomp.evaluate(x, sig, strategy="crop"), mseq, rtol=1e-5, atol=1e-5)


def test_crop_is_needed_context_and_not_more():
    """Crops hold the support dilated by R; shrinking the declared radius breaks the identity (so the test
    can fail), and the crops are much smaller than the image."""
    D = LocalConvDenoiser(paint=1, layers=2, seed=3)
    x = _x(1, size=32)
    cond = _cond([[(5.0, 5.0), (16.0, 20.0), (27.0, 9.0)]])
    comp = projective_from(D, cond)
    seq = comp.evaluate(x, 0.5, strategy="sequential")
    D.calls.clear()
    crp = comp.evaluate(x, 0.5, strategy="crop")
    torch.testing.assert_close(crp, seq, rtol=1e-5, atol=1e-5)
    # one full background call + one batched call on 3 crops of (2 * (1 + 2) + 1) + 2 * 2 = 11 pixels
    assert D.calls == [(1, 2, 32, 32), (3, 2, 11, 11)]
    assert comp.plan(x, 0.5) == "crop"
    D.receptive_radius = 1  # a lie: crops now miss context
    wrong = comp.evaluate(x, 0.5, strategy="crop")
    assert (wrong - seq).abs().max() > 1e-3


def test_padding_slots_contribute_exactly_zero_and_are_not_evaluated():
    D = LocalConvDenoiser(dtype=torch.float64)
    x = _x(3, dtype=torch.float64)
    cond = _cond([[(2.0, 3.0), (8.0, 8.0), (5.0, 5.0)], [(6.0, 6.0)], []])
    for strategy in ("sequential", "batched", "crop"):
        D.calls.clear()
        got = projective_from(D, cond, strategy=strategy)(x, 0.5)
        n_images = sum(c[0] for c in D.calls)
        assert n_images == 3 + 3 + 1 if strategy != "crop" else n_images == 3 + 4
        for b in range(3):
            alone = projective_from(D, cond[b].compact(), strategy="sequential")(x[b : b + 1], 0.5)
            torch.testing.assert_close(got[b : b + 1], alone, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[2], bind(D, cond.drop_all())(x, 0.5)[2])


def test_batched_is_one_call_and_chunks_to_budget():
    D = LocalConvDenoiser()
    x = _x(2)
    cond = _cond([[(2.0, 3.0), (8.0, 8.0), (5.0, 5.0)]] * 2)
    comp = projective_from(D, cond, strategy="batched")
    D.calls.clear()
    ref = comp(x, 1.0)
    assert D.calls == [(8, 2, H, W)]
    for max_batch, max_pixels, expect in ((3, None, [3, 3, 2]), (None, 5 * H * W, [5, 3]), (4, 2 * H * W, [2] * 4)):
        chunked = projective_from(D, cond, strategy="batched", max_batch=max_batch, max_pixels=max_pixels)
        D.calls.clear()
        torch.testing.assert_close(chunked(x, 1.0), ref, rtol=1e-6, atol=1e-6)
        assert [c[0] for c in D.calls] == expect


def test_auto_picks_a_valid_strategy():
    D = LocalConvDenoiser()
    x = _x(1, size=32)
    small = _cond([[(5.0, 5.0), (20.0, 20.0)]])
    assert projective_from(D, small).plan(x, 1.0) == "crop"
    crowded = _cond([[(float(r), float(c)) for r in range(2, 32, 4) for c in range(2, 32, 4)]])
    assert projective_from(D, crowded).plan(x, 1.0) == "crop"  # 64 crops of 11 x 11 < 64 images of 32 x 32
    wide = LocalConvDenoiser(paint=30)  # crops would be the whole image: no gain
    assert projective_from(wide, small).plan(x, 1.0) == "sequential"  # on the CPU
    undeclared = LocalConvDenoiser(declare=False)
    comp = projective_from(undeclared, small)
    assert comp.plan(x, 1.0) == "sequential"  # on the CPU
    torch.testing.assert_close(comp(x, 1.0), comp.evaluate(x, 1.0, strategy="sequential"))


def test_gradients_flow_through_every_strategy():
    """Every strategy's input gradient equals the gradient of the formula from direct model calls (not only
    each other's: a gradient lost in code the strategies share would make them agree and all be wrong)."""
    D = LocalConvDenoiser(dtype=torch.float64)
    cond = _cond([[(2.0, 3.0), (8.0, 8.0)]])
    x = _x(1, dtype=torch.float64).requires_grad_(True)
    (want,) = torch.autograd.grad(_formula(D, x, 0.7, cond, [1.0, -0.5]).square().sum(), x)
    assert float(want.abs().max()) > 0
    for strategy in ("sequential", "batched", "crop"):
        x = _x(1, dtype=torch.float64).requires_grad_(True)
        projective_from(D, cond, [1.0, -0.5], strategy=strategy)(x, 0.7).square().sum().backward()
        assert x.grad is not None
        torch.testing.assert_close(x.grad, want, rtol=1e-10, atol=1e-10, msg=strategy)


# ----------------------------------------------------------------------------------------- residual
def test_residual_one_pass_identity_and_its_failure():
    D = LocalConvDenoiser(paint=1, layers=2, dtype=torch.float64)  # conditioner radius 3 (Chebyshev)
    x = _x(2, dtype=torch.float64, size=20)
    far = _cond([[(3.0, 3.0), (3.0, 16.0), (16.0, 9.0)], [(10.0, 10.0)]])  # pairwise > 2 * 3 apart
    res = residual(D, x, 0.8, far)
    assert res.per_image.max() < 1e-12
    near = _cond([[(8.0, 8.0), (9.0, 10.0)]] * 2)
    r = residual(D, x, 0.8, near)
    assert (r.per_image > 1e-3).all()
    # the pixel map is zero away from both objects and its squares sum to per_image**2
    assert r.per_pixel[:, :2].abs().max() == 0 and r.per_pixel[:, :, -3:].abs().max() == 0
    torch.testing.assert_close(r.per_pixel.square().sum((1, 2)).sqrt(), r.per_image)
    d = r.to_dict()
    assert set(d) == {"per_image", "mean", "max", "error_norm", "signal_norm"} and len(d["per_image"]) == 2


def test_residual_against_hand_computed_values():
    # D adds (number of objects)^2 * (1 + row index): joint 9x, projection 3x, none 0.
    def D(x, s, c=None):
        n = 0 if c is None else c.counts().view(-1, 1, 1, 1).to(x.dtype)
        return x + n**2 * (1 + torch.arange(x.shape[-2], dtype=x.dtype).view(1, 1, -1, 1))

    cond = _cond([[(0.0, 0.0), (1.0, 1.0), (2.0, 2.0)], []])
    r = residual(D, torch.zeros(2, 1, 3, 3), 1.0, cond)
    assert r.per_image.tolist() == pytest.approx([6 / 9, 0.0])
    assert r.per_pixel[0, 2, 0].item() == pytest.approx(6 * 3 / (9 * math.sqrt(3 * (1 + 4 + 9))))


# ----------------------------------------------------------------------------------------- bad input
def _bad(fn, *match):
    with pytest.raises(LocalScoreError) as e:
        fn()
    text = str(e.value)
    for m in match:
        assert m in text, text


def test_bad_input_messages():
    D = LocalConvDenoiser()
    x = _x(2)
    cond = _cond([[(2.0, 3.0), (8.0, 8.0)]] * 2)
    bg = bind(D, cond.drop_all())
    comps = [bind(D, c) for c in cond.singletons()]
    _bad(lambda: projective(bg, comps, [1.0, 2.0, 3.0]), "`weights` has 3 entries", "2 components")
    _bad(lambda: projective(bg, comps, torch.ones(3)), "`weights` has shape (3,)")
    _bad(lambda: projective(bg, comps, lambda s: torch.ones(5, 5))(x, 1.0), "shape (5, 5)")
    _bad(lambda: projective(bg, comps, [1.0, float("nan")]), "non-finite")
    _bad(lambda: projective(bg, comps, lambda s: s * float("inf"))(x, 1.0), "non-finite")
    _bad(lambda: projective(bg, comps, "two"), "`weights` is str")
    _bad(lambda: projective(bg, comps[0]), "`components`", "list")
    _bad(lambda: projective(bg, [comps[0], 3]), "`components[1]`")
    _bad(lambda: projective("bg", comps), "`background`")
    _bad(lambda: projective(bg, comps, strategy="fast"), "`strategy` is 'fast'")
    _bad(lambda: projective(bg, comps, max_batch=0), "`max_batch` is 0")
    _bad(lambda: projective(bg, comps, windows=(2.0, 1.0)), "0 <= sigma_lo <= sigma_hi")
    _bad(lambda: projective(bg, comps, windows=[(0, 1)]), "`windows` has 1 entries")
    _bad(lambda: masked(bg, comps, torch.ones(2, 3, H, W)), "`masks` has shape (2, 3, 12, 12)", "K = 2")
    _bad(lambda: masked(bg, comps, [torch.ones(2, 1, H, W + 1)] * 2)(x, 1.0), "`masks[0]` has shape (2, 1, 12, 13)")
    _bad(lambda: masked(bg, comps, [torch.ones(2, 5, H, W)] * 2)(x, 1.0), "1 or 2")
    _bad(lambda: masked(bg, comps, [torch.ones(1, 1, H, W)])(x, 1.0), "`masks` has 1 entries")
    _bad(lambda: masked(bg, comps, DiscRule(2.0)), "mask_cond")
    _bad(lambda: masked(bg, comps, None), "needs masks")
    _bad(lambda: masked_from(D, cond, torch.ones(2, 2, H, W)), "`rule`")
    comp = projective(bg, comps)
    _bad(lambda: comp(x[0], 1.0), "[B, C, H, W]")
    _bad(lambda: comp(x, torch.ones(3)), "`sigma` has 3 values")
    _bad(lambda: comp(x, 1.0, cond), "got another `cond`")
    _bad(lambda: comp(x[:1].expand(3, -1, -1, -1), 1.0), "B = 2", "B = 3")
    undeclared = LocalConvDenoiser(declare=False)
    _bad(lambda: projective_from(undeclared, cond, strategy="crop")(x, 1.0), "receptive radius", "batched")
    undeclared.receptive_radius = 2
    _bad(lambda: projective_from(undeclared, cond, strategy="crop")(x, 1.0), "conditioner_radius")
    other_bg = bind(LocalConvDenoiser(seed=1), cond.drop_all())
    _bad(lambda: projective(other_bg, comps, strategy="crop")(x, 1.0), "unconditional model of the same network")
    wrong = lambda x, s, c=None: x[:, :1]  # noqa: E731
    _bad(lambda: projective(bg, [wrong])(x, 1.0), "returned shape")
    _bad(lambda: residual(D, x, 1.0, "cond"), "`cond`")
    _bad(lambda: residual(D, x, 1.0, cond[:1].repeat_interleave(3)), "B = 3")
    _bad(lambda: WeightSchedule([1.0, 0.5], [0, 1]), "increasing")
    _bad(lambda: WeightSchedule([1.0], [0, 1]), "1 knots")


def test_mask_rule_box_masks_are_cropped_and_exact():
    D = LocalConvDenoiser(paint=2, layers=3, seed=5)
    x = _x(2, size=24)
    cond = _cond([[(3.0, 20.0), (12.0, 12.0)], [(0.0, 0.0), (23.0, 23.0)]])
    comp = masked_from(D, cond, BoxRule(2))
    seq = comp.evaluate(x, 1.5, strategy="sequential")
    D.calls.clear()
    crp = comp.evaluate(x, 1.5, strategy="crop")
    torch.testing.assert_close(crp, seq, rtol=1e-5, atol=1e-5)
    # mask box 5 (within the conditioner box 2 * 5 + 1) dilated by R = 3: crops of 11
    assert D.calls[1] == (4, 2, 11, 11)
    # a composition without components is its background, whatever the strategy
    empty = Composition(bind(D, None), [])
    for strategy in ("sequential", "batched", "crop"):
        assert torch.equal(empty.evaluate(x, 1.5, strategy=strategy), D(x, torch.full((2,), 1.5), None))


_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple)


def _surely_valid(weight_kind, weight_shape, list_len, mask_shape, sigma_shape, bad_value) -> bool:
    """A subset of the fuzzed arguments that the documentation accepts (B = 2 images, K = 3 components):
    these must work; outside it either outcome is allowed, as long as a failure is a LocalScoreError."""
    finite = math.isfinite(bad_value)
    weights_ok = {
        "number": finite,
        "list": finite and list_len == 3,
        "tensor": finite and weight_shape in {(), (3,), (1, 3), (2, 3)},
        "callable": finite and weight_shape in {(), (2,), (2, 3)},
        "junk": False,
    }[weight_kind]
    masks_ok = mask_shape is None or mask_shape in {(2, 3, 6, 6), (1, 3, 6, 6)}
    return weights_ok and masks_ok and finite and sigma_shape in {(), (1,), (2,)}


@example("number", (), 0, None, (), -1.0)
@example("list", (), 3, (2, 3, 6, 6), (2,), 0.5)
@example("tensor", (2, 3), 0, (1, 3, 6, 6), (1,), -1.0)
@example("callable", (2, 3), 0, None, (2,), 0.5)
@given(
    weight_kind=st.sampled_from(["tensor", "list", "number", "callable", "junk"]),
    weight_shape=_shapes,
    list_len=st.integers(0, 4),
    mask_shape=st.one_of(st.none(), _shapes.map(lambda t: (*t, 1, 1, 1, 1)[:4]), st.just((2, 3, 6, 6)),
                         st.just((1, 1, 6, 6))),
    sigma_shape=_shapes,
    bad_value=st.sampled_from([0.5, float("nan"), float("inf"), -1.0]),
)
def test_fuzzed_arguments_either_work_or_raise_localscore_error(weight_kind, weight_shape, list_len, mask_shape,
                                                                sigma_shape, bad_value):
    D = LocalConvDenoiser(channels=3, layers=1, paint=0)
    x = _x(2, C=3, size=6)
    cond = _cond([[(1.0, 1.0), (4.0, 4.0), (2.0, 5.0)]] * 2)
    weights = {
        "tensor": torch.full(weight_shape, bad_value),
        "list": [bad_value] * list_len,
        "number": bad_value,
        "callable": lambda s: torch.full(weight_shape, bad_value),
        "junk": "heavy",
    }[weight_kind]
    masks = None if mask_shape is None else torch.rand(mask_shape)
    sigma = torch.full(sigma_shape, abs(bad_value) if bad_value == bad_value else 1.0)
    valid = _surely_valid(weight_kind, weight_shape, list_len, mask_shape, sigma_shape, bad_value)
    try:
        comp = Composition(bind(D, cond.drop_all()), [bind(D, c) for c in cond.singletons()], weights, masks=masks)
        for strategy in ("sequential", "batched", "crop"):
            out = comp.evaluate(x, sigma, strategy=strategy)
            assert out.shape == x.shape and bool(torch.isfinite(out).all())
    except LocalScoreError as e:
        assert not valid, f"valid arguments were rejected: {e}"
        assert str(e).startswith("Composition"), str(e)


def test_crop_through_an_adapter_chain_and_chunked():
    """The radii are found through adapters (``.inner``); crops are chunked to the memory budget."""
    from localscore.denoisers import X0Denoiser

    net = LocalConvDenoiser(paint=1, layers=2, seed=4)
    D = X0Denoiser(net, vp_input=True)
    x = _x(2, size=20)
    cond = _cond([[(3.0, 3.0), (10.0, 15.0), (17.0, 6.0)], [(9.0, 9.0)]])
    comp = projective_from(D, cond, max_batch=2)
    seq = comp.evaluate(x, 0.7, strategy="sequential")
    net.calls.clear()
    assert comp.plan(x, 0.7) == "crop"
    torch.testing.assert_close(comp(x, 0.7), seq, rtol=1e-5, atol=1e-5)
    assert [c[0] for c in net.calls] == [2, 2, 2]  # background (2 images), then 4 crops in chunks of 2
    assert all(c[-2:] == (11, 11) for c in net.calls[1:])


def test_crop_is_exact_for_the_library_local_network():
    """``localscore.nn.LocalConditionalDenoiser`` (declared radii 6 and 9): crop == sequential in float32."""
    from localscore.nn.local import LocalConditionalDenoiser

    torch.manual_seed(0)
    D = LocalConditionalDenoiser(width=16, attr_dim=0).eval()
    x = _x(2, C=3, size=40)
    cond = _cond([[(3.0, 3.0), (20.0, 30.0), (38.0, 10.0)], [(15.0, 15.0)]])
    comp = projective_from(D, cond)
    with torch.no_grad():
        seq = comp.evaluate(x, 0.7, strategy="sequential")
        torch.testing.assert_close(comp.evaluate(x, 0.7, strategy="crop"), seq, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(comp.evaluate(x, 0.7, strategy="batched"), seq, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------- one set of options
def test_every_constructor_takes_the_same_evaluation_options():
    D = LocalConvDenoiser()
    x = _x(2)
    cond = _cond([[(2.0, 3.0), (8.0, 8.0)], [(5.0, 5.0), (0.0, 0.0)]])
    options = {"strategy": "batched", "max_batch": 3, "max_pixels": 3 * H * W, "skip_empty": True,
               "skip_inactive": False}
    bg, comps = bind(D, cond.drop_all()), [bind(D, c) for c in cond.singletons()]
    m = box_masks(cond, (H, W), 2.0)
    built = [projective(bg, comps, **options), projective_from(D, cond, **options), masked(bg, comps, m, **options),
             masked_from(D, cond, BoxRule(2.0), **options), guidance(comps[0], bg, 2.0, **options)]
    for comp in built:
        assert (comp.strategy, comp.max_batch, comp.max_pixels, comp.skip_inactive) == ("batched", 3, 3 * H * W, False)
        D.calls.clear()
        comp(x, 1.0)
        assert max(c[0] for c in D.calls) <= 3
    torch.testing.assert_close(built[0](x, 1.0), _formula(D, x, 1.0, cond))
    torch.testing.assert_close(built[3](x, 1.0), _formula(D, x, 1.0, cond, masks=m))
    with pytest.raises(LocalScoreError, match="max_pixels"):
        guidance(comps[0], bg, 2.0, max_pixels=0)
    with pytest.raises(TypeError):
        projective_from(D, cond, no_such_option=1)  # type: ignore[call-arg]
    assert guidance(comps[0], bg, 2.0).skip_empty is False and projective(bg, comps).skip_empty is True


def test_skip_inactive_false_evaluates_every_pair_and_reads_nothing_back():
    D = LocalConvDenoiser()
    x = _x(2)
    cond = _cond([[(2.0, 3.0), (8.0, 8.0)], [(5.0, 5.0)]])  # image 1 has a padding slot
    for make, per_call in ((lambda **o: masked_from(D, cond, DiscRule(lambda s: 2.0 + 0 * s), strategy="batched",
                                                    **o), 1),
                           (lambda **o: projective_from(D, cond, [1.0, torch.tensor([0.5, 2.0])], strategy="batched",
                                                        **o), 1),
                           (lambda **o: masked_from(D, cond, DiscRule(2.0), strategy="batched", **o), 0)):
        skipping, dense = make(), make(skip_inactive=False)
        D.calls.clear()
        ref = skipping(x, 0.7)
        assert [c[0] for c in D.calls] == [2 + 2 + 1]  # the padding slot of image 1 is not evaluated
        D.calls.clear()
        torch.testing.assert_close(dense(x, 0.7), ref, rtol=0, atol=1e-6)
        assert [c[0] for c in D.calls] == [2 + 2 + 2]
        dense_reads: list[int] = []
        with _ReadCounter(dense_reads):
            dense(x, 0.7)
        skipping_reads: list[int] = []
        with _ReadCounter(skipping_reads):
            skipping(x, 0.7)
        # the same reads at the boundary (the inputs' checks, the deferred checks at the end); skipping reads
        # back, once per call, which component acts on which image, unless that is fixed (a fixed-size rule and
        # number weights: kept from the first call)
        assert len(skipping_reads) == len(dense_reads) + per_call


class _ReadCounter:
    """Counts the host reads: ``aten::_local_scalar_dense`` (``.item()``, ``bool(t)``) and ``Tensor.tolist``."""

    def __init__(self, reads: list[int]) -> None:
        reads.clear()

        class Dispatch(torch.utils._python_dispatch.TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                if func is torch.ops.aten._local_scalar_dense.default:
                    reads.append(1)
                return func(*args, **(kwargs or {}))

        class Function(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                if func is torch.Tensor.tolist:
                    reads.append(1)
                return func(*args, **(kwargs or {}))

        self.modes = (Dispatch(), Function())

    def __enter__(self) -> None:
        for mode in self.modes:
            mode.__enter__()

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self.modes):
            mode.__exit__(*exc)


# ----------------------------------------------------------------------------------------- windows (crop_size)
def test_windows_equal_the_full_formula_when_they_hold_the_dilated_masks():
    D = LocalConvDenoiser(layers=2, paint=1)  # receptive radius 2
    x = _x(2, size=24)
    cond = _cond([[(4.0, 5.0), (15.3, 18.6), (11.0, 11.0)], [(20.0, 2.0), (0.0, 0.0)]], attr=True)
    rule = DiscRule(2.0)
    full = masked_from(D, cond, rule, strategy="sequential")(x, 0.5)
    S = 2 * (2 + 2) + 4
    windows = masked_from(D, cond, rule, crop_size=S, skip_inactive=False)
    assert windows.plan(x, 0.5) == "windows"
    D.calls.clear()
    torch.testing.assert_close(windows(x, 0.5), full, rtol=0, atol=1e-5)
    assert D.calls == [(2, 2, 24, 24), (2 * 6, 2, S, S)]  # the background, then the windows and their backgrounds
    skipping = masked_from(D, cond, rule, crop_size=S)
    D.calls.clear()
    torch.testing.assert_close(skipping(x, 0.5), full, rtol=0, atol=1e-5)
    assert D.calls == [(2, 2, 24, 24), (2 * 5, 2, S, S)]  # the padding slot has an empty mask: not evaluated


def test_windows_bad_input():
    D = LocalConvDenoiser()
    cond = _cond([[(2.0, 3.0), (8.0, 8.0)]])
    bg, comps = bind(D, cond.drop_all()), [bind(D, c) for c in cond.singletons()]
    with pytest.raises(LocalScoreError, match="exclude each other"):
        projective_from(D, cond, crop_size=6, strategy="crop")
    with pytest.raises(LocalScoreError, match="crop_size"):
        projective_from(D, cond, crop_size=0)
    with pytest.raises(LocalScoreError, match="one conditioner per image"):
        projective(bg, [bind(D, cond)], crop_size=6)
    with pytest.raises(LocalScoreError, match="background"):
        projective(D, comps, crop_size=6)
    with pytest.raises(LocalScoreError, match="larger than the image"):
        projective_from(D, cond, crop_size=20)(_x(1), 1.0)
    with pytest.raises(LocalScoreError, match="does not fit in its 4x4 window"):
        masked_from(D, cond, DiscRule(3.0), crop_size=4)(_x(1), 1.0)
    with pytest.raises(LocalScoreError, match="strategy"):
        projective_from(D, cond, crop_size=6).evaluate(_x(1), 1.0, strategy="crop")


def test_weights_are_checked_once_and_on_assignment():
    D = LocalConvDenoiser()
    cond = _cond([[(2.0, 3.0), (8.0, 8.0)]])
    comp = projective_from(D, cond, [1.0, 2.0])
    x = _x(1)
    ref = comp(x, 1.0)
    comp.weights = 2.0
    assert comp.weights == 2.0
    torch.testing.assert_close(comp(x, 1.0), _formula(D, x, 1.0, cond, weights=[2.0, 2.0]))
    with pytest.raises(LocalScoreError, match="3 entries but there are 2 components"):
        comp.weights = [1.0, 2.0, 3.0]
    comp.weights = [1.0, 2.0]
    torch.testing.assert_close(comp(x, 1.0), ref)
