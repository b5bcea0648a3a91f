"""Small config dataclasses for the two networks, with defaults for 16x16 and 32x32 CLEVR-like scenes.

Configs are frozen, validated on construction, and round-trip through plain dicts
(:meth:`LocalNetConfig.to_dict` / :meth:`LocalNetConfig.from_dict`) so checkpoints can store them as JSON.
The default attribute length is 13 (one-hot colour 8 + shape 3 + size 2), the CLEVR-like labels of
``localscore.lengthgen.data``; set ``attr_dim=0`` for position-only conditioners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from .._config import ConfigMixin
from .._errors import describe, fail
from ..masks import BoxRule, DiscRule, GaussianRule, MaskRule

__all__ = ["LocalNetConfig", "UNetConfig", "config_from_dict", "config_to_dict"]


def _pos_int(where: str, name: str, v: Any, minimum: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise fail(where, f"`{name}` is {describe(v)}, expected an int >= {minimum}.")


def _choice(where: str, name: str, v: Any, options: tuple[str, ...]) -> None:
    if v not in options:
        raise fail(where, f"`{name}` is {v!r}, expected one of {options}.")


@dataclass(frozen=True)
class LocalNetConfig(ConfigMixin):
    """Configuration of :class:`~localscore.nn.LocalConditionalDenoiser`.

    The defaults are the 16x16 model of the earlier study (see the experiments docs): no downsampling,
    receptive field 13x13 (``receptive_radius = 6``), conditioning by the objects within 3.5 px of each pixel.

    Attributes:
        channels: image channels ``C``.
        width: feature channels.
        depth: number of residual blocks (each two ``kernel_size`` convolutions).
        kernel_size: odd convolution size.
        attr_dim: attribute length ``A`` of the conditioners (0: positions only).
        token_dim: conditioner token length.
        heads: attention heads (cross-attention and neighbourhood self-attention).
        conditioning: ``"attention"`` (masked cross-attention with a null token) or ``"render"`` (a masked
            sum of nearby tokens, :class:`~localscore.nn.RenderedConditioning`).
        cond_blocks: inject conditioning in ``"all"`` blocks or only the ``"first"``.
        cond_rule: which pixel-to-conditioner mask: ``"disc"`` (Euclidean radius ``cond_radius``), ``"box"``
            (Chebyshev half-size ``cond_radius``) or ``"gaussian"`` (soft, std ``cond_radius``, truncated at
            ``gaussian_truncate`` std).
        cond_radius: the rule's size in pixels (>= 0).
        gaussian_truncate: truncation of the Gaussian rule, in standard deviations.
        relative_freqs: Fourier frequencies of relative offsets (0: none; then the net only knows *that* a
            conditioner is near, not where).
        absolute_positions: also give tokens absolute-position features (breaks translation equivariance).
        position_scale: longest Fourier wavelength for absolute positions (pixels).
        self_attention_radius: radius of neighbourhood self-attention after each block (0: none).
        norm: ``"channel"`` (per-pixel LayerNorm over channels, local), ``"none"``, or ``"group"`` (GroupNorm
            over the whole image: mixes every pixel into every other, so the network is no longer local and
            declares no radii).
        groups: groups for ``norm="group"``.
        sigma_embed_dim: noise-level embedding length.
        sigma_data: EDM's data standard deviation.
        head_kernel_size: odd size of the output convolution (default ``kernel_size``); lets
            :meth:`for_receptive_radius` reach odd radii.

    Examples:
        >>> cfg = LocalNetConfig(width=32)
        >>> LocalNetConfig.from_dict(cfg.to_dict()) == cfg
        True
        >>> cfg.receptive_radius, cfg.conditioner_radius
        (6, 9)
    """

    _from_dict_fix = "pass the dict written by `to_dict()` (of this config class)."

    channels: int = 3
    width: int = 48
    depth: int = 2
    kernel_size: int = 3
    attr_dim: int = 13
    token_dim: int = 64
    heads: int = 4
    conditioning: Literal["attention", "render"] = "attention"
    cond_blocks: Literal["all", "first"] = "all"
    cond_rule: Literal["disc", "box", "gaussian"] = "disc"
    cond_radius: float = 3.5
    gaussian_truncate: float = 3.0
    relative_freqs: int = 6
    absolute_positions: bool = False
    position_scale: float = 32.0
    self_attention_radius: int = 0
    norm: Literal["channel", "none", "group"] = "channel"
    groups: int = 8
    sigma_embed_dim: int = 128
    sigma_data: float = 0.5
    head_kernel_size: int | None = None

    def __post_init__(self) -> None:
        w = "LocalNetConfig"
        if self.head_kernel_size is not None:
            _pos_int(w, "head_kernel_size", self.head_kernel_size)
            if self.head_kernel_size % 2 == 0:
                raise fail(w, f"`head_kernel_size` is {self.head_kernel_size}, expected an odd size.")
        for name in ("channels", "width", "depth", "kernel_size", "token_dim", "heads", "sigma_embed_dim", "groups"):
            _pos_int(w, name, getattr(self, name))
        for name in ("attr_dim", "relative_freqs", "self_attention_radius"):
            _pos_int(w, name, getattr(self, name), 0)
        if self.kernel_size % 2 == 0:
            raise fail(w, f"`kernel_size` is {self.kernel_size}, expected an odd size (centred kernels).")
        _choice(w, "conditioning", self.conditioning, ("attention", "render"))
        _choice(w, "cond_blocks", self.cond_blocks, ("all", "first"))
        _choice(w, "cond_rule", self.cond_rule, ("disc", "box", "gaussian"))
        _choice(w, "norm", self.norm, ("channel", "none", "group"))
        for name in ("cond_radius",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise fail(w, f"`{name}` is {v!r}, expected a finite radius >= 0 (pixels).",
                           "radii are distances in pixels; 0 means 'the conditioner's own pixel only'.")
        for name in ("gaussian_truncate", "position_scale", "sigma_data"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise fail(w, f"`{name}` is {v!r}, expected a positive finite number.")
        if self.norm == "group" and self.width % self.groups:
            raise fail(w, f"`width` = {self.width} is not divisible by `groups` = {self.groups}.")
        if self.self_attention_radius and self.width % self.heads:
            raise fail(w, f"`width` = {self.width} is not divisible by `heads` = {self.heads} (self-attention).")

    @classmethod
    def for_image_size(cls, size: int, **changes: Any) -> LocalNetConfig:
        """Defaults scaled to the image size: 16 → the earlier study's model; 32 → objects twice as large.

        ``size <= 16``: depth 2 (receptive radius 6), ``cond_radius`` 3.5. ``size`` 32 (and above):
        depth 4 (receptive radius 10), ``cond_radius`` 6.0. Other fields from ``changes``.

        Examples:
            >>> LocalNetConfig.for_image_size(32).receptive_radius
            10
        """
        _pos_int("LocalNetConfig.for_image_size", "size", size)
        base: dict[str, Any] = {"depth": 2, "cond_radius": 3.5} if size <= 16 else {"depth": 4, "cond_radius": 6.0}
        base.update(changes)
        return cls(**base)

    @classmethod
    def for_receptive_radius(cls, radius: int, **changes: Any) -> LocalNetConfig:
        """A config whose receptive radius is exactly ``radius`` (depth and head kernel chosen to fit).

        With ``p = kernel_size // 2``: ``radius = p + depth * 2p + head_radius``; the depth is the largest
        that leaves ``head_radius >= p`` (at least 1 block), the head kernel takes the rest.

        Examples:
            >>> cfg = LocalNetConfig.for_receptive_radius(7, cond_radius=2.0)
            >>> cfg.receptive_radius, cfg.depth, cfg.head_kernel_size
            (7, 2, 5)
        """
        where = "LocalNetConfig.for_receptive_radius"
        _pos_int(where, "radius", radius)
        k = int(changes.get("kernel_size", 3))
        extra = int(changes.get("self_attention_radius", 0))
        p = k // 2
        per_block = 2 * p + extra
        rem = radius - p
        depth = max(1, (rem - p) // per_block) if per_block else 1
        head = rem - depth * per_block
        if head < 0 or p == 0:
            raise fail(where, f"`radius` = {radius} is below the smallest this architecture can have "
                       f"({p + per_block} with kernel_size {k}).", "use a larger radius or a smaller kernel_size.")
        return cls(**{"depth": depth, "head_kernel_size": 2 * head + 1, **changes})

    @property
    def head_radius(self) -> int:
        """Radius of the output convolution."""
        return (self.head_kernel_size or self.kernel_size) // 2

    def rule(self) -> MaskRule:
        """The :class:`~localscore.masks.MaskRule` the fields describe."""
        if self.cond_rule == "disc":
            return DiscRule(float(self.cond_radius))
        if self.cond_rule == "box":
            return BoxRule(float(self.cond_radius))
        return GaussianRule(float(self.cond_radius), truncate=float(self.gaussian_truncate))

    @property
    def block_radius(self) -> int:
        """Receptive radius of one residual block: two convolutions and the optional self-attention."""
        return 2 * (self.kernel_size // 2) + self.self_attention_radius

    @property
    def receptive_radius(self) -> int | None:
        """``stem + depth * block + head`` (Chebyshev, pixels); ``None`` with ``norm="group"``."""
        if self.norm == "group":
            return None
        return self.kernel_size // 2 + self.depth * self.block_radius + self.head_radius

    @property
    def conditioner_radius(self) -> int | None:
        """``ceil(rule support) + (blocks from the first conditioned one) * block + head``; see the docs."""
        if self.norm == "group":
            return None
        support = self.rule().support_radius(None)
        if support is None:  # pragma: no cover - config rules are constant
            return None
        return math.ceil(support) + self.depth * self.block_radius + self.head_radius


@dataclass(frozen=True)
class UNetConfig(ConfigMixin):
    """Configuration of :class:`~localscore.nn.GlobalConditionalDenoiser` (the global U-Net baseline).

    The defaults are the U-Net of the earlier study: 16 → 8 → 4, cross-attention from every pixel to every
    object token at every level, a pooled token embedding added to the noise embedding, GroupNorm.

    Attributes:
        channels: image channels ``C``.
        base_width: channels at full resolution.
        channel_mult: width multipliers per level; level ``l`` works at stride ``2**l``. Images must have
            ``H`` and ``W`` divisible by ``2**(len(channel_mult) - 1)``.
        blocks_per_level: residual blocks per level (down path; the up path has one more, as usual).
        attention_levels: levels with cross-attention to the conditioner tokens.
        mid_self_attention: global self-attention at the lowest resolution.
        mid_cross_attention: cross-attention at the lowest resolution (between the two middle blocks).
        attr_dim: attribute length ``A`` (0: positions only).
        token_dim: conditioner token length.
        heads: attention heads.
        fourier_freqs: Fourier frequencies of absolute token positions.
        token_positions: tokens carry their conditioner's absolute position (``True``, location conditioning).
            ``False`` builds tokens from the attributes alone, for *concept* conditioners that have no place
            in the image (a colour, a class): positions are then ignored and ``relative_freqs`` must be 0.
        position_scale: longest Fourier wavelength (pixels), of token positions and of relative offsets.
        relative_freqs: Fourier frequencies of the offset ``p_k - x_q`` between a token and the pixel attending
            to it, added to every cross-attention's logits and values (as in the local network; wavelengths 2
            to ``position_scale``); 0: none. Every pixel still attends to every token, so the layers stay
            global. Without them a pixel learns where it is only from the zero padding, and matching pixels
            to the tokens' absolute positions is slow to learn (see the networks docs).
        pooled_embedding: add the mean of the valid tokens (projected) to the noise embedding.
        token_encoder_layers: transformer-encoder layers over the tokens before cross-attention (tokens see
            each other; 0: none). The earlier study measured that this breaks length generalisation.
        norm: ``"group"`` (GroupNorm, the usual U-Net choice) or ``"channel"`` (per-pixel LayerNorm).
        groups: GroupNorm groups.
        sigma_embed_dim: noise-level embedding length.
        sigma_data: EDM's data standard deviation.

    Examples:
        >>> UNetConfig(token_encoder_layers=2).downsampling
        4
    """

    _from_dict_fix = "pass the dict written by `to_dict()` (of this config class)."

    channels: int = 3
    base_width: int = 24
    channel_mult: tuple[int, ...] = (1, 2, 2)
    blocks_per_level: int = 1
    attention_levels: tuple[int, ...] = (0, 1, 2)
    mid_self_attention: bool = True
    mid_cross_attention: bool = True
    attr_dim: int = 13
    token_dim: int = 64
    heads: int = 4
    fourier_freqs: int = 8
    token_positions: bool = True
    position_scale: float = 32.0
    relative_freqs: int = 0
    pooled_embedding: bool = True
    token_encoder_layers: int = 0
    norm: Literal["group", "channel"] = "group"
    groups: int = 8
    sigma_embed_dim: int = 128
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        w = "UNetConfig"
        for name in ("channels", "base_width", "blocks_per_level", "token_dim", "heads", "fourier_freqs",
                     "groups", "sigma_embed_dim"):
            _pos_int(w, name, getattr(self, name))
        for name in ("attr_dim", "token_encoder_layers", "relative_freqs"):
            _pos_int(w, name, getattr(self, name), 0)
        if not isinstance(self.channel_mult, tuple) or not self.channel_mult:
            raise fail(w, f"`channel_mult` is {self.channel_mult!r}, expected a non-empty tuple of ints >= 1.")
        for m in self.channel_mult:
            _pos_int(w, "channel_mult[...]", m)
        if not isinstance(self.attention_levels, tuple):
            raise fail(w, f"`attention_levels` is {self.attention_levels!r}, expected a tuple of level indices.")
        for lv in self.attention_levels:
            if isinstance(lv, bool) or not isinstance(lv, int) or not 0 <= lv < len(self.channel_mult):
                raise fail(w, f"`attention_levels` holds {lv!r}, expected levels in 0..{len(self.channel_mult) - 1}.")
        _choice(w, "norm", self.norm, ("group", "channel"))
        if not isinstance(self.token_positions, bool):
            raise fail(w, f"`token_positions` is {self.token_positions!r}, expected True or False.")
        if not self.token_positions and self.relative_freqs:
            raise fail(w, f"`token_positions` is False but `relative_freqs` is {self.relative_freqs}: relative "
                       "offset features read the token positions.",
                       "set relative_freqs=0 for concept conditioners, or token_positions=True.")
        if not self.token_positions and self.attr_dim == 0:
            raise fail(w, "`token_positions` is False and `attr_dim` is 0: tokens would carry nothing.",
                       "give the concepts attributes (attr_dim >= 1), or set token_positions=True.")
        for name in ("position_scale", "sigma_data"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise fail(w, f"`{name}` is {v!r}, expected a positive finite number.")
        for m in self.channel_mult:
            width = self.base_width * m
            if self.norm == "group" and width % self.groups:
                raise fail(w, f"level width {width} is not divisible by `groups` = {self.groups}.")
            if width % self.heads:
                raise fail(w, f"level width {width} is not divisible by `heads` = {self.heads}.")
        if self.token_dim % self.heads:
            raise fail(w, f"`token_dim` = {self.token_dim} is not divisible by `heads` = {self.heads}.")

    @property
    def downsampling(self) -> int:
        """The total downsampling factor ``2**(levels - 1)``: image sizes must be multiples of it."""
        return 2 ** (len(self.channel_mult) - 1)


def config_to_dict(config: LocalNetConfig | UNetConfig) -> dict[str, Any]:
    """``{"kind": "local" | "global", **fields}``: a config as a tagged plain dict, for checkpoints.

    Examples:
        >>> config_to_dict(UNetConfig())["kind"]
        'global'
    """
    if isinstance(config, LocalNetConfig):
        return {"kind": "local", **config.to_dict()}
    if isinstance(config, UNetConfig):
        return {"kind": "global", **config.to_dict()}
    raise fail("config_to_dict", f"`config` is {describe(config)}, expected a LocalNetConfig or UNetConfig.")


def config_from_dict(data: dict[str, Any]) -> LocalNetConfig | UNetConfig:
    """The inverse of :func:`config_to_dict`.

    Examples:
        >>> config_from_dict(config_to_dict(LocalNetConfig(width=16))) == LocalNetConfig(width=16)
        True
    """
    if not isinstance(data, dict) or data.get("kind") not in ("local", "global"):
        raise fail("config_from_dict", f"`data` is {describe(data)}, expected a dict with kind 'local' or 'global'.",
                   "pass the dict written by config_to_dict(config).")
    fields = {k: v for k, v in data.items() if k != "kind"}
    return LocalNetConfig.from_dict(fields) if data["kind"] == "local" else UNetConfig.from_dict(fields)
