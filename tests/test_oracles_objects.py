"""Tests of the object oracles against an independent dense Gaussian reference and the CPC identity."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError
from localscore.denoisers import conditioner_radius, receptive_radius
from localscore.oracles import AnalyticDistribution, FactorizedObjects, OverlappingObjects

F64 = torch.float64


# --------------------------------------------------------------------------- the independent reference
def dense_reference(oracle, cond: Conditions, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``mu [D]`` and ``Sigma [D, D]`` of image ``b`` written from the model's definition, pixel by pixel.

    ``x = b + sum_j o_j + g 1`` with flattening order (c, h, w) as ``x.reshape(-1)``. No block structure,
    no grouping, no Woodbury: a direct transcription used to check the oracle's fast linear algebra.
    """
    C, H, W = oracle.shape
    D = C * H * W
    mu = torch.zeros(D, dtype=F64)
    sigma = torch.zeros(D, D, dtype=F64)
    bg_mean = oracle.background_mean
    bg_var = oracle.background_std**2
    cc = oracle.channel_corr
    pix = [(h, w) for h in range(H) for w in range(W)]

    def flat(c: int, h: int, w: int) -> int:
        return (c * H + h) * W + w

    for c in range(C):
        for h, w in pix:
            mu[flat(c, h, w)] = bg_mean[c]
            sigma[flat(c, h, w), flat(c, h, w)] += bg_var[c]
    for k in range(cond.num_slots):
        if not bool(cond.valid[b, k]):
            continue
        r0, c0 = (float(v) for v in cond.pos[b, k])
        colour = oracle.object_mean.clone()
        if oracle.attr_map is not None:
            colour = colour + oracle.attr_map @ cond.attr[b, k].to(F64)
        inside = [(h, w) for h, w in pix if (h - r0) ** 2 + (w - c0) ** 2 <= oracle.object_radius**2]
        for h, w in inside:
            prof = 1.0
            if oracle.mean_width is not None:
                prof = math.exp(-((h - r0) ** 2 + (w - c0) ** 2) / (2 * oracle.mean_width**2))
            for c in range(C):
                mu[flat(c, h, w)] += colour[c] * prof
        for h, w in inside:
            for h2, w2 in inside:
                se = oracle.object_std**2 * math.exp(-((h - h2) ** 2 + (w - w2) ** 2) / (2 * oracle.length_scale**2))
                for c in range(C):
                    for c2 in range(C):
                        sigma[flat(c, h, w), flat(c2, h2, w2)] += se * cc[c, c2]
    g2 = oracle.global_std**2
    if g2 > 0:
        for c in range(C):
            idx = torch.tensor([flat(c, h, w) for h, w in pix])
            sigma[idx[:, None], idx[None, :]] += g2
    return mu, sigma


def ref_denoise(mu: torch.Tensor, sigma: torch.Tensor, x: torch.Tensor, s: float) -> torch.Tensor:
    A = sigma + s**2 * torch.eye(mu.shape[0], dtype=F64)
    return mu + sigma @ torch.linalg.solve(A, x.reshape(-1) - mu)


def ref_log_prob(mu: torch.Tensor, sigma: torch.Tensor, x: torch.Tensor, s: float) -> float:
    A = sigma + s**2 * torch.eye(mu.shape[0], dtype=F64)
    return float(torch.distributions.MultivariateNormal(mu, covariance_matrix=A).log_prob(x.reshape(-1)))


def make_factorized(**kw) -> FactorizedObjects:
    base = dict(object_radius=1.8, attr_map=torch.tensor([[1.0, 0.5], [-0.3, 1.0]]), object_mean=[0.2, -0.1],
                object_std=0.4, length_scale=1.3, channel_corr=torch.tensor([[1.0, 0.6], [0.6, 1.0]]),
                mean_width=1.5, background_mean=[0.1, -0.2], background_std=[0.3, 0.5])
    base.update(kw)
    return FactorizedObjects(2, 7, 8, **base)


def make_overlapping(**kw) -> OverlappingObjects:
    base = dict(object_radius=2.2, object_mean=[0.8, 0.3], object_std=0.5, length_scale=1.0,
                channel_corr=torch.tensor([[1.0, -0.4], [-0.4, 1.0]]), background_std=[0.25, 0.4], global_std=0.6)
    base.update(kw)
    return OverlappingObjects(2, 7, 8, **base)


