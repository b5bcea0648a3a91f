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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
    "NeighborhoodSelfAttention",
    "RenderedConditioning",
    "pool_mask",
]


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
    """

    tokens: Tensor
    pos: Tensor
    valid: Tensor
    size: tuple[int, int]
    mask: Tensor | None = None
    sigma: Tensor | None = None


def pool_mask(mask: Tensor, stride: int) -> Tensor:
    r"""A full-resolution mask ``[B, K, H, W]`` at a coarser resolution ``[B, K, H/s, W/s]`` (max over cells).

    A coarse cell may see a conditioner when any of the ``s x s`` full-resolution pixels it covers may:
    ``out[b, k, i, j] = max_{0 <= u, v < s} mask[b, k, s i + u, s j + v]``. ``H`` and ``W`` must be
    divisible by ``s``. Bool masks stay bool.

    Example:
        >>> import torch
        >>> m = torch.zeros(1, 1, 4, 4, dtype=torch.bool); m[0, 0, 3, 0] = True
        >>> pool_mask(m, 2)[0, 0].int().tolist()
        [[0, 0], [1, 0]]
    """
    if stride == 1:
        return mask
    B, K, H, W = mask.shape
    if H % stride or W % stride:
        raise fail("pool_mask", f"mask size {(H, W)} is not divisible by the stride {stride}.")
    if K == 0:
        return mask.new_zeros(B, 0, H // stride, W // stride)
    m = F.max_pool2d(mask.to(torch.float32 if mask.dtype == torch.bool else mask.dtype).reshape(B * K, 1, H, W),
                     stride)
    m = m.reshape(B, K, H // stride, W // stride)
    return m > 0 if mask.dtype == torch.bool else m


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


class MaskedCrossAttention(ConditioningLayer):
    r"""Cross-attention from image tokens to the conditioners each pixel's mask allows, plus a null token.

    For image features ``h [B, C, h, w]`` (pixel ``q`` at full-resolution centre ``x_q``, see ``stride``),
    conditioner tokens ``t [B, K, Dt]`` at positions ``p_k``, and a mask ``m [B, K, h, w]``, per head::

        logit_qk = (W_q h_q . W_k t_k + Rot(x_q)^T W_g h_q . phi(p_k)) / sqrt(d)     # = ... + W_g h_q . phi(p_k - x_q)
        logit_qk = logit_qk + log m_qk   if m_qk > 0 and valid_k,   else -inf
        logit_q0 = W_q h_q . k_null / sqrt(d)                                         # the null token, always allowed
        a_q      = softmax([logit_q0, logit_q1, ..., logit_qK])
        o_q      = a_q0 v_null + sum_k a_qk W_v t_k
        u_q      = Rot(x_q) sum_k a_qk phi(p_k)                                       # = sum_k a_qk phi(p_k - x_q)
        out_q    = W_o [o_q, u_q]

    ``phi`` are the *relative* Fourier features (``relative``; omit for none): through them a pixel knows the
    offset ``p_k - x_q`` to the conditioners it attends to, so the layer is translation equivariant.
    ``log m`` turns soft masks into attention weights proportional to the mask; hard masks just exclude.
    Pixel ``q``'s output depends only on conditioners with ``m_qk > 0``, exactly (their softmax weights are
    exactly zero otherwise); with ``K = 0`` or nothing allowed it is ``W_o [v_null, 0]``.

    Locality protocol: ``locality_rule`` (a :class:`~localscore.masks.MaskRule` or ``None``) further
    restricts the mask: ``m <- m * rule(cond, (H, W), sigma)`` pooled to this layer's resolution with
    :func:`pool_mask`. :func:`~localscore.nn.enforce_locality` sets it through :meth:`set_locality_rule`.

    Args:
        dim: image channels ``C``.
        token_dim: conditioner token length ``Dt``.
        heads: number of heads.
        head_dim: ``d`` (default ``max(1, C // heads)``).
        relative: Fourier features for relative offsets, or ``None``.

    Example:
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
        self.to_g = nn.Linear(dim, heads * n_rel, bias=False) if relative is not None else None
        self.to_out = nn.Linear(inner + heads * n_rel, dim)

    def forward(self, h: Tensor, ctx: CondContext, *, stride: int = 1, mask: Tensor | None = None) -> Tensor:
        """``h [B, C, h, w]`` attends to ``ctx``'s conditioners; returns ``[B, C, h, w]``.

        ``stride``: how many full-resolution pixels one feature pixel spans per axis. ``mask`` (optional)
        overrides ``ctx.mask`` at this resolution: ``[B, K, h, w]``.
        """
        B, C, hh, ww = h.shape
        N, nh, d = hh * ww, self.heads, self.head_dim
        K = ctx.tokens.shape[1]
        m = self._mask(ctx, hh, ww, stride, mask)
        hq = h.flatten(2).transpose(1, 2)  # [B, N, C]
        q = self.to_q(hq).view(B, N, nh, d).transpose(1, 2)  # [B, nh, N, d]
        k = self.to_k(ctx.tokens).view(B, K, nh, d).transpose(1, 2)  # [B, nh, K, d]
        v = self.to_v(ctx.tokens).view(B, K, nh, d).transpose(1, 2)
        scale = 1.0 / math.sqrt(d)
        logits = q @ k.transpose(-1, -2) * scale  # [B, nh, N, K]
        phi = ang = None
        if self.relative is not None and self.to_g is not None:
            phi = self.relative(ctx.pos.to(h.dtype))[:, None]  # [B, 1, K, 4F]
            ang = self.relative.angles(_pixel_positions(hh, ww, stride, h.device, h.dtype))  # [N, 2, F]
            g = self.to_g(hq).view(B, N, nh, -1).transpose(1, 2)  # [B, nh, N, 4F]
            logits = logits + rotate_features(g, ang, inverse=True) @ phi.transpose(-1, -2) * scale
        allowed = ctx.valid[:, None, None, :]
        if m is not None:
            mk = m.flatten(2).transpose(1, 2)[:, None]  # [B, 1, N, K]
            if mk.dtype != torch.bool:
                mk = mk.to(h.dtype)
                one = torch.ones((), dtype=h.dtype, device=h.device)
                logits = logits + torch.log(torch.where(mk > 0, mk, one))
                mk = mk > 0
            allowed = allowed & mk
        logits = torch.where(allowed, logits, torch.full((), float("-inf"), dtype=h.dtype, device=h.device))
        null_logit = (q * self.null_k[None, :, None, :]).sum(-1, keepdim=True) * scale  # [B, nh, N, 1]
        a = torch.softmax(torch.cat([null_logit, logits], dim=-1), dim=-1)
        a0, ak = a[..., :1], a[..., 1:]
        out = a0 * self.null_v[None, :, None, :] + ak @ v  # [B, nh, N, d]
        if phi is not None and ang is not None:
            out = torch.cat([out, rotate_features(ak @ phi, ang)], dim=-1)
        out = self.to_out(out.transpose(1, 2).reshape(B, N, -1))
        return out.transpose(1, 2).reshape(B, C, hh, ww)


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
    the study of REFERENCES.md ("a rendered map of the objects within 3.5 px of each pixel").

    Example:
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

    def forward(self, h: Tensor, ctx: CondContext, *, stride: int = 1, mask: Tensor | None = None) -> Tensor:
        """The rendered map at ``h``'s resolution ``[B, C, h, w]`` (``h`` gives the size only)."""
        B, C, hh, ww = h.shape
        N = hh * ww
        m = self._mask(ctx, hh, ww, stride, mask)
        valid = ctx.valid.to(h.dtype)[:, None, :]  # [B, 1, K]
        mk = valid.expand(B, N, -1) if m is None else m.to(h.dtype).flatten(2).transpose(1, 2) * valid  # [B, N, K]
        parts = [mk @ self.to_t(ctx.tokens)]
        if self.relative is not None:
            phi = self.relative(ctx.pos.to(h.dtype))  # [B, K, 4F]
            ang = self.relative.angles(_pixel_positions(hh, ww, stride, h.device, h.dtype))
            parts.append(rotate_features(mk @ phi, ang))
        parts.append(mk.sum(-1, keepdim=True))
        out = self.to_out(torch.cat(parts, dim=-1))  # [B, N, C]
        return out.transpose(1, 2).reshape(B, C, hh, ww)


class NeighborhoodSelfAttention(nn.Module):
    r"""Self-attention of each pixel to the pixels within Chebyshev distance ``radius`` (a sliding window).

    For pixel ``q`` and its neighbours ``n`` with ``|n - q|_inf <= radius`` inside the image, per head::

        out_q = W_o sum_n softmax_n(W_q h_q . W_k h_n / sqrt(d)) W_v h_n

    Unlike fixed (Swin-style) windows, the window moves with the pixel, so the layer is translation
    equivariant and its receptive radius is exactly ``radius``.

    Example:
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

    Example:
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
        B, C, H, W = h.shape
        nh = self.heads
        q, k, v = (t.reshape(B, nh, C // nh, H * W).transpose(-1, -2) for t in self.qkv(h).chunk(3, dim=1))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // nh), dim=-1)  # [B, nh, N, N]
        out = a @ v  # [B, nh, N, d]
        return self.proj(out.transpose(-1, -2).reshape(B, C, H, W))

