"""Pixel and conditional locality against analytic Jacobians and analytic conditional Gaussians."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from localscore import Conditions, LocalScoreError
from localscore.metrics import (
    ablation_influence,
    conditional_locality,
    feature_orthogonality,
    gradient_influence,
    influence_radius,
    locality_index,
    pixel_locality,
)


# ----------------------------------------------------------------------------- analytic profiles
def _expected_from_matrix(Jm: np.ndarray, C: int, H: int, W: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Average normalised mass by offset and the profile, by explicit loops over a [CHW, CHW] matrix."""
    Dm = max(H, W) - 1
    heat = np.zeros((2 * Dm + 1, 2 * Dm + 1))
    J = Jm.reshape(C, H, W, C, H, W)
    count = 0
    for i in range(H):
        for j in range(W):
            m = (J[:, i, j] ** 2).sum(axis=(0, 1))  # [H, W]
            if m.sum() == 0:
                continue
            count += 1
            for p in range(H):
                for q in range(W):
                    heat[p - i + Dm, q - j + Dm] += m[p, q] / m.sum()
    heat /= count
    dmax = Dm if metric == "chebyshev" else math.ceil(math.sqrt(2) * Dm)
    prof = np.zeros(dmax + 1)
    for d in range(dmax + 1):
        for a in range(-Dm, Dm + 1):
            for b in range(-Dm, Dm + 1):
                dist = max(abs(a), abs(b)) if metric == "chebyshev" else math.sqrt(a * a + b * b)
                if dist <= d + 1e-9:
                    prof[d] += heat[a + Dm, b + Dm]
    return heat, prof


def _conv_matrix(w: np.ndarray, H: int, W: int) -> np.ndarray:
    r = w.shape[0] // 2
    M = np.zeros((H * W, H * W))
    for i in range(H):
        for j in range(W):
            for a in range(-r, r + 1):
                for b in range(-r, r + 1):
                    if 0 <= i + a < H and 0 <= j + b < W:
                        M[i * W + j, (i + a) * W + j + b] = w[a + r, b + r]
    return M


@pytest.mark.parametrize("metric", ["chebyshev", "euclidean"])
@pytest.mark.parametrize("method", ["dense", "colored", "probes"])
def test_pixel_locality_fixed_convolution_exact_profile(method: str, metric: str) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 5))
    H, W = 7, 9
    conv = torch.nn.Conv2d(1, 1, 5, padding=2, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w)[None, None])
    D = lambda x, s, c=None: conv(x)  # noqa: E731
    x = torch.zeros(1, 1, H, W, dtype=torch.float64)
    res = pixel_locality(D, x, 1.0, method=method, radius=2 if method == "colored" else None, metric=metric,
                         n_rows=H * W)  # probes with every row: exact
    heat, prof = _expected_from_matrix(_conv_matrix(w, H, W), 1, H, W, metric)
    np.testing.assert_allclose(res.heatmap[0].numpy(), heat, atol=1e-12)
    np.testing.assert_allclose(res.profile[0].numpy(), prof, atol=1e-12)
    assert res.method == method and res.metric == metric
    # effective radii from the same analytic profile
    for q, r in zip(res.quantiles, res.effective_radius[0].tolist()):
        assert r == int(np.argmax(prof >= q - 1e-12))


@pytest.mark.parametrize("target", ["denoiser", "score"])
def test_pixel_locality_gaussian_posterior_mean(target: str) -> None:
    """Gaussian data N(mu, S): D(x) = mu + S (S + s^2 I)^-1 (x - mu), Jacobian A = S (S + s^2 I)^-1."""
    C, H, W = 2, 4, 5
    n = C * H * W
    rng = np.random.default_rng(1)
    L = rng.standard_normal((n, n)) / math.sqrt(n)
    S = L @ L.T + 0.1 * np.eye(n)
    mu = rng.standard_normal(n)
    sigmas = [0.3, 1.5]
    St, mut = torch.from_numpy(S), torch.from_numpy(mu)

    def D(x: torch.Tensor, s: torch.Tensor, c: object = None) -> torch.Tensor:
        A = torch.linalg.solve(St + s[0] ** 2 * torch.eye(n, dtype=torch.float64), St).T  # S (S + s^2)^-1
        z = x.reshape(x.shape[0], n) - mut
        return (mut + z @ A.T).reshape(x.shape)

    x = torch.randn(1, C, H, W, dtype=torch.float64)
    res = pixel_locality(D, x, sigmas, target=target)  # auto -> dense (no radius declared)
    assert res.method == "dense"
    for k, s in enumerate(sigmas):
        A = S @ np.linalg.inv(S + s**2 * np.eye(n))
        Jm = A if target == "denoiser" else (A - np.eye(n)) / s**2
        heat, prof = _expected_from_matrix(Jm, C, H, W, "chebyshev")
        np.testing.assert_allclose(res.profile[k].numpy(), prof, atol=1e-10)
        np.testing.assert_allclose(res.heatmap[k].numpy(), heat, atol=1e-10)
    assert res.sigmas.tolist() == sigmas


