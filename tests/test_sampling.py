"""Samplers and correctors against exact oracles: distributions, convergence orders, invariance, plumbing."""

from __future__ import annotations

import math
import sys
from typing import Any

import pytest
import torch
from _sampling_oracles import F64, GAUSS, MIXTURE, flow_slope
from _twosample import energy_test, ks_projections
from hypothesis import given
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError
from localscore.oracles import Gaussian
from localscore.sampling import (
    langevin_correct,
    log_prob_difference,
    mala_correct,
    sample_ddim,
    sample_ddpm,
    sample_euler,
    sample_euler_maruyama,
    sample_heun,
)
from localscore.schedules import karras_sigmas

# (name, sampler, steps, extra kwargs): steps chosen so that the discretisation bias is below the
# statistical resolution of the checks (n = 4000 for moments, 1000 + 1000 for the two-sample tests).
SAMPLERS: list[tuple[str, Any, int, dict[str, Any]]] = [
    ("euler", sample_euler, 300, {}),
    ("heun", sample_heun, 40, {}),
    ("heun_churn", sample_heun, 60, {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 50.0}),
    ("ddpm", sample_ddpm, 200, {}),
    ("ddim_eta0", sample_ddim, 300, {}),
    ("ddim_eta05", sample_ddim, 200, {"eta": 0.5}),
    ("euler_maruyama", sample_euler_maruyama, 400, {}),
]
N = 4000


def _run(sampler: Any, target: Any, steps: int, kwargs: dict[str, Any], n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    sigmas = karras_sigmas(steps, 0.002, 80.0, dtype=F64)
    x = sigmas[0] * torch.randn(n, *target.shape, generator=g, dtype=F64)
    return sampler(target, x, sigmas, generator=g, **kwargs)


@pytest.mark.parametrize("target", ["mixture", "gauss"])
@pytest.mark.parametrize(("name", "sampler", "steps", "kwargs"), SAMPLERS, ids=[s[0] for s in SAMPLERS])
def test_sampler_recovers_the_distribution(target: str, name: str, sampler: Any, steps: int,
                                           kwargs: dict[str, Any]) -> None:
    oracle = MIXTURE if target == "mixture" else GAUSS
    out = _run(sampler, oracle, steps, kwargs).flatten(1)
    mean, cov = oracle.moments()
    mean = mean.flatten()
    se = (cov.diagonal() / N).sqrt()
    assert ((out.mean(0) - mean).abs() < 4.5 * se).all(), (out.mean(0), mean)
    # covariance: entrywise within 5 standard errors (SE of s_ij ~ sqrt((s_ii s_jj + s_ij^2) / n))
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / N).sqrt()
    excess_kurtosis_margin = 2.0 if target == "mixture" else 1.0
    assert ((torch.cov(out.T) - cov).abs() < 5 * excess_kurtosis_margin * se_cov).all(), (torch.cov(out.T), cov)
    ref = oracle.sample(1000, generator=torch.Generator().manual_seed(99), dtype=F64)
    assert energy_test(out[:1000], ref, n_perm=100) > 0.01
    assert ks_projections(out, ref) > 0.01
    if target == "mixture":   # the modes are populated in proportion to their weights (0.3 / 0.7)
        frac = (out[:, 0] > -0.25).double().mean().item()
        assert abs(frac - 0.7) < 4.5 * math.sqrt(0.21 / N)


def test_the_two_sample_checks_have_power() -> None:
    """Negative control: too few Euler steps give visibly wrong samples, and the checks say so."""
    out = _run(sample_euler, MIXTURE, 2, {}, n=1000)
    ref = MIXTURE.sample(1000, generator=torch.Generator().manual_seed(99), dtype=F64)
    assert energy_test(out, ref, n_perm=100) < 0.01
    assert ks_projections(out, ref) < 0.01


def test_euler_converges_at_first_order() -> None:
    assert -1.15 < flow_slope(sample_euler, [16, 32, 64, 128]) < -0.85


def test_ddim_eta0_converges_at_first_order() -> None:
    assert -1.15 < flow_slope(sample_ddim, [16, 32, 64, 128]) < -0.85


def test_heun_converges_at_second_order() -> None:
    assert -2.2 < flow_slope(sample_heun, [8, 16, 32, 64]) < -1.8


