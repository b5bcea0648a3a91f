"""compose.terms against a closed-form toy: one bright pixel at one of L sites, Gaussian noise.

Data of the single-object model: ``x0 = e_l`` (pixel ``l`` is 1, the others 0) with ``l`` uniform over the
sites. With ``x = x0 + sigma z`` the exact denoisers are

* conditional on the site ``c``:  ``D(x | c) = e_c`` (no uncertainty left);
* empty (object-free images):     ``D_E(x) = 0``;
* unconditional (Bayes):          ``D_U(x) = sum_l pi_l(x) e_l``, ``pi = softmax_l(x_l / sigma**2)``
  (``||x - e_l||**2 = ||x||**2 - 2 x_l + 1``).

So for an image of k objects, object ``i``'s disc holding only pixel ``c_i``, derived by hand:

* empty background: ``base = 0``, ``own = 1``, ``cross = 0``, ``retention = 1``, ``locality = 1``;
* Bayes background: ``base = pi_i``, ``own = 1 - pi_i``, ``cross = -(k - 1) pi_i``,
  ``retention = 1 - (k - 1) pi_i``: every other object's term erases ``pi_i`` of object ``i``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError
from localscore.compose import terms

H = W = 12
SITES = [(1.0, 1.0), (1.0, 6.0), (1.0, 10.0), (6.0, 1.0), (6.0, 6.0), (6.0, 10.0), (10.0, 1.0), (10.0, 6.0),
         (10.0, 10.0)]


def _onehot(points: list[tuple[float, float]]) -> torch.Tensor:
    x = torch.zeros(1, 1, H, W, dtype=torch.float64)
    for r, c in points:
        x[0, 0, int(r), int(c)] = 1.0
    return x


SITE_MAPS = torch.cat([_onehot([p]) for p in SITES])        # [L, 1, H, W]


def conditional(x: torch.Tensor, sigma: torch.Tensor, cond: Conditions | None = None) -> torch.Tensor:
    assert cond is not None
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for k in range(cond.num_slots):
            if cond.valid[b, k]:
                r, c = cond.pos[b, k].tolist()
                out[b, 0, int(r), int(c)] = 1.0
    return out


def empty(x: torch.Tensor, sigma: torch.Tensor, cond: Conditions | None = None) -> torch.Tensor:
    return torch.zeros_like(x)


def bayes_pi(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``pi [B, L]`` of the one-object data at the sites."""
    vals = torch.stack([x[:, 0, int(r), int(c)] for r, c in SITES], 1)
    return torch.softmax(vals / sigma.view(-1, 1) ** 2, dim=1)


def unconditional(x: torch.Tensor, sigma: torch.Tensor, cond: Conditions | None = None) -> torch.Tensor:
    pi = bayes_pi(x, sigma)
    return torch.einsum("bl,lchw->bchw", pi, SITE_MAPS.to(x))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(range(len(SITES))), min_size=1, max_size=6, unique=True),
       st.sampled_from([0.3, 0.7, 1.5]), st.integers(0, 2**31 - 1))
def test_terms_match_the_hand_derived_values(idx: list[int], sigma: float, seed: int) -> None:
    pts = [SITES[i] for i in idx]
    k = len(pts)
    cond = Conditions.from_lists([pts], dtype=torch.float64)
    x0 = _onehot(pts)
    ref = torch.zeros_like(x0)
    kw = dict(reference=ref, object_radius=0.5, radius=1.5)
    e = terms(empty, conditional, x0, sigma, cond, generator=torch.Generator().manual_seed(seed), **kw)
    torch.testing.assert_close(e.retention, torch.ones(1, k, dtype=torch.float64))
    torch.testing.assert_close(e.own, torch.ones(1, k, dtype=torch.float64))
    torch.testing.assert_close(e.cross, torch.zeros(1, k, dtype=torch.float64))
    torch.testing.assert_close(e.locality, torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(e.off_contrast, torch.zeros(1, dtype=torch.float64))

    # The same noise again (same generator seed), so pi is computable here.
    g = torch.Generator().manual_seed(seed)
    x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    pi_all = bayes_pi(x, torch.tensor([sigma], dtype=torch.float64))[0]
    pi = torch.stack([pi_all[i] for i in idx]).view(1, k)
    u = terms(unconditional, conditional, x0, sigma, cond, generator=torch.Generator().manual_seed(seed), **kw)
    torch.testing.assert_close(u.base, pi)
    torch.testing.assert_close(u.own, 1 - pi)
    torch.testing.assert_close(u.cross, -(k - 1) * pi)
    torch.testing.assert_close(u.retention, 1 - (k - 1) * pi)
    if k < len(SITES):   # some posterior mass on the sites of no object: those terms act away from their objects
        assert float(u.locality) < 1.0


def test_terms_padding_slots_are_nan_and_contribute_nothing() -> None:
    cond = Conditions.from_lists([[SITES[0], SITES[4]], [SITES[8]]], dtype=torch.float64)
    x0 = torch.cat([_onehot([SITES[0], SITES[4]]), _onehot([SITES[8]])])
    t = terms(empty, conditional, x0, 0.5, cond, reference=torch.zeros(1, 1, H, W, dtype=torch.float64),
              object_radius=0.5, radius=1.5, generator=torch.Generator().manual_seed(0))
    assert t.retention[1, 1].isnan() and not t.retention[:, 0].isnan().any()
    assert t.to_dict()["retention"] == pytest.approx(1.0)


def test_terms_bad_input() -> None:
    cond = Conditions.from_lists([[SITES[0]]], dtype=torch.float64)
    x0 = _onehot([SITES[0]])
    ref = torch.zeros_like(x0)
    with pytest.raises(LocalScoreError, match="reference"):
        terms(empty, conditional, x0, 0.5, cond, reference=torch.zeros(1, 3, H, W), object_radius=1, radius=2)
    with pytest.raises(LocalScoreError, match="object_radius"):
        terms(empty, conditional, x0, 0.5, cond, reference=ref, object_radius=0, radius=2)
    with pytest.raises(LocalScoreError, match="radius"):
        terms(empty, conditional, x0, 0.5, cond, reference=ref, object_radius=1, radius=float("nan"))
    with pytest.raises(LocalScoreError, match="background"):
        terms("empty", conditional, x0, 0.5, cond, reference=ref, object_radius=1, radius=2)
    with pytest.raises(LocalScoreError):
        terms(empty, conditional, x0, 0.5, Conditions.from_lists([[SITES[0]], [SITES[1]]]), reference=ref,
              object_radius=1, radius=2)