def test_pixel_locality_auto_uses_declared_radius_and_reports() -> None:
    from localscore.testing import LocalConvDenoiser

    D = LocalConvDenoiser(1, 2, hidden=4).double()
    res = pixel_locality(D, torch.randn(1, 1, 10, 10, dtype=torch.float64), 1.0)
    assert res.method == "colored"
    assert res.profile[0, 2].item() == pytest.approx(1.0, abs=1e-12)
    assert res.profile[0, 1].item() < 1.0
    assert res.outside(2).item() == pytest.approx(0.0, abs=1e-12)
    d = res.to_dict()
    json.dumps(d)
    assert d["method"] == "colored" and len(d["profile"][0]) == 10


def test_pixel_locality_colored_float32_reports_its_verified_bound_not_one() -> None:
    """float32: the coloured profile stops at 1 - outside(R), the verified bound on the share beyond R (the
    dense oracle, in float64, sees none there), and the 100 % quantile is the largest distance."""
    from localscore.testing import LocalConvDenoiser

    D = LocalConvDenoiser(2, 2, hidden=4)
    x = torch.randn(1, 2, 10, 10, generator=torch.Generator().manual_seed(0))
    res = pixel_locality(D, x, [0.1, 2.0], quantiles=(0.5, 1.0))
    dense = pixel_locality(D.double(), x.double(), [0.1, 2.0], method="dense", quantiles=(0.5, 1.0))
    D.float()
    assert res.method == "colored" and dense.method == "dense"
    assert dense.outside(2).abs().max().item() < 1e-15
    out = res.outside(2)
    assert bool((out > 0).all()) and bool((out < 1e-5).all())  # (10 rtol)^2 = 1e-6 of a unit-scale row
    torch.testing.assert_close(res.heatmap.sum((1, 2)), 1 - out)
    assert bool((res.profile[:, 2:] == res.profile[:, 2:3]).all())  # nothing claimed beyond R either
    assert bool((res.profile <= dense.profile + 1e-6).all())  # lower bounds of the exact profile
    torch.testing.assert_close(res.profile, dense.profile, atol=1e-5, rtol=0)
    assert res.effective_radius[:, 1].tolist() == [9, 9] and dense.effective_radius[:, 1].tolist() == [2, 2]


def test_pixel_locality_colored_raises_on_a_leak_the_dense_method_measures() -> None:
    from localscore.testing import LocalConvDenoiser

    net = LocalConvDenoiser(1, 1, hidden=4)

    def D(z: torch.Tensor, s: torch.Tensor, c: object = None) -> torch.Tensor:
        return net(z, s) + 0.01 * z.mean((2, 3), keepdim=True)

    x = torch.randn(1, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    with pytest.raises(LocalScoreError, match="less local than the declared radius R = 1"):
        pixel_locality(D, x, 1.0, method="colored", radius=1)
    assert pixel_locality(D, x, 1.0, method="dense").outside(1).item() > 1e-7


def test_pixel_locality_bad_inputs() -> None:
    D = lambda x, s, c=None: x  # noqa: E731
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(LocalScoreError, match="`metric`"):
        pixel_locality(D, x, 1.0, metric="manhattan")  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="`sigma`"):
        pixel_locality(D, x, -1.0)
    with pytest.raises(LocalScoreError, match="needs a receptive radius"):
        pixel_locality(D, x, 1.0, method="colored")
    with pytest.raises(LocalScoreError, match="`quantiles`"):
        pixel_locality(D, x, 1.0, quantiles=(1.5,))
    with pytest.raises(LocalScoreError, match="`denoiser`"):
        pixel_locality(3, x, 1.0)