FACT_COND = Conditions.from_lists(
    [[(1.0, 1.5), (4.6, 5.2)], [(3.0, 3.0)], [], [(0.0, 7.0), (6.2, 0.3), (5.5, 6.5)]],
    attrs=[[[1.0, -1.0], [0.5, 2.0]], [[0.0, 1.0]], [], [[1.0, 1.0], [-1.0, 0.0], [0.3, 0.3]]],
    dtype=F64,
)
OVER_COND = Conditions.from_lists([[(2.0, 2.0), (3.0, 4.5)], [(3.0, 3.5)], [], [(1.0, 1.0), (2.5, 2.0), (5.0, 6.0)]],
                                  dtype=F64)


# --------------------------------------------------------------------------- against the dense reference
@pytest.mark.parametrize("kind", ["factorized", "factorized_diag", "overlapping", "overlapping_diag",
                                  "overlapping_no_global"])
@pytest.mark.parametrize("s", [0.0, 0.01, 0.3, 2.0, 50.0])
def test_denoise_and_log_prob_match_dense_reference(kind: str, s: float) -> None:
    # "_diag": a diagonal channel correlation takes the per-channel (separable) solver path
    diag = torch.diag(torch.tensor([1.0, 0.5]))
    if kind.startswith("factorized"):
        oracle = make_factorized(channel_corr=diag) if kind.endswith("diag") else make_factorized()
        cond = FACT_COND
    else:
        kw = {"channel_corr": diag} if kind.endswith("diag") else {}
        oracle = make_overlapping(global_std=0.0 if kind.endswith("no_global") else 0.6, **kw)
        cond = OVER_COND
    gen = torch.Generator().manual_seed(1)
    x = 1.5 * torch.randn(cond.batch_size, *oracle.shape, dtype=F64, generator=gen) + 0.3
    lp = oracle.log_prob(x, s, cond)
    den = oracle.denoise(x, s, cond) if s > 0 else None
    for b in range(cond.batch_size):
        mu, sigma = dense_reference(oracle, cond, b)
        assert float(lp[b]) == pytest.approx(ref_log_prob(mu, sigma, x[b], s), rel=1e-10, abs=1e-9)
        if den is not None:
            torch.testing.assert_close(den[b].reshape(-1), ref_denoise(mu, sigma, x[b], s), rtol=1e-10, atol=1e-10)


def test_mean_and_regions_match_definition() -> None:
    oracle = make_factorized()
    reg = oracle.regions(FACT_COND)
    assert reg.shape == (4, 3, 7, 8) and reg.dtype == torch.bool
    mean = oracle.mean(FACT_COND)
    for b in range(4):
        mu, _ = dense_reference(oracle, FACT_COND, b)
        torch.testing.assert_close(mean[b].reshape(-1), mu, rtol=0, atol=1e-14)
        for k in range(3):
            if not bool(FACT_COND.valid[b, k]):
                assert not bool(reg[b, k].any())  # padding slots are empty
                continue
            r0, c0 = FACT_COND.pos[b, k].tolist()
            want = torch.tensor([[(h - r0) ** 2 + (w - c0) ** 2 <= 1.8**2 for w in range(8)] for h in range(7)])
            assert torch.equal(reg[b, k], want)
    # disjoint: no pixel belongs to two objects of one image
    assert int(reg.sum(1).max()) <= 1


