r"""Bounded-receptive-field building blocks: per-pixel normalisation and local residual blocks.

Why no GroupNorm by default: GroupNorm (and BatchNorm, InstanceNorm) normalise with a mean and variance
taken over *every pixel* of the image. The output at a pixel then depends on all pixels (through the
statistics), so a network with it has no finite receptive radius, and a conditioner anywhere moves the
statistics, so it has no conditioner radius either: it cannot be local by construction. The local blocks
normalise each pixel over its own channels instead (:class:`ChannelNorm`, a LayerNorm per pixel, as in
ConvNeXt), which keeps the receptive radius the sum of the convolutions' radii. ``norm="group"`` is
available when you want the usual U-Net behaviour and accept the loss of locality.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._errors import fail
from .attention import CondContext, ConditioningLayer, NeighborhoodSelfAttention

__all__ = ["ChannelNorm", "LocalResBlock", "make_norm"]


class ChannelNorm(nn.Module):
    r"""LayerNorm over the channels of each pixel: ``[B, C, H, W] -> [B, C, H, W]``.

    ``y[:, :, i, j] = (h - mean_c h) / sqrt(var_c h + eps) * weight + bias`` with the mean and (biased)
    variance over the ``C`` channels of pixel ``(i, j)`` only: no pixel sees another (receptive radius 0).

    Examples:
        >>> import torch
        >>> y = ChannelNorm(4)(torch.randn(2, 4, 3, 3))
        >>> torch.allclose(y.mean(1), torch.zeros(2, 3, 3), atol=1e-6)
        True
    """

    receptive_radius = 0

    def __init__(self, channels: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, h: Tensor) -> Tensor:
        """Normalise each pixel over its channels."""
        y = F.layer_norm(h.permute(0, 2, 3, 1), (h.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def make_norm(kind: str, channels: int, *, groups: int = 8) -> nn.Module:
    """``"channel"`` → :class:`ChannelNorm`, ``"group"`` → ``nn.GroupNorm(groups, channels)``, ``"none"`` → identity.

    Examples:
        >>> type(make_norm("channel", 8)).__name__
        'ChannelNorm'
    """
    if kind == "channel":
        return ChannelNorm(channels)
    if kind == "group":
        if channels % groups:
            raise fail("make_norm", f"{channels} channels are not divisible by groups = {groups}.")
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise fail("make_norm", f"`kind` is {kind!r}, expected 'channel', 'group' or 'none'.")


class LocalResBlock(nn.Module):
    r"""A residual block with a known receptive radius, optional conditioning and self-attention.

    With the noise embedding ``e [B, E]`` (one vector per image) and ``(scale, shift) = W_e e``::

        h <- h + cond(norm_c(h), ctx)                                  # if the block is conditioned
        y  = conv2(silu(norm_2(conv1(silu(norm_1(h) * (1 + scale) + shift)))))
        h <- h + y
        h <- h + attn(norm_a(h))                                       # neighbourhood self-attention, if any

    ``receptive_radius = 2 * (kernel_size // 2) + attention radius``: the conditioning layer is pixel-wise
    in ``h`` (its reach in conditioners is the mask's), the convolutions add ``kernel_size // 2`` each.

    Args:
        width: channels.
        emb_dim: noise embedding length ``E``.
        kernel_size: odd convolution size.
        norm: ``"channel"``, ``"group"`` or ``"none"`` (see the module docs for why not GroupNorm).
        cond: the conditioning layer (:class:`~localscore.nn.MaskedCrossAttention` or
            :class:`~localscore.nn.RenderedConditioning`), or ``None``.
        self_attention_radius: radius of :class:`~localscore.nn.NeighborhoodSelfAttention` (0: none).
        heads: its heads.
        groups: GroupNorm groups.

    Examples:
        >>> import torch
        >>> blk = LocalResBlock(8, 16, kernel_size=3)
        >>> blk.receptive_radius, blk(torch.randn(1, 8, 5, 5), torch.randn(1, 16)).shape
        (2, torch.Size([1, 8, 5, 5]))
    """

    def __init__(self, width: int, emb_dim: int, *, kernel_size: int = 3, norm: str = "channel",
                 cond: ConditioningLayer | None = None, self_attention_radius: int = 0, heads: int = 4,
                 groups: int = 8) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise fail("LocalResBlock", f"`kernel_size` is {kernel_size!r}, expected an odd int >= 1.")
        p = kernel_size // 2
        self.kernel_size = kernel_size
        self.cond = cond
        self.norm_c = make_norm(norm, width, groups=groups) if cond is not None else None
        self.norm1 = make_norm(norm, width, groups=groups)
        self.film = nn.Linear(emb_dim, 2 * width)
        self.conv1 = nn.Conv2d(width, width, kernel_size, padding=p)
        self.norm2 = make_norm(norm, width, groups=groups)
        self.conv2 = nn.Conv2d(width, width, kernel_size, padding=p)
        self.attn = (NeighborhoodSelfAttention(width, radius=self_attention_radius, heads=heads)
                     if self_attention_radius > 0 else None)
        self.norm_a = make_norm(norm, width, groups=groups) if self.attn is not None else None

    @property
    def receptive_radius(self) -> int:
        """``2 * (kernel_size // 2)`` plus the self-attention radius."""
        return 2 * (self.kernel_size // 2) + (self.attn.radius if self.attn is not None else 0)

    def forward(self, h: Tensor, emb: Tensor, ctx: CondContext | None = None) -> Tensor:
        """``h [B, C, H, W]``, ``emb [B, E]``, ``ctx`` (conditioners; ``None`` skips conditioning)."""
        if self.cond is not None and self.norm_c is not None and ctx is not None:
            h = h + self.cond(self.norm_c(h), ctx)
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        y = F.silu(self.norm1(h) * (1 + scale) + shift)
        y = self.conv2(F.silu(self.norm2(self.conv1(y))))
        h = h + y
        if self.attn is not None and self.norm_a is not None:
            h = h + self.attn(self.norm_a(h))
        return h