# ----------------------------------------------------------------------------- conditional, analytic
class _CondGaussian:
    """p(x | c) = N(m(c), S) on [1, H, W], m(c) = sum_k a exp(-|i - p_k|^2 / (2 w^2)): an analytic oracle.

    D(x, s, c) = m(c) + S (S + s^2 I)^-1 (x - m(c)); dropping k changes it by s^2 (S + s^2 I)^-1 bump_k.
    With S diagonal and bumps of disjoint support, CPC holds and the locality index is exactly 1.
    """

    def __init__(self, H: int, W: int, S: np.ndarray, width: float, cutoff: float | None) -> None:
        self.H, self.W, self.S, self.width, self.cutoff = H, W, torch.from_numpy(S), width, cutoff

    def bumps(self, cond: Conditions) -> torch.Tensor:
        r = torch.arange(self.H, dtype=torch.float64).view(1, 1, -1, 1)
        c = torch.arange(self.W, dtype=torch.float64).view(1, 1, 1, -1)
        p = cond.pos.double()
        d2 = (r - p[..., 0, None, None]) ** 2 + (c - p[..., 1, None, None]) ** 2
        b = torch.exp(-d2 / (2 * self.width**2))
        if self.cutoff is not None:
            cheb = torch.maximum((r - p[..., 0, None, None]).abs(), (c - p[..., 1, None, None]).abs())
            b = b * (cheb <= self.cutoff)
        return b * cond.valid[:, :, None, None]

    def __call__(self, x: torch.Tensor, s: torch.Tensor, cond: Conditions | None = None) -> torch.Tensor:
        n = self.H * self.W
        m = self.bumps(cond).sum(1, keepdim=True) if cond is not None and cond.num_slots else torch.zeros_like(x)
        out = []
        for b in range(x.shape[0]):
            A = torch.linalg.solve(self.S + s[b] ** 2 * torch.eye(n, dtype=torch.float64), self.S).T
            out.append(m[b].flatten() + A @ (x[b] - m[b]).flatten())
        return torch.stack(out).reshape(x.shape)


def test_conditional_locality_factorized_index_is_one() -> None:
    H, W = 10, 14
    oracle = _CondGaussian(H, W, np.diag(np.linspace(0.5, 2.0, H * W)), width=1.2, cutoff=2)
    cond = Conditions.from_lists([[(2.0, 2.0), (6.0, 10.0)], [(5.0, 5.0)]], dtype=torch.float64)
    x = torch.randn(2, 1, H, W, dtype=torch.float64)
    res = conditional_locality(oracle, x, [0.1, 1.0, 10.0], cond, regions=2.0)
    idx = res.index["ablation"]
    torch.testing.assert_close(idx, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.on_others_mean["ablation"], torch.zeros(3, dtype=torch.float64), rtol=0, atol=0)
    assert not bool(res.valid[1, 1])
    assert math.isnan(float(res.inside["ablation"][0, 1, 1]))  # padding slot