def test_overlapping_equals_factorized_when_disjoint_and_no_global() -> None:
    kw = dict(object_radius=1.8, object_mean=[0.5, 1.0], object_std=0.4, length_scale=1.2, background_std=0.3)
    fo = FactorizedObjects(2, 7, 8, **kw)
    oo = OverlappingObjects(2, 7, 8, global_std=0.0, **kw)
    cond = Conditions(FACT_COND.pos, None, FACT_COND.valid)
    x = torch.randn(4, 2, 7, 8, dtype=F64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(oo.denoise(x, 0.7, cond), fo.denoise(x, 0.7, cond), rtol=0, atol=1e-13)
    torch.testing.assert_close(oo.log_prob(x, 0.7, cond), fo.log_prob(x, 0.7, cond), rtol=1e-13, atol=1e-12)


# --------------------------------------------------------------------------- score = grad log p
@given(seed=st.integers(0, 2**31 - 1), log_sigma=st.floats(math.log(0.002), math.log(80.0)),
       kind=st.sampled_from(["factorized", "overlapping"]))
def test_score_is_autograd_of_log_prob(seed: int, log_sigma: float, kind: str) -> None:
    oracle, cond = (make_factorized(), FACT_COND) if kind == "factorized" else (make_overlapping(), OVER_COND)
    s = math.exp(log_sigma)
    gen = torch.Generator().manual_seed(seed)
    x = oracle.sample(cond, sigma=s, generator=gen).requires_grad_(True)
    (grad,) = torch.autograd.grad(oracle.log_prob(x, s, cond).sum(), x)
    score = oracle.score(x.detach(), s, cond)
    scale = float(score.abs().max()) + 1.0
    torch.testing.assert_close(score, grad, rtol=1e-9, atol=1e-11 * scale)


def test_per_image_sigmas_and_float32_inputs() -> None:
    oracle = make_factorized()
    x = torch.randn(4, 2, 7, 8, dtype=F64, generator=torch.Generator().manual_seed(5))
    sig = torch.tensor([0.01, 0.5, 3.0, 40.0], dtype=F64)
    batched = oracle.denoise(x, sig, FACT_COND)
    for b in range(4):
        one = oracle.denoise(x[b : b + 1], float(sig[b]), FACT_COND[b])
        torch.testing.assert_close(batched[b : b + 1], one, rtol=0, atol=1e-14)
    out32 = oracle.denoise(x.float(), sig.float(), FACT_COND.to(dtype=torch.float32))
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), batched, rtol=1e-5, atol=1e-5)
    assert oracle.log_prob(x.float(), 0.3, FACT_COND).dtype == torch.float32
    assert isinstance(oracle, AnalyticDistribution)
    torch.testing.assert_close(oracle(x, sig, FACT_COND), batched)


