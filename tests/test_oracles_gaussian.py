"""Gaussian and GaussianMixture oracles against independent closed forms (scipy, dense algebra, quadrature)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, stats
from scipy.special import logsumexp

from localscore import Conditions, LocalScoreError
from localscore.oracles import AnalyticDistribution, Gaussian, GaussianMixture


def _random_cov(d: int, rank: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, rank or d, generator=g, dtype=torch.float64)
    return a @ a.T / (rank or d) + (0.0 if rank else 0.1) * torch.eye(d, dtype=torch.float64)


@pytest.fixture
def gauss() -> Gaussian:
    mean = torch.tensor([0.3, -0.5, 1.0, 0.2], dtype=torch.float64).view(1, 2, 2)
    return Gaussian(mean, _random_cov(4, seed=1))


@pytest.fixture
def mixture() -> GaussianMixture:
    means = torch.tensor([[1.0, -1.0, 0.5], [-1.5, 0.5, 0.0], [0.0, 2.0, -1.0]], dtype=torch.float64)
    covs = torch.stack([_random_cov(3, seed=s) * 0.3 for s in range(3)])
    return GaussianMixture(torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64), means.view(3, 3, 1, 1), covs)


def test_is_an_analytic_distribution(gauss: Gaussian, mixture: GaussianMixture) -> None:
    assert isinstance(gauss, AnalyticDistribution) and isinstance(mixture, AnalyticDistribution)
    assert gauss.shape == (1, 2, 2) and mixture.shape == (3, 1, 1)


@pytest.mark.parametrize("sigma", [0.05, 0.7, 5.0])
def test_gaussian_denoiser_is_the_wiener_filter(gauss: Gaussian, sigma: float) -> None:
    x = torch.randn(6, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mu, cov = gauss.mean.flatten(), gauss.cov
    want = mu + (cov @ torch.linalg.solve(cov + sigma**2 * torch.eye(4, dtype=torch.float64), (x.flatten(1) - mu).T)).T
    torch.testing.assert_close(gauss(x, sigma).flatten(1), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sigma", [0.0, 0.3, 2.0])
def test_gaussian_log_prob_matches_scipy(gauss: Gaussian, sigma: float) -> None:
    x = torch.randn(5, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    cov = gauss.cov.numpy() + sigma**2 * np.eye(4)
    want = stats.multivariate_normal(gauss.mean.flatten().numpy(), cov).logpdf(x.flatten(1).numpy())
    np.testing.assert_allclose(gauss.log_prob(x, sigma).numpy(), want, rtol=1e-10)


@pytest.mark.parametrize("sigma", [0.0, 0.4, 3.0])
def test_mixture_log_prob_matches_scipy(mixture: GaussianMixture, sigma: float) -> None:
    x = torch.randn(7, 3, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    xs = x.flatten(1).numpy()
    comps = [np.log(w) + stats.multivariate_normal(m, c + sigma**2 * np.eye(3)).logpdf(xs)
             for w, m, c in zip([0.2, 0.5, 0.3], mixture.means.flatten(1).numpy(), mixture.covs.numpy())]
    np.testing.assert_allclose(mixture.log_prob(x, sigma).numpy(), logsumexp(np.stack(comps), axis=0), rtol=1e-10)


@pytest.mark.parametrize("which", ["gauss", "mixture"])
@given(seed=st.integers(0, 2**16), log_sigma=st.floats(-3, 2))
def test_score_is_the_gradient_of_log_prob(which: str, seed: int, log_sigma: float) -> None:
    oracle = _G if which == "gauss" else _M
    sigma = math.exp(log_sigma)
    x = (1 + sigma) * torch.randn(4, *oracle.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(oracle.log_prob(x, sigma).sum(), x)
    torch.testing.assert_close(oracle.score(x.detach(), sigma), grad, rtol=1e-8, atol=1e-10)


_G = Gaussian(torch.tensor([0.3, -0.5, 1.0, 0.2], dtype=torch.float64).view(1, 2, 2), _random_cov(4, seed=1))
_M = GaussianMixture(torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64),
                     torch.tensor([[1.0, -1.0, 0.5], [-1.5, 0.5, 0.0], [0.0, 2.0, -1.0]]).view(3, 3, 1, 1),
                     torch.stack([_random_cov(3, seed=s) * 0.3 for s in range(3)]))


@pytest.mark.parametrize("sigma", [0.2, 1.0])
def test_mixture_denoiser_is_the_posterior_mean_by_quadrature(sigma: float) -> None:
    w, m, s = [0.3, 0.7], [-1.0, 1.5], [0.4, 0.8]
    gm = GaussianMixture(torch.tensor(w), torch.tensor(m).view(2, 1, 1, 1), std=torch.tensor(s))
    for xv in [-2.0, 0.1, 0.9, 3.0]:
        def prior(x0: float) -> float:
            return sum(wi * stats.norm.pdf(x0, mi, si) for wi, mi, si in zip(w, m, s))
        def post(x0: float, xv: float = xv) -> float:
            return prior(x0) * stats.norm.pdf(xv, x0, sigma)
        num = integrate.quad(lambda x0: x0 * post(x0), -12, 12, limit=200)[0]
        den = integrate.quad(post, -12, 12, limit=200)[0]
        got = gm(torch.full((1, 1, 1, 1), xv, dtype=torch.float64), sigma).item()
        assert got == pytest.approx(num / den, rel=1e-7, abs=1e-9)


def test_moments_match_the_parameters_and_samples(mixture: GaussianMixture) -> None:
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    mus, covs = mixture.means.flatten(1), mixture.covs
    mean_want = (w[:, None] * mus).sum(0)
    cov_want = sum(w[k] * (covs[k] + torch.outer(mus[k] - mean_want, mus[k] - mean_want)) for k in range(3))
    mean, cov = mixture.moments(0.5)
    torch.testing.assert_close(mean.flatten(), mean_want)
    torch.testing.assert_close(cov, cov_want + 0.25 * torch.eye(3, dtype=torch.float64))
    xs = mixture.sample(40000, sigma=0.5, generator=torch.Generator().manual_seed(0), dtype=torch.float64).flatten(1)
    se = (cov.diagonal() / 40000).sqrt()
    assert ((xs.mean(0) - mean_want).abs() < 4.5 * se).all()
    torch.testing.assert_close(torch.cov(xs.T), cov, atol=0.05, rtol=0.05)


def test_mixture_weights_are_sampled_in_proportion() -> None:
    gm = GaussianMixture(torch.tensor([1.0, 3.0]), torch.tensor([-10.0, 10.0]).view(2, 1, 1, 1), std=0.1)
    xs = gm.sample(20000, generator=torch.Generator().manual_seed(1))
    frac = (xs > 0).double().mean().item()
    assert abs(frac - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 20000)


def test_gaussian_samples_match_scipy_distribution(gauss: Gaussian) -> None:
    xs = gauss.sample(3000, sigma=0.3, generator=torch.Generator().manual_seed(2), dtype=torch.float64).flatten(1)
    cov = gauss.cov + 0.09 * torch.eye(4, dtype=torch.float64)
    # Mahalanobis distances of exact samples are chi^2 with 4 degrees of freedom.
    diff = xs - gauss.mean.flatten()
    d2 = (diff * torch.linalg.solve(cov, diff.T).T).sum(1).numpy()
    assert stats.kstest(d2, stats.chi2(4).cdf).pvalue > 1e-3


def test_singular_covariance() -> None:
    cov = _random_cov(4, rank=2, seed=7)
    g = Gaussian(torch.zeros(4, 1, 1, dtype=torch.float64), cov)
    x = torch.randn(3, 4, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want = (cov @ torch.linalg.solve(cov + 0.25 * torch.eye(4, dtype=torch.float64), x.flatten(1).T)).T
    torch.testing.assert_close(g(x, 0.5).flatten(1), want)
    np.testing.assert_allclose(g.log_prob(x, 0.5).numpy(),
                               stats.multivariate_normal(np.zeros(4), cov.numpy() + 0.25 * np.eye(4)).logpdf(
                                   x.flatten(1).numpy()), rtol=1e-9)
    with pytest.raises(LocalScoreError, match="singular"):
        g.log_prob(x, 0.0)
    xs = g.sample(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64).flatten(1)
    _, sv, _ = torch.linalg.svd(xs)
    assert sv[2] < 1e-8 * sv[0]          # the samples span the rank-2 support only


def test_probability_flow_solves_the_ode_and_transports_the_marginals(gauss: Gaussian) -> None:
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    s0, s1, h = 3.0, 0.7, 1e-5
    xt = gauss.probability_flow(x, s0, s1)
    # d x / d sigma = -sigma * score(x, sigma): central difference of the exact flow
    dx = (gauss.probability_flow(x, s0, s1 + h) - gauss.probability_flow(x, s0, s1 - h)) / (2 * h)
    torch.testing.assert_close(dx, -s1 * gauss.score(xt, s1), rtol=1e-6, atol=1e-8)
    # the flow is affine; its linear part M maps Cov(p_s0) to Cov(p_s1)
    eye = torch.eye(4, dtype=torch.float64)
    base = gauss.probability_flow(gauss.mean[None].expand(4, -1, -1, -1), s0, s1).flatten(1)
    m = (gauss.probability_flow(gauss.mean[None] + eye.view(4, 1, 2, 2), s0, s1).flatten(1) - base).T
    torch.testing.assert_close(m @ (gauss.cov + s0**2 * eye) @ m.T, gauss.cov + s1**2 * eye)


def test_returns_in_x_dtype_and_accepts_empty_conditions(gauss: Gaussian) -> None:
    x = torch.randn(2, 1, 2, 2)
    assert gauss(x, 0.5).dtype == torch.float32 and gauss.log_prob(x, 0.5).dtype == torch.float32
    empty = Conditions.from_lists([[], []])
    torch.testing.assert_close(gauss(x, 0.5, empty), gauss(x, 0.5))
    assert gauss.sample(empty).shape == (2, 1, 2, 2)


def test_sigma_per_image(mixture: GaussianMixture) -> None:
    x = torch.randn(3, 3, 1, 1, dtype=torch.float64)
    sig = torch.tensor([0.1, 1.0, 4.0], dtype=torch.float64)
    both = mixture(x, sig)
    for b in range(3):
        torch.testing.assert_close(both[b:b + 1], mixture(x[b:b + 1], float(sig[b])))


# ------------------------------------------------------------------------------------------------ bad input
def _meta_conditions() -> Conditions:
    c = Conditions.from_lists([[(1.0, 1.0)]])
    fake = object.__new__(Conditions)
    for name in ("pos", "attr", "valid"):
        v = getattr(c, name)
        object.__setattr__(fake, name, None if v is None else v.to("meta"))
    return fake


bad_constructors = [
    lambda: Gaussian(torch.zeros(2, 2)),                                        # mean rank
    lambda: Gaussian(torch.zeros(1, 2, 2), torch.eye(3)),                       # cov size
    lambda: Gaussian(torch.zeros(1, 2, 1), torch.tensor([[1.0, 2.0], [0.0, 1.0]])),   # not symmetric
    lambda: Gaussian(torch.zeros(1, 2, 1), torch.tensor([[1.0, 0.0], [0.0, -1.0]])),  # indefinite
    lambda: Gaussian(torch.zeros(1, 2, 1), torch.eye(2), std=1.0),              # both
    lambda: Gaussian(torch.zeros(1, 2, 1), std=-1.0),
    lambda: Gaussian(torch.zeros(1, 2, 1), std=float("nan")),
    lambda: Gaussian(torch.full((1, 2, 1), float("nan"))),
    lambda: Gaussian(torch.zeros(1, 2, 1), std=torch.ones(3)),                  # does not broadcast
    lambda: Gaussian(torch.zeros(1, 2, 1), torch.eye(2, device="meta")),        # device
    lambda: Gaussian(torch.zeros(1, 2, 1), dtype=torch.int64),
    lambda: Gaussian([0.0, 1.0]),
    lambda: GaussianMixture(torch.ones(2), torch.zeros(3, 1, 1, 1)),            # M mismatch
    lambda: GaussianMixture(torch.tensor([1.0, -1.0]), torch.zeros(2, 1, 1, 1)),
    lambda: GaussianMixture(torch.zeros(2), torch.zeros(2, 1, 1, 1)),
    lambda: GaussianMixture(torch.ones(2), torch.zeros(2, 1, 1, 1), torch.ones(2, 2, 2)),
    lambda: GaussianMixture(torch.ones(2), torch.zeros(2, 1, 1, 1), std=torch.ones(3)),
    lambda: GaussianMixture(torch.ones(2, 1), torch.zeros(2, 1, 1, 1)),
    lambda: GaussianMixture(torch.ones(2, device="meta"), torch.zeros(2, 1, 1, 1)),
]


@pytest.mark.parametrize("make", bad_constructors)
def test_bad_constructor_arguments_raise(make) -> None:
    with pytest.raises(LocalScoreError):
        make()


@pytest.mark.parametrize("method", ["denoise", "score", "log_prob", "__call__"])
@given(case=st.sampled_from(["rank", "image_shape", "neg_sigma", "nan_sigma", "sigma_len", "nan_x", "cond",
                             "cond_type", "meta_x", "meta_sigma", "int_x", "zero_sigma"]))
def test_bad_calls_raise(method: str, case: str) -> None:
    oracle = _M
    x: object = torch.zeros(2, 3, 1, 1)
    sigma: object = 0.5
    cond: object = None
    if case == "rank":
        x = torch.zeros(3, 1, 1)
    elif case == "image_shape":
        x = torch.zeros(2, 1, 3, 1)
    elif case == "neg_sigma":
        sigma = -0.1
    elif case == "nan_sigma":
        sigma = torch.tensor([0.5, float("nan")])
    elif case == "sigma_len":
        sigma = torch.ones(3)
    elif case == "nan_x":
        x = torch.full((2, 3, 1, 1), float("nan"))
    elif case == "cond":
        cond = Conditions.from_lists([[(0.0, 0.0)], []])
    elif case == "cond_type":
        cond = [(0.0, 0.0)]
    elif case == "meta_x":
        x = torch.zeros(2, 3, 1, 1, device="meta")
    elif case == "meta_sigma":
        sigma = torch.ones(2, device="meta")
    elif case == "int_x":
        x = torch.zeros(2, 3, 1, 1, dtype=torch.int64)
    elif case == "zero_sigma":
        if method == "log_prob":
            return  # sigma = 0 is the data density
        sigma = 0.0
    # the message names the argument at fault (a check rejecting every call would not pass)
    arg = "`cond`" if case.startswith("cond") else "`sigma`" if "sigma" in case else "`x`"
    with pytest.raises(LocalScoreError, match=arg):
        getattr(oracle, method)(x, sigma, cond)


@pytest.mark.parametrize("method", ["denoise", "score", "log_prob", "__call__"])
def test_the_bad_call_baseline_is_valid(method: str) -> None:
    """Positive control of test_bad_calls_raise: its arguments before one is spoiled are accepted."""
    out = getattr(_M, method)(torch.zeros(2, 3, 1, 1), 0.5, None)
    assert out.shape == ((2,) if method == "log_prob" else (2, 3, 1, 1)) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(n=2.5), dict(n=True), dict(n=2, sigma=-1.0),
                                    dict(n=2, sigma=float("inf")), dict(n=2, generator="seed"),
                                    dict(n=2, dtype=torch.int32), dict(n=Conditions.from_lists([[(1.0, 1.0)]]))])
def test_bad_sample_arguments_raise(kwargs) -> None:
    with pytest.raises(LocalScoreError):
        _M.sample(kwargs.pop("n"), **kwargs)


def test_bad_flow_and_moments_arguments_raise() -> None:
    x = torch.zeros(1, 1, 2, 2)
    for a, b in [(0.0, 1.0), (1.0, -1.0), (float("nan"), 0.0), (1.0, torch.ones(2))]:
        with pytest.raises(LocalScoreError):
            _G.probability_flow(x, a, b)
    with pytest.raises(LocalScoreError):
        _G.moments(-1.0)
