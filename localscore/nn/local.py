r"""The local conditional network: local in pixels and in conditioners *by construction*.

:class:`LocalScoreNet` is the raw network ``F(x_in, c_noise, cond)``; :class:`LocalConditionalDenoiser`
wraps it in EDM preconditioning (it *is* a :class:`~localscore.denoisers.EDMPreconditioner` whose
``inner`` is the raw net), so it implements the denoiser protocol ``D(x, sigma, cond)``.

What each output pixel ``p`` sees (all distances Chebyshev, in pixels):

* input pixels ``q`` with ``|q - p|_inf <= receptive_radius`` (convolutions without downsampling,
  per-pixel normalisation, optional neighbourhood self-attention; the noise level enters as one vector
  per image);
* conditioners ``k`` with ``|pos_k - p|_inf <= conditioner_radius``: a feature pixel ``q`` reads only the
  conditioners its mask allows (``|pos_k - q|_inf <= rho``, the rule's support radius), and that
  information then spreads through the convolutions after the first conditioned layer,
  ``R_after = depth * block radius + head radius``. So ``conditioner_radius = ceil(rho) + R_after``
  (``conditioner_reach = rho + R_after`` without the rounding). The bound is attained for an integer
  ``rho`` and a conditioner on a pixel centre: a radius one smaller is violated.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_flag, check_image, checked_call
from .._errors import describe, fail
from ..conditions import Conditions
from ..denoisers import EDMPreconditioner
from ..masks import MaskRule, distances
from .attention import (
    CondContext,
    ConditioningLayer,
    MaskedCrossAttention,
    NeighborList,
    RenderedConditioning,
    SparseMode,
    _auto_neighbors,
)
from .blocks import LocalResBlock, make_norm
from .config import LocalNetConfig
from .encoders import ConditionerEncoder, FourierFeatures, SigmaEmbedding

__all__ = ["LocalConditionalDenoiser", "LocalScoreNet", "prepare_conditions"]


def prepare_conditions(cond: Any, x: Tensor, attr_dim: int, where: str) -> Conditions:
    """Validate ``cond`` against images ``x [B, C, H, W]`` and a network's attribute length; cast to x's dtype.

    ``None`` becomes the empty set (``K = 0``). Raises :class:`~localscore.LocalScoreError` for a batch size
    or device mismatch, or attributes that do not match ``attr_dim``.
    """
    B = x.shape[0]
    if cond is None:
        return Conditions.empty(B, attr_dim=attr_dim or None, dtype=x.dtype, device=x.device)
    if not isinstance(cond, Conditions):
        raise fail(where, f"`cond` is {describe(cond)}, expected a localscore.Conditions or None.",
                   "build one with `Conditions.from_lists(...)`; pass None for the unconditional model.")
    cond.check_batch(B, where, device=x.device)
    if attr_dim > 0 and cond.attr is None:
        if cond.num_slots == 0:
            return Conditions.empty(B, attr_dim=attr_dim, dtype=x.dtype, device=x.device)
        raise fail(where, f"the network expects attributes of length attr_dim = {attr_dim} but `cond.attr` is None.",
                   "pass Conditions(pos, attr, valid) with attr [B, K, A], or build the network with attr_dim=0.")
    if attr_dim == 0 and cond.attr is not None:
        raise fail(where, f"`cond` has attributes of length {cond.attr_dim} but the network was built with "
                   "attr_dim = 0 (positions only).", "build the network with attr_dim = A, or drop the attributes.")
    if cond.attr is not None and cond.attr_dim != attr_dim:
        raise fail(where, f"`cond.attr` has length A = {cond.attr_dim}, expected attr_dim = {attr_dim}.",
                   "encode the attributes as the network was configured (see its config's attr_dim).")
    if cond.dtype != x.dtype:
        cond = cond.to(dtype=x.dtype)
    return cond


class LocalScoreNet(nn.Module):
    r"""The raw local network ``F(x_in [B, C, H, W], c_noise [B], cond) -> [B, C, H, W]``.

    ::

        e    = SigmaEmbedding(c_noise)                       # one vector per image
        t_k  = ConditionerEncoder(pos_k, attr_k)             # one token per conditioner, tokens never mix
        m    = rule(cond, (H, W), sigma = exp(4 c_noise))    # [B, K, H, W] pixel-to-conditioner mask
        nb   = neighbor_list(m, valid)  if choose_sparse(m)  # [B, N, M] per-pixel lists (the sparse path)
        h    = stem(x_in)                                    # kernel_size conv
        h    = block_d(... block_1(h, e, (t, m, nb)) ...)    # LocalResBlock, conditioned as configured
        F    = head(silu(norm(h)))                           # kernel_size conv

    Any image size works (no downsampling). Use it through :class:`LocalConditionalDenoiser`.

    Args:
        config: a :class:`~localscore.nn.LocalNetConfig`.
        rule: a custom :class:`~localscore.masks.MaskRule` instead of the config's; it must declare a
            finite ``support_radius(None)`` (an upper bound over every sigma), and every call checks that
            its masks respect it.
        sparse: how the conditioning layers read the mask: ``"auto"`` (default; the rule of
            :func:`~localscore.nn.choose_sparse`, per forward pass), ``"sparse"`` (always the per-pixel
            neighbour list when ``K > 0``) or ``"dense"`` (always ``[B, N, K]``). All three compute the same
            function (to float round-off); the attribute ``sparse`` may be changed at any time. It is
            not part of the config (a runtime choice, not an architecture).

    Examples:
        >>> import torch
        >>> net = LocalScoreNet(LocalNetConfig(width=8, heads=2, attr_dim=0))
        >>> net(torch.randn(2, 3, 7, 9), torch.zeros(2), None).shape      # any image size
        torch.Size([2, 3, 7, 9])
        >>> net.receptive_radius, net.conditioner_radius, net.conditioner_reach
        (6, 9, 8.5)
    """

    def __init__(self, config: LocalNetConfig | None = None, *, rule: MaskRule | None = None,
                 sparse: SparseMode = "auto") -> None:
        super().__init__()
        cfg = config if config is not None else LocalNetConfig()
        if not isinstance(cfg, LocalNetConfig):
            raise fail("LocalScoreNet", f"`config` is {describe(cfg)}, expected a LocalNetConfig.")
        if sparse not in ("auto", "sparse", "dense"):
            raise fail("LocalScoreNet", f"`sparse` is {sparse!r}, expected 'auto', 'sparse' or 'dense'.")
        self.config = cfg
        self.sparse: SparseMode = sparse
        self._check_support = rule is not None  # the config's rules honour their support by construction
        rule = rule if rule is not None else cfg.rule()
        support = rule.support_radius(None) if hasattr(rule, "support_radius") else None
        if support is None or not math.isfinite(support) or support < 0:
            raise fail("LocalScoreNet", f"the rule {rule!r} declares no finite support radius "
                       f"(support_radius(None) = {support!r}).",
                       "give a rule whose masks vanish beyond a fixed distance for every sigma, and make "
                       "support_radius(None) return that bound (e.g. DiscRule(3.5), GaussianRule(1.0, truncate=3)).")
        self.rule = rule
        self.support = float(support)
        w, k = cfg.width, cfg.kernel_size
        self.sigma_embed = SigmaEmbedding(cfg.sigma_embed_dim)
        absolute = (FourierFeatures(cfg.relative_freqs or 6, max_wavelength=cfg.position_scale)
                    if cfg.absolute_positions else None)
        self.encoder = ConditionerEncoder(cfg.attr_dim, cfg.token_dim, fourier=absolute)
        rel_max = max(4.0 * max(self.support, 1.0), 2.0)
        self.stem = nn.Conv2d(cfg.channels, w, k, padding=k // 2)
        blocks = []
        for i in range(cfg.depth):
            cond_layer: ConditioningLayer | None = None
            if cfg.cond_blocks == "all" or i == 0:
                rel = (FourierFeatures(cfg.relative_freqs, min_wavelength=2.0, max_wavelength=rel_max)
                       if cfg.relative_freqs > 0 else None)
                if cfg.conditioning == "attention":
                    cond_layer = MaskedCrossAttention(w, cfg.token_dim, heads=cfg.heads, relative=rel)
                else:
                    cond_layer = RenderedConditioning(w, cfg.token_dim, relative=rel)
            blocks.append(LocalResBlock(w, cfg.sigma_embed_dim, kernel_size=k, norm=cfg.norm, cond=cond_layer,
                                        self_attention_radius=cfg.self_attention_radius, heads=cfg.heads,
                                        groups=cfg.groups))
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = make_norm(cfg.norm, w, groups=cfg.groups)
        kh = cfg.head_kernel_size or k
        self.head = nn.Conv2d(w, cfg.channels, kh, padding=kh // 2)

    # ------------------------------------------------------------------ declared locality
    @property
    def translation_equivariant(self) -> bool:
        """True unless tokens carry absolute positions or GroupNorm mixes the image (then never cropped)."""
        return not self.config.absolute_positions and self.config.norm != "group"

    @property
    def receptive_radius(self) -> int | None:
        """Chebyshev radius of the input pixels an output pixel depends on; ``None`` with GroupNorm."""
        if self.config.norm == "group":
            return None
        return self.config.kernel_size // 2 + sum(b.receptive_radius for b in self._blocks()) + self.config.head_radius

    def _blocks(self) -> list[LocalResBlock]:
        return [b for b in self.blocks if isinstance(b, LocalResBlock)]

    def _reaches(self) -> list[tuple[float, int]]:
        """``(support, R_after)`` for every conditioned block: its mask support and the radius after it."""
        out: list[tuple[float, int]] = []
        after = self.config.head_radius
        for b in reversed(self._blocks()):
            after += b.receptive_radius
            if b.cond is not None:
                support = self.support
                extra = b.cond.locality_rule
                s2 = extra.support_radius(None) if extra is not None else None
                if s2 is not None:
                    support = min(support, float(s2))
                out.append((support, after))
        return out

    @property
    def conditioner_reach(self) -> float | None:
        """``rho + R_after``: output pixel ``p`` depends on conditioner ``k`` only if ``|pos_k - p|_inf <=`` this."""
        if self.config.norm == "group":
            return None
        return max((s + a for s, a in self._reaches()), default=0.0)

    @property
    def conditioner_radius(self) -> int | None:
        """``ceil(rho) + R_after`` (integer form of :attr:`conditioner_reach`); ``None`` with GroupNorm."""
        if self.config.norm == "group":
            return None
        return max((math.ceil(s - 1e-9) + a for s, a in self._reaches()), default=0)

    # ------------------------------------------------------------------ forward
    def masks(self, cond: Conditions, size: tuple[int, int], sigma: Tensor | None = None) -> Tensor:
        """The rule's ``[B, K, H, W]`` masks; a custom rule's are checked against its declared support radius."""
        m = self.rule(cond, size, sigma=sigma)
        B, K = cond.batch_size, cond.num_slots
        if not isinstance(m, Tensor) or tuple(m.shape) != (B, K, *size):
            got = tuple(m.shape) if isinstance(m, Tensor) else describe(m)
            raise fail("LocalScoreNet", f"the rule returned masks of shape {got}, expected [B, K, H, W] = "
                       f"{[B, K, *size]}.", "a MaskRule returns one [H, W] mask per conditioner slot.")
        if K > 0 and self._check_support:
            d = distances(cond, size, "chebyshev")
            check_flag((m > 0) & (d > self.support + 1e-6), lambda: fail(
                "LocalScoreNet", f"the rule's masks reach beyond its declared support radius "
                f"{self.support} (pixels, Chebyshev).",
                "fix the rule's support_radius() so it bounds the masks for every sigma: the "
                "network's declared conditioner radius depends on it."))
        return m

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Conditions | None = None) -> Tensor:
        """``x_in [B, C, H, W]``, ``c_noise [B]`` (EDM's ``log(sigma) / 4``), ``cond`` → ``[B, C, H, W]``."""
        where = "LocalScoreNet"
        x_in = check_image(x_in, where, "x")
        B, C = x_in.shape[:2]
        if C != self.config.channels:
            raise fail(where, f"`x` has {C} channels, expected {self.config.channels} (config.channels).",
                       "build the network with LocalNetConfig(channels=C).")
        if not isinstance(c_noise, Tensor) or tuple(c_noise.shape) != (B,):
            raise fail(where, f"`c_noise` is {describe(c_noise)}, expected a [B] = [{B}] tensor.")
        with checked_call(where):  # the checks below (masks, conditions) read nothing back until the end
            return self._forward(x_in, c_noise, cond)

    def _forward(self, x_in: Tensor, c_noise: Tensor, cond: Conditions | None) -> Tensor:
        where = "LocalScoreNet"
        H, W = x_in.shape[-2:]
        cd = prepare_conditions(cond, x_in, self.config.attr_dim, where)
        sigma = torch.exp(4 * c_noise)
        mask = self.masks(cd, (H, W), sigma)
        tokens = self.encoder(cd.pos, cd.attr)
        neighbors = None
        if any(b.cond is not None and b.cond.locality_rule is None for b in self._blocks()):
            nb = _auto_neighbors(mask, cd.valid, self.sparse, self.config.conditioning,
                                 (x_in, c_noise, cd.pos, cd.attr, tokens, *self.parameters()))
            neighbors = nb if isinstance(nb, NeighborList) else None
        ctx = CondContext(tokens, cd.pos, cd.valid, (H, W), mask, sigma, neighbors)
        emb = self.sigma_embed(c_noise)
        h = self.stem(x_in)
        for b in self.blocks:
            h = b(h, emb, ctx)
        return self.head(F.silu(self.norm_out(h)))


class LocalConditionalDenoiser(EDMPreconditioner):
    r"""A denoiser that is local conditional by construction: EDM preconditioning around :class:`LocalScoreNet`.

    ``D(x, sigma, cond) = c_skip x + c_out F(c_in x, log(sigma) / 4, cond)`` with EDM's coefficients (see
    :class:`~localscore.denoisers.EDMPreconditioner`, which this class is). ``c_skip x`` is pixel-wise, so
    ``D`` has the raw net's radii.

    Attributes:
        receptive_radius: output pixel ``p`` depends only on input pixels ``q`` with ``|q - p|_inf <=`` it.
        conditioner_radius: output pixel ``p`` depends on conditioner ``k`` (position, attributes, presence)
            only if ``|pos_k - p|_inf <=`` it. Conditioners more than ``2 * conditioner_radius`` apart never
            influence a common pixel, so one pass equals the projective composition of single passes.

    Args:
        config: a :class:`~localscore.nn.LocalNetConfig` (default: the 16x16 model); or pass its fields as
            keyword arguments.
        rule: optional custom mask rule (see :class:`LocalScoreNet`).
        sparse: ``"auto"``, ``"sparse"`` or ``"dense"``: how conditioning reads the mask (see
            :class:`LocalScoreNet`; same function, different cost). Change it later via ``D.inner.sparse``.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> D = LocalConditionalDenoiser(width=16, attr_dim=0)
        >>> D.receptive_radius, D.conditioner_radius
        (6, 9)
        >>> cond = Conditions.from_lists([[(4.0, 4.0)]])
        >>> D(torch.randn(1, 3, 16, 16), 1.0, cond).shape
        torch.Size([1, 3, 16, 16])
    """

    _where = "LocalConditionalDenoiser"
    inner: LocalScoreNet

    def __init__(self, config: LocalNetConfig | None = None, *, rule: MaskRule | None = None,
                 sparse: SparseMode = "auto", **fields: Any) -> None:
        if config is not None and fields:
            config = config.replace(**fields)
        elif config is None:
            config = LocalNetConfig(**fields)
        net = LocalScoreNet(config, rule=rule, sparse=sparse)
        super().__init__(net, sigma_data=config.sigma_data)

    @property
    def config(self) -> LocalNetConfig:
        """The network's configuration."""
        return self.inner.config

    @property
    def receptive_radius(self) -> int | None:
        """See :attr:`LocalScoreNet.receptive_radius`."""
        return self.inner.receptive_radius

    @property
    def conditioner_radius(self) -> int | None:
        """See :attr:`LocalScoreNet.conditioner_radius`."""
        return self.inner.conditioner_radius

    @property
    def conditioner_reach(self) -> float | None:
        """See :attr:`LocalScoreNet.conditioner_reach`."""
        return self.inner.conditioner_reach

    @property
    def translation_equivariant(self) -> bool:
        """See :attr:`LocalScoreNet.translation_equivariant`."""
        return self.inner.translation_equivariant
