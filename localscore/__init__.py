"""localscore: local conditional score models for diffusion.

Build score networks whose output at a pixel depends only on nearby pixels and nearby conditioners,
compose per-object conditional scores at sampling time (projective composition), sample, and
measure and unit-test locality.
"""

from __future__ import annotations

from ._errors import LocalScoreError
from .conditions import Conditions
from .denoisers import Denoiser, bind, score

__version__ = "0.1.0"

__all__ = [
    "Conditions",
    "Denoiser",
    "LocalScoreError",
    "__version__",
    "bind",
    "score",
]
