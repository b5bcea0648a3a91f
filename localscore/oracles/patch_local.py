"""Deprecated: ``localscore.oracles.patch_local`` is now :mod:`localscore.empirical`.

Moved in 0.2 (the patch-local machine is an empirical denoiser, not an analytic oracle); this shim goes in
0.3. Every name still resolves here, from the new module, with a ``DeprecationWarning`` naming the new
location.
"""

from __future__ import annotations

from typing import Any

from .._moved import forward


def __getattr__(name: str) -> Any:
    return forward(__name__, "localscore.empirical", name)
