"""The k-diffusion / diffusers family of samplers against exact oracles: convergence orders fitted on the closed-form
probability-flow ODE of a Gaussian, distributions at fine grids, compositions and local networks in float32 and
float64, and k-diffusion's own ``sample_dpmpp_2m`` when its ``sampling.py`` can be loaded."""

from __future__ import annotations

import inspect
import math
import sys
from typing import Any

import pytest
import torch
from _benchmarks import bench_helpers
from _sampling_oracles import F64, GAUSS, MIXTURE, flow_slope
from _twosample import energy_test

from localscore import Conditions, LocalConditionalDenoiser, LocalScoreError
from localscore.compose import projective_from
from localscore.oracles import Gaussian
from localscore.sampling import (
    sample_deis,
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_lms,
    sample_unipc,
)
from localscore.schedules import karras_sigmas, loguniform_sigmas

NEW: list[tuple[str, Any, dict[str, Any]]] = [
    ("euler_churn", sample_euler, {"s_churn": 10.0, "s_tmin": 0.05, "s_tmax": 50.0}),
    ("euler_ancestral", sample_euler_ancestral, {}),
    ("dpm_2", sample_dpm_2, {}),
    ("dpm_2_ancestral", sample_dpm_2_ancestral, {"s_noise": 1.0, "eta": 0.7}),
    ("dpmpp_2s_ancestral", sample_dpmpp_2s_ancestral, {}),
    ("dpmpp_2m", sample_dpmpp_2m, {}),
    ("dpmpp_2m_sde_midpoint", sample_dpmpp_2m_sde, {}),
    ("dpmpp_2m_sde_heun", sample_dpmpp_2m_sde, {"solver_type": "heun"}),
    ("dpmpp_3m_sde", sample_dpmpp_3m_sde, {}),
    ("lms", sample_lms, {}),
    ("deis", sample_deis, {}),
    ("unipc_bh2", sample_unipc, {}),
    ("unipc_bh1_3", sample_unipc, {"variant": "bh1", "order": 3}),
]
DETERMINISTIC = {"dpm_2", "dpmpp_2m", "lms", "deis", "unipc_bh2", "unipc_bh1_3"}


# ------------------------------------------------------------------------------------------- convergence orders
FINE = [16, 32, 64, 128]
COARSE = [8, 16, 32, 64]
# (name, sampler, kwargs, steps, hi, (lo, hi) bounds of the fitted slope). Measured slopes (float64):
# 2M -2.01, 2M SDE(eta=0) midpoint -2.01 / heun -2.06, DPM-2 -2.08, DPM++2S(eta=0) -2.03, DEIS-2 -2.02,
# UniPC-1 (UniP-1 + UniC) -2.04, UniP-2 alone -1.94; 3M(eta=0) -2.86, LMS-3 -2.80, LMS-4 -3.40, DEIS-3 -3.05,
# UniPC-2 bh2 -3.04, bh1 -3.32. The multistep methods start with a first-order step, whose local error O(h^2)
# bounds the *asymptotic* global order by 2 (3M's slope falls to -2.36 on [16, 128]); the fits are in the
# pre-asymptotic range where the start at large sigma is accurate, as in practice.
ORDERS: list[tuple[str, Any, dict[str, Any], list[int], float, tuple[float, float]]] = [
    ("dpmpp_2m", sample_dpmpp_2m, {}, FINE, 10.0, (-2.2, -1.8)),
    ("dpmpp_2m_sde_eta0_midpoint", sample_dpmpp_2m_sde, {"eta": 0.0}, FINE, 10.0, (-2.2, -1.8)),
    ("dpmpp_2m_sde_eta0_heun", sample_dpmpp_2m_sde, {"eta": 0.0, "solver_type": "heun"}, FINE, 10.0, (-2.25, -1.8)),
    ("dpm_2", sample_dpm_2, {}, FINE, 10.0, (-2.25, -1.8)),
    ("dpmpp_2s_eta0", sample_dpmpp_2s_ancestral, {"eta": 0.0}, FINE, 10.0, (-2.2, -1.8)),
    ("dpm_2_ancestral_eta0", sample_dpm_2_ancestral, {"eta": 0.0}, FINE, 10.0, (-2.25, -1.8)),
    ("euler_ancestral_eta0", sample_euler_ancestral, {"eta": 0.0}, FINE, 10.0, (-1.15, -0.85)),
    ("deis_2", sample_deis, {"order": 2}, FINE, 10.0, (-2.2, -1.8)),
    ("lms_2", sample_lms, {"order": 2}, FINE, 10.0, (-2.2, -1.75)),
    ("unipc_1", sample_unipc, {"order": 1}, FINE, 10.0, (-2.2, -1.8)),
    ("dpmpp_3m_eta0", sample_dpmpp_3m_sde, {"eta": 0.0}, COARSE, 80.0, (-3.3, -2.6)),
    ("lms_3", sample_lms, {"order": 3}, FINE, 10.0, (-3.2, -2.5)),
    ("lms_4", sample_lms, {"order": 4}, FINE, 10.0, (-4.2, -3.1)),
    ("deis_3", sample_deis, {"order": 3}, COARSE, 10.0, (-3.5, -2.7)),
    ("unipc_2_bh2", sample_unipc, {"order": 2}, COARSE, 10.0, (-3.5, -2.7)),
    ("unipc_2_bh1", sample_unipc, {"order": 2, "variant": "bh1"}, COARSE, 10.0, (-3.7, -2.8)),
]


