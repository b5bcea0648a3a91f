r"""Attention layers: masked cross-attention to conditioner tokens, and pixel self-attention.

:class:`MaskedCrossAttention` is the layer that decides *which conditioners a pixel may see*. Image tokens
(pixels of a feature map, possibly at a coarser resolution) attend to the conditioner tokens their mask
allows, plus a learned *null* token that is always allowed: a pixel with no nearby conditioner attends to
the null token only, which is the unconditional path, and the softmax never divides by zero. The layer
implements the locality protocol of :func:`localscore.nn.enforce_locality` (``locality_rule``,
``set_locality_rule``), so the intervention can restrict it further by a rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .._errors import describe, fail
from ..conditions import Conditions
from ..masks import MaskRule
from .encoders import FourierFeatures, rotate_features

__all__ = [
    "CondContext",
    "ConditioningLayer",
    "GlobalSelfAttention",
    "MaskedCrossAttention",
    "NeighborList",
    "NeighborhoodSelfAttention",
    "RenderedConditioning",
    "choose_sparse",
    "neighbor_list",
    "pool_mask",
]

SparseMode = Literal["auto", "sparse", "dense"]


@dataclass(frozen=True)
class CondContext:
    """What a conditioning layer needs, computed once per forward pass of a network.

    Attributes:
        tokens: ``[B, K, D]`` conditioner tokens.
        pos: ``[B, K, 2]`` conditioner positions (pixels, full resolution).
        valid: ``[B, K]`` bool, False for padding.
        size: ``(H, W)``, the full-resolution image size.
        mask: ``[B, K, H, W]`` full-resolution pixel-to-conditioner mask (bool or in ``[0, 1]``), or
            ``None`` for "every pixel may see every conditioner".
        sigma: ``[B]`` noise levels (for sigma-dependent rules), or ``None``.
        neighbors: the compact per-pixel form of ``mask`` (:func:`neighbor_list`), or ``None``. When set,
            conditioning layers at stride 1 without a ``mask=`` override or a ``locality_rule`` take the
            sparse path and read it instead of ``mask``. :class:`~localscore.nn.LocalScoreNet` sets it
            when :func:`choose_sparse` says so.
        cache: per-forward scratch space: the layers store what they derive from ``mask`` (additive
            attention biases, float weights) here, so the layers of one forward pass derive it once.
            Build a new context for every forward pass (networks do).

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> c = Conditions.from_lists([[(1.0, 2.0)]])
        >>> CondContext(torch.zeros(1, 1, 8), c.pos, c.valid, (4, 4)).mask is None
        True
    """

    tokens: Tensor
    pos: Tensor
    valid: Tensor
    size: tuple[int, int]
    mask: Tensor | None = None
    sigma: Tensor | None = None
    neighbors: NeighborList | None = None
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class NeighborList:
    r"""The compact per-pixel form of a pixel-to-conditioner mask: for every pixel, the conditioners it may see.

    For a mask ``m [B, K, H, W]`` and ``valid [B, K]``, pixel ``q`` (row-major, ``N = H W``) may see slot
    ``k`` iff ``valid_k and m_qk > 0``. With ``c_q`` such slots and ``M = max_q c_q`` (over the whole
    batch: nothing is ever dropped)::

        index[b, q, j]  = the j-th allowed slot of q (increasing k),   j < c_q;   -1 for j >= c_q
        weight[b, q, j] = m[b, index[b, q, j], q]  (1 for bool masks),  j < c_q;    0 for j >= c_q
        valid[b, q, j]  = j < c_q

    ``weight`` is differentiable with respect to a float mask (gathered from it). Build it with
    :func:`neighbor_list`.

    Examples:
        >>> import torch
        >>> m = torch.tensor([[[[0.5, 0.0]], [[0.25, 1.0]]]])        # [B=1, K=2, H=1, W=2], soft
        >>> nb = neighbor_list(m, torch.tensor([[True, True]]))
        >>> nb.max_neighbors, nb.index.tolist(), nb.weight.tolist()
        (2, [[[0, 1], [1, -1]]], [[[0.5, 0.25], [1.0, 0.0]]])

    Attributes:
        index: ``[B, N, M]`` long.
        weight: ``[B, N, M]`` float.
        valid: ``[B, N, M]`` bool.
        num_slots: ``K``.
        size: ``(H, W)``, the mask's (feature map's) size.
        soft: True for a float mask (the attention adds ``log weight``), False for a bool one.
    """

    index: Tensor
    weight: Tensor
    valid: Tensor
    num_slots: int
    size: tuple[int, int]
    soft: bool

    @property
    def max_neighbors(self) -> int:
        """``M``: the most conditioners any pixel of the batch may see."""
        return int(self.index.shape[-1])


def _allowed(mask: Tensor, valid: Tensor) -> Tensor:
    """bool ``[B, K, h, w]``: ``valid_k and m_qk > 0``."""
    m = mask if mask.dtype == torch.bool else mask > 0
    return m & valid[:, :, None, None]


def neighbor_list(mask: Tensor, valid: Tensor) -> NeighborList:
    r"""The per-pixel neighbour list of a mask ``[B, K, H, W]`` (see :class:`NeighborList`).

    ``M`` is the largest number of allowed slots at any pixel of the batch, read from the mask (one
    device-to-host synchronisation), so every allowed pair is kept. Cost: one pass over the ``B K H W``
    mask plus ``O(nnz)`` scatters.

    Args:
        mask: ``[B, K, H, W]`` bool or float in ``[0, 1]``.
        valid: ``[B, K]`` bool (False: padding, never allowed).

    Examples:
        >>> import torch
        >>> m = torch.zeros(1, 3, 1, 2, dtype=torch.bool)
        >>> m[0, 0, 0, 0] = m[0, 2, 0, 0] = m[0, 2, 0, 1] = True
        >>> nb = neighbor_list(m, torch.ones(1, 3, dtype=torch.bool))
        >>> nb.index.tolist(), nb.valid.tolist()
        ([[[0, 2], [2, -1]]], [[[True, True], [True, False]]])
    """
    where = "neighbor_list"
    if not isinstance(mask, Tensor) or mask.dim() != 4:
        raise fail(where, f"`mask` is {describe(mask)}, expected a [B, K, H, W] tensor.",
                   "build masks with localscore.masks (e.g. disc_masks(cond, (H, W), r)).")
    B, K = mask.shape[:2]
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool or tuple(valid.shape) != (B, K):
        raise fail(where, f"`valid` is {describe(valid)}, expected a bool [B, K] = [{B}, {K}] tensor.",
                   "pass Conditions.valid.")
    return _build_neighbor_list(mask, _allowed(mask, valid))


def _build_neighbor_list(mask: Tensor, allowed: Tensor, count: Tensor | None = None) -> NeighborList:
    """:func:`neighbor_list` from ``allowed = valid & (mask > 0)`` (bool ``[B, K, h, w]``) and, optionally,
    its per-pixel count ``[B, N]`` (both computed once by :func:`_auto_neighbors`)."""
    B, K, hh, ww = mask.shape
    N = hh * ww
    soft = mask.dtype != torch.bool
    wdtype = mask.dtype if soft else torch.get_default_dtype()
    a = allowed.flatten(2)  # [B, K, N]
    count = (a.sum(1) if count is None else count).flatten()  # [B N]
    M = int(count.max()) if count.numel() else 0
    nz = a.transpose(1, 2).nonzero()  # [nnz, 3] rows (b, q, k), sorted by (b, q), then k
    group = nz[:, 0] * N + nz[:, 1]
    start = torch.cumsum(count, 0) - count
    slot = torch.arange(nz.shape[0], device=mask.device) - start[group]
    index = torch.full((B * N, M), -1, dtype=torch.long, device=mask.device)
    index[group, slot] = nz[:, 2]
    if soft:
        w = mask.flatten(2)[nz[:, 0], nz[:, 2], nz[:, 1]]
        weight = torch.zeros(B * N, M, dtype=wdtype, device=mask.device).index_put((group, slot), w)
    else:
        weight = (index >= 0).to(wdtype)
    index = index.view(B, N, M)
    return NeighborList(index, weight.view(B, N, M), index >= 0, K, (hh, ww), soft)


# The "auto" rule, per conditioning layer type: (K at least, M at most this fraction of K). Calibrated on the
# 2-core development CPU at 32x32 (docs/networks.md, "Cost"): the attention's sparse path won from K = 32
# (M about K / 3) up; the rendered map's two dense products beat building the list up to K = 256 (larger K
# was not measured: its threshold is a conservative guess).
SPARSE_RULES: dict[str, tuple[int, float]] = {"attention": (32, 0.5), "render": (1024, 0.0625)}


def _functorch_active(*tensors: Tensor | None) -> bool:
    """True under torch.func transforms (vmap, jvp, grad) or forward-mode AD: the sparse path's
    ``embedding_bag`` has no forward-mode derivative or batching rule, so the dense path is taken."""
    fwd = getattr(torch.autograd.forward_ad, "_current_level", -1)
    if isinstance(fwd, int) and fwd >= 0:
        return True
    wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    if wrapped is None:
        return False
    return any(t is not None and bool(wrapped(t)) for t in tensors)


def choose_sparse(mask: Tensor | None, valid: Tensor, mode: SparseMode = "auto", *,
                  conditioning: str = "attention", tensors: tuple[Tensor | None, ...] = ()) -> bool:
    r"""Whether the conditioning layers should take the sparse (neighbour-list) path for this mask.

    ``mode="dense"``: never; ``"sparse"``: whenever there is a mask and ``K > 0``; ``"auto"`` (the rule),
    with ``(K_min, f) = SPARSE_RULES[conditioning]``::

        sparse  iff  K >= K_min  and  M <= f K  and  no torch.func transform / forward-mode AD is active

    where ``M`` is the most slots any pixel may see (from the mask; computed only when ``K >= K_min``) and
    ``tensors`` are the inputs checked for transforms. ``SPARSE_RULES``: ``"attention"``: ``(32, 1/2)``;
    ``"render"``: ``(1024, 1/16)``. Why: the dense attention does softmax work on ``heads x (1 + K)``
    logits per pixel, which the list cuts to ``heads x (1 + M)`` (the logits themselves still come from
    one matrix product); the rendered map's dense path is two matrix products, which on the CPU we
    measured beat building the list (about 4 ms for ``B K H W = 16 x 64 x 32 x 32``) up to ``K = 256``.
    With large masks (``M`` near ``K``) the list saves nothing and costs ``[B, N, M]`` memory. The sparse
    path sums values with ``embedding_bag``, which has neither a forward-mode derivative nor a vmap rule,
    hence the last clause (``"sparse"`` under such a transform raises torch's error). Nor is it twice
    differentiable (no double backward through ``embedding_bag``): for second derivatives (gradient
    penalties, ``create_graph=True``) use ``mode="dense"``.

    Examples:
        >>> import torch
        >>> valid = torch.ones(1, 64, dtype=torch.bool)
        >>> m = torch.zeros(1, 64, 8, 8, dtype=torch.bool); m[0, :4] = True   # each pixel sees 4 of 64
        >>> choose_sparse(m, valid), choose_sparse(m[:, :8], valid[:, :8]), choose_sparse(m, valid, "dense")
        (True, False, False)
        >>> choose_sparse(m, valid, conditioning="render")
        False
    """
    where = "choose_sparse"
    if mode not in ("auto", "sparse", "dense"):
        raise fail(where, f"`mode` is {mode!r}, expected 'auto', 'sparse' or 'dense'.")
    if conditioning not in SPARSE_RULES:
        raise fail(where, f"`conditioning` is {conditioning!r}, expected one of {sorted(SPARSE_RULES)}.")
    return _auto_neighbors(mask, valid, mode, conditioning, tensors, build=False) is not None


def _auto_neighbors(mask: Tensor | None, valid: Tensor, mode: SparseMode, conditioning: str,
                    tensors: tuple[Tensor | None, ...], *, build: bool = True) -> NeighborList | bool | None:
    """:func:`choose_sparse`'s rule; when it says sparse, the list (``build``) or True, else None. The
    ``valid & (mask > 0)`` tensor and its counts are computed once for both the decision and the list."""
    if mode not in ("auto", "sparse", "dense"):
        raise fail("LocalScoreNet", f"`sparse` is {mode!r}, expected 'auto', 'sparse' or 'dense'.",
                   "set net.sparse (or LocalConditionalDenoiser.inner.sparse) to one of them.")
    if mode == "dense" or mask is None or mask.shape[1] == 0:
        return None
    K = mask.shape[1]
    if mode == "auto":
        k_min, frac = SPARSE_RULES[conditioning]
        if K < k_min or _functorch_active(mask, valid, *tensors):
            return None
    allowed = _allowed(mask, valid)
    count = allowed.flatten(2).sum(1)  # [B, N]
    if mode == "auto" and int(count.max()) > frac * K:
        return None
    return _build_neighbor_list(mask, allowed, count) if build else True


Coarse = Literal["any", "majority", "all", "mean"]
"""How :func:`pool_mask` reduces a coarse cell: ``"any"``, ``"majority"``, ``"all"`` (bool masks) or ``"mean"``."""


def pool_mask(mask: Tensor, stride: int | None = None, *, size: Sequence[int] | None = None,
              coarse: Coarse = "any") -> Tensor:
    r"""A mask ``[B, K, H, W]`` at another resolution: ``[B, K, H/s, W/s]`` for a stride ``s``, or ``[B, K, h, w]``.

    Each output cell covers a block of input pixels: the ``s x s`` pixels ``(s i + u, s j + v)`` for a
    stride (``H`` and ``W`` divisible by ``s``), or for ``size = (h, w)`` the cells of area interpolation
    (``F.interpolate(mode="area")``, which also upsamples). With ``f`` the fraction of the cell inside a
    bool mask:

    * ``"any"`` (default): ``f > 0``, that is ``out[b, k, i, j] = max_{cell} mask[b, k, .]``: a coarse cell
      may see a conditioner when any pixel it covers may. Soft masks take the maximum too.
    * ``"majority"``: ``f >= 1/2``; ``"all"``: ``f == 1`` (bool masks only).
    * ``"mean"``: the area average of a soft mask (in its dtype), what a resized weight map keeps.

    Bool masks stay bool. A mask already of the output size is returned as it is.

    Args:
        mask: ``[B, K, H, W]`` bool, or floating in ``[0, 1]``.
        stride: the integer downsampling factor; give it or ``size``.
        size: the output size ``(h, w)``.
        coarse: the reduction, see above.

    Examples:
        >>> import torch
        >>> m = torch.zeros(1, 1, 4, 4, dtype=torch.bool); m[0, 0, 3, 0] = True
        >>> pool_mask(m, 2)[0, 0].int().tolist()
        [[0, 0], [1, 0]]
        >>> m[..., :2, :3] = True                        # the top-left cell full, the top-right one half
        >>> pool_mask(m, size=(2, 2), coarse="majority")[0, 0].tolist()
        [[True, True], [False, False]]
        >>> pool_mask(m.double(), size=(2, 2), coarse="mean")[0, 0].tolist()
        [[1.0, 0.5], [0.25, 0.0]]
    """
    where = "pool_mask"
    if not isinstance(mask, Tensor) or mask.dim() != 4:
        raise fail(where, f"argument `mask` is {describe(mask)}, expected a tensor [B, K, H, W].")
    if coarse not in ("any", "majority", "all", "mean"):
        raise fail(where, f"`coarse` is {coarse!r}, expected 'any', 'majority', 'all' or 'mean'.")
    hard = mask.dtype == torch.bool
    if (hard and coarse == "mean") or (not hard and coarse in ("majority", "all")):
        kind = "bool" if hard else "soft (floating)"
        raise fail(where, f"`coarse` = {coarse!r} does not apply to a {kind} mask.",
                   "bool masks take 'any', 'majority' or 'all'; soft masks take 'any' or 'mean'.")
    B, K, H, W = mask.shape
    if (stride is None) == (size is None):
        raise fail(where, f"give exactly one of `stride` and `size`; got stride={stride!r}, size={size!r}.")
    if stride is not None:
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise fail(where, f"`stride` is {stride!r}, expected an int >= 1.")
        if H % stride or W % stride:
            raise fail(where, f"mask size {(H, W)} is not divisible by the stride {stride}.",
                       "pass size=(h, w) for sizes that are not multiples.")
        h, w = H // stride, W // stride
    else:
        assert size is not None
        h, w = int(size[0]), int(size[1])
        if h < 1 or w < 1:
            raise fail(where, f"`size` is {tuple(size)!r}, expected two ints >= 1.")
    if (h, w) == (H, W):
        return mask
    if K == 0:
        return mask.new_zeros(B, 0, h, w)
    if coarse == "any":
        m = mask.to(torch.float32 if hard else mask.dtype).reshape(B * K, 1, H, W)
        m = F.max_pool2d(m, stride) if stride is not None else F.adaptive_max_pool2d(m, (h, w))
        m = m.reshape(B, K, h, w)
        return m > 0 if hard else m
    if coarse == "mean":
        return F.interpolate(mask, size=(h, w), mode="area")
    f = F.interpolate(mask.double(), size=(h, w), mode="area")   # the fraction of each cell inside the mask
    return f >= 0.5 if coarse == "majority" else f >= 1 - 1e-9


def _pixel_positions(hh: int, ww: int, stride: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[hh * ww, 2]``: full-resolution centres ``(s i + (s - 1) / 2, s j + (s - 1) / 2)`` of feature cells."""
    off = (stride - 1) / 2
    r = torch.arange(hh, device=device, dtype=dtype) * stride + off
    c = torch.arange(ww, device=device, dtype=dtype) * stride + off
    return torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1).reshape(-1, 2)


