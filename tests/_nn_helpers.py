"""Dense-Jacobian helpers for the network tests (autograd over every input pixel and conditioner coordinate)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from localscore import Conditions

# a small local network config shared by the nn tests
SMALL = {"width": 8, "heads": 2, "token_dim": 8, "sigma_embed_dim": 16, "relative_freqs": 3, "attr_dim": 3}


def jacobian_x(D: Callable[..., Tensor], x: Tensor, sigma: float, cond: Conditions | None) -> Tensor:
    """``[H, W, H, W]``: ``sum_{c, c'} |d D(x)[c, p] / d x[c', q]|`` for one image ``x [1, C, H, W]``."""
    def f(xx: Tensor) -> Tensor:
        return D(xx, sigma, cond)[0]

    J = torch.func.jacrev(f)(x)  # [C, H, W, 1, C, H, W]
    return J.detach().abs().sum(dim=(0, 4))[:, :, 0]  # [H, W, H, W]


def jacobian_cond(D: Callable[..., Tensor], x: Tensor, sigma: float, cond: Conditions) -> Tensor:
    """``[H, W, K]``: ``sum |d D(x)[c, p] / d (pos_k, attr_k)|`` for one image: dependence of pixels on objects."""
    pos0, attr0, valid = cond.pos, cond.attr, cond.valid

    def f(pos: Tensor, attr: Tensor | None) -> Tensor:
        return D(x, sigma, Conditions(pos, attr, valid))[0]

    if attr0 is None:
        Jp = torch.func.jacrev(lambda p: f(p, None))(pos0)  # [C, H, W, 1, K, 2]
        return Jp.detach().abs().sum(dim=(0, 5))[:, :, 0]
    Jp, Ja = torch.func.jacrev(f, argnums=(0, 1))(pos0, attr0)
    return (Jp.abs().sum(dim=(0, 5))[:, :, 0] + Ja.abs().sum(dim=(0, 5))[:, :, 0]).detach()


def cheb_grid(H: int, W: int) -> Tensor:
    """``[H, W, H, W]`` Chebyshev distances between pixels."""
    r = torch.arange(H)
    c = torch.arange(W)
    dr = (r[:, None, None, None] - r[None, None, :, None]).abs()
    dc = (c[None, :, None, None] - c[None, None, None, :]).abs()
    return torch.maximum(dr, dc)


def cheb_to_points(H: int, W: int, pos: Tensor) -> Tensor:
    """``[H, W, K]`` Chebyshev distances from pixels to positions ``pos [K, 2]``."""
    r = torch.arange(H, dtype=pos.dtype)[:, None, None]
    c = torch.arange(W, dtype=pos.dtype)[None, :, None]
    return torch.maximum((r - pos[:, 0]).abs(), (c - pos[:, 1]).abs())


def dilate(mask: Tensor, radius: int) -> Tensor:
    """Chebyshev dilation of a bool ``[..., H, W]`` mask by ``radius`` pixels."""
    shape = mask.shape
    m = mask.reshape(-1, 1, *shape[-2:]).to(torch.float32)
    out = F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius) > 0
    return out.reshape(shape)