@pytest.mark.parametrize(("name", "sampler", "kwargs", "steps", "hi", "bounds"), ORDERS, ids=[o[0] for o in ORDERS])
def test_convergence_order_on_the_exact_flow(name: str, sampler: Any, kwargs: dict[str, Any], steps: list[int],
                                             hi: float, bounds: tuple[float, float]) -> None:
    slope = flow_slope(sampler, steps, hi, **kwargs)
    assert bounds[0] < slope < bounds[1], slope


def test_third_order_methods_beat_second_order_at_equal_cost() -> None:
    """At 32 steps (32 calls each) the 3rd-order exponential multistep methods land closer to the exact flow than
    2M, and LMS-4 closer than LMS-2 (LMS integrates in sigma, not in log sigma: larger constants)."""
    x = torch.tensor([2.0, -3.0, 1.5, 4.0], dtype=F64).view(1, 1, 2, 2) * 10
    exact = GAUSS.probability_flow(x, 10.0, 0.05)
    sig = loguniform_sigmas(32, 0.05, 10.0, append_zero=False, dtype=F64)
    err = lambda out: float((out - exact).norm())  # noqa: E731
    e2m = err(sample_dpmpp_2m(GAUSS, x, sig))
    for out in (sample_dpmpp_3m_sde(GAUSS, x, sig, eta=0.0), sample_deis(GAUSS, x, sig), sample_unipc(GAUSS, x, sig)):
        assert err(out) < e2m / 2
    assert err(sample_lms(GAUSS, x, sig)) < err(sample_lms(GAUSS, x, sig, order=2)) / 4


# ----------------------------------------------------------------------------------------------- distributions
N = 3000


@pytest.mark.parametrize(("name", "sampler", "kwargs"), NEW, ids=[s[0] for s in NEW])
def test_sampler_recovers_the_mixture(name: str, sampler: Any, kwargs: dict[str, Any]) -> None:
    """At a fine Karras grid every sampler draws from the mixture: mean and covariance within a few standard
    errors of the sample size, mode weights, and an energy two-sample test against exact samples."""
    steps = 60 if name in DETERMINISTIC else 150
    g = torch.Generator().manual_seed(0)
    sigmas = karras_sigmas(steps, 0.002, 80.0, dtype=F64)
    x = sigmas[0] * torch.randn(N, *MIXTURE.shape, generator=g, dtype=F64)
    out = sampler(MIXTURE, x, sigmas, generator=g, **kwargs).flatten(1)
    mean, cov = MIXTURE.moments()
    se = (cov.diagonal() / N).sqrt()
    assert ((out.mean(0) - mean.flatten()).abs() < 4.5 * se).all(), (out.mean(0), mean)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / N).sqrt()
    assert ((torch.cov(out.T) - cov).abs() < 10 * se_cov).all(), (torch.cov(out.T), cov)  # 5 SE x kurtosis margin 2
    frac = (out[:, 0] > -0.25).double().mean().item()
    assert abs(frac - 0.7) < 4.5 * math.sqrt(0.21 / N)
    ref = MIXTURE.sample(800, generator=torch.Generator().manual_seed(99), dtype=F64)
    assert energy_test(out[:800], ref, n_perm=60) > 0.01