class ConditioningLayer(nn.Module):
    """Base of the layers that read conditioners through a pixel-to-conditioner mask.

    It carries the *locality protocol* used by :func:`~localscore.nn.enforce_locality`: an attribute
    ``locality_rule`` (a :class:`~localscore.masks.MaskRule` or ``None``) and :meth:`set_locality_rule`.
    When a rule is set, the layer's mask is multiplied by the rule's mask (pooled to the layer's
    resolution), so the layer can only become *more* local.
    """

    locality_rule: MaskRule | None = None

    def set_locality_rule(self, rule: MaskRule | None) -> None:
        """Restrict (or with ``None``, stop restricting) this layer's mask by ``rule``."""
        self.locality_rule = rule

    def _mask(self, ctx: CondContext, hh: int, ww: int, stride: int, mask: Tensor | None) -> Tensor | None:
        where = type(self).__name__
        B, K = ctx.valid.shape
        H, W = ctx.size
        if (hh * stride, ww * stride) != (H, W):
            raise fail(where, f"features of size {(hh, ww)} at stride {stride} do not cover the image size "
                       f"{(H, W)}.", "pass the stride of this feature map relative to the input image.")
        if mask is None and ctx.mask is not None:
            mask = pool_mask(ctx.mask, stride)
        if mask is not None and (not isinstance(mask, Tensor) or tuple(mask.shape) != (B, K, hh, ww)):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else describe(mask)
            raise fail(where, f"the mask has shape {got}, expected [B, K, h, w] = {[B, K, hh, ww]} "
                       "(one entry per conditioner and feature pixel).",
                       "build masks with localscore.masks (e.g. disc_masks(cond, (H, W), r)) at the image size, "
                       "and pool them to the feature resolution with pool_mask.")
        if self.locality_rule is not None:
            rm = self.locality_rule(Conditions(ctx.pos, None, ctx.valid), (H, W), sigma=ctx.sigma)
            rm = pool_mask(rm, stride)
            if mask is None:
                mask = rm
            elif mask.dtype == torch.bool and rm.dtype == torch.bool:
                mask = mask & rm
            else:
                mask = mask.to(ctx.pos.dtype) * rm.to(ctx.pos.dtype)
        return mask

    def _neighbors(self, ctx: CondContext, hh: int, ww: int, stride: int, mask: Tensor | None) -> NeighborList | None:
        """``ctx.neighbors`` if this call may take the sparse path (stride 1, no override, no rule), else None."""
        nb = ctx.neighbors
        if nb is None or mask is not None or stride != 1 or self.locality_rule is not None:
            return None
        if nb.size != (hh, ww) or tuple(ctx.size) != (hh, ww) or nb.num_slots != ctx.valid.shape[1]:
            raise fail(type(self).__name__, f"the context's neighbour list is for size {nb.size} and "
                       f"{nb.num_slots} slots, but the features are {(hh, ww)} (image {tuple(ctx.size)}) with "
                       f"{ctx.valid.shape[1]} slots.", "build it with neighbor_list(mask, valid) from this "
                       "forward pass's full-resolution mask.")
        return nb

    def _derived(self, name: str, ctx: CondContext, hh: int, ww: int, stride: int, mask: Tensor | None,
                 dtype: torch.dtype, build: Any) -> Tensor:
        """``build(mask)`` for this layer's mask, computed once per context when it is the shared one.

        The result depends only on ``ctx`` (no override, no rule), so it is kept in ``ctx.cache`` under
        ``(name, stride, dtype, grad mode)`` for the other layers of the same forward pass.
        """
        if mask is not None or self.locality_rule is not None:
            return build(self._mask(ctx, hh, ww, stride, mask))
        key = (name, stride, dtype, torch.is_grad_enabled())
        out = ctx.cache.get(key)
        if out is None:
            out = build(self._mask(ctx, hh, ww, stride, None))
            ctx.cache[key] = out
        return out


