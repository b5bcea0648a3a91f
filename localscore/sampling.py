r"""Samplers and MCMC correctors for any :class:`~localscore.Denoiser`.

Every sampler is a pure function with one signature::

    sample_<name>(denoiser, x, sigmas, cond=None, *, generator=None, callback=None, progress=False, ...) -> x

* ``denoiser``: ``D(x [B, C, H, W], sigma [B], cond) -> x0_hat [B, C, H, W]`` (EDM convention
  ``x_sigma = x_0 + sigma * eps``); the score is ``s = (D - x) / sigma**2``.
* ``x``: ``[B, C, H, W]`` the starting point, usually ``sigmas[0] * randn`` (noise already scaled).
* ``sigmas``: ``[N + 1]`` strictly decreasing noise levels, ``sigmas[0] = sigma_max``, usually ending at 0
  (see :mod:`localscore.schedules`). Each sampler takes ``N`` steps, step ``i`` going from
  ``sigma = sigmas[i]`` to ``sigma' = sigmas[i + 1]``. The denoiser is never called at ``sigma = 0``.
* ``cond``: a :class:`~localscore.Conditions` of batch ``B`` passed to every denoiser call, or ``None``.
* ``generator``: the ``torch.Generator`` all noise is drawn from (same seed, same result bit for bit on CPU).
* ``callback``: called after each step with a dict ``{"i", "x", "sigma", "sigma_next", "denoised"}``
  (``x`` is the state after the step, ``denoised`` the denoiser output at ``(x_i, sigma_i)``).
* ``progress``: show a tqdm progress bar (needs ``pip install tqdm``).

Nothing runs under ``torch.no_grad``: wrap the call in it yourself when you do not need gradients, or
differentiate through the sampler with respect to ``x``, the grid, or the denoiser's parameters.

Checks: every sampler checks its inputs once, when called (``sigmas`` and ``x`` are read back to the host
together, and the grid's values drive the branching such as ``if sigma' > 0``). Inside the loop no value
is read back (on a GPU each read would wait for the device): the finiteness of every denoiser output, and
the value checks of the library code the denoiser runs (adapters, networks, compositions), are computed on
the device and recorded; the sampler reads them back once, at the end of the call, and raises
:class:`~localscore.LocalScoreError` for the first failure, naming its step and noise levels. A denoiser
returning NaN at step ``i`` therefore lets the call run to its end (``callback`` sees the non-finite
states) before it raises. Shape and type errors still raise at once, and ``callback`` runs outside the
deferral (library calls it makes check their inputs at once).

The correctors :func:`langevin_correct` and :func:`mala_correct` run Langevin dynamics at one fixed noise
level; MALA accepts or rejects **each sample of the batch separately** with the Metropolis-Hastings rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._checks import (
    CheckScope,
    as_sigma,
    check_finite,
    check_flag,
    check_model,
    check_not_meta,
    check_tensor,
    checked_call,
    unchecked_section,
)
from ._errors import describe, fail
from .conditions import Conditions
from .denoisers import call_denoiser, tweedie

__all__ = [
    "langevin_correct",
    "log_prob_difference",
    "mala_correct",
    "sample_ddim",
    "sample_ddpm",
    "sample_deis",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_euler_maruyama",
    "sample_heun",
    "sample_lms",
    "sample_unipc",
]

Callback = Callable[[dict[str, Any]], Any]
LogProb = Callable[..., Tensor]


# ------------------------------------------------------------------------------------------- validation
def _check_x(x: Any, where: str, name: str = "x") -> Tensor:
    x = check_tensor(x, where, name)
    if x.dim() != 4:
        raise fail(where, f"argument `{name}` has shape {tuple(x.shape)}, expected [B, C, H, W] (4 dimensions).",
                   f"add a batch dimension with `{name}[None]` for one image, or reshape to [B, C, H, W].")
    if x.shape[0] == 0:
        raise fail(where, f"argument `{name}` has an empty batch (shape {tuple(x.shape)}).",
                   "pass at least one image.")
    check_not_meta(x, where, name)
    return x


def _check_common(where: str, denoiser: Any, x: Any, cond: Any, generator: Any, callback: Any,
                  progress: Any) -> tuple[Tensor, Conditions | None]:
    if not callable(denoiser):
        raise fail(where, f"argument `denoiser` is {describe(denoiser)}, expected a callable D(x, sigma, cond).",
                   "pass a localscore denoiser, an oracle, or any function of (x, sigma, cond).")
    x = _check_x(x, where)
    check_model(denoiser, x, where)  # metadata only: the parameters' dtype and device against x's
    if cond is not None:
        if not isinstance(cond, Conditions):
            raise fail(where, f"argument `cond` is {describe(cond)}, expected localscore.Conditions or None.",
                       "build conditions with `Conditions.from_lists(...)`, or bind them with `localscore.bind`.")
        cond.check_batch(x.shape[0], where, device=x.device)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise fail(where, f"argument `generator` is {describe(generator)}, expected a torch.Generator or None.",
                       "pass `torch.Generator(device=x.device).manual_seed(seed)`.")
        if generator.device.type != x.device.type:
            raise fail(where, f"argument `generator` is on {generator.device} but `x` is on {x.device}.",
                       "create it with `torch.Generator(device=x.device)`.")
    if callback is not None and not callable(callback):
        raise fail(where, f"argument `callback` is {describe(callback)}, expected a callable or None.",
                   "pass a function taking one dict argument.")
    if not isinstance(progress, bool):
        raise fail(where, f"argument `progress` is {describe(progress)}, expected a bool.")
    return x, cond


def _check_sigmas(sigmas: Any, x: Tensor, where: str) -> tuple[Tensor, list[float]]:
    """Validate a decreasing grid ``[N + 1]`` on x's device, and ``x``'s values, with one read-back.

    Returns the grid in x's dtype (gradients kept) and its values as Python floats, for the samplers'
    branching (``if sigma' > 0``), so that no step reads a value back from the device.
    """
    sigmas = check_tensor(sigmas, where, "sigmas")
    if sigmas.dim() != 1 or sigmas.shape[0] < 2:
        raise fail(where, f"argument `sigmas` has shape {tuple(sigmas.shape)}, expected [N + 1] with N >= 1 "
                   "(a 1-D decreasing grid of noise levels).",
                   "build one with localscore.schedules, e.g. `karras_sigmas(50)`.")
    if sigmas.device != x.device:
        raise fail(where, f"argument `sigmas` is on {sigmas.device} but `x` is on {x.device}.",
                   "move the grid with `sigmas.to(x.device)` (or build it with `device=x.device`).")
    grid = sigmas.to(x.dtype)
    n = sigmas.shape[0]
    if sigmas.device.type == "meta":
        return grid, [1.0] * n
    # One read-back: the grid in x's dtype, x's smallest and largest value (NaN if any is), and the grid as
    # given when its dtype differs (the checks below are on the values given).
    parts = [grid.detach(), torch.stack(torch.aminmax(x.detach()))]  # x is not on "meta" here (nor the grid)
    if sigmas.dtype != grid.dtype:
        parts = [p.double() for p in parts] + [sigmas.detach().double()]
    values = torch.cat(parts).tolist()
    converted, x_range = values[:n], values[n : n + 2]
    given = values[-n:] if sigmas.dtype != grid.dtype else converted
    n_nan, n_inf = sum(math.isnan(v) for v in given), sum(math.isinf(v) for v in given)
    if n_nan or n_inf:
        raise fail(where, f"argument `sigmas` holds {n_nan} NaN and {n_inf} infinite values (shape {(n,)}).",
                   "find where the non-finite values come from (a diverging sampler step, a division by "
                   "sigma = 0) and pass finite values.")
    negative = [v for v in given if v < 0]
    if negative:
        raise fail(where, f"argument `sigmas` holds negative values {negative[:4]}; expected noise levels >= 0.",
                   "noise levels are standard deviations; end the grid at 0.")
    for i in range(n - 1):
        if not given[i + 1] < given[i]:
            raise fail(where, f"argument `sigmas` is not strictly decreasing: sigmas[{i}] = {given[i]!r}, "
                       f"sigmas[{i + 1}] = {given[i + 1]!r}.",
                       "samplers walk from high to low noise; flip an increasing grid with `sigmas.flip(0)` "
                       "and remove repeated values.")
    if not all(map(math.isfinite, x_range)):
        check_finite(x, where, "x")  # raises, with the counts
    return grid, converted


def _check_float(value: Any, where: str, name: str, *, lo: float = 0.0, hi: float = math.inf,
                 allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(where, f"argument `{name}` is {describe(value)}, expected a float.")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf) or not lo <= v <= hi:
        raise fail(where, f"argument `{name}` is {v!r}, expected a value in [{lo}, {hi}].")
    return v


def _steps(n: int, progress: bool, where: str) -> Iterable[int]:
    if not progress:
        return range(n)
    try:
        from tqdm.auto import trange
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise fail(where, "progress=True needs the optional dependency tqdm, which is not installed.",
                   "install it with `pip install tqdm` (or `pip install localscore[progress]`), "
                   "or pass progress=False.") from e
    return trange(n, desc=where, leave=False)  # type: ignore[no-any-return,unused-ignore]


def _levels(sigmas: Tensor, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """The grid split once per call: 0-d levels ``sigmas[i]`` and ``[B]`` rows ``sigmas[i] * 1_B`` (fresh memory:
    a denoiser that writes into its ``sigma`` never touches the grid)."""
    return list(sigmas.unbind(0)), list((sigmas[:, None] * x.new_ones(x.shape[0])).unbind(0))


def _loop(n: int, progress: bool, where: str, call: checked_call, scope: CheckScope, grid: list[float]
          ) -> Iterator[int]:
    """The steps ``0 .. n - 1``; a sampler that owns its check scope stamps each step on the checks it records."""
    if not call.owned:
        yield from _steps(n, progress, where)
        return
    scope.step_info = lambda i: f"step {i} (sigma = {grid[i]:.6g} -> {grid[i + 1]:.6g})"
    for i in _steps(n, progress, where):
        scope.begin_step(i)
        yield i
    scope.begin_step(None)


class _Run:
    """The prologue every sampler shares (:func:`_prologue`): the checked ``x`` and ``cond``, the grid as 0-d
    levels, ``[B]`` rows and host floats, and the check scope of the call."""

    __slots__ = ("call", "cond", "grid", "levels", "progress", "rows", "where", "x")

    def __init__(self, where: str, x: Tensor, cond: Conditions | None, grid: list[float], levels: list[Tensor],
                 rows: list[Tensor], progress: bool) -> None:
        self.where, self.x, self.cond, self.grid, self.levels, self.rows = where, x, cond, grid, levels, rows
        self.progress = progress
        self.call = checked_call(where)

    @property
    def n(self) -> int:
        """The number of steps ``N``."""
        return len(self.grid) - 1

    def steps(self, scope: CheckScope) -> Iterator[int]:
        """The steps ``0 .. N - 1``, stamped on the checks recorded (see :func:`_loop`)."""
        return _loop(self.n, self.progress, self.where, self.call, scope, self.grid)


def _prologue(where: str, denoiser: Any, x: Any, sigmas: Any, cond: Any, generator: Any, callback: Any,
              progress: Any) -> _Run:
    """Check the common arguments, then the grid (one read-back), and split the grid: the start of every sampler.

    The order of the checks is part of the API (tests pin the messages): the common arguments, then ``sigmas``;
    a sampler checks its own options after this.
    """
    x, cond = _check_common(where, denoiser, x, cond, generator, callback, progress)
    sigmas, grid = _check_sigmas(sigmas, x, where)
    levels, rows = _levels(sigmas, x)
    return _Run(where, x, cond, grid, levels, rows, progress)


def _check_churn(where: str, s_churn: Any, s_tmin: Any, s_tmax: Any, s_noise: Any) -> tuple[float, float, float, float]:
    s_churn = _check_float(s_churn, where, "s_churn")
    s_tmin = _check_float(s_tmin, where, "s_tmin")
    s_tmax = _check_float(s_tmax, where, "s_tmax", allow_inf=True)
    s_noise = _check_float(s_noise, where, "s_noise")
    if s_tmin > s_tmax:
        raise fail(where, f"s_tmin = {s_tmin!r} is above s_tmax = {s_tmax!r}; expected s_tmin <= s_tmax.",
                   "churn is applied where s_tmin <= sigma <= s_tmax.")
    return s_churn, s_tmin, s_tmax, s_noise


def _churn(run: _Run, i: int, x: Tensor, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
           generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """EDM's churn at step ``i``: ``(x_h, sigma_h (0-d), sigma_h [B])``; ``x`` and ``sigma`` unchanged when
    ``gamma = 0`` (no noise drawn)."""
    if s_churn == 0:  # the default: gamma = 0 at every step
        return x, run.levels[i], run.rows[i]
    gamma = min(s_churn / run.n, math.sqrt(2) - 1) if s_tmin <= run.grid[i] <= s_tmax else 0.0
    sigma = run.levels[i]
    if gamma > 0:
        sigma_h = sigma * (1 + gamma)
        x_h = x + torch.sqrt(sigma_h**2 - sigma**2) * s_noise * _noise(x, generator)
        return x_h, sigma_h, sigma_h * x.new_ones(x.shape[0])
    return x, sigma, run.rows[i]  # sigma * (1 + 0.0) is sigma, bit for bit


def _ancestral(sigma: Tensor, sigma_next: Tensor, s: float, s_next: float, eta: float
               ) -> tuple[Tensor, Tensor, float]:
    """The ancestral split of a step: ``(sigma_down, sigma_up, sigma_down as a host float)`` with
    ``sigma_up = min(sigma', eta * sigma' / sigma * sqrt(sigma**2 - sigma'**2))`` and
    ``sigma_down = sqrt(sigma'**2 - sigma_up**2)``."""
    up_f = min(s_next, eta * s_next / s * math.sqrt(max(s * s - s_next * s_next, 0.0)))
    if eta == 0 or s_next == 0:
        return sigma_next, sigma_next * 0, s_next
    up = eta * sigma_next / sigma * torch.sqrt(sigma**2 - sigma_next**2)
    up = torch.minimum(up, sigma_next)
    down = torch.sqrt((sigma_next**2 - up**2).clamp_min(0))
    return down, up, math.sqrt(max(s_next * s_next - up_f * up_f, 0.0))


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _denoise(scope: CheckScope, denoiser: Any, x: Tensor, s: Tensor, cond: Conditions | None, where: str) -> Tensor:
    """``D(x, s, cond)`` for ``s [B]``; the output's finiteness is checked on the device (see the module doc)."""
    scope.vouch(x, s)
    return call_denoiser(denoiser, x, s, cond, where)


def _finish(scope: CheckScope, x: Tensor, where: str) -> None:
    """Record that the final state must be finite (when every denoiser output was, only an overflowing update
    can break it)."""
    scope.require_finite(x, lambda: fail(where, "the sampler's state became non-finite although every denoiser "
                                         "output was finite (an update overflowed).",
                                         "check the grid and the scale of x (noise already scaled by sigmas[0])."))


def _report(callback: Callback, i: int, x: Tensor, sigma: Tensor, sigma_next: Tensor, denoised: Tensor,
            **extra: Any) -> None:
    """Call the user's callback after step ``i`` (samplers call this only when there is one: no call per step
    otherwise)."""
    with unchecked_section():  # user code: library calls it makes check their inputs at once
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised, **extra})


# ---------------------------------------------------------------------------------------------- samplers
def sample_euler(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 progress: bool = False, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                 s_noise: float = 1.0) -> Tensor:
    r"""Euler's method on the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``, with optional churn.

    Step ``i`` of ``N`` (``sigma = sigmas[i]``, ``sigma' = sigmas[i + 1]``; churn as in :func:`sample_heun`)::

        gamma   = min(s_churn / N, sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0
        sigma_h = sigma * (1 + gamma)
        x_h     = x + sqrt(sigma_h**2 - sigma**2) * s_noise * z           (z ~ N(0, I); only if gamma > 0)
        d       = D(x_h, sigma_h, cond)
        x      <- x_h + (sigma' - sigma_h) * (x_h - d) / sigma_h

    The last step to ``sigma' = 0`` returns ``d``. With ``s_churn = 0`` (default) it is deterministic
    (``generator`` unused) and first order: the error at a fixed end level shrinks like ``1 / N``; it is
    then the same map as :func:`sample_ddim` with ``eta = 0``. k-diffusion's ``sample_euler``.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: source of the churn noise ``z`` (unused without churn).
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised", "sigma_hat"}``.
        progress: show a tqdm progress bar.
        s_churn: total amount of churn ``>= 0`` (EDM's ``S_churn``; 0 disables it).
        s_tmin: churn only where ``sigma >= s_tmin``.
        s_tmax: churn only where ``sigma <= s_tmax``.
        s_noise: scale ``>= 0`` of the churn noise.

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, conditions, churn parameters, or a denoiser returning
            bad output. Non-finite denoiser outputs raise at the end of the call, naming the first bad step.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)      # data: a point mass at 0
        >>> sigmas = torch.tensor([2.0, 1.0, 0.5])
        >>> sample_euler(D, torch.full((1, 1, 1, 1), 4.0), sigmas).item()   # x scales by sigma'/sigma
        1.0
    """
    where = "sample_euler"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, levels = run.x, run.cond, run.levels
    s_churn, s_tmin, s_tmax, s_noise = _check_churn(where, s_churn, s_tmin, s_tmax, s_noise)
    with run.call as scope:
        for i in run.steps(scope):
            sigma, sigma_next = levels[i], levels[i + 1]
            x, sigma_h, s_h = _churn(run, i, x, s_churn, s_tmin, s_tmax, s_noise, generator)
            d = _denoise(scope, denoiser, x, s_h, cond, where)
            x = x + (sigma_next - sigma_h) * (x - d) / sigma_h
            if callback is not None:
                _report(callback, i, x, sigma, sigma_next, d, sigma_hat=sigma_h)
        _finish(scope, x, where)
    return x


def sample_heun(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                progress: bool = False, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                s_noise: float = 1.0) -> Tensor:
    r"""Heun's second-order method with optional stochastic churn (Karras et al. 2022, Algorithm 2).

    Step ``i`` of ``N`` (``sigma = sigmas[i]``, ``sigma' = sigmas[i + 1]``)::

        gamma   = min(s_churn / N, sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0
        sigma_h = sigma * (1 + gamma)
        x_h     = x + sqrt(sigma_h**2 - sigma**2) * s_noise * z          (z ~ N(0, I); only if gamma > 0)
        d       = (x_h - D(x_h, sigma_h, cond)) / sigma_h
        x'      = x_h + (sigma' - sigma_h) * d                            (Euler)
        if sigma' > 0:
            d'  = (x' - D(x', sigma', cond)) / sigma'
            x'  = x_h + (sigma' - sigma_h) * (d + d') / 2                 (trapezoidal correction)

    The last step to ``sigma' = 0`` is the Euler step (it returns ``D(x_h, sigma_h)``). With
    ``s_churn = 0`` (default) the method is deterministic and second order: 2 denoiser calls per step
    (``2 N - 1`` in all when the grid ends at 0), and the error at a fixed end level shrinks like ``1 / N**2``.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: source of the churn noise ``z``.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised", "sigma_hat"}``.
        progress: show a tqdm progress bar.
        s_churn: total amount of churn ``>= 0`` (EDM's ``S_churn``; 0 disables it).
        s_tmin: churn only where ``sigma >= s_tmin``.
        s_tmax: churn only where ``sigma <= s_tmax``.
        s_noise: scale ``>= 0`` of the churn noise (EDM's ``S_noise``; slightly above 1 offsets denoisers
            that remove too much noise).

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, churn parameters, or bad denoiser output.
            Non-finite denoiser outputs raise at the end of the call, naming the first bad step.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)      # point mass: the ODE is x ∝ sigma
        >>> sample_heun(D, torch.full((1, 1, 1, 1), 4.0), torch.tensor([2.0, 1.0, 0.5])).item()
        1.0
    """
    where = "sample_heun"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, grid, levels, rows = run.x, run.cond, run.grid, run.levels, run.rows
    s_churn, s_tmin, s_tmax, s_noise = _check_churn(where, s_churn, s_tmin, s_tmax, s_noise)
    with run.call as scope:
        for i in run.steps(scope):
            sigma, sigma_next = levels[i], levels[i + 1]
            x_h, sigma_h, s_h = _churn(run, i, x, s_churn, s_tmin, s_tmax, s_noise, generator)
            den = _denoise(scope, denoiser, x_h, s_h, cond, where)
            d = (x_h - den) / sigma_h
            x = x_h + (sigma_next - sigma_h) * d
            if grid[i + 1] > 0:
                d_next = (x - _denoise(scope, denoiser, x, rows[i + 1], cond, where)) / sigma_next
                x = x_h + (sigma_next - sigma_h) * (d + d_next) / 2
            if callback is not None:
                _report(callback, i, x, sigma, sigma_next, den, sigma_hat=sigma_h)
        _finish(scope, x, where)
    return x


def sample_ddpm(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                progress: bool = False) -> Tensor:
    r"""Ancestral sampling with the exact variance-exploding posterior step (DDPM in VE variables).

    If ``x_sigma = x_0 + sigma * eps``, then given ``x_0`` and ``x_sigma = x`` the level ``sigma' < sigma`` is
    Gaussian: ``x_sigma' ~ N((sigma'/sigma)**2 x + (1 - (sigma'/sigma)**2) x_0, (sigma'/sigma)**2 (sigma**2 -
    sigma'**2) I)``. The sampler plugs in ``x_0 = D(x, sigma)``. Step ``i`` (``sigma = sigmas[i]``,
    ``sigma' = sigmas[i + 1]``)::

        d  = D(x, sigma, cond)
        r  = (sigma' / sigma)**2
        x <- r * x + (1 - r) * d + (sigma' / sigma) * sqrt(sigma**2 - sigma'**2) * z      (z ~ N(0, I))

    so the step to ``sigma' = 0`` returns ``d`` (no noise drawn). On a VP grid this is the sampler of Ho
    et al. (2020) with the posterior variance ``beta_tilde``; it equals :func:`sample_ddim` with ``eta = 1``.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: source of the noise ``z``.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised"}``.
        progress: show a tqdm progress bar.

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, conditions, or a denoiser returning bad output.
            Non-finite denoiser outputs raise at the end of the call, naming the first bad step.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_ddpm(D, torch.ones(2, 1, 1, 1), torch.tensor([1.0, 0.0]), generator=g).tolist()
        [[[[0.0]]], [[[0.0]]]]
    """
    where = "sample_ddpm"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, grid, levels, rows = run.x, run.cond, run.grid, run.levels, run.rows
    with run.call as scope:
        for i in run.steps(scope):
            sigma, sigma_next = levels[i], levels[i + 1]
            scope.vouch(x, rows[i])
            d = call_denoiser(denoiser, x, rows[i], cond, where)
            r = (sigma_next / sigma) ** 2
            x = r * x + (1 - r) * d
            if grid[i + 1] > 0:
                x = x + (sigma_next / sigma) * torch.sqrt(sigma**2 - sigma_next**2) * _noise(x, generator)
            if callback is not None:
                _report(callback, i, x, sigma, sigma_next, d)
        _finish(scope, x, where)
    return x


def sample_ddim(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                progress: bool = False, eta: float = 0.0) -> Tensor:
    r"""DDIM (Song, Meng and Ermon 2021) in variance-exploding variables, with stochasticity ``eta``.

    Step ``i`` (``sigma = sigmas[i]``, ``sigma' = sigmas[i + 1]``)::

        d     = D(x, sigma, cond)
        eps   = (x - d) / sigma                                       (the implied noise)
        c     = eta * (sigma' / sigma) * sqrt(sigma**2 - sigma'**2)   (eta times the DDPM posterior std)
        x    <- d + sqrt(sigma'**2 - c**2) * eps + c * z              (z ~ N(0, I); only if c > 0)

    ``eta = 0`` is deterministic and equals :func:`sample_euler` step for step; ``eta = 1`` equals
    :func:`sample_ddpm`. (This is DDIM's ``sigma_t(eta)`` rescaled by ``1 / sqrt(alpha_bar_{t-1})``.)

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: source of the noise ``z``.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised"}``.
        progress: show a tqdm progress bar.
        eta: stochasticity in ``[0, 1]``.

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, ``eta`` outside ``[0, 1]``, or bad denoiser output.
            Non-finite denoiser outputs raise at the end of the call, naming the first bad step.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: 0.5 * x
        >>> sigmas = torch.tensor([2.0, 1.0, 0.0])
        >>> x = torch.ones(1, 1, 1, 1)
        >>> torch.equal(sample_ddim(D, x, sigmas, eta=0.0), sample_euler(D, x, sigmas))
        True
    """
    where = "sample_ddim"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, grid, levels, rows = run.x, run.cond, run.grid, run.levels, run.rows
    eta = _check_float(eta, where, "eta", hi=1.0)
    with run.call as scope:
        for i in run.steps(scope):
            sigma, sigma_next = levels[i], levels[i + 1]
            scope.vouch(x, rows[i])
            d = call_denoiser(denoiser, x, rows[i], cond, where)
            eps = (x - d) / sigma
            c = eta * (sigma_next / sigma) * torch.sqrt(sigma**2 - sigma_next**2)
            x_new = d + torch.sqrt((sigma_next**2 - c**2).clamp_min(0)) * eps
            if eta > 0 and grid[i + 1] > 0:
                x_new = x_new + c * _noise(x, generator)
            x = x_new
            if callback is not None:
                _report(callback, i, x, sigma, sigma_next, d)
        _finish(scope, x, where)
    return x


def sample_euler_maruyama(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                          generator: torch.Generator | None = None, callback: Callback | None = None,
                          progress: bool = False) -> Tensor:
    r"""Euler-Maruyama on the reverse-time SDE, in the variance time ``u = sigma**2``.

    The forward process ``dx = dW(u)`` has the reverse SDE ``dx = -s(x, sigma) du + dW_bar(u)`` with score
    ``s = (D - x) / sigma**2``. One Euler-Maruyama step from ``u = sigma**2`` to ``u' = sigma'**2`` (the
    reverse-diffusion predictor of Song et al. 2021 for VE models)::

        d   = D(x, sigma, cond)
        du  = sigma**2 - sigma'**2
        x  <- x + du * (d - x) / sigma**2 + sqrt(du) * z              (z ~ N(0, I))

    The last step to ``sigma' = 0`` is taken without noise (it returns ``d``, the posterior mean), the
    usual final denoising step: the SDE's last increment would otherwise leave noise of size
    ``sigmas[-2]`` in the samples. Weak order one: errors in the moments shrink like ``1 / N``.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: source of the noise ``z``.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised"}``.
        progress: show a tqdm progress bar.

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, conditions, or a denoiser returning bad output.
            Non-finite denoiser outputs raise at the end of the call, naming the first bad step.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)
        >>> sample_euler_maruyama(D, torch.ones(1, 1, 1, 1), torch.tensor([1.0, 0.0])).item()
        0.0
    """
    where = "sample_euler_maruyama"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, grid, levels, rows = run.x, run.cond, run.grid, run.levels, run.rows
    with run.call as scope:
        for i in run.steps(scope):
            sigma, sigma_next = levels[i], levels[i + 1]
            scope.vouch(x, rows[i])
            d = call_denoiser(denoiser, x, rows[i], cond, where)
            du = sigma**2 - sigma_next**2
            x_new = x + du * tweedie(d, x, sigma)
            if grid[i + 1] > 0:
                x_new = x_new + torch.sqrt(du) * _noise(x, generator)
            x = x_new
            if callback is not None:
                _report(callback, i, x, sigma, sigma_next, d)
        _finish(scope, x, where)
    return x


# ------------------------------------------------------------------------------- samplers of the k-diffusion family
# Notation of the exponential integrators (DPM-Solver++, DEIS): lambda = -log sigma, the step length
# h = lambda' - lambda = log(sigma / sigma') > 0. In these variables the probability-flow ODE is
# dx/dlambda = D - x, so over one step x' = (sigma'/sigma) x + int_lambda^lambda' e^{-(lambda' - l)} D(l) dl:
# the solvers differ in the polynomial that approximates D inside the integral.


def _check_choice(value: Any, where: str, name: str, choices: tuple[Any, ...]) -> Any:
    if isinstance(value, bool) or value not in choices:
        raise fail(where, f"argument `{name}` is {describe(value)}, expected one of {list(choices)}.")
    return value


def sample_euler_ancestral(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                           generator: torch.Generator | None = None, callback: Callback | None = None,
                           progress: bool = False, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    r"""Ancestral sampling with Euler steps ("Euler a"; k-diffusion's ``sample_euler_ancestral``).

    Step ``i`` (``sigma = sigmas[i]``, ``sigma' = sigmas[i + 1]``)::

        sigma_up   = min(sigma', eta * (sigma' / sigma) * sqrt(sigma**2 - sigma'**2))
        sigma_down = sqrt(sigma'**2 - sigma_up**2)
        d  = D(x, sigma, cond)
        x <- x + (sigma_down - sigma) * (x - d) / sigma
        x <- x + s_noise * sigma_up * z                                  (z ~ N(0, I); only if sigma' > 0)

    ``eta = 1`` is :func:`sample_ddpm` step for step (``sigma_down = sigma'**2 / sigma``: the Euler move lands on
    the posterior mean, ``sigma_up`` is the posterior's standard deviation), ``eta = 0`` is :func:`sample_euler`.
    One call per step, first order.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: source of the noise ``z``.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised"}``.
        progress: show a tqdm progress bar.
        eta: stochasticity ``>= 0`` (the share of the step's variance renewed).
        s_noise: scale ``>= 0`` of the added noise.

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, options, or bad denoiser output.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)
        >>> g = torch.Generator().manual_seed(0)
        >>> sample_euler_ancestral(D, torch.ones(2, 1, 1, 1), torch.tensor([1.0, 0.0]), generator=g).tolist()
        [[[[0.0]]], [[[0.0]]]]
    """
    where = "sample_euler_ancestral"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, grid, levels, rows = run.x, run.cond, run.grid, run.levels, run.rows
    eta = _check_float(eta, where, "eta")
    s_noise = _check_float(s_noise, where, "s_noise")
    with run.call as scope:
        for i in run.steps(scope):
            sigma, sigma_next = levels[i], levels[i + 1]
            down, up, _ = _ancestral(sigma, sigma_next, grid[i], grid[i + 1], eta)
            d = _denoise(scope, denoiser, x, rows[i], cond, where)
            x = x + (down - sigma) * (x - d) / sigma
            if grid[i + 1] > 0 and eta > 0:
                x = x + s_noise * up * _noise(x, generator)
            if callback is not None:
                _report(callback, i, x, sigma, sigma_next, d)
        _finish(scope, x, where)
    return x


def _dpm2_step(scope: CheckScope, denoiser: Any, x: Tensor, d: Tensor, sigma: Tensor, target: Tensor,
               cond: Conditions | None, where: str) -> Tensor:
    """DPM-Solver-2 from ``sigma`` to ``target > 0`` given ``d = (x - D(x, sigma)) / sigma``."""
    sigma_mid = torch.sqrt(sigma * target)                 # the midpoint in log sigma
    x_mid = x + (sigma_mid - sigma) * d
    d_mid = (x_mid - _denoise(scope, denoiser, x_mid, sigma_mid * x.new_ones(x.shape[0]), cond, where)) / sigma_mid
    return x + (target - sigma) * d_mid


def sample_dpm_2(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 progress: bool = False, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
                 s_noise: float = 1.0) -> Tensor:
    r"""DPM-Solver-2 in EDM's sampler (k-diffusion's ``sample_dpm_2``): the midpoint rule in ``log sigma``.

    Step ``i`` (``sigma = sigmas[i]``, ``sigma' = sigmas[i + 1]``; churn as in :func:`sample_heun`)::

        sigma_h, x_h = churn(sigma, x)
        d       = (x_h - D(x_h, sigma_h, cond)) / sigma_h
        if sigma' > 0:
            sigma_m = sqrt(sigma_h * sigma')                               (midpoint in log sigma)
            x_m     = x_h + (sigma_m - sigma_h) * d
            d_m     = (x_m - D(x_m, sigma_m, cond)) / sigma_m
            x      <- x_h + (sigma' - sigma_h) * d_m
        else:
            x      <- x_h + (sigma' - sigma_h) * d                         (Euler: returns D)

    Second order, two calls per step (one for the step to 0).

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: source of the churn noise.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised", "sigma_hat"}``.
        progress: show a tqdm progress bar.
        s_churn: total amount of churn ``>= 0`` (0 disables it).
        s_tmin: churn only where ``sigma >= s_tmin``.
        s_tmax: churn only where ``sigma <= s_tmax``.
        s_noise: scale ``>= 0`` of the churn noise.

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, churn parameters, or bad denoiser output.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)      # point mass: the ODE is x ∝ sigma
        >>> sample_dpm_2(D, torch.full((1, 1, 1, 1), 4.0), torch.tensor([2.0, 1.0, 0.5])).item()
        1.0
    """
    where = "sample_dpm_2"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, grid, levels = run.x, run.cond, run.grid, run.levels
    s_churn, s_tmin, s_tmax, s_noise = _check_churn(where, s_churn, s_tmin, s_tmax, s_noise)
    with run.call as scope:
        for i in run.steps(scope):
            sigma, sigma_next = levels[i], levels[i + 1]
            x_h, sigma_h, s_h = _churn(run, i, x, s_churn, s_tmin, s_tmax, s_noise, generator)
            den = _denoise(scope, denoiser, x_h, s_h, cond, where)
            d = (x_h - den) / sigma_h
            if grid[i + 1] > 0:
                x = _dpm2_step(scope, denoiser, x_h, d, sigma_h, sigma_next, cond, where)
            else:
                x = x_h + (sigma_next - sigma_h) * d
            if callback is not None:
                _report(callback, i, x, sigma, sigma_next, den, sigma_hat=sigma_h)
        _finish(scope, x, where)
    return x


def sample_dpm_2_ancestral(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                           generator: torch.Generator | None = None, callback: Callback | None = None,
                           progress: bool = False, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    r"""Ancestral sampling with DPM-Solver-2 steps (k-diffusion's ``sample_dpm_2_ancestral``).

    Step ``i`` (``sigma_up``, ``sigma_down`` as in :func:`sample_euler_ancestral`)::

        d  = (x - D(x, sigma, cond)) / sigma
        x <- dpm_2(x, sigma -> sigma_down)     (the midpoint step of :func:`sample_dpm_2`; Euler if sigma_down = 0)
        x <- x + s_noise * sigma_up * z                                  (z ~ N(0, I); only if sigma' > 0)

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: source of the noise ``z``.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised"}``.
        progress: show a tqdm progress bar.
        eta: stochasticity ``>= 0``.
        s_noise: scale ``>= 0`` of the added noise.

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, options, or bad denoiser output.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)
        >>> out = sample_dpm_2_ancestral(D, torch.ones(3, 1, 1, 1), torch.tensor([2.0, 1.0, 0.0]),
        ...                              generator=torch.Generator().manual_seed(0))
        >>> out.abs().max().item()
        0.0
    """
    where = "sample_dpm_2_ancestral"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, grid, levels, rows = run.x, run.cond, run.grid, run.levels, run.rows
    eta = _check_float(eta, where, "eta")
    s_noise = _check_float(s_noise, where, "s_noise")
    with run.call as scope:
        for i in run.steps(scope):
            sigma, sigma_next = levels[i], levels[i + 1]
            down, up, down_f = _ancestral(sigma, sigma_next, grid[i], grid[i + 1], eta)
            den = _denoise(scope, denoiser, x, rows[i], cond, where)
            d = (x - den) / sigma
            if down_f > 0:
                x = _dpm2_step(scope, denoiser, x, d, sigma, down, cond, where)
            else:
                x = x + (down - sigma) * d
            if grid[i + 1] > 0 and eta > 0:
                x = x + s_noise * up * _noise(x, generator)
            if callback is not None:
                _report(callback, i, x, sigma, sigma_next, den)
        _finish(scope, x, where)
    return x


def sample_dpmpp_2s_ancestral(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                              generator: torch.Generator | None = None, callback: Callback | None = None,
                              progress: bool = False, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    r"""DPM-Solver++(2S) single-step steps with ancestral noise (k-diffusion's ``sample_dpmpp_2s_ancestral``).

    Step ``i`` (``sigma_up``, ``sigma_down`` as in :func:`sample_euler_ancestral`; ``h = log(sigma /
    sigma_down)``)::

        d   = D(x, sigma, cond)
        if sigma_down > 0:
            sigma_m = sqrt(sigma * sigma_down)                             (half the step in lambda = -log sigma)
            x_m     = (sigma_m / sigma) * x - expm1(-h / 2) * d
            x      <- (sigma_down / sigma) * x - expm1(-h) * D(x_m, sigma_m, cond)
        else:
            x      <- d
        x  <- x + s_noise * sigma_up * z                                  (z ~ N(0, I); only if sigma' > 0)

    ``eta = 0`` is the deterministic DPM-Solver++(2S), second order; two calls per step.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: source of the noise ``z``.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised"}``.
        progress: show a tqdm progress bar.
        eta: stochasticity ``>= 0``.
        s_noise: scale ``>= 0`` of the added noise.

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, options, or bad denoiser output.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)      # point mass: the ODE is x ∝ sigma
        >>> sample_dpmpp_2s_ancestral(D, torch.full((1, 1, 1, 1), 4.0), torch.tensor([2.0, 1.0]), eta=0.0).item()
        2.0
    """
    where = "sample_dpmpp_2s_ancestral"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, grid, levels, rows = run.x, run.cond, run.grid, run.levels, run.rows
    eta = _check_float(eta, where, "eta")
    s_noise = _check_float(s_noise, where, "s_noise")
    with run.call as scope:
        for i in run.steps(scope):
            sigma, sigma_next = levels[i], levels[i + 1]
            down, up, down_f = _ancestral(sigma, sigma_next, grid[i], grid[i + 1], eta)
            d = _denoise(scope, denoiser, x, rows[i], cond, where)
            if down_f > 0:
                h = torch.log(sigma / down)
                sigma_m = torch.sqrt(sigma * down)
                x_m = (sigma_m / sigma) * x - torch.expm1(-h / 2) * d
                d_m = _denoise(scope, denoiser, x_m, sigma_m * x.new_ones(x.shape[0]), cond, where)
                x = (down / sigma) * x - torch.expm1(-h) * d_m
            else:
                x = d
            if grid[i + 1] > 0 and eta > 0:
                x = x + s_noise * up * _noise(x, generator)
            if callback is not None:
                _report(callback, i, x, sigma, sigma_next, d)
        _finish(scope, x, where)
    return x


def sample_dpmpp_2m(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    progress: bool = False) -> Tensor:
    r"""DPM-Solver++(2M) (Lu et al. 2022), the multistep second-order solver; k-diffusion's ``sample_dpmpp_2m``.

    With ``h = log(sigma / sigma')`` and ``h_prev`` the previous step's length, step ``i``::

        d  = D(x, sigma, cond)
        if i == 0 or sigma' == 0:
            x <- (sigma' / sigma) * x - expm1(-h) * d                      (first order; returns d at sigma' = 0)
        else:
            r  = h_prev / h
            x <- (sigma' / sigma) * x - expm1(-h) * ((1 + 1 / (2 r)) * d - d_prev / (2 r))

    One call per step, second order (the error falls by four when the steps double). With a Karras grid
    this is "DPM++ 2M Karras"; diffusers' ``DPMSolverMultistepScheduler`` (``algorithm_type="dpmsolver++"``,
    ``solver_order=2``) takes the same steps on the same grid (it ends with a first-order step, too).

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: unused (the method draws no noise).
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised"}``.
        progress: show a tqdm progress bar.

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, conditions, or bad denoiser output.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)      # point mass: the ODE is x ∝ sigma
        >>> sample_dpmpp_2m(D, torch.full((1, 1, 1, 1), 4.0), torch.tensor([2.0, 1.0, 0.5])).item()
        1.0
    """
    where = "sample_dpmpp_2m"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, grid, levels, rows = run.x, run.cond, run.grid, run.levels, run.rows
    d_prev: Tensor | None = None
    h_prev: Tensor | None = None
    with run.call as scope:
        for i in run.steps(scope):
            sigma, sigma_next = levels[i], levels[i + 1]
            d = _denoise(scope, denoiser, x, rows[i], cond, where)
            if grid[i + 1] == 0:
                x = d
            else:
                h = torch.log(sigma / sigma_next)
                if d_prev is None or h_prev is None:
                    x = (sigma_next / sigma) * x - torch.expm1(-h) * d
                else:
                    r = h_prev / h
                    x = (sigma_next / sigma) * x - torch.expm1(-h) * ((1 + 1 / (2 * r)) * d - d_prev / (2 * r))
                h_prev = h
            d_prev = d
            if callback is not None:
                _report(callback, i, x, sigma, sigma_next, d)
        _finish(scope, x, where)
    return x


def sample_dpmpp_2m_sde(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                        generator: torch.Generator | None = None, callback: Callback | None = None,
                        progress: bool = False, eta: float = 1.0, s_noise: float = 1.0,
                        solver_type: str = "midpoint") -> Tensor:
    r"""DPM-Solver++(2M) SDE (k-diffusion's ``sample_dpmpp_2m_sde``; diffusers' ``sde-dpmsolver++``).

    With ``h = log(sigma / sigma')``, ``g = (1 + eta) h``, ``phi = -expm1(-g)`` and ``r = h_prev / h``, step ``i``::

        d  = D(x, sigma, cond)
        if sigma' == 0:
            x <- d
        else:
            x <- (sigma' / sigma) * exp(-eta h) * x + phi * d
            x <- x + phi / (2 r) * (d - d_prev)                 (solver_type "midpoint"; not at i = 0)
            x <- x + (1 - phi / g) / r * (d - d_prev)           (solver_type "heun"; not at i = 0)
            x <- x + s_noise * sigma' * sqrt(-expm1(-2 eta h)) * z         (z ~ N(0, I))

    ``eta = 0`` gives :func:`sample_dpmpp_2m` (midpoint) or its Heun-type variant; ``eta = 1`` is the SDE of
    the data-prediction DPM-Solver++. One call per step. The noise of each step is an independent Gaussian
    drawn from ``generator`` (exact in distribution on a fixed grid: see the sampling guide on Brownian trees).

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: source of the noise ``z``.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised"}``.
        progress: show a tqdm progress bar.
        eta: stochasticity ``>= 0``.
        s_noise: scale ``>= 0`` of the added noise.
        solver_type: ``"midpoint"`` or ``"heun"``, the second-order correction.

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, options, or bad denoiser output.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)
        >>> x = torch.ones(4000, 1, 1, 1)
        >>> out = sample_dpmpp_2m_sde(D, x, torch.tensor([2.0, 1.0]), generator=torch.Generator().manual_seed(0))
        >>> abs(out.mean().item() - 0.25) < 0.05 and abs(out.var().item() - 0.75) < 0.05   # the DDPM posterior
        True
    """
    where = "sample_dpmpp_2m_sde"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, grid, levels, rows = run.x, run.cond, run.grid, run.levels, run.rows
    eta = _check_float(eta, where, "eta")
    s_noise = _check_float(s_noise, where, "s_noise")
    solver_type = _check_choice(solver_type, where, "solver_type", ("midpoint", "heun"))
    d_prev: Tensor | None = None
    h_prev: Tensor | None = None
    with run.call as scope:
        for i in run.steps(scope):
            sigma, sigma_next = levels[i], levels[i + 1]
            d = _denoise(scope, denoiser, x, rows[i], cond, where)
            if grid[i + 1] == 0:
                x = d
            else:
                h = torch.log(sigma / sigma_next)
                g = (1 + eta) * h
                phi = -torch.expm1(-g)
                x = (sigma_next / sigma) * torch.exp(-eta * h) * x + phi * d
                if d_prev is not None and h_prev is not None:
                    r = h_prev / h
                    if solver_type == "midpoint":
                        x = x + phi / (2 * r) * (d - d_prev)
                    else:
                        x = x + (1 - phi / g) / r * (d - d_prev)
                if eta > 0:
                    x = x + s_noise * sigma_next * torch.sqrt(-torch.expm1(-2 * eta * h)) * _noise(x, generator)
                h_prev = h
            d_prev = d
            if callback is not None:
                _report(callback, i, x, sigma, sigma_next, d)
        _finish(scope, x, where)
    return x


def sample_dpmpp_3m_sde(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                        generator: torch.Generator | None = None, callback: Callback | None = None,
                        progress: bool = False, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    r"""DPM-Solver++(3M) SDE (k-diffusion's ``sample_dpmpp_3m_sde``); ``eta = 0`` is the third-order ODE solver.

    With ``h = log(sigma / sigma')``, ``g = (1 + eta) h``, the previous two outputs ``d_1``, ``d_2`` and step
    lengths ``h_1``, ``h_2`` (``r0 = h_1 / h``, ``r1 = h_2 / h``), step ``i``::

        d    = D(x, sigma, cond)
        if sigma' == 0:
            x <- d
        else:
            phi2 = 1 + expm1(-g) / g
            phi3 = phi2 / g - 1 / 2
            x   <- exp(-g) * x - expm1(-g) * d
            if two previous outputs:
                D1_0 = (d - d_1) / r0,   D1_1 = (d_1 - d_2) / r1
                D1   = D1_0 + (D1_0 - D1_1) * r0 / (r0 + r1)
                D2   = (D1_0 - D1_1) / (r0 + r1)
                x   <- x + phi2 * D1 - phi3 * D2
            elif one:
                x   <- x + phi2 * (d - d_1) / r0
            x   <- x + s_noise * sigma' * sqrt(-expm1(-2 eta h)) * z              (z ~ N(0, I))

    (``exp(-g) = (sigma' / sigma) * exp(-eta h)``.) One call per step; third order at ``eta = 0`` once
    two outputs are stored.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: source of the noise ``z``.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised"}``.
        progress: show a tqdm progress bar.
        eta: stochasticity ``>= 0``.
        s_noise: scale ``>= 0`` of the added noise.

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, options, or bad denoiser output.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)      # point mass: the ODE is x ∝ sigma
        >>> round(sample_dpmpp_3m_sde(D, torch.full((1, 1, 1, 1), 4.0), torch.tensor([2.0, 1.0, 0.5]),
        ...                           eta=0.0).item(), 12)
        1.0
    """
    where = "sample_dpmpp_3m_sde"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, grid, levels, rows = run.x, run.cond, run.grid, run.levels, run.rows
    eta = _check_float(eta, where, "eta")
    s_noise = _check_float(s_noise, where, "s_noise")
    d_1: Tensor | None = None
    d_2: Tensor | None = None
    h_1: Tensor | None = None
    h_2: Tensor | None = None
    with run.call as scope:
        for i in run.steps(scope):
            sigma, sigma_next = levels[i], levels[i + 1]
            d = _denoise(scope, denoiser, x, rows[i], cond, where)
            h: Tensor | None = None
            if grid[i + 1] == 0:
                x = d
            else:
                h = torch.log(sigma / sigma_next)
                g = (1 + eta) * h
                phi2 = 1 + torch.expm1(-g) / g
                phi3 = phi2 / g - 0.5
                x = torch.exp(-g) * x - torch.expm1(-g) * d
                if d_2 is not None and d_1 is not None and h_1 is not None and h_2 is not None:
                    r0, r1 = h_1 / h, h_2 / h
                    d1_0, d1_1 = (d - d_1) / r0, (d_1 - d_2) / r1
                    big_d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                    big_d2 = (d1_0 - d1_1) / (r0 + r1)
                    x = x + phi2 * big_d1 - phi3 * big_d2
                elif d_1 is not None and h_1 is not None:
                    x = x + phi2 * (d - d_1) / (h_1 / h)
                if eta > 0:
                    x = x + s_noise * sigma_next * torch.sqrt(-torch.expm1(-2 * eta * h)) * _noise(x, generator)
            d_1, d_2 = d, d_1
            h_1, h_2 = h, h_1
            if callback is not None:
                _report(callback, i, x, sigma, sigma_next, d)
        _finish(scope, x, where)
    return x


def _check_order(order: Any, where: str, hi: int) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= hi:
        raise fail(where, f"argument `order` is {describe(order)}, expected an int in [1, {hi}].")
    return order


def _lagrange_integrals(nodes: list[Tensor], a: Tensor, b: Tensor, weight: Callable[[Tensor], Tensor] | None,
                        n_quad: int = 8) -> list[Tensor]:
    """``[int_a^b L_j(u) w(u) du for j]`` with ``L_j`` the Lagrange basis on ``nodes`` (0-d tensors), by
    ``n_quad``-point Gauss-Legendre quadrature (exact for polynomials of degree ``<= 2 n_quad - 1``)."""
    t, wq = _gauss_legendre(n_quad, a)
    u = a + t * (b - a)
    ww = wq * (b - a) * (weight(u) if weight is not None else 1)
    out = []
    for j, nj in enumerate(nodes):
        basis = torch.ones_like(u)
        for m, nm in enumerate(nodes):
            if m != j:
                basis = basis * (u - nm) / (nj - nm)
        out.append((basis * ww).sum())
    return out


def sample_lms(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
               generator: torch.Generator | None = None, callback: Callback | None = None,
               progress: bool = False, order: int = 4) -> Tensor:
    r"""Linear multistep (Adams-Bashforth on a non-uniform grid) in ``sigma``: k-diffusion's ``sample_lms``.

    The ODE ``dx/dsigma = (x - D) / sigma`` is integrated with the derivative replaced by the polynomial through
    the last ``p = min(i + 1, order)`` derivatives ``d_k = (x_k - D(x_k, sigma_k)) / sigma_k``::

        x <- x + sum_{j < p} c_j * d_{i - j},     c_j = int_{sigma_i}^{sigma_{i+1}} L_j(s) ds

    with ``L_j`` the Lagrange basis on ``sigma_i, ..., sigma_{i-p+1}``. The weights depend on the grid only: they
    are computed before the loop (Gauss-Legendre quadrature, exact for these polynomials). One call per step
    (none at ``sigma' = 0``: the last step is the polynomial's, too); order ``order`` once warmed up. This is
    also DEIS's ``rhoAB`` (the exponential integrator has no linear part in these variables), and diffusers'
    ``LMSDiscreteScheduler``.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: unused (the method draws no noise).
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised"}``.
        progress: show a tqdm progress bar.
        order: the number of derivatives in the polynomial, in ``[1, 4]`` (1 is Euler).

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, ``order``, or bad denoiser output.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)      # point mass: the ODE is x ∝ sigma
        >>> round(sample_lms(D, torch.full((1, 1, 1, 1), 4.0), torch.tensor([2.0, 1.0, 0.5])).item(), 12)
        1.0
    """
    where = "sample_lms"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, levels, rows = run.x, run.cond, run.levels, run.rows
    order = _check_order(order, where, 4)
    coeffs = [_lagrange_integrals([levels[i - j] for j in range(min(i + 1, order))], levels[i], levels[i + 1], None)
              for i in range(run.n)]
    ds: list[Tensor] = []
    with run.call as scope:
        for i in run.steps(scope):
            den = _denoise(scope, denoiser, x, rows[i], cond, where)
            ds = [(x - den) / levels[i], *ds[: order - 1]]
            x = x + sum((c * dj for c, dj in zip(coeffs[i], ds)), torch.zeros_like(x))
            if callback is not None:
                _report(callback, i, x, levels[i], levels[i + 1], den)
        _finish(scope, x, where)
    return x


def sample_deis(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                progress: bool = False, order: int = 3) -> Tensor:
    r"""DEIS (Zhang and Chen 2023), ``logrho`` Adams-Bashforth: diffusers' ``DEISMultistepScheduler``.

    The exact solution of ``dx/dsigma = eps(x, sigma)`` (with ``eps = (x - D) / sigma``) is
    ``x' = x + int_sigma^sigma' eps ds``; DEIS replaces ``eps`` by the polynomial in ``v = log sigma`` through the
    last ``p = min(i + 1, order)`` values ``eps_k`` (at ``v_k = log sigma_k``)::

        x <- x + sum_{j < p} c_j * eps_{i - j},     c_j = int_{log sigma_i}^{log sigma_{i+1}} L_j(v) e^v dv

    with ``L_j`` the Lagrange basis on ``v_i, ..., v_{i-p+1}``; the weights depend on the grid only and are
    computed before the loop (Gauss-Legendre, 8 nodes). The last step to ``sigma' = 0`` returns ``D`` (first
    order; ``log 0`` has no polynomial). One call per step; order ``order`` once warmed up.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: unused (the method draws no noise).
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised"}``.
        progress: show a tqdm progress bar.
        order: the number of stored outputs in the polynomial, in ``[1, 4]``.

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, ``order``, or bad denoiser output.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)      # point mass: the ODE is x ∝ sigma
        >>> round(sample_deis(D, torch.full((1, 1, 1, 1), 4.0), torch.tensor([2.0, 1.0, 0.5])).item(), 12)
        1.0
    """
    where = "sample_deis"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, grid, levels, rows = run.x, run.cond, run.grid, run.levels, run.rows
    order = _check_order(order, where, 4)
    logs = [torch.log(s) if g > 0 else s for s, g in zip(levels, grid)]
    coeffs = [_lagrange_integrals([logs[i - j] for j in range(min(i + 1, order))], logs[i], logs[i + 1], torch.exp)
              if grid[i + 1] > 0 else [] for i in range(run.n)]
    eps: list[Tensor] = []
    with run.call as scope:
        for i in run.steps(scope):
            den = _denoise(scope, denoiser, x, rows[i], cond, where)
            eps = [(x - den) / levels[i], *eps[: order - 1]]
            if grid[i + 1] > 0:
                x = x + sum((c * e for c, e in zip(coeffs[i], eps)), torch.zeros_like(x))
            else:
                x = den
            if callback is not None:
                _report(callback, i, x, levels[i], levels[i + 1], den)
        _finish(scope, x, where)
    return x


def _unipc_coeffs(lams: list[Tensor], i: int, order: int, variant: str) -> tuple[Tensor, Tensor, list[Tensor],
                                                                                   list[Tensor], list[Tensor]]:
    """UniPC's coefficients of the step ``i -> i + 1`` of ``order`` (``lams = -log sigma``): ``(h_phi_1, B_h,
    rks, rhos_p, rhos_c)`` (Zhao et al. 2023, data prediction)."""
    h = lams[i + 1] - lams[i]
    hh = -h
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    rks = [(lams[i - k] - lams[i]) / h for k in range(1, order)] + [torch.ones_like(h)]
    h_phi_k = h_phi_1 / hh - 1
    fact, b = 1, []
    for k in range(1, order + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    rk = torch.stack(rks)
    big_r = torch.stack([rk ** (k - 1) for k in range(1, order + 1)])
    bv = torch.stack(b)
    if order == 1:
        rhos_p: list[Tensor] = []
        rhos_c = [0.5 * torch.ones_like(h)]
    else:
        rhos_p = ([0.5 * torch.ones_like(h)] if order == 2 else
                  list(torch.linalg.solve_ex(big_r[:-1, :-1], bv[:-1], check_errors=False)[0].unbind(0)))
        rhos_c = list(torch.linalg.solve_ex(big_r, bv, check_errors=False)[0].unbind(0))
    return h_phi_1, b_h, rks[:-1], rhos_p, rhos_c


def sample_unipc(denoiser: Any, x: Tensor, sigmas: Tensor, cond: Conditions | None = None, *,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 progress: bool = False, order: int = 2, variant: str = "bh2", corrector: bool = True) -> Tensor:
    r"""UniPC (Zhao et al. 2023): multistep predictor UniP and corrector UniC; diffusers' ``UniPCMultistepScheduler``.

    Data prediction in ``lambda = -log sigma``. Step ``i`` uses ``p = min(order, i + 1, N - i)`` outputs
    ``m_i, m_{i-1}, ...`` (``m_k = D(x_k, sigma_k)``), ``h = lambda_{i+1} - lambda_i``,
    ``r_k = (lambda_{i-k} - lambda_i) / h``, ``D1_k = (m_{i-k} - m_i) / r_k`` (``k = 1 .. p - 1``)::

        h_phi_1 = expm1(-h),   B_h = -h ("bh1") or expm1(-h) ("bh2")
        rhos_p, rhos_c  solve  sum_j rhos[j] r_j**(k-1) = k! phi_{k+1}(-h) / B_h     (k = 1 .. p; r_p = 1)
        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - h_phi_1 m_i - B_h sum_k rhos_p[k] D1_k          (UniP)

    and, when ``m_{i+1} = D(x_{i+1}, sigma_{i+1})`` has been computed for the next step, the corrector redoes the
    step with it, at no extra model call (the next step then starts from the corrected state)::

        x_{i+1} <- (sigma_{i+1} / sigma_i) x_i - h_phi_1 m_i - B_h (sum_k rhos_c[k] D1_k + rhos_c[p] (m_{i+1} - m_i))

    (``rhos_p = [1/2]`` for ``p = 2``, ``rhos_c = [1/2]`` for ``p = 1``; ``phi_{k+1}`` are the exponential
    integrator's functions, built by the recursion in the code.) The last step to ``sigma' = 0`` has ``p = 1``
    and returns ``m``. One call per step; order ``order + 1`` with the corrector. The coefficients depend on the
    grid only and are computed before the loop.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` starting point at noise level ``sigmas[0]``.
        sigmas: ``[N + 1]`` strictly decreasing noise levels ``>= 0``.
        cond: conditions of batch ``B`` for every denoiser call, or ``None``.
        generator: unused (the method draws no noise).
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised"}`` (``x`` is the
            predictor's state; the next step corrects it).
        progress: show a tqdm progress bar.
        order: the predictor's order, in ``[1, 3]``.
        variant: ``"bh1"`` (for few steps, unconditional models) or ``"bh2"`` (diffusers' default).
        corrector: apply UniC (default); ``False`` leaves UniP alone.

    Returns:
        ``[B, C, H, W]`` the state at ``sigmas[-1]``.

    Raises:
        LocalScoreError: on bad shapes, devices, grids, options, or bad denoiser output.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)      # point mass: the ODE is x ∝ sigma
        >>> round(sample_unipc(D, torch.full((1, 1, 1, 1), 4.0), torch.tensor([2.0, 1.0, 0.5])).item(), 12)
        1.0
    """
    where = "sample_unipc"
    run = _prologue(where, denoiser, x, sigmas, cond, generator, callback, progress)
    x, cond, grid, levels, rows = run.x, run.cond, run.grid, run.levels, run.rows
    order = _check_order(order, where, 3)
    variant = _check_choice(variant, where, "variant", ("bh1", "bh2"))
    if not isinstance(corrector, bool):
        raise fail(where, f"argument `corrector` is {describe(corrector)}, expected a bool.")
    n = run.n
    lams = [-torch.log(s) if g > 0 else s for s, g in zip(levels, grid)]
    orders = [min(order, i + 1, n - i) if grid[i + 1] > 0 else 1 for i in range(n)]
    coeffs = [_unipc_coeffs(lams, i, orders[i], variant) if grid[i + 1] > 0 else None for i in range(n)]
    ms: list[Tensor] = []                    # m_i, m_{i-1}, ... (newest first)
    x_last: Tensor | None = None             # x_{i-1}, the state the previous step started from
    with run.call as scope:
        for i in run.steps(scope):
            sigma, sigma_next = levels[i], levels[i + 1]
            m = _denoise(scope, denoiser, x, rows[i], cond, where)
            prev = coeffs[i - 1] if i > 0 else None
            if corrector and prev is not None and x_last is not None:
                h_phi_1, b_h, rks, _, rhos_c = prev
                res = rhos_c[-1] * (m - ms[0])
                for k, (rk, rho) in enumerate(zip(rks, rhos_c[:-1])):
                    res = res + rho * (ms[k + 1] - ms[0]) / rk
                x = (sigma / levels[i - 1]) * x_last - h_phi_1 * ms[0] - b_h * res
            ms = [m, *ms[:2]]
            cur = coeffs[i]
            if cur is None:
                x_new = m
            else:
                h_phi_1, b_h, rks, rhos_p, _ = cur
                x_new = (sigma_next / sigma) * x - h_phi_1 * m
                for k, (rk, rho) in enumerate(zip(rks, rhos_p)):
                    x_new = x_new - b_h * rho * (ms[k + 1] - m) / rk
            x_last, x = x, x_new
            if callback is not None:
                _report(callback, i, x, sigma, sigma_next, m)
        _finish(scope, x, where)
    return x


# --------------------------------------------------------------------------------------------- correctors
def _gauss_legendre(n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Nodes in ``[0, 1]`` and weights (summing to 1) of ``n``-point Gauss-Legendre quadrature."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    t = torch.as_tensor((nodes + 1) / 2, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(weights / 2, dtype=like.dtype, device=like.device)
    return t, w


def _scores(denoiser: Any, xs: Tensor, sigma: Tensor, cond: Conditions | None, where: str) -> Tensor:
    """Scores at a stack ``xs [k, B, C, H, W]`` in one denoiser call of batch ``k * B``."""
    k, b = xs.shape[0], xs.shape[1]
    flat = xs.reshape(k * b, *xs.shape[2:])
    s_rep = sigma.repeat(k)
    c_rep = None if cond is None else (cond if k == 1 else Conditions.cat([cond] * k))
    with checked_call(where):  # a nested check records; the points are not vouched for (x_new is unchecked)
        d = call_denoiser(denoiser, flat, s_rep, c_rep, where)
    return tweedie(d, flat, s_rep).reshape(xs.shape)


def _check_n_quad(n_quad: Any, where: str) -> int:
    if isinstance(n_quad, bool) or not isinstance(n_quad, int) or not 1 <= n_quad <= 64:
        raise fail(where, f"argument `n_quad` is {describe(n_quad)}, expected an int in [1, 64].",
                   "4 nodes integrate polynomials of degree 7 along the segment exactly.")
    return n_quad


def log_prob_difference(denoiser: Any, x: Tensor, x_new: Tensor, sigma: Any, cond: Conditions | None = None, *,
                        n_quad: int = 4) -> Tensor:
    r"""Estimate ``log p_sigma(x_new | cond) - log p_sigma(x | cond)`` from the score alone.

    The line integral of the score along the segment ``x(t) = x + t * (x_new - x)``, by ``n_quad``-point
    Gauss-Legendre quadrature on ``[0, 1]`` (nodes ``t_k``, weights ``w_k`` summing to 1)::

        delta = x_new - x
        log p(x_new) - log p(x) = int_0^1 <s(x + t delta), delta> dt  ~=  sum_k w_k <s(x + t_k delta), delta>

    with ``s = (D - x) / sigma**2``. This is exact when the score is a true gradient (a conservative
    field, as every exact score is), up to the quadrature error, which is zero for scores polynomial of
    degree ``<= 2 n_quad - 2`` along the segment (a Gaussian's score is linear: one node is exact). A
    learned network is not exactly conservative; then this is the work of its vector field along the
    straight segment. The ``n_quad`` evaluations run as one denoiser call of batch ``n_quad * B``.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` start points.
        x_new: ``[B, C, H, W]`` end points.
        sigma: noise level, a float or ``[B]`` (``> 0``).
        cond: conditions of batch ``B``, or ``None``.
        n_quad: number of quadrature nodes in ``[1, 64]``.

    Returns:
        ``[B]`` the estimated log-density differences.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)      # p_sigma = N(0, sigma^2 I)
        >>> x, y = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
        >>> log_prob_difference(D, x, y, 1.0).item()                # -|y|^2/2 + |x|^2/2
        -0.5
    """
    where = "log_prob_difference"
    x, cond = _check_common(where, denoiser, x, cond, None, None, False)
    x_new = _check_x(x_new, where, "x_new")
    if x_new.shape != x.shape:
        raise fail(where, f"argument `x_new` has shape {tuple(x_new.shape)} but `x` has {tuple(x.shape)}; "
                   "expected the same shape.")
    if x_new.device != x.device:
        raise fail(where, f"argument `x_new` is on {x_new.device} but `x` is on {x.device}.",
                   "move it with `x_new.to(x.device)`.")
    n_quad = _check_n_quad(n_quad, where)
    sig = as_sigma(sigma, x.shape[0], where, like=x)
    return _line_integral(denoiser, x, x_new, sig, cond, n_quad, where)


def _line_integral(denoiser: Any, x: Tensor, x_new: Tensor, sig: Tensor, cond: Conditions | None, n_quad: int,
                   where: str) -> Tensor:
    t, w = _gauss_legendre(n_quad, x)
    delta = x_new - x
    pts = x[None] + t.view(-1, 1, 1, 1, 1) * delta[None]
    s = _scores(denoiser, pts, sig, cond, where)
    return torch.einsum("k,kb->b", w, (s * delta[None]).flatten(2).sum(-1))


def langevin_correct(denoiser: Any, x: Tensor, sigma: Any, cond: Conditions | None = None, *,
                     generator: torch.Generator | None = None, callback: Callback | None = None,
                     progress: bool = False, n_steps: int = 1, step_scale: float = 0.1, metropolis: bool = False,
                     log_prob: LogProb | None = None, n_quad: int = 4) -> Tensor:
    r"""Langevin MCMC at a fixed noise level, targeting ``p_sigma(x | cond)``; MALA with ``metropolis=True``.

    With step size ``eps = step_scale * sigma**2`` (one per sample) and score ``s = (D - x) / sigma**2``,
    each of the ``n_steps`` steps proposes::

        x_p = x + eps * s(x) + sqrt(2 eps) * z                         (z ~ N(0, I))

    Without ``metropolis`` the proposal is always taken (unadjusted Langevin: biased by ``O(eps)``). With
    it, **each sample** ``b`` of the batch is accepted or rejected on its own (unlike Du et al. 2023, who
    decide for the whole batch)::

        log a_b = [log p(x_p) - log p(x)]_b + log q(x | x_p)_b - log q(x_p | x)_b
        log q(y | x) = -|y - x - eps * s(x)|**2 / (4 eps)
        x_b <- x_p,b if log(u_b) < log a_b else x_b                    (u_b ~ U(0, 1))

    ``log p(x_p) - log p(x)`` comes from ``log_prob(x, sigma [B], cond) -> [B]`` when given, and otherwise
    from :func:`log_prob_difference` (the score's line integral, ``n_quad`` Gauss-Legendre nodes: exact for
    a conservative score up to quadrature). The chain leaves ``p_sigma`` invariant exactly (MALA) or
    approximately (unadjusted). Cost: ``n_steps + 1`` denoiser calls unadjusted; with MH, ``n_quad`` more per
    step (none with ``log_prob``, which is called ``n_steps + 1`` times instead).

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` current samples at noise level ``sigma``.
        sigma: the noise level, a float or ``[B]`` (``> 0``).
        cond: conditions of batch ``B``, or ``None``.
        generator: source of ``z`` and ``u``.
        callback: called after each step with ``{"i", "x", "sigma", "sigma_next", "denoised", "step_size",
            "accepted"}`` (``sigma_next = sigma``; ``accepted`` is a ``[B]`` bool tensor, all True without MH).
        progress: show a tqdm progress bar.
        n_steps: number of Langevin steps ``>= 1``.
        step_scale: ``eps / sigma**2 > 0``.
        metropolis: accept or reject each sample (MALA).
        log_prob: optional exact ``log p_sigma(x, sigma, cond) -> [B]`` (up to a constant), used by MH.
        n_quad: quadrature nodes for the line integral when ``log_prob`` is ``None``.

    Returns:
        ``[B, C, H, W]`` the samples after ``n_steps`` steps.

    Raises:
        LocalScoreError: on bad shapes, devices, noise levels, step parameters, or bad model outputs.
            Non-finite denoiser outputs raise at the end of the call, naming the first bad step.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)     # p_sigma = N(0, sigma^2 I)
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(4000, 1, 1, 1, generator=g)
        >>> y = langevin_correct(D, x, 1.0, n_steps=5, step_scale=0.5, metropolis=True, generator=g)
        >>> abs(y.var().item() - 1.0) < 0.1
        True
    """
    where = "mala_correct" if metropolis else "langevin_correct"
    x, cond = _check_common(where, denoiser, x, cond, generator, callback, progress)
    if x.device.type != "meta":
        check_finite(x, where, "x")
    sig = as_sigma(sigma, x.shape[0], where, like=x)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise fail(where, f"argument `n_steps` is {describe(n_steps)}, expected an int >= 1.")
    step_scale = _check_float(step_scale, where, "step_scale")
    if step_scale == 0:
        raise fail(where, "argument `step_scale` is 0.0, expected a value > 0.",
                   "the step size is step_scale * sigma**2; try 0.1.")
    if not isinstance(metropolis, bool):
        raise fail(where, f"argument `metropolis` is {describe(metropolis)}, expected a bool.")
    if log_prob is not None and not callable(log_prob):
        raise fail(where, f"argument `log_prob` is {describe(log_prob)}, expected a callable or None.",
                   "pass a function log_prob(x, sigma, cond) -> [B], e.g. an oracle's `log_prob`.")
    n_quad = _check_n_quad(n_quad, where)
    call = checked_call(where)
    with call as scope:
        x = _langevin(scope, call, denoiser, x, sig, cond, generator, callback, progress, n_steps, step_scale,
                      metropolis, log_prob, n_quad, where)
        _finish(scope, x, where)
    return x


def _langevin(scope: CheckScope, call: checked_call, denoiser: Any, x: Tensor, sig: Tensor,
              cond: Conditions | None, generator: torch.Generator | None, callback: Callback | None,
              progress: bool, n_steps: int, step_scale: float, metropolis: bool, log_prob: LogProb | None,
              n_quad: int, where: str) -> Tensor:
    """The loop of :func:`langevin_correct` (inputs checked), run inside its check scope."""
    if call.owned:
        scope.step_info = lambda i: "the initial evaluation" if i < 0 else f"Langevin step {i}"
        scope.begin_step(-1)
    bshape = (-1, 1, 1, 1)
    eps = (step_scale * sig**2).view(bshape)
    d = _denoise(scope, denoiser, x, sig, cond, where)
    s = tweedie(d, x, sig)
    lp = _call_log_prob(log_prob, x, sig, cond, where) if (metropolis and log_prob is not None) else None
    accepted: Tensor
    for i in _steps(n_steps, progress, where):
        if call.owned:
            scope.begin_step(i)
        z = _noise(x, generator)
        x_p = x + eps * s + torch.sqrt(2 * eps) * z
        d_p = _denoise(scope, denoiser, x_p, sig, cond, where)
        s_p = tweedie(d_p, x_p, sig)
        if not metropolis:
            accepted = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            x, d, s = x_p, d_p, s_p
        else:
            if log_prob is not None:
                assert lp is not None
                lp_p = _call_log_prob(log_prob, x_p, sig, cond, where)
                log_ratio = lp_p - lp
            else:
                log_ratio = _line_integral(denoiser, x, x_p, sig, cond, n_quad, where)
            log_q_fwd = -(z**2).flatten(1).sum(-1) / 2          # |x_p - x - eps s(x)|^2 / (4 eps)
            log_q_bwd = -((x - x_p - eps * s_p) ** 2).flatten(1).sum(-1) / (4 * eps.flatten())
            log_a = log_ratio + log_q_bwd - log_q_fwd
            u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
            accepted = torch.log(u) < log_a
            keep = accepted.view(bshape)
            x = torch.where(keep, x_p, x)
            d = torch.where(keep, d_p, d)
            s = torch.where(keep, s_p, s)
            if lp is not None:
                lp = torch.where(accepted, lp_p, lp)
        if callback is not None:
            _report(callback, i, x, sig, sig, d, step_size=eps.flatten(), accepted=accepted)
    if call.owned:
        scope.begin_step(None)
    return x


def mala_correct(denoiser: Any, x: Tensor, sigma: Any, cond: Conditions | None = None, *,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 progress: bool = False, n_steps: int = 1, step_scale: float = 0.1,
                 log_prob: LogProb | None = None, n_quad: int = 4) -> Tensor:
    r"""Metropolis-adjusted Langevin (MALA) with per-sample acceptance: ``langevin_correct(..., metropolis=True)``.

    See :func:`langevin_correct` for the update, the acceptance rule and the arguments. The chain
    leaves ``p_sigma(x | cond)`` exactly invariant when ``log_prob`` is exact, or when the score is
    conservative and the quadrature exact.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.
        x: ``[B, C, H, W]`` current samples at noise level ``sigma``.
        sigma: the noise level, a float or ``[B]`` (``> 0``).
        cond: conditions of batch ``B``, or ``None``.
        generator: source of the proposal and acceptance noise.
        callback: called after each step (see :func:`langevin_correct`).
        progress: show a tqdm progress bar.
        n_steps: number of steps ``>= 1``.
        step_scale: ``eps / sigma**2 > 0``.
        log_prob: optional exact ``log p_sigma(x, sigma, cond) -> [B]``.
        n_quad: quadrature nodes for the line integral when ``log_prob`` is ``None``.

    Returns:
        ``[B, C, H, W]`` the samples after ``n_steps`` steps.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)
        >>> rates = []
        >>> x = mala_correct(D, torch.zeros(8, 1, 2, 2), 1.0, step_scale=4.0, n_steps=3,
        ...                  generator=torch.Generator().manual_seed(1),
        ...                  callback=lambda info: rates.append(info["accepted"].float().mean().item()))
        >>> len(rates), all(0 <= r <= 1 for r in rates)
        (3, True)
    """
    return langevin_correct(denoiser, x, sigma, cond, generator=generator, callback=callback, progress=progress,
                            n_steps=n_steps, step_scale=step_scale, metropolis=True, log_prob=log_prob,
                            n_quad=n_quad)


def _call_log_prob(log_prob: LogProb, x: Tensor, sigma: Tensor, cond: Conditions | None, where: str) -> Tensor:
    out = log_prob(x, sigma, cond)
    if not isinstance(out, torch.Tensor) or out.shape != (x.shape[0],):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else describe(out)
        raise fail(where, f"`log_prob` returned {got}, expected a tensor of shape [B] = ({x.shape[0]},).",
                   "log_prob(x, sigma, cond) returns one log-density per image.")
    if x.device.type != "meta":
        check_flag(torch.isnan(out), lambda: fail(where, "`log_prob` returned NaN values.",
                                                  "check the log-density at these points."))
    return out.to(x.dtype)
