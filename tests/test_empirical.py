"""The patch-local empirical score machine against brute-force formulas and its own declared locality."""

from __future__ import annotations

import importlib
import math
import re
import warnings

import numpy as np
import pytest
import torch

from localscore import Conditions, LocalScoreError
from localscore.empirical import PatchLocalEmpirical
from localscore.metrics import conditional_locality, jacobian


def _brute(data: np.ndarray, x: np.ndarray, sigma: float, R: int, equivariant: bool,
           desc_train: np.ndarray | None = None, desc_query: np.ndarray | None = None, tau: float = 1.0) -> np.ndarray:
    """Explicit loops over pixels, images and (equivariant) locations of the module formula."""
    N, C, H, W = data.shape
    pad = np.pad(data, ((0, 0), (0, 0), (R, R), (R, R)))
    xp = np.pad(x, ((0, 0), (R, R), (R, R)))
    inside = np.pad(np.ones((C, H, W)), ((0, 0), (R, R), (R, R)))
    out = np.zeros((C, H, W))
    for i in range(H):
        for j in range(W):
            q = xp[:, i : i + 2 * R + 1, j : j + 2 * R + 1]
            m = inside[:, i : i + 2 * R + 1, j : j + 2 * R + 1]
            logits, centres = [], []
            locs = [(i, j)] if not equivariant else [(a, b) for a in range(H) for b in range(W)]
            for n in range(N):
                for (a, b) in locs:
                    y = pad[n, :, a : a + 2 * R + 1, b : b + 2 * R + 1]
                    lg = -(((q - y) * (m if equivariant else 1)) ** 2).sum() / (2 * sigma**2)
                    if desc_train is not None:
                        assert desc_query is not None
                        lg -= ((desc_query[:, i, j] - desc_train[n, :, a, b]) ** 2).sum() / (2 * tau**2)
                    logits.append(lg)
                    centres.append(data[n, :, a, b])
            w = np.exp(np.array(logits) - max(logits))
            w /= w.sum()
            out[:, i, j] = (w[:, None] * np.array(centres)).sum(0)
    return out


@pytest.mark.parametrize("equivariant", [False, True])
@pytest.mark.parametrize("R", [0, 1])
def test_matches_brute_force(R: int, equivariant: bool) -> None:
    g = torch.Generator().manual_seed(R)
    data = torch.randn(4, 2, 4, 5, generator=g, dtype=torch.float64)
    x = torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64)
    D = PatchLocalEmpirical(data, R, equivariant=equivariant, max_elements=50)  # forces chunking
    out = D(x, torch.tensor([0.7, 2.0], dtype=torch.float64))
    for b, s in enumerate([0.7, 2.0]):
        np.testing.assert_allclose(out[b].numpy(), _brute(data.numpy(), x[b].numpy(), s, R, equivariant), atol=1e-12)