class MaskedCrossAttention(ConditioningLayer):
    r"""Cross-attention from image tokens to the conditioners each pixel's mask allows, plus a null token.

    For image features ``h [B, C, h, w]`` (pixel ``q`` at full-resolution centre ``x_q``, see ``stride``),
    conditioner tokens ``t [B, K, Dt]`` at positions ``p_k``, and a mask ``m [B, K, h, w]``, per head ``h``
    (the relative terms ``g`` and ``u`` are shared by the heads)::

        logit_qk = (W_q^h h_q . W_k^h t_k + Rot(x_q)^T W_g h_q . phi(p_k)) / sqrt(d)  # = ... + W_g h_q . phi(p_k - x_q)
        logit_qk = logit_qk + log m_qk   if m_qk > 0 and valid_k,   else -inf
        logit_q0 = W_q^h h_q . k_null^h / sqrt(d)                                     # the null token, always allowed
        a_q      = softmax([logit_q0, logit_q1, ..., logit_qK])
        o_q      = a_q0 v_null^h + sum_k a_qk W_v^h t_k
        u_q      = Rot(x_q) sum_k abar_qk phi(p_k)       # = sum_k abar_qk phi(p_k - x_q), abar = mean over heads
        out_q    = W_o [o_q (all heads), u_q]

    ``phi`` are the *relative* Fourier features (``relative``; omit for none): through them a pixel knows the
    offset ``p_k - x_q`` to the conditioners it attends to, so the layer is translation equivariant.
    ``log m`` turns soft masks into attention weights proportional to the mask; hard masks just exclude.
    Pixel ``q``'s output depends only on conditioners with ``m_qk > 0``, exactly (their softmax weights are
    exactly zero otherwise); with ``K = 0`` or nothing allowed it is ``W_o [v_null, 0]``.

    Locality protocol: ``locality_rule`` (a :class:`~localscore.masks.MaskRule` or ``None``) further
    restricts the mask: ``m <- m * rule(cond, (H, W), sigma)`` pooled to this layer's resolution with
    :func:`pool_mask`. :func:`~localscore.nn.enforce_locality` sets it through :meth:`set_locality_rule`.

    Cost: a dense path (``[B, heads, 1 + K, N]`` logits, slot-major) and, when the context carries a
    :class:`NeighborList` (``ctx.neighbors``, chosen by :func:`choose_sparse`), a sparse one whose softmax
    and value sums cover only the null token and the ``M`` conditioners listed per pixel. Same function;
    see :meth:`forward`.

    Args:
        dim: image channels ``C``.
        token_dim: conditioner token length ``Dt``.
        heads: number of heads.
        head_dim: ``d`` (default ``max(1, C // heads)``).
        relative: Fourier features for relative offsets, or ``None``.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> from localscore.masks import disc_masks
        >>> attn = MaskedCrossAttention(8, 16, heads=2, relative=FourierFeatures(3))
        >>> cond = Conditions.from_lists([[(1.0, 1.0)]])
        >>> ctx = CondContext(torch.randn(1, 1, 16), cond.pos, cond.valid, (6, 6), disc_masks(cond, (6, 6), 1.0))
        >>> out = attn(torch.randn(1, 8, 6, 6), ctx)
        >>> out.shape
        torch.Size([1, 8, 6, 6])
        >>> bare = attn(torch.zeros(1, 8, 6, 6), ctx)     # far pixels take the null (unconditional) path
        >>> torch.allclose(bare[..., 5, 5], bare[..., 4, 5])
        True
    """

    def __init__(self, dim: int, token_dim: int, *, heads: int = 4, head_dim: int | None = None,
                 relative: FourierFeatures | None = None) -> None:
        super().__init__()
        where = "MaskedCrossAttention"
        for name, v in (("dim", dim), ("token_dim", token_dim), ("heads", heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise fail(where, f"`{name}` is {v!r}, expected an int >= 1.")
        d = head_dim if head_dim is not None else max(1, dim // heads)
        self.heads, self.head_dim = heads, d
        inner = heads * d
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(token_dim, inner, bias=False)
        self.to_v = nn.Linear(token_dim, inner, bias=False)
        self.null_k = nn.Parameter(torch.randn(heads, d) / math.sqrt(d))
        self.null_v = nn.Parameter(torch.randn(heads, d) / math.sqrt(d))
        self.relative = relative
        n_rel = relative.dim if relative is not None else 0
        self.to_g = nn.Linear(dim, n_rel, bias=False) if relative is not None else None
        self.to_out = nn.Linear(inner + n_rel, dim)

    def forward(self, h: Tensor, ctx: CondContext, *, stride: int = 1, mask: Tensor | None = None) -> Tensor:
        """``h [B, C, h, w]`` attends to ``ctx``'s conditioners; returns ``[B, C, h, w]``.

        ``stride``: how many full-resolution pixels one feature pixel spans per axis. ``mask`` (optional)
        overrides ``ctx.mask`` at this resolution: ``[B, K, h, w]``.

        Implementation (the class docstring's formulas, rearranged): the null token is row 0 of the
        key and value tables, ``k' = [k_null; W_k t]``, ``v' = [v_null; W_v t]``, with ``phi'_0 = 0``. The
        mask and the relative term enter as one additive bias per image, shared by the heads:
        ``g_q . phi'_j`` plus ``0`` for the null token, ``log m`` (float masks) or ``0`` where allowed, and
        ``-inf`` elsewhere; the mask part is derived once per forward pass (``ctx.cache``). ``u`` comes out
        of the value product, as the head mean of ``a_q . phi'``. Dense path: ``[B, heads, N, 1 + K]``
        logits. Sparse path (``ctx.neighbors``): the logits of the null token and the ``M`` listed slots
        are gathered from one matrix product, the softmax runs over those ``1 + M``, and the values are
        summed over them with ``embedding_bag``.
        """
        B, _, hh, ww = h.shape
        N = hh * ww
        nh, d = self.heads, self.head_dim
        K = ctx.tokens.shape[1]
        scale = 1.0 / math.sqrt(d)
        nb = self._neighbors(ctx, hh, ww, stride, mask)
        hq = rearrange(h, "b c y x -> b (y x) c")  # [B, N, C]
        q = rearrange(self.to_q(hq), "b n (nh d) -> b nh n d", nh=nh)  # [B, nh, N, d]
        kt = rearrange(self.to_k(ctx.tokens), "b k (nh d) -> b nh k d", nh=nh)  # [B, nh, K, d]
        vt = rearrange(self.to_v(ctx.tokens), "b k (nh d) -> b nh k d", nh=nh)
        k = torch.cat([self.null_k.to(h.dtype)[None, :, None, :].expand(B, nh, 1, d), kt], dim=2)  # [B, nh, 1+K, d]
        v = torch.cat([self.null_v.to(h.dtype)[None, :, None, :].expand(B, nh, 1, d), vt], dim=2)
        ang = g = phi = None
        if self.relative is not None and self.to_g is not None:
            phi = self.relative(ctx.pos.to(h.dtype))  # [B, K, 4F]
            phi = torch.cat([phi.new_zeros(B, 1, phi.shape[-1]), phi], dim=1)  # [B, 1+K, 4F]; the null has none
            ang = self.relative.angles(_pixel_positions(hh, ww, stride, h.device, h.dtype))  # [N, 2, F]
            g = rotate_features(self.to_g(hq), ang, inverse=True) * scale  # [B, N, 4F]
            v = torch.cat([v, phi[:, None].expand(B, nh, K + 1, -1)], dim=-1)  # u comes out of the value sum
        q = q * scale
        if nb is None:
            # slot-major [B, nh, 1+K, N], as in the sparse path: the softmax over dim -2 keeps the N pixels
            # contiguous (torch's CPU softmax over a short last dimension measured 18-30x slower)
            bias = self._derived("attention_bias", ctx, hh, ww, stride, mask, h.dtype,
                                 lambda m: _attention_bias(m, ctx.valid, N, h.dtype))  # [B, 1+K, N]
            if g is not None and phi is not None:
                bias = bias + phi @ g.transpose(1, 2)
            a = torch.softmax(k @ q.transpose(-1, -2) + bias[:, None], dim=-2)  # [B, nh, 1+K, N]
            out = a.transpose(-1, -2) @ v  # [B, nh, N, d (+ 4F)]
        else:
            # slot-major [B, nh, 1+M, N]: the softmax over dim -2 keeps the N pixels contiguous (torch's CPU
            # softmax over a short last dimension is several times slower)
            plan = _sparse_attention_plan(ctx, nb, nh, h.dtype)
            M1 = plan.bias.shape[1]
            bias = plan.bias
            if g is not None and phi is not None:
                bias = bias + (phi @ g.transpose(1, 2)).reshape(-1).index_select(0, plan.rel_index).view(B, M1, N)
            logits = (k @ q.transpose(-1, -2)).reshape(-1).index_select(0, plan.logit_index).view(B, nh, M1, N)
            a = torch.softmax(logits + bias[:, None], dim=-2)
            # one bag per (image, pixel, head): the null token and the M listed slots (padding weighs 0)
            out = F.embedding_bag(plan.rows, v.reshape(B * nh * (K + 1), -1), mode="sum",
                                  per_sample_weights=a.permute(0, 3, 1, 2).reshape(-1, M1))
            out = out.view(B, N, nh, -1)  # [B, N, nh, d (+ 4F)]
        if nb is None:
            o = rearrange(out[..., :d], "b nh n d -> b n (nh d)")
            urel = out[..., d:].mean(1) if ang is not None else None
        else:
            o = out[..., :d].reshape(B, N, nh * d)
            urel = out[..., d:].mean(2) if ang is not None else None
        if ang is not None and urel is not None:
            o = torch.cat([o, rotate_features(urel, ang)], dim=-1)
        o = self.to_out(o)
        return rearrange(o, "b (y x) c -> b c y x", y=hh, x=ww)


def _attention_bias(m: Tensor | None, valid: Tensor, N: int, dtype: torch.dtype) -> Tensor:
    """``[B, 1 + K, N]``: 0 for the null token; ``log m`` (float masks) or 0 where allowed; ``-inf`` elsewhere."""
    B, K = valid.shape
    zero = torch.zeros((), dtype=dtype, device=valid.device)
    ninf = torch.full((), float("-inf"), dtype=dtype, device=valid.device)
    if m is None:
        allowed = valid[:, :, None].expand(B, K, N)
        val: Tensor = zero
    else:
        mk = rearrange(m, "b k y x -> b k (y x)")  # [B, K, N]
        allowed = valid[:, :, None] & (mk if mk.dtype == torch.bool else mk > 0)
        if mk.dtype == torch.bool:
            val = zero
        else:
            mk = mk.to(dtype)
            val = torch.log(torch.where(allowed, mk, torch.ones((), dtype=dtype, device=mk.device)))
    bias = torch.where(allowed, val, ninf)
    return torch.cat([bias.new_zeros(B, 1, N), bias], dim=1)


@dataclass(frozen=True)
class _SparseAttentionPlan:
    """Index tensors of the sparse attention, derived once per forward pass from a :class:`NeighborList`.

    ``bias [B, 1 + M, N]``: the additive bias of the columns each pixel reads (0 for the null token,
    ``log weight`` or 0 for a listed slot, ``-inf`` for padding). ``logit_index`` / ``rel_index`` pick
    those columns (``sel = [0, index + 1]``, 0 = the null token; padding reads 0 too) out of the
    flattened ``[B, heads, 1 + K, N]`` logits / ``[B, 1 + K, N]`` relative logits, in ``[B, heads, 1 + M,
    N]`` / ``[B, 1 + M, N]`` order. ``rows [B N heads, 1 + M]``: for each (image, pixel, head) bag, the
    rows of the flattened ``[B, heads, 1 + K, .]`` value table it sums.
    """

    bias: Tensor
    logit_index: Tensor
    rel_index: Tensor
    rows: Tensor


def _sparse_attention_plan(ctx: CondContext, nb: NeighborList, heads: int, dtype: torch.dtype) -> _SparseAttentionPlan:
    """The :class:`_SparseAttentionPlan` of ``nb`` (kept in ``ctx.cache`` for the other layers)."""
    key = ("attention_sparse", heads, dtype, torch.is_grad_enabled())
    plan = ctx.cache.get(key)
    if plan is not None:
        return plan
    B, N, _ = nb.index.shape
    K1, nh = nb.num_slots + 1, heads
    dev = nb.index.device
    sel = torch.cat([nb.index.new_zeros(B, N, 1), nb.index + 1], dim=-1)  # [B, N, 1+M]
    one = torch.ones((), dtype=dtype, device=dev)
    w = nb.weight.to(dtype)
    val = torch.log(torch.where(nb.valid, w, one)) if nb.soft else torch.zeros((), dtype=dtype, device=dev)
    bias = torch.where(nb.valid, val, torch.full((), float("-inf"), dtype=dtype, device=dev))
    bias = torch.cat([bias.new_zeros(B, N, 1), bias], dim=-1).transpose(1, 2).contiguous()  # [B, 1+M, N]
    selN = sel.transpose(1, 2) * N  # [B, 1+M, N]
    b = torch.arange(B, device=dev).view(B, 1, 1)
    n = torch.arange(N, device=dev).view(1, 1, N)
    hd = torch.arange(nh, device=dev).view(1, nh, 1, 1)
    rel_index = (selN + (b * K1 * N + n)).reshape(-1)
    logit_index = (selN[:, None] + ((b[:, None] * nh + hd) * K1 * N + n[:, None])).reshape(-1)
    rows = (sel[:, :, None, :] + (b[..., None] * nh + hd.view(1, 1, nh, 1)) * K1).reshape(B * N * nh, -1)
    plan = _SparseAttentionPlan(bias, logit_index, rel_index, rows)
    ctx.cache[key] = plan
    return plan


class RenderedConditioning(ConditioningLayer):
    r"""Conditioning by a *rendered map* of the nearby conditioners (a masked sum, no softmax).

    For image features at pixel ``q`` (full-resolution centre ``x_q``), tokens ``t_k`` at ``p_k`` and a mask
    ``m [B, K, h, w]`` (zero for padding)::

        r_q   = sum_k m_qk W_t t_k                     # the objects near q, summed
        u_q   = Rot(x_q) sum_k m_qk phi(p_k)           # = sum_k m_qk phi(p_k - x_q), their offsets
        n_q   = sum_k m_qk                             # how many (how much mask) cover q
        out_q = W_o [r_q, u_q, n_q] + b

    The input features ``h`` only set the output size (the map does not depend on them). A pixel no mask
    covers gets ``b``, the unconditional path. Output at ``q`` depends exactly on the conditioners with
    ``m_qk > 0``. This is the conditioning of the convolutional model that generalised perfectly in
    the earlier 16x16 study of the experiments docs ("a rendered map of the objects within 3.5 px of each pixel").
    With ``ctx.neighbors`` (a :class:`NeighborList`) the sums run over the listed conditioners only
    (see :meth:`forward`); the function is the same.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> from localscore.masks import disc_masks
        >>> layer = RenderedConditioning(8, 16, relative=FourierFeatures(3))
        >>> cond = Conditions.from_lists([[(1.0, 1.0)]])
        >>> ctx = CondContext(torch.randn(1, 1, 16), cond.pos, cond.valid, (6, 6), disc_masks(cond, (6, 6), 1.0))
        >>> out = layer(torch.zeros(1, 8, 6, 6), ctx)
        >>> torch.equal(out[0, :, 5, 5], layer.to_out.bias)      # uncovered pixel: the bias only
        True
    """

    def __init__(self, dim: int, token_dim: int, *, relative: FourierFeatures | None = None) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("token_dim", token_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise fail("RenderedConditioning", f"`{name}` is {v!r}, expected an int >= 1.")
        self.relative = relative
        self.to_t = nn.Linear(token_dim, dim, bias=False)
        n_rel = relative.dim if relative is not None else 0
        self.to_out = nn.Linear(dim + n_rel + 1, dim)
        self._freqs: tuple[float, ...] | None = None

    def _freq_key(self) -> tuple[float, ...]:
        """The relative features' frequencies as plain floats (read once; they are fixed buffers)."""
        if self._freqs is None and self.relative is not None:
            self._freqs = tuple(float(w) for w in self.relative.omega.tolist())
        return self._freqs or ()

    def forward(self, h: Tensor, ctx: CondContext, *, stride: int = 1, mask: Tensor | None = None) -> Tensor:
        """The rendered map at ``h``'s resolution ``[B, C, h, w]`` (``h`` gives the size only).

        Implementation: with ``w_qk = m_qk`` and ``n_q = sum_k valid_k m_qk`` derived once per forward pass
        (``ctx.cache``) and the padding rows of the tables zeroed, ``r = w @ (valid W_t t)`` and
        ``s = w @ (valid phi)`` (``u_q = Rot(x_q) s_q``). Dense path: two matrix products with ``w``.
        Sparse path (``ctx.neighbors``): the same sums over the ``M`` listed slots only, with
        ``embedding_bag`` (the listed weights as ``per_sample_weights``).
        """
        B, _, hh, ww = h.shape
        N = hh * ww
        K = ctx.tokens.shape[1]
        nb = self._neighbors(ctx, hh, ww, stride, mask)
        vf = ctx.valid.to(h.dtype)[:, :, None]  # [B, K, 1]: padding rows of the tables are zero
        if nb is None:
            w, count = self._derived("render_weights", ctx, hh, ww, stride, mask, h.dtype,
                                     lambda m: _render_weights(m, ctx.valid, N, h.dtype))  # [B, K, N], [B, N, 1]

            def weighted_sum(t: Tensor) -> Tensor:
                return w.transpose(1, 2) @ t  # [B, N, .]
        else:
            key = ("render_sparse", h.dtype, torch.is_grad_enabled())
            plan = ctx.cache.get(key)
            if plan is None:
                rows = nb.index.clamp(min=0) + (torch.arange(B, device=h.device) * K).view(B, 1, 1)
                wl = nb.weight.to(h.dtype)
                plan = (rows.reshape(B * N, -1), wl.reshape(B * N, -1), wl.sum(-1, keepdim=True))
                ctx.cache[key] = plan
            rows, weights, count = plan

            def weighted_sum(t: Tensor) -> Tensor:
                return F.embedding_bag(rows, t.reshape(B * K, -1), mode="sum",
                                       per_sample_weights=weights).view(B, N, -1)
        sums = [weighted_sum(self.to_t(ctx.tokens) * vf)]  # r [B, N, C]
        if self.relative is not None:
            # u depends on the frequencies, not on the layer: layers with equal frequencies share it per pass
            rkey = None
            if mask is None and self.locality_rule is None:
                rkey = ("render_offsets", stride, h.dtype, torch.is_grad_enabled(), nb is not None, self._freq_key())
            u = ctx.cache.get(rkey) if rkey is not None else None
            if u is None:
                ang = self.relative.angles(_pixel_positions(hh, ww, stride, h.device, h.dtype))  # [N, 2, F]
                u = rotate_features(weighted_sum(self.relative(ctx.pos.to(h.dtype)) * vf), ang)  # [B, N, 4F]
                if rkey is not None:
                    ctx.cache[rkey] = u
            sums.append(u)
        out = self.to_out(torch.cat([*sums, count], dim=-1))  # [B, N, C]
        return rearrange(out, "b (y x) c -> b c y x", y=hh, x=ww)


def _render_weights(m: Tensor | None, valid: Tensor, N: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(w [B, K, N], n [B, N, 1])``: ``w_qk = m_qk`` (1 without a mask) and ``n_q = sum_k valid_k w_qk``.

    ``valid`` is applied to the (small) tables instead of ``w``, and to ``n`` by one product."""
    vf = valid.to(dtype)[:, None, :]  # [B, 1, K]
    if m is None:
        ones = torch.ones((), dtype=dtype, device=valid.device).expand(*valid.shape, N)
        return ones, vf.sum(-1, keepdim=True).expand(-1, N, -1)
    w = m.flatten(2).to(dtype)
    return w, (vf @ w).transpose(1, 2)


class NeighborhoodSelfAttention(nn.Module):
    r"""Self-attention of each pixel to the pixels within Chebyshev distance ``radius`` (a sliding window).

    For pixel ``q`` and its neighbours ``n`` with ``|n - q|_inf <= radius`` inside the image, per head::

        out_q = W_o sum_n softmax_n(W_q h_q . W_k h_n / sqrt(d)) W_v h_n

    Unlike fixed (Swin-style) windows, the window moves with the pixel, so the layer is translation
    equivariant and its receptive radius is exactly ``radius``.

    Examples:
        >>> import torch
        >>> NeighborhoodSelfAttention(8, radius=1, heads=2)(torch.randn(1, 8, 5, 5)).shape
        torch.Size([1, 8, 5, 5])
    """

    def __init__(self, dim: int, *, radius: int, heads: int = 4) -> None:
        super().__init__()
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
            raise fail("NeighborhoodSelfAttention", f"`radius` is {radius!r}, expected an int >= 1.")
        if dim % heads:
            raise fail("NeighborhoodSelfAttention", f"`dim` = {dim} is not divisible by `heads` = {heads}.")
        self.radius, self.heads = radius, heads
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1)

    @property
    def receptive_radius(self) -> int:
        """The window radius: the output at a pixel depends on inputs within this Chebyshev distance."""
        return self.radius

    def forward(self, h: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        B, C, H, W = h.shape
        nh, d, a = self.heads, C // self.heads, self.radius
        n = (2 * a + 1) ** 2
        q, k, v = self.qkv(h).chunk(3, dim=1)
        k = F.unfold(k, 2 * a + 1, padding=a).view(B, nh, d, n, H * W)
        v = F.unfold(v, 2 * a + 1, padding=a).view(B, nh, d, n, H * W)
        q = q.reshape(B, nh, d, 1, H * W)
        logits = (q * k).sum(2) / math.sqrt(d)  # [B, nh, n, N]
        inside = F.unfold(h.new_ones(1, 1, H, W), 2 * a + 1, padding=a) > 0  # [1, n, N]
        logits = torch.where(inside[:, None], logits, torch.full((), float("-inf"), dtype=h.dtype, device=h.device))
        w = torch.softmax(logits, dim=2)
        out = (w[:, :, None] * v).sum(3)  # [B, nh, d, N]
        return self.proj(out.reshape(B, C, H, W))


class GlobalSelfAttention(nn.Module):
    r"""Self-attention of every pixel to every pixel (a U-Net bottleneck layer): not local by design.

    ``out_q = W_o sum_n softmax_n(W_q h_q . W_k h_n / sqrt(d)) W_v h_n`` over all pixels ``n``.

    Examples:
        >>> import torch
        >>> GlobalSelfAttention(8, heads=2)(torch.randn(1, 8, 4, 4)).shape
        torch.Size([1, 8, 4, 4])
    """

    nonlocal_reason = "global self-attention: every pixel attends to every pixel of its feature map"

    def __init__(self, dim: int, *, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise fail("GlobalSelfAttention", f"`dim` = {dim} is not divisible by `heads` = {heads}.")
        self.heads = heads
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, h: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        C, H, W = h.shape[1:]
        nh = self.heads
        q, k, v = (rearrange(t, "b (nh d) y x -> b nh (y x) d", nh=nh) for t in self.qkv(h).chunk(3, dim=1))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // nh), dim=-1)  # [B, nh, N, N]
        out = a @ v  # [B, nh, N, d]
        return self.proj(rearrange(out, "b nh (y x) d -> b (nh d) y x", y=H, x=W))

