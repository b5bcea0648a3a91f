r"""diffusers schedulers and localscore's samplers: noise-level grids, starting points, and a diffusers
scheduler's sampling loop driven by any localscore denoiser."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..._checks import check_image
from ..._errors import describe, fail
from ...denoisers import DiscreteDDPMDenoiser, call_denoiser
from .denoiser import _prediction_type

__all__ = ["sample_with_scheduler", "scheduler_sigmas", "scheduler_start"]


def _check_scheduler(scheduler: Any, where: str) -> None:
    for attr in ("set_timesteps", "step", "scale_model_input", "timesteps", "alphas_cumprod", "config"):
        if not hasattr(scheduler, attr):
            raise fail(where, f"argument `scheduler` is {describe(scheduler)}, which has no `{attr}`; expected a "
                       "diffusers scheduler of a variance-preserving model (DDIM, DDPM, Euler, DPM-Solver, ...).")


def _check_steps(scheduler: Any, steps: Any, where: str) -> int:
    """``num_inference_steps``: an int in ``[1, num_train_timesteps]`` (diffusers refuses more, deep inside)."""
    config = getattr(scheduler, "config", {})
    get = config.get if hasattr(config, "get") else (lambda k, d=None: getattr(config, k, d))
    ac = getattr(scheduler, "alphas_cumprod", None)
    T = get("num_train_timesteps", None)
    if not isinstance(T, int) or isinstance(T, bool):
        T = int(ac.numel()) if isinstance(ac, torch.Tensor) else None
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or (T is not None and steps > T):
        rng = f"in [1, {T}] (the scheduler's num_train_timesteps)" if T is not None else ">= 1"
        raise fail(where, f"`num_inference_steps` is {describe(steps)}, expected an int {rng}.",
                   "sample with fewer steps than the model was trained with.")
    return steps


def _clips(scheduler: Any) -> str | None:
    """What the scheduler does to the predicted sample that an unclipped sampler does not, or ``None``."""
    config = getattr(scheduler, "config", {})
    get = config.get if hasattr(config, "get") else (lambda k, d=None: getattr(config, k, d))
    if get("thresholding", False):
        return "dynamic thresholding (`thresholding=True`)"
    if get("clip_sample", False):
        return f"`clip_sample=True` (the predicted x0 is clamped to +-{get('clip_sample_range', 1.0)})"
    return None


def _warn_clipping(scheduler: Any, where: str) -> None:
    what = _clips(scheduler)
    if what is not None:
        warnings.warn(f"{where}: the scheduler {type(scheduler).__name__} applies {what}, which localscore's samplers "
                      "do not: on this grid they follow the unclipped sampler, not this scheduler (the samples can "
                      "differ by orders of magnitude). Build the scheduler with `clip_sample=False, "
                      "thresholding=False`, or sample through the scheduler itself with `sample_with_scheduler`, "
                      "which reproduces the clipping.", UserWarning, stacklevel=3)


def _timestep_index(t: Tensor, T: int, where: str) -> int:
    v = float(t)
    i = round(v)
    if abs(v - i) > 1e-4 or not 0 <= i < T:
        raise fail(where, f"the scheduler's timestep {v!r} is not an integer in [0, {T}); expected discrete "
                   "timesteps into alphas_cumprod.",
                   "use a scheduler with integer timesteps (DDIM, DDPM, DPMSolverMultistep, UniPC, Euler "
                   "with timestep_spacing='leading'), or sample with localscore's samplers.")
    return i


def _grid(scheduler: Any, where: str) -> Tensor:
    """``[N + 1]`` float64 noise levels (CPU) of the scheduler's current timesteps, last one included."""
    steps = scheduler.timesteps
    own = getattr(scheduler, "sigmas", None)
    if isinstance(own, torch.Tensor) and own.dim() == 1 and own.numel() == len(steps) + 1:
        # schedulers that keep their own sigma grid (Euler, LMS, DPM-Solver, UniPC, ...)
        return own.detach().double().cpu()
    ac = scheduler.alphas_cumprod.double().cpu()
    a = ac[[_timestep_index(t, ac.numel(), where) for t in steps]]
    final = 0.0
    if getattr(scheduler.config, "set_alpha_to_one", True) is False and "DDIM" in type(scheduler).__name__:
        final = math.sqrt((1 - float(ac[0])) / float(ac[0]))
    return torch.cat([torch.sqrt((1 - a) / a), torch.tensor([final], dtype=torch.float64)])