@pytest.mark.parametrize("sigma", [0.3, 2.0])
def test_conditional_locality_correlated_gaussian_matches_closed_form(sigma: float) -> None:
    H, W = 8, 9
    n = H * W
    grid = np.stack(np.meshgrid(np.arange(H), np.arange(W), indexing="ij"), -1).reshape(n, 2)
    d2 = ((grid[:, None] - grid[None]) ** 2).sum(-1)
    S = np.exp(-d2 / (2 * 2.0**2)) + 0.05 * np.eye(n)  # correlated background: CPC fails
    oracle = _CondGaussian(H, W, S, width=1.0, cutoff=None)
    cond = Conditions.from_lists([[(2.0, 2.0), (5.0, 6.0)]], dtype=torch.float64)
    x = torch.randn(1, 1, H, W, dtype=torch.float64)
    res = conditional_locality(oracle, x, sigma, cond, methods=("ablation", "gradient"), regions=2.0)
    # closed form, independently: dropping k changes D by s^2 (S + s^2 I)^-1 bump_k
    Minv = np.linalg.inv(S + sigma**2 * np.eye(n))
    expected_inside = []
    for k, (pr, pc) in enumerate([(2.0, 2.0), (5.0, 6.0)]):
        bump = np.exp(-((grid[:, 0] - pr) ** 2 + (grid[:, 1] - pc) ** 2) / 2.0)
        infl = (sigma**2 * Minv @ bump) ** 2
        np.testing.assert_allclose(res.influence["ablation"][0, 0, k].numpy().flatten(), infl, rtol=1e-9, atol=1e-14)
        own = np.maximum(np.abs(grid[:, 0] - pr), np.abs(grid[:, 1] - pc)) <= 2.0
        expected_inside.append(infl[own].sum() / infl.sum())
        # gradient: d bump / d p = bump * (grid - p) / w^2 for w = 1
        g = 0
        for axis, p in ((0, pr), (1, pc)):
            g = g + (sigma**2 * Minv @ (bump * (grid[:, axis] - p))) ** 2
        np.testing.assert_allclose(res.influence["gradient"][0, 0, k].numpy().flatten(), g, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(res.inside["ablation"][0, 0].numpy(), expected_inside, rtol=1e-10)
    assert res.index["ablation"].item() == pytest.approx(float(np.mean(expected_inside)), rel=1e-10)
    assert res.index["ablation"].item() < 0.99  # not local: the correlated background spreads influence
    json.dumps(res.to_dict())


def test_influence_functions_on_conditions_match_the_closed_form() -> None:
    """The shared influence functions (the ones conditional_locality uses): mode "only", probes, padding."""
    H, W, sigma = 6, 7, 0.8
    n = H * W
    grid = np.stack(np.meshgrid(np.arange(H), np.arange(W), indexing="ij"), -1).reshape(n, 2)
    d2 = ((grid[:, None] - grid[None]) ** 2).sum(-1)
    S = np.exp(-d2 / (2 * 1.5**2)) + 0.05 * np.eye(n)
    oracle = _CondGaussian(H, W, S, width=1.0, cutoff=None)
    cond = Conditions.from_lists([[(1.0, 1.0), (4.0, 5.0)], [(2.0, 3.0)]], dtype=torch.float64)
    x = torch.randn(2, 1, H, W, dtype=torch.float64)
    Minv = np.linalg.inv(S + sigma**2 * np.eye(n))
    only = ablation_influence(oracle, x, sigma, cond, mode="only")
    exact = gradient_influence(oracle, x, sigma, cond)
    for b, k, (pr, pc) in [(0, 0, (1.0, 1.0)), (0, 1, (4.0, 5.0)), (1, 0, (2.0, 3.0))]:
        bump = np.exp(-((grid[:, 0] - pr) ** 2 + (grid[:, 1] - pc) ** 2) / 2.0)
        # D(c_k) - D(none) = s^2 (S + s^2 I)^-1 bump_k: the same as dropping k, for this linear oracle
        np.testing.assert_allclose(only[b, k].numpy().flatten(), (sigma**2 * Minv @ bump) ** 2, rtol=1e-9,
                                   atol=1e-14)
        g = sum((sigma**2 * Minv @ (bump * (grid[:, a] - p))) ** 2 for a, p in ((0, pr), (1, pc)))
        np.testing.assert_allclose(exact[b, k].numpy().flatten(), g, rtol=1e-8, atol=1e-14)
    assert float(only[1, 1].abs().max()) == 0.0 and float(exact[1, 1].abs().max()) == 0.0    # padding slot
    est = gradient_influence(oracle, x, sigma, cond, probes=200, chunk=100, generator=torch.Generator().manual_seed(0))
    # E |J v|^2 = ||J||_F^2 for Rademacher v on the slot's 2 coordinates: the cross term averages out
    ratio = est.sum(dim=(2, 3))[cond.valid] / exact.sum(dim=(2, 3))[cond.valid]
    assert float((ratio - 1).abs().max()) < 0.2
    with pytest.raises(LocalScoreError, match="conditioner set"):
        ablation_influence(oracle, x, sigma, None)
    with pytest.raises(LocalScoreError, match="mode"):
        ablation_influence(oracle, x, sigma, cond, mode="drop")  # type: ignore[arg-type]


def test_conditional_locality_local_network_and_global_network() -> None:
    from localscore.testing import GlobalConvDenoiser, LocalConvDenoiser

    cond = Conditions.from_lists([[(3.0, 3.0), (10.0, 12.0)]])
    x = torch.randn(1, 2, 14, 16)
    loc = LocalConvDenoiser(2, 2, cond_radius=1.5, hidden=6)
    res = conditional_locality(loc, x, [0.2, 3.0], cond, methods=("ablation", "gradient"), regions=4.0)
    for m in ("ablation", "gradient"):
        assert res.index[m].tolist() == [1.0, 1.0]
        assert float(res.influence_radius[m].max()) <= 3.5 + 1e-6  # r + R = 3.5
    glob = GlobalConvDenoiser(2, 2, cond_radius=1.5, hidden=6)
    res_g = conditional_locality(glob, x, 1.0, cond, regions=4.0)
    assert res_g.index["ablation"].item() < 0.9
    assert float(res_g.influence_radius["ablation"].min()) > 4.0


def test_conditional_locality_default_regions_are_influence_radius() -> None:
    from localscore.masks import BoxRule
    from localscore.testing import LocalConvDenoiser

    D = LocalConvDenoiser(1, 1, cond_radius=1.0, hidden=4)
    cond = Conditions.from_lists([[(4.0, 4.0)]])
    res = conditional_locality(D, torch.randn(1, 1, 10, 10), 1.0, cond, quantile=0.9)
    assert res.regions == "influence_radius"
    assert res.inside["ablation"].item() >= 0.9
    res_rule = conditional_locality(D, torch.randn(1, 1, 10, 10), 1.0, cond, regions=BoxRule(2.0))
    assert res_rule.index["ablation"].item() == 1.0


def test_conditional_locality_bad_inputs() -> None:
    D = lambda x, s, c=None: x  # noqa: E731
    x = torch.zeros(1, 1, 4, 4)
    c = Conditions.from_lists([[(1.0, 1.0)]])
    with pytest.raises(LocalScoreError, match="`cond` is None"):
        conditional_locality(D, x, 1.0, None)  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="`methods`"):
        conditional_locality(D, x, 1.0, c, methods=("saliency",))  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="B = 2"):
        conditional_locality(D, x, 1.0, Conditions.cat([c, c]))
    with pytest.raises(LocalScoreError, match="`regions` has shape"):
        conditional_locality(D, x, 1.0, c, regions=torch.ones(1, 2, 4, 4, dtype=torch.bool))


