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

import math

import torch
from torch import Tensor, nn

from .._checks import as_sigma, check_image
from .._errors import fail
from ..conditions import Conditions

__all__ = ["GlobalConvDenoiser", "LocalConvDenoiser", "render_conditions"]


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
    H, W = size
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
        attr_dim: attribute length ``A`` of the conditioners (0: positions only).
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
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
            raise fail("LocalConvDenoiser", f"`radius` is {radius!r}, expected an int >= 0.")
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
        x = check_image(x, type(self).__name__)
        s = as_sigma(sigma, x.shape[0], type(self).__name__, like=x)
        B, _, H, W = x.shape
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
