"""Adapters that bring models from other libraries into the localscore protocol.

* :mod:`localscore.adapters.diffusers`: diffusers UNets (and transformer denoisers with the same call
  convention) and their schedulers as localscore denoisers, prompts as conditioner sets of token
  groups, regional cross-attention, feature hooks, and per-concept influence maps. It needs the
  optional extra ``diffusers`` (``pip install "localscore[diffusers]"``) only where it builds diffusers
  objects itself; importing it never imports diffusers.
"""

from __future__ import annotations

__all__: list[str] = []