def test_unconditional_is_background_only() -> None:
    oracle = make_factorized()
    x = torch.randn(3, 2, 7, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    s = 0.8
    v = (oracle.background_std**2).view(1, 2, 1, 1)
    mu = oracle.background_mean.view(1, 2, 1, 1)
    want = mu + v / (v + s**2) * (x - mu)  # independent pixels: scalar Wiener filter
    torch.testing.assert_close(oracle.denoise(x, s, None), want, rtol=0, atol=1e-14)
    torch.testing.assert_close(oracle.denoise(x, s, Conditions.empty(3, attr_dim=2, dtype=F64)), want, rtol=0,
                               atol=1e-14)


# --------------------------------------------------------------------------- exact samples
@pytest.mark.parametrize("kind", ["factorized", "overlapping"])
def test_samples_have_the_right_moments(kind: str) -> None:
    if kind == "factorized":
        oracle = FactorizedObjects(2, 5, 5, object_radius=1.5, object_mean=[1.0, -0.5], object_std=0.6,
                                   length_scale=1.2, channel_corr=torch.tensor([[1.0, 0.7], [0.7, 1.0]]),
                                   mean_width=2.0, background_std=[0.3, 0.2])
        one = Conditions.from_lists([[(2.0, 2.2)]], dtype=F64)
    else:
        oracle = OverlappingObjects(2, 5, 5, object_radius=1.6, object_mean=[1.0, 0.5], object_std=0.5,
                                    background_std=0.3, global_std=0.4)
        one = Conditions.from_lists([[(1.5, 1.5), (2.5, 2.8)]], dtype=F64)
    n, s = 40000, 0.25
    x = oracle.sample(one.repeat_interleave(n), sigma=s, generator=torch.Generator().manual_seed(11))
    assert x.shape == (n, 2, 5, 5) and x.dtype == F64
    mu, sigma = dense_reference(oracle, one, 0)
    cov = sigma + s**2 * torch.eye(50, dtype=F64)
    flat = x.reshape(n, -1)
    emp_mu = flat.mean(0)
    se = (cov.diagonal() / n).sqrt()
    assert float(((emp_mu - mu) / se).abs().max()) < 5.0
    emp_cov = torch.cov(flat.T)
    # standard error of a covariance entry: sqrt((S_ii S_jj + S_ij^2) / n)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert float(((emp_cov - cov) / se_cov).abs().max()) < 5.5
    assert float((emp_cov - cov).abs().max()) > 0  # sanity: not a degenerate comparison


def test_sample_int_is_background_and_reproducible() -> None:
    oracle = make_factorized()
    a = oracle.sample(3, generator=torch.Generator().manual_seed(0))
    b = oracle.sample(3, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 2, 7, 8) and torch.equal(a, b) and a.dtype == torch.get_default_dtype()
    assert oracle.sample(FACT_COND.to(dtype=torch.float32)).dtype == torch.float32  # the conditions' dtype
    assert oracle.sample(FACT_COND).dtype == F64
    assert oracle.sample(2, dtype=torch.float16).dtype == torch.float16
    big = oracle.sample(4000, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(big.mean((0, 2, 3)), oracle.background_mean, rtol=0, atol=0.01)
    torch.testing.assert_close(big.std((0, 2, 3)), oracle.background_std, rtol=0.02, atol=0)


# --------------------------------------------------------------------------- the CPC identity
def grid_cond(n_objects: int, jitter: list[tuple[float, float]], batch_counts: list[int]) -> Conditions:
    """Positions on a 4 x 3 grid of 6-px cells (jittered by < 0.5 px): regions of radius 2.2 never touch."""
    cells = [(3.0 + 6 * i, 3.0 + 6 * j) for i in range(4) for j in range(3)]
    lists = []
    for count in batch_counts:
        lists.append([(cells[k][0] + jitter[k][0], cells[k][1] + jitter[k][1]) for k in range(count)])
    del n_objects
    return Conditions.from_lists(lists, attrs=[[[0.5 * k - 1.0, 1.0 - 0.2 * k] for k in range(c)] for c in
                                               batch_counts] if max(batch_counts) > 0 else None, dtype=F64)


def composed(oracle, x: torch.Tensor, s: torch.Tensor, cond: Conditions) -> torch.Tensor:
    """``D(x | none) + sum_j (D(x | c_j) - D(x | none))`` from separate oracle calls."""
    d0 = oracle.denoise(x, s, None)
    out = d0.clone()
    for single in cond.singletons():
        out = out + (oracle.denoise(x, s, single) - d0)
    return out


@pytest.mark.parametrize("n", list(range(11)))
def test_cpc_identity_holds_for_factorized_objects(n: int) -> None:
    oracle = FactorizedObjects(2, 24, 18, object_radius=2.2, attr_map=torch.tensor([[1.0, 0.0], [0.5, 1.0]]),
                               object_std=0.5, mean_width=2.0, background_std=[0.2, 0.4])
    gen = torch.Generator().manual_seed(n)
    jitter = (torch.rand(12, 2, generator=gen, dtype=F64) - 0.5).mul(0.98).tolist()
    counts = [n, max(n - 3, 0), n // 2]
    cond = grid_cond(n, jitter, counts)
    sig = torch.logspace(math.log10(0.002), math.log10(80.0), 12, dtype=F64)
    B = len(counts)
    x_base = oracle.sample(cond, generator=gen)
    # every (image, sigma) pair: repeat the batch over the sigma grid
    condr = Conditions.cat([cond] * len(sig))
    s = sig.repeat_interleave(B)
    x = x_base.repeat(len(sig), 1, 1, 1) + s.view(-1, 1, 1, 1) * torch.randn(B * len(sig), 2, 24, 18, dtype=F64,
                                                                              generator=gen)
    joint = oracle.denoise(x, s, condr)
    comp = composed(oracle, x, s, condr)
    scale = x.abs().amax((1, 2, 3), keepdim=True) + 1.0
    assert float(((joint - comp) / scale).abs().max()) < 1e-13
    assert float((oracle.composition_gap(x, s, condr) / scale).abs().max()) < 1e-13
    if n > 0:  # the identity is not vacuous: conditioning changes the denoiser
        assert float((joint - oracle.denoise(x, s, None)).abs().max()) > 1e-3


def test_cpc_joint_is_the_true_joint_posterior_mean() -> None:
    """The joint the CPC identity is checked against is itself right (dense reference, 3 objects)."""
    oracle = FactorizedObjects(1, 9, 9, object_radius=1.5, object_std=0.5, background_std=0.3)
    cond = Conditions.from_lists([[(1.0, 1.0), (4.0, 6.5), (7.2, 2.0)]], dtype=F64)
    x = torch.randn(1, 1, 9, 9, dtype=F64, generator=torch.Generator().manual_seed(4))
    mu, sigma = dense_reference(oracle, cond, 0)
    for s in (0.002, 0.5, 80.0):
        comp = composed(oracle, x, torch.tensor([s], dtype=F64), cond)
        torch.testing.assert_close(comp.reshape(-1), ref_denoise(mu, sigma, x[0], s), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("global_std", [0.0, 0.5])
@pytest.mark.parametrize("s", [0.002, 0.1, 0.7, 5.0, 80.0])
def test_cpc_fails_for_overlapping_objects_by_the_analytic_gap(global_std: float, s: float) -> None:
    oracle = make_overlapping(global_std=global_std)
    cond = OVER_COND
    x = oracle.sample(cond, sigma=s, generator=torch.Generator().manual_seed(7))
    gap = oracle.composition_gap(x, s, cond)
    st_ = torch.full((cond.batch_size,), s, dtype=F64)
    measured = oracle.denoise(x, st_, cond) - composed(oracle, x, st_, cond)
    scale = float(x.abs().max()) + 1.0
    torch.testing.assert_close(gap, measured, rtol=0, atol=1e-12 * scale)
    # and against the dense reference, term by term
    none = Conditions.empty(1, dtype=F64)
    for b in range(cond.batch_size):
        cb = cond[b]
        mu_j, sig_j = dense_reference(oracle, cb, 0)
        mu_0, sig_0 = dense_reference(oracle, none, 0)
        want = ref_denoise(mu_j, sig_j, x[b], s) - ref_denoise(mu_0, sig_0, x[b], s)
        for single in cb.singletons():
            mu_1, sig_1 = dense_reference(oracle, single, 0)
            want = want - (ref_denoise(mu_1, sig_1, x[b], s) - ref_denoise(mu_0, sig_0, x[b], s))
        torch.testing.assert_close(gap[b].reshape(-1), want, rtol=0, atol=1e-10 * scale)
    # image 0 (overlapping pair) fails; image 1 (one object) and image 2 (none) compose exactly
    assert float(gap[0].abs().max()) > (1e-4 if 0.01 < s < 20 else 0)
    if global_std == 0.0:
        assert float(gap[1:3].abs().max()) == 0.0


def test_gap_of_disjoint_objects_comes_only_from_the_global_offset() -> None:
    cond = Conditions.from_lists([[(1.0, 1.0), (5.0, 6.0)]], dtype=F64)  # disjoint regions
    x = torch.randn(1, 2, 7, 8, dtype=F64, generator=torch.Generator().manual_seed(8))
    assert float(make_overlapping(global_std=0.0).composition_gap(x, 0.5, cond).abs().max()) < 1e-14
    gap = make_overlapping(global_std=0.8).composition_gap(x, 0.5, cond)
    assert float(gap.abs().max()) > 1e-4
    assert float(gap[..., 3, 0].abs().min()) > 0  # a background pixel far from both objects moves too


# --------------------------------------------------------------------------- locality declarations
def test_factorized_denoiser_is_as_local_as_it_declares() -> None:
    oracle = FactorizedObjects(1, 9, 9, object_radius=1.6, object_std=0.5, length_scale=2.0)
    assert receptive_radius(oracle) == 3 and conditioner_radius(oracle) == 2
    cond = Conditions.from_lists([[(2.0, 2.0), (6.0, 6.3)]], dtype=F64)
    x = torch.randn(1, 1, 9, 9, dtype=F64, generator=torch.Generator().manual_seed(0))
    jac = torch.autograd.functional.jacobian(lambda z: oracle.denoise(z, 0.5, cond), x).reshape(81, 81)
    rows = torch.arange(81) // 9
    cols = torch.arange(81) % 9
    cheb = torch.maximum((rows[:, None] - rows[None, :]).abs(), (cols[:, None] - cols[None, :]).abs())
    assert float(jac[cheb > 3].abs().max()) == 0.0
    assert float(jac[(cheb > 0) & (cheb <= 3)].abs().max()) > 1e-3  # and it does couple pixels within a region


# --------------------------------------------------------------------------- bad inputs
def test_overlapping_regions_raise_with_the_pair_and_distance() -> None:
    oracle = FactorizedObjects(1, 10, 10, object_radius=2.0)
    cond = Conditions.from_lists([[(1.0, 1.0)], [(2.0, 2.0), (8.0, 8.0), (3.0, 4.5)]], dtype=F64)
    with pytest.raises(LocalScoreError, match=r"objects 0 and 2 of image 1 overlap") as e:
        oracle.denoise(torch.zeros(2, 1, 10, 10), 1.0, cond)
    assert "distance 2.693" in str(e.value) and "OverlappingObjects" in str(e.value)
    for call in (lambda: oracle.regions(cond), lambda: oracle.sample(cond), lambda: oracle.log_prob(
            torch.zeros(2, 1, 10, 10), 1.0, cond)):
        with pytest.raises(LocalScoreError, match="overlap"):
            call()
    # regions exactly touching at distance 2r but sharing no pixel are allowed (pixel sets are disjoint)
    ok = Conditions.from_lists([[(2.5, 2.5), (2.5, 6.0)]], dtype=F64)  # 3.5 px apart
    assert int(oracle.regions(ok).sum(1).max()) == 1


@pytest.mark.parametrize(("pos", "msg"), [((-0.6, 3.0), "off the"), ((3.0, 10.51), "off the"),
                                          ((9.6, 3.0), "off the")])
def test_off_image_positions_raise(pos: tuple[float, float], msg: str) -> None:
    oracle = FactorizedObjects(1, 10, 11, object_radius=1.0)
    with pytest.raises(LocalScoreError, match=msg):
        oracle.regions(Conditions.from_lists([[pos]], dtype=F64))
    # but a padding slot anywhere is ignored
    pad = Conditions(torch.tensor([[[50.0, -9.0]]]), None, torch.tensor([[False]]))
    assert not bool(oracle.regions(pad).any())


def test_attribute_validation() -> None:
    with_attr = make_factorized()
    no_attr = FactorizedObjects(2, 7, 8, object_radius=1.5)
    pos = [[(3.0, 3.0)]]
    with pytest.raises(LocalScoreError, match="expects A = 2"):
        with_attr.regions(Conditions.from_lists(pos))
    with pytest.raises(LocalScoreError, match="A = 3 values per object, expected A = 2"):
        with_attr.regions(Conditions.from_lists(pos, attrs=[[[1.0, 2.0, 3.0]]]))
    with pytest.raises(LocalScoreError, match="built without `attr_map`"):
        no_attr.regions(Conditions.from_lists(pos, attrs=[[[1.0]]]))
    # empty sets need no attributes
    assert with_attr.regions(Conditions.empty(2)).shape == (2, 0, 7, 8)


def test_call_argument_validation() -> None:
    oracle = make_factorized()
    x = torch.zeros(4, 2, 7, 8)
    with pytest.raises(LocalScoreError, match="expected C = 2"):
        oracle.denoise(torch.zeros(4, 3, 7, 8), 1.0, FACT_COND)
    with pytest.raises(LocalScoreError, match="off the 6 x 6 image"):  # a smaller canvas: positions checked on it
        oracle.denoise(torch.zeros(4, 2, 6, 6), 1.0, FACT_COND)
    with pytest.raises(LocalScoreError, match=r"\[B, C, H, W\]"):
        oracle.denoise(torch.zeros(2, 7, 8), 1.0, None)
    with pytest.raises(LocalScoreError, match="B = 4 images but `x` has B = 2"):
        oracle.denoise(torch.zeros(2, 2, 7, 8), 1.0, FACT_COND)
    with pytest.raises(LocalScoreError, match=r"expected a localscore\.Conditions"):
        oracle.denoise(x, 1.0, [[(1.0, 1.0)]])  # type: ignore[arg-type]
    for bad in (float("nan"), -1.0, 0.0, torch.tensor([1.0, 2.0])):
        with pytest.raises(LocalScoreError, match="sigma"):
            oracle.denoise(x, bad, FACT_COND)
    with pytest.raises(LocalScoreError, match="NaN"):
        oracle.denoise(torch.full((4, 2, 7, 8), float("nan")), 1.0, FACT_COND)
    with pytest.raises(LocalScoreError, match="`cond` is on meta"):
        oracle.denoise(x, 1.0, FACT_COND.to("meta"))
    with pytest.raises(LocalScoreError, match=r"expected a localscore\.Conditions"):
        oracle.composition_gap(x, 1.0, None)  # type: ignore[arg-type]
    for bad_n in (0, -2, 1.5, True, "3"):
        with pytest.raises(LocalScoreError, match="argument `n`"):
            oracle.sample(bad_n)  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="sigma"):
        oracle.sample(2, sigma=-0.1)
    with pytest.raises(LocalScoreError, match="generator"):
        oracle.sample(2, generator=0)  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="dtype"):
        oracle.sample(2, dtype=torch.int32)
    assert float(oracle.log_prob(x, 0.0, FACT_COND).isfinite().all()) == 1.0  # sigma = 0 is the data density


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        (dict(object_radius=0.5), "object_radius"),
        (dict(object_radius=-1.0), "object_radius"),
        (dict(object_radius=float("nan")), "object_radius"),
        (dict(object_radius=2.0, object_mean=[1.0, 2.0]), "object_mean"),
        (dict(object_radius=2.0, background_std=0.0), "background_std"),
        (dict(object_radius=2.0, background_std=[1.0, -1.0, 1.0]), "background_std"),
        (dict(object_radius=2.0, object_std=-0.1), "object_std"),
        (dict(object_radius=2.0, length_scale=0.0), "length_scale"),
        (dict(object_radius=2.0, channel_corr=torch.ones(2, 2)), "channel_corr"),
        (dict(object_radius=2.0, channel_corr=torch.tensor([[1.0, 2, 0], [2, 1, 0], [0, 0, 1]])), "semi-definite"),
        (dict(object_radius=2.0, channel_corr=torch.tensor([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]])), "symmetric"),
        (dict(object_radius=2.0, attr_map=torch.ones(2, 2)), "attr_map"),
        (dict(object_radius=2.0, mean_width=0.0), "mean_width"),
        (dict(object_radius=2.0, dtype=torch.int64), "dtype"),
        (dict(object_radius="2"), "object_radius"),
    ],
)
def test_constructor_validation(kwargs: dict, msg: str) -> None:
    with pytest.raises(LocalScoreError, match=msg):
        FactorizedObjects(3, 8, 8, **kwargs)


