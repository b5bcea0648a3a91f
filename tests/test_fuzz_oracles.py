"""Fuzz tests of :mod:`localscore.oracles` (Gaussian, mixture and object oracles): bad input raises a
LocalScoreError that names what was expected; legitimate variants (non-contiguous, channels-last, float32,
requires_grad) give the reference result of the plain float64 call.

``CASES`` are the cases of the before/after table of ``docs/reliability.md`` (run
``python tests/test_fuzz_oracles.py results.json`` to classify them in forked children, as
``tests/test_fuzz_issue18.py`` does); the hypothesis properties below fuzz the arguments further. Every
huge size must be refused from metadata, before allocating. The file runs in a few seconds on one thread.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError
from localscore.oracles import FactorizedObjects, Gaussian, GaussianMixture, OverlappingObjects

sys.path.insert(0, str(Path(__file__).parent))
from _fuzz import Case, case_adders, cases_main, check_case

FAST = settings(max_examples=15, deadline=None)
CASES: list[Case] = []
bad, ok = case_adders(CASES)
NAN, INF = float("nan"), float("inf")


def _x(B: int = 2, C: int = 1, H: int = 4, W: int = 4, seed: int = 0, dtype: torch.dtype = torch.float64,
       device: str = "cpu") -> torch.Tensor:
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(
        dtype).to(device)


def _g() -> Gaussian:
    a = torch.randn(16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return Gaussian(torch.zeros(1, 4, 4), cov=a @ a.T / 16 + 0.1 * torch.eye(16, dtype=torch.float64))


def _gm() -> GaussianMixture:
    return GaussianMixture(torch.tensor([0.3, 0.7]), torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)]),
                           std=torch.tensor([0.5, 1.0]))


def _fo(**kw: Any) -> FactorizedObjects:
    return FactorizedObjects(3, 12, 12, object_radius=2.0, attr_map=torch.eye(3), object_mean=0.0, **kw)


def _oo(**kw: Any) -> OverlappingObjects:
    return OverlappingObjects(3, 12, 12, object_radius=2.0, attr_map=torch.eye(3), object_mean=0.0,
                              global_std=0.3, **kw)


def _cond(B: int = 2, dtype: torch.dtype = torch.float64, device: str = "cpu") -> Conditions:
    pos = [[(3.0, 3.0), (8.0, 8.0)], [(2.0, 9.0)]][:B] + [[(5.0, 5.0)]] * max(0, B - 2)
    attrs = [[[1.0, 0.0, 0.0]] * len(p) for p in pos]
    return Conditions.from_lists(pos, attrs=attrs, dtype=dtype).to(device=device)


def _xo(B: int = 2, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return _x(B, 3, 12, 12, dtype=dtype)


# ---------------------------------------------------------------------------- Gaussian
bad("gaussian", "Gaussian mean on meta", lambda: Gaussian(torch.zeros(1, 4, 4, device="meta")))
bad("gaussian", "Gaussian mean [H, W]", lambda: Gaussian(torch.zeros(4, 4)))
bad("gaussian", "Gaussian mean NaN", lambda: Gaussian(torch.full((1, 2, 2), NAN)))
bad("gaussian", "Gaussian mean a list", lambda: Gaussian([[[0.0]]]))  # type: ignore[arg-type]
bad("gaussian", "Gaussian mean int64", lambda: Gaussian(torch.zeros(1, 2, 2, dtype=torch.int64)))
bad("gaussian", "Gaussian std -1", lambda: Gaussian(torch.zeros(1, 2, 2), std=-1.0))
bad("gaussian", "Gaussian std inf", lambda: Gaussian(torch.zeros(1, 2, 2), std=INF))
bad("gaussian", "Gaussian std 'a'", lambda: Gaussian(torch.zeros(1, 2, 2), std="a"))  # type: ignore[arg-type]
bad("gaussian", "Gaussian std [3] vs [1, 2, 2]", lambda: Gaussian(torch.zeros(1, 2, 2), std=torch.ones(3)))
bad("gaussian", "Gaussian cov of the wrong D", lambda: Gaussian(torch.zeros(1, 2, 2), cov=torch.eye(3)))
bad("gaussian", "Gaussian cov NaN", lambda: Gaussian(torch.zeros(1, 1, 2), cov=torch.full((2, 2), NAN)))
bad("gaussian", "Gaussian cov not PSD", lambda: Gaussian(torch.zeros(1, 1, 2), cov=-torch.eye(2)))
bad("gaussian", "Gaussian cov and std", lambda: Gaussian(torch.zeros(1, 1, 2), cov=torch.eye(2), std=1.0))
bad("gaussian", "Gaussian dtype int64", lambda: Gaussian(torch.zeros(1, 1, 2), dtype=torch.int64))
bad("gaussian", "Gaussian(mean [1, 1000, 1000], cov) D x D covariance", lambda: Gaussian(
    torch.zeros(1, 1000, 1000), cov=torch.zeros(1, 1)))
bad("gaussian", "denoise x of another image shape", lambda: _g()(_x(W=5), 1.0))
bad("gaussian", "denoise x NaN", lambda: _g()(_x().index_fill_(3, torch.tensor([1]), NAN), 1.0))
bad("gaussian", "denoise x on meta", lambda: _g()(_x(device="meta"), 1.0))
bad("gaussian", "denoise x int64", lambda: _g()(_x().long(), 1.0))
bad("gaussian", "denoise x [C, H, W]", lambda: _g()(_x()[0], 1.0))
bad("gaussian", "denoise sigma 0", lambda: _g()(_x(), 0.0))
bad("gaussian", "denoise sigma NaN", lambda: _g()(_x(), NAN))
bad("gaussian", "denoise sigma [3] for B = 2", lambda: _g()(_x(), torch.ones(3)))
bad("gaussian", "denoise cond with objects", lambda: _g()(_x(B=1), 1.0, Conditions.from_lists([[(1.0, 1.0)]])))
bad("gaussian", "denoise cond a list", lambda: _g()(_x(), 1.0, [1]))  # type: ignore[arg-type]
bad("gaussian", "score sigma -1", lambda: _g().score(_x(), -1.0))
bad("gaussian", "log_prob x NaN", lambda: _g().log_prob(_x() * NAN, 1.0))
bad("gaussian", "sample(0)", lambda: _g().sample(0))
bad("gaussian", "sample(10**12)", lambda: _g().sample(10**12))
bad("gaussian", "sample(2.5)", lambda: _g().sample(2.5))  # type: ignore[arg-type]
bad("gaussian", "sample sigma NaN", lambda: _g().sample(2, sigma=NAN))
bad("gaussian", "sample generator 'x'", lambda: _g().sample(2, generator="x"))  # type: ignore[arg-type]
bad("gaussian", "moments sigma -1", lambda: _g().moments(-1.0))
bad("gaussian", "moments of a [3, 100, 100] image (a 30000 x 30000 covariance)",
    lambda: Gaussian(torch.zeros(3, 100, 100)).moments())
bad("gaussian", "probability_flow sigma_from 0", lambda: _g().probability_flow(_x(), 0.0, 1.0))
bad("gaussian", "probability_flow sigma_to NaN", lambda: _g().probability_flow(_x(), 1.0, NAN))
bad("gaussian", "denoise sigma 1e200 (sigma**2 overflows float64)", lambda: _g()(_x(), 1e200))
bad("mixture", "log_prob sigma 1e160", lambda: _gm().log_prob(_x(), 1e160))
bad("objects", "object_radius 1e155 (its square overflows)", lambda: FactorizedObjects(1, 8, 8, object_radius=1e155))
bad("objects", "sample(2, sigma=1e39) into float32", lambda: _fo().sample(2, sigma=1e39))
bad("objects", "OverlappingObjects denoise sigma 1e300", lambda: _oo()(_xo(), 1e300, _cond()))
ok("gaussian", "denoise non-contiguous x", lambda: (_g()(_x(W=8)[..., ::2], 1.0), _g()(_x(W=8)[..., ::2].contiguous(),
                                                                                      1.0)))
ok("gaussian", "denoise channels-last x", lambda: (_g()(_x().to(memory_format=torch.channels_last), 0.7),
                                                   _g()(_x(), 0.7)))
ok("gaussian", "denoise float32 x", lambda: (_g()(_x(dtype=torch.float32), 0.7), _g()(_x(), 0.7).float()))
ok("gaussian", "denoise requires_grad x", lambda: (_g()(_x().requires_grad_(), 0.7).detach(), _g()(_x(), 0.7)))
ok("gaussian", "score = grad log_prob", lambda: (
    torch.autograd.grad(_g().log_prob(xg := _x().requires_grad_(), 0.7).sum(), xg)[0], _g().score(_x(), 0.7)))

# ---------------------------------------------------------------------------- mixture
bad("mixture", "weights negative", lambda: GaussianMixture(torch.tensor([-1.0, 2.0]), torch.zeros(2, 1, 2, 2)))
bad("mixture", "weights all zero", lambda: GaussianMixture(torch.zeros(2), torch.zeros(2, 1, 2, 2)))
bad("mixture", "weights NaN", lambda: GaussianMixture(torch.tensor([NAN, 1.0]), torch.zeros(2, 1, 2, 2)))
bad("mixture", "weights empty", lambda: GaussianMixture(torch.zeros(0), torch.zeros(0, 1, 2, 2)))
bad("mixture", "weights on meta", lambda: GaussianMixture(torch.ones(2, device="meta"),
                                                          torch.zeros(2, 1, 2, 2, device="meta")))
bad("mixture", "means [M, H, W]", lambda: GaussianMixture(torch.ones(2), torch.zeros(2, 2, 2)))
bad("mixture", "means M = 3 for 2 weights", lambda: GaussianMixture(torch.ones(2), torch.zeros(3, 1, 2, 2)))
bad("mixture", "std [3] for M = 2", lambda: GaussianMixture(torch.ones(2), torch.zeros(2, 1, 2, 2), std=torch.ones(3)))
bad("mixture", "covs not symmetric", lambda: GaussianMixture(
    torch.ones(1), torch.zeros(1, 1, 1, 2), covs=torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])))
bad("mixture", "covs [M, D, D] of the wrong M", lambda: GaussianMixture(torch.ones(2), torch.zeros(2, 1, 1, 2),
                                                                        covs=torch.eye(2)[None]))
bad("mixture", "weights a list", lambda: GaussianMixture([0.5, 0.5], torch.zeros(2, 1, 2, 2)))  # type: ignore[arg-type]
bad("mixture", "denoise x wrong shape", lambda: _gm()(_x(C=2), 1.0))
bad("mixture", "log_prob sigma inf", lambda: _gm().log_prob(_x(), INF))
bad("mixture", "sample(10**12)", lambda: _gm().sample(10**12))
bad("mixture", "moments of 8 components of [3, 64, 64] (8 x 12288**2 covariances)",
    lambda: GaussianMixture(torch.ones(8), torch.zeros(8, 3, 64, 64)).moments())
ok("mixture", "denoise float32 oracle vs float64 oracle", lambda: (
    GaussianMixture(torch.tensor([0.3, 0.7]), torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)]),
                    std=torch.tensor([0.5, 1.0]), dtype=torch.float32)(_x(), 0.7), _gm()(_x(), 0.7)))
ok("mixture", "denoise non-contiguous x", lambda: (_gm()(_x(H=8)[:, :, ::2], 0.7),
                                                   _gm()(_x(H=8)[:, :, ::2].contiguous(), 0.7)))

# ---------------------------------------------------------------------------- objects
bad("objects", "channels 0", lambda: FactorizedObjects(0, 8, 8, object_radius=1.0))
bad("objects", "height 2.5", lambda: FactorizedObjects(1, 2.5, 8, object_radius=1.0))  # type: ignore[arg-type]
bad("objects", "object_radius 0.1", lambda: FactorizedObjects(1, 8, 8, object_radius=0.1))
bad("objects", "object_radius NaN", lambda: FactorizedObjects(1, 8, 8, object_radius=NAN))
bad("objects", "object_radius '2'", lambda: FactorizedObjects(1, 8, 8, object_radius="2"))  # type: ignore[arg-type]
bad("objects", "background_std 0", lambda: FactorizedObjects(1, 8, 8, object_radius=1.0, background_std=0.0))
bad("objects", "object_mean of 2 channels for 3", lambda: FactorizedObjects(3, 8, 8, object_radius=1.0,
                                                                              object_mean=[1.0, 2.0]))
bad("objects", "channel_corr not PSD", lambda: FactorizedObjects(2, 8, 8, object_radius=1.0,
                                                                 channel_corr=torch.tensor([[1.0, 2.0], [2.0, 1.0]])))
bad("objects", "attr_map [2, 3] for C = 3", lambda: FactorizedObjects(3, 8, 8, object_radius=1.0,
                                                                       attr_map=torch.ones(2, 3)))
bad("objects", "dtype int64", lambda: FactorizedObjects(1, 8, 8, object_radius=1.0, dtype=torch.int64))
bad("objects", "global_std -1", lambda: OverlappingObjects(1, 8, 8, object_radius=1.0, global_std=-1.0))
bad("objects", "regions size (10**6, 10**6)", lambda: _fo().regions(_cond(), size=(10**6, 10**6)))
bad("objects", "mean size (10**6, 10**6)", lambda: _fo().mean(_cond(), size=(10**6, 10**6)))
bad("objects", "sample(1) of a 10**6 x 10**6 oracle", lambda: FactorizedObjects(
    1, 10**6, 10**6, object_radius=1.0).sample(1))
bad("objects", "sample(10**12)", lambda: _fo().sample(10**12))
bad("objects", "sample one object of radius 1000 on 300 x 300 (a 90000**2 block)", lambda: FactorizedObjects(
    1, 300, 300, object_radius=1000.0).sample(Conditions.from_lists([[(150.0, 150.0)]], dtype=torch.float64)))
bad("objects", "denoise one object of radius 1000 on 300 x 300", lambda: FactorizedObjects(
    1, 300, 300, object_radius=1000.0)(torch.zeros(1, 1, 300, 300), 1.0,
                                       Conditions.from_lists([[(150.0, 150.0)]], dtype=torch.float64)))
bad("objects", "denoise x of 2 channels for 3", lambda: _fo()(_x(2, 2, 12, 12), 1.0, _cond()))
bad("objects", "denoise x NaN", lambda: _fo()(_xo() * NAN, 1.0, _cond()))
bad("objects", "denoise x on meta", lambda: _fo()(_xo().to("meta"), 1.0, _cond()))
bad("objects", "denoise sigma 0", lambda: _fo()(_xo(), 0.0, _cond()))
bad("objects", "denoise cond batch 3 for B = 2", lambda: _fo()(_xo(), 1.0, _cond(3)))
bad("objects", "denoise cond a list", lambda: _fo()(_xo(), 1.0, [[(3.0, 3.0)]]))  # type: ignore[arg-type]
bad("objects", "denoise cond on meta", lambda: _fo()(_xo(), 1.0, _cond(device="meta")))
bad("objects", "denoise overlapping objects", lambda: _fo()(_xo(B=1), 1.0, Conditions.from_lists(
    [[(3.0, 3.0), (4.0, 4.0)]], attrs=[[[1.0, 0, 0]] * 2], dtype=torch.float64)))
bad("objects", "denoise object off the image", lambda: _fo()(_xo(B=1), 1.0, Conditions.from_lists(
    [[(30.0, 3.0)]], attrs=[[[1.0, 0, 0]]], dtype=torch.float64)))
bad("objects", "denoise attrs of length 2 for A = 3", lambda: _fo()(_xo(B=1), 1.0, Conditions.from_lists(
    [[(3.0, 3.0)]], attrs=[[[1.0, 0]]], dtype=torch.float64)))
bad("objects", "sample sigma -1", lambda: _fo().sample(_cond(), sigma=-1.0))
bad("objects", "sample n = True", lambda: _fo().sample(True))
bad("objects", "composition_gap cond None", lambda: _fo().composition_gap(_xo(), 1.0, None))  # type: ignore[arg-type]
bad("objects", "OverlappingObjects log_prob x inf", lambda: _oo().log_prob(_xo() * INF, 1.0, _cond()))
ok("objects", "denoise non-contiguous x", lambda: (_fo()(_x(2, 3, 12, 24)[..., ::2], 0.5, _cond()),
                                                   _fo()(_x(2, 3, 12, 24)[..., ::2].contiguous(), 0.5, _cond())))
ok("objects", "denoise channels-last x", lambda: (_oo()(_xo().to(memory_format=torch.channels_last), 0.5, _cond()),
                                                  _oo()(_xo(), 0.5, _cond())))
ok("objects", "denoise float32 x and cond", lambda: (_fo()(_xo(dtype=torch.float32), 0.5, _cond(dtype=torch.float32)),
                                                     _fo()(_xo(), 0.5, _cond()).float()))
ok("objects", "denoise requires_grad x", lambda: (_oo()(_xo().requires_grad_(), 0.5, _cond()).detach(),
                                                  _oo()(_xo(), 0.5, _cond())))


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_oracle_case(case: Case) -> None:
    check_case(case)


# ---------------------------------------------------------------------------- properties
ARGS = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**13) | st.just(10**400),
                 st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=3), st.lists(st.floats(-2, 2), max_size=3))


ORACLES: list[tuple[Any, torch.Tensor, Conditions | None]] = [(_g(), _x(), None), (_gm(), _x(), None),
                                                              (_fo(), _xo(), _cond()), (_oo(), _xo(), _cond())]


# sigma = 10**400 (an int beyond float64) is left out: localscore._checks.as_sigma raises OverflowError for it
# (a core function; reported), and the oracles take their sigma through it.
@settings(max_examples=10, deadline=None)
@given(sigma=ARGS.filter(lambda v: not (isinstance(v, int) and v > 10**300)), n=ARGS)
def test_fuzzed_sigma_and_n_to_every_oracle(sigma: Any, n: Any) -> None:
    for oracle, x, cond in ORACLES:
        calls: list[Callable[[], Any]] = [
            lambda o=oracle, x=x, c=cond: o(x, sigma, c), lambda o=oracle, x=x, c=cond: o.score(x, sigma, c),
            lambda o=oracle, x=x, c=cond: o.log_prob(x, sigma, c), lambda o=oracle: o.sample(n, sigma=0.5),
            lambda o=oracle: o.sample(2, sigma=sigma)]
        for call in calls:
            try:
                out = call()
            except LocalScoreError as e:
                assert "expected" in str(e) or "Fix:" in str(e), e
                continue
            assert torch.isfinite(out).all()


@FAST
@given(value=ARGS, field=st.sampled_from(["object_radius", "object_std", "length_scale", "mean_width",
                                          "background_mean", "background_std", "global_std", "object_mean"]))
def test_fuzzed_object_oracle_parameters(value: Any, field: str) -> None:
    try:
        o = OverlappingObjects(3, 12, 12, **{"object_radius": 2.0, field: value})
    except LocalScoreError as e:
        assert "expected" in str(e) or "Fix:" in str(e), e
        return
    try:
        out = o(_xo(), 0.5, Conditions.from_lists([[(3.0, 3.0)], []], dtype=torch.float64))
    except LocalScoreError as e:  # e.g. a radius that puts the object off a small canvas
        assert "expected" in str(e) or "Fix:" in str(e) or "off the" in str(e), e
        return
    assert torch.isfinite(out).all()


@FAST
@given(std=st.floats(0.0, 10.0) | st.just(NAN) | st.just(-1.0), sigma=st.floats(1e-3, 1e3), seed=st.integers(0, 99))
def test_gaussian_denoiser_matches_the_wiener_filter(std: float, sigma: float, seed: int) -> None:
    try:
        g = Gaussian(torch.zeros(1, 2, 2), std=std)
    except LocalScoreError:
        assert not (std >= 0)
        return
    x = _x(2, 1, 2, 2, seed=seed)
    ref = x * std**2 / (std**2 + sigma**2)
    assert torch.allclose(g(x, sigma), ref, rtol=1e-10, atol=1e-12)


@FAST
@given(dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
       layout=st.sampled_from(["plain", "channels_last", "strided", "grad"]))
def test_legitimate_variants_give_the_reference(dtype: torch.dtype, layout: str) -> None:
    base = _xo()
    x = base.to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.cat([x, x], 3)[..., ::2]
        base = torch.cat([base, base], 3)[..., ::2].to(dtype).double()
    elif layout == "grad":
        x = x.clone().requires_grad_()
    ref = _fo()(base.to(dtype).double(), 0.5, _cond())
    out = _fo()(x, 0.5, _cond(dtype=dtype if dtype in (torch.float32, torch.float64) else torch.float64))
    assert out.dtype == dtype
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    assert torch.allclose(out.double(), ref, atol=tol, rtol=tol)


if __name__ == "__main__":  # pragma: no cover
    cases_main(CASES)
