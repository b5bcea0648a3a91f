"""pytest plugin of localscore (entry point ``pytest11: localscore``).

Registered automatically when localscore is installed (with ``-p no:localscore`` to turn it off, or
``-p localscore`` to load it when plugin autoloading is disabled). Without an installation, load it with
``-p localscore.testing.plugin`` (or ``pytest_plugins = ["localscore.testing.plugin"]`` in a root
``conftest.py``); do not do both, pytest refuses to register one module under two names. It adds:

* the marker ``@pytest.mark.locality(radius=R, conditioner_radius=r)``, which documents a test's radii
  and feeds them to the ``locality`` fixture;
* the fixture ``locality``: an object whose methods are the assertions of :mod:`localscore.testing`
  with the marker's radii as defaults (``locality.assert_pixel_local(D, x, sigma)``);
* the fixture ``localscore_strategies``: the module :mod:`localscore.testing.strategies` (skips the test
  when hypothesis is not installed).

pytest imports this module in every run of an environment where localscore is installed, so it imports
nothing heavy: only pytest (the packages ``localscore`` and ``localscore.testing`` above it load their names
lazily). torch and the assertions load when the ``locality`` fixture's methods run, hypothesis only inside
the ``localscore_strategies`` fixture, so a pytest run that does not use them (or lacks hypothesis) is not
affected (``tests/test_testing_plugin.py`` checks this).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the plugin imports nothing heavy when pytest loads it
    from collections.abc import Callable, Sequence

    from torch import Tensor

    from ..conditions import Conditions

    Fn = Callable[..., Tensor]
    Sigmas = Tensor | float | Sequence[Tensor | float]

__all__ = ["LocalityChecker", "locality", "localscore_strategies", "pytest_configure"]


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        "locality(radius=None, conditioner_radius=None): the receptive and conditioner radii (Chebyshev, "
        "pixels) a test checks; read by the `locality` fixture of localscore.",
    )


class LocalityChecker:
    """The localscore assertions with default radii (from the ``locality`` marker).

    Attributes:
        radius: default receptive radius of :meth:`assert_pixel_local`.
        conditioner_radius: default radius of :meth:`assert_conditionally_local`.
    """

    def __init__(self, radius: int | None = None, conditioner_radius: float | None = None) -> None:
        self.radius = radius
        self.conditioner_radius = conditioner_radius

    def _need(self, value: Any, name: str) -> Any:
        if value is None:
            pytest.fail(f"no {name} given: pass it, or mark the test with @pytest.mark.locality({name}=...)",
                        pytrace=False)
        return value

    def assert_pixel_local(self, fn: Fn, x: Tensor, sigma: Sigmas, radius: int | None = None, **kw: Any) -> None:
        """:func:`localscore.testing.assert_pixel_local` with the marker's ``radius`` by default."""
        from .assertions import assert_pixel_local

        assert_pixel_local(fn, x, sigma, self._need(radius if radius is not None else self.radius, "radius"), **kw)

    def assert_conditionally_local(self, fn: Fn, x: Tensor, sigma: Sigmas, cond: Conditions,
                                   radius: float | None = None, **kw: Any) -> None:
        """:func:`localscore.testing.assert_conditionally_local` with the marker's ``conditioner_radius``."""
        from .assertions import assert_conditionally_local

        r = radius if radius is not None else self.conditioner_radius
        assert_conditionally_local(fn, x, sigma, cond, self._need(r, "conditioner_radius"), **kw)

    def assert_projective(self, fn: Fn, x: Tensor, sigma: Sigmas, cond: Conditions, rtol: float = 1e-5,
                          **kw: Any) -> None:
        """:func:`localscore.testing.assert_projective`."""
        from .assertions import assert_projective

        assert_projective(fn, x, sigma, cond, rtol, **kw)

    def assert_permutation_invariant(self, fn: Fn, x: Tensor, sigma: Sigmas, cond: Conditions, **kw: Any) -> None:
        """:func:`localscore.testing.assert_permutation_invariant`."""
        from .assertions import assert_permutation_invariant

        assert_permutation_invariant(fn, x, sigma, cond, **kw)


@pytest.fixture
def locality(request: Any) -> LocalityChecker:
    """The localscore assertions, with radii from ``@pytest.mark.locality(radius=..., conditioner_radius=...)``."""
    marker = request.node.get_closest_marker("locality")
    kwargs = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        kwargs.setdefault("radius", marker.args[0])
    unknown = set(kwargs) - {"radius", "conditioner_radius"}
    if unknown:
        pytest.fail(f"@pytest.mark.locality got unknown arguments {sorted(unknown)}; expected radius, "
                    "conditioner_radius", pytrace=False)
    return LocalityChecker(kwargs.get("radius"), kwargs.get("conditioner_radius"))


@pytest.fixture
def localscore_strategies() -> Any:
    """The hypothesis strategies of localscore (``localscore.testing.strategies``); skips without hypothesis."""
    pytest.importorskip("hypothesis")
    from . import strategies

    return strategies
