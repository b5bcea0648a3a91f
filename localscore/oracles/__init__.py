"""Analytic distributions with closed-form scores at every noise level: the test oracles.

Every oracle is an :class:`AnalyticDistribution`: it is a denoiser (``oracle(x, sigma, cond)``), and has
``score``, ``log_prob`` and exact ``sample``. An oracle is defined on whole images of its shape, so it
declares ``translation_equivariant = False`` and compositions never evaluate it on crops.

The patch-local empirical machine moved to :mod:`localscore.empirical` in 0.2;
``localscore.oracles.PatchLocalEmpirical`` still resolves, with a ``DeprecationWarning``, until 0.3.
"""

from __future__ import annotations

from .._moved import moved_getattr
from ._base import AnalyticDistribution
from .gaussian import Gaussian, GaussianMixture
from .objects import FactorizedObjects, OverlappingObjects

__all__ = ["AnalyticDistribution", "FactorizedObjects", "Gaussian", "GaussianMixture", "OverlappingObjects"]

# Names of 0.1.0 that moved out of this package; they warn until 0.3.
__getattr__ = moved_getattr(__name__, {"PatchLocalEmpirical": "localscore.empirical.PatchLocalEmpirical"})