def test_constructor_shape_and_global_validation() -> None:
    with pytest.raises(LocalScoreError, match="height"):
        FactorizedObjects(1, 0, 8, object_radius=1.0)
    with pytest.raises(LocalScoreError, match="global_std"):
        OverlappingObjects(1, 8, 8, object_radius=1.0, global_std=-1.0)
    with pytest.raises(TypeError):
        FactorizedObjects(1, 8, 8, object_radius=1.0, global_std=1.0)  # type: ignore[call-arg]


@given(positions=st.lists(st.tuples(st.floats(-0.5, 13.5), st.floats(-0.5, 11.5)), min_size=0, max_size=6),
       log_sigma=st.floats(math.log(0.002), math.log(80.0)), seed=st.integers(0, 2**16))
def test_cpc_identity_or_overlap_error_at_random_positions(positions, log_sigma: float, seed: int) -> None:
    """Random positions: either two regions share a pixel (and the oracle names them), or CPC holds."""
    oracle = FactorizedObjects(1, 14, 12, object_radius=1.7, object_std=0.6, length_scale=1.1, background_std=0.3)
    cond = Conditions.from_lists([positions], dtype=F64)
    R = 1.7**2
    pix = [(h, w) for h in range(14) for w in range(12)]
    sets = [{p for p in pix if (p[0] - r) ** 2 + (p[1] - c) ** 2 <= R} for r, c in positions]
    clash = [(j, k) for j in range(len(sets)) for k in range(j + 1, len(sets)) if sets[j] & sets[k]]
    if clash:
        j, k = clash[0]
        with pytest.raises(LocalScoreError, match=f"objects {j} and {k} of image 0 overlap"):
            oracle.regions(cond)
        return
    s = math.exp(log_sigma)
    x = oracle.sample(cond, sigma=s, generator=torch.Generator().manual_seed(seed))
    st_ = torch.tensor([s], dtype=F64)
    gap = oracle.denoise(x, st_, cond) - composed(oracle, x, st_, cond)
    assert float(gap.abs().max()) <= 1e-13 * (float(x.abs().max()) + 1.0)
    assert [set(map(tuple, r.nonzero().tolist())) for r in oracle.regions(cond)[0]] == sets


