"""Test your own models for locality: assertions, hypothesis strategies, a test mixin, a pytest plugin.

The assertions and the reference models need only torch. :mod:`localscore.testing.strategies` and
:class:`LocalScoreTesterMixin` need hypothesis and pytest (the ``test`` extra); they are imported on
first use, so ``import localscore.testing`` works without them.
"""

from __future__ import annotations

from typing import Any

from .assertions import (
    assert_conditionally_local,
    assert_permutation_invariant,
    assert_pixel_local,
    assert_projective,
)
from .models import GlobalConvDenoiser, LocalConvDenoiser, render_conditions

__all__ = [
    "GlobalConvDenoiser",
    "LocalConvDenoiser",
    "LocalScoreTesterMixin",
    "assert_conditionally_local",
    "assert_permutation_invariant",
    "assert_pixel_local",
    "assert_projective",
    "render_conditions",
    "strategies",
]


def __getattr__(name: str) -> Any:
    import importlib

    if name == "strategies":
        return importlib.import_module(".strategies", __name__)
    if name == "LocalScoreTesterMixin":
        return importlib.import_module(".mixin", __name__).LocalScoreTesterMixin
    raise AttributeError(f"module 'localscore.testing' has no attribute {name!r}")
