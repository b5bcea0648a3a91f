r"""Denoising losses and noise-level distributions for training any denoiser of the protocol.

Every objective is a weighted squared error of the denoiser's output, written per image as

``L_i = w(sigma_i) * mean_{c,h,w} (D(x0_i + sigma_i eps_i, sigma_i, cond_i) - x0_i)^2``

and averaged over the batch, with

* ``"edm"``: ``w = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` (Karras et al. 2022), the loss of
  an :class:`~localscore.denoisers.EDMPreconditioner`'s raw network against its effective target;
* ``"epsilon"``: ``w = 1 / sigma^2``, which is exactly ``mean (eps_hat - eps)^2`` with
  ``eps_hat = (x - D) / sigma`` (the loss of a noise-predicting model behind
  :class:`~localscore.denoisers.EpsilonDenoiser`);
* ``"v"``: ``w = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``, exactly ``mean (v_hat - v)^2`` for a
  :class:`~localscore.denoisers.VDenoiser` of the same ``sigma_data`` (``v_hat - v = (D - x0) / c_out``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .._checks import as_sigma, check_image
from .._errors import describe, fail
from ..conditions import Conditions
from ..denoisers import Denoiser, call_denoiser

__all__ = ["Objective", "SigmaSampling", "denoising_loss", "drop_conditions", "loss_weight", "sample_sigmas"]

Objective = Literal["edm", "epsilon", "v"]
SigmaSampling = Literal["lognormal", "loguniform", "discrete"]


def loss_weight(sigma: Tensor, objective: Objective = "edm", sigma_data: float = 0.5) -> Tensor:
    """The weight ``w(sigma)`` of an objective (see the module docstring), for ``sigma [B]``.

    Examples:
        >>> loss_weight(torch.tensor([0.5]), "edm", 0.5).item()    # (0.25 + 0.25) / 0.0625
        8.0
        >>> loss_weight(torch.tensor([2.0]), "epsilon").item()
        0.25
    """
    if objective in ("edm", "v"):
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    if objective == "epsilon":
        return 1.0 / sigma**2
    raise fail("loss_weight", f"`objective` is {objective!r}, expected 'edm', 'epsilon' or 'v'.")


def drop_conditions(cond: Conditions | None, drop: Tensor) -> Conditions | None:
    """Conditioner dropout: images where ``drop [B]`` is True get the empty set (all slots invalid).

    Examples:
        >>> c = Conditions.from_lists([[(1, 1)], [(2, 2)]])
        >>> drop_conditions(c, torch.tensor([True, False])).counts().tolist()
        [0, 1]
    """
    if cond is None:
        return None
    if not isinstance(cond, Conditions):
        raise fail("drop_conditions", f"`cond` is {describe(cond)}, expected Conditions or None.")
    if drop.shape != (cond.batch_size,):
        raise fail("drop_conditions", f"`drop` has shape {tuple(drop.shape)}, expected [{cond.batch_size}].")
    return Conditions(cond.pos, cond.attr, cond.valid & ~drop.to(cond.device, torch.bool).view(-1, 1))


def _find_sigmas(model: object) -> Tensor | None:
    seen: set[int] = set()
    obj = model
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        s = getattr(obj, "sigmas", None)
        if isinstance(s, torch.Tensor) and s.dim() == 1:
            return s
        obj = getattr(obj, "inner", None) or getattr(obj, "module", None)
    return None


def sample_sigmas(
    n: int,
    generator: torch.Generator | None,
    *,
    sampling: SigmaSampling = "lognormal",
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    model: Denoiser | None = None,
) -> Tensor:
    """Draw ``n`` training noise levels ``[n]`` (float32, CPU) from ``generator``.

    * ``"lognormal"``: ``sigma = exp(p_mean + p_std * N(0, 1))`` (EDM);
    * ``"loguniform"``: ``log sigma ~ U(log sigma_min, log sigma_max)``;
    * ``"discrete"``: ``sigma = sigmas[t]``, ``t ~ U{0..T-1}``, from the ``sigmas`` table of ``model``
      (a :class:`~localscore.denoisers.DiscreteDDPMDenoiser`, found through ``.inner``/``.module``).

    Examples:
        >>> s = sample_sigmas(1000, torch.Generator().manual_seed(0))
        >>> round(float(s.log().mean()), 1), round(float(s.log().std()), 1)
        (-1.2, 1.2)
    """
    where = "sample_sigmas"
    if sampling == "lognormal":
        return torch.exp(p_mean + p_std * torch.randn(n, generator=generator))
    if sampling == "loguniform":
        if not 0 < sigma_min < sigma_max:
            raise fail(where, f"need 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}.")
        u = torch.rand(n, generator=generator)
        return torch.exp(math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min)))
    if sampling == "discrete":
        table = _find_sigmas(model)
        if table is None:
            raise fail(where, "sigma sampling 'discrete' needs a model with a `sigmas` table "
                       "(a DiscreteDDPMDenoiser); none was found.",
                       "wrap the network in DiscreteDDPMDenoiser, or use 'lognormal'.")
        t = torch.randint(table.numel(), (n,), generator=generator)
        return table.detach().cpu().float()[t]
    raise fail(where, f"`sampling` is {sampling!r}, expected 'lognormal', 'loguniform' or 'discrete'.")


def denoising_loss(
    denoiser: Denoiser,
    x0: Tensor,
    sigma: Tensor,
    noise: Tensor,
    cond: Conditions | None = None,
    *,
    objective: Objective = "edm",
    sigma_data: float = 0.5,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """The weighted denoising loss of the module docstring (pure: noise and sigma are given).

    Args:
        denoiser: a denoiser ``D(x, sigma, cond)``.
        x0: ``[B, C, H, W]`` clean images.
        sigma: ``[B]`` noise levels (or a float).
        noise: ``[B, C, H, W]`` standard normal noise ``eps``.
        cond: conditioner sets, or ``None``.
        objective: ``"edm"``, ``"epsilon"`` or ``"v"``.
        sigma_data: the data standard deviation of the weights.
        reduction: ``"mean"`` (a scalar) or ``"none"`` (``[B]``, one ``L_i`` per image).

    Examples:
        >>> D = lambda x, s, c=None: torch.zeros_like(x)        # predicts 0: error = -x0
        >>> x0 = torch.ones(2, 1, 2, 2)
        >>> denoising_loss(D, x0, torch.tensor([0.5, 0.5]), torch.zeros_like(x0)).item()   # w = 8
        8.0
    """
    where = "denoising_loss"
    x0 = check_image(x0, where, "x0")
    s = as_sigma(sigma, x0.shape[0], where, like=x0)
    if not isinstance(noise, torch.Tensor) or noise.shape != x0.shape:
        raise fail(where, f"`noise` is {describe(noise)}, expected a tensor shaped like x0 {tuple(x0.shape)}.")
    x = x0 + s.view(-1, 1, 1, 1) * noise
    d = call_denoiser(denoiser, x, s, cond, where)
    per_image = loss_weight(s, objective, sigma_data) * ((d - x0) ** 2).mean(dim=(1, 2, 3))
    if reduction == "none":
        return per_image
    if reduction != "mean":
        raise fail(where, f"`reduction` is {reduction!r}, expected 'mean' or 'none'.")
    return per_image.mean()
