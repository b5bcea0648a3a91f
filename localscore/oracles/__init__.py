"""Analytic distributions with closed-form scores at every noise level: the test oracles.

Every oracle is an :class:`AnalyticDistribution`: it is a denoiser (``oracle(x, sigma, cond)``), and has
``score``, ``log_prob`` and exact ``sample``.
"""

from __future__ import annotations

from ._base import AnalyticDistribution
from .gaussian import Gaussian, GaussianMixture
from .objects import FactorizedObjects, OverlappingObjects
from .patch_local import PatchLocalEmpirical

__all__ = ["AnalyticDistribution", "FactorizedObjects", "Gaussian", "GaussianMixture", "OverlappingObjects",
           "PatchLocalEmpirical"]