def test_sde_noise_matters_and_is_reproducible() -> None:
    """Same seed, same bits; another seed, other samples; eta = 0 draws nothing (the generator is untouched)."""
    sig = karras_sigmas(8, 0.01, 20.0, dtype=F64)
    x = 20 * torch.randn(16, 2, 1, 1, dtype=F64, generator=torch.Generator().manual_seed(1))
    for name, sampler, kwargs in NEW:
        if name in DETERMINISTIC:
            continue
        a = sampler(MIXTURE, x, sig, generator=torch.Generator().manual_seed(5), **kwargs)
        b = sampler(MIXTURE, x, sig, generator=torch.Generator().manual_seed(5), **kwargs)
        c = sampler(MIXTURE, x, sig, generator=torch.Generator().manual_seed(6), **kwargs)
        assert torch.equal(a, b) and not torch.equal(a, c), name
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    sample_dpmpp_2m_sde(MIXTURE, x, sig, generator=g, eta=0.0)
    assert torch.equal(g.get_state(), state)
    torch.testing.assert_close(sample_dpmpp_2m_sde(MIXTURE, x, sig, eta=0.0), sample_dpmpp_2m(MIXTURE, x, sig),
                               rtol=1e-13, atol=1e-13)


def test_euler_ancestral_at_eta_1_is_ddpm() -> None:
    from localscore.sampling import sample_ddpm

    sig = karras_sigmas(10, 0.01, 20.0, dtype=F64)
    x = 20 * torch.randn(16, 2, 1, 1, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sample_euler_ancestral(MIXTURE, x, sig, generator=torch.Generator().manual_seed(2)),
                               sample_ddpm(MIXTURE, x, sig, generator=torch.Generator().manual_seed(2)),
                               rtol=1e-12, atol=1e-12)


def test_sde_step_from_a_point_mass_is_the_exact_posterior() -> None:
    """With data = a point mass at 0 (D = 0 exact) one step of the eta = 1 samplers gives N(r x, r (s^2 - s'^2))."""
    zero = Gaussian(torch.zeros(1, 1, 1, dtype=F64), std=0.0)
    n = 20000
    x = torch.full((n, 1, 1, 1), 1.5, dtype=F64)
    grid = torch.tensor([2.0, 0.5], dtype=F64)
    r = (0.5 / 2.0) ** 2
    for sampler in (sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_euler_ancestral):
        out = sampler(zero, x, grid, generator=torch.Generator().manual_seed(3))
        var = r * (4.0 - 0.25)
        assert abs(out.mean().item() - r * 1.5) < 5 * math.sqrt(var / n), sampler
        assert abs(out.var().item() - var) < 5 * var * math.sqrt(2 / n), sampler


# ---------------------------------------------------------------------------------- compositions, networks, dtypes
def _net() -> LocalConditionalDenoiser:
    torch.manual_seed(0)
    return LocalConditionalDenoiser(width=8, depth=1, heads=2, attr_dim=0, cond_radius=1.5).eval()


COND = Conditions.from_lists([[(1.0, 1.0), (13.0, 14.0)]])   # 13 pixels apart: more than 2 r_c = 10


