r"""Small reference denoisers with locality known by construction (for tests, examples and benchmarks).

:class:`LocalConvDenoiser` stacks ``R`` 3x3 convolutions (zero padding, no down-sampling), so output
pixel ``(i, j)`` depends only on input pixels within Chebyshev distance ``R``; its conditioning is a map
rendered at every pixel from the conditioners within Chebyshev distance ``r`` of it, so the output
depends only on conditioners within ``r + R``. :class:`GlobalConvDenoiser` adds an image-wide mean-pooled
feature and an image-wide pooled conditioner embedding: the same stack, now global in both senses.

These are oracles for the metrics (the radii are exact) and baselines for examples; they need neither
hypothesis nor pytest.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import MAX_ELEMENTS as _MAX_ELEMENTS
from .._checks import as_sigma, check_elements, check_image, check_model
from .._errors import describe, fail
from ..conditions import Conditions

__all__ = ["GlobalConvDenoiser", "LocalConvDenoiser", "render_conditions"]

MAX_ELEMENTS = _MAX_ELEMENTS
"""The most elements of a rendered conditioner map ``[B, K, H, W]`` and of a reference model's parameters;
checked before allocating, read at call time (``localscore.testing.models.MAX_ELEMENTS``)."""
MAX_RADIUS = 1024
"""The largest receptive radius of the reference models (one 3x3 layer per pixel of radius)."""


def _int_arg(value: Any, where: str, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise fail(where, f"`{name}` is {describe(value)}, expected an int {rng}.")
    return value


def _cond_arg(cond: Any, where: str) -> Conditions | None:
    if cond is not None and not isinstance(cond, Conditions):
        raise fail(where, f"`cond` is {describe(cond)}, expected a localscore.Conditions or None.",
                   "build it with Conditions.from_lists([[(row, col), ...], ...]).")
    return cond


def render_conditions(cond: Conditions | None, size: tuple[int, int], radius: float, attr_dim: int,
                      *, dtype: torch.dtype, device: torch.device) -> Tensor:
    r"""Render conditioners into a map ``[B, 1 + A, H, W]`` seen by every pixel.

    ``map[b, :, i, j] = sum_{k valid, d_k <= r} w(d_k) * (1, attr[b, k])`` with the Chebyshev distance
    ``d_k = max(|i - row_k|, |j - col_k|)`` and the weight ``w(d) = 1 - d / (r + 1)`` (smooth in the
    position inside the window, so gradients with respect to positions exist). Pixel ``(i, j)`` thus
    sees exactly the conditioners within ``r`` of it. ``cond=None`` (or empty) renders zeros.

    Examples:
        >>> c = Conditions.from_lists([[(1.0, 1.0)]])
        >>> render_conditions(c, (1, 4), 1.0, 0, dtype=torch.float32, device=torch.device("cpu"))[0, 0].tolist()
        [[0.5, 0.5, 0.5, 0.0]]
    """
    where = "render_conditions"
    cond = _cond_arg(cond, where)
    if not (isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
        raise fail(where, f"`size` is {describe(size)}, expected (H, W) with ints >= 1.")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not (math.isfinite(radius) and radius >= 0):
        raise fail(where, f"`radius` is {describe(radius)}, expected a finite number >= 0 (pixels).")
    attr_dim = _int_arg(attr_dim, where, "attr_dim", 0)
    H, W = size
    B = 1 if cond is None else cond.batch_size
    K = 1 if cond is None else max(cond.num_slots, 1)
    check_elements(B * max(K, 1 + attr_dim) * H * W, MAX_ELEMENTS, where,
                   f"the conditioner map [B, K, H, W] = [{B}, {K}, {H}, {W}]", "render smaller images",
                   limit_name="localscore.testing.models.MAX_ELEMENTS")
    if cond is not None and cond.num_slots and cond.device.type == "meta":
        raise fail(where, "`cond` is on the meta device (a shape without values).", "build it on a real device.")
    if cond is None or cond.num_slots == 0:
        B = 1 if cond is None else cond.batch_size
        return torch.zeros(B, 1 + attr_dim, H, W, dtype=dtype, device=device)
    grid_r = torch.arange(H, dtype=dtype, device=device).view(1, 1, H, 1)
    grid_c = torch.arange(W, dtype=dtype, device=device).view(1, 1, 1, W)
    pos = cond.pos.to(dtype)
    d = torch.maximum((grid_r - pos[..., 0, None, None]).abs(), (grid_c - pos[..., 1, None, None]).abs())
    w = (1 - d / (radius + 1)) * ((d <= radius) & cond.valid[:, :, None, None]).to(dtype)  # [B, K, H, W]
    feats = [w.sum(1, keepdim=True)]
    if attr_dim:
        if cond.attr is None or cond.attr.shape[-1] != attr_dim:
            raise fail("render_conditions", f"`cond` has attribute length {cond.attr_dim}, expected {attr_dim}.")
        feats.append(torch.einsum("bkhw,bka->bahw", w, cond.attr.to(dtype)))
    return torch.cat(feats, 1)


class LocalConvDenoiser(nn.Module):
    r"""A denoiser of receptive radius ``R`` and conditioner radius ``r`` by construction.

    ``D(x, sigma, cond) = x + net([x, log(sigma) / 4, m(cond)])`` where ``net`` is ``R`` 3x3
    convolutions (zero padding) with SiLU between them, and ``m`` is :func:`render_conditions` with
    radius ``r``. Output pixel ``i`` depends on input pixels within Chebyshev distance ``R`` and on
    conditioners within ``r + R``. ``R = 0`` gives a pixel-wise (1x1) network.

    Args:
        channels: image channels ``C``.
        radius: receptive radius ``R >= 0`` (number of 3x3 layers).
        cond_radius: ``r``, the rendering radius of the conditioners (``None``: unconditional).
        attr_dim: attribute length ``A`` of the conditioners (0: positions only; attributes a set carries are then
            ignored, as a position-only model of attributed data would).
        hidden: hidden channels.
        seed: weights are drawn from this seed (reproducible, no global RNG use).

    Attributes:
        receptive_radius: ``R`` (declared, read by :func:`localscore.denoisers.receptive_radius`).
        conditioner_radius: ``r + R``, the radius of conditioner influence on an output pixel.

    Examples:
        >>> import torch
        >>> D = LocalConvDenoiser(3, radius=2, cond_radius=1.5)
        >>> D(torch.randn(2, 3, 8, 8), 0.5, Conditions.from_lists([[(2, 2)], []])).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, channels: int, radius: int, *, cond_radius: float | None = None, attr_dim: int = 0,
                 hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        where = type(self).__name__
        _int_arg(channels, where, "channels", 1)
        _int_arg(radius, where, "radius", 0, MAX_RADIUS)
        _int_arg(attr_dim, where, "attr_dim", 0)
        _int_arg(hidden, where, "hidden", 1)
        _int_arg(seed, where, "seed", -(2**63), 2**63 - 2)
        if cond_radius is not None and (isinstance(cond_radius, bool) or not isinstance(cond_radius, (int, float))
                                        or not (math.isfinite(cond_radius) and 0 <= cond_radius <= 1e9)):
            raise fail(where, f"`cond_radius` is {describe(cond_radius)}, expected None (unconditional) or a finite "
                       "number >= 0 (pixels).")
        n_in0 = channels + 1 + (0 if cond_radius is None else 1 + attr_dim)
        widths = [n_in0] + [hidden] * max(radius - 1, 0) + [channels]
        n_params = sum(9 * a * b + b for a, b in itertools.pairwise(widths))
        check_elements(n_params + (channels + 2 + attr_dim) * channels, MAX_ELEMENTS, where,
                       f"the network's parameters (channels {channels}, hidden {hidden}, radius {radius})",
                       "use fewer channels or hidden units", limit_name="localscore.testing.models.MAX_ELEMENTS")
        self.channels = channels
        self.cond_radius = cond_radius
        self.attr_dim = attr_dim
        self.receptive_radius = radius
        if cond_radius is not None:
            self.conditioner_radius = radius + math.ceil(cond_radius)
        n_in = channels + 1 + (0 if cond_radius is None else 1 + attr_dim)
        g = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        if radius == 0:
            layers.append(nn.Conv2d(n_in, channels, 1))
        for layer in range(radius):
            c_in = n_in if layer == 0 else hidden
            c_out = channels if layer == radius - 1 else hidden
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            if layer < radius - 1:
                layers.append(nn.SiLU())
        self.net = nn.Sequential(*layers)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel()) ** 0.5))

    def features(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None) -> Tensor:
        """The network input ``[x, log(sigma) / 4, m(cond)]``."""
        where = type(self).__name__
        x = check_image(x, where)
        if x.shape[1] != self.channels:
            raise fail(where, f"`x` has {x.shape[1]} channels (shape {tuple(x.shape)}), expected {self.channels}.",
                       f"build the model with channels={x.shape[1]}, or pass images of {self.channels} channels.")
        check_model(self, x, where, "model")
        s = as_sigma(sigma, x.shape[0], where, like=x)
        B, _, H, W = x.shape
        cond = _cond_arg(cond, where)
        if cond is not None and self.cond_radius is not None:
            if cond.batch_size not in (1, B):
                raise fail(where, f"`cond` has {cond.batch_size} sets for {B} images, expected {B} (or 1, shared).")
            if cond.device != x.device and cond.num_slots:
                raise fail(where, f"`cond` is on {cond.device} but `x` is on {x.device}.", "move one to the other.")
        parts = [x, (torch.log(s) / 4).view(B, 1, 1, 1).expand(B, 1, H, W)]
        if self.cond_radius is not None:
            m = render_conditions(cond, (H, W), float(self.cond_radius), self.attr_dim, dtype=x.dtype,
                                  device=x.device)
            parts.append(m.expand(B, -1, H, W))
        return torch.cat(parts, 1)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        return x + self.net(self.features(x, sigma, cond))


