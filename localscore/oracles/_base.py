"""The interface every analytic oracle implements (private base class)."""

from __future__ import annotations

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
