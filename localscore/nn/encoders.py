r"""Encoders: Fourier features of positions, the noise-level embedding, and conditioner tokens.

Positions are ``(row, col)`` in pixels (origin at the top-left pixel centre), as everywhere in localscore.

*Absolute* Fourier features ``phi(p)`` of a conditioner position make a token know where it is in the
image; *relative* features ``phi(p - x)`` of the offset between a conditioner and the pixel that attends to
it keep the network translation equivariant. The relative features never need a ``[pixels, K, F]``
tensor: with per-axis frequencies, ``phi(p - x) = Rot(x) phi(p)``, a rotation of each (cos, sin) pair by
the angle ``omega * x`` (see :func:`rotate_features`). Attention uses this to add relative terms to its
logits and values at the cost of one extra matrix product.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._errors import fail

__all__ = [
    "ConditionerEncoder",
    "FourierFeatures",
    "SigmaEmbedding",
    "rotate_features",
]


class FourierFeatures(nn.Module):
    r"""Fourier features of 2-D positions: ``[..., 2] -> [..., 4F]``.

    For frequencies ``omega_f = 2 pi / lambda_f``, ``f = 0..F-1``, with wavelengths ``lambda_f``
    geometric from ``min_wavelength`` to ``max_wavelength``, and both axes ``a`` (row, col)::

        phi(p) = [cos(omega_f p_a), sin(omega_f p_a)]  for a in (row, col), f in 0..F-1

    laid out as ``[a, f, (cos, sin)]`` flattened (so pairs are adjacent). The frequencies are fixed
    buffers, not parameters.

    Args:
        num_freqs: ``F`` (>= 1).
        min_wavelength: shortest wavelength in pixels (> 0).
        max_wavelength: longest wavelength in pixels (>= min_wavelength).

    Examples:
        >>> import torch
        >>> ff = FourierFeatures(2, min_wavelength=4.0, max_wavelength=8.0)
        >>> ff(torch.tensor([[1.0, 0.0]])).shape
        torch.Size([1, 8])
        >>> [round(v, 4) + 0.0 for v in ff(torch.tensor([[1.0, 0.0]]))[0, :2].tolist()]  # cos, sin of 2 pi / 4
        [0.0, 1.0]
    """

    omega: Tensor

    def __init__(self, num_freqs: int, *, min_wavelength: float = 2.0, max_wavelength: float = 32.0) -> None:
        super().__init__()
        where = "FourierFeatures"
        if isinstance(num_freqs, bool) or not isinstance(num_freqs, int) or num_freqs < 1:
            raise fail(where, f"`num_freqs` is {num_freqs!r}, expected an int >= 1.")
        if not (min_wavelength > 0 and max_wavelength >= min_wavelength):
            raise fail(where, f"wavelengths ({min_wavelength!r}, {max_wavelength!r}) are invalid; expected "
                       "0 < min_wavelength <= max_wavelength (pixels).")
        lam = torch.logspace(math.log10(min_wavelength), math.log10(max_wavelength), num_freqs, dtype=torch.float64)
        self.num_freqs = num_freqs
        self.register_buffer("omega", (2 * math.pi / lam).float(), persistent=False)

    @property
    def dim(self) -> int:
        """The output length ``4F``."""
        return 4 * self.num_freqs

    def angles(self, p: Tensor) -> Tensor:
        """``[..., 2] -> [..., 2, F]``: the angles ``omega_f * p_a``."""
        return p[..., :, None] * self.omega.to(p.dtype)

    def forward(self, p: Tensor) -> Tensor:
        """``phi(p)``: ``[..., 2]`` positions to ``[..., 4F]`` features."""
        a = self.angles(p)  # [..., 2, F]
        return torch.stack([a.cos(), a.sin()], dim=-1).flatten(-3)


def rotate_features(feat: Tensor, angles: Tensor, *, inverse: bool = False) -> Tensor:
    r"""Rotate each (cos, sin) pair of Fourier features: ``phi(p - x) = Rot(x) phi(p)``.

    With ``theta = omega_f * x_a`` (``angles``), each pair ``(c, s)`` of ``feat`` becomes::

        Rot(x):    (c cos theta + s sin theta,  s cos theta - c sin theta)
        Rot(x)^T:  (c cos theta - s sin theta,  s cos theta + c sin theta)    (inverse=True)

    so that ``rotate_features(phi(p), angles(x)) == phi(p - x)`` (angle-difference identities), and
    ``a . Rot(x) b == Rot(x)^T a . b``.

    Args:
        feat: ``[..., 4F]`` features laid out as in :class:`FourierFeatures`.
        angles: ``[..., 2, F]`` angles, broadcastable against ``feat``'s leading dimensions.
        inverse: apply ``Rot(x)^T`` (the rotation by ``+theta``) instead.

    Examples:
        >>> import torch
        >>> ff = FourierFeatures(3)
        >>> p, x = torch.tensor([[5.0, 2.0]]), torch.tensor([[1.0, 7.0]])
        >>> torch.allclose(rotate_features(ff(p), ff.angles(x)), ff(p - x), atol=1e-6)
        True
    """
    cos = angles.cos().repeat_interleave(2, dim=-1).flatten(-2)  # [..., 4F]: (cos, cos) per pair
    sin = angles.sin().repeat_interleave(2, dim=-1).flatten(-2)
    sign = torch.tensor([-1.0, 1.0] if inverse else [1.0, -1.0], dtype=sin.dtype, device=sin.device)
    sin = (sin.unflatten(-1, (-1, 2)) * sign).flatten(-2)  # (sin, -sin), or (-sin, sin) for Rot^T
    swapped = feat.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (s, c) per pair
    return feat * cos + swapped * sin


class SigmaEmbedding(nn.Module):
    r"""Embedding of the network's noise input ``c_noise [B]`` (EDM: ``log(sigma) / 4``): ``[B] -> [B, E]``.

    ``e = W2 silu(W1 [cos(c_noise * w_i), sin(c_noise * w_i)]_i)`` with ``num_freqs`` fixed frequencies
    ``w_i`` geometric from ``pi / 8`` to ``min(1000, pi * 2**(num_freqs / 4))``. One vector per image:
    conditioning on the noise level is global but carries no pixel information, so it never breaks locality.

    Examples:
        >>> import torch
        >>> SigmaEmbedding(32)(torch.zeros(3)).shape
        torch.Size([3, 32])
    """

    freqs: Tensor

    def __init__(self, dim: int, *, num_freqs: int = 32) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise fail("SigmaEmbedding", f"`dim` is {dim!r}, expected an int >= 1.")
        freqs = torch.logspace(math.log10(math.pi / 8), math.log10(min(1000.0, math.pi * 2 ** (num_freqs / 4))),
                               num_freqs)
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(2 * num_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        """``c_noise [B]`` to ``[B, E]``."""
        a = c_noise[:, None] * self.freqs.to(c_noise.dtype)
        return self.mlp(torch.cat([a.cos(), a.sin()], dim=-1))


class ConditionerEncoder(nn.Module):
    r"""One token per conditioner: ``(pos [B, K, 2], attr [B, K, A]) -> [B, K, D]``.

    ``token = W2 silu(W1 [1, phi(pos) if absolute, attr if A > 0])``: an MLP over the constant 1 (so a
    conditioner without attributes or absolute position still gets a learned token), the absolute Fourier
    features of its position (only with ``absolute=True``: a translation-equivariant network leaves them
    out and uses relative features in attention instead) and its attributes. Each token is computed from its
    own conditioner only: tokens never see each other, which keeps permutation invariance and locality.

    Args:
        attr_dim: ``A`` (0 for position-only conditioners).
        dim: token length ``D``.
        fourier: the :class:`FourierFeatures` for absolute positions, or ``None`` for none.

    Examples:
        >>> import torch
        >>> enc = ConditionerEncoder(13, 32, fourier=FourierFeatures(4))
        >>> enc(torch.zeros(2, 5, 2), torch.zeros(2, 5, 13)).shape
        torch.Size([2, 5, 32])
    """

    def __init__(self, attr_dim: int, dim: int, *, fourier: FourierFeatures | None = None) -> None:
        super().__init__()
        if isinstance(attr_dim, bool) or not isinstance(attr_dim, int) or attr_dim < 0:
            raise fail("ConditionerEncoder", f"`attr_dim` is {attr_dim!r}, expected an int >= 0.")
        self.attr_dim = attr_dim
        self.fourier = fourier
        n_in = 1 + (fourier.dim if fourier is not None else 0) + attr_dim
        self.mlp = nn.Sequential(nn.Linear(n_in, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.dim = dim

    def forward(self, pos: Tensor, attr: Tensor | None) -> Tensor:
        """``pos [B, K, 2]``, ``attr [B, K, A] | None`` to tokens ``[B, K, D]``."""
        parts = [torch.ones_like(pos[..., :1])]
        if self.fourier is not None:
            parts.append(self.fourier(pos))
        if self.attr_dim > 0:
            if attr is None:
                raise fail("ConditionerEncoder", f"the encoder expects attributes of length {self.attr_dim} but "
                           "`attr` is None.", "pass Conditions with `attr` [B, K, A].")
            parts.append(attr)
        return self.mlp(torch.cat(parts, dim=-1))
