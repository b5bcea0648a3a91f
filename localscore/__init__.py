"""localscore: local conditional score models for diffusion.

Build score networks whose output at a pixel depends only on nearby pixels and nearby conditioners,
compose per-object conditional scores at sampling time (projective composition), sample, and
measure and unit-test locality.

The top level holds the few names every user needs; the rest lives in submodules:
:mod:`~localscore.denoisers`, :mod:`~localscore.schedules`, :mod:`~localscore.sampling`,
:mod:`~localscore.compose`, :mod:`~localscore.masks`, :mod:`~localscore.nn`, :mod:`~localscore.metrics`,
:mod:`~localscore.oracles`, :mod:`~localscore.train`, :mod:`~localscore.lengthgen` (the length-generalization pipeline),
and (importing optional dependencies) :mod:`~localscore.testing` and :mod:`~localscore.adapters.diffusers`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import attach as _attach

# The names below load on first access (PEP 562), so `import localscore` (and the pytest plugin that
# pytest imports in every run of an environment where localscore is installed) costs no torch import.
# Type checkers see the plain imports.
if TYPE_CHECKING:
    from . import compose, denoisers, masks, metrics, nn, oracles, sampling, schedules
    from ._errors import LocalScoreError
    from .conditions import Conditions, ConditionSet
    from .denoisers import Denoiser, bind, score
    from .nn import GlobalConditionalDenoiser, LocalConditionalDenoiser, enforce_locality, localize

__version__ = "0.1.0"

__all__ = [
    "ConditionSet",
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

# public name -> the submodule that defines it (submodules themselves load by name)
_LAZY: dict[str, str] = {
    "ConditionSet": ".conditions",
    "Conditions": ".conditions",
    "Denoiser": ".denoisers",
    "GlobalConditionalDenoiser": ".nn",
    "LocalConditionalDenoiser": ".nn",
    "LocalScoreError": "._errors",
    "bind": ".denoisers",
    "enforce_locality": ".nn",
    "localize": ".nn",
    "score": ".denoisers",
}


_load, __dir__ = _attach(__name__, _LAZY, __all__)

if not TYPE_CHECKING:  # hidden from type checkers, which would otherwise type every unknown name as Any
    __getattr__ = _load
