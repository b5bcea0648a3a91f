"""localscore: local conditional score models for diffusion.

Build score networks whose output at a pixel depends only on nearby pixels and nearby conditioners,
compose per-object conditional scores at sampling time (projective composition), sample, and
measure and unit-test locality.

The top level holds the few names every user needs; the rest lives in submodules:
:mod:`~localscore.denoisers`, :mod:`~localscore.schedules`, :mod:`~localscore.sampling`,
:mod:`~localscore.compose`, :mod:`~localscore.masks`, :mod:`~localscore.nn`, :mod:`~localscore.metrics`,
:mod:`~localscore.oracles`, :mod:`~localscore.data`, :mod:`~localscore.train`, :mod:`~localscore.evaluate`,
and (importing optional dependencies) :mod:`~localscore.testing` and :mod:`~localscore.adapters.diffusers`.
"""

from __future__ import annotations

from . import compose, denoisers, masks, metrics, nn, oracles, sampling, schedules
from ._errors import LocalScoreError
from .conditions import Conditions
from .denoisers import Denoiser, bind, score
from .nn import GlobalConditionalDenoiser, LocalConditionalDenoiser, enforce_locality, localize

__version__ = "0.1.0"

__all__ = [
    "Conditions",
    "Denoiser",
    "GlobalConditionalDenoiser",
    "LocalConditionalDenoiser",
    "LocalScoreError",
    "__version__",
    "bind",
    "compose",
    "denoisers",
    "enforce_locality",
    "localize",
    "masks",
    "metrics",
    "nn",
    "oracles",
    "sampling",
    "schedules",
    "score",
]
