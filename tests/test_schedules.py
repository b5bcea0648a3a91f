"""Noise schedules against their defining formulas (numpy / scipy), inverses, and bad input."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate

from localscore import LocalScoreError
from localscore.schedules import (
    alphas_cumprod_to_sigmas,
    ddpm_alphas_cumprod,
    karras_sigmas,
    loguniform_sigmas,
    sigmas_to_alphas_cumprod,
    vp_cosine_sigma_to_t,
    vp_cosine_sigmas,
    vp_cosine_t_to_sigma,
    vp_linear_sigma_to_t,
    vp_linear_sigmas,
    vp_linear_t_to_sigma,
)

F64 = torch.float64
GRIDS = [
    lambda n, **k: karras_sigmas(n, 0.002, 80.0, **k),
    lambda n, **k: loguniform_sigmas(n, 0.01, 50.0, **k),
    lambda n, **k: vp_linear_sigmas(n, **k),
    lambda n, **k: vp_cosine_sigmas(n, **k),
]


@pytest.mark.parametrize("make", GRIDS)
@given(n=st.integers(1, 300))
def test_every_grid_is_strictly_decreasing_and_ends_at_zero(make: Any, n: int) -> None:
    g = make(n, dtype=F64)
    assert g.shape == (n + 1,) and g[-1] == 0 and (g[:-1] > 0).all() and (g[1:] < g[:-1]).all()
    h = make(n, append_zero=False, dtype=F64)
    assert h.shape == (n,) and torch.equal(h, g[:-1])
    assert make(n).dtype == torch.get_default_dtype()


def test_karras_is_uniform_in_sigma_to_the_one_over_rho() -> None:
    g = karras_sigmas(20, 0.002, 80.0, rho=7.0, append_zero=False, dtype=F64).numpy()
    assert g[0] == 80.0 and g[-1] == 0.002
    steps = np.diff(g ** (1 / 7))
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)
    np.testing.assert_allclose(karras_sigmas(4, 1.0, 4.0, rho=1.0, append_zero=False, dtype=F64).numpy(),
                               [4.0, 3.0, 2.0, 1.0])


def test_loguniform_is_geometric() -> None:
    g = loguniform_sigmas(30, 0.01, 50.0, append_zero=False, dtype=F64).numpy()
    ratios = g[1:] / g[:-1]
    np.testing.assert_allclose(ratios, (0.01 / 50.0) ** (1 / 29), rtol=1e-12)


def test_vp_linear_matches_the_integrated_beta() -> None:
    b0, b1 = 0.1, 20.0
    for t in [1e-3, 0.1, 0.5, 1.0]:
        integral = integrate.quad(lambda u: b0 + u * (b1 - b0), 0, t)[0]
        alpha_bar = math.exp(-integral)
        assert vp_linear_t_to_sigma(t) == pytest.approx(math.sqrt(1 / alpha_bar - 1), rel=1e-10)
    g = vp_linear_sigmas(5, t_min=0.2, t_max=0.9, append_zero=False, dtype=F64)
    ts = np.linspace(0.9, 0.2, 5)
    np.testing.assert_allclose(g.numpy(), [vp_linear_t_to_sigma(float(t)) for t in ts], rtol=1e-12)


def test_vp_cosine_matches_the_schedule_definition() -> None:
    s = 0.008

    def f(t: float) -> float:
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    for t in [0.0, 0.1, 0.5, 0.95]:
        alpha_bar = f(t) / f(0)
        assert vp_cosine_t_to_sigma(t) == pytest.approx(math.sqrt(max(1 / alpha_bar - 1, 0)), rel=1e-10, abs=1e-12)
    g = vp_cosine_sigmas(6, sigma_min=0.01, sigma_max=20.0, append_zero=False, dtype=F64)
    assert g[0].item() == pytest.approx(20.0) and g[-1].item() == pytest.approx(0.01)
    ts = vp_cosine_sigma_to_t(g)
    np.testing.assert_allclose(np.diff(ts.numpy()), np.diff(ts.numpy())[0], rtol=1e-9)   # uniform in t


@given(t=st.floats(0.0, 1.0))
def test_vp_linear_round_trip(t: float) -> None:
    assert vp_linear_sigma_to_t(vp_linear_t_to_sigma(t)) == pytest.approx(t, abs=1e-10)


@given(t=st.floats(0.0, 0.99))
def test_vp_cosine_round_trip(t: float) -> None:
    assert vp_cosine_sigma_to_t(vp_cosine_t_to_sigma(t)) == pytest.approx(t, abs=1e-8)


def test_maps_keep_tensor_shape_and_dtype() -> None:
    t = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    for fn in (vp_linear_t_to_sigma, vp_cosine_t_to_sigma, vp_linear_sigma_to_t, vp_cosine_sigma_to_t):
        out = fn(t)
        assert out.shape == t.shape and out.dtype == torch.float32


def test_discrete_tables() -> None:
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(ddpm_alphas_cumprod(1000, dtype=F64).numpy(), np.cumprod(1 - betas), rtol=1e-12)
    betas = np.linspace(math.sqrt(8.5e-4), math.sqrt(0.012), 1000) ** 2
    np.testing.assert_allclose(ddpm_alphas_cumprod(1000, 8.5e-4, 0.012, schedule="scaled_linear", dtype=F64).numpy(),
                               np.cumprod(1 - betas), rtol=1e-12)
    # the discrete cosine table telescopes to the continuous schedule at t = (k + 1) / T (away from the clip)
    ac = ddpm_alphas_cumprod(1000, schedule="cosine", dtype=F64)
    t = torch.arange(1, 1001, dtype=F64) / 1000
    cont = sigmas_to_alphas_cumprod(vp_cosine_t_to_sigma(t[:900]))
    np.testing.assert_allclose(ac[:900].numpy(), cont.numpy(), rtol=1e-9)
    sig = alphas_cumprod_to_sigmas(ac)
    torch.testing.assert_close(sigmas_to_alphas_cumprod(sig), ac)
    assert (sig[1:] > sig[:-1]).all()


# ------------------------------------------------------------------------------------------------ bad input
BAD_CALLS = [
    lambda: karras_sigmas(0), lambda: karras_sigmas(-3), lambda: karras_sigmas(2.0), lambda: karras_sigmas(True),
    lambda: karras_sigmas(5, 1.0, 1.0), lambda: karras_sigmas(5, 2.0, 1.0), lambda: karras_sigmas(5, -1.0, 1.0),
    lambda: karras_sigmas(5, 0.0, 1.0), lambda: karras_sigmas(5, math.nan, 1.0),
    lambda: karras_sigmas(5, 0.1, math.inf),
    lambda: karras_sigmas(5, rho=0.0), lambda: karras_sigmas(5, rho=-7.0), lambda: karras_sigmas(5, append_zero=1),
    lambda: karras_sigmas(5, dtype=torch.int64), lambda: karras_sigmas(5, 0.1, "80"),
    lambda: loguniform_sigmas(0), lambda: loguniform_sigmas(5, 3.0, 2.0),
    lambda: vp_linear_sigmas(0), lambda: vp_linear_sigmas(5, t_min=0.0),
    lambda: vp_linear_sigmas(5, t_min=0.5, t_max=0.5),
    lambda: vp_linear_sigmas(5, beta_min=1.0, beta_max=0.5), lambda: vp_linear_sigmas(5, beta_min=-0.1),
    lambda: vp_cosine_sigmas(5, sigma_min=1.0, sigma_max=0.5), lambda: vp_cosine_sigmas(5, s=-0.1),
    lambda: vp_linear_t_to_sigma(-0.1), lambda: vp_linear_t_to_sigma(math.nan),
    lambda: vp_linear_t_to_sigma(torch.tensor([0.1, -1.0])), lambda: vp_linear_t_to_sigma(torch.tensor([1])),
    lambda: vp_linear_t_to_sigma("0.5"), lambda: vp_linear_sigma_to_t(-1.0), lambda: vp_linear_sigma_to_t(math.inf),
    lambda: vp_cosine_t_to_sigma(1.0), lambda: vp_cosine_t_to_sigma(torch.tensor([0.5, 1.2])),
    lambda: vp_cosine_t_to_sigma(-0.5), lambda: vp_cosine_sigma_to_t(torch.tensor([math.nan])),
    lambda: vp_cosine_sigma_to_t(True),
    lambda: alphas_cumprod_to_sigmas(torch.tensor([1.0, 0.0])), lambda: alphas_cumprod_to_sigmas(torch.tensor([1.5])),
    lambda: alphas_cumprod_to_sigmas(torch.ones(2, 2)), lambda: alphas_cumprod_to_sigmas(torch.tensor([math.nan])),
    lambda: alphas_cumprod_to_sigmas([0.5]), lambda: alphas_cumprod_to_sigmas(torch.tensor([1, 1])),
    lambda: sigmas_to_alphas_cumprod(torch.tensor([-1.0])), lambda: sigmas_to_alphas_cumprod(torch.tensor([math.inf])),
    lambda: ddpm_alphas_cumprod(1), lambda: ddpm_alphas_cumprod(10, 0.1, 0.01),
    lambda: ddpm_alphas_cumprod(10, 0.1, 1.0),
    lambda: ddpm_alphas_cumprod(10, schedule="sigmoid"), lambda: ddpm_alphas_cumprod(10, dtype=torch.int32),
]


@pytest.mark.parametrize("make", [karras_sigmas, loguniform_sigmas])
@given(n=st.integers(-5, 0), lo=st.floats(allow_nan=True, allow_infinity=True),
       hi=st.floats(allow_nan=True, allow_infinity=True))
def test_bad_grid_arguments_raise(make: Any, n: int, lo: float, hi: float) -> None:
    with pytest.raises(LocalScoreError):
        make(n, 0.1, 1.0)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        with pytest.raises(LocalScoreError):
            make(3, lo, hi)
    else:
        assert make(3, lo, hi, dtype=F64)[0].item() == hi


@pytest.mark.parametrize("fn", [vp_linear_t_to_sigma, vp_linear_sigma_to_t, vp_cosine_t_to_sigma,
                                vp_cosine_sigma_to_t])
@given(v=st.one_of(st.floats(max_value=-1e-300), st.just(math.nan), st.just(-math.inf)))
def test_bad_map_arguments_raise(fn: Any, v: float) -> None:
    with pytest.raises(LocalScoreError):
        fn(v)
    with pytest.raises(LocalScoreError):
        fn(torch.tensor([0.5, v], dtype=F64))


def test_all_bad_calls_raise() -> None:
    for call in BAD_CALLS:     # every case, not only those hypothesis draws
        with pytest.raises(LocalScoreError):
            call()