class GlobalConvDenoiser(LocalConvDenoiser):
    r"""The same stack with global pathways: every output pixel sees every pixel and every conditioner.

    ``D = x + net(...) + g`` where ``g[b] = W_x mean_i tanh(net(...)[b, :, i]) + tanh(sum_k e(c_k) W_c)`` is
    added at every pixel: an image-wide mean-pooled feature, and (when conditional) a nonlinear function of
    the sum over conditioners of an embedding of their normalised position and attributes (nonlinear, so
    projective composition fails too).

    Examples:
        >>> import torch
        >>> D = GlobalConvDenoiser(1, radius=1)
        >>> x = torch.zeros(1, 1, 6, 6); y0 = D(x, 1.0)
        >>> x[0, 0, 5, 5] = 1.0
        >>> bool((D(x, 1.0)[0, 0, 0, 0] != y0[0, 0, 0, 0]))     # a far pixel changes the corner
        True
    """

    def __init__(self, channels: int, radius: int, *, cond_radius: float | None = None, attr_dim: int = 0,
                 hidden: int = 16, seed: int = 0) -> None:
        super().__init__(channels, radius, cond_radius=cond_radius, attr_dim=attr_dim, hidden=hidden, seed=seed)
        del self.receptive_radius
        if cond_radius is not None:
            del self.conditioner_radius
        g = torch.Generator().manual_seed(seed + 1)
        self.pool = nn.Parameter(torch.randn(channels, channels, generator=g) / channels**0.5)
        self.embed = nn.Parameter(torch.randn(2 + attr_dim, channels, generator=g) * 0.5)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        out = super().forward(x, sigma, cond)
        g = torch.tanh(out - x).mean(dim=(2, 3)) @ self.pool  # [B, C]
        if self.cond_radius is not None and cond is not None and cond.num_slots > 0:
            H, W = x.shape[2:]
            scale = torch.tensor([H, W], dtype=x.dtype, device=x.device)
            feats = [cond.pos.to(x.dtype) / scale]
            if self.attr_dim and cond.attr is not None:
                feats.append(cond.attr.to(x.dtype))
            e = torch.cat(feats, -1) @ self.embed  # [B, K, C]
            g = g + torch.tanh((e * cond.valid[..., None].to(x.dtype)).sum(1))
        return out + g[:, :, None, None]