def test_deterministic_samplers_land_on_the_exact_flow() -> None:
    x = torch.randn(3, 1, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * 10
    sigmas = karras_sigmas(200, 0.05, 10.0, append_zero=False, dtype=F64)
    exact = GAUSS.probability_flow(x, 10.0, 0.05)
    torch.testing.assert_close(sample_heun(GAUSS, x, sigmas), exact, rtol=5e-4, atol=5e-4)


def test_ddim_eta1_is_ddpm_and_eta0_is_euler() -> None:
    sigmas = karras_sigmas(10, 0.01, 20.0, dtype=F64)
    x = 20 * torch.randn(16, 2, 1, 1, dtype=F64, generator=torch.Generator().manual_seed(1))
    a = sample_ddim(MIXTURE, x, sigmas, eta=1.0, generator=torch.Generator().manual_seed(2))
    b = sample_ddpm(MIXTURE, x, sigmas, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sample_ddim(MIXTURE, x, sigmas), sample_euler(MIXTURE, x, sigmas),
                               rtol=1e-12, atol=1e-12)


def test_ddpm_step_is_the_exact_posterior_for_a_point_mass() -> None:
    """With data = a point mass at 0, D = 0 is exact and one ancestral step gives exactly N(0, sigma'^2)."""
    zero = Gaussian(torch.zeros(1, 1, 1, dtype=F64), std=0.0)
    g = torch.Generator().manual_seed(3)
    x = 2.0 * torch.randn(20000, 1, 1, 1, generator=g, dtype=F64)
    out = sample_ddpm(zero, x, torch.tensor([2.0, 0.5], dtype=F64), generator=g)
    assert abs(out.var().item() - 0.25) < 5 * 0.25 * math.sqrt(2 / 20000)


@pytest.mark.parametrize(("name", "sampler", "steps", "kwargs"), SAMPLERS, ids=[s[0] for s in SAMPLERS])
def test_same_seed_same_bits(name: str, sampler: Any, steps: int, kwargs: dict[str, Any]) -> None:
    a = _run(sampler, MIXTURE, 8, kwargs, n=64, seed=5)
    b = _run(sampler, MIXTURE, 8, kwargs, n=64, seed=5)
    assert torch.equal(a, b)
    c = _run(sampler, MIXTURE, 8, kwargs, n=64, seed=6)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(("name", "sampler", "kwargs"),
                         [("euler", sample_euler, {}), ("heun_churn", sample_heun, {"s_churn": 5.0}),
                          ("ddpm", sample_ddpm, {}), ("ddim", sample_ddim, {"eta": 0.3}),
                          ("euler_maruyama", sample_euler_maruyama, {})])
def test_differentiable_through_the_sampler(name: str, sampler: Any, kwargs: dict[str, Any]) -> None:
    """Gradients w.r.t. the start, the grid and a denoiser parameter match finite differences."""
    sigmas = torch.tensor([3.0, 1.0, 0.3, 0.05], dtype=F64, requires_grad=True)   # 0 is a boundary of the grid
    x = torch.randn(2, 2, 1, 1, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    scale = torch.tensor(0.8, dtype=F64, requires_grad=True)

    def run(x: torch.Tensor, sigmas: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        denoiser = lambda y, s, c=None: scale * MIXTURE(y, s)  # noqa: E731
        return sampler(denoiser, x, sigmas, generator=torch.Generator().manual_seed(1), **kwargs)

    out = run(x, sigmas, scale)
    assert out.requires_grad
    assert torch.autograd.gradcheck(run, (x, sigmas, scale), eps=1e-6, atol=1e-5)
    to_zero = torch.tensor([3.0, 1.0, 0.3, 0.0], dtype=F64)
    assert torch.autograd.gradcheck(lambda x: run(x, to_zero, scale.detach()), (x,), eps=1e-6, atol=1e-5)


def test_callback_and_progress() -> None:
    sigmas = karras_sigmas(5, 0.01, 10.0, dtype=F64)
    seen: list[dict[str, Any]] = []
    x = 10 * torch.randn(3, 2, 1, 1, dtype=F64)
    out = sample_heun(MIXTURE, x, sigmas, callback=seen.append, progress=True)
    assert [s["i"] for s in seen] == list(range(5))
    assert all(float(s["sigma"]) == float(sigmas[s["i"]]) and float(s["sigma_next"]) == float(sigmas[s["i"] + 1])
               for s in seen)
    assert torch.equal(seen[-1]["x"], out)
    # the last step of Heun to 0 is Euler: it returns the denoiser at the last positive level
    assert torch.equal(seen[-1]["denoised"], out)


def test_missing_tqdm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(LocalScoreError, match="tqdm"):
        sample_euler(MIXTURE, torch.zeros(1, 2, 1, 1), torch.tensor([1.0, 0.0]), progress=True)


def test_conditions_are_passed_to_every_call() -> None:
    cond = Conditions.from_lists([[(0.0, 0.0)], [(1.0, 1.0), (2.0, 2.0)]])
    calls: list[Any] = []

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, c: Any = None) -> torch.Tensor:
        calls.append(c)
        return torch.zeros_like(x)

    sample_heun(denoiser, torch.ones(2, 1, 2, 2), karras_sigmas(3, 0.1, 1.0), cond)
    mala_correct(denoiser, torch.ones(2, 1, 2, 2), 0.5, cond, n_quad=2)
    assert len(calls) == 5 + 3 and all(c is cond for c in calls[:5])
    assert calls[-1].batch_size == 4     # the quadrature nodes run as one batched call


# --------------------------------------------------------------------------------------------- correctors
def test_log_prob_difference_matches_the_oracle() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 2, 2, generator=g, dtype=F64), torch.randn(8, 1, 2, 2, generator=g, dtype=F64)
    want = GAUSS.log_prob(y, 0.7) - GAUSS.log_prob(x, 0.7)
    torch.testing.assert_close(log_prob_difference(GAUSS, x, y, 0.7, n_quad=1), want)   # linear score: exact
    a, b = torch.randn(8, 2, 1, 1, generator=g, dtype=F64), torch.randn(8, 2, 1, 1, generator=g, dtype=F64)
    want = MIXTURE.log_prob(b, 0.8) - MIXTURE.log_prob(a, 0.8)
    torch.testing.assert_close(log_prob_difference(MIXTURE, a, b, 0.8, n_quad=12), want, rtol=1e-7, atol=1e-7)
    assert (log_prob_difference(MIXTURE, a, b, 0.8, n_quad=1) - want).abs().max() > 1e-4  # quadrature matters


@pytest.mark.parametrize("mode", ["line_integral", "log_prob"])
def test_mala_keeps_a_gaussian_invariant_and_ula_does_not(mode: str) -> None:
    sigma, n = 0.3, 4000
    g = torch.Generator().manual_seed(0)
    x = GAUSS.sample(n, sigma=sigma, generator=g, dtype=F64)
    step = 4.0   # eps = 0.36: comparable to the smallest variance, so unadjusted Langevin is visibly biased
    rates: list[float] = []
    lp = GAUSS.log_prob if mode == "log_prob" else None
    out = mala_correct(GAUSS, x, sigma, n_steps=10, step_scale=step, generator=g, log_prob=lp, n_quad=1,
                       callback=lambda info: rates.append(info["accepted"].double().mean().item()))
    assert 0.2 < min(rates) and max(rates) < 0.95       # accepted and rejected within one batch step
    _, cov = GAUSS.moments(sigma)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / n).sqrt()
    assert ((torch.cov(out.flatten(1).T) - cov).abs() < 5 * se_cov).all()
    ref = GAUSS.sample(1000, sigma=sigma, generator=torch.Generator().manual_seed(9), dtype=F64)
    assert energy_test(out[:1000], ref, n_perm=100) > 0.01
    ula = langevin_correct(GAUSS, x, sigma, n_steps=10, step_scale=step, generator=g)
    assert (torch.cov(ula.flatten(1).T) - cov).abs().max() > 10 * se_cov.max()