# ----------------------------------------------------------------------------- pure functions on maps
def test_locality_index_by_hand() -> None:
    I = torch.zeros(1, 3, 2, 4)
    I[0, 0, 0, 0] = 3.0
    I[0, 0, 1, 3] = 1.0  # lands on object 1's region
    I[0, 1, 1, 3] = 2.0
    m = torch.zeros(1, 3, 2, 4, dtype=torch.bool)
    m[0, 0, 0, :2] = True
    m[0, 1, 1, 2:] = True
    cond = Conditions(torch.zeros(1, 3, 2), valid=torch.tensor([[True, True, False]]))
    res = locality_index(I, m, cond=cond)
    assert res.inside[0, :2].tolist() == [0.75, 1.0]
    assert res.on_others[0, :2].tolist() == [0.25, 0.0]
    assert res.valid.tolist() == [[True, True, False]]
    assert res.index == pytest.approx(0.875)
    soft = locality_index(I, m.double() * 0.5, cond=cond)
    assert soft.inside[0, :2].tolist() == [0.375, 0.5]


def test_locality_index_radius_regions_and_errors() -> None:
    cond = Conditions.from_lists([[(0.0, 0.0), (0.0, 5.0)]])
    I = torch.zeros(1, 2, 1, 6)
    I[0, 0, 0, 1] = 1.0
    I[0, 0, 0, 5] = 1.0
    I[0, 1, 0, 5] = 1.0
    res = locality_index(I, 1.0, cond=cond)
    assert res.inside.tolist() == [[0.5, 1.0]]
    assert res.on_others.tolist() == [[0.5, 0.0]]
    with pytest.raises(LocalScoreError, match="needs the conditioners' positions"):
        locality_index(I, 1.0)
    with pytest.raises(LocalScoreError, match="negative"):
        locality_index(-I, 1.0, cond=cond)
    with pytest.raises(LocalScoreError, match="expected \\[B, K, H, W\\]"):
        locality_index(I[0], 1.0, cond=cond)