@pytest.mark.parametrize(("name", "sampler", "kwargs"), NEW, ids=[s[0] for s in NEW])
def test_runs_on_compositions_and_local_networks_in_float32_and_float64(name: str, sampler: Any,
                                                                        kwargs: dict[str, Any]) -> None:
    net = _net()
    outs = {}
    for dtype in (torch.float32, torch.float64):
        model = net.to(dtype)
        x = (5.0 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=F64)).to(dtype)
        sig = karras_sigmas(4, 0.02, 5.0, dtype=dtype)
        with torch.no_grad():
            joint = sampler(model, x, sig, COND, generator=torch.Generator().manual_seed(2), **kwargs)
            comp = sampler(projective_from(model, COND), x, sig, generator=torch.Generator().manual_seed(2), **kwargs)
        for out in (joint, comp):
            assert out.dtype == dtype and out.shape == x.shape and bool(torch.isfinite(out).all())
        outs[dtype] = comp
        # the one-pass identity (objects more than 2 r_c apart): composition = joint model, step for step
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(comp, joint, rtol=tol, atol=tol)
    if name in DETERMINISTIC:   # float32 follows float64 to its round-off
        torch.testing.assert_close(outs[torch.float32].double(), outs[torch.float64], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("name", "sampler", "kwargs"), NEW[:6] + NEW[9:], ids=[s[0] for s in NEW[:6] + NEW[9:]])
def test_differentiable_through_the_new_samplers(name: str, sampler: Any, kwargs: dict[str, Any]) -> None:
    sigmas = torch.tensor([3.0, 1.0, 0.3, 0.05], dtype=F64, requires_grad=True)
    x = torch.randn(2, 2, 1, 1, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)

    def run(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        return sampler(MIXTURE, x, sigmas, generator=torch.Generator().manual_seed(1), **kwargs)

    assert torch.autograd.gradcheck(run, (x, sigmas), eps=1e-6, atol=1e-5)


def test_callback_and_conditions() -> None:
    seen: list[dict[str, Any]] = []
    calls: list[Any] = []
    cond = Conditions.from_lists([[(0.0, 0.0)], [(1.0, 1.0)]])

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, c: Any = None) -> torch.Tensor:
        calls.append(c)
        return 0.5 * x

    sig = karras_sigmas(4, 0.1, 2.0)
    for name, sampler, kwargs in NEW:
        seen.clear()
        calls.clear()
        out = sampler(denoiser, torch.ones(2, 1, 2, 2), sig, cond, callback=seen.append, progress=True, **kwargs)
        assert [s["i"] for s in seen] == [0, 1, 2, 3] and torch.equal(seen[-1]["x"], out), name
        assert calls and all(c is cond for c in calls), name
        two_calls = name.startswith(("dpm_2", "dpmpp_2s"))
        assert len(calls) == (7 if two_calls else 4), (name, len(calls))


@pytest.mark.parametrize(("sampler", "kwargs", "arg"), [
    (sample_dpmpp_2m_sde, {"solver_type": "euler"}, "solver_type"), (sample_dpmpp_2m_sde, {"eta": -1.0}, "eta"),
    (sample_dpmpp_3m_sde, {"s_noise": math.nan}, "s_noise"), (sample_lms, {"order": 5}, "order"),
    (sample_deis, {"order": 0}, "order"), (sample_unipc, {"order": 4}, "order"),
    (sample_unipc, {"variant": "bh3"}, "variant"), (sample_unipc, {"corrector": 1}, "corrector"),
    (sample_euler, {"s_churn": -1.0}, "s_churn"), (sample_euler_ancestral, {"eta": "1"}, "eta"),
    (sample_dpm_2, {"s_tmin": 2.0, "s_tmax": 1.0}, "s_tmin"), (sample_dpmpp_2s_ancestral, {"s_noise": -1.0}, "s_noise"),
])
def test_bad_options_raise(sampler: Any, kwargs: dict[str, Any], arg: str) -> None:
    with pytest.raises(LocalScoreError, match=arg):
        sampler(lambda x, s, c=None: torch.zeros_like(x), torch.zeros(1, 1, 1, 1), torch.tensor([1.0, 0.0]), **kwargs)