def test_mala_keeps_the_mixture_invariant_with_the_line_integral() -> None:
    sigma, n = 0.4, 4000
    g = torch.Generator().manual_seed(1)
    x = MIXTURE.sample(n, sigma=sigma, generator=g, dtype=F64)
    out = mala_correct(MIXTURE, x, sigma, n_steps=10, step_scale=3.0, generator=g, n_quad=4)
    mean, cov = MIXTURE.moments(sigma)
    se = (cov.diagonal() / n).sqrt()
    assert ((out.flatten(1).mean(0) - mean.flatten()).abs() < 4.5 * se).all()
    ref = MIXTURE.sample(1000, sigma=sigma, generator=torch.Generator().manual_seed(9), dtype=F64)
    assert energy_test(out[:1000], ref, n_perm=100) > 0.01


def test_mala_acceptance_is_per_sample() -> None:
    """A sample whose proposal is certain to be accepted is not dragged along by a rejected neighbour."""
    point = Gaussian(torch.zeros(1, 1, 1, dtype=F64), std=1.0)
    # start one chain at the mode and one far in the tail: acceptance differs per sample
    x = torch.tensor([0.0, 6.0], dtype=F64).view(2, 1, 1, 1)
    acc: list[torch.Tensor] = []
    for seed in range(40):
        mala_correct(point, x, 0.1, step_scale=60.0, generator=torch.Generator().manual_seed(seed),
                     log_prob=point.log_prob, callback=lambda info: acc.append(info["accepted"]))
    a = torch.stack(acc).double()
    assert (a[:, 0] != a[:, 1]).any()     # some steps accepted one sample and rejected the other