def scheduler_sigmas(scheduler: Any, num_inference_steps: int | None = None, *,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""The noise-level grid ``[N + 1]`` of a diffusers scheduler's timesteps, in localscore's variables.

    ``sigmas[i] = sqrt((1 - a[t_i]) / a[t_i])`` for the scheduler's timesteps ``t_0 > ... > t_{N-1}``
    (after ``set_timesteps(num_inference_steps)`` when given), and the final level ``0`` (or, for DDIM
    with ``set_alpha_to_one=False``, ``sqrt((1 - a[0]) / a[0])``, where DDIM ends). Schedulers that keep
    their own grid ``scheduler.sigmas`` of ``N + 1`` levels (Euler, LMS, DPM-Solver, UniPC) return it. With this grid,
    deterministic DDIM in diffusers and :func:`localscore.sampling.sample_ddim` on
    :class:`DiffusersDenoiser` take the same steps, **unless the scheduler clips or thresholds the predicted
    sample** (``clip_sample=True``, the default of ``DDIMScheduler()``, or ``thresholding=True``): localscore's
    samplers never clip, so this warns (``UserWarning``); sample through :func:`sample_with_scheduler` to keep
    the clipping.

    Examples:
        >>> from diffusers import DDIMScheduler
        >>> s = scheduler_sigmas(DDIMScheduler(clip_sample=False), 4)          # timesteps 750, 500, 250, 0
        >>> [round(v, 3) for v in s.tolist()]
        [17.379, 3.443, 0.958, 0.01, 0.0]
    """
    where = "scheduler_sigmas"
    _check_scheduler(scheduler, where)
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise fail(where, f"`dtype` is {describe(dtype)}, expected None or a floating torch.dtype.")
    if num_inference_steps is not None:
        scheduler.set_timesteps(_check_steps(scheduler, num_inference_steps, where))
    _warn_clipping(scheduler, where)
    return _grid(scheduler, where).to(device=device, dtype=dtype or torch.get_default_dtype())


def scheduler_start(scheduler: Any, latents: Tensor, num_inference_steps: int) -> tuple[Tensor, Tensor]:
    r"""The starting point and noise-level grid for localscore's samplers that match a scheduler's run.

    After ``scheduler.set_timesteps(num_inference_steps)``, ``sigmas = scheduler_sigmas(scheduler)`` and
    ``x = scheduler.scale_model_input(latents, t_0) * sqrt(1 + sigmas[0]**2)``: the scheduler's starting
    latents (``randn * scheduler.init_noise_sigma``, variance preserving for DDIM, variance exploding for
    Euler) in localscore's variables. Then ``sample_euler(D, x, sigmas)`` takes the steps of diffusers'
    ``EulerDiscreteScheduler``, ``sample_ddim(D, x, sigmas)`` those of ``DDIMScheduler`` (with
    ``clip_sample=False``: a clipping scheduler warns, see :func:`scheduler_sigmas`),
    ``sample_dpmpp_2m`` those of ``DPMSolverMultistepScheduler`` and ``sample_unipc`` those of
    ``UniPCMultistepScheduler`` (``solver_type="bh2"``).

    Returns:
        ``(x [B, C, H, W], sigmas [N + 1])`` in ``latents``' dtype and device.

    Examples:
        >>> import torch
        >>> from diffusers import EulerDiscreteScheduler
        >>> sched = EulerDiscreteScheduler(timestep_spacing="leading")
        >>> sched.set_timesteps(4)
        >>> x, sigmas = scheduler_start(sched, torch.ones(1, 1, 1, 1) * sched.init_noise_sigma, 4)
        >>> round(x.item(), 4) == round(float(sched.init_noise_sigma), 4), len(sigmas)   # VE already
        (True, 5)
    """
    where = "scheduler_start"
    _check_scheduler(scheduler, where)
    latents = check_image(latents, where, "latents")
    _check_steps(scheduler, num_inference_steps, where)
    sigmas = scheduler_sigmas(scheduler, num_inference_steps, device=latents.device, dtype=latents.dtype)
    x_in = scheduler.scale_model_input(latents, scheduler.timesteps[0])
    return x_in * torch.sqrt(1 + sigmas[0] ** 2), sigmas


def _discrete_models(denoiser: Any, depth: int = 6) -> list[DiscreteDDPMDenoiser]:
    """Every :class:`DiscreteDDPMDenoiser` reachable from ``denoiser``: its submodules, and through the attributes,
    lists and dicts of plain objects (a composition holds its background and components), each once."""
    found: dict[int, DiscreteDDPMDenoiser] = {}
    seen: set[int] = set()

    def walk(obj: Any, level: int) -> None:
        if id(obj) in seen or level > depth or isinstance(obj, (Tensor, str, bytes, int, float, type)):
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            for m in obj.modules():
                if isinstance(m, DiscreteDDPMDenoiser):
                    found[id(m)] = m
            return
        if isinstance(obj, dict):
            items: Any = obj.values()
        elif isinstance(obj, (list, tuple)):
            items = obj
        else:
            attrs = getattr(obj, "__dict__", None)
            slots = [getattr(obj, k, None) for k in getattr(type(obj), "__slots__", ()) if isinstance(k, str)]
            items = [*(attrs.values() if isinstance(attrs, dict) else ()), *slots]
        for item in items:
            walk(item, level + 1)

    walk(denoiser, 0)
    return list(found.values())


class _SchedulerTimesteps:
    """While active, every :class:`DiscreteDDPMDenoiser` inside the denoiser gives its network the scheduler's
    own timestep ``t`` for the step's noise level: ``sigma_to_t(s) = t where s == sigma else (its own map)``.

    The override is an instance attribute set on entry and removed on exit (the models are unchanged after the
    call); the comparison runs on the device (no host read per step).
    """

    def __init__(self, denoiser: Any) -> None:
        self.models = _discrete_models(denoiser)
        self.sigma: Tensor | None = None
        self.t: Tensor | None = None
        self._saved: list[tuple[DiscreteDDPMDenoiser, Any]] = []

    def __enter__(self) -> _SchedulerTimesteps:
        for m in self.models:
            own = m.__dict__.get("sigma_to_t")
            self._saved.append((m, own))
            m.__dict__["sigma_to_t"] = self._lookup(m.sigma_to_t)
        return self

    def _lookup(self, own: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        def sigma_to_t(sigma: Tensor) -> Tensor:
            t = own(sigma)
            if self.sigma is None or self.t is None:
                return t
            hit = sigma == self.sigma.to(sigma.dtype)
            return torch.where(hit, self.t.to(device=t.device, dtype=t.dtype), t)
        return sigma_to_t

    def __exit__(self, *args: Any) -> None:
        for m, own in self._saved:
            if own is None:
                m.__dict__.pop("sigma_to_t", None)
            else:
                m.__dict__["sigma_to_t"] = own
        self._saved.clear()

    def steps(self, timesteps: Any, grid: Tensor, dtype: torch.dtype) -> Iterator[tuple[int, Any, Tensor, Tensor]]:
        """``(i, t, sigma (0-d, x's dtype), sigma (float64))`` for each step, with the override pointed at it."""
        for i, t in enumerate(timesteps):
            sig64 = grid[i]
            sigma = sig64.to(dtype)
            self.sigma = sigma
            self.t = torch.as_tensor(t).double()
            yield i, t, sigma, sig64
        self.sigma = self.t = None


def sample_with_scheduler(
    denoiser: Any,
    scheduler: Any,
    latents: Tensor,
    cond: Any = None,
    *,
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> Tensor:
    r"""Run a diffusers scheduler's sampling loop on any localscore denoiser (e.g. a composition).

    At each timestep ``t`` (``sigma = sqrt((1 - a) / a)`` with ``a = alphas_cumprod[t]``, or the
    scheduler's own ``sigmas[i]`` for schedulers that keep a sigma grid, such as Euler or DPM-Solver;
    then ``a = 1 / (1 + sigma**2)``)::

        x_in = scheduler.scale_model_input(latents, t)       (what a UNet would see: VP latents)
        x    = x_in * sqrt(1 + sigma**2)                       (localscore's variables)
        d    = denoiser(x, sigma, cond)
        eps  = (x - d) / sigma
        out  = eps | sqrt(a) * eps - sqrt(1 - a) * d | d       (epsilon | v_prediction | sample)
        latents = scheduler.step(out, t, latents).prev_sample

    so the scheduler receives exactly the model output it expects, computed from ``D``. **The network sees the
    scheduler's own timestep** ``t``: during the call, every :class:`~localscore.denoisers.DiscreteDDPMDenoiser`
    reachable from ``denoiser`` (a :class:`DiffusersDenoiser`, also inside a composition or ``bind``) maps the
    step's ``sigma`` to ``t`` instead of interpolating its table, so the pipeline's loop is reproduced whatever the
    timestep spacing (integer timesteps with Karras sigmas in DPM-Solver and UniPC, fractional ones in Euler)
    and whatever the denoiser's ``quantize``. A denoiser that hides its DiscreteDDPMDenoiser from attribute
    traversal (a closure) keeps its own map. Clipping and thresholding (``clip_sample``, ``thresholding``) happen
    in ``scheduler.step`` and are reproduced.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]`` (any localscore denoiser).
        scheduler: a diffusers scheduler with integer timesteps into ``alphas_cumprod``.
        latents: ``[B, C, H, W]`` starting latents in the scheduler's own variables (for DDIM
            ``randn * scheduler.init_noise_sigma``).
        cond: passed to the denoiser (a :class:`PromptConditions`, or ``None`` for a bound one).
        num_inference_steps: number of scheduler steps.
        generator: passed to ``scheduler.step`` when it accepts one (stochastic schedulers).
        callback: called after each step with ``{"i", "t", "sigma", "latents", "denoised"}``.

    Returns:
        ``[B, C, H, W]`` the final latents (decode them with the pipeline's VAE).
    """
    where = "sample_with_scheduler"
    if not callable(denoiser):
        raise fail(where, f"argument `denoiser` is {describe(denoiser)}, expected a callable D(x, sigma, cond).")
    _check_scheduler(scheduler, where)
    latents = check_image(latents, where, "latents")
    _check_steps(scheduler, num_inference_steps, where)
    if callback is not None and not callable(callback):
        raise fail(where, f"`callback` is {describe(callback)}, expected None or a callable taking a dict.")
    pred = _prediction_type(scheduler, None, where)
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    grid = _grid(scheduler, where).to(device=latents.device)
    takes_gen = "generator" in inspect.signature(scheduler.step).parameters
    B = latents.shape[0]
    with _SchedulerTimesteps(denoiser) as own_t:
        for i, t, sigma, sig64 in own_t.steps(scheduler.timesteps, grid, latents.dtype):
            x_in = scheduler.scale_model_input(latents, t)
            x = x_in * torch.sqrt(1 + sigma**2)
            d = call_denoiser(denoiser, x, sigma.expand(B), cond, where)   # shape and finiteness checked
            eps = (x - d) / sigma
            if pred == "epsilon":
                out = eps
            elif pred == "v_prediction":  # a = 1 / (1 + sigma^2): sqrt(a) = 1 / sqrt(1 + s^2), sqrt(1 - a) = s sqrt(a)
                ra = (1 / torch.sqrt(1 + sig64**2)).to(x.dtype)
                out = ra * eps - (sig64 * ra).to(x.dtype) * d
            else:
                out = d
            step_kwargs: dict[str, Any] = {"return_dict": False}
            if takes_gen and generator is not None:
                step_kwargs["generator"] = generator
            latents = scheduler.step(out, t, latents, **step_kwargs)[0]
            if callback is not None:
                callback({"i": i, "t": t, "sigma": sigma, "latents": latents, "denoised": d})
    return latents
