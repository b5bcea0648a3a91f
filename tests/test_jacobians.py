"""Jacobians: coloured and probe methods against the dense Jacobian and analytic ones."""

from __future__ import annotations

import pytest
import torch

from localscore import LocalScoreError
from localscore.metrics import BandedJacobian, jacobian
from localscore.testing import GlobalConvDenoiser, LocalConvDenoiser


def _local(C: int, R: int, seed: int = 0) -> LocalConvDenoiser:
    return LocalConvDenoiser(C, R, hidden=4, seed=seed).double()


@pytest.mark.parametrize(
    ("R", "size", "C"),
    [(1, 8, 1), (2, 8, 3), (3, 12, 1), (4, 16, 3), (5, 16, 1), (6, 20, 1), (2, 32, 1)],
)
def test_colored_equals_dense_on_local_networks(R: int, size: int, C: int) -> None:
    D = _local(C, R, seed=R)
    x = torch.randn(2, C, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(R))
    fn = lambda z: D(z, 0.7)  # noqa: E731
    dense = jacobian(fn, x)
    banded = jacobian(fn, x, method="colored", radius=R)
    assert isinstance(banded, BandedJacobian)
    assert banded.values.shape == (2, C, size, size, C, 2 * R + 1, 2 * R + 1)
    torch.testing.assert_close(banded.to_dense(), dense, rtol=0, atol=1e-12)
    # the dense Jacobian really is banded: nothing outside the windows
    rows = torch.arange(size)
    far = (rows[:, None, None, None] - rows[None, None, :, None]).abs().maximum(
        (rows[None, :, None, None] - rows[None, None, None, :]).abs()) > R
    assert float(dense.abs().permute(0, 1, 4, 2, 3, 5, 6)[..., far].max()) == 0.0
    # and the true radius is attained (the test would pass vacuously on a narrower map otherwise)
    assert float(dense.abs().permute(0, 1, 4, 2, 3, 5, 6)[..., ~far].max()) > 0


def test_colored_float32_agrees_and_declared_radius_larger_is_fine() -> None:
    D = LocalConvDenoiser(3, 2, hidden=8)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    fn = lambda z: D(z, 1.0)  # noqa: E731
    dense = jacobian(fn, x)
    torch.testing.assert_close(jacobian(fn, x, method="colored", radius=2).to_dense(), dense, atol=1e-6, rtol=0)
    torch.testing.assert_close(jacobian(fn, x, method="colored", radius=4).to_dense(), dense, atol=1e-6, rtol=0)


@pytest.mark.parametrize("declared", [0, 1, 2])
def test_colored_raises_when_map_is_less_local_than_declared(declared: int) -> None:
    D = _local(1, 3)
    x = torch.randn(1, 1, 12, 12, dtype=torch.float64)
    with pytest.raises(LocalScoreError) as info:
        jacobian(lambda z: D(z, 1.0), x, method="colored", radius=declared, generator=torch.Generator().manual_seed(1))
    msg = str(info.value)
    assert f"declared radius R = {declared}" in msg
    assert "Chebyshev distance 3" in msg  # the farthest dependency is reported
    assert "output pixel" in msg and "Fix:" in msg


def test_colored_raises_on_global_network() -> None:
    D = GlobalConvDenoiser(1, 1, hidden=4).double()
    x = torch.randn(1, 1, 10, 10, dtype=torch.float64)
    with pytest.raises(LocalScoreError, match="less local than the declared radius R = 1"):
        jacobian(lambda z: D(z, 1.0), x, method="colored", radius=1)


def test_colored_on_one_far_dependency() -> None:
    # y[i] = x[i] + eps * x[i + 5 (wrapped)] : a single leak far outside R = 1, small in size
    def fn(z: torch.Tensor) -> torch.Tensor:
        return z + 1e-3 * torch.roll(z, shifts=5, dims=3)

    x = torch.randn(1, 1, 9, 9, dtype=torch.float64)
    with pytest.raises(LocalScoreError, match=r"Chebyshev distance [45]"):
        jacobian(fn, x, method="colored", radius=1)


def test_dense_on_analytic_linear_map() -> None:
    A = torch.randn(12, 12, dtype=torch.float64)
    fn = lambda z: (z.reshape(2, 12) @ A.T).reshape(2, 3, 2, 2)  # noqa: E731
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    J = jacobian(fn, x, chunk_size=5)
    assert J.shape == (2, 3, 2, 2, 3, 2, 2)
    torch.testing.assert_close(J[1].reshape(12, 12), A, rtol=0, atol=0)


def test_dense_memory_guard() -> None:
    with pytest.raises(LocalScoreError, match="max_memory"):
        jacobian(lambda z: z, torch.zeros(1, 3, 32, 32), max_memory=1000)


def test_probes_rows_and_row_norms() -> None:
    D = _local(2, 2)
    x = torch.randn(1, 2, 10, 10, dtype=torch.float64)
    fn = lambda z: D(z, 0.5)  # noqa: E731
    dense = jacobian(fn, x)
    pr = jacobian(fn, x, method="probes", n_rows=7, n_probes=400, generator=torch.Generator().manual_seed(0))
    assert pr.mass.shape == (1, 7, 10, 10)
    for n, (i, j) in enumerate(pr.pixels.tolist()):
        torch.testing.assert_close(pr.mass[0, n], dense[0, :, i, j].pow(2).sum(dim=(0, 1)))
    exact = dense.pow(2).sum(dim=(4, 5, 6))
    rel = (pr.row_norms_sq - exact).abs().mean() / exact.mean()
    assert rel < 0.15  # Hutchinson with 400 sign vectors: a few percent


def test_bad_inputs() -> None:
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(LocalScoreError, match="`method`"):
        jacobian(lambda z: z, x, method="fast")  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="needs the declared receptive `radius`"):
        jacobian(lambda z: z, x, method="colored")
    with pytest.raises(LocalScoreError, match="`radius`"):
        jacobian(lambda z: z, x, method="colored", radius=-1)
    with pytest.raises(LocalScoreError, match="same height and width"):
        jacobian(lambda z: z[..., :2], x, method="colored", radius=1)
    with pytest.raises(LocalScoreError, match="expected a tensor"):
        jacobian(lambda z: 3, x)
    with pytest.raises(LocalScoreError, match="`x`"):
        jacobian(lambda z: z, torch.zeros(4, 4))
