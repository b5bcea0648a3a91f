r"""Regional cross-attention: each token group of a prompt reaches only its region.

:func:`install_regional_attention` (or the context manager :func:`regional_attention`) wraps every
attention processor of a diffusers model in a :class:`RegionalAttnProcessor`; a prompt's ``regions``
reach them through ``cross_attention_kwargs`` (see :class:`~localscore.adapters.diffusers.DiffusersDenoiser`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from ..._errors import describe, fail
from ..._moved import warn_moved
from ...nn.attention import pool_mask

__all__ = ["RegionalAttention", "RegionalAttnProcessor", "install_regional_attention", "regional_attention"]

#: The keyword under which prompts hand their regions to the attention processors.
REGIONS_KWARG = "localscore_regions"


@dataclass(frozen=True)
class _RegionSpec:
    """What a prompt hands the processors: its token groups ``[B, G, T]`` and regions ``[B|1, G, H, W]``."""

    groups: Tensor
    regions: Tensor
    size: tuple[int, int]

    def __init__(self, groups: Tensor, regions: Tensor, size: Sequence[int]) -> None:
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


def _resize(regions: Tensor, size: Sequence[int], coarse: Coarse) -> Tensor:
    """Region masks at ``size`` as the processors and :func:`concept_locality` see them: hard masks by ``coarse``,
    soft masks area-averaged (:func:`localscore.nn.pool_mask`)."""
    return pool_mask(regions, size=size, coarse=coarse if regions.dtype == torch.bool else "mean")


def resize_regions(regions: Tensor, size: Sequence[int], *, coarse: Coarse = "majority") -> Tensor:
    """Deprecated: ``localscore.nn.pool_mask(regions, size=size, coarse=coarse)`` (``coarse="mean"`` for soft masks)."""
    warn_moved("localscore.adapters.diffusers.resize_regions",
               "localscore.nn.pool_mask(regions, size=size, coarse=...) ('mean' for soft masks)")
    if coarse not in ("majority", "any", "all"):
        raise fail("resize_regions", f"`coarse` is {coarse!r}, expected 'majority', 'any' or 'all'.")
    return _resize(regions, size, coarse)


def _region_bias(spec: _RegionSpec, q: int, batch: int, coarse: Coarse, dtype: torch.dtype,
                 device: torch.device, where: str) -> Tensor:
    """``[batch, q, T]`` additive attention bias ``log w`` with ``w = m_g(query)`` for tokens of group ``g``
    and ``w = 1`` for tokens in no group."""
    H, W = spec.size
    h, w = _level_size(H, W, q, where)
    regions = _resize(spec.regions, (h, w), coarse).to(device)
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
    resized to the layer's resolution by :func:`localscore.nn.pool_mask` (hard masks by ``coarse``, soft
    masks area-averaged). The softmax weights become
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

    def __exit__(self, *exc: object) -> None:
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
        coarse: how hard masks are pooled to coarser layers (:func:`localscore.nn.pool_mask`: a cell
            belongs to the region when the ``majority``, ``any`` or ``all`` of it does).

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