def test_full_radius_is_the_empirical_posterior_mean() -> None:
    g = torch.Generator().manual_seed(3)
    data = torch.randn(6, 1, 5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(1, 1, 5, 5, generator=g, dtype=torch.float64)
    D = PatchLocalEmpirical(data, 4)  # every patch sees the whole image
    s = 1.3
    d2 = ((x - data) ** 2).flatten(1).sum(1).numpy()
    w = np.exp(-(d2 - d2.min()) / (2 * s**2))
    w /= w.sum()
    expected = (w[:, None] * data.flatten(1).numpy()).sum(0)
    np.testing.assert_allclose(D(x, s).flatten().numpy(), expected, atol=1e-12)


def test_conditional_variant_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(5)
    H, W, r, tau = 5, 6, 1.0, 0.7
    data = torch.randn(3, 1, H, W, generator=g, dtype=torch.float64)
    train = Conditions.from_lists([[(1.0, 1.0)], [(3.0, 4.0), (0.0, 5.0)], []], attrs=[[[1.0]], [[0.5], [-1.0]], []],
                                  dtype=torch.float64)
    D = PatchLocalEmpirical(data, 1, cond=train, conditioner_radius=r, temperature=tau)
    query = Conditions.from_lists([[(2.0, 2.5)]], attrs=[[[0.8]]], dtype=torch.float64)
    x = torch.randn(1, 1, H, W, generator=g, dtype=torch.float64)

    def desc(c: list[tuple[float, float, float]]) -> np.ndarray:
        out = np.zeros((4, H, W))
        for i in range(H):
            for j in range(W):
                for (pr, pc, a) in c:
                    if max(abs(pr - i), abs(pc - j)) <= r:
                        out[:, i, j] += [1.0, (pr - i) / (r + 1), (pc - j) / (r + 1), a]
        return out

    dt = np.stack([desc([(1, 1, 1.0)]), desc([(3, 4, 0.5), (0, 5, -1.0)]), desc([])])
    dq = desc([(2.0, 2.5, 0.8)])
    expected = _brute(data.numpy(), x[0].numpy(), 0.9, 1, False, dt, dq, tau)
    np.testing.assert_allclose(D(x, 0.9, query)[0].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("equivariant", [False, True])
def test_declared_locality_is_exact(equivariant: bool) -> None:
    g = torch.Generator().manual_seed(7)
    data = torch.randn(8, 2, 9, 9, generator=g, dtype=torch.float64)
    x = data[:1] + 0.8 * torch.randn(1, 2, 9, 9, generator=g, dtype=torch.float64)
    D = PatchLocalEmpirical(data, 2, equivariant=equivariant)
    fn = lambda z: D(z, 0.8)  # noqa: E731
    dense = jacobian(fn, x)
    banded = jacobian(fn, x, method="colored", radius=2)
    torch.testing.assert_close(banded.to_dense(), dense, atol=1e-12, rtol=0)
    assert float(banded.values.abs()[..., 0, :].max()) > 0  # entries at distance exactly R exist
    with pytest.raises(LocalScoreError, match="less local"):
        jacobian(fn, x, method="colored", radius=1)


def test_conditional_influence_within_conditioner_radius() -> None:
    g = torch.Generator().manual_seed(8)
    H, W = 10, 12
    data = torch.randn(12, 1, H, W, generator=g, dtype=torch.float64)
    pos = [[(float(torch.randint(0, H, (1,), generator=g)), float(torch.randint(0, W, (1,), generator=g)))]
           for _ in range(12)]
    train = Conditions.from_lists(pos, dtype=torch.float64)
    D = PatchLocalEmpirical(data, 1, cond=train, conditioner_radius=2.0, temperature=0.5)
    assert D.conditioner_radius == 2 and D.receptive_radius == 1
    query = Conditions.from_lists([[(3.0, 3.0), (6.0, 9.0)]], dtype=torch.float64)
    x = torch.randn(1, 1, H, W, generator=g, dtype=torch.float64)
    res = conditional_locality(D, x, [0.3, 3.0], query, regions=2.0)
    assert res.index["ablation"].tolist() == [1.0, 1.0]
    assert float(res.influence["ablation"].sum()) > 0


def test_sample_and_errors() -> None:
    data = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    D = PatchLocalEmpirical(data, 1)
    out = D.sample(2, steps=4, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 1, 6, 6) and bool(torch.isfinite(out).all())
    assert torch.allclose(D.score(data[:1], 0.5), (D(data[:1], 0.5) - data[:1]) / 0.25)
    with pytest.raises(LocalScoreError, match="`radius`"):
        PatchLocalEmpirical(data, -1)
    with pytest.raises(LocalScoreError, match="both `cond`"):
        PatchLocalEmpirical(data, 1, conditioner_radius=2.0)
    with pytest.raises(LocalScoreError, match="image shape"):
        D(torch.zeros(1, 1, 5, 5), 1.0)
    with pytest.raises(LocalScoreError, match="`sigma`"):
        D(data[:1], 0.0)
    assert math.isfinite(float(D(data[:1], 1e-6).sum()))  # tiny sigma: softmax stays finite


@pytest.mark.parametrize(("module", "old"), [("localscore.oracles", "localscore.oracles.PatchLocalEmpirical"),
                                             ("localscore.oracles.patch_local",
                                              "localscore.oracles.patch_local.PatchLocalEmpirical")])
def test_the_0_1_0_names_warn_and_resolve_to_the_moved_class(module: str, old: str) -> None:
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=rf"{re.escape(old)} is deprecated .* use "
                                                r"localscore\.empirical\.PatchLocalEmpirical") as record:
        value = mod.PatchLocalEmpirical
    assert value is PatchLocalEmpirical
    assert record[0].filename == __file__  # attributed to the caller, not to the shim
    with warnings.catch_warnings():  # other names: a plain AttributeError, no warning
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            mod.no_such_name  # noqa: B018
    # negative control: the oracles themselves still import without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from localscore.oracles import Gaussian  # noqa: F401


def test_empirical_and_oracles_are_never_cropped() -> None:
    from localscore.oracles import AnalyticDistribution, FactorizedObjects, Gaussian, GaussianMixture

    assert PatchLocalEmpirical.translation_equivariant is False
    for cls in (AnalyticDistribution, Gaussian, GaussianMixture, FactorizedObjects):
        assert cls.translation_equivariant is False
