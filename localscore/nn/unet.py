r"""The global baseline: a conditional U-Net with downsampling and full cross-attention.

:class:`UNet` is the raw network ``F(x_in, c_noise, cond)``; :class:`GlobalConditionalDenoiser` wraps it in
EDM preconditioning (it is an :class:`~localscore.denoisers.EDMPreconditioner` whose ``inner`` is the net).
This is the model people actually train: every pixel attends to every conditioner token (at every level in
``attention_levels``), the valid tokens' mean is added to the noise embedding (``pooled_embedding``), the
bottleneck has global self-attention, and normalisation is GroupNorm. Optionally the tokens first pass
through a transformer encoder (``token_encoder_layers``), so they see each other, which the earlier study found
to break length generalisation. None of this is local, and the net declares no radii.

Which parts carry information across the image (what :func:`~localscore.nn.enforce_locality` reports):
the downsampling convolutions (a coarse cell mixes a ``2**l x 2**l`` block and the following convolutions
spread it further), GroupNorm statistics, the bottleneck self-attention, the pooled token embedding and the
token encoder.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_image
from .._errors import describe, fail
from ..conditions import Conditions
from ..denoisers import EDMPreconditioner
from .attention import CondContext, GlobalSelfAttention, MaskedCrossAttention
from .blocks import make_norm
from .config import LocalNetConfig, UNetConfig, config_from_dict
from .encoders import ConditionerEncoder, FourierFeatures, SigmaEmbedding
from .local import LocalConditionalDenoiser, prepare_conditions

__all__ = [
    "GlobalConditionalDenoiser",
    "PooledSetEmbedding",
    "TokenEncoder",
    "UNet",
    "UNetResBlock",
    "build_denoiser",
]


class UNetResBlock(nn.Module):
    r"""The usual U-Net residual block: ``h <- skip(h) + conv2(silu(norm2(conv1(silu(norm1(h) (1 + a) + b)))))``.

    ``(a, b) = W_e e`` from the noise embedding ``e [B, E]``; ``skip`` is a 1x1 convolution when the
    channel count changes, else the identity.

    Examples:
        >>> import torch
        >>> UNetResBlock(8, 16, 4, groups=4)(torch.randn(1, 8, 4, 4), torch.randn(1, 4)).shape
        torch.Size([1, 16, 4, 4])
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, norm: str = "group", groups: int = 8) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, in_ch, groups=groups)
        self.film = nn.Linear(emb_dim, 2 * in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = make_norm(norm, out_ch, groups=groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        """``h [B, in_ch, H, W]``, ``emb [B, E]`` → ``[B, out_ch, H, W]``."""
        a, b = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        y = self.conv1(F.silu(self.norm1(h) * (1 + a) + b))
        y = self.conv2(F.silu(self.norm2(y)))
        return self.skip(h) + y


class _CrossAttnLayer(nn.Module):
    """``h <- h + attn(norm(h), ctx, stride)``: a pre-norm residual cross-attention at one resolution."""

    def __init__(self, width: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.norm = make_norm(cfg.norm, width, groups=cfg.groups)
        rel = (FourierFeatures(cfg.relative_freqs, min_wavelength=2.0, max_wavelength=cfg.position_scale)
               if cfg.relative_freqs > 0 else None)
        self.attn = MaskedCrossAttention(width, cfg.token_dim, heads=cfg.heads, relative=rel)

    def forward(self, h: Tensor, ctx: CondContext, stride: int) -> Tensor:
        return h + self.attn(self.norm(h), ctx, stride=stride)


class TokenEncoder(nn.Module):
    r"""A transformer encoder over the conditioner tokens (tokens see each other), as text encoders do.

    A learned *global* token is prepended so the sequence is never empty (``K = 0`` or all padding), then
    ``layers`` pre-norm ``nn.TransformerEncoderLayer`` run with padding masked; the global token is
    dropped from the output: ``[B, K, D] -> [B, K, D]``.

    Examples:
        >>> import torch
        >>> enc = TokenEncoder(8, layers=1, heads=2)
        >>> enc(torch.randn(2, 3, 8), torch.tensor([[True, True, False], [False, False, False]])).shape
        torch.Size([2, 3, 8])
    """

    nonlocal_reason = ("token encoder: every token sees every other token, so each conditioner's token "
                       "carries information about all the others, wherever they are")

    def __init__(self, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.global_token = nn.Parameter(torch.randn(dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, tokens: Tensor, valid: Tensor) -> Tensor:
        """``tokens [B, K, D]``, ``valid [B, K]`` → ``[B, K, D]``."""
        B = tokens.shape[0]
        seq = torch.cat([self.global_token.to(tokens.dtype).expand(B, 1, -1), tokens], dim=1)
        pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=valid.device), ~valid], dim=1)
        return self.encoder(seq, src_key_padding_mask=pad)[:, 1:]


class PooledSetEmbedding(nn.Module):
    r"""The mean of the valid tokens, projected and added to the noise embedding: ``[B, K, D] -> [B, E]``.

    ``p = W (sum_k valid_k t_k / max(1, sum_k valid_k)) + [no valid token] e_empty`` with a learned
    ``e_empty`` for the empty set.

    Examples:
        >>> import torch
        >>> pool = PooledSetEmbedding(4, 6)
        >>> torch.equal(pool(torch.randn(1, 2, 4), torch.zeros(1, 2, dtype=torch.bool))[0],
        ...             pool.proj.bias + pool.empty)
        True
    """

    nonlocal_reason = ("pooled set embedding: the mean of all tokens is added to the noise embedding, which "
                       "modulates every pixel")

    def __init__(self, token_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(token_dim, emb_dim)
        self.empty = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, tokens: Tensor, valid: Tensor) -> Tensor:
        """``tokens [B, K, D]``, ``valid [B, K]`` → ``[B, E]``."""
        v = valid.to(tokens.dtype)[..., None]
        n = v.sum(1)
        mean = (tokens * v).sum(1) / n.clamp(min=1)
        return self.proj(mean) + (n == 0).to(tokens.dtype) * self.empty


class UNet(nn.Module):
    r"""The raw global U-Net ``F(x_in [B, C, H, W], c_noise [B], cond) -> [B, C, H, W]``.

    ::

        t    = TokenEncoder(ConditionerEncoder(pos, attr))        # absolute Fourier positions + attributes
                                                                  # (attributes only if not token_positions)
        e    = SigmaEmbedding(c_noise) + PooledSetEmbedding(t)    # if pooled_embedding
        h    = conv_in(x_in)
        down: per level l (stride 2**l): blocks (+ cross-attention to t), keep skips, stride-2 conv
              (cross-attention: MaskedCrossAttention, with relative offset features if relative_freqs > 0)
        mid:  block, global self-attention, cross-attention, block
        up:   per level l: blocks on [h, skip] (+ cross-attention), nearest 2x upsampling + conv
        F    = conv_out(silu(norm(h)))

    ``H`` and ``W`` must be multiples of ``config.downsampling``. Not translation equivariant (tokens carry
    absolute positions; downsampling aligns to a grid): ``translation_equivariant = False``.

    Examples:
        >>> import torch
        >>> net = UNet(UNetConfig(base_width=8, channel_mult=(1, 2), attention_levels=(1,), heads=2, groups=4,
        ...                       token_dim=8, attr_dim=0))
        >>> net(torch.randn(1, 3, 8, 12), torch.zeros(1)).shape
        torch.Size([1, 3, 8, 12])
    """

    translation_equivariant = False

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else UNetConfig()
        if not isinstance(cfg, UNetConfig):
            raise fail("UNet", f"`config` is {describe(cfg)}, expected a UNetConfig.")
        self.config = cfg
        E = cfg.sigma_embed_dim
        self.sigma_embed = SigmaEmbedding(E)
        ff = (FourierFeatures(cfg.fourier_freqs, min_wavelength=2.0, max_wavelength=cfg.position_scale)
              if cfg.token_positions else None)
        self.encoder = ConditionerEncoder(cfg.attr_dim, cfg.token_dim, fourier=ff)
        self.token_encoder = (TokenEncoder(cfg.token_dim, cfg.token_encoder_layers, cfg.heads)
                              if cfg.token_encoder_layers > 0 else None)
        self.pooled = PooledSetEmbedding(cfg.token_dim, E) if cfg.pooled_embedding else None
        widths = [cfg.base_width * m for m in cfg.channel_mult]
        L = len(widths)
        self.conv_in = nn.Conv2d(cfg.channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.down_attn = nn.ModuleDict()
        self.downsamplers = nn.ModuleList()
        ch = widths[0]
        skip_ch = []
        for lv in range(L):
            for i in range(cfg.blocks_per_level):
                self.down_blocks.append(UNetResBlock(ch, widths[lv], E, norm=cfg.norm, groups=cfg.groups))
                ch = widths[lv]
                if lv in cfg.attention_levels:
                    self.down_attn[f"{lv}_{i}"] = _CrossAttnLayer(ch, cfg)
                skip_ch.append(ch)
            if lv < L - 1:
                self.downsamplers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid1 = UNetResBlock(ch, ch, E, norm=cfg.norm, groups=cfg.groups)
        self.mid_self = GlobalSelfAttention(ch, heads=cfg.heads) if cfg.mid_self_attention else None
        self.mid_self_norm = make_norm(cfg.norm, ch, groups=cfg.groups) if cfg.mid_self_attention else None
        self.mid_cross = _CrossAttnLayer(ch, cfg) if cfg.mid_cross_attention else None
        self.mid2 = UNetResBlock(ch, ch, E, norm=cfg.norm, groups=cfg.groups)
        self.up_blocks = nn.ModuleList()
        self.up_attn = nn.ModuleDict()
        self.upsamplers = nn.ModuleList()
        for lv in reversed(range(L)):
            for i in range(cfg.blocks_per_level):
                self.up_blocks.append(UNetResBlock(ch + skip_ch.pop(), widths[lv], E, norm=cfg.norm,
                                                   groups=cfg.groups))
                ch = widths[lv]
                if lv in cfg.attention_levels:
                    self.up_attn[f"{lv}_{i}"] = _CrossAttnLayer(ch, cfg)
            if lv > 0:
                self.upsamplers.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = make_norm(cfg.norm, ch, groups=cfg.groups)
        self.conv_out = nn.Conv2d(ch, cfg.channels, 3, padding=1)

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Conditions | None = None) -> Tensor:
        """``x_in [B, C, H, W]``, ``c_noise [B]``, ``cond`` → ``[B, C, H, W]``."""
        where = "UNet"
        cfg = self.config
        x_in = check_image(x_in, where, "x")
        B, C, H, W = x_in.shape
        if C != cfg.channels:
            raise fail(where, f"`x` has {C} channels, expected {cfg.channels} (config.channels).",
                       "build the network with UNetConfig(channels=C).")
        f = cfg.downsampling
        if H % f or W % f:
            raise fail(where, f"`x` has size {(H, W)}, but this U-Net downsamples by {f}, so H and W must be "
                       f"multiples of {f}.", f"pad or crop the images to a multiple of {f}, or use fewer levels "
                       "(a shorter channel_mult).")
        if not isinstance(c_noise, Tensor) or tuple(c_noise.shape) != (B,):
            raise fail(where, f"`c_noise` is {describe(c_noise)}, expected a [B] = [{B}] tensor.")
        cd = prepare_conditions(cond, x_in, cfg.attr_dim, where)
        tokens = self.encoder(cd.pos, cd.attr)
        if self.token_encoder is not None:
            tokens = self.token_encoder(tokens, cd.valid)
        emb = self.sigma_embed(c_noise)
        if self.pooled is not None:
            emb = emb + self.pooled(tokens, cd.valid)
        ctx = CondContext(tokens, cd.pos, cd.valid, (H, W), None, torch.exp(4 * c_noise))
        L = len(cfg.channel_mult)
        h = self.conv_in(x_in)
        skips = []
        blocks = iter(self.down_blocks)
        for lv in range(L):
            for i in range(cfg.blocks_per_level):
                h = next(blocks)(h, emb)
                if f"{lv}_{i}" in self.down_attn:
                    h = self.down_attn[f"{lv}_{i}"](h, ctx, 2**lv)
                skips.append(h)
            if lv < L - 1:
                h = self.downsamplers[lv](h)
        h = self.mid1(h, emb)
        if self.mid_self is not None and self.mid_self_norm is not None:
            h = h + self.mid_self(self.mid_self_norm(h))
        if self.mid_cross is not None:
            h = self.mid_cross(h, ctx, 2 ** (L - 1))
        h = self.mid2(h, emb)
        blocks = iter(self.up_blocks)
        ups = iter(self.upsamplers)
        for lv in reversed(range(L)):
            for i in range(cfg.blocks_per_level):
                h = next(blocks)(torch.cat([h, skips.pop()], dim=1), emb)
                if f"{lv}_{i}" in self.up_attn:
                    h = self.up_attn[f"{lv}_{i}"](h, ctx, 2**lv)
            if lv > 0:
                h = next(ups)(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


class GlobalConditionalDenoiser(EDMPreconditioner):
    r"""The global baseline as a denoiser: EDM preconditioning around :class:`UNet`.

    ``D(x, sigma, cond) = c_skip x + c_out F(c_in x, log(sigma) / 4, cond)`` (see
    :class:`~localscore.denoisers.EDMPreconditioner`, which this class is). It declares no receptive or
    conditioner radius (both ``None``): it is global. :func:`~localscore.nn.enforce_locality` masks its
    cross-attention; :func:`~localscore.nn.localize` gives the sampling-time local form.

    Args:
        config: a :class:`~localscore.nn.UNetConfig` (default: the 16x16 U-Net of the earlier study in the
            experiments docs); or pass its fields as keyword arguments.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> D = GlobalConditionalDenoiser(base_width=8, channel_mult=(1, 2), attention_levels=(1,), attr_dim=0,
        ...                               token_dim=8, heads=2, groups=4)
        >>> D(torch.randn(2, 3, 8, 8), 1.0, Conditions.from_lists([[(1.0, 2.0)], []])).shape
        torch.Size([2, 3, 8, 8])
        >>> D.receptive_radius is None and D.conditioner_radius is None
        True
    """

    _where = "GlobalConditionalDenoiser"
    inner: UNet
    translation_equivariant = False

    def __init__(self, config: UNetConfig | None = None, **fields: Any) -> None:
        if config is not None and fields:
            config = config.replace(**fields)
        elif config is None:
            config = UNetConfig(**fields)
        super().__init__(UNet(config), sigma_data=config.sigma_data)

    @property
    def config(self) -> UNetConfig:
        """The network's configuration."""
        return self.inner.config

    @property
    def receptive_radius(self) -> int | None:
        """``None``: the U-Net is global in pixels."""
        return None

    @property
    def conditioner_radius(self) -> int | None:
        """``None``: the U-Net is global in conditioners."""
        return None


def build_denoiser(
    config: LocalNetConfig | UNetConfig | dict[str, Any],
    *,
    enforce_radius: float | None = None,
) -> nn.Module:
    """The untrained denoiser a config describes: ``D(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``.

    The one builder of the library's networks (the length-generalization pipeline and the model files of
    :func:`localscore.lengthgen.load_model` use it too).

    Args:
        config: a :class:`LocalNetConfig` (:class:`~localscore.nn.LocalConditionalDenoiser`), a
            :class:`UNetConfig` (:class:`GlobalConditionalDenoiser`), or the tagged dict of
            :func:`~localscore.nn.config_to_dict`.
        enforce_radius: if given, the network's cross-attention is masked to the conditioners within this
            Euclidean radius in pixels (:func:`~localscore.nn.enforce_locality` with
            ``DiscRule(enforce_radius)``, patched in place); the result is a
            :class:`~localscore.nn.LocalityEnforced` whose ``inner`` is the network.

    Examples:
        >>> from localscore.nn import LocalNetConfig, config_to_dict
        >>> type(build_denoiser(config_to_dict(LocalNetConfig(width=8, heads=2)))).__name__
        'LocalConditionalDenoiser'
        >>> type(build_denoiser(UNetConfig(base_width=8, attr_dim=0), enforce_radius=4.0)).__name__
        'LocalityEnforced'
    """
    cfg = config_from_dict(config) if isinstance(config, dict) else config
    model: nn.Module
    if isinstance(cfg, LocalNetConfig):
        model = LocalConditionalDenoiser(cfg)
    elif isinstance(cfg, UNetConfig):
        model = GlobalConditionalDenoiser(cfg)
    else:
        raise fail("build_denoiser", f"`config` is {describe(config)}, expected a LocalNetConfig, UNetConfig or "
                   "the dict of config_to_dict.")
    if enforce_radius is None:
        return model
    r = enforce_radius
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
        raise fail("build_denoiser", f"`enforce_radius` is {describe(r)}, expected None or a positive radius in "
                   "pixels.")
    from ..masks import DiscRule
    from .intervention import enforce_locality

    return enforce_locality(model, DiscRule(float(r)), copy=False)
