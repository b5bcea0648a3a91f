"""Composition against the object oracles: exact under CPC, the analytic gap without it, and sampling."""

from __future__ import annotations

import pytest
import torch
from _twosample import energy_test, ks_projections

from localscore import Conditions, LocalScoreError, bind
from localscore.compose import projective, projective_from, residual
from localscore.oracles import FactorizedObjects, OverlappingObjects
from localscore.sampling import sample_heun
from localscore.schedules import karras_sigmas

SIGMAS = [0.002, 0.01, 0.1, 0.5, 2.0, 10.0, 80.0]


def _grid_positions(n: int, seed: int, cells: int = 4, spacing: float = 6.0) -> list[tuple[float, float]]:
    """``n`` positions in distinct cells of a ``cells x cells`` grid, jittered by < 0.4 px (disjoint discs
    of radius 2.5 when ``spacing = 6``)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(cells * cells, generator=g)[:n].tolist()
    jit = (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 0.8
    return [((i // cells + 0.5) * spacing + float(jit[k, 0]), (i % cells + 0.5) * spacing + float(jit[k, 1]))
            for k, i in enumerate(idx)]


def _factorized(C: int = 2, size: int = 24) -> FactorizedObjects:
    return FactorizedObjects(C, size, size, object_radius=2.5, attr_map=torch.eye(C), object_mean=0.5,
                             object_std=0.4, mean_width=2.0)


@pytest.mark.parametrize("n", list(range(11)))
def test_projective_composition_is_the_exact_joint_under_cpc(n):
    """0 to 10 objects, sigma from 0.002 to 80: the composition of exact single-object denoisers equals the
    exact joint denoiser to float64 round-off. The second image has fewer objects (padding slots)."""
    oracle = _factorized(size=30 if n > 9 else 24)
    cells = 5 if n > 9 else 4
    pos = [_grid_positions(n, seed=n, cells=cells), _grid_positions(n // 2, seed=100 + n, cells=cells)]
    g = torch.Generator().manual_seed(n)
    attrs = [[torch.rand(2, generator=g, dtype=torch.float64).tolist() for _ in p] for p in pos]
    cond = Conditions.from_lists(pos, attrs if n else None, dtype=torch.float64)
    if n == 0:
        cond = Conditions.empty(2, attr_dim=2, dtype=torch.float64)
    for strategy in ("sequential", "batched"):
        comp = projective_from(oracle, cond, strategy=strategy)
        for k, sigma in enumerate(SIGMAS):
            x = oracle.sample(cond, sigma=sigma, generator=torch.Generator().manual_seed(k))
            joint = oracle(x, sigma, cond)
            got = comp(x, sigma)
            scale = float(x.abs().max()) + 1.0
            torch.testing.assert_close(got, joint, rtol=0, atol=1e-12 * scale)


def test_oracles_are_not_cropped_and_auto_falls_back():
    oracle = _factorized()
    cond = Conditions.from_lists([_grid_positions(3, 0)], [[[1.0, 0.0]] * 3], dtype=torch.float64)
    x = oracle.sample(cond, sigma=1.0, generator=torch.Generator().manual_seed(0))
    comp = projective_from(oracle, cond)
    assert comp.plan(x, 1.0) == "batched"
    with pytest.raises(LocalScoreError, match="fixed image shape"):
        comp.evaluate(x, 1.0, strategy="crop")


@pytest.mark.parametrize("global_std", [0.0, 0.5])
def test_residual_matches_the_analytic_gap_without_cpc(global_std):
    oracle = OverlappingObjects(1, 16, 16, object_radius=3.0, object_std=0.5, global_std=global_std)
    cond = Conditions.from_lists([[(5.0, 4.0), (5.0, 7.5), (11.0, 11.0)], [(8.0, 8.0), (10.0, 9.0)]],
                                 dtype=torch.float64)
    for sigma in (0.05, 0.5, 3.0):
        x = oracle.sample(cond, sigma=sigma, generator=torch.Generator().manual_seed(1))
        gap = oracle.composition_gap(x, sigma, cond)  # closed form: D(c_J) - proj
        assert float(gap.abs().max()) > 1e-4  # CPC fails, measurably
        proj = projective_from(oracle, cond)(x, sigma)
        torch.testing.assert_close(oracle(x, sigma, cond) - proj, gap, rtol=0, atol=1e-11)
        res = residual(oracle, x, sigma, cond)
        signal = (oracle(x, sigma, cond) - oracle(x, sigma, None)).flatten(1).norm(dim=1)
        torch.testing.assert_close(res.error_norm, gap.flatten(1).norm(dim=1), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.signal_norm, signal, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.per_image, gap.flatten(1).norm(dim=1) / signal, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.per_pixel, gap.norm(dim=1) / signal.view(-1, 1, 1), rtol=1e-9, atol=1e-12)


def test_residual_is_zero_under_cpc():
    oracle = _factorized()
    cond = Conditions.from_lists([_grid_positions(6, 3), _grid_positions(2, 4)],
                                 [[[0.3, 0.1]] * 6, [[1.0, 0.0]] * 2], dtype=torch.float64)
    for sigma in SIGMAS:
        x = oracle.sample(cond, sigma=sigma, generator=torch.Generator().manual_seed(2))
        r = residual(oracle, x, sigma, cond)
        assert float(r.per_image.max()) < 1e-9
        assert bool((r.signal_norm > 0).all())


def _heun_samples(denoiser, n: int, shape: tuple[int, int, int], seed: int, steps: int = 24) -> torch.Tensor:
    sigmas = karras_sigmas(steps, 0.002, 80.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64) * sigmas[0]
    return sample_heun(denoiser, x, sigmas)


def test_sampling_the_composition_draws_from_the_exact_joint():
    """Five objects composed from one-object denoisers (no component has more than one object): Heun on the
    composition matches the exact joint in mean, variance and two-sample tests; dropping one component
    (a wrong composition) is detected by the same tests."""
    C, S, n = 1, 16, 256
    bg_std, obj_std = 0.25, 0.4
    oracle = FactorizedObjects(C, S, S, object_radius=2.5, object_mean=1.0, object_std=obj_std, mean_width=2.5,
                               background_std=bg_std)
    one = Conditions.from_lists([[(3.0, 3.0), (3.0, 12.0), (8.0, 7.5), (12.5, 3.0), (12.5, 12.5)]],
                                dtype=torch.float64)
    cond = one.repeat_interleave(n)
    comps = [bind(oracle, c) for c in one.singletons()]
    bg = bind(oracle, one.drop_all())
    assert all(c.counts().max() == 1 for c in one.singletons())
    got = _heun_samples(projective(bg, comps), n, (C, S, S), seed=0, steps=64)
    exact = oracle.sample(cond, generator=torch.Generator().manual_seed(1))
    # exact moments: mean mu_J; per-pixel variance v_b + object_std**2 on the objects' regions
    mean = oracle.mean(one)[0]
    var = bg_std**2 + obj_std**2 * oracle.regions(one)[0].any(0).to(torch.float64)[None]
    z = (got.mean(0) - mean) / (var / n).sqrt()
    assert float(z.abs().max()) < 4.5 and float(z.square().mean()) < 1.5
    ratio = got.var(0) / var
    assert float((ratio - 1).abs().max()) < 0.45  # sample variance of n = 256: sd ~ 0.09 per pixel
    # Heun's own discretisation bias on the variance is ~2 % at 64 steps (~8 % at 24)
    assert float(got.var(0).mean() / var.mean() - 1) == pytest.approx(0.0, abs=0.05)
    p_energy = energy_test(got, exact, n_perm=200)
    p_ks = ks_projections(got, exact, n_dirs=8)
    assert p_energy > 0.01 and p_ks > 0.01, (p_energy, p_ks)
    wrong = _heun_samples(projective(bg, comps[:4]), 256, (C, S, S), seed=0, steps=16)
    assert energy_test(wrong, exact, n_perm=200) < 0.01
