"""Names of a package that load on first access (PEP 562), for ``localscore`` and ``localscore.testing`` (private).

Importing this module imports nothing heavy, so a package ``__init__`` that uses it stays cheap to import
(the pytest plugin relies on that: pytest imports it in every run of an environment with localscore).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any


def attach(package: str, names: Mapping[str, str], all_names: Collection[str],
           submodules: Collection[str] | None = None) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``.

    ``names`` maps a public name to the submodule that defines it (relative, ``".conditions"``); a name that
    is not there loads as a submodule when it is one of ``submodules`` (``None``: any importable submodule).
    A loaded value is cached in the package's namespace, so ``__getattr__`` runs once per name.
    """

    def is_submodule(name: str) -> bool:
        if submodules is not None:
            return name in submodules
        if not name.isidentifier() or name.startswith("__"):
            return False
        return importlib.util.find_spec(f"{package}.{name}") is not None

    def load(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name], package), name)
        elif is_submodule(name):
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def listing() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(all_names))

    return load, listing