def test_influence_radius_metrics() -> None:
    cond = Conditions.from_lists([[(2.0, 2.0)]])
    I = torch.zeros(1, 1, 5, 5)
    I[0, 0, 4, 4] = 1.0  # a corner: Chebyshev 2, Euclidean sqrt(8)
    assert influence_radius(I, cond).item() == 2.0
    assert influence_radius(I, cond, metric="euclidean").item() == pytest.approx(math.sqrt(8))
    assert math.isnan(influence_radius(torch.zeros(1, 1, 5, 5), cond).item())


# ----------------------------------------------------------------------------- feature orthogonality
def test_feature_orthogonality_pixel_and_feature_space() -> None:
    bg = torch.zeros(1, 4, 4)
    a, b = bg.clone(), bg.clone()
    a[0, 0, 0] = 1.0
    b[0, 3, 3] = 1.0
    res = feature_orthogonality([a, b], bg, labels=["a", "b"])
    assert res.cosine.tolist() == [[1.0, 0.0], [0.0, 1.0]] and res.max_abs_offdiag == 0.0
    # a feature map that mixes the two pixels makes them collinear
    mix = lambda t: (t[:, :, 0, 0] + t[:, :, 3, 3]).unsqueeze(-1)  # noqa: E731
    res_f = feature_orthogonality(torch.stack([a, b]), bg, mix)
    assert res_f.max_abs_offdiag == pytest.approx(1.0)
    # samples: the feature mean of sample batches
    samples_a = a[None] + torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1) * b[None]
    res_s = feature_orthogonality([samples_a, b[None]], bg[None], samples=True)
    assert res_s.cosine[0, 1].item() == pytest.approx(0.0)
    assert math.isnan(feature_orthogonality([bg], bg).cosine[0, 0].item())
    json.dumps(res.to_dict())
    with pytest.raises(LocalScoreError, match="entries"):
        feature_orthogonality([a], torch.zeros(3))


def test_plots_render(tmp_path: object) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from localscore.testing import LocalConvDenoiser

    D = LocalConvDenoiser(1, 1, cond_radius=1.0, hidden=4)
    x = torch.randn(1, 1, 8, 8)
    cond = Conditions.from_lists([[(2.0, 2.0), (5.0, 6.0)]])
    figs = [
        pixel_locality(D, x, [0.5, 2.0]).plot(),
        conditional_locality(D, x, [0.5, 2.0], cond, regions=2.0).plot(),
        locality_index(torch.rand(1, 2, 8, 8), 2.0, cond=cond).plot(),
        feature_orthogonality(torch.randn(3, 4), torch.zeros(4)).plot(),
    ]
    for f in figs:
        assert len(f.axes) >= 1
        plt.close(f)


def test_pixel_locality_on_the_gaussian_oracle() -> None:
    """localscore.oracles.Gaussian: Jacobian cov (cov + s^2 I)^-1, profile computed here with numpy."""
    from localscore.oracles import Gaussian

    C, H, W = 1, 5, 6
    n = C * H * W
    grid = np.stack(np.meshgrid(np.arange(H), np.arange(W), indexing="ij"), -1).reshape(n, 2)
    cov = np.exp(-((grid[:, None] - grid[None]) ** 2).sum(-1) / (2 * 1.5**2)) + 0.05 * np.eye(n)
    oracle = Gaussian(torch.zeros(C, H, W, dtype=torch.float64), torch.from_numpy(cov))
    x = torch.randn(1, C, H, W, dtype=torch.float64)
    res = pixel_locality(oracle, x, [0.1, 1.0], metric="euclidean")
    for k, s in enumerate([0.1, 1.0]):
        A = cov @ np.linalg.inv(cov + s**2 * np.eye(n))
        _, prof = _expected_from_matrix(A, C, H, W, "euclidean")
        np.testing.assert_allclose(res.profile[k].numpy(), prof, atol=1e-9)
    assert res.effective_radius[1, 1] > res.effective_radius[0, 1]  # smoother at higher noise