_bad_sigma = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, True, "1.0", None, [1.0]]),
    st.floats(max_value=-1e-12, allow_nan=False, allow_infinity=False),
    st.integers(2, 5).map(lambda n: torch.ones(n)),  # wrong length for B = 1
    st.just(torch.ones(1, 1)),
    st.just(torch.tensor([float("nan")])),
)


@given(sigma=_bad_sigma, method=st.sampled_from(["denoise", "score", "log_prob", "composition_gap"]),
       kind=st.sampled_from(["factorized", "overlapping"]))
def test_bad_sigmas_always_raise(sigma, method: str, kind: str) -> None:
    oracle = make_factorized() if kind == "factorized" else make_overlapping()
    cond = FACT_COND[0] if kind == "factorized" else OVER_COND[0]
    x = torch.zeros(1, 2, 7, 8, dtype=F64)
    if method == "log_prob" and isinstance(sigma, float) and sigma == 0.0:
        return  # sigma = 0 is the data density for log_prob
    with pytest.raises(LocalScoreError, match="sigma"):
        getattr(oracle, method)(x, sigma, cond)


@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=6), method=st.sampled_from(["denoise", "log_prob"]))
def test_bad_image_shapes_always_raise(shape: list[int], method: str) -> None:
    oracle = make_overlapping()
    if len(shape) == 4 and shape[0] >= 1 and shape[1] == 2 and shape[2] >= 1 and shape[3] >= 1:
        return  # any canvas with C = 2 is valid
    with pytest.raises(LocalScoreError, match="`x`"):
        getattr(oracle, method)(torch.zeros(shape, dtype=F64), 1.0, None)


