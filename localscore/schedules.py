r"""Noise schedules: decreasing grids of noise levels for the samplers, and VP <-> VE maps.

Every sampler in :mod:`localscore.sampling` walks a decreasing grid ``sigmas [n + 1]`` of noise levels
in the EDM (variance-exploding) convention ``x_sigma = x_0 + sigma * eps``. The grid builders here return
exactly that: ``n`` steps, ``n`` positive levels from ``sigma_max`` down to ``sigma_min``, then a final
``0`` (left off with ``append_zero=False``). All grids are computed in float64 and returned in ``dtype``
(default: ``torch.get_default_dtype()``).

Variance-preserving (VP) models ``x_t = sqrt(alpha_bar(t)) x_0 + sqrt(1 - alpha_bar(t)) eps`` are the same
process in other variables: ``sigma(t) = sqrt((1 - alpha_bar(t)) / alpha_bar(t))`` and
``x_ve = x_vp / sqrt(alpha_bar)``. The maps below convert continuous VP time ``t in [0, 1]`` (linear and
cosine schedules) and discrete ``alphas_cumprod`` tables to and from ``sigma``.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import Tensor

from ._checks import check_tensor
from ._errors import describe, fail

__all__ = [
    "alphas_cumprod_to_sigmas",
    "ddpm_alphas_cumprod",
    "karras_sigmas",
    "loguniform_sigmas",
    "sigmas_to_alphas_cumprod",
    "vp_cosine_sigma_to_t",
    "vp_cosine_sigmas",
    "vp_cosine_t_to_sigma",
    "vp_linear_sigma_to_t",
    "vp_linear_sigmas",
    "vp_linear_t_to_sigma",
]


MAX_STEPS = 1_000_000
"""The largest grid (``n`` of the grid builders, ``num_timesteps`` of :func:`ddpm_alphas_cumprod`) built before
refusing: a longer one is almost surely a mistake (``--steps 1000000000`` would allocate 8 GB). Read at call
time: set ``localscore.schedules.MAX_STEPS`` higher if you mean it."""


# ----------------------------------------------------------------------------------------------- checks
def _check_n(n: Any, where: str, name: str = "n", minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise fail(where, f"argument `{name}` is {describe(n)}, expected an int >= {minimum} (the number of steps).",
                   f"pass the number of steps, e.g. {name}={50 if minimum == 1 else 1000}.")
    if n > MAX_STEPS:
        raise fail(where, f"argument `{name}` is {describe(n)}, over the limit MAX_STEPS = {MAX_STEPS:,} (checked "
                   "before allocating the grid).",
                   f"pass a smaller `{name}` (samplers need tens to a few thousand steps), or raise "
                   "localscore.schedules.MAX_STEPS if you mean it.")
    return n


def _check_grid_finite(grid: Tensor, where: str, what: str, fix: str) -> None:
    """Raise when a grid built on the host (float64, CPU: no device sync) overflowed to inf or NaN."""
    if not bool(torch.isfinite(grid).all()):
        bad = int((~torch.isfinite(grid)).sum())
        raise fail(where, f"{what}: {bad} of its {grid.numel()} values overflow {grid.dtype} (largest finite "
                   f"{torch.finfo(grid.dtype).max:.4g}); a grid of inf is no noise schedule.", fix)


def _check_positive(value: Any, where: str, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(where, f"argument `{name}` is {describe(value)}, expected a float.",
                   f"pass `{name}` as a Python float.")
    try:
        v = float(value)
    except OverflowError:  # an int beyond float64
        v = math.inf if value > 0 else -math.inf
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise fail(where, f"argument `{name}` is {v!r}, expected a finite value {'>= 0' if allow_zero else '> 0'}.")
    return v


def _check_range(sigma_min: Any, sigma_max: Any, where: str) -> tuple[float, float]:
    lo = _check_positive(sigma_min, where, "sigma_min")
    hi = _check_positive(sigma_max, where, "sigma_max")
    if not lo < hi:
        raise fail(where, f"sigma_min = {lo!r} is not below sigma_max = {hi!r}; expected 0 < sigma_min < sigma_max.",
                   "swap them, or pick a smaller sigma_min (EDM uses sigma_min=0.002, sigma_max=80).")
    return lo, hi


def _check_dtype(dtype: Any, where: str) -> torch.dtype:
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise fail(where, f"argument `dtype` is {describe(dtype)}, expected a floating torch.dtype or None.",
                   "pass e.g. dtype=torch.float64.")
    return dtype


def _finish(grid64: Tensor, append_zero: bool, dtype: Any, device: Any, where: str) -> Tensor:
    if not isinstance(append_zero, bool):
        raise fail(where, f"argument `append_zero` is {describe(append_zero)}, expected a bool.")
    dt = _check_dtype(dtype, where)
    fix = ("keep sigma_max and rho moderate (EDM: sigma_max=80, rho=7), or build the grid in float64 "
           "(dtype=torch.float64).")
    _check_grid_finite(grid64, where, "the grid", fix)
    _check_grid_finite(grid64.to(dt), where, f"the grid in dtype {dt}", fix)
    if append_zero:
        grid64 = torch.cat([grid64, grid64.new_zeros(1)])
    return grid64.to(dtype=dt, device=device)


def _as_float64(value: Any, where: str, name: str) -> tuple[Tensor, torch.dtype | None]:
    """A float64 tensor copy of ``value`` (number or tensor) and the dtype to return (None: a float)."""
    if isinstance(value, bool):
        raise fail(where, f"argument `{name}` is a bool, expected a float or a floating tensor.")
    if isinstance(value, (int, float)):
        if isinstance(value, int) and abs(value) > sys.float_info.max:
            raise fail(where, f"argument `{name}` is {describe(value)}, beyond the range of float64.",
                       f"pass `{name}` as a finite float.")
        return torch.tensor(float(value), dtype=torch.float64), None
    t = check_tensor(value, where, name)
    return t.double(), t.dtype


def _back(value: Tensor, dtype: torch.dtype | None) -> Any:
    return float(value) if dtype is None else value.to(dtype)


# ------------------------------------------------------------------------------------------------ grids
def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *,
                  append_zero: bool = True, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    r"""The EDM grid of Karras et al. (2022), eq. 5: uniform in ``sigma**(1/rho)``.

    ``sigma_i = (sigma_max**(1/rho) + i / (n - 1) * (sigma_min**(1/rho) - sigma_max**(1/rho)))**rho``
    for ``i = 0 .. n - 1``, then ``0``. Larger ``rho`` spends more steps at low noise (``rho = 1`` is
    uniform in sigma); ``n = 1`` gives ``[sigma_max, 0]``.

    Args:
        n: number of steps (``>= 1``).
        sigma_min: smallest positive level (the last before 0).
        sigma_max: largest level (the first).
        rho: the warping exponent, ``> 0``.
        append_zero: end the grid with ``0`` (the samplers' final denoising step).
        dtype: floating dtype of the result (default: the default dtype).
        device: device of the result.

    Returns:
        ``[n + 1]`` (``[n]`` without the zero) strictly decreasing noise levels.

    Examples:
        >>> karras_sigmas(3, 0.1, 10.0, rho=1.0).tolist()
        [10.0, 5.050000190734863, 0.10000000149011612, 0.0]
    """
    where = "karras_sigmas"
    n = _check_n(n, where)
    lo, hi = _check_range(sigma_min, sigma_max, where)
    rho = _check_positive(rho, where, "rho")
    if n == 1:
        grid = torch.tensor([hi], dtype=torch.float64)
    else:
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        try:
            max_inv_rho, min_inv_rho = hi ** (1 / rho), lo ** (1 / rho)
        except OverflowError:
            raise fail(where, f"sigma_max ** (1 / rho) = {hi!r} ** (1 / {rho!r}) overflows float64 (largest finite "
                       f"{torch.finfo(torch.float64).max:.4g}).",
                       "use rho >= 1 (EDM: rho=7) or a smaller sigma_max.") from None
        grid = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
        grid[0], grid[-1] = hi, lo  # remove round-off at the ends
    return _finish(grid, append_zero, dtype, device, where)


def loguniform_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, *,
                      append_zero: bool = True, dtype: torch.dtype | None = None,
                      device: torch.device | str | None = None) -> Tensor:
    r"""A grid uniform in ``log sigma`` (a geometric sequence), then ``0``.

    ``sigma_i = exp(log sigma_max + i / (n - 1) * (log sigma_min - log sigma_max))`` for ``i = 0 .. n - 1``
    (``n = 1`` gives ``[sigma_max, 0]``). This is the ``rho -> infinity`` limit of :func:`karras_sigmas`.

    Args:
        n: number of steps (``>= 1``).
        sigma_min: smallest positive level.
        sigma_max: largest level.
        append_zero: end the grid with ``0``.
        dtype: floating dtype of the result (default: the default dtype).
        device: device of the result.

    Returns:
        ``[n + 1]`` (``[n]`` without the zero) strictly decreasing noise levels.

    Examples:
        >>> [round(v, 12) for v in loguniform_sigmas(3, 0.01, 1.0, dtype=torch.float64).tolist()]
        [1.0, 0.1, 0.01, 0.0]
    """
    where = "loguniform_sigmas"
    n = _check_n(n, where)
    lo, hi = _check_range(sigma_min, sigma_max, where)
    if n == 1:
        grid = torch.tensor([hi], dtype=torch.float64)
    else:
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        grid = torch.exp(math.log(hi) + ramp * (math.log(lo) - math.log(hi)))
        grid[0], grid[-1] = hi, lo
    return _finish(grid, append_zero, dtype, device, where)


def vp_linear_t_to_sigma(t: Any, beta_min: float = 0.1, beta_max: float = 20.0) -> Any:
    r"""Noise level of continuous VP time ``t`` under the linear-beta schedule (Song et al. 2021).

    ``beta(t) = beta_min + t * (beta_max - beta_min)``, ``alpha_bar(t) = exp(-(beta_min t + (beta_max - beta_min)
    t**2 / 2))``, and ``sigma(t) = sqrt(exp(beta_min t + (beta_max - beta_min) t**2 / 2) - 1)`` (computed
    with ``expm1``).

    Args:
        t: a float or a tensor of times ``>= 0`` (any shape).
        beta_min: ``beta(0) > 0``.
        beta_max: ``beta(1) >= beta_min``.

    Returns:
        ``sigma(t)``: a float for a float, else a tensor of ``t``'s shape and dtype.

    Examples:
        >>> round(vp_linear_t_to_sigma(1.0), 3)
        152.167
        >>> round(vp_linear_sigma_to_t(vp_linear_t_to_sigma(0.3)), 12)
        0.3
    """
    where = "vp_linear_t_to_sigma"
    b0, b1 = _check_betas(beta_min, beta_max, where)
    t64, dt = _as_float64(t, where, "t")
    _check_nonneg_values(t64, where, "t")
    sigma = torch.sqrt(torch.expm1(b0 * t64 + 0.5 * (b1 - b0) * t64**2))
    out = _back(sigma, dt)
    finite = math.isfinite(out) if dt is None else (out.device.type == "meta" or bool(torch.isfinite(out).all()))
    if not finite:
        # sigma(t) overflows when the exponent e(t) = b0 t + (b1 - b0) t**2 / 2 passes L: expm1 overflows float64 at
        # e = log(max64), and sigma**2 = expm1(e) overflows the result's dtype at e = 2 log(max of that dtype).
        L = min(math.log(torch.finfo(torch.float64).max), 2 * math.log(torch.finfo(dt or torch.float64).max))
        t_lim = L / b0 if b1 == b0 else (-b0 + math.sqrt(b0 * b0 + 2 * (b1 - b0) * L)) / (b1 - b0)
        raise fail(where, f"sigma(t) overflows {dt or torch.float64} for t above {t_lim:.6g} (beta_min = {b0!r}, "
                   f"beta_max = {b1!r}); the largest t given is {float(t64.max()):.6g}.",
                   "VP time runs over [0, 1]: pass t in that range (or rescale your time variable).")
    return out


def vp_linear_sigma_to_t(sigma: Any, beta_min: float = 0.1, beta_max: float = 20.0) -> Any:
    r"""The inverse of :func:`vp_linear_t_to_sigma`.

    Solves ``(beta_max - beta_min) t**2 / 2 + beta_min t = log(1 + sigma**2)`` for ``t >= 0``:
    ``t = 2 L / (beta_min + sqrt(beta_min**2 + 2 (beta_max - beta_min) L))`` with ``L = log1p(sigma**2)``
    (the cancellation-free form of the quadratic root).

    Args:
        sigma: a float or a tensor of noise levels ``>= 0``.
        beta_min: ``beta(0) > 0``.
        beta_max: ``beta(1) >= beta_min``.

    Returns:
        ``t(sigma)``: a float for a float, else a tensor of ``sigma``'s shape and dtype.

    Examples:
        >>> round(vp_linear_sigma_to_t(0.0), 6)
        0.0
    """
    where = "vp_linear_sigma_to_t"
    b0, b1 = _check_betas(beta_min, beta_max, where)
    s64, dt = _as_float64(sigma, where, "sigma")
    _check_nonneg_values(s64, where, "sigma")
    big_l = torch.log1p(s64**2)
    t = 2 * big_l / (b0 + torch.sqrt(b0**2 + 2 * (b1 - b0) * big_l))
    return _back(t, dt)


def vp_linear_sigmas(n: int, *, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                     t_max: float = 1.0, append_zero: bool = True, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> Tensor:
    r"""The VP linear-beta schedule as a sigma grid: uniform in VP time from ``t_max`` to ``t_min``.

    ``t_i = t_max + i / (n - 1) * (t_min - t_max)``, ``sigma_i = vp_linear_t_to_sigma(t_i)`` for
    ``i = 0 .. n - 1``, then ``0`` (``n = 1``: ``[sigma(t_max), 0]``). The defaults are those of Song et al.
    (2021): ``beta`` from 0.1 to 20 and ``t_min = 1e-3``, i.e. sigmas from about 152.2 to 0.01.

    Args:
        n: number of steps (``>= 1``).
        beta_min: ``beta(0) > 0``.
        beta_max: ``beta(1) >= beta_min``.
        t_min: the last positive time, ``0 < t_min < t_max``.
        t_max: the first time.
        append_zero: end the grid with ``0``.
        dtype: floating dtype of the result (default: the default dtype).
        device: device of the result.

    Returns:
        ``[n + 1]`` (``[n]`` without the zero) strictly decreasing noise levels.

    Examples:
        >>> [round(s, 4) for s in vp_linear_sigmas(2, t_min=0.5).tolist()]
        [152.167, 3.4129, 0.0]
    """
    where = "vp_linear_sigmas"
    n = _check_n(n, where)
    b0, b1 = _check_betas(beta_min, beta_max, where)
    lo, hi = _check_t_range(t_min, t_max, where)
    ts = torch.tensor([hi], dtype=torch.float64) if n == 1 else torch.linspace(hi, lo, n, dtype=torch.float64)
    grid = torch.sqrt(torch.expm1(b0 * ts + 0.5 * (b1 - b0) * ts**2))
    return _finish(grid, append_zero, dtype, device, where)


def _cosine_theta0(s: float) -> float:
    return s / (1 + s) * math.pi / 2


def vp_cosine_t_to_sigma(t: Any, s: float = 0.008) -> Any:
    r"""Noise level of VP time ``t in [0, 1)`` under the cosine schedule (Nichol & Dhariwal 2021).

    ``alpha_bar(t) = cos((t + s) / (1 + s) * pi / 2)**2 / cos(s / (1 + s) * pi / 2)**2`` and
    ``sigma(t) = sqrt(1 / alpha_bar(t) - 1)``. ``sigma(0) = 0`` and ``sigma -> inf`` as ``t -> 1``.

    Args:
        t: a float or a tensor of times in ``[0, 1)``.
        s: the small offset ``s >= 0`` of the schedule.

    Returns:
        ``sigma(t)``: a float for a float, else a tensor of ``t``'s shape and dtype.

    Examples:
        >>> round(vp_cosine_t_to_sigma(0.5), 4)
        1.0124
        >>> round(vp_cosine_sigma_to_t(vp_cosine_t_to_sigma(0.9)), 12)
        0.9
    """
    where = "vp_cosine_t_to_sigma"
    s = _check_positive(s, where, "s", allow_zero=True)
    t64, dt = _as_float64(t, where, "t")
    _check_nonneg_values(t64, where, "t")
    if bool((t64 >= 1).any()):
        raise fail(where, f"argument `t` holds values >= 1 (max {float(t64.max())!r}); the cosine schedule has "
                   "sigma(1) = infinity.", "keep t in [0, 1), e.g. t_max = vp_cosine_sigma_to_t(80.0).")
    theta0 = _cosine_theta0(s)
    theta = (t64 + s) / (1 + s) * math.pi / 2
    alpha_bar = torch.cos(theta) ** 2 / math.cos(theta0) ** 2
    sigma = torch.sqrt((1 - alpha_bar).clamp_min(0) / alpha_bar)
    return _back(sigma, dt)


def vp_cosine_sigma_to_t(sigma: Any, s: float = 0.008) -> Any:
    r"""The inverse of :func:`vp_cosine_t_to_sigma`.

    ``alpha_bar = 1 / (1 + sigma**2)`` and ``t = (1 + s) * 2 / pi * arccos(sqrt(alpha_bar) * cos(s / (1 + s) * pi
    / 2)) - s``.

    Args:
        sigma: a float or a tensor of noise levels ``>= 0``.
        s: the small offset ``s >= 0`` of the schedule.

    Returns:
        ``t(sigma)`` in ``[0, 1)``: a float for a float, else a tensor of ``sigma``'s shape and dtype.

    Examples:
        >>> round(vp_cosine_sigma_to_t(80.0), 4)
        0.992
    """
    where = "vp_cosine_sigma_to_t"
    s = _check_positive(s, where, "s", allow_zero=True)
    s64, dt = _as_float64(sigma, where, "sigma")
    _check_nonneg_values(s64, where, "sigma")
    sqrt_alpha_bar = torch.rsqrt(1 + s64**2)
    t = (1 + s) * 2 / math.pi * torch.arccos((sqrt_alpha_bar * math.cos(_cosine_theta0(s))).clamp(-1, 1)) - s
    return _back(t.clamp_min(0), dt)


def vp_cosine_sigmas(n: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, s: float = 0.008,
                     append_zero: bool = True, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> Tensor:
    r"""The VP cosine schedule as a sigma grid: uniform in cosine-schedule time between two noise levels.

    ``t_max = vp_cosine_sigma_to_t(sigma_max)``, ``t_min = vp_cosine_sigma_to_t(sigma_min)``,
    ``t_i = t_max + i / (n - 1) * (t_min - t_max)``, ``sigma_i = vp_cosine_t_to_sigma(t_i)`` for
    ``i = 0 .. n - 1``, then ``0``. (The cosine schedule reaches ``sigma = inf`` at ``t = 1``, so the grid is
    specified by its end noise levels.)

    Args:
        n: number of steps (``>= 1``).
        sigma_min: smallest positive level.
        sigma_max: largest level.
        s: the schedule's offset ``s >= 0``.
        append_zero: end the grid with ``0``.
        dtype: floating dtype of the result (default: the default dtype).
        device: device of the result.

    Returns:
        ``[n + 1]`` (``[n]`` without the zero) strictly decreasing noise levels.

    Examples:
        >>> [round(v, 4) for v in vp_cosine_sigmas(3, sigma_min=0.01, sigma_max=10.0).tolist()]
        [10.0, 0.9195, 0.01, 0.0]
    """
    where = "vp_cosine_sigmas"
    n = _check_n(n, where)
    lo, hi = _check_range(sigma_min, sigma_max, where)
    s = _check_positive(s, where, "s", allow_zero=True)
    t_hi = vp_cosine_sigma_to_t(torch.tensor(hi, dtype=torch.float64), s)
    t_lo = vp_cosine_sigma_to_t(torch.tensor(lo, dtype=torch.float64), s)
    if n == 1:
        grid = torch.tensor([hi], dtype=torch.float64)
    else:
        ts = torch.linspace(float(t_hi), float(t_lo), n, dtype=torch.float64)
        grid = vp_cosine_t_to_sigma(ts, s)
        grid[0], grid[-1] = hi, lo
    return _finish(grid, append_zero, dtype, device, where)


# ------------------------------------------------------------------------------------ discrete tables
def alphas_cumprod_to_sigmas(alphas_cumprod: Tensor) -> Tensor:
    r"""VE noise levels of a discrete VP table: ``sigma_t = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])``.

    Args:
        alphas_cumprod: ``[T]`` values in ``(0, 1]`` (the products of ``1 - beta_t``).

    Returns:
        ``[T]`` noise levels, in ``alphas_cumprod``'s dtype (computed in float64), increasing where the
        table decreases. Flip it (``.flip(0)``) for a sampler grid.

    Examples:
        >>> alphas_cumprod_to_sigmas(torch.tensor([1.0, 0.5, 0.2])).tolist()
        [0.0, 1.0, 2.0]
    """
    where = "alphas_cumprod_to_sigmas"
    ac = check_tensor(alphas_cumprod, where, "alphas_cumprod")
    if ac.dim() != 1 or ac.numel() < 1:
        raise fail(where, f"argument `alphas_cumprod` has shape {tuple(ac.shape)}, expected [T] with T >= 1.",
                   "pass the scheduler's 1-D `alphas_cumprod` table.")
    a64 = ac.double()
    if not bool(((a64 > 0) & (a64 <= 1)).all()):
        raise fail(where, f"argument `alphas_cumprod` holds values outside (0, 1] (min {float(a64.min())!r}, "
                   f"max {float(a64.max())!r}), or NaN.", "alphas_cumprod are products of 1 - beta_t in (0, 1].")
    return torch.sqrt((1 - a64) / a64).to(ac.dtype)


def sigmas_to_alphas_cumprod(sigmas: Tensor) -> Tensor:
    r"""The inverse of :func:`alphas_cumprod_to_sigmas`: ``alphas_cumprod = 1 / (1 + sigma**2)``.

    Args:
        sigmas: a tensor of noise levels ``>= 0`` (any shape; ``inf`` is rejected).

    Returns:
        A tensor of the same shape and dtype, values in ``(0, 1]``.

    Examples:
        >>> sigmas_to_alphas_cumprod(torch.tensor([0.0, 1.0, 2.0])).tolist()
        [1.0, 0.5, 0.20000000298023224]
    """
    where = "sigmas_to_alphas_cumprod"
    s = check_tensor(sigmas, where, "sigmas")
    s64 = s.double()
    _check_nonneg_values(s64, where, "sigmas")
    return (1 / (1 + s64**2)).to(s.dtype)


def ddpm_alphas_cumprod(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, *,
                        schedule: str = "linear", dtype: torch.dtype | None = None) -> Tensor:
    r"""The ``alphas_cumprod`` table of a discrete DDPM schedule (for ``DiscreteDDPMDenoiser``).

    * ``"linear"`` (Ho et al. 2020): ``beta_t = linspace(beta_start, beta_end, T)``;
    * ``"scaled_linear"`` (Stable Diffusion): ``beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T)**2``;
    * ``"cosine"`` (Nichol & Dhariwal 2021, ``s = 0.008``): ``beta_t = min(1 - abar((t+1)/T) / abar(t/T), 0.999)``
      with ``abar`` the cosine ``alpha_bar`` (``beta_start``/``beta_end`` ignored);

    then ``alphas_cumprod[t] = prod_{k <= t} (1 - beta_k)``.

    Args:
        num_timesteps: ``T >= 2``.
        beta_start: first beta, in ``(0, 1)``.
        beta_end: last beta, in ``[beta_start, 1)``.
        schedule: ``"linear"``, ``"scaled_linear"`` or ``"cosine"``.
        dtype: floating dtype of the result (default: the default dtype).

    Returns:
        ``[T]`` strictly decreasing values in ``(0, 1)``.

    Examples:
        >>> ac = ddpm_alphas_cumprod(1000)
        >>> round(float(ac[0]), 6), round(float(alphas_cumprod_to_sigmas(ac)[-1]), 2)
        (0.9999, 157.41)
    """
    where = "ddpm_alphas_cumprod"
    _check_n(num_timesteps, where, "num_timesteps", 2)
    dt = _check_dtype(dtype, where)
    T = num_timesteps
    if schedule in ("linear", "scaled_linear"):
        b0 = _check_positive(beta_start, where, "beta_start")
        b1 = _check_positive(beta_end, where, "beta_end")
        if not (b0 <= b1 < 1):
            raise fail(where, f"beta_start = {b0!r}, beta_end = {b1!r}; expected 0 < beta_start <= beta_end < 1.")
        if schedule == "linear":
            betas = torch.linspace(b0, b1, T, dtype=torch.float64)
        else:
            betas = torch.linspace(math.sqrt(b0), math.sqrt(b1), T, dtype=torch.float64) ** 2
    elif schedule == "cosine":
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        abar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    else:
        raise fail(where, f"argument `schedule` is {schedule!r}, expected 'linear', 'scaled_linear' or 'cosine'.")
    return torch.cumprod(1 - betas, dim=0).to(dt)


# ---------------------------------------------------------------------------------------------- helpers
def _check_betas(beta_min: Any, beta_max: Any, where: str) -> tuple[float, float]:
    b0 = _check_positive(beta_min, where, "beta_min")
    b1 = _check_positive(beta_max, where, "beta_max")
    if b1 < b0:
        raise fail(where, f"beta_max = {b1!r} is below beta_min = {b0!r}; expected beta_min <= beta_max.",
                   "the default VP schedule uses beta_min=0.1, beta_max=20.")
    return b0, b1


def _check_t_range(t_min: Any, t_max: Any, where: str) -> tuple[float, float]:
    lo = _check_positive(t_min, where, "t_min")
    hi = _check_positive(t_max, where, "t_max")
    if not lo < hi:
        raise fail(where, f"t_min = {lo!r} is not below t_max = {hi!r}; expected 0 < t_min < t_max.")
    return lo, hi


def _check_nonneg_values(t64: Tensor, where: str, name: str) -> None:
    if t64.device.type == "meta":
        return
    bad = ~torch.isfinite(t64) | (t64 < 0)
    if bool(bad.any()):
        raise fail(where, f"argument `{name}` holds invalid values {t64[bad].flatten()[:4].tolist()}; expected finite "
                   "values >= 0.", f"pass finite, non-negative `{name}`.")
