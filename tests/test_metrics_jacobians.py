"""Jacobians: coloured and probe methods against the dense Jacobian and analytic ones."""

from __future__ import annotations

from collections.abc import Callable

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


def test_colored_with_different_output_channels_and_nonsquare_images() -> None:
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv2d(4, 2, (3, 5), padding=(1, 2))).double()  # radius 2 (columns)
    x = torch.randn(2, 3, 7, 11, dtype=torch.float64)
    dense = jacobian(conv, x)
    assert dense.shape == (2, 2, 7, 11, 3, 7, 11)
    banded = jacobian(conv, x, method="colored", radius=3)
    assert banded.values.shape == (2, 2, 7, 11, 3, 7, 7)
    torch.testing.assert_close(banded.to_dense(), dense, atol=1e-12, rtol=0)
    with pytest.raises(LocalScoreError, match="distance 3 > 2"):
        jacobian(conv, x, method="colored", radius=2)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize(("R", "C"), [(1, 1), (3, 3)])
def test_colored_modes_agree_and_both_detect(mode: str, R: int, C: int) -> None:
    D = _local(C, R, seed=10 + R)
    x = torch.randn(1, C, 14, 13, dtype=torch.float64)
    fn = lambda z: D(z, 0.3)  # noqa: E731
    dense = jacobian(fn, x)
    torch.testing.assert_close(jacobian(fn, x, method="colored", radius=R, mode=mode).to_dense(), dense,  # type: ignore[arg-type]
                               atol=1e-12, rtol=0)
    with pytest.raises(LocalScoreError, match=f"at Chebyshev distance {R} > {R - 1}"):
        jacobian(fn, x, method="colored", radius=R - 1, mode=mode)  # type: ignore[arg-type]


def test_create_graph_keeps_parameter_gradients_only_when_asked() -> None:
    lin = torch.nn.Conv2d(1, 1, 3, padding=1).double()
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    assert not jacobian(lin, x).requires_grad
    assert not jacobian(lin, x, method="colored", radius=1).values.requires_grad
    J = jacobian(lin, x, create_graph=True)
    J.pow(2).sum().backward()  # d/dw of sum J^2 = 2 w * (number of in-image placements)
    assert lin.weight.grad is not None and float(lin.weight.grad.abs().sum()) > 0


# ----------------------------------------------------------------------------- what "verified" guarantees
def _one_far_entry(eps: float, dtype: torch.dtype) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """y = x, plus eps * x[.., 8, 8] added to output (0, 0): one row with norm eps beyond any radius < 8."""
    def fn(z: torch.Tensor) -> torch.Tensor:
        y = z.clone()
        y[:, 0, 0, 0] = y[:, 0, 0, 0] + eps * z[:, 0, 8, 8]
        return y

    x = torch.randn(1, 1, 9, 9, dtype=dtype, generator=torch.Generator().manual_seed(0))
    return fn, x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_single_row_at_ten_times_the_tolerance_is_caught_for_every_seed(dtype: torch.dtype) -> None:
    """Per row, a leak >= 10 rtol S is missed with probability <= 0.08^4 = 4e-5: 40 seeds, no miss."""
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    fn, x = _one_far_entry(10.1 * rtol, dtype)  # S = 1 (the identity) to within 1e-7
    for seed in range(40):
        with pytest.raises(LocalScoreError, match=r"row 0, col 0\) of image 0 depends on input pixel \(channel 0, "
                                                  r"row 8, col 8\) at Chebyshev distance 8 > 1"):
            jacobian(fn, x, method="colored", radius=1, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_row_below_the_tolerance_always_passes_and_is_within_the_bound(dtype: torch.dtype) -> None:
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    fn, x = _one_far_entry(0.9 * rtol, dtype)
    for seed in range(5):
        Jb = jacobian(fn, x, method="colored", radius=1, generator=torch.Generator().manual_seed(seed))
        assert Jb.rtol == rtol and Jb.probes == 4
        assert 0.9 * rtol <= float(Jb.leak_bound()[0])
    with pytest.raises(LocalScoreError, match="times the tolerance"):  # a stricter rtol sees it
        jacobian(fn, x, method="colored", radius=1, rtol=rtol / 10, generator=torch.Generator().manual_seed(0))


def test_violation_record_and_message() -> None:
    fn, x = _one_far_entry(0.05, torch.float64)
    with pytest.raises(LocalScoreError) as info:
        jacobian(fn, x, method="colored", radius=1, generator=torch.Generator().manual_seed(0))
    msg = str(info.value)
    assert "|dy/dx| = 0.05" in msg and "the row's norm beyond radius 1 is 0.05" in msg
    assert "times the tolerance 1e-10 (rtol 1e-10 x the Jacobian scale 1" in msg
    assert "declare a radius of at least 8" in msg


def test_roundoff_above_the_tolerance_is_not_a_violation_but_widens_the_bound() -> None:
    """Cancellation: (x + 1e-4 conv(x) - x) * 1e4 in float32 has a probe round-off of ~1e-3 of its scale, above
    rtol; the exact rows show nothing beyond R, so it passes, and the reported bound says what was verified."""
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)

    def fn(z: torch.Tensor) -> torch.Tensor:
        return ((z + 1e-4 * conv(z)) - z) * 1e4

    x = torch.randn(1, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    Jb = jacobian(fn, x, method="colored", radius=1, generator=torch.Generator().manual_seed(0))
    dense = jacobian(fn, x)
    torch.testing.assert_close(Jb.to_dense(), dense, atol=1e-2 * float(Jb.scale()[0]), rtol=0)
    assert float(Jb.leak_bound()[0]) > 10 * 1e-4 * float(Jb.scale()[0])


def test_verify_zero_and_reverse_mode_certify_no_row_bound_and_rtol_is_checked() -> None:
    conv = torch.nn.Conv2d(1, 1, 3, padding=1).double()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    assert jacobian(conv, x, method="colored", radius=1, verify=0).leak_bound().tolist() == [float("inf")]
    assert jacobian(conv, x, method="colored", radius=1, mode="reverse").leak_bound().tolist() == [float("inf")]
    with pytest.raises(LocalScoreError, match="`rtol`"):
        jacobian(conv, x, method="colored", radius=1, rtol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reverse_mode_catches_a_global_mean_leak(dtype: torch.dtype) -> None:
    D = LocalConvDenoiser(2, 2, hidden=4).to(dtype)
    x = torch.randn(1, 2, 12, 12, dtype=dtype, generator=torch.Generator().manual_seed(0))
    fn = lambda z: D(z, 1.0) + 0.1 * z.mean((2, 3), keepdim=True)  # noqa: E731
    with pytest.raises(LocalScoreError, match=r"Chebyshev distance \d+ > 2 .*times the tolerance"):
        jacobian(fn, x, method="colored", radius=2, mode="reverse", generator=torch.Generator().manual_seed(0))
    jacobian(lambda z: D(z, 1.0), x, method="colored", radius=2, mode="reverse")  # the honest one passes
