"""Conditional and pixel locality on the object oracles (CPC exact / CPC broken in closed form)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from localscore import Conditions
from localscore.metrics import conditional_locality, pixel_locality
from localscore.oracles import FactorizedObjects, OverlappingObjects


def test_factorized_objects_index_is_one_at_every_sigma() -> None:
    oracle = FactorizedObjects(2, 14, 16, object_radius=2.5, object_std=0.4, length_scale=1.0)
    cond = Conditions.from_lists([[(3, 3), (10, 12), (3, 12)], [(7, 7)]], dtype=torch.float64)
    x = oracle.sample(cond, sigma=0.5, generator=torch.Generator().manual_seed(0))
    res = conditional_locality(oracle, x, [0.05, 0.5, 5.0], cond, regions=oracle.regions(cond))
    torch.testing.assert_close(res.index["ablation"], torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    assert res.on_others_mean["ablation"].abs().max().item() <= 1e-12
    # the influence is not trivially zero: every real object changes its region
    assert bool((res.influence["ablation"].sum(dim=(3, 4))[:, res.valid] > 0).all())


def _dense_overlapping(H: int, W: int, pos: list[tuple[float, float]], *, radius: float, obj_std: float,
                       ell: float, bg_std: float, g_std: float, obj_mean: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and dense covariance of OverlappingObjects (1 channel) from its documented model."""
    grid = np.stack(np.meshgrid(np.arange(H), np.arange(W), indexing="ij"), -1).reshape(-1, 2).astype(float)
    S = np.eye(H * W) * bg_std**2 + g_std**2 * np.ones((H * W, H * W))
    mu = np.zeros(H * W)
    sq = ((grid[:, None] - grid[None]) ** 2).sum(-1)
    for p in pos:
        inside = ((grid - np.array(p)) ** 2).sum(-1) <= radius**2
        mu += obj_mean * inside
        S += obj_std**2 * np.exp(-sq / (2 * ell**2)) * np.outer(inside, inside)
    return mu, S


@pytest.mark.parametrize("sigma", [0.2, 1.0])
def test_overlapping_objects_index_matches_dense_closed_form(sigma: float) -> None:
    H, W = 8, 10
    kw = dict(radius=1.5, obj_std=0.5, ell=1.2, bg_std=0.3, g_std=0.6, obj_mean=1.0)
    oracle = OverlappingObjects(1, H, W, object_radius=1.5, object_std=0.5, length_scale=1.2, background_std=0.3,
                                global_std=0.6, object_mean=1.0)
    pos = [(2.0, 2.0), (5.0, 7.0)]
    cond = Conditions.from_lists([pos], dtype=torch.float64)
    x = oracle.sample(cond, sigma=sigma, generator=torch.Generator().manual_seed(1))
    res = conditional_locality(oracle, x, sigma, cond, regions=oracle.regions(cond))
    xv = x.flatten().numpy()

    def D(ps: list[tuple[float, float]]) -> np.ndarray:
        mu, S = _dense_overlapping(H, W, ps, **kw)  # type: ignore[arg-type]
        return xv - sigma**2 * np.linalg.solve(S + sigma**2 * np.eye(H * W), xv - mu)

    full = D(pos)
    regions = oracle.regions(cond)[0].flatten(1).numpy()
    inside = []
    for k in range(2):
        infl = (full - D([p for j, p in enumerate(pos) if j != k])) ** 2
        np.testing.assert_allclose(res.influence["ablation"][0, 0, k].flatten().numpy(), infl, rtol=1e-8, atol=1e-15)
        inside.append(infl[regions[k]].sum() / infl.sum())
    assert res.index["ablation"].item() == pytest.approx(float(np.mean(inside)), rel=1e-9)
    assert res.index["ablation"].item() < 0.999  # the shared brightness spreads each object's influence


def test_pixel_locality_of_factorized_objects_is_within_declared_radius() -> None:
    oracle = FactorizedObjects(1, 12, 12, object_radius=2.0)
    cond = Conditions.from_lists([[(3, 3), (8, 8)]], dtype=torch.float64)
    x = oracle.sample(cond, sigma=1.0, generator=torch.Generator().manual_seed(2))
    res = pixel_locality(oracle, x, [0.3, 3.0], cond)  # colored at the declared radius 4, verified
    assert res.method == "colored"
    R = oracle.receptive_radius
    assert torch.allclose(res.profile[:, R], torch.ones(2, dtype=torch.float64), atol=1e-12)
    dense = pixel_locality(oracle, x, [0.3, 3.0], cond, method="dense")
    torch.testing.assert_close(dense.profile, res.profile, atol=1e-12, rtol=0)