def _bad_option(sampler: Any) -> dict[str, Any]:
    params = inspect.signature(sampler).parameters
    for name, bad in (("eta", -1.0), ("order", 9), ("s_churn", -1.0), ("solver_type", "euler")):
        if name in params:
            return {name: bad}
    return {}


@pytest.mark.parametrize(("name", "sampler", "kwargs"), NEW, ids=[s[0] for s in NEW])
def test_common_argument_checks_come_first(name: str, sampler: Any, kwargs: dict[str, Any]) -> None:
    """The shared prologue: a bad `x` is reported before a bad grid, a bad grid before a bad option."""
    ok = lambda x, s, c=None: x  # noqa: E731
    bad = _bad_option(sampler)
    with pytest.raises(LocalScoreError, match="`x`"):
        sampler(ok, torch.zeros(2, 2), torch.tensor([1.0, 2.0]), **bad)
    with pytest.raises(LocalScoreError, match="`sigmas`"):
        sampler(ok, torch.zeros(1, 1, 1, 1), torch.tensor([1.0, 2.0]), **bad)
    if bad:
        with pytest.raises(LocalScoreError, match=f"`{next(iter(bad))}`"):
            sampler(ok, torch.zeros(1, 1, 1, 1), torch.tensor([1.0, 0.0]), **bad)
    with pytest.raises(LocalScoreError, match="non-finite"):
        sampler(lambda x, s, c=None: x * math.nan, torch.zeros(1, 1, 1, 1), torch.tensor([1.0, 0.5, 0.0]), **kwargs)


# --------------------------------------------------------------------------------------------------- k-diffusion
# k-diffusion's ``sampling.py`` alone (never the package: it pulls in clip, clean-fid and torchvision), loaded by
# benchmarks/_bench.py from ``$LOCALSCORE_K_DIFFUSION_SAMPLING`` or an installed ``k_diffusion``; ``None`` when
# there is no file.
KD = bench_helpers().load_k_diffusion_sampling()
needs_kd = pytest.mark.skipif(KD is None, reason="k-diffusion's sampling.py is not available (install k-diffusion "
                              "or point LOCALSCORE_K_DIFFUSION_SAMPLING at its k_diffusion/sampling.py)")


@needs_kd
@pytest.mark.parametrize(("name", "kwargs"), [
    ("sample_dpmpp_2m", {}), ("sample_lms", {}), ("sample_dpm_2", {}), ("sample_euler", {}),
    ("sample_dpmpp_2m_sde", {"eta": 0.0}), ("sample_dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}),
    ("sample_dpmpp_3m_sde", {"eta": 0.0}), ("sample_dpmpp_2s_ancestral", {"eta": 0.0}),
    ("sample_dpmpp_2m_sde", {}), ("sample_dpmpp_3m_sde", {}), ("sample_dpmpp_2s_ancestral", {}),
    ("sample_euler_ancestral", {}), ("sample_dpm_2_ancestral", {}),
])
def test_equals_k_diffusion(name: str, kwargs: dict[str, Any]) -> None:
    """Same denoiser, grid and (for the SDEs) the same Gaussian draws: equal to 1e-10 in float64. localscore's
    denoisers run in k-diffusion's samplers as they are (``model(x, sigma, **extra_args)``, cond by keyword)."""
    sig = karras_sigmas(12, 0.002, 80.0, dtype=F64)
    x = 80 * torch.randn(32, 2, 1, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    ours = getattr(sys.modules[__name__], name)(MIXTURE, x, sig, generator=torch.Generator().manual_seed(1), **kwargs)
    g = torch.Generator().manual_seed(1)
    noise = lambda s, s_next: torch.randn(x.shape, generator=g, dtype=F64)  # noqa: E731
    ode = name in ("sample_dpmpp_2m", "sample_lms", "sample_dpm_2", "sample_euler")
    extra = {} if ode else {"noise_sampler": noise}
    theirs = getattr(KD, name)(MIXTURE, x, sig, extra_args={"cond": None}, disable=True, **extra, **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
