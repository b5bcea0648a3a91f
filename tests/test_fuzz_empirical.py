"""Fuzz tests of :class:`localscore.empirical.PatchLocalEmpirical`: bad input raises a LocalScoreError that names
what was expected (never a raw torch error, an allocator failure, a silently ignored argument or a hang);
legitimate variants (non-contiguous, channels-last, float32, requires_grad) give the reference result.
``python tests/test_fuzz_empirical.py results.json`` classifies ``CASES`` for the table of ``docs/reliability.md``.
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
from localscore.empirical import PatchLocalEmpirical

sys.path.insert(0, str(Path(__file__).parent))
from _fuzz import Case, cases_main, check_case

CASES: list[Case] = []
NAN, INF = float("nan"), float("inf")


def bad(name: str, f: Callable[[], Any]) -> None:
    CASES.append(("empirical", name, "bad", f))


def ok(name: str, f: Callable[[], Any]) -> None:
    CASES.append(("empirical", name, "ok", f))


def _data(N: int = 6, C: int = 2, H: int = 6, W: int = 6) -> torch.Tensor:
    return torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(0))


def _tc(N: int = 6) -> Conditions:
    return Conditions.from_lists([[(float(i % 6), 2.0)] for i in range(N)], attrs=[[[1.0]]] * N)


def _pe(**kw: Any) -> PatchLocalEmpirical:
    return PatchLocalEmpirical(_data(), 1, **kw)


def _pc(**kw: Any) -> PatchLocalEmpirical:
    return PatchLocalEmpirical(_data(), 1, cond=_tc(), conditioner_radius=1.5, **kw)


def _x(B: int = 2, C: int = 2, H: int = 6, W: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed))


def _qc(B: int = 2) -> Conditions:
    return Conditions.from_lists([[(1.0, 1.0)], [(4.0, 3.0)]][:B], attrs=[[[1.0]], [[0.5]]][:B])


bad("data NaN", lambda: PatchLocalEmpirical(_data() * NAN, 1))
bad("data on meta", lambda: PatchLocalEmpirical(_data().to("meta"), 1))
bad("data int64", lambda: PatchLocalEmpirical(_data().long(), 1))
bad("data [N, H, W]", lambda: PatchLocalEmpirical(_data()[:, 0], 1))
bad("data empty", lambda: PatchLocalEmpirical(_data(N=0), 1))
bad("radius -1", lambda: PatchLocalEmpirical(_data(), -1))
bad("radius 2.5", lambda: PatchLocalEmpirical(_data(), 2.5))  # type: ignore[arg-type]
bad("radius 10**6", lambda: PatchLocalEmpirical(_data(), 10**6))
bad("radius 20 on 400 images of [3, 64, 64] (1.3e10 patch entries)", lambda: PatchLocalEmpirical(
    torch.zeros(400, 3, 64, 64), 20))
bad("dtype int64", lambda: PatchLocalEmpirical(_data(), 1, dtype=torch.int64))
bad("max_elements 0", lambda: PatchLocalEmpirical(_data(), 1, max_elements=0))
bad("equivariant 'yes'", lambda: PatchLocalEmpirical(_data(), 1, equivariant="yes"))  # type: ignore[arg-type]
bad("cond without conditioner_radius", lambda: PatchLocalEmpirical(_data(), 1, cond=_tc()))
bad("conditioner_radius NaN", lambda: PatchLocalEmpirical(_data(), 1, cond=_tc(), conditioner_radius=NAN))
bad("cond of 3 sets for 6 images", lambda: PatchLocalEmpirical(_data(), 1, cond=_tc(3), conditioner_radius=1.0))
bad("cond a list", lambda: PatchLocalEmpirical(_data(), 1, cond=[[(1.0, 1.0)]] * 6,  # type: ignore[arg-type]
                                               conditioner_radius=1.0))
bad("temperature 'a'", lambda: _pc(temperature="a"))
bad("temperature inf (conditions silently ignored)", lambda: _pc(temperature=INF))
bad("temperature 0", lambda: _pc(temperature=0.0))
bad("denoise x of another shape", lambda: _pe()(_x(W=5), 1.0))
bad("denoise x NaN", lambda: _pe()(_x() * NAN, 1.0))
bad("denoise x on meta", lambda: _pe()(_x().to("meta"), 1.0))
bad("denoise sigma 0", lambda: _pe()(_x(), 0.0))
bad("denoise sigma NaN", lambda: _pe()(_x(), NAN))
bad("denoise sigma [3] for B = 2", lambda: _pe()(_x(), torch.ones(3)))
bad("denoise cond of 1 set for B = 2", lambda: _pc()(_x(), 1.0, _qc(1)))
bad("denoise cond a dict", lambda: _pc()(_x(), 1.0, {"pos": 1}))  # type: ignore[arg-type]
bad("denoise cond attrs of length 2 for 1", lambda: _pc()(_x(B=1), 1.0, Conditions.from_lists(
    [[(1.0, 1.0)]], attrs=[[[1.0, 2.0]]])))
bad("denoise cond on meta", lambda: _pc()(_x(), 1.0, _qc().to(device="meta")))
bad("score sigma -1", lambda: _pe().score(_x(), -1.0))
bad("descriptors of an unconditional machine", lambda: _pe().descriptors(_qc()))
bad("descriptors cond a list", lambda: _pc().descriptors([1, 2]))  # type: ignore[arg-type]
bad("descriptors batch -1", lambda: _pc().descriptors(None, batch=-1))
bad("descriptors batch 10**12", lambda: _pc().descriptors(None, batch=10**12))
bad("sample(0)", lambda: _pe().sample(0))
bad("sample(10**12)", lambda: _pe().sample(10**12))
bad("sample steps 0", lambda: _pe().sample(2, steps=0))
bad("sample sigma_min > sigma_max", lambda: _pe().sample(2, sigma_min=5.0, sigma_max=1.0))
bad("sample generator 'g'", lambda: _pe().sample(2, generator="g"))  # type: ignore[arg-type]
bad("sample Conditions to an unconditional machine", lambda: _pe().sample(_qc()))
ok("denoise non-contiguous x", lambda: (_pe()(_x(W=12)[..., ::2], 0.5), _pe()(_x(W=12)[..., ::2].contiguous(), 0.5)))
ok("denoise channels-last x", lambda: (_pe()(_x().to(memory_format=torch.channels_last), 0.5), _pe()(_x(), 0.5)))
ok("denoise float64 x", lambda: (_pe()(_x().double(), 0.5), _pe()(_x(), 0.5).double()))
ok("denoise requires_grad x", lambda: (_pe()(_x().requires_grad_(), 0.5).detach(), _pe()(_x(), 0.5)))
ok("equivariant denoise channels-last x", lambda: (
    _pe(equivariant=True)(_x().to(memory_format=torch.channels_last), 0.5), _pe(equivariant=True)(_x(), 0.5)))
ok("conditional denoise float64 cond", lambda: (_pc()(_x(), 0.5, _qc().to(dtype=torch.float64)),
                                                _pc()(_x(), 0.5, _qc())))
ok("chunking (max_elements 64) = one chunk", lambda: (_pc(max_elements=64)(_x(), 0.5, _qc()), _pc()(_x(), 0.5, _qc())))


@pytest.mark.parametrize("case", CASES, ids=[c[1] for c in CASES])
def test_empirical_case(case: Case) -> None:
    check_case(case)


ARGS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=2))


@settings(max_examples=25, deadline=None)
@given(field=st.sampled_from(["radius", "conditioner_radius", "temperature", "equivariant", "max_elements"]),
       value=ARGS)
def test_fuzzed_constructor_arguments(field: str, value: Any) -> None:
    kw: dict[str, Any] = {"radius": 1, "cond": _tc(), "conditioner_radius": 1.5, field: value}
    try:
        D = PatchLocalEmpirical(_data(), **kw)
    except LocalScoreError as e:
        assert "expected" in str(e) or "Fix:" in str(e), e
        return
    out = D(_x(), 0.5, _qc())
    assert torch.isfinite(out).all()


@settings(max_examples=25, deadline=None)
@given(n=ARGS, steps=ARGS, sigma_max=ARGS)
def test_fuzzed_sample_arguments(n: Any, steps: Any, sigma_max: Any) -> None:
    try:
        out = PatchLocalEmpirical(_data(N=3, H=4, W=4), 0).sample(n, steps=steps, sigma_max=sigma_max)
    except LocalScoreError as e:
        assert "expected" in str(e) or "Fix:" in str(e), e
        return
    assert torch.isfinite(out).all() and out.shape[1:] == (2, 4, 4)


@settings(max_examples=15, deadline=None)
@given(sigma=st.floats(1e-3, 1e3), seed=st.integers(0, 99), equivariant=st.booleans())
def test_tiny_sigma_recovers_a_training_image_and_huge_sigma_the_mean(sigma: float, seed: int,
                                                                     equivariant: bool) -> None:
    data = _data()
    D = PatchLocalEmpirical(data, 1, equivariant=equivariant)
    out = D(data[:2].double() + 1e-9 * _x(seed=seed).double(), 1e-4)
    assert torch.allclose(out, data[:2].double(), atol=1e-6)
    big = D(_x(seed=seed), 1e6).double()
    assert torch.isfinite(big).all() and big.abs().max() <= data.abs().max() + 1e-6   # a convex combination


if __name__ == "__main__":  # pragma: no cover
    cases_main(CASES)