def test_gap_vanishes_without_object_covariance() -> None:
    """With object_std = 0 all conditionals share one covariance, so D is affine in the mean: gap = 0."""
    oracle = make_overlapping(object_std=0.0, global_std=0.6)
    x = oracle.sample(OVER_COND, sigma=0.5, generator=torch.Generator().manual_seed(9))
    assert float(oracle.composition_gap(x, 0.5, OVER_COND).abs().max()) < 1e-13
    assert float(make_overlapping().composition_gap(x, 0.5, OVER_COND).abs().max()) > 1e-3


@pytest.mark.parametrize("kind", ["factorized", "overlapping"])
def test_any_canvas_size_and_crops(kind: str) -> None:
    """The model is defined on every canvas: a crop around an object reproduces the full image's denoiser
    on the object's region (translation equivariance with local borders), and a smaller canvas matches the
    dense reference built for that canvas."""
    kw = dict(object_radius=2.0, object_std=0.5, length_scale=1.3, background_std=0.3, mean_width=2.0)
    oracle = (FactorizedObjects(2, 16, 16, **kw) if kind == "factorized"
              else OverlappingObjects(2, 16, 16, global_std=0.0, **kw))
    cond = Conditions.from_lists([[(4.3, 5.0), (11.0, 12.2)]], dtype=F64)
    x = oracle.sample(cond, sigma=0.7, generator=torch.Generator().manual_seed(3))
    full = oracle.denoise(x, 0.7, cond)
    r0, c0 = 1, 2  # crop rows 1..8, cols 2..9 around object 0 (shifted positions, object 1 left out)
    crop = x[:, :, r0:9, c0:10]
    single = Conditions.from_lists([[(4.3 - r0, 5.0 - c0)]], dtype=F64)
    out = oracle.denoise(crop, 0.7, single)
    region = oracle.regions(cond)[0, 0, r0:9, c0:10]
    assert torch.equal(oracle.regions(single, size=(8, 8))[0, 0], region)
    torch.testing.assert_close(oracle.mean(single, (8, 8)), oracle.mean(cond)[:, :, r0:9, c0:10] * region
                               + oracle.background_mean.view(1, 2, 1, 1) * ~region, rtol=0, atol=1e-15)
    for bad in ((8,), (0, 8), (8.0, 8), "88", True):
        with pytest.raises(LocalScoreError, match="`size`"):
            oracle.regions(single, size=bad)  # type: ignore[arg-type]
    torch.testing.assert_close(out[..., region], full[:, :, r0:9, c0:10][..., region], rtol=0, atol=1e-14)
    # the 8 x 8 canvas is the model on 8 x 8: compare with the dense reference written for that canvas
    small = (FactorizedObjects(2, 8, 8, **kw) if kind == "factorized"
             else OverlappingObjects(2, 8, 8, global_std=0.0, **kw))
    mu, sig = dense_reference(small, single, 0)
    torch.testing.assert_close(out[0].reshape(-1), ref_denoise(mu, sig, crop[0], 0.7), rtol=1e-10, atol=1e-12)
    assert float(oracle.log_prob(crop, 0.7, single)) == pytest.approx(ref_log_prob(mu, sig, crop[0], 0.7), rel=1e-12)


def test_readme_style_crop_composition_is_exact() -> None:
    """`localscore.compose` evaluates components on crops when they declare a receptive radius: exact here."""
    from localscore import compose  # a core module: an import error is a failure, not a skip
    oracle = FactorizedObjects(3, 16, 16, object_radius=2.0)
    many = Conditions.from_lists([[(3.0, 3.0), (3.0, 12.0), (12.0, 3.0), (12.0, 12.0)]], dtype=F64)
    composed = compose.projective_from(oracle, many)
    xs = oracle.sample(many, sigma=0.5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(composed(xs, 0.5), oracle(xs, 0.5, many), rtol=0, atol=1e-12)
