"""Private helpers of :mod:`localscore.masks`, against brute-force oracles.

The masks themselves are tested through the public functions in the modules that use them (networks,
compose, metrics); what lives here pins ``masks._sqrt_threshold``, the vectorised test that replaced a
host-synchronising ulp loop: ``d**2 <= t`` must agree bit for bit with ``sqrt(d**2) <= r``.
"""

from __future__ import annotations

import pytest
import torch

from localscore.masks import _sqrt_threshold


def _threshold_by_ulps(r: torch.Tensor) -> torch.Tensor:
    """Oracle: the largest float t with sqrt(t) <= r (finite r >= 0), walked one ulp at a time from r * r."""
    assert bool(torch.isfinite(r).all())
    t = r * r
    for _ in range(64):
        over = torch.sqrt(t) > r
        if not bool(over.any()):
            break
        t = torch.where(over, torch.nextafter(t, torch.full_like(t, -float("inf"))), t)
    for _ in range(64):
        nxt = torch.nextafter(t, torch.full_like(t, float("inf")))
        fits = torch.sqrt(nxt) <= r
        if not bool(fits.any()):
            return t
        t = torch.where(fits, nxt, t)
    raise AssertionError("the walk did not end")


@pytest.mark.parametrize(("dtype", "ints"), [(torch.float16, torch.int16), (torch.bfloat16, torch.int16)])
def test_sqrt_threshold_matches_the_ulp_walk_on_every_half_value(dtype: torch.dtype, ints: torch.dtype) -> None:
    top = 0x7C00 if dtype == torch.float16 else 0x7F80  # every finite value >= 0
    r = torch.arange(0, top, dtype=torch.int16).view(dtype)
    assert torch.equal(_sqrt_threshold(r).view(ints), _threshold_by_ulps(r).view(ints))


@pytest.mark.parametrize(("dtype", "ints"), [(torch.float32, torch.int32), (torch.float64, torch.int64)])
def test_sqrt_threshold_matches_the_ulp_walk(dtype: torch.dtype, ints: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    r = torch.cat([torch.exp(torch.empty(20000, dtype=torch.float64).uniform_(-40, 40, generator=g)),
                   torch.arange(0, 400, dtype=torch.float64) / 8,
                   torch.tensor([0.0, torch.finfo(dtype).tiny, torch.finfo(dtype).max], dtype=torch.float64)]).to(dtype)
    assert torch.equal(_sqrt_threshold(r).view(ints), _threshold_by_ulps(r).view(ints))
