"""Deprecation shims for names that moved: the old module forwards them with a ``DeprecationWarning``.

A moved module keeps a file at its 0.1.0 location whose module ``__getattr__`` (PEP 562) is
:func:`forward`: every name still resolves, from the new module, and warns once per access naming the new
location. The shims go in 0.3.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__all__ = ["REMOVED_IN", "forward", "warn_moved"]

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
