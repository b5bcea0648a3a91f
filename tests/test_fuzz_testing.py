"""Fuzz tests of :mod:`localscore.testing` (assertions, strategies, reference models, the mixin): bad arguments
raise a LocalScoreError that names what was expected (never a raw torch or hypothesis error, a silently
passing assertion or a hang); legitimate variants (non-contiguous, channels-last, float64, requires_grad)
give the reference result. ``python tests/test_fuzz_testing.py results.json`` classifies ``CASES`` in forked
children for the table of ``docs/reliability.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError
from localscore.testing import (
    GlobalConvDenoiser,
    LocalConvDenoiser,
    LocalScoreTesterMixin,
    assert_conditionally_local,
    assert_permutation_invariant,
    assert_pixel_local,
    assert_projective,
    render_conditions,
)
from localscore.testing import strategies as lst

sys.path.insert(0, str(Path(__file__).parent))
from _fuzz import Case, case_adders, cases_main, check_case

FAST = settings(max_examples=15, deadline=None)
CASES: list[Case] = []
bad, ok = case_adders(CASES)
NAN, INF = float("nan"), float("inf")


def _x(B: int = 1, C: int = 2, H: int = 8, W: int = 8, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(0)).to(dtype)


def _c(B: int = 1) -> Conditions:
    return Conditions.from_lists([[(2.0, 2.0), (5.0, 6.0)]] * B)


def _local() -> LocalConvDenoiser:
    return LocalConvDenoiser(2, radius=1, cond_radius=1.0)


def _draw(strategy: Any) -> Any:
    return find(strategy, lambda v: True, settings=settings(database=None, max_examples=5))


# ---------------------------------------------------------------------------- assertions
bad("assertions", "assert_pixel_local fn not callable", lambda: assert_pixel_local(3, _x(), 1.0, 1))  # type: ignore
bad("assertions", "assert_pixel_local x NaN", lambda: assert_pixel_local(_local(), _x() * NAN, 1.0, 1))
bad("assertions", "assert_pixel_local x on meta", lambda: assert_pixel_local(_local(), _x().to("meta"), 1.0, 1))
bad("assertions", "assert_pixel_local radius -1", lambda: assert_pixel_local(_local(), _x(), 1.0, -1))
bad("assertions", "assert_pixel_local sigma []", lambda: assert_pixel_local(_local(), _x(), [], 1))
bad("assertions", "assert_pixel_local atol NaN (would pass anything)",
    lambda: assert_pixel_local(_local(), _x(), 1.0, 1, atol=NAN))
bad("assertions", "assert_pixel_local atol 'a'", lambda: assert_pixel_local(_local(), _x(), 1.0, 1, atol="a"))
bad("assertions", "assert_pixel_local n_perturb 10**12", lambda: assert_pixel_local(
    LocalConvDenoiser(1, radius=1), _x(H=2048, W=2048, C=1), 1.0, 1, n_perturb=10**12))
bad("assertions", "assert_pixel_local generator 'g'", lambda: assert_pixel_local(_local(), _x(), 1.0, 1,
                                                                                  generator="g"))  # type: ignore
bad("assertions", "assert_pixel_local float64 x, float32 fn", lambda: assert_pixel_local(
    _local(), _x(dtype=torch.float64), 1.0, 1))
bad("assertions", "assert_conditionally_local cond None", lambda: assert_conditionally_local(
    _local(), _x(), 1.0, None, 2.0))  # type: ignore[arg-type]
bad("assertions", "assert_conditionally_local radius NaN", lambda: assert_conditionally_local(
    _local(), _x(), 1.0, _c(), NAN))
bad("assertions", "assert_conditionally_local move NaN", lambda: assert_conditionally_local(
    _local(), _x(), 1.0, _c(), 2.0, move=NAN))
bad("assertions", "assert_conditionally_local atol -1", lambda: assert_conditionally_local(
    _local(), _x(), 1.0, _c(), 2.0, atol=-1.0))
bad("assertions", "assert_conditionally_local cond batch 2 for B = 1", lambda: assert_conditionally_local(
    _local(), _x(), 1.0, _c(2), 2.0))
bad("assertions", "assert_conditionally_local 20000 objects (x repeated 40001 times)",
    lambda: assert_conditionally_local(_local(), _x(C=2, H=64, W=64), 1.0, Conditions.from_lists(
        [[(1.0, 1.0)] * 20000]), 2.0))
bad("assertions", "assert_projective rtol 'a'", lambda: assert_projective(_local(), _x(), 1.0, _c(), "a"))  # type: ignore
bad("assertions", "assert_projective rtol inf (would pass anything)",
    lambda: assert_projective(GlobalConvDenoiser(2, radius=1, cond_radius=1.0), _x(), 1.0, _c(), INF))
bad("assertions", "assert_projective atol NaN (would pass anything)",
    lambda: assert_projective(GlobalConvDenoiser(2, radius=1, cond_radius=1.0), _x(), 1.0, _c(), atol=NAN))
bad("assertions", "assert_projective sigma 0", lambda: assert_projective(_local(), _x(), 0.0, _c()))
bad("assertions", "assert_permutation_invariant permutations -1", lambda: assert_permutation_invariant(
    _local(), _x(), 1.0, _c(), permutations=-1))
bad("assertions", "assert_permutation_invariant permutations 10**9", lambda: assert_permutation_invariant(
    _local(), _x(), 1.0, _c(), permutations=10**9))
bad("assertions", "assert_permutation_invariant permutations 2.5", lambda: assert_permutation_invariant(
    _local(), _x(), 1.0, _c(), permutations=2.5))  # type: ignore[arg-type]
bad("assertions", "assert_permutation_invariant permutation [0, 0]", lambda: assert_permutation_invariant(
    _local(), _x(), 1.0, _c(), permutations=[[0, 0]]))
bad("assertions", "assert_permutation_invariant fn returns [B, C, H]", lambda: assert_permutation_invariant(
    lambda x, s, c: x[..., 0], _x(), 1.0, _c()))
bad("assertions", "assert_projective fn returns NaN", lambda: assert_projective(
    lambda x, s, c: x * NAN, _x(), 1.0, _c()))
ok("assertions", "assert_pixel_local non-contiguous x", lambda: (
    assert_pixel_local(_local(), _x(W=16)[..., ::2], 1.0, 1), None))
ok("assertions", "assert_pixel_local channels-last, requires_grad x", lambda: (
    assert_pixel_local(_local(), _x().to(memory_format=torch.channels_last).requires_grad_(), [0.5, 2.0], 1), None))
ok("assertions", "assert_conditionally_local float64 model and x", lambda: (
    assert_conditionally_local(_local().double(), _x(dtype=torch.float64), 1.0, _c().to(dtype=torch.float64),
                               2.0), None))
ok("assertions", "assert_projective holds for the local model", lambda: (
    assert_projective(_local(), _x(), 1.0, Conditions.from_lists([[(1.0, 1.0), (6.0, 6.0)]])), None))

# ---------------------------------------------------------------------------- reference models
bad("models", "LocalConvDenoiser channels 0", lambda: LocalConvDenoiser(0, radius=1))
bad("models", "LocalConvDenoiser channels '3'", lambda: LocalConvDenoiser("3", radius=1))  # type: ignore[arg-type]
bad("models", "LocalConvDenoiser radius 10**6 (10**6 layers)", lambda: LocalConvDenoiser(1, radius=10**6))
bad("models", "LocalConvDenoiser hidden 10**5, radius 3", lambda: LocalConvDenoiser(1, radius=3, hidden=10**5))
bad("models", "LocalConvDenoiser hidden 0", lambda: LocalConvDenoiser(1, radius=2, hidden=0))
bad("models", "LocalConvDenoiser cond_radius NaN", lambda: LocalConvDenoiser(1, radius=1, cond_radius=NAN))
bad("models", "LocalConvDenoiser cond_radius -1", lambda: LocalConvDenoiser(1, radius=1, cond_radius=-1.0))
bad("models", "LocalConvDenoiser cond_radius 'a'", lambda: LocalConvDenoiser(1, radius=1, cond_radius="a"))  # type: ignore
bad("models", "LocalConvDenoiser attr_dim -1", lambda: LocalConvDenoiser(1, radius=1, cond_radius=1.0, attr_dim=-1))
bad("models", "LocalConvDenoiser seed 'a'", lambda: LocalConvDenoiser(1, radius=1, seed="a"))  # type: ignore
bad("models", "GlobalConvDenoiser radius True", lambda: GlobalConvDenoiser(1, radius=True))
bad("models", "forward x of 3 channels for 2", lambda: _local()(_x(C=3), 1.0, _c()))
bad("models", "forward float64 x, float32 model", lambda: _local()(_x(dtype=torch.float64), 1.0, _c()))
bad("models", "forward x on meta", lambda: _local()(_x().to("meta"), 1.0, _c()))
bad("models", "forward x NaN", lambda: _local()(_x() * NAN, 1.0, _c()))
bad("models", "forward cond batch 3 for B = 2", lambda: _local()(_x(B=2), 1.0, _c(3)))
bad("models", "forward cond a list", lambda: _local()(_x(), 1.0, [(1.0, 1.0)]))  # type: ignore[arg-type]
bad("models", "GlobalConvDenoiser forward cond batch 3 for B = 2", lambda: GlobalConvDenoiser(
    2, radius=1, cond_radius=1.0)(_x(B=2), 1.0, _c(3)))
bad("models", "render_conditions size (10**6, 10**6)", lambda: render_conditions(
    _c(), (10**6, 10**6), 1.0, 0, dtype=torch.float32, device=torch.device("cpu")))
bad("models", "render_conditions size 8", lambda: render_conditions(
    _c(), 8, 1.0, 0, dtype=torch.float32, device=torch.device("cpu")))  # type: ignore[arg-type]
bad("models", "render_conditions radius NaN", lambda: render_conditions(
    _c(), (8, 8), NAN, 0, dtype=torch.float32, device=torch.device("cpu")))
bad("models", "render_conditions cond a list", lambda: render_conditions(
    [(1.0, 1.0)], (8, 8), 1.0, 0, dtype=torch.float32, device=torch.device("cpu")))  # type: ignore[arg-type]
ok("models", "forward non-contiguous x", lambda: (_local()(_x(W=16)[..., ::2], 0.5, _c()),
                                                  _local()(_x(W=16)[..., ::2].contiguous(), 0.5, _c())))
ok("models", "forward channels-last x", lambda: (_local()(_x().to(memory_format=torch.channels_last), 0.5, _c()),
                                                 _local()(_x(), 0.5, _c())))
ok("models", "forward float64 model and x", lambda: (
    _local().double()(_x(dtype=torch.float64), 0.5, _c().to(dtype=torch.float64)), _local()(_x(), 0.5, _c())))
ok("models", "forward requires_grad x", lambda: (_local()(_x().requires_grad_(), 0.5, _c()).detach(),
                                                 _local()(_x(), 0.5, _c())))

# ---------------------------------------------------------------------------- strategies
bad("strategies", "sigmas('a', 1)", lambda: lst.sigmas("a", 1.0))  # type: ignore[arg-type]
bad("strategies", "sigmas(0.1, inf)", lambda: lst.sigmas(0.1, INF))
bad("strategies", "sizes(5, 2)", lambda: lst.sizes(5, 2))
bad("strategies", "sizes(0, 4)", lambda: lst.sizes(0, 4))
bad("strategies", "sizes(4, 10**9)", lambda: lst.sizes(4, 10**9))
bad("strategies", "images(height=10**9)", lambda: lst.images(height=10**9))
bad("strategies", "images(scale=NaN)", lambda: lst.images(scale=NAN))
bad("strategies", "images(dtype=torch.int64)", lambda: lst.images(dtype=torch.int64))
bad("strategies", "images(kinds=('blue',))", lambda: lst.images(kinds=("blue",)))
bad("strategies", "image_from_seed(10**6, 1, 10**6, 10**6, ...)", lambda: lst.image_from_seed(
    10**6, 1, 10**6, 10**6, "normal", 0))
bad("strategies", "image_from_seed(1, 1, 4, 4, 'normal', seed=0.5)", lambda: lst.image_from_seed(
    1, 1, 4, 4, "normal", 0.5))  # type: ignore[arg-type]
bad("strategies", "image_from_seed(0, 1, 4, 4, ...)", lambda: lst.image_from_seed(0, 1, 4, 4, "normal", 0))
bad("strategies", "conditions(batch_size=10**9)", lambda: _draw(lst.conditions(10**9)))
bad("strategies", "conditions(max_objects=10**9)", lambda: _draw(lst.conditions(max_objects=10**9)))
bad("strategies", "conditions(height=0)", lambda: _draw(lst.conditions(height=0)))
bad("strategies", "conditions(min_separation=NaN)", lambda: _draw(lst.conditions(min_separation=NAN)))
bad("strategies", "conditions(metric='manhattan')", lambda: _draw(lst.conditions(metric="manhattan")))  # type: ignore
bad("strategies", "conditions(attr_dim=-1)", lambda: _draw(lst.conditions(attr_dim=-1, min_objects=1)))
bad("strategies", "conditions(dtype=torch.int64)", lambda: _draw(lst.conditions(dtype=torch.int64)))
bad("strategies", "masks(density=(0.5, 2.0))", lambda: lst.masks(density=(0.5, 2.0)))
bad("strategies", "masks(height=10**9)", lambda: lst.masks(height=10**9))
bad("strategies", "mask_from_seed(1, 1, 10**6, 10**6, 0)", lambda: lst.mask_from_seed(1, 1, 10**6, 10**6, 0))
ok("strategies", "image_from_seed float64 = float32 reference", lambda: (
    lst.image_from_seed(2, 3, 5, 5, "sparse", 4, dtype=torch.float64),
    lst.image_from_seed(2, 3, 5, 5, "sparse", 4, dtype=torch.float32)))
ok("strategies", "conditions draw in range", lambda: (
    float(_draw(lst.conditions(2, height=8, width=8, min_objects=1, margin=1.0)).pos.max() <= 6.0), 1.0))

# ---------------------------------------------------------------------------- the mixin


class _BadMixin(LocalScoreTesterMixin):
    def make_model(self) -> Any:
        return 3


class _BadShape(LocalScoreTesterMixin):
    image_shape = (3, 0, 16)

    def make_model(self) -> Any:
        return LocalConvDenoiser(3, radius=1)


class _BadSigmas(LocalScoreTesterMixin):
    sigmas = (1.0, float("nan"))

    def make_model(self) -> Any:
        return LocalConvDenoiser(3, radius=1)


bad("mixin", "make_model returns 3", lambda: _BadMixin().test_output_shape_dtype_and_finite())
bad("mixin", "image_shape (3, 0, 16)", lambda: _BadShape().test_pixel_locality())
bad("mixin", "sigmas with NaN", lambda: _BadSigmas().test_output_shape_dtype_and_finite())
bad("mixin", "make_model not overridden", lambda: LocalScoreTesterMixin().test_output_shape_dtype_and_finite())


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_testing_case(case: Case) -> None:
    check_case(case, accepted_is_right=True)  # an assertion that passed returns None


# ---------------------------------------------------------------------------- properties
TOLS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=2), st.booleans(),
                 st.integers(-5, 5))


@FAST
@given(atol=TOLS, rtol=TOLS)
def test_fuzzed_tolerances_never_let_a_failure_pass(atol: Any, rtol: Any) -> None:
    model = GlobalConvDenoiser(2, radius=1, cond_radius=1.0)  # not projective: must fail or refuse
    try:
        assert_projective(model, _x(), 1.0, _c(), 1e-5 if rtol is None else rtol, atol=atol)
    except LocalScoreError as e:
        assert "expected" in str(e) or "Fix:" in str(e), e
    except AssertionError as e:
        assert "not projective" in str(e)
    else:  # a pass is right only under a loose (finite) tolerance
        loose = [v for v in (atol, rtol) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1e-3]
        assert loose, f"a non-projective model passed with atol={atol!r}, rtol={rtol!r}"


@FAST
@given(channels=st.integers(-2, 4) | st.just(10**7), radius=st.integers(-1, 3) | st.just(10**6),
       cond_radius=st.none() | st.floats(allow_nan=True, allow_infinity=True, width=32),
       attr_dim=st.integers(-1, 3), hidden=st.integers(-1, 8) | st.just(10**7))
def test_fuzzed_reference_model_arguments(channels: int, radius: int, cond_radius: float | None, attr_dim: int,
                                          hidden: int) -> None:
    try:
        m = LocalConvDenoiser(channels, radius, cond_radius=cond_radius, attr_dim=attr_dim, hidden=hidden)
    except LocalScoreError as e:
        assert "expected" in str(e) or "Fix:" in str(e), e
        return
    cond = Conditions.from_lists([[(2.0, 3.0)]], attrs=[[[0.5] * attr_dim]] if attr_dim else None)
    out = m(_x(C=channels), 0.7, cond)
    assert out.shape == (1, channels, 8, 8) and torch.isfinite(out).all()


@FAST
@given(lo=st.integers(-2, 6) | st.just(10**9), hi=st.integers(-2, 6) | st.just(10**9),
       scale=st.floats(allow_nan=True, allow_infinity=True))
def test_fuzzed_strategy_arguments(lo: int, hi: int, scale: float) -> None:
    for make in (lambda: lst.images(height=(lo, hi), scale=scale), lambda: lst.masks(width=(lo, hi)),
                 lambda: lst.sizes(lo, hi)):
        try:
            strategy = make()
        except LocalScoreError as e:
            assert "expected" in str(e) or "Fix:" in str(e), e
            continue
        value = _draw(strategy)
        if isinstance(value, torch.Tensor):
            assert torch.isfinite(value.double()).all()


if __name__ == "__main__":  # pragma: no cover
    cases_main(CASES)
