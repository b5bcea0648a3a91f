"""Deprecation shims for names that moved: the old module forwards them with a ``DeprecationWarning``.

A moved module keeps a file at its 0.1.0 location whose module ``__getattr__`` (PEP 562) is
:func:`forward`: every name still resolves, from the new module, and warns once per access naming the new
location. A module that keeps its place but lost some names (0.1.0 aliases) builds its ``__getattr__`` with
:func:`moved_getattr`. The shims go in 0.3.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["REMOVED_IN", "forward", "moved_getattr", "warn_moved"]

REMOVED_IN = "0.3"
"""The release that removes the shims."""


def warn_moved(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` (a dotted name) is deprecated in favour of ``new``."""
    warnings.warn(f"{old} is deprecated and will be removed in localscore {REMOVED_IN}; use {new} instead.",
                  DeprecationWarning, stacklevel=stacklevel)


def forward(old_module: str, new_module: str, name: str) -> Any:
    """The attribute ``name`` of ``new_module``, with a warning that ``old_module.name`` moved there.

    Raises ``AttributeError`` (as a module would) for names the new module lacks, and for dunder names.
    """
    if name.startswith("__"):
        raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
    module = importlib.import_module(new_module)
    try:
        value = getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {old_module!r} has no attribute {name!r}") from None
    warn_moved(f"{old_module}.{name}", f"{new_module}.{name}", stacklevel=4)
    return value


def moved_getattr(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` (PEP 562) of ``module``, some of whose 0.1.0 names moved.

    ``moved`` maps each old name to the dotted name of the object it now is (``"localscore.masks.DiscRule"``).
    An old name resolves to that object with a warning that ``module.name`` is deprecated in favour of the new
    name (once per access); any other name raises ``AttributeError``, as a module would. Use::

        __getattr__ = moved_getattr(__name__, {"union": "localscore.masks.union"})
    """
    table = dict(moved)

    def __getattr__(name: str) -> Any:
        new = table.get(name)
        if new is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_module, _, attr = new.rpartition(".")
        try:
            value = getattr(importlib.import_module(new_module), attr)
        except AttributeError:
            raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
        warn_moved(f"{module}.{name}", new)  # stacklevel 3: the code that read the attribute
        return value

    return __getattr__
