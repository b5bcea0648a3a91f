r"""diffusers models and schedulers in the localscore protocol, and the tools to analyse them.

The pieces, in the order an analysis uses them:

* :class:`PromptConditions`: a batch of prompts as conditioner sets. The conditioners are *token
  groups* (concepts, e.g. the tokens of "red hat"); ``select`` / ``drop`` / ``drop_all`` /
  ``singletons`` mirror :class:`~localscore.Conditions`, and an absent group's tokens are replaced by
  the null (empty-prompt) embeddings at the same positions.
* :class:`DiffusersDenoiser`: a ``UNet2DConditionModel`` (or a transformer denoiser with the same call
  convention) plus its scheduler's ``alphas_cumprod`` as a denoiser ``D(x, sigma, prompt)`` in the EDM
  (variance-exploding) variables of localscore. It is a
  :class:`~localscore.denoisers.DiscreteDDPMDenoiser`, which does the maths.
* :func:`bind_prompt`, :func:`concept_composition`: fixed prompts and projective composition of
  concepts through :mod:`localscore.compose`, for localscore's samplers or for a diffusers scheduler
  through :func:`sample_with_scheduler`.
* :func:`install_regional_attention` and :class:`RegionalAttnProcessor`: the intervention. Cross-attention
  is masked so that each token group reaches only its region (``PromptConditions.regions``).
* :class:`FeatureRecorder`, :func:`list_blocks`, :class:`FeatureMap`: forward hooks on named blocks.
* :func:`ablation_influence`, :func:`gradient_influence`, :func:`resize_regions`,
  :func:`concept_feature_means`: per-concept influence maps ``[B, G, h, w]`` on the output, on features,
  or (through a decoder such as :func:`vae_decoder`) on pixels, ready for
  :func:`localscore.metrics.locality_index`.

Variables. diffusers' latents are variance preserving, ``x_vp = sqrt(a) x_0 + sqrt(1 - a) eps`` with
``a = alphas_cumprod[t]``; localscore's are variance exploding, ``x = x_0 + sigma eps`` with
``sigma = sqrt((1 - a) / a)``, so ``x = x_vp * sqrt(1 + sigma**2)`` (:func:`vp_to_ve`,
:func:`ve_to_vp`).

Nothing here imports diffusers at import time: the model and the scheduler are used through their
public attributes, and only :meth:`DiffusersDenoiser.from_pretrained` and scheduler configs given as
plain dicts import the library (install it with ``pip install "localscore[diffusers]"``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import as_sigma, check_image, check_tensor
from .._errors import describe, fail
from ..denoisers import DiscreteDDPMDenoiser, Prediction, call_denoiser

__all__ = [
    "DiffusersDenoiser",
    "FeatureMap",
    "FeatureRecorder",
    "PromptBound",
    "PromptConditions",
    "RegionalAttention",
    "RegionalAttnProcessor",
    "ablation_influence",
    "bind_prompt",
    "concept_composition",
    "concept_feature_means",
    "concept_locality",
    "concept_orthogonality",
    "gradient_influence",
    "install_regional_attention",
    "list_blocks",
    "math_attention",
    "regional_attention",
    "resize_regions",
    "sample_with_scheduler",
    "scheduler_sigmas",
    "scheduler_start",
    "vae_decoder",
    "ve_to_vp",
    "vp_to_ve",
]

#: The keyword under which prompts hand their regions to the attention processors.
REGIONS_KWARG = "localscore_regions"


def _require_diffusers(where: str) -> Any:
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise fail(where, "this needs the optional dependency `diffusers`, which is not installed.",
                   'install it with `pip install "localscore[diffusers]"` (or `pip install diffusers`).') from e
    return diffusers


# ============================================================================ prompts as conditioner sets
class PromptConditions:
    r"""A batch of prompts whose conditioners are token groups (concepts).

    The model sees token embeddings ``[B, T, D]``. Tokens are grouped into ``G`` disjoint concepts
    (``groups [B, G, T]`` bool); tokens in no group (start token, "a photo of", padding) are
    context that every variant keeps. ``active [B, G]`` says which concepts are present: the model
    is fed :meth:`effective_embeds`,

        ``e_eff[b, t] = null[b, t]  if t belongs to a group g with active[b, g] == False``
        ``e_eff[b, t] = embeds[b, t]  otherwise``,

    so ablating a concept replaces its tokens by the null embeddings (the empty prompt's, or zeros)
    at the same positions. The slot operations mirror :class:`~localscore.Conditions`:
    :meth:`select` keeps one concept, :meth:`drop` removes one, :meth:`drop_all` is the background
    ``none``, :meth:`singletons` lists the components of a projective composition. Unlike
    ``Conditions.drop``, the number of groups ``G`` never changes: an ablated concept is marked
    inactive (as a padding slot is invalid), so its region and its token positions stay known.

    Args:
        embeds: ``[B, T, D]`` token embeddings (the text encoder's output).
        groups: which tokens form each concept: a list of ``G`` token-index lists shared by the batch,
            a bool tensor ``[G, T]`` shared by the batch, or ``[B, G, T]``. Groups must be disjoint and
            non-empty.
        null_embeds: ``[B or 1, T, D]`` replacement embeddings for absent concepts (for Stable
            Diffusion: the embeddings of the empty prompt ``""``); ``None`` means zero vectors.
        active: ``[B, G]`` bool, the concepts present (default: all).
        added_cond_kwargs: extra model inputs held fixed under ablations, e.g. SDXL's
            ``{"text_embeds": [B, 1280], "time_ids": [B, 6]}`` (tensors with a leading batch axis).
        attention_mask: optional ``[B, T]`` mask of real tokens (1) and padding (0), passed to the model
            as ``encoder_attention_mask``.
        regions: optional ``[B or 1, G, H, W]`` masks (bool, or float in ``[0, 1]``) at the latent
            resolution: where each concept may act. Used by the regional attention processor (see
            :func:`install_regional_attention`) and by the locality metrics.

    Raises:
        LocalScoreError: on wrong shapes, dtypes, devices, out-of-range or overlapping token groups.

    Examples:
        >>> import torch
        >>> e = torch.randn(1, 6, 4)
        >>> p = PromptConditions(e, [[1, 2], [4]])          # two concepts: tokens 1-2 and token 4
        >>> p.num_groups, p.counts().tolist()
        (2, [2])
        >>> q = p.drop(0)                                   # tokens 1, 2 become the null embedding (zeros)
        >>> q.effective_embeds()[0, 1:3].abs().sum().item(), torch.equal(q.effective_embeds()[0, 4], e[0, 4])
        (0.0, True)
        >>> [s.active.tolist() for s in p.singletons()]
        [[[True, False]], [[False, True]]]
    """

    __slots__ = ("active", "added_cond_kwargs", "attention_mask", "embeds", "groups", "null_embeds", "regions")

    embeds: Tensor
    groups: Tensor
    null_embeds: Tensor | None
    active: Tensor
    added_cond_kwargs: dict[str, Tensor]
    attention_mask: Tensor | None
    regions: Tensor | None

    def __init__(
        self,
        embeds: Tensor,
        groups: Tensor | Sequence[Sequence[int]],
        *,
        null_embeds: Tensor | None = None,
        active: Tensor | None = None,
        added_cond_kwargs: Mapping[str, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        regions: Tensor | None = None,
    ) -> None:
        where = "PromptConditions"
        embeds = check_tensor(embeds, where, "embeds")
        if embeds.dim() != 3 or embeds.shape[0] == 0 or embeds.shape[1] == 0:
            raise fail(where, f"argument `embeds` has shape {tuple(embeds.shape)}, expected [B, T, D] with B, T >= 1 "
                       "(token embeddings from the text encoder).",
                       "for one prompt use `embeds[None]`.")
        B, T, _ = embeds.shape
        dev = embeds.device
        g = self._groups_tensor(groups, B, T, dev, where)
        G = g.shape[1]
        if G:
            empty = ~g.any(-1)
            if bool(empty.any()):
                b, k = (int(i) for i in empty.nonzero()[0])
                raise fail(where, f"token group {k} of prompt {b} holds no token; expected at least one.",
                           "remove the group or list the token indices of its concept.")
            overlap = g.sum(1) > 1
            if bool(overlap.any()):
                b, t = (int(i) for i in overlap.nonzero()[0])
                raise fail(where, f"token {t} of prompt {b} belongs to {int(g[b, :, t].sum())} groups; groups "
                           "must be disjoint (each token is part of at most one concept).",
                           "merge the overlapping concepts into one group, or split their tokens.")
        if null_embeds is not None:
            null_embeds = check_tensor(null_embeds, where, "null_embeds")
            if null_embeds.dim() != 3 or null_embeds.shape[0] not in (1, B) \
                    or null_embeds.shape[1:] != embeds.shape[1:]:
                raise fail(where, f"argument `null_embeds` has shape {tuple(null_embeds.shape)}, expected "
                           f"[1 or {B}, {T}, {embeds.shape[2]}] to match `embeds`.",
                           "encode the empty prompt with the same tokenizer padding (same T) as the prompt.")
            if null_embeds.device != dev:
                raise fail(where, f"`null_embeds` is on {null_embeds.device} but `embeds` is on {dev}.")
        if active is None:
            active = torch.ones(B, G, dtype=torch.bool, device=dev)
        elif not isinstance(active, torch.Tensor) or active.dtype != torch.bool or tuple(active.shape) != (B, G):
            raise fail(where, f"argument `active` is {describe(active)}, expected a bool tensor [B, G] = [{B}, {G}].",
                       "True marks a concept that is present.")
        kwargs: dict[str, Tensor] = {}
        for key, v in (added_cond_kwargs or {}).items():
            if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != B:
                raise fail(where, f"added_cond_kwargs[{key!r}] is {describe(v)}, expected a tensor with a leading "
                           f"batch axis of size B = {B}.",
                           "SDXL takes text_embeds [B, 1280] and time_ids [B, 6]; repeat them per prompt.")
            kwargs[str(key)] = v
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, T):
                raise fail(where, f"argument `attention_mask` is {describe(attention_mask)}, expected [B, T] = "
                           f"[{B}, {T}] (1 for real tokens, 0 for padding).")
        if regions is not None:
            regions = self._check_regions(regions, B, G, dev, where)
        object.__setattr__(self, "embeds", embeds)
        object.__setattr__(self, "groups", g)
        object.__setattr__(self, "null_embeds", null_embeds)
        object.__setattr__(self, "active", active)
        object.__setattr__(self, "added_cond_kwargs", kwargs)
        object.__setattr__(self, "attention_mask", attention_mask)
        object.__setattr__(self, "regions", regions)

    @staticmethod
    def _groups_tensor(groups: Any, B: int, T: int, dev: torch.device, where: str) -> Tensor:
        if isinstance(groups, torch.Tensor):
            if groups.dtype != torch.bool:
                raise fail(where, f"argument `groups` has dtype {groups.dtype}, expected torch.bool "
                           "(or a list of token-index lists).", "pass `groups.bool()`.")
            if groups.dim() == 2:
                groups = groups[None].expand(B, -1, -1)
            if groups.dim() != 3 or groups.shape[0] != B or groups.shape[2] != T:
                raise fail(where, f"argument `groups` has shape {tuple(groups.shape)}, expected [G, T] or "
                           f"[B, G, T] with B = {B}, T = {T}.")
            if groups.device != dev:
                raise fail(where, f"`groups` is on {groups.device} but `embeds` is on {dev}.")
            return groups
        if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
            raise fail(where, f"argument `groups` is {describe(groups)}, expected a list of token-index lists "
                       "(one per concept) or a bool tensor [G, T] / [B, G, T].",
                       "e.g. groups=[[2, 3], [6]] for the concepts made of tokens 2-3 and token 6.")
        g = torch.zeros(len(groups), T, dtype=torch.bool)
        for k, idx in enumerate(groups):
            if isinstance(idx, (str, bytes)) or not isinstance(idx, Sequence):
                raise fail(where, f"group {k} is {describe(idx)}, expected a list of token indices.")
            for t in idx:
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < T:
                    raise fail(where, f"group {k} holds token index {t!r}, expected an int in [0, {T}).",
                               "token indices count from 0, with the start token at 0 for CLIP tokenizers.")
                g[k, t] = True
        return g.to(dev)[None].expand(B, -1, -1)

    @staticmethod
    def _check_regions(regions: Any, B: int, G: int, dev: torch.device, where: str) -> Tensor:
        if not isinstance(regions, torch.Tensor) or regions.dim() != 4 or regions.shape[0] not in (1, B) \
                or regions.shape[1] != G:
            raise fail(where, f"argument `regions` is {describe(regions)}, expected [1 or {B}, G = {G}, H, W] "
                       "(one mask per token group, at the latent resolution).",
                       "build masks with localscore.masks (disc_masks, box_masks) or by hand.")
        if regions.device != dev:
            raise fail(where, f"`regions` is on {regions.device} but `embeds` is on {dev}.")
        if regions.dtype != torch.bool:
            if not regions.is_floating_point():
                raise fail(where, f"`regions` has dtype {regions.dtype}, expected bool or floating in [0, 1].")
            if not bool(((regions >= 0) & (regions <= 1)).all()):
                raise fail(where, "`regions` holds values outside [0, 1]; soft masks are weights in [0, 1].",
                           "clamp them with `regions.clamp(0, 1)` or pass a bool mask.")
        return regions

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("PromptConditions is immutable; use `replace(...)` to build a new one.")

    def replace(self, **changes: Any) -> PromptConditions:
        """A copy with some fields replaced (``embeds``, ``groups``, ``null_embeds``, ``active``,
        ``added_cond_kwargs``, ``attention_mask``, ``regions``), validated again."""
        fields = {k: getattr(self, k) for k in self.__slots__}
        unknown = set(changes) - set(fields)
        if unknown:
            raise fail("PromptConditions.replace", f"unknown fields {sorted(unknown)}; expected some of "
                       f"{sorted(fields)}.")
        fields.update(changes)
        embeds = fields.pop("embeds")
        groups = fields.pop("groups")
        return PromptConditions(embeds, groups, **fields)

    # ------------------------------------------------------------------------------- properties
    @property
    def batch_size(self) -> int:
        """``B``, the number of prompts."""
        return int(self.embeds.shape[0])

    @property
    def num_groups(self) -> int:
        """``G``, the number of concepts."""
        return int(self.groups.shape[1])

    @property
    def num_tokens(self) -> int:
        """``T``, the sequence length."""
        return int(self.embeds.shape[1])

    @property
    def device(self) -> torch.device:
        """The device of the embeddings."""
        return self.embeds.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the embeddings."""
        return self.embeds.dtype

    @property
    def is_empty(self) -> bool:
        """True when no prompt has an active concept (the background ``none``)."""
        return not bool(self.active.any())

    def counts(self) -> Tensor:
        """``[B]`` long: the number of active concepts per prompt."""
        return self.active.sum(1)

    def __len__(self) -> int:
        return self.batch_size

    def __repr__(self) -> str:
        return (f"PromptConditions(B={self.batch_size}, T={self.num_tokens}, D={int(self.embeds.shape[2])}, "
                f"G={self.num_groups}, active={self.counts().tolist()}, regions="
                f"{None if self.regions is None else tuple(self.regions.shape)})")

    # ------------------------------------------------------------------------------- embeddings
    def token_mask(self, g: int | None = None) -> Tensor:
        """``[B, T]`` bool: the tokens of group ``g`` (or of any group when ``g is None``)."""
        if g is None:
            return self.groups.any(1)
        return self.groups[:, self._check_group(g, "PromptConditions.token_mask")]

    def absent_tokens(self) -> Tensor:
        """``[B, T]`` bool: tokens of inactive groups, which :meth:`effective_embeds` replaces."""
        return (self.groups & ~self.active[:, :, None]).any(1)

    def effective_embeds(self) -> Tensor:
        """``[B, T, D]``: ``null`` at the tokens of inactive groups, ``embeds`` elsewhere (see the class)."""
        null = self.null_embeds if self.null_embeds is not None else torch.zeros((), dtype=self.dtype,
                                                                                  device=self.device)
        absent = self.absent_tokens()[..., None]
        if not bool(absent.any()):
            return self.embeds
        return torch.where(absent, null.to(self.dtype), self.embeds)

    # ------------------------------------------------------------------------------- slot operations
    def _check_group(self, g: int, where: str) -> int:
        if isinstance(g, bool) or not isinstance(g, int):
            raise fail(where, f"group index is {describe(g)}, expected an int.")
        G = self.num_groups
        if not -G <= g < G:
            raise fail(where, f"group index {g} is out of range for G = {G} groups.", f"use 0 <= g < {G}.")
        return g % G

    def select(self, g: int) -> PromptConditions:
        """Only concept ``g`` present (if it was): the component of a projective composition."""
        g = self._check_group(g, "PromptConditions.select")
        keep = torch.zeros_like(self.active)
        keep[:, g] = True
        return self.replace(active=self.active & keep)

    def drop(self, g: int) -> PromptConditions:
        """Concept ``g`` absent, the others as they were: an ablation of concept ``g``."""
        g = self._check_group(g, "PromptConditions.drop")
        active = self.active.clone()
        active[:, g] = False
        return self.replace(active=active)

    def drop_all(self) -> PromptConditions:
        """No concept present: the background ``none`` (context tokens only)."""
        return self.replace(active=torch.zeros_like(self.active))

    def singletons(self) -> list[PromptConditions]:
        """``[self.select(g) for g in range(G)]``, the components of a projective composition."""
        return [self.select(g) for g in range(self.num_groups)]

    def with_regions(self, regions: Tensor | None) -> PromptConditions:
        """The same prompts with region masks ``[B or 1, G, H, W]`` (or none)."""
        return self.replace(regions=regions)

    # ------------------------------------------------------------------------------- batch operations
    def repeat(self, n: int) -> PromptConditions:
        """The batch tiled ``n`` times (as ``torch.cat([p] * n)``), for a batch of ``n * B`` images."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise fail("PromptConditions.repeat", f"`n` is {n!r}, expected an int >= 1.")
        if n == 1:
            return self

        def tile(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.repeat(n, *([1] * (t.dim() - 1)))

        null = self.null_embeds
        regions = self.regions
        return PromptConditions(
            cast(Tensor, tile(self.embeds)), cast(Tensor, tile(self.groups)),
            null_embeds=tile(null) if null is not None and null.shape[0] > 1 else null,
            active=tile(self.active),
            added_cond_kwargs={k: cast(Tensor, tile(v)) for k, v in self.added_cond_kwargs.items()},
            attention_mask=tile(self.attention_mask),
            regions=tile(regions) if regions is not None and regions.shape[0] > 1 else regions,
        )

    def __getitem__(self, index: int | slice) -> PromptConditions:
        """Batch indexing: an int keeps a batch of one, a slice selects prompts."""
        if isinstance(index, bool) or not isinstance(index, (int, slice)):
            raise fail("PromptConditions[...]", f"index is {describe(index)}, expected an int or a slice.")
        if isinstance(index, int):
            if not -self.batch_size <= index < self.batch_size:
                raise fail("PromptConditions[...]", f"prompt index {index} is out of range for B = {self.batch_size}.")
            index = slice(index % self.batch_size, index % self.batch_size + 1)
        if len(range(self.batch_size)[index]) == 0:
            raise fail("PromptConditions[...]", f"the slice {index} selects no prompt of B = {self.batch_size}.")

        def take(t: Tensor | None) -> Tensor | None:
            # per-prompt tensors are indexed; shared ones (batch 1, broadcast) are kept
            if t is None or (t.shape[0] == 1 and self.batch_size > 1):
                return t
            return t[index]

        return PromptConditions(
            self.embeds[index], self.groups[index], null_embeds=take(self.null_embeds), active=self.active[index],
            added_cond_kwargs={k: v[index] for k, v in self.added_cond_kwargs.items()},
            attention_mask=None if self.attention_mask is None else self.attention_mask[index],
            regions=take(self.regions),
        )

    def for_batch(self, batch: int, where: str) -> PromptConditions:
        """This batch tiled to ``batch`` images (``B`` must divide ``batch``)."""
        B = self.batch_size
        if batch == B:
            return self
        if batch % B != 0:
            raise fail(where, f"the prompt batch has B = {B} but x has {batch} images; expected B = {batch}, "
                       "1, or a divisor.", "encode one prompt per image, or a single prompt for all.")
        return self.repeat(batch // B)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PromptConditions:
        """Move to ``device`` and/or cast embeddings and added conditions to ``dtype``."""
        def mv(t: Tensor | None, cast_it: bool = True) -> Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if cast_it and t.is_floating_point() else None)

        return PromptConditions(
            cast(Tensor, mv(self.embeds)), cast(Tensor, mv(self.groups, False)), null_embeds=mv(self.null_embeds),
            active=cast(Tensor, mv(self.active, False)),
            added_cond_kwargs={k: cast(Tensor, mv(v)) for k, v in self.added_cond_kwargs.items()},
            attention_mask=mv(self.attention_mask, False), regions=mv(self.regions, False),
        )


def _check_prompt(cond: Any, where: str, name: str = "cond") -> PromptConditions:
    if not isinstance(cond, PromptConditions):
        raise fail(where, f"argument `{name}` is {describe(cond)}, expected a PromptConditions.",
                   "wrap the text encoder's embeddings: PromptConditions(embeds, groups, null_embeds=...).")
    return cond


# ============================================================================ VP <-> VE latents
def vp_to_ve(latents: Tensor, sigma: Any) -> Tensor:
    r"""diffusers' variance-preserving latents to localscore's variables: ``x = x_vp * sqrt(1 + sigma**2)``.

    Args:
        latents: ``[B, C, H, W]`` latents at noise level ``sigma``.
        sigma: ``[B]`` or a float, ``sigma = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])``.

    Examples:
        >>> import torch
        >>> round(vp_to_ve(torch.ones(1, 1, 1, 1), 1.0).item(), 4)      # sqrt(2)
        1.4142
    """
    x = check_image(latents, "vp_to_ve", "latents")
    s = as_sigma(sigma, x.shape[0], "vp_to_ve", like=x, allow_zero=True)
    return x * torch.sqrt(1 + s.view(-1, 1, 1, 1) ** 2)


def ve_to_vp(x: Tensor, sigma: Any) -> Tensor:
    r"""The inverse of :func:`vp_to_ve`: ``x_vp = x / sqrt(1 + sigma**2)``.

    Examples:
        >>> import torch
        >>> x = torch.randn(2, 3, 4, 4)
        >>> torch.allclose(ve_to_vp(vp_to_ve(x, 3.0), 3.0), x)
        True
    """
    x = check_image(x, "ve_to_vp")
    s = as_sigma(sigma, x.shape[0], "ve_to_vp", like=x, allow_zero=True)
    return x / torch.sqrt(1 + s.view(-1, 1, 1, 1) ** 2)


# ============================================================================ the model call
def _alphas_cumprod(scheduler: Any, where: str) -> Tensor:
    if isinstance(scheduler, torch.Tensor):
        return scheduler
    ac = getattr(scheduler, "alphas_cumprod", None)
    if isinstance(ac, torch.Tensor):
        return ac
    if isinstance(scheduler, Mapping):
        diffusers = _require_diffusers(where)
        return cast(Tensor, diffusers.DDPMScheduler.from_config(dict(scheduler)).alphas_cumprod)
    raise fail(where, f"argument `scheduler` is {describe(scheduler)}, expected a diffusers scheduler with "
               "`alphas_cumprod`, its config dict, or an `alphas_cumprod` tensor [T].",
               "pass `pipe.scheduler` (DDIM, DDPM, Euler, DPM-Solver, ...); flow-matching schedulers "
               "(SD3, Flux) are not variance-preserving models and are not supported.")


def _prediction_type(scheduler: Any, given: str | None, where: str) -> str:
    if given is not None:
        pred = given
    else:
        config = getattr(scheduler, "config", scheduler if isinstance(scheduler, Mapping) else None)
        pred = config.get("prediction_type", "epsilon") if isinstance(config, Mapping) else "epsilon"
    if pred not in ("epsilon", "v_prediction", "sample"):
        raise fail(where, f"prediction type {pred!r} is not supported; expected 'epsilon', 'v_prediction' or "
                   "'sample'.", "pass `prediction_type=` explicitly if the scheduler config is wrong.")
    return str(pred)


class _ModelCall(nn.Module):
    """``(x_in, t, prompt) -> raw model output`` for diffusers' UNet / transformer call conventions."""

    def __init__(self, model: nn.Module, where: str) -> None:
        super().__init__()
        if not callable(model):
            raise fail(where, f"argument `unet` is {describe(model)}, expected a diffusers model.")
        self.model = model
        params = inspect.signature(model.forward if isinstance(model, nn.Module) else model).parameters
        if "sample" in params:
            self.style = "unet"
        elif "hidden_states" in params and "timestep" in params:
            self.style = "transformer"
        else:
            raise fail(where, f"the model's forward takes {list(params)}; expected diffusers' UNet convention "
                       "(sample, timestep, encoder_hidden_states, ...) or the transformer one "
                       "(hidden_states, encoder_hidden_states, timestep, ...).",
                       "wrap other models with localscore.denoisers.DiscreteDDPMDenoiser directly.")
        self.where = where

    def _dtype(self, like: Tensor) -> torch.dtype:
        p = next(iter(self.model.parameters()), None) if isinstance(self.model, nn.Module) else None
        return p.dtype if p is not None and p.is_floating_point() else like.dtype

    def forward(self, x_in: Tensor, t: Tensor, cond: PromptConditions) -> Tensor:
        dtype = self._dtype(x_in)
        kwargs: dict[str, Any] = {"encoder_hidden_states": cond.effective_embeds().to(dtype), "return_dict": False}
        if cond.added_cond_kwargs:
            kwargs["added_cond_kwargs"] = {k: v.to(dtype) if v.is_floating_point() else v
                                           for k, v in cond.added_cond_kwargs.items()}
        if cond.attention_mask is not None:
            kwargs["encoder_attention_mask"] = cond.attention_mask
        if cond.regions is not None:
            if not _has_regional(self.model):
                raise fail(self.where, "the prompt carries `regions` but the model has no regional attention "
                           "processor installed, so the regions would be ignored.",
                           "install it first: `with regional_attention(unet): ...` (or "
                           "`install_regional_attention(unet)`), or drop the regions with `with_regions(None)`.")
            regions = cond.regions
            if tuple(regions.shape[-2:]) != tuple(x_in.shape[-2:]):
                raise fail(self.where, f"the prompt's regions are {tuple(regions.shape[-2:])} pixels but the latents "
                           f"are {tuple(x_in.shape[-2:])}; expected the latent resolution.",
                           "build region masks at the latent size (image size / VAE factor, e.g. / 8).")
            kwargs["cross_attention_kwargs"] = {REGIONS_KWARG: _RegionSpec(cond.groups, regions, x_in.shape[-2:])}
        if self.style == "unet":
            out = self.model(x_in.to(dtype), t.to(dtype), **kwargs)
        else:
            out = self.model(hidden_states=x_in.to(dtype), timestep=t.to(dtype), **kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        if not isinstance(out, torch.Tensor):
            raise fail(self.where, f"the model returned {describe(out)}, expected a tensor.")
        C = x_in.shape[1]
        if out.dim() == 4 and out.shape[1] == 2 * C:  # learned variance: the first half is the prediction
            out = out[:, :C]
        return out.to(x_in.dtype)


class DiffusersDenoiser(DiscreteDDPMDenoiser):
    r"""A diffusers UNet (or transformer denoiser) and its scheduler as a localscore denoiser.

    ``D(x [B, C, H, W], sigma [B], prompt) -> x0_hat [B, C, H, W]`` in localscore's variance-exploding
    variables, by :class:`~localscore.denoisers.DiscreteDDPMDenoiser` on the scheduler's
    ``alphas_cumprod`` ``a_t``:

    * ``sigma_t = sqrt((1 - a_t) / a_t)``; the timestep ``t(sigma)`` interpolates ``log sigma_t``;
    * the model sees ``x_in = x / sqrt(sigma**2 + 1)`` (diffusers' latents) and ``t(sigma)``;
    * ``epsilon``: ``D = x - sigma * out``; ``v_prediction``:
      ``D = x / (sigma**2 + 1) - sigma / sqrt(sigma**2 + 1) * out``; ``sample``: ``D = out``.

    The prompt's :meth:`~PromptConditions.effective_embeds` go in as ``encoder_hidden_states``, its
    ``added_cond_kwargs`` (SDXL's pooled text embeddings and size ids) and ``attention_mask`` as given,
    and its ``regions`` (if any) to the regional attention processor. A model that predicts a learned
    variance too (``2 C`` output channels) is read from its first ``C`` channels. The model runs in its
    own dtype (e.g. float16); the result is returned in ``x``'s dtype.

    Args:
        unet: a ``UNet2DConditionModel`` (called as ``unet(sample, timestep, encoder_hidden_states=...)``)
            or a transformer denoiser called as ``model(hidden_states=..., timestep=...,
            encoder_hidden_states=...)``.
        scheduler: the pipeline's scheduler (any with ``alphas_cumprod``), its config dict, or an
            ``alphas_cumprod`` tensor ``[T]``.
        prediction_type: overrides ``scheduler.config.prediction_type``.
        null_prompt: the prompt used when ``cond is None`` (for instance the empty prompt); without it,
            ``cond`` is required.
        quantize: round timesteps to integers (as the model was trained); default fractional.

    Examples:
        >>> import torch
        >>> class Eps(torch.nn.Module):            # a stand-in with diffusers' UNet signature
        ...     def forward(self, sample, timestep, encoder_hidden_states, return_dict=False):
        ...         return (torch.zeros_like(sample),)
        >>> ac = torch.linspace(0.999, 0.01, 1000)
        >>> D = DiffusersDenoiser(Eps(), ac)
        >>> p = PromptConditions(torch.zeros(1, 4, 8), [[1]])
        >>> x = torch.ones(1, 4, 2, 2)
        >>> torch.equal(D(x, 1.0, p), x)          # predicts no noise, so D = x
        True
    """

    _where = "DiffusersDenoiser"

    def __init__(self, unet: Any, scheduler: Any, *, prediction_type: str | None = None,
                 null_prompt: PromptConditions | None = None, quantize: bool = False) -> None:
        where = self._where
        ac = _alphas_cumprod(scheduler, where)
        if isinstance(ac, torch.Tensor) and ac.numel() and float(ac.min()) <= 0:
            raise fail(where, "the scheduler's alphas_cumprod reaches 0 (infinite noise at the last timestep, "
                       "e.g. rescale_betas_zero_snr=True); localscore's variables need a finite sigma_max.",
                       "use the scheduler without zero-SNR rescaling, or pass alphas_cumprod[:-1] explicitly.")
        pred = _prediction_type(scheduler, prediction_type, where)
        super().__init__(_ModelCall(unet, where), ac.detach().float().cpu(), prediction=cast(Prediction, pred),
                         quantize=quantize)
        if null_prompt is not None:
            _check_prompt(null_prompt, where, "null_prompt")
        self.null_prompt = null_prompt

    @property
    def model(self) -> nn.Module:
        """The wrapped diffusers model."""
        return cast(_ModelCall, self.inner).model

    @classmethod
    def from_pretrained(cls, path: str, *, subfolder: str = "unet", scheduler_subfolder: str = "scheduler",
                        torch_dtype: torch.dtype | None = None, **kwargs: Any) -> DiffusersDenoiser:
        """Load ``UNet2DConditionModel`` and the scheduler config from a local pipeline folder.

        Only ``from_pretrained(path)`` is called: pass a local path (for example an SDXL checkpoint
        folder) to stay offline. Extra ``kwargs`` go to the constructor.
        """
        diffusers = _require_diffusers("DiffusersDenoiser.from_pretrained")
        unet = diffusers.UNet2DConditionModel.from_pretrained(path, subfolder=subfolder, torch_dtype=torch_dtype)
        sched = diffusers.DDPMScheduler.from_pretrained(path, subfolder=scheduler_subfolder)
        return cls(unet, sched, **kwargs)

    def forward(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        x = check_image(x, self._where)
        if cond is None:
            if self.null_prompt is None:
                raise fail(self._where, "`cond` is None and no `null_prompt` was given; a text-conditioned model "
                           "needs embeddings.",
                           "pass a PromptConditions, or build the denoiser with null_prompt= (the empty "
                           "prompt's embeddings) for unconditional calls.")
            cond = self.null_prompt
        cond = _check_prompt(cond, self._where).for_batch(x.shape[0], self._where)
        if cond.device != x.device:
            raise fail(self._where, f"the prompt is on {cond.device} but x is on {x.device}.",
                       "move it with `prompt.to(x.device)`.")
        return super().forward(x, sigma, cast(Any, cond))


class PromptBound(nn.Module):
    """A denoiser with its prompt fixed: ``D'(x, sigma) = D(x, sigma, prompt)`` (built by :func:`bind_prompt`).

    The prompt is tiled over the images of ``x`` when its batch size divides theirs. It is the
    :class:`~localscore.denoisers.BoundDenoiser` of prompts, so it can be passed to every sampler and
    composition operator of localscore (with ``cond=None``).
    """

    def __init__(self, denoiser: Any, prompt: PromptConditions) -> None:
        super().__init__()
        if not callable(denoiser):
            raise fail("bind_prompt", f"`denoiser` is {describe(denoiser)}, expected a callable D(x, sigma, prompt).")
        self.inner = denoiser
        self.prompt = _check_prompt(prompt, "bind_prompt", "prompt")

    def forward(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        if cond is not None:
            raise fail("PromptBound", "this denoiser already has its prompt bound; got another `cond`.",
                       "call it with cond=None.")
        x = check_image(x, "PromptBound")
        return cast(Tensor, self.inner(x, sigma, self.prompt.for_batch(x.shape[0], "PromptBound")))


def bind_prompt(denoiser: Any, prompt: PromptConditions) -> PromptBound:
    """Fix the prompt of a denoiser: ``bind_prompt(D, p)(x, sigma) == D(x, sigma, p)``.

    Examples:
        >>> import torch
        >>> D = lambda x, s, p: x * p.counts().view(-1, 1, 1, 1)
        >>> p = PromptConditions(torch.zeros(1, 3, 2), [[0], [2]])
        >>> bind_prompt(D, p)(torch.ones(2, 1, 1, 1), 1.0).flatten().tolist()   # tiled to 2 images
        [2.0, 2.0]
    """
    return PromptBound(denoiser, prompt)


def concept_composition(denoiser: Any, prompt: PromptConditions, weights: Any = None, **options: Any) -> Any:
    r"""Projective composition of a prompt's concepts, through :func:`localscore.compose.projective`.

    ``D_hat(x, sigma) = D(x, sigma, none) + sum_g w_g * (D(x, sigma, p_g) - D(x, sigma, none))``

    with ``none = prompt.drop_all()`` (context tokens only) and ``p_g = prompt.select(g)``. It is
    exact when the concepts' conditionals factorize over disjoint regions (CPC); with regional
    attention (``prompt.regions``) each component acts only through its region.

    Args:
        denoiser: ``D(x, sigma, prompt)``, e.g. a :class:`DiffusersDenoiser`.
        prompt: the concepts to compose (``G`` groups).
        weights: per-concept weights, as :func:`localscore.compose.projective` takes them.
        options: passed to :func:`localscore.compose.projective` (``strategy``, ``max_batch``, ...).

    Returns:
        A denoiser ``D_hat(x [B, C, H, W], sigma) -> [B, C, H, W]`` (prompt bound).
    """
    from .. import compose

    prompt = _check_prompt(prompt, "concept_composition", "prompt")
    if prompt.num_groups == 0:
        raise fail("concept_composition", "the prompt has no token group (G = 0): there is nothing to compose.",
                   "group the tokens of each concept when building PromptConditions.")
    background = bind_prompt(denoiser, prompt.drop_all())
    components = [bind_prompt(denoiser, p) for p in prompt.singletons()]
    return compose.projective(background, components, weights, **options)


# ============================================================================ schedulers
def _check_scheduler(scheduler: Any, where: str) -> None:
    for attr in ("set_timesteps", "step", "scale_model_input", "timesteps", "alphas_cumprod", "config"):
        if not hasattr(scheduler, attr):
            raise fail(where, f"argument `scheduler` is {describe(scheduler)}, which has no `{attr}`; expected a "
                       "diffusers scheduler of a variance-preserving model (DDIM, DDPM, Euler, DPM-Solver, ...).")


def _timestep_index(t: Tensor, T: int, where: str) -> int:
    v = float(t)
    i = round(v)
    if abs(v - i) > 1e-4 or not 0 <= i < T:
        raise fail(where, f"the scheduler's timestep {v!r} is not an integer in [0, {T}); expected discrete "
                   "timesteps into alphas_cumprod.",
                   "use a scheduler with integer timesteps (DDIM, DDPM, DPMSolverMultistep, UniPC, Euler "
                   "with timestep_spacing='leading'), or sample with localscore's samplers.")
    return i


def _grid(scheduler: Any, where: str) -> Tensor:
    """``[N + 1]`` float64 noise levels (CPU) of the scheduler's current timesteps, last one included."""
    steps = scheduler.timesteps
    own = getattr(scheduler, "sigmas", None)
    if isinstance(own, torch.Tensor) and own.dim() == 1 and own.numel() == len(steps) + 1:
        # schedulers that keep their own sigma grid (Euler, LMS, DPM-Solver, UniPC, ...)
        return own.detach().double().cpu()
    ac = scheduler.alphas_cumprod.double().cpu()
    a = ac[[_timestep_index(t, ac.numel(), where) for t in steps]]
    final = 0.0
    if getattr(scheduler.config, "set_alpha_to_one", True) is False and "DDIM" in type(scheduler).__name__:
        final = math.sqrt((1 - float(ac[0])) / float(ac[0]))
    return torch.cat([torch.sqrt((1 - a) / a), torch.tensor([final], dtype=torch.float64)])


def scheduler_sigmas(scheduler: Any, num_inference_steps: int | None = None, *,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""The noise-level grid ``[N + 1]`` of a diffusers scheduler's timesteps, in localscore's variables.

    ``sigmas[i] = sqrt((1 - a[t_i]) / a[t_i])`` for the scheduler's timesteps ``t_0 > ... > t_{N-1}``
    (after ``set_timesteps(num_inference_steps)`` when given), and the final level ``0`` (or, for DDIM
    with ``set_alpha_to_one=False``, ``sqrt((1 - a[0]) / a[0])``, where DDIM ends). Schedulers that keep
    their own grid ``scheduler.sigmas`` of ``N + 1`` levels (Euler, LMS, DPM-Solver, UniPC) return it. With this grid,
    deterministic DDIM in diffusers and :func:`localscore.sampling.sample_ddim` on
    :class:`DiffusersDenoiser` take the same steps.

    Examples:
        >>> from diffusers import DDIMScheduler
        >>> s = scheduler_sigmas(DDIMScheduler(), 4)          # timesteps 750, 500, 250, 0
        >>> [round(v, 3) for v in s.tolist()]
        [17.379, 3.443, 0.958, 0.01, 0.0]
    """
    where = "scheduler_sigmas"
    _check_scheduler(scheduler, where)
    if num_inference_steps is not None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise fail(where, f"`num_inference_steps` is {num_inference_steps!r}, expected an int >= 1.")
        scheduler.set_timesteps(num_inference_steps)
    return _grid(scheduler, where).to(device=device, dtype=dtype or torch.get_default_dtype())


def scheduler_start(scheduler: Any, latents: Tensor, num_inference_steps: int) -> tuple[Tensor, Tensor]:
    r"""The starting point and noise-level grid for localscore's samplers that match a scheduler's run.

    After ``scheduler.set_timesteps(num_inference_steps)``, ``sigmas = scheduler_sigmas(scheduler)`` and
    ``x = scheduler.scale_model_input(latents, t_0) * sqrt(1 + sigmas[0]**2)``: the scheduler's starting
    latents (``randn * scheduler.init_noise_sigma``, variance preserving for DDIM, variance exploding for
    Euler) in localscore's variables. Then ``sample_euler(D, x, sigmas)`` takes the steps of diffusers'
    ``EulerDiscreteScheduler`` and ``sample_ddim(D, x, sigmas)`` those of ``DDIMScheduler``.

    Returns:
        ``(x [B, C, H, W], sigmas [N + 1])`` in ``latents``' dtype and device.

    Examples:
        >>> import torch
        >>> from diffusers import EulerDiscreteScheduler
        >>> sched = EulerDiscreteScheduler(timestep_spacing="leading")
        >>> sched.set_timesteps(4)
        >>> x, sigmas = scheduler_start(sched, torch.ones(1, 1, 1, 1) * sched.init_noise_sigma, 4)
        >>> round(x.item(), 4) == round(float(sched.init_noise_sigma), 4), len(sigmas)   # VE already
        (True, 5)
    """
    where = "scheduler_start"
    _check_scheduler(scheduler, where)
    latents = check_image(latents, where, "latents")
    sigmas = scheduler_sigmas(scheduler, num_inference_steps, device=latents.device, dtype=latents.dtype)
    x_in = scheduler.scale_model_input(latents, scheduler.timesteps[0])
    return x_in * torch.sqrt(1 + sigmas[0] ** 2), sigmas


def sample_with_scheduler(
    denoiser: Any,
    scheduler: Any,
    latents: Tensor,
    cond: Any = None,
    *,
    num_inference_steps: int,
    generator: torch.Generator | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> Tensor:
    r"""Run a diffusers scheduler's sampling loop on any localscore denoiser (e.g. a composition).

    At each timestep ``t`` (``sigma = sqrt((1 - a) / a)`` with ``a = alphas_cumprod[t]``, or the
    scheduler's own ``sigmas[i]`` for schedulers that keep a sigma grid, such as Euler or DPM-Solver;
    then ``a = 1 / (1 + sigma**2)``)::

        x_in = scheduler.scale_model_input(latents, t)       (what a UNet would see: VP latents)
        x    = x_in * sqrt(1 + sigma**2)                       (localscore's variables)
        d    = denoiser(x, sigma, cond)
        eps  = (x - d) / sigma
        out  = eps | sqrt(a) * eps - sqrt(1 - a) * d | d       (epsilon | v_prediction | sample)
        latents = scheduler.step(out, t, latents).prev_sample

    so the scheduler receives exactly the model output it expects, computed from ``D``.

    Args:
        denoiser: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]`` (any localscore denoiser).
        scheduler: a diffusers scheduler with integer timesteps into ``alphas_cumprod``.
        latents: ``[B, C, H, W]`` starting latents in the scheduler's own variables (for DDIM
            ``randn * scheduler.init_noise_sigma``).
        cond: passed to the denoiser (a :class:`PromptConditions`, or ``None`` for a bound one).
        num_inference_steps: number of scheduler steps.
        generator: passed to ``scheduler.step`` when it accepts one (stochastic schedulers).
        callback: called after each step with ``{"i", "t", "sigma", "latents", "denoised"}``.

    Returns:
        ``[B, C, H, W]`` the final latents (decode them with the pipeline's VAE).
    """
    where = "sample_with_scheduler"
    if not callable(denoiser):
        raise fail(where, f"argument `denoiser` is {describe(denoiser)}, expected a callable D(x, sigma, cond).")
    _check_scheduler(scheduler, where)
    latents = check_image(latents, where, "latents")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise fail(where, f"`num_inference_steps` is {num_inference_steps!r}, expected an int >= 1.")
    pred = _prediction_type(scheduler, None, where)
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    grid = _grid(scheduler, where).to(device=latents.device)
    takes_gen = "generator" in inspect.signature(scheduler.step).parameters
    B = latents.shape[0]
    for i, t in enumerate(scheduler.timesteps):
        sig64 = grid[i]
        sigma = sig64.to(latents.dtype)
        x_in = scheduler.scale_model_input(latents, t)
        x = x_in * torch.sqrt(1 + sigma**2)
        d = call_denoiser(denoiser, x, sigma.expand(B), cond, where)   # shape and finiteness checked
        eps = (x - d) / sigma
        if pred == "epsilon":
            out = eps
        elif pred == "v_prediction":      # a = 1 / (1 + sigma^2): sqrt(a) = 1 / sqrt(1 + s^2), sqrt(1 - a) = s sqrt(a)
            ra = (1 / torch.sqrt(1 + sig64**2)).to(x.dtype)
            out = ra * eps - (sig64 * ra).to(x.dtype) * d
        else:
            out = d
        step_kwargs: dict[str, Any] = {"return_dict": False}
        if takes_gen and generator is not None:
            step_kwargs["generator"] = generator
        latents = scheduler.step(out, t, latents, **step_kwargs)[0]
        if callback is not None:
            callback({"i": i, "t": t, "sigma": sigma, "latents": latents, "denoised": d})
    return latents


# ============================================================================ regional cross-attention
@dataclass(frozen=True)
class _RegionSpec:
    """What a prompt hands the processors: its token groups ``[B, G, T]`` and regions ``[B|1, G, H, W]``."""

    groups: Tensor
    regions: Tensor
    size: tuple[int, int]

    def __init__(self, groups: Tensor, regions: Tensor, size: Any) -> None:
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "regions", regions)
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))


Coarse = Literal["majority", "any", "all"]


def _level_size(H: int, W: int, q: int, where: str) -> tuple[int, int]:
    h, w = H, W
    for _ in range(16):
        if h * w == q:
            return h, w
        if h * w < q:
            break
        h, w = (h + 1) // 2, (w + 1) // 2
    raise fail(where, f"an attention layer has {q} query positions, which matches no downsampling of the "
               f"{H}x{W} latents by powers of 2.",
               "regional attention supports UNet-style models whose attention runs on the latent grid "
               "downsampled by powers of 2.")


def resize_regions(regions: Tensor, size: Sequence[int], *, coarse: Coarse = "majority") -> Tensor:
    r"""Resize region masks ``[B, G, H, W]`` to ``size = (h, w)``, as the attention processors do.

    Float (soft) masks are area-averaged (``F.interpolate(mode="area")``). Bool (hard) masks are
    area-averaged to the fraction ``f`` of each coarse cell inside the region and then thresholded:
    ``"majority"``: ``f >= 1/2``; ``"any"``: ``f > 0``; ``"all"``: ``f == 1``. The result has the input's
    kind (bool stays bool).

    Examples:
        >>> import torch
        >>> m = torch.zeros(1, 1, 4, 4, dtype=torch.bool); m[..., :2, :3] = True
        >>> resize_regions(m, (2, 2))[0, 0].tolist(), resize_regions(m, (2, 2), coarse="all")[0, 0].tolist()
        ([[True, True], [False, False]], [[True, False], [False, False]])
    """
    where = "resize_regions"
    if not isinstance(regions, torch.Tensor) or regions.dim() != 4:
        raise fail(where, f"argument `regions` is {describe(regions)}, expected a tensor [B, G, H, W].")
    if coarse not in ("majority", "any", "all"):
        raise fail(where, f"`coarse` is {coarse!r}, expected 'majority', 'any' or 'all'.")
    h, w = int(size[0]), int(size[1])
    if (h, w) == tuple(regions.shape[-2:]):
        return regions
    if regions.dtype == torch.bool:
        f = F.interpolate(regions.double(), size=(h, w), mode="area")
        if coarse == "majority":
            return f >= 0.5
        if coarse == "any":
            return f > 0
        return f >= 1 - 1e-9
    if regions.shape[1] == 0:
        return regions.new_zeros(regions.shape[0], 0, h, w)
    return F.interpolate(regions, size=(h, w), mode="area")


def _region_bias(spec: _RegionSpec, q: int, batch: int, coarse: Coarse, dtype: torch.dtype,
                 device: torch.device, where: str) -> Tensor:
    """``[batch, q, T]`` additive attention bias ``log w`` with ``w = m_g(query)`` for tokens of group ``g``
    and ``w = 1`` for tokens in no group."""
    H, W = spec.size
    h, w = _level_size(H, W, q, where)
    regions = resize_regions(spec.regions, (h, w), coarse=coarse).to(device)
    work = torch.promote_types(torch.float32, dtype)
    m = regions.to(work).flatten(2)                                            # [Bm, G, q]
    onehot = spec.groups.to(device=device, dtype=work)                          # [Bp, G, T]
    if m.shape[0] != onehot.shape[0]:
        m = m.expand(onehot.shape[0], -1, -1)
    weight = torch.einsum("bgq,bgt->bqt", m, onehot) + (1 - onehot.sum(1))[:, None, :]
    if weight.shape[0] != batch:
        if batch % weight.shape[0] != 0:
            raise fail(where, f"the attention layer runs on a batch of {batch} but the prompt regions have "
                       f"{weight.shape[0]}; expected a divisor.")
        weight = weight.repeat(batch // weight.shape[0], 1, 1)
    blind = ~(weight > 0).any(-1)
    if bool(blind.any()):
        b, i = (int(k) for k in blind.nonzero()[0])
        raise fail(where, f"query position {i} (of {q}) of image {b} may attend to no token: every token "
                   "belongs to a group whose region excludes it, so the softmax would divide by zero.",
                   "leave some context tokens (the start token) out of every group, or make the regions "
                   "cover the whole image together.")
    return torch.log(weight).to(dtype)


class RegionalAttnProcessor:
    r"""An attention processor that restricts each token group to its region, around any other processor.

    For a cross-attention call (``encoder_hidden_states`` given) that receives a prompt's regions (the
    ``localscore_regions`` keyword, which :class:`DiffusersDenoiser` passes through
    ``cross_attention_kwargs``), it adds the bias

        ``bias[b, q, t] = log m_g(q)`` for token ``t`` of group ``g``, ``0`` for tokens in no group

    to the attention mask (on top of the padding mask, if any), where ``m_g`` is group ``g``'s region
    resized to the layer's resolution (:func:`resize_regions`). The softmax weights become
    ``softmax(s)_t * m_g(q) / Z``: hard masks give weight exactly ``0`` outside the region, so the
    layer's output outside it does not depend on the group's embeddings at all; soft masks scale the
    attention to the group continuously. Then it calls the wrapped processor (diffusers' own
    ``AttnProcessor2_0``, a LoRA or IP-Adapter processor, ...) unchanged. Self-attention calls and calls
    without regions go straight to the wrapped processor, so the processor is an exact pass-through
    until a prompt carries regions.

    Install it with :func:`install_regional_attention` rather than by hand.
    """

    def __init__(self, inner: Any, *, coarse: Coarse = "majority") -> None:
        if not callable(inner):
            raise fail("RegionalAttnProcessor", f"`inner` is {describe(inner)}, expected an attention processor.")
        if coarse not in ("majority", "any", "all"):
            raise fail("RegionalAttnProcessor", f"`coarse` is {coarse!r}, expected 'majority', 'any' or 'all'.")
        self.inner = inner
        self.coarse: Coarse = coarse

    def _call(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
              attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        spec = kwargs.pop(REGIONS_KWARG, None)
        if spec is not None and isinstance(encoder_hidden_states, torch.Tensor):
            if encoder_hidden_states.shape[1] != spec.groups.shape[2]:
                raise fail("RegionalAttnProcessor", f"the layer attends to {encoder_hidden_states.shape[1]} tokens "
                           f"but the prompt's groups cover {spec.groups.shape[2]}.",
                           "regional attention needs the prompt's embeddings as the only cross-attention context.")
            hs = hidden_states
            q = hs.shape[2] * hs.shape[3] if hs.dim() == 4 else hs.shape[1]
            bias = _region_bias(spec, q, hs.shape[0], self.coarse, hs.dtype, hs.device, "RegionalAttnProcessor")
            if attention_mask is not None:
                try:
                    bias = attention_mask.to(bias.dtype) + bias
                except RuntimeError as e:
                    raise fail("RegionalAttnProcessor", f"cannot combine the existing attention mask of shape "
                               f"{tuple(attention_mask.shape)} with the regional bias {tuple(bias.shape)}.") from e
            attention_mask = bias
        return cast(Tensor, self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                       attention_mask=attention_mask, **kwargs))

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        return self._call(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    def __repr__(self) -> str:
        return f"RegionalAttnProcessor({self.inner!r}, coarse={self.coarse!r})"


_PROCESSOR_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def _wrapper_class(inner: Any) -> type:
    """A subclass of RegionalAttnProcessor whose ``__call__`` signature names the inner processor's keywords.

    diffusers' ``Attention.forward`` passes a processor only the keywords its signature names, so the
    wrapper must list the inner processor's (``temb``, ``ip_adapter_masks``, ...) and its own.
    """
    try:
        params = inspect.signature(inner).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    fixed = ("attn", "hidden_states", "encoder_hidden_states", "attention_mask")
    extra = tuple(n for n, p in params.items() if n not in fixed and p.kind in
                  (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))
    key = (type(inner), extra)
    cls = _PROCESSOR_CLASSES.get(key)
    if cls is not None:
        return cls
    P = inspect.Parameter

    def __call__(self: RegionalAttnProcessor, attn: Any, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self._call(attn, hidden_states, *args, **kwargs)

    sig = [P("self", P.POSITIONAL_OR_KEYWORD), P("attn", P.POSITIONAL_OR_KEYWORD),
           P("hidden_states", P.POSITIONAL_OR_KEYWORD),
           P("encoder_hidden_states", P.POSITIONAL_OR_KEYWORD, default=None),
           P("attention_mask", P.POSITIONAL_OR_KEYWORD, default=None)]
    sig += [P(n, P.KEYWORD_ONLY, default=None) for n in extra if n != REGIONS_KWARG]
    sig += [P(REGIONS_KWARG, P.KEYWORD_ONLY, default=None)]
    __call__.__signature__ = inspect.Signature(sig)  # type: ignore[attr-defined]
    cls = type(f"Regional{type(inner).__name__}", (RegionalAttnProcessor,), {"__call__": __call__})
    _PROCESSOR_CLASSES[key] = cls
    return cls


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "set_processor") and hasattr(m, "processor")]


def _has_regional(model: nn.Module) -> bool:
    return any(isinstance(m.processor, RegionalAttnProcessor) for _, m in _attention_modules(model))


class RegionalAttention:
    """The handle of an installed regional attention: ``remove()`` (or leaving the ``with`` block) restores
    every original processor object, so the model computes bit for bit what it did before.

    Attributes:
        model: the model it is installed on.
        originals: ``{module name: original processor}``.
    """

    def __init__(self, model: nn.Module, originals: dict[str, Any]) -> None:
        self.model = model
        self.originals = originals
        self.installed = True

    def remove(self) -> None:
        """Put the original processors back (idempotent)."""
        if not self.installed:
            return
        modules = dict(_attention_modules(self.model))
        for name, proc in self.originals.items():
            cast(Any, modules[name]).set_processor(proc)
        self.installed = False

    def __enter__(self) -> RegionalAttention:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"RegionalAttention({len(self.originals)} layers, installed={self.installed})"


def install_regional_attention(model: nn.Module, *, coarse: Coarse = "majority") -> RegionalAttention:
    r"""Wrap every attention processor of ``model`` in a :class:`RegionalAttnProcessor`.

    Works on any module holding diffusers ``Attention`` layers (a UNet, a transformer, one block).
    Until a prompt with ``regions`` is used, the model computes exactly what it did; with regions,
    cross-attention from each token group is confined to its region (see
    :class:`RegionalAttnProcessor`). Processors set before (``AttnProcessor2_0``, LoRA, IP-Adapter, ...)
    keep working inside the wrapper.

    Args:
        model: an ``nn.Module`` containing diffusers attention layers.
        coarse: how hard masks are resized to coarser layers (:func:`resize_regions`).

    Returns:
        A :class:`RegionalAttention` handle; call ``remove()`` or use it as a context manager.

    Raises:
        LocalScoreError: if the model has no attention layer or already has regional attention.

    Examples:
        >>> import torch
        >>> from diffusers.models.attention_processor import Attention
        >>> layer = Attention(query_dim=4, cross_attention_dim=3, heads=1, dim_head=4)
        >>> before = layer.processor
        >>> with install_regional_attention(layer):
        ...     type(layer.processor).__name__
        'RegionalAttnProcessor2_0'
        >>> layer.processor is before
        True
    """
    where = "install_regional_attention"
    if not isinstance(model, nn.Module):
        raise fail(where, f"argument `model` is {describe(model)}, expected a torch.nn.Module (e.g. a UNet).")
    if coarse not in ("majority", "any", "all"):
        raise fail(where, f"`coarse` is {coarse!r}, expected 'majority', 'any' or 'all'.")
    layers = _attention_modules(model)
    if not layers:
        raise fail(where, f"{type(model).__name__} has no diffusers attention layer (no module with "
                   "`set_processor`).", "pass the UNet / transformer itself.")
    if _has_regional(model):
        raise fail(where, "regional attention is already installed on this model.",
                   "remove the previous handle first (`handle.remove()`).")
    originals: dict[str, Any] = {}
    for name, m in layers:
        proc = cast(Any, m).processor
        originals[name] = proc
        cast(Any, m).set_processor(_wrapper_class(proc)(proc, coarse=coarse))
    return RegionalAttention(model, originals)


@contextmanager
def regional_attention(model: nn.Module, *, coarse: Coarse = "majority") -> Iterator[RegionalAttention]:
    """Context-manager form of :func:`install_regional_attention`: removed on exit, even on error."""
    handle = install_regional_attention(model, coarse=coarse)
    try:
        yield handle
    finally:
        handle.remove()


# ============================================================================ feature hooks
def list_blocks(model: nn.Module, *, max_depth: int = 2, types: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Names and class names of a model's blocks, to choose where to record features.

    Args:
        model: any ``nn.Module`` (for a diffusers UNet: ``down_blocks.0``, ``mid_block``,
            ``up_blocks.1.attentions.0``, ...).
        max_depth: the deepest name to list, counted in dots (``mid_block`` is 0,
            ``down_blocks.0`` is 1); module lists themselves are skipped.
        types: only blocks whose class name is one of these (e.g. ``["Transformer2DModel"]``), at any depth.

    Returns:
        ``[(name, class name), ...]`` in module order.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Sequential(torch.nn.ReLU()))
        >>> list_blocks(net)
        [('0', 'Conv2d'), ('1', 'Sequential'), ('1.0', 'ReLU')]
    """
    if not isinstance(model, nn.Module):
        raise fail("list_blocks", f"argument `model` is {describe(model)}, expected a torch.nn.Module.")
    out = []
    for name, m in model.named_modules():
        if not name or isinstance(m, (nn.ModuleList, nn.ModuleDict)):
            continue
        cls = type(m).__name__
        if types is not None:
            if cls in types:
                out.append((name, cls))
        elif name.count(".") <= max_depth:
            out.append((name, cls))
    return out


def _first_tensor(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    return out


class FeatureRecorder:
    """Forward hooks that record the outputs of named blocks (a context manager).

    ``recorder.features[name]`` is the block's output of the last forward pass: the tensor itself, the
    first element of a tuple (diffusers down blocks return ``(hidden_states, residuals)``), or
    ``.sample`` of an output object. Outputs are kept in the autograd graph (``detach=False``), so
    gradients and forward-mode derivatives flow through them.

    Args:
        model: the module whose submodules to hook.
        names: submodule names (see :func:`list_blocks`).
        detach: store ``output.detach()`` instead.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU())
        >>> with FeatureRecorder(net, ["0"]) as rec:
        ...     _ = net(torch.zeros(1, 1, 5, 5))
        >>> rec.features["0"].shape
        torch.Size([1, 2, 5, 5])
    """

    def __init__(self, model: nn.Module, names: Sequence[str], *, detach: bool = False) -> None:
        where = "FeatureRecorder"
        if not isinstance(model, nn.Module):
            raise fail(where, f"argument `model` is {describe(model)}, expected a torch.nn.Module.")
        if isinstance(names, str):
            names = [names]
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules or not n]
        if missing:
            close = [n for n in modules if n and missing[0].split(".")[0] in n][:6]
            raise fail(where, f"no block named {missing[0]!r} in {type(model).__name__}; expected a name from "
                       f"list_blocks(model){' such as ' + ', '.join(close) if close else ''}.",
                       "list the names with `localscore.adapters.diffusers.list_blocks(model)`.")
        self.model = model
        self.names = list(names)
        self.detach = detach
        self.features: dict[str, Tensor] = {}
        self._handles: list[Any] = []
        self._modules = modules

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = _first_tensor(output)
            if isinstance(out, torch.Tensor):
                self.features[name] = out.detach() if self.detach else out
        return hook

    def __enter__(self) -> FeatureRecorder:
        if self._handles:
            raise fail("FeatureRecorder", "this recorder is already active.")
        self.features = {}
        self._handles = [self._modules[n].register_forward_hook(self._hook(n)) for n in self.names]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class FeatureMap(nn.Module):
    """The features of one block as a function ``F(x, sigma, cond) -> [B, C', h, w]``.

    One forward pass of ``denoiser(x, sigma, cond)`` with a hook on ``model``'s block ``name``; the
    recorded output is returned (in the graph, so :func:`gradient_influence` works on it). Spatial
    sequences ``[B, h * w, C']`` (transformer blocks) are reshaped to ``[B, C', h, w]`` using ``x``'s
    aspect ratio.

    Args:
        denoiser: the denoiser whose forward pass runs ``model`` (e.g. a :class:`DiffusersDenoiser`).
        model: the module holding the block (e.g. ``denoiser.model``).
        name: the block's name (see :func:`list_blocks`).
    """

    def __init__(self, denoiser: Any, model: nn.Module, name: str) -> None:
        super().__init__()
        if not callable(denoiser):
            raise fail("FeatureMap", f"`denoiser` is {describe(denoiser)}, expected a callable D(x, sigma, cond).")
        FeatureRecorder(model, [name])  # validates the name
        self.inner = denoiser
        self.model = model
        self.name = name

    def forward(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        with FeatureRecorder(self.model, [self.name]) as rec:
            self.inner(x, sigma, cond)
        f = rec.features.get(self.name)
        if f is None:
            raise fail("FeatureMap", f"block {self.name!r} did not run (or returned no tensor) during the "
                       "forward pass.",
                       "pick a block on the path of this model's forward pass.")
        if f.dim() == 3:  # [B, L, C'] token sequence over the latent grid
            H, W = x.shape[-2:]
            h, w = _level_size(H, W, f.shape[1], "FeatureMap")
            f = f.transpose(1, 2).reshape(f.shape[0], f.shape[2], h, w)
        if f.dim() != 4:
            raise fail("FeatureMap", f"block {self.name!r} returned shape {tuple(f.shape)}, expected a feature map "
                       "[B, C', h, w].", "pick a spatial block (a down/mid/up block, a resnet, a transformer).")
        return f


# ============================================================================ influence maps
def math_attention() -> Any:
    """A context manager that makes ``scaled_dot_product_attention`` use its math kernel.

    The fused kernels (flash, memory-efficient) have no forward-mode derivative, so ``torch.func.jvp``
    through a diffusers model fails with them; :func:`gradient_influence` uses this internally, and
    other forward-mode tools (e.g. ``localscore.metrics.pixel_locality(..., method="probes")``) can be
    wrapped in it.

    Examples:
        >>> import torch
        >>> with math_attention():
        ...     q = torch.randn(1, 1, 3, 2)
        ...     torch.func.jvp(lambda q: torch.nn.functional.scaled_dot_product_attention(q, q, q),
        ...                    (q,), (torch.ones_like(q),))[1].shape
        torch.Size([1, 1, 3, 2])
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False)
    return sdpa_kernel(SDPBackend.MATH)


InfluenceMode = Literal["drop", "only"]


def _check_fn_output(out: Any, B: int, where: str) -> Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != B:
        raise fail(where, f"`fn` returned {describe(out)}, expected [B = {B}, C', h, w].",
                   "pass a denoiser, a FeatureMap, or a decoder composed with either.")
    return out


def _apply(fn: Any, decoder: Any, x: Tensor, s: Tensor, cond: PromptConditions, where: str) -> Tensor:
    out = _check_fn_output(fn(x, s, cond), x.shape[0], where)
    if decoder is not None:
        out = _check_fn_output(decoder(out), x.shape[0], where)
    return out


def ablation_influence(
    fn: Any,
    x: Tensor,
    sigma: Any,
    cond: PromptConditions,
    *,
    mode: InfluenceMode = "drop",
    decoder: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Per-concept influence maps by ablation: ``[B, G, h, w]``.

    With ``y(p) = decoder(fn(x, sigma, p))`` (``decoder`` optional, e.g. :func:`vae_decoder` to see the
    influence in pixels) and the channel-wise Euclidean norm ``|.|``:

    * ``mode="drop"``: ``I[b, g] = | y(cond) - y(cond.drop(g)) |``, what removing concept ``g`` changes;
    * ``mode="only"``: ``I[b, g] = | y(cond.select(g)) - y(cond.drop_all()) |``, what concept ``g`` alone
      adds to the background (the component of the projective composition).

    ``I[b, g]`` is zero for concepts inactive in prompt ``b``.

    Args:
        fn: ``fn(x, sigma, cond) -> [B, C', h, w]``: a denoiser (latent influence) or a
            :class:`FeatureMap` (feature-space influence).
        x: ``[B, C, H, W]`` noisy latents (localscore's variables).
        sigma: ``[B]`` or a float.
        cond: the prompts, ``G`` concepts.
        mode: ``"drop"`` or ``"only"``.
        decoder: optional map applied to ``fn``'s output before the difference.

    Returns:
        ``[B, G, h, w]`` non-negative influence, in ``x``'s dtype.

    Examples:
        >>> import torch
        >>> def D(x, s, p):       # concept g writes its embedding's first entry into column g
        ...     e = p.effective_embeds()[:, 1:3, 0]                     # tokens 1, 2 -> [B, 2]
        ...     return x * 0 + torch.nn.functional.pad(e, (0, 2))[:, None, None, :]
        >>> p = PromptConditions(torch.ones(1, 3, 2), [[1], [2]])
        >>> ablation_influence(D, torch.zeros(1, 1, 1, 4), 1.0, p)[0, :, 0].tolist()
        [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    """
    where = "ablation_influence"
    if not callable(fn):
        raise fail(where, f"argument `fn` is {describe(fn)}, expected a callable fn(x, sigma, cond).")
    x = check_image(x, where)
    s = as_sigma(sigma, x.shape[0], where, like=x)
    cond = _check_prompt(cond, where).for_batch(x.shape[0], where)
    if mode not in ("drop", "only"):
        raise fail(where, f"`mode` is {mode!r}, expected 'drop' or 'only'.")
    maps = []
    if mode == "drop":
        ref = _apply(fn, decoder, x, s, cond, where)
        for g in range(cond.num_groups):
            maps.append((ref - _apply(fn, decoder, x, s, cond.drop(g), where)).norm(dim=1))
    else:
        bg = _apply(fn, decoder, x, s, cond.drop_all(), where)
        for g, single in enumerate(cond.singletons()):
            del g
            maps.append((_apply(fn, decoder, x, s, single, where) - bg).norm(dim=1))
    if not maps:
        raise fail(where, "the prompt has no token group (G = 0): there is no concept to measure.",
                   "group the tokens of each concept when building PromptConditions.")
    out = torch.stack(maps, 1)
    return (out * cond.active[:, :, None, None].to(out.dtype)).to(x.dtype)


def _batched_jvp_sq(fn: Any, decoder: Any, x: Tensor, s: Tensor, cond: PromptConditions, base: Tensor,
                    dirs: list[Tensor], where: str) -> Tensor:
    """``|J v_k|^2`` summed over channels, ``[n, B, h, w]``, for ``n`` directions in one call of batch ``n B``.

    The images of a batch are independent, so stacking ``n`` copies of the batch along the batch axis and
    feeding direction ``k`` to copy ``k`` gives the ``n`` Jacobian-vector products in one forward-mode pass.
    """
    n, B = len(dirs), x.shape[0]
    fixed = cond.replace(active=torch.ones_like(cond.active), null_embeds=None).repeat(n)
    xr = x.repeat(n, 1, 1, 1)
    sr = s.repeat(n)

    def f(e: Tensor) -> Tensor:
        return _apply(fn, decoder, xr, sr, fixed.replace(embeds=e), where)

    jv = torch.func.jvp(f, (base.repeat(n, 1, 1),), (torch.cat(dirs),))[1]
    return (jv**2).sum(1).reshape(n, B, *jv.shape[2:])


def gradient_influence(
    fn: Any,
    x: Tensor,
    sigma: Any,
    cond: PromptConditions,
    *,
    probes: int | Literal["exact"] = "exact",
    generator: torch.Generator | None = None,
    decoder: Callable[[Tensor], Tensor] | None = None,
    chunk: int = 8,
) -> Tensor:
    r"""Per-concept influence maps by gradient with respect to the concept's token embeddings: ``[B, G, h, w]``.

    With ``y(e) = decoder(fn(x, sigma, cond with embeddings e))`` and ``J_g[b, :, i, j] = d y[b, :, i, j] /
    d e[b, tokens of g]`` (``C' x (n_g D)``), the map is the Frobenius norm of that Jacobian block,

        ``I[b, g, i, j] = || J_g[b, :, i, j] ||_F = sqrt( sum_k | J_g[b, :, i, j] v_k |^2 )``

    over the basis vectors ``v_k`` of the group's embedding coordinates (``probes="exact"``:
    ``n_g * D`` forward-mode products), or estimated from ``probes = n`` Rademacher vectors ``v_k``
    (``E |J v|^2 = ||J||_F^2``): ``I ~ sqrt( mean_k |J_g v_k|^2 )``. The derivative is taken at the
    embeddings the model sees (:meth:`PromptConditions.effective_embeds`), so an inactive concept (its
    tokens replaced) is measured at the null embedding; use ``mode="drop"`` of
    :func:`ablation_influence` for presence-versus-absence effects. Uses ``torch.func.jvp`` with the
    math backend of scaled-dot-product attention (the fused kernels have no forward-mode derivative),
    ``chunk`` directions per call: the batch is stacked ``chunk`` times and copy ``k`` carries direction
    ``k``, which is exact because ``fn`` treats the images of a batch independently (diffusion models in
    eval mode do; a model with batch statistics does not). Run it under ``torch.no_grad()`` to keep no
    graph for the parameters.

    Args:
        fn: ``fn(x, sigma, cond) -> [B, C', h, w]`` (a denoiser or a :class:`FeatureMap`).
        x: ``[B, C, H, W]`` noisy latents.
        sigma: ``[B]`` or a float.
        cond: the prompts, ``G`` concepts.
        probes: ``"exact"`` or the number of random probes per concept.
        generator: source of the random probes.
        decoder: optional map applied to ``fn``'s output.
        chunk: directions evaluated per batched forward-mode call (memory grows with it).

    Returns:
        ``[B, G, h, w]`` non-negative influence, in ``x``'s dtype.

    Examples:
        >>> import torch
        >>> D = lambda x, s, p: x * 0 + 3 * p.effective_embeds()[:, 1:2, :1, None]   # token 1, entry 0
        >>> p = PromptConditions(torch.ones(1, 3, 2), [[1], [2]])
        >>> gradient_influence(D, torch.zeros(1, 1, 2, 2), 1.0, p)[0, :, 0, 0].tolist()
        [3.0, 0.0]
    """
    where = "gradient_influence"
    if not callable(fn):
        raise fail(where, f"argument `fn` is {describe(fn)}, expected a callable fn(x, sigma, cond).")
    x = check_image(x, where)
    s = as_sigma(sigma, x.shape[0], where, like=x)
    cond = _check_prompt(cond, where).for_batch(x.shape[0], where)
    exact = probes == "exact"
    if not exact and (isinstance(probes, bool) or not isinstance(probes, int) or probes < 1):
        raise fail(where, f"`probes` is {probes!r}, expected 'exact' or an int >= 1.")
    if cond.num_groups == 0:
        raise fail(where, "the prompt has no token group (G = 0): there is no concept to measure.")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise fail(where, f"`chunk` is {chunk!r}, expected an int >= 1 (directions per batched call).")
    base = cond.effective_embeds()
    B, _, Dm = base.shape
    maps = []
    with math_attention():
        for g in range(cond.num_groups):
            tok = cond.token_mask(g)                                          # [B, T]
            if exact:
                n_tok = int(tok.sum(1).max())
                idx = [tok[b].nonzero().flatten().tolist() for b in range(B)]
                dirs = []
                for k in range(n_tok):
                    for d in range(Dm):
                        v = torch.zeros_like(base)
                        for b in range(B):
                            if k < len(idx[b]):
                                v[b, idx[b][k], d] = 1
                        dirs.append(v)
            else:
                dirs = []
                for _ in range(int(probes)):
                    r = torch.randint(0, 2, base.shape, generator=generator, device=base.device).to(base.dtype) * 2 - 1
                    dirs.append(r * tok[..., None].to(base.dtype))
            acc: Tensor | None = None
            for start in range(0, len(dirs), chunk):
                sq = _batched_jvp_sq(fn, decoder, x, s, cond, base, dirs[start:start + chunk], where)  # [n, B, h, w]
                acc = sq.sum(0) if acc is None else acc + sq.sum(0)
            assert acc is not None
            if not exact:
                acc = acc / len(dirs)
            maps.append(acc.sqrt())
    return torch.stack(maps, 1).to(x.dtype)


def concept_feature_means(
    fn: Any,
    x: Tensor,
    sigma: Any,
    prompts: Sequence[PromptConditions],
    background: PromptConditions,
) -> tuple[Tensor, Tensor]:
    r"""Mean features of a batch under each conditioning, for the feature-orthogonality test.

    ``mu_k = mean_b fn(x, sigma, prompts[k])[b]`` and ``mu_none = mean_b fn(x, sigma, background)[b]``,
    flattened. The mean differences ``d_k = mu_k - mu_none`` of concepts that compose projectively in
    feature space are mutually orthogonal (a necessary condition); pass the result to
    :func:`localscore.metrics.feature_orthogonality` for the cosine matrix of the ``d_k``.

    Args:
        fn: ``fn(x, sigma, cond) -> [B, ...]``, e.g. a :class:`FeatureMap`.
        x: ``[B, C, H, W]`` the batch (noisy latents: average over images and noise draws).
        sigma: ``[B]`` or a float.
        prompts: ``K`` conditionings (e.g. "in the style of X" and "a photo of Y"), each of batch 1 or B.
        background: the reference conditioning (e.g. the empty prompt, or ``prompt.drop_all()``).

    Returns:
        ``(means [K, F], mean_background [F])`` with ``F`` the number of features.

    Examples:
        >>> import torch
        >>> fn = lambda x, s, p: x + p.effective_embeds()[:, :1, :, None]       # shifts channel-wise
        >>> e = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])                          # tokens 0 and 1
        >>> p = PromptConditions(e, [[0], [1]])
        >>> means, bg = concept_feature_means(fn, torch.zeros(3, 1, 2, 1), 1.0, p.singletons(), p.drop_all())
        >>> (means - bg).tolist()
        [[1.0, 0.0], [0.0, 0.0]]
    """
    where = "concept_feature_means"
    if not callable(fn):
        raise fail(where, f"argument `fn` is {describe(fn)}, expected a callable fn(x, sigma, cond).")
    x = check_image(x, where)
    s = as_sigma(sigma, x.shape[0], where, like=x)
    if isinstance(prompts, PromptConditions) or not isinstance(prompts, Sequence) or not prompts:
        raise fail(where, f"argument `prompts` is {describe(prompts)}, expected a non-empty list of PromptConditions.",
                   "for one prompt's concepts pass `prompt.singletons()`.")
    means = []
    for k, p in enumerate([*prompts, background]):
        name = f"prompts[{k}]" if k < len(prompts) else "background"
        p = _check_prompt(p, where, name).for_batch(x.shape[0], where)
        out = fn(x, s, p)
        if not isinstance(out, torch.Tensor) or out.shape[0] != x.shape[0]:
            raise fail(where, f"`fn` returned {describe(out)} for {name}, expected a tensor [B = {x.shape[0]}, ...].")
        means.append(out.reshape(out.shape[0], -1).mean(0))
    return torch.stack(means[:-1]), means[-1]


def concept_orthogonality(
    fn: Any,
    x: Tensor,
    sigma: Any,
    prompts: Sequence[PromptConditions],
    background: PromptConditions,
    *,
    labels: Sequence[str] | None = None,
) -> Any:
    r"""The feature-orthogonality test for concepts: the cosine matrix of mean feature differences.

    :func:`concept_feature_means` followed by :func:`localscore.metrics.feature_orthogonality`:
    ``d_k = mu_k - mu_none`` and ``cosine[j, k] = <d_j, d_k> / (|d_j| |d_k|)``. Near-zero off-diagonal
    entries (e.g. between a style and a content concept) are the necessary condition for their
    projective composition in that feature space.

    Returns:
        :class:`localscore.metrics.FeatureOrthogonality` (``cosine [K, K]``, ``norms [K]``,
        ``max_abs_offdiag``).
    """
    from ..metrics import feature_orthogonality

    means, bg = concept_feature_means(fn, x, sigma, prompts, background)
    return feature_orthogonality(means, bg, labels=labels)


def concept_locality(
    influence: Tensor,
    prompt: PromptConditions,
    *,
    regions: Tensor | None = None,
    coarse: Coarse = "majority",
) -> Any:
    r"""The conditional locality index of per-concept influence maps, by :func:`localscore.metrics.locality_index`.

    The regions (``regions`` or ``prompt.regions``, ``[B or 1, G, H, W]``) are resized to the maps'
    resolution with :func:`resize_regions` (so latent-, feature- and pixel-resolution maps all work) and
    zeroed for inactive concepts; then ``inside[b, g]`` is the share of concept ``g``'s influence
    inside its own region and ``on_others[b, g]`` the share on the other concepts' regions.

    Args:
        influence: ``[B, G, h, w] >= 0`` from :func:`ablation_influence` or :func:`gradient_influence`.
        prompt: the prompts the maps belong to.
        regions: the concepts' regions (default: ``prompt.regions``).
        coarse: how hard masks are resized (see :func:`resize_regions`).

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
    from ..metrics import locality_index

    where = "concept_locality"
    prompt = _check_prompt(prompt, where, "prompt")
    if not isinstance(influence, torch.Tensor) or influence.dim() != 4 \
            or tuple(influence.shape[:2]) != (prompt.batch_size, prompt.num_groups):
        raise fail(where, f"argument `influence` is {describe(influence)}, expected [B, G, h, w] = "
                   f"[{prompt.batch_size}, {prompt.num_groups}, h, w] (one map per concept).",
                   "compute it with ablation_influence / gradient_influence on the same prompt.")
    r = regions if regions is not None else prompt.regions
    if r is None:
        raise fail(where, "no regions: the prompt carries none and `regions` was not given.",
                   "pass regions=[B, G, H, W] masks (where each concept should act).")
    r = prompt.with_regions(r).regions
    assert r is not None
    m = resize_regions(r, influence.shape[-2:], coarse=coarse).to(influence.device)
    m = m.expand(prompt.batch_size, -1, -1, -1).to(influence.dtype) * prompt.active[:, :, None, None].to(
        influence.dtype)
    return locality_index(influence, m)


# ============================================================================ decoders
def vae_decoder(vae: Any, *, scaling_factor: float | None = None, shift_factor: float | None = None
                ) -> Callable[[Tensor], Tensor]:
    r"""A callable ``latents [B, 4, h, w] -> images [B, 3, H, W]`` from a diffusers ``AutoencoderKL``.

    ``images = vae.decode(latents / scaling_factor + shift_factor).sample``, with the factors from
    ``vae.config`` unless given (Stable Diffusion 1.x: 0.18215; SDXL: 0.13025). Use it as the
    ``decoder`` of :func:`ablation_influence` / :func:`gradient_influence` to see influence in pixels.
    """
    where = "vae_decoder"
    if not hasattr(vae, "decode"):
        raise fail(where, f"argument `vae` is {describe(vae)}, expected a diffusers autoencoder with `.decode`.",
                   "pass `pipe.vae`, or any callable latents -> images as the decoder itself.")
    config = getattr(vae, "config", {})
    sf = scaling_factor if scaling_factor is not None else float(getattr(config, "scaling_factor", 1.0) or 1.0)
    sh = shift_factor if shift_factor is not None else float(getattr(config, "shift_factor", 0.0) or 0.0)

    def decode(latents: Tensor) -> Tensor:
        dtype = next(iter(vae.parameters())).dtype if isinstance(vae, nn.Module) else latents.dtype
        out = vae.decode((latents / sf + sh).to(dtype), return_dict=False)[0]
        return cast(Tensor, out).to(latents.dtype)

    return decode
