"""Test your own models for locality: assertions, hypothesis strategies, a test mixin, a pytest plugin.

The assertions and the reference models need only torch. :mod:`localscore.testing.strategies` and
:class:`LocalScoreTesterMixin` need hypothesis and pytest (the ``test`` extra). Every name loads on first
use, so ``import localscore.testing`` works without them and imports neither torch nor hypothesis (the
pytest plugin :mod:`localscore.testing.plugin`, which pytest imports in every run, relies on that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach as _attach

if TYPE_CHECKING:
    from . import strategies
    from .assertions import (
        assert_conditionally_local,
        assert_permutation_invariant,
        assert_pixel_local,
        assert_projective,
    )
    from .mixin import LocalScoreTesterMixin
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

# public name -> the submodule that defines it
_LAZY: dict[str, str] = {
    "GlobalConvDenoiser": ".models",
    "LocalConvDenoiser": ".models",
    "LocalScoreTesterMixin": ".mixin",
    "assert_conditionally_local": ".assertions",
    "assert_permutation_invariant": ".assertions",
    "assert_pixel_local": ".assertions",
    "assert_projective": ".assertions",
    "render_conditions": ".models",
}
_SUBMODULES = frozenset({"assertions", "mixin", "models", "plugin", "strategies"})


_load, __dir__ = _attach(__name__, _LAZY, __all__, _SUBMODULES)

if not TYPE_CHECKING:  # hidden from type checkers, which would otherwise type every unknown name as Any
    __getattr__ = _load
