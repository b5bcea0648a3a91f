r"""Concept influence through :mod:`localscore.metrics`: the locality index of per-concept maps, and the
deprecated 0.1.0 influence functions.

The influence maps themselves are :func:`localscore.metrics.ablation_influence` and
:func:`localscore.metrics.gradient_influence`, which take a :class:`PromptConditions` as they take any
conditioner set and return **squared** norms. ``localscore.adapters.diffusers.ablation_influence`` and
``gradient_influence`` of 0.1.0 returned their square roots; they remain for one release, with a
``DeprecationWarning``, and return what they returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from ..._checks import as_sigma, check_image
from ..._errors import describe, fail
from ..._moved import warn_moved
from ...metrics import LocalityIndex, locality_index
from ...metrics.influence import _ablation, _gradient
from .prompts import PromptConditions, _check_prompt
from .regional import Coarse, _resize

__all__ = ["concept_locality"]


def concept_locality(
    influence: Tensor,
    prompt: PromptConditions,
    *,
    regions: Tensor | None = None,
    coarse: Coarse = "majority",
) -> LocalityIndex:
    r"""The conditional locality index of per-concept influence maps, by :func:`localscore.metrics.locality_index`.

    The regions (``regions`` or ``prompt.regions``, ``[B or 1, G, H, W]``) are resized to the maps'
    resolution with :func:`localscore.nn.pool_mask` (hard masks by ``coarse``, soft masks area-averaged; so
    latent-, feature- and pixel-resolution maps all work) and
    zeroed for inactive concepts; then ``inside[b, g]`` is the share of concept ``g``'s influence
    inside its own region and ``on_others[b, g]`` the share on the other concepts' regions.

    Args:
        influence: ``[B, G, h, w] >= 0``, e.g. from :func:`localscore.metrics.ablation_influence` or
            :func:`localscore.metrics.gradient_influence` on the same prompt.
        prompt: the prompts the maps belong to.
        regions: the concepts' regions (default: ``prompt.regions``).
        coarse: how hard masks are pooled (``"majority"``, ``"any"`` or ``"all"`` of a cell).

    Returns:
        :class:`localscore.metrics.LocalityIndex` (``inside``, ``on_others``, ``index``, ...).

    Examples:
        >>> import torch
        >>> p = PromptConditions(torch.zeros(1, 3, 2), [[1], [2]])
        >>> regions = torch.zeros(1, 2, 4, 4, dtype=torch.bool); regions[:, 0, :, :2] = True
        >>> regions[:, 1, :, 2:] = True
        >>> I = torch.zeros(1, 2, 2, 2); I[0, 0, :, 0] = 3.0; I[0, 0, 0, 1] = 1.0; I[0, 1, :, 1] = 1.0
        >>> res = concept_locality(I, p, regions=regions)    # 4 x 4 regions, 2 x 2 maps
        >>> [round(v, 4) for v in res.inside[0].tolist()], round(res.index, 4)     # 6/7 and 1
        ([0.8571, 1.0], 0.9286)
    """
    where = "concept_locality"
    prompt = _check_prompt(prompt, where, "prompt")
    if not isinstance(influence, torch.Tensor) or influence.dim() != 4 \
            or tuple(influence.shape[:2]) != (prompt.batch_size, prompt.num_groups):
        raise fail(where, f"argument `influence` is {describe(influence)}, expected [B, G, h, w] = "
                   f"[{prompt.batch_size}, {prompt.num_groups}, h, w] (one map per concept).",
                   "compute it with localscore.metrics.ablation_influence / gradient_influence on the same prompt.")
    r = regions if regions is not None else prompt.regions
    if r is None:
        raise fail(where, "no regions: the prompt carries none and `regions` was not given.",
                   "pass regions=[B, G, H, W] masks (where each concept should act).")
    r = prompt.with_regions(r).regions
    assert r is not None
    if coarse not in ("majority", "any", "all"):
        raise fail(where, f"`coarse` is {coarse!r}, expected 'majority', 'any' or 'all'.")
    m = _resize(r, influence.shape[-2:], coarse).to(influence.device)
    m = m.expand(prompt.batch_size, -1, -1, -1).to(influence.dtype) * prompt.active[:, :, None, None].to(
        influence.dtype)
    return locality_index(influence, m)


def _prompt_args(fn: Callable[..., Tensor], x: Any, sigma: Any, cond: Any,
                 where: str) -> tuple[Tensor, Tensor, PromptConditions]:
    if not callable(fn):
        raise fail(where, f"argument `fn` is {describe(fn)}, expected a callable fn(x, sigma, cond).")
    x = check_image(x, where)
    s = as_sigma(sigma, x.shape[0], where, like=x)
    cond = _check_prompt(cond, where).for_batch(x.shape[0], where)
    if cond.num_groups == 0:
        raise fail(where, "the prompt has no token group (G = 0): there is no concept to measure.",
                   "group the tokens of each concept when building PromptConditions.")
    return x, s, cond


def ablation_influence(fn: Callable[..., Tensor], x: Tensor, sigma: Tensor | float, cond: PromptConditions, *,
                       mode: Literal["drop", "only"] = "drop",
                       decoder: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Deprecated: ``localscore.metrics.ablation_influence(...).sqrt()`` (``mode="drop"`` is ``"ablate"``).

    0.1.0's per-concept ablation maps ``|y(cond) - y(cond.ablate(g))|`` (a norm, not its square).
    """
    warn_moved("localscore.adapters.diffusers.ablation_influence",
               "localscore.metrics.ablation_influence (squared norms: take .sqrt() for these values)")
    where = "ablation_influence"
    x, s, cond = _prompt_args(fn, x, sigma, cond, where)
    if mode not in ("drop", "only"):
        raise fail(where, f"`mode` is {mode!r}, expected 'drop' or 'only'.")
    sq = _ablation(fn, x, s, cond, "ablate" if mode == "drop" else "only", decoder, 64, where)
    return sq.sqrt().to(x.dtype)


def gradient_influence(fn: Callable[..., Tensor], x: Tensor, sigma: Tensor | float, cond: PromptConditions, *,
                       probes: int | Literal["exact"] = "exact", generator: torch.Generator | None = None,
                       decoder: Callable[[Tensor], Tensor] | None = None, chunk: int = 8) -> Tensor:
    """Deprecated: ``localscore.metrics.gradient_influence(...).sqrt()``.

    0.1.0's per-concept Frobenius norms (not their squares); inactive concepts are measured at the null
    embedding, where the metric reports zero.
    """
    warn_moved("localscore.adapters.diffusers.gradient_influence",
               "localscore.metrics.gradient_influence (squared norms: take .sqrt() for these values)")
    where = "gradient_influence"
    x, s, cond = _prompt_args(fn, x, sigma, cond, where)
    exact = probes == "exact"
    if not exact and (isinstance(probes, bool) or not isinstance(probes, int) or probes < 1):
        raise fail(where, f"`probes` is {probes!r}, expected 'exact' or an int >= 1.")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise fail(where, f"`chunk` is {chunk!r}, expected an int >= 1 (directions per batched call).")
    sq = _gradient(fn, x, s, cond, None if exact else int(probes), generator, decoder, chunk, where,
                   zero_absent=False)
    return sq.sqrt().to(x.dtype)
