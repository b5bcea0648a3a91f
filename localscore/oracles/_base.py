"""The interface every analytic oracle implements (private base class)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from .._checks import as_sigma, check_image
from .._errors import fail
from ..conditions import Conditions
from ..denoisers import tweedie

__all__ = ["AnalyticDistribution"]


class AnalyticDistribution(ABC):
    r"""A distribution over images ``[C, H, W]`` with closed-form noised densities and scores.

    At noise level ``sigma`` the noised density is ``p_sigma = p_0 * N(0, sigma**2 I)``. Subclasses
    implement :meth:`denoise` (the exact posterior mean ``E[x0 | x_sigma = x, cond]``),
    :meth:`log_prob` (``log p_sigma(x | cond)``) and :meth:`sample`. The score follows from Tweedie,
    ``score = (denoise - x) / sigma**2`` (:func:`~localscore.denoisers.tweedie`), and
    ``oracle(x, sigma, cond)`` is ``denoise``, so every oracle is a :class:`~localscore.Denoiser`.

    Computations run in the oracle's ``dtype`` (float64 by default) and return in ``x``'s dtype.
    """

    #: ``(C, H, W)``, the image shape.
    shape: tuple[int, int, int]

    #: ``False``: an oracle is defined on the whole image, so it must never be evaluated on crops.
    translation_equivariant = False

    @abstractmethod
    def denoise(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        """Exact ``E[x0 | x_sigma = x, cond]`` for ``x [B, C, H, W]``, ``sigma [B]`` (or a float)."""

    @abstractmethod
    def log_prob(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        """``[B]``: ``log p_sigma(x | cond)``; ``sigma = 0`` is the data density where it exists."""

    @abstractmethod
    def sample(self, n: int | Conditions, *, sigma: float = 0.0,
               generator: torch.Generator | None = None) -> Tensor:
        """Exact samples of ``x_sigma``: ``n`` images, or one per conditioner set of a batch."""

    def score(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        """``grad_x log p_sigma(x | cond) = (denoise(x, sigma, cond) - x) / sigma**2`` (Tweedie)."""
        x = check_image(x, f"{type(self).__name__}.score")
        s = as_sigma(sigma, x.shape[0], f"{type(self).__name__}.score", like=x)
        return tweedie(self.denoise(x, s, cond), x, s)

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        return self.denoise(x, sigma, cond)

    def _check_x(self, x: Any, where: str) -> Tensor:
        x = check_image(x, where)
        if tuple(x.shape[1:]) != tuple(self.shape):
            raise fail(where, f"`x` has image shape {tuple(x.shape[1:])}, expected {tuple(self.shape)} "
                       "(this oracle's [C, H, W]).")
        return x


def check_sigma_range(s: Tensor, dtype: torch.dtype, where: str, name: str = "sigma") -> None:
    """Raise if ``sigma**2`` (with the oracles' sums of a few such terms) overflows ``dtype``, or underflows to 0.

    Without it a huge finite ``sigma`` (``1e200`` in float64, ``1e20`` in float32) gives ``inf`` variances and
    NaN posteriors, silently. Reads ``max(sigma)`` back once.
    """
    if s.numel() == 0 or s.device.type == "meta":
        return
    limit = math.sqrt(torch.finfo(dtype).max) / 1e3
    low = math.sqrt(torch.finfo(dtype).tiny) * 1e3
    top = float(s.detach().abs().max())
    positive = s.detach().abs()[s.detach() != 0]
    bottom = float(positive.min()) if positive.numel() else low
    if bottom < low:
        raise fail(where, f"`{name}` = {bottom:.3g} is too small for this oracle's {dtype} arithmetic: sigma**2 "
                   f"underflows to 0 (and the score divides by it); expected {name} >= {low:.3g} (or exactly 0 "
                   "where zero is allowed).", "use a larger noise level; the data itself is sigma = 0.")
    if top > limit:
        raise fail(where, f"`{name}` = {top:.3g} is too large for this oracle's {dtype} arithmetic: sigma**2 "
                   f"overflows; expected {name} <= {limit:.3g}.",
                   "use a smaller noise level" + ("" if dtype == torch.float64 else
                                                  ", or build the oracle with dtype=torch.float64") + ".")


def check_samples(x: Tensor, where: str, sigma: float) -> Tensor:
    """Return the samples ``x``, or raise if they overflow their dtype (a ``sigma`` too large for it)."""
    if x.device.type != "meta" and not bool(torch.isfinite(x).all()):
        big = torch.finfo(x.dtype).max
        raise fail(where, f"samples at sigma = {sigma:.3g} overflow {x.dtype} (largest finite value {big:.3g}).",
                   "use a smaller sigma, or a wider `dtype` (e.g. dtype=torch.float64).")
    return x