def test_mala_chain_is_reproducible_and_differentiable() -> None:
    x = torch.randn(3, 2, 1, 1, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    a = mala_correct(MIXTURE, x, 0.5, n_steps=3, generator=torch.Generator().manual_seed(4))
    b = mala_correct(MIXTURE, x, 0.5, n_steps=3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and a.requires_grad
    (grad,) = torch.autograd.grad(a.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- bad input
def _meta_conditions(batch: int) -> Conditions:
    c = Conditions.from_lists([[(1.0, 1.0)]] * batch)
    fake = object.__new__(Conditions)
    for name in ("pos", "attr", "valid"):
        v = getattr(c, name)
        object.__setattr__(fake, name, None if v is None else v.to("meta"))
    return fake


def _ok(x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
    return torch.zeros_like(x)


COMMON_CASES = ["x_rank", "x_empty", "x_int", "x_nan", "x_list", "sig_2d", "sig_short", "sig_unsorted",
                "sig_nan", "sig_neg", "sig_meta", "x_meta", "cond_batch", "cond_meta", "cond_type",
                "den_call", "den_shape", "den_nan", "den_type", "gen_type", "cb_type", "progress_type", "sig_list"]


def _case(case: str) -> dict[str, Any]:
    args: dict[str, Any] = dict(denoiser=_ok, x=torch.zeros(2, 1, 2, 2), sigmas=torch.tensor([2.0, 1.0, 0.0]),
                                cond=None, kw={})
    bad = {
        "x_rank": ("x", torch.zeros(1, 2, 2)), "x_empty": ("x", torch.zeros(0, 1, 2, 2)),
        "x_int": ("x", torch.zeros(2, 1, 2, 2, dtype=torch.int64)), "x_nan": ("x", torch.full((2, 1, 2, 2), math.nan)),
        "x_list": ("x", [[0.0]]), "sig_2d": ("sigmas", torch.ones(2, 2)), "sig_short": ("sigmas", torch.ones(1)),
        "sig_unsorted": ("sigmas", torch.tensor([1.0, 2.0, 0.0])),
        "sig_nan": ("sigmas", torch.tensor([2.0, math.nan, 0.0])), "sig_neg": ("sigmas", torch.tensor([1.0, -1.0])),
        "sig_meta": ("sigmas", torch.tensor([2.0, 1.0, 0.0], device="meta")),
        "x_meta": ("x", torch.zeros(2, 1, 2, 2, device="meta")),
        "cond_batch": ("cond", Conditions.from_lists([[(1.0, 1.0)]] * 3)), "cond_meta": ("cond", _meta_conditions(2)),
        "cond_type": ("cond", [(1.0, 1.0)]), "den_call": ("denoiser", 3.0),
        "den_shape": ("denoiser", lambda x, s, c=None: x[:, :, :1]),
        "den_nan": ("denoiser", lambda x, s, c=None: x * math.nan),
        "den_type": ("denoiser", lambda x, s, c=None: x.tolist()), "sig_list": ("sigmas", [2.0, 1.0, 0.0]),
    }
    if case in bad:
        key, value = bad[case]
        args[key] = value
    elif case == "gen_type":
        args["kw"] = {"generator": 0}
    elif case == "cb_type":
        args["kw"] = {"callback": "print"}
    elif case == "progress_type":
        args["kw"] = {"progress": "yes"}
    return args


_PREFIX_ARGUMENT = {"x": "x", "sig": "sigmas", "sigma": "sigma", "cond": "cond", "den": "denoiser", "new": "x_new",
                    "gen": "generator", "cb": "callback", "progress": "progress", "log": "log_prob"}


def _names_the_argument(case: str) -> str:
    """The message of a bad-input case names the argument at fault (so a LocalScoreError raised for another
    reason, e.g. by a check that rejects every call, does not pass the test)."""
    if case in ("n_steps", "n_quad") or case.startswith("step_scale"):
        arg = case.removesuffix("_neg")
    else:
        arg = _PREFIX_ARGUMENT[case.split("_")[0]]
    return f"`{arg}`"


@pytest.mark.parametrize("fn", [sample_euler, sample_heun, sample_ddpm, sample_ddim, sample_euler_maruyama,
                                langevin_correct, mala_correct, log_prob_difference])
def test_the_bad_input_baseline_is_valid(fn: Any) -> None:
    """Positive control of the bad-input tests below: their arguments, before one is spoiled, are accepted."""
    a = _case("none")
    if fn is log_prob_difference:  # D = 0: score -x / sigma^2, so log p(1) - log p(0) = -4 / (2 * 0.25) per image
        out = fn(a["denoiser"], a["x"], torch.ones(2, 1, 2, 2), 0.5, a["cond"])
        torch.testing.assert_close(out, torch.full((2,), -8.0))
        return
    sigma = a["sigmas"] if fn not in (langevin_correct, mala_correct) else 0.5
    out = fn(a["denoiser"], a["x"], sigma, a["cond"], **a["kw"])
    assert out.shape == a["x"].shape and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("sampler", [s[1] for s in SAMPLERS[:1]] + [sample_heun, sample_ddpm, sample_ddim,
                                                                    sample_euler_maruyama])
@given(case=st.sampled_from(COMMON_CASES))
def test_bad_sampler_input_raises(sampler: Any, case: str) -> None:
    a = _case(case)
    with pytest.raises(LocalScoreError, match=_names_the_argument(case)):
        sampler(a["denoiser"], a["x"], a["sigmas"], a["cond"], **a["kw"])


@pytest.mark.parametrize(("sampler", "kwargs"), [
    (sample_ddim, {"eta": 1.5}), (sample_ddim, {"eta": -0.1}), (sample_ddim, {"eta": math.nan}),
    (sample_heun, {"s_churn": -1.0}), (sample_heun, {"s_tmin": 2.0, "s_tmax": 1.0}),
    (sample_heun, {"s_noise": math.nan}), (sample_heun, {"s_churn": "a lot"})])
def test_bad_sampler_options_raise(sampler: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(LocalScoreError):
        sampler(_ok, torch.zeros(1, 1, 1, 1), torch.tensor([1.0, 0.0]), **kwargs)


@pytest.mark.parametrize("fn", [langevin_correct, mala_correct])
@given(case=st.sampled_from(["x_rank", "x_nan", "cond_batch", "cond_meta", "den_call", "den_shape",
                             "den_nan", "gen_type", "cb_type", "sigma_neg", "sigma_nan", "sigma_zero",
                             "sigma_meta", "sigma_len", "n_steps", "step_scale", "step_scale_neg", "n_quad",
                             "log_prob_shape", "log_prob_type"]))
def test_bad_corrector_input_raises(fn: Any, case: str) -> None:
    a = _case(case) if case in COMMON_CASES else _case("none")
    sigma: Any = 0.5
    kw = dict(a["kw"])
    if case == "sigma_neg":
        sigma = -0.5
    elif case == "sigma_nan":
        sigma = torch.tensor([math.nan, 0.5])
    elif case == "sigma_zero":
        sigma = 0.0
    elif case == "sigma_meta":
        sigma = torch.ones(2, device="meta")
    elif case == "sigma_len":
        sigma = torch.ones(3)
    elif case == "n_steps":
        kw["n_steps"] = 0
    elif case == "step_scale":
        kw["step_scale"] = 0.0
    elif case == "step_scale_neg":
        kw["step_scale"] = -1.0
    elif case == "n_quad":
        kw["n_quad"] = 0
    elif case == "log_prob_shape":
        kw["log_prob"] = lambda x, s, c=None: torch.zeros(x.shape[0], 1)
        if fn is langevin_correct:
            kw["metropolis"] = True
    elif case == "log_prob_type":
        kw["log_prob"] = 3
    with pytest.raises(LocalScoreError, match=_names_the_argument(case)):
        fn(a["denoiser"], a["x"], sigma, a["cond"], **kw)


@given(case=st.sampled_from(["x_rank", "x_meta", "new_shape", "new_meta", "sigma_neg", "n_quad", "den_call",
                             "cond_batch"]))
def test_bad_log_prob_difference_input_raises(case: str) -> None:
    a = _case(case) if case in COMMON_CASES else _case("none")
    x_new: Any = torch.ones(2, 1, 2, 2)
    sigma: Any = 0.5
    kw: dict[str, Any] = {}
    if case == "new_shape":
        x_new = torch.ones(2, 1, 2, 1)
    elif case == "new_meta":
        x_new = torch.ones(2, 1, 2, 2, device="meta")
    elif case == "sigma_neg":
        sigma = -1.0
    elif case == "n_quad":
        kw["n_quad"] = 100
    with pytest.raises(LocalScoreError, match=_names_the_argument(case)):
        log_prob_difference(a["denoiser"], a["x"], x_new, sigma, a["cond"], **kw)


def test_ddpm_on_a_discrete_vp_model_recovers_the_distribution() -> None:
    """End to end: an epsilon network on a DDPM table, wrapped by the adapter, sampled on its own timesteps."""
    from localscore.denoisers import DiscreteDDPMDenoiser
    from localscore.schedules import alphas_cumprod_to_sigmas, ddpm_alphas_cumprod

    ac = ddpm_alphas_cumprod(1000, dtype=F64)

    def eps_net(x_vp: torch.Tensor, t: torch.Tensor, c: Any) -> torch.Tensor:
        a = ac[t.round().long()].view(-1, 1, 1, 1)
        s = torch.sqrt((1 - a) / a)
        x = x_vp / torch.sqrt(a)
        return (x - MIXTURE(x, s.flatten())) / s

    model = DiscreteDDPMDenoiser(eps_net, ac)
    table = alphas_cumprod_to_sigmas(ac)
    sigmas = torch.cat([table.flip(0)[::4], table.new_zeros(1)])     # 250 of the model's timesteps, then 0
    g = torch.Generator().manual_seed(0)
    x = sigmas[0] * torch.randn(N, 2, 1, 1, generator=g, dtype=F64)
    out = sample_ddpm(model, x, sigmas, generator=g).flatten(1)
    mean, cov = MIXTURE.moments()
    assert ((out.mean(0) - mean.flatten()).abs() < 4.5 * (cov.diagonal() / N).sqrt()).all()
    ref = MIXTURE.sample(1000, generator=torch.Generator().manual_seed(99), dtype=F64)
    assert energy_test(out[:1000], ref, n_perm=100) > 0.01


def test_langevin_chains_converge_from_a_wrong_start() -> None:
    """From a point mass at the mean, both chains reach p_sigma (ULA up to its O(eps) bias, small here)."""
    sigma, n = 0.3, 2000
    mean, cov = GAUSS.moments(sigma)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / n).sqrt()
    start = mean.expand(n, *GAUSS.shape).clone()
    for metropolis in (False, True):
        g = torch.Generator().manual_seed(3)
        out = langevin_correct(GAUSS, start, sigma, n_steps=150, step_scale=1.0 if metropolis else 0.3,
                               metropolis=metropolis, n_quad=1, generator=g)
        assert ((torch.cov(out.flatten(1).T) - cov).abs() < 5 * se_cov).all(), metropolis
