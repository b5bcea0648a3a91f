"""Prompts as conditioner sets: :class:`PromptConditions`, whose conditioners are token groups (concepts)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from ..._checks import MAX_ELEMENTS as _MAX_ELEMENTS
from ..._checks import check_elements, check_not_meta, check_tensor
from ..._errors import describe, fail
from ..._moved import warn_moved

__all__ = ["PromptConditions"]

MAX_ELEMENTS = _MAX_ELEMENTS
"""The most elements of the embeddings and groups a batch operation (``pad_to``, ``repeat``,
``repeat_interleave``) builds; checked before allocating, read at call time
(``localscore.adapters.diffusers.prompts.MAX_ELEMENTS``)."""


def _bound(count: int, where: str, what: str) -> None:
    check_elements(count, MAX_ELEMENTS, where, what, "build smaller prompt batches",
                   limit_name="localscore.adapters.diffusers.prompts.MAX_ELEMENTS")


_CHECKED: dict[int, weakref.ref[Tensor]] = {}
"""Embeddings already checked finite (by id, held weakly): the slot operations (``select``, ``ablate``,
``drop_all``, ...) rebuild a prompt around the same tensors, and checking them again would cost a host sync
each time."""


def _check_values(t: Tensor, where: str, name: str) -> None:
    check_not_meta(t, where, name)
    key = id(t)
    ref = _CHECKED.get(key)
    if ref is not None and ref() is t:
        return
    if not bool(torch.isfinite(t).all()):
        raise fail(where, f"argument `{name}` holds NaN or infinite values.",
                   "check the text encoder's output (a float16 overflow) and pass finite embeddings.")
    if not t.requires_grad:  # a tensor in a graph may be changed in place by the caller's optimiser
        def forget(_ref: weakref.ref[Tensor], key: int = key) -> None:
            _CHECKED.pop(key, None)

        _CHECKED[key] = weakref.ref(t, forget)


class PromptConditions:
    r"""A batch of prompts whose conditioners are token groups (concepts): a conditioner set.

    The model sees token embeddings ``[B, T, D]``. Tokens are grouped into ``G`` disjoint concepts
    (``groups [B, G, T]`` bool); tokens in no group (start token, "a photo of", padding) are
    context that every variant keeps. ``active [B, G]`` says which concepts are present: the model
    is fed :meth:`effective_embeds`,

        ``e_eff[b, t] = null[b, t]  if t belongs to a group g with active[b, g] == False``
        ``e_eff[b, t] = embeds[b, t]  otherwise``,

    so ablating a concept replaces its tokens by the null embeddings (the empty prompt's, or zeros)
    at the same positions.

    It implements the conditioner-set protocol of :class:`~localscore.Conditions` with the groups as
    slots (``num_slots = G``, ``valid = active``): :meth:`select` keeps one concept, :meth:`ablate`
    makes one absent, :meth:`drop_all` is the background ``none``, :meth:`singletons` lists the
    components of a projective composition, and :meth:`pad_to`, :meth:`cat`, :meth:`repeat_interleave`,
    indexing and :meth:`to` build batches, so the metrics of :mod:`localscore.metrics` and the
    operators of :mod:`localscore.compose` take prompts as they take objects. An ablated concept keeps
    its slot (``G`` never changes, as ``Conditions.ablate`` keeps ``K``), so its region and its token
    positions stay known; a padding group (:meth:`pad_to`) is inactive and holds no token.

    Args:
        embeds: ``[B, T, D]`` token embeddings (the text encoder's output).
        groups: which tokens form each concept: a list of ``G`` token-index lists shared by the batch,
            a bool tensor ``[G, T]`` shared by the batch, or ``[B, G, T]``. Groups must be disjoint;
            a group may be empty only where it is inactive (padding).
        null_embeds: ``[B or 1, T, D]`` replacement embeddings for absent concepts (for Stable
            Diffusion: the embeddings of the empty prompt ``""``); ``None`` means zero vectors.
        active: ``[B, G]`` bool, the concepts present (default: all).
        added_cond_kwargs: extra model inputs held fixed under ablations, e.g. SDXL's
            ``{"text_embeds": [B, 1280], "time_ids": [B, 6]}`` (tensors with a leading batch axis).
        attention_mask: optional ``[B, T]`` mask of real tokens (1) and padding (0), passed to the model
            as ``encoder_attention_mask``.
        regions: optional ``[B or 1, G, H, W]`` masks (bool, or float in ``[0, 1]``) at the latent
            resolution: where each concept may act. Used by the regional attention processor (see
            :func:`~localscore.adapters.diffusers.install_regional_attention`) and by the locality metrics.

    Raises:
        LocalScoreError: on wrong shapes, dtypes, devices, out-of-range or overlapping token groups.

    Examples:
        >>> import torch
        >>> e = torch.randn(1, 6, 4)
        >>> p = PromptConditions(e, [[1, 2], [4]])          # two concepts: tokens 1-2 and token 4
        >>> p.num_slots, p.counts().tolist()
        (2, [2])
        >>> q = p.ablate(0)                                 # tokens 1, 2 become the null embedding (zeros)
        >>> q.effective_embeds()[0, 1:3].abs().sum().item(), torch.equal(q.effective_embeds()[0, 4], e[0, 4])
        (0.0, True)
        >>> [s.valid.tolist() for s in p.singletons()]
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
        _check_values(embeds, where, "embeds")
        B, T, _ = embeds.shape
        dev = embeds.device
        g = self._groups_tensor(groups, B, T, dev, where)
        G = g.shape[1]
        if active is None:
            active = torch.ones(B, G, dtype=torch.bool, device=dev)
        elif not isinstance(active, torch.Tensor) or active.dtype != torch.bool or tuple(active.shape) != (B, G):
            raise fail(where, f"argument `active` is {describe(active)}, expected a bool tensor [B, G] = [{B}, {G}].",
                       "True marks a concept that is present.")
        if active.device != dev:
            raise fail(where, f"`active` is on {active.device} but `embeds` is on {dev}.")
        if G:
            empty = ~g.any(-1) & active
            if bool(empty.any()):
                b, k = (int(i) for i in empty.nonzero()[0])
                raise fail(where, f"token group {k} of prompt {b} holds no token; expected at least one (only an "
                           "inactive padding group may be empty).",
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
            _check_values(null_embeds, where, "null_embeds")
        kwargs: dict[str, Tensor] = {}
        if added_cond_kwargs is not None and not isinstance(added_cond_kwargs, Mapping):
            raise fail(where, f"argument `added_cond_kwargs` is {describe(added_cond_kwargs)}, expected None or a "
                       "dict of tensors.", 'SDXL takes {"text_embeds": [B, 1280], "time_ids": [B, 6]}.')
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
    def num_slots(self) -> int:
        """``G``, the number of token groups (the slots of the conditioner set)."""
        return int(self.groups.shape[1])

    @property
    def num_groups(self) -> int:
        """``G``, the number of concepts (the same as :attr:`num_slots`)."""
        return int(self.groups.shape[1])

    @property
    def valid(self) -> Tensor:
        """``[B, G]`` bool: the concepts present (the same tensor as :attr:`active`)."""
        return self.active

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
            raise fail(where, f"group index {g} is out of range for G = {G} groups; expected "
                       f"0 <= g < {G}.", f"use 0 <= g < {G}.")
        return g % G

    def select(self, g: int) -> PromptConditions:
        """Only concept ``g`` present (if it was): the component of a projective composition (``G`` kept)."""
        g = self._check_group(g, "PromptConditions.select")
        keep = torch.zeros_like(self.active)
        keep[:, g] = True
        return self.replace(active=self.active & keep)

    def ablate(self, g: int) -> PromptConditions:
        """Concept ``g`` absent, the others as they were: an ablation of concept ``g`` (``G`` kept).

        Examples:
            >>> import torch
            >>> p = PromptConditions(torch.ones(1, 3, 2), [[1], [2]])
            >>> p.ablate(0).valid.tolist(), p.ablate(0).effective_embeds()[0, :, 0].tolist()
            ([[False, True]], [1.0, 0.0, 1.0])
        """
        g = self._check_group(g, "PromptConditions.ablate")
        active = self.active.clone()
        active[:, g] = False
        return self.replace(active=active)

    def drop(self, g: int) -> PromptConditions:
        """Deprecated alias of :meth:`ablate` (``Conditions.drop`` removes a slot; this never did)."""
        warn_moved("PromptConditions.drop", "PromptConditions.ablate (the concept becomes absent, G is kept)")
        return self.ablate(g)

    def drop_all(self) -> PromptConditions:
        """No concept present: the background ``none`` (context tokens only)."""
        return self.replace(active=torch.zeros_like(self.active))

    def singletons(self) -> list[PromptConditions]:
        """``[self.select(g) for g in range(G)]``, the components of a projective composition."""
        return [self.select(g) for g in range(self.num_groups)]

    def pad_to(self, num_slots: int) -> PromptConditions:
        """Pad with inactive, empty token groups up to ``num_slots`` (which must be ``>= G``).

        A padding group holds no token and is absent, so the model sees the same embeddings; its region
        (if the prompt has regions) is empty.

        Examples:
            >>> import torch
            >>> p = PromptConditions(torch.ones(1, 3, 2), [[1]]).pad_to(3)
            >>> p.num_slots, p.valid.tolist(), torch.equal(p.effective_embeds(), torch.ones(1, 3, 2))
            (3, [[True, False, False]], True)
        """
        where = "PromptConditions.pad_to"
        G = self.num_groups
        if isinstance(num_slots, bool) or not isinstance(num_slots, int):
            raise fail(where, f"`num_slots` is {describe(num_slots)}, expected an int.")
        if num_slots < G:
            raise fail(where, f"num_slots = {num_slots} is below the current G = {G}; expected >= {G}.",
                       "select the groups you need with `select` or build a new PromptConditions.")
        if num_slots == G:
            return self
        extra = num_slots - G
        B, T = self.batch_size, self.num_tokens
        _bound(B * num_slots * T, where, f"the token groups [B, G, T] = [{B}, {num_slots}, {T}]")
        groups = torch.cat([self.groups, self.groups.new_zeros(B, extra, T)], 1)
        active = torch.cat([self.active, self.active.new_zeros(B, extra)], 1)
        regions = self.regions
        if regions is not None:
            regions = torch.cat([regions, regions.new_zeros(regions.shape[0], extra, *regions.shape[2:])], 1)
        return self.replace(groups=groups, active=active, regions=regions)

    def with_regions(self, regions: Tensor | None) -> PromptConditions:
        """The same prompts with region masks ``[B or 1, G, H, W]`` (or none)."""
        return self.replace(regions=regions)

    # ------------------------------------------------------------------------------- coordinates
    def coordinates(self) -> tuple[Tensor, ...]:
        """The continuous inputs that gradients are taken with respect to: ``(effective_embeds() [B, T, D],)``.

        With :meth:`with_coordinates` and :meth:`coordinate_masks` this is what
        :func:`localscore.metrics.gradient_influence` needs of a conditioner set.
        """
        return (self.effective_embeds(),)

    def with_coordinates(self, values: Sequence[Tensor]) -> PromptConditions:
        """The prompts whose model input is ``values[0]`` ``[B, T, D]`` as given (every token as it is: every
        non-empty group marked present, no null replacement), keeping the groups, regions and added inputs."""
        (embeds,) = values
        return self.replace(embeds=embeds, active=self.groups.any(-1), null_embeds=None)

    def coordinate_masks(self, g: int) -> tuple[Tensor, ...]:
        """``([B, T, D] bool,)``: the entries of :meth:`coordinates` that belong to concept ``g`` (its tokens)."""
        g = self._check_group(g, "PromptConditions.coordinate_masks")
        return (self.groups[:, g, :, None].expand(-1, -1, int(self.embeds.shape[2])),)

    # ------------------------------------------------------------------------------- batch operations
    def _map_batch(self, fn: Callable[[Tensor], Tensor]) -> PromptConditions:
        """Apply ``fn`` to every per-prompt tensor (leading axis ``B``); shared ones (``[1, ...]``) are kept."""
        B = self.batch_size

        def per(t: Tensor | None) -> Tensor | None:
            if t is None or (t.shape[0] == 1 and B > 1):
                return t
            return fn(t)

        return PromptConditions(
            fn(self.embeds), fn(self.groups), null_embeds=per(self.null_embeds),
            active=fn(self.active),
            added_cond_kwargs={k: fn(v) for k, v in self.added_cond_kwargs.items()},
            attention_mask=None if self.attention_mask is None else fn(self.attention_mask),
            regions=per(self.regions),
        )

    def repeat(self, n: int) -> PromptConditions:
        """The batch tiled ``n`` times (as ``PromptConditions.cat([p] * n)``), for a batch of ``n * B`` images."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise fail("PromptConditions.repeat", f"`n` is {n!r}, expected an int >= 1.")
        if n == 1:
            return self
        _bound(n * self.embeds.numel(), "PromptConditions.repeat",
               f"the embeddings [n B, T, D] = [{n} x {self.batch_size}, {self.num_tokens}, {self.embeds.shape[2]}]")
        return self._map_batch(lambda t: t.repeat(n, *([1] * (t.dim() - 1))))

    def repeat_interleave(self, repeats: int) -> PromptConditions:
        """Repeat every prompt ``repeats`` times along the batch (as ``torch.repeat_interleave``)."""
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise fail("PromptConditions.repeat_interleave", f"`repeats` is {repeats!r}, expected an int >= 1.")
        if repeats == 1:
            return self
        _bound(repeats * self.embeds.numel(), "PromptConditions.repeat_interleave",
               f"the embeddings [repeats B, T, D] = [{repeats} x {self.batch_size}, {self.num_tokens}, "
               f"{self.embeds.shape[2]}]")
        return self._map_batch(lambda t: t.repeat_interleave(repeats, 0))

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> PromptConditions:
        """Batch indexing: an int keeps a batch of one; slices, lists of ints and long/bool tensors select prompts.

        Examples:
            >>> import torch
            >>> p = PromptConditions(torch.zeros(3, 2, 1), [[1]])
            >>> p[1].batch_size, p[[2, 0]].batch_size, p[torch.tensor([True, False, True])].batch_size
            (1, 2, 2)
        """
        where = "PromptConditions[...]"
        B = self.batch_size
        if isinstance(index, int) and not isinstance(index, bool):
            if not -B <= index < B:
                raise fail(where, f"prompt index {index} is out of range for B = {B}; expected an int in "
                           f"[{-B}, {B}).")
            index = slice(index % B, index % B + 1)
        if isinstance(index, bool) or isinstance(index, (str, bytes, tuple)) \
                or not isinstance(index, (slice, Sequence, torch.Tensor)):
            raise fail(where, f"index is {describe(index)}, expected an int, a slice, a list of ints, or a "
                       "long/bool tensor over the batch.")
        try:
            idx = torch.arange(B)[index if not isinstance(index, torch.Tensor) else index.cpu()]
        except (IndexError, TypeError, RuntimeError) as e:
            raise fail(where, f"cannot index a batch of B = {B} prompts with {describe(index)} ({e}); "
                       "expected an int, a slice, a list of ints, or a long/bool tensor over the batch.") from None
        if idx.dim() != 1:
            raise fail(where, f"index {describe(index)} is not a batch index; expected one dimension over "
                       "the batch.")
        if idx.numel() == 0:
            raise fail(where, f"the index {describe(index)} selects no prompt of B = {B}; expected at "
                       "least one.")
        idx = idx.to(self.device)
        return self._map_batch(lambda t: t.index_select(0, idx))

    def for_batch(self, batch: int, where: str) -> PromptConditions:
        """This batch tiled to ``batch`` images (``B`` must divide ``batch``)."""
        B = self.batch_size
        if batch == B:
            return self
        if batch % B != 0:
            raise fail(where, f"the prompt batch has B = {B} but x has {batch} images; expected B = {batch}, "
                       "1, or a divisor.", "encode one prompt per image, or a single prompt for all.")
        return self.repeat(batch // B)

    @staticmethod
    def cat(items: Sequence[PromptConditions]) -> PromptConditions:
        """Concatenate batches of prompts along ``B``, padding ``G`` to the largest (:meth:`pad_to`).

        The items must share ``T``, ``D``, the device and the keys of ``added_cond_kwargs``, and all or none
        carry regions (of one size). Embeddings take the first item's dtype. A null embedding or region mask
        shared by every item (the same tensor, batch 1) stays shared; otherwise each is expanded to its
        batch (``None`` null embeddings are zeros, a missing attention mask is all ones).

        Examples:
            >>> import torch
            >>> a = PromptConditions(torch.zeros(1, 4, 2), [[1]]); b = PromptConditions(torch.ones(2, 4, 2), [[1], [3]])
            >>> c = PromptConditions.cat([a, b])
            >>> c.batch_size, c.valid.tolist()
            (3, [[True, False], [True, True], [True, True]])
        """
        where = "PromptConditions.cat"
        items = list(items)
        if not items:
            raise fail(where, "got an empty list, expected at least one PromptConditions.")
        for i, p in enumerate(items):
            if not isinstance(p, PromptConditions):
                raise fail(where, f"item {i} is {describe(p)}, expected a PromptConditions.")
        first = items[0]
        if len(items) == 1:
            return first
        shapes = {tuple(p.embeds.shape[1:]) for p in items}
        if len(shapes) > 1:
            raise fail(where, f"items have different token shapes [T, D] {sorted(shapes)}.",
                       "encode every prompt with the same tokenizer padding (same T) and text encoder.")
        devices = {p.device for p in items}
        if len(devices) > 1:
            raise fail(where, f"items are on different devices {sorted(map(str, devices))}.",
                       "move them with `.to(device)` first.")
        keys = {tuple(sorted(p.added_cond_kwargs)) for p in items}
        if len(keys) > 1:
            raise fail(where, f"items have different added_cond_kwargs keys {sorted(keys)}.",
                       "give every prompt the same added conditions (SDXL: text_embeds and time_ids).")
        with_regions = {p.regions is not None for p in items}
        if len(with_regions) > 1:
            raise fail(where, "some items carry regions and some do not.",
                       "give every prompt regions (`with_regions`) or none (`with_regions(None)`).")
        G = max(p.num_groups for p in items)
        items = [p.pad_to(G) for p in items]
        dtype = first.dtype

        def shared_or_cat(ts: list[Tensor | None], fill: float | None, like: Tensor) -> Tensor | None:
            if all(t is None for t in ts) and fill is None:
                return None
            if all(t is ts[0] for t in ts) and ts[0] is not None and ts[0].shape[0] == 1:
                return ts[0]
            out = []
            for p, t in zip(items, ts, strict=True):
                if t is None:
                    t = like.new_full((1, *like.shape[1:]), cast(float, fill))
                out.append(t.expand(p.batch_size, *t.shape[1:]))
            return torch.cat(out)

        null_list = [None if p.null_embeds is None else p.null_embeds.to(dtype) for p in items]
        null = None if all(t is None for t in null_list) else shared_or_cat(null_list, 0.0, first.embeds)
        masks = [p.attention_mask for p in items]
        attention_mask = None
        if any(m is not None for m in masks):
            attention_mask = shared_or_cat(masks, 1.0, next(m for m in masks if m is not None))
        regions = None
        if first.regions is not None:
            sizes = {tuple(cast(Tensor, p.regions).shape[2:]) for p in items}
            if len(sizes) > 1:
                raise fail(where, f"items carry regions of different sizes {sorted(sizes)}.",
                           "build every prompt's regions at the latent resolution.")
            regions = shared_or_cat([p.regions for p in items], None, first.regions)
        return PromptConditions(
            torch.cat([p.embeds.to(dtype) for p in items]), torch.cat([p.groups for p in items]),
            null_embeds=null, active=torch.cat([p.active for p in items]),
            added_cond_kwargs={k: torch.cat([p.added_cond_kwargs[k] for p in items]) for k in first.added_cond_kwargs},
            attention_mask=attention_mask, regions=regions,
        )

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
