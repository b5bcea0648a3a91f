"""Test your own models for locality: assertions, hypothesis strategies, a test mixin, a pytest plugin.

The assertions and reference models need only torch; :mod:`localscore.testing.strategies` and
:class:`LocalScoreTesterMixin` need hypothesis and pytest (the ``test`` extra).
"""

from __future__ import annotations

from typing import Any

from .models import GlobalConvDenoiser, LocalConvDenoiser, render_conditions

__all__ = [
    "GlobalConvDenoiser",
    "LocalConvDenoiser",
    "render_conditions",
]


def __getattr__(name: str) -> Any:
    if name == "strategies":
        from . import strategies

        return strategies
    raise AttributeError(f"module 'localscore.testing' has no attribute {name!r}")
