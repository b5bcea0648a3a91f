r"""Jacobians of image-to-image maps: dense, graph-coloured (compressed) and randomized probes.

A map ``f: [B, C, H, W] -> [B, C', H, W]`` that treats the images of a batch independently has, per
image, the Jacobian ``J[c', i, j, c, p, q] = d f(x)[c', i, j] / d x[c, p, q]``. Three ways to get it:

* ``dense``: one vector-Jacobian product (VJP) per output entry, ``C' H W`` of them, batched with
  :func:`torch.func.vmap` in chunks sized by a memory budget. Exact for any map; costly.
* ``colored``: for a map of receptive radius ``R`` (output pixel ``(i, j)`` depends only on input pixels
  with Chebyshev distance ``max(|p - i|, |q - j|) <= R``), colour input pixel ``(p, q)`` of channel
  ``c`` with ``(c, p mod P, q mod P)``, ``P = 2R + 1``. Inside any ``P x P`` window every colour appears
  once, so one Jacobian-vector product (JVP) per colour, ``C P^2`` in all, recovers every entry exactly.
  The declared radius is *verified* with random probes, and a map that depends on inputs beyond it by more
  than a tolerance relative to the Jacobian's scale raises :class:`~localscore.LocalScoreError` instead of
  returning a wrong matrix (what is guaranteed: :meth:`BandedJacobian.leak_bound` and the docs).
* ``probes``: for big models, exact rows at randomly chosen output pixels (VJPs) and Hutchinson
  estimates of every row norm (JVPs with random sign vectors).

Distances are Chebyshev (square neighbourhoods), in pixels, throughout this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_image, check_model
from .._errors import describe, fail
from .._repr import summary_repr

__all__ = [
    "BandedJacobian",
    "JacobianProbes",
    "LocalityViolation",
    "jacobian",
    "jvp_batch",
    "vjp_batch",
]

Method = Literal["dense", "colored", "probes"]
ImageMap = Callable[[Tensor], Tensor]

_DEFAULT_MEMORY = 2 * 1024**3  # bytes


# ----------------------------------------------------------------------------- batched products
def _checked_call(fn: ImageMap, x: Tensor, where: str) -> Tensor:
    y = fn(x)
    if not isinstance(y, torch.Tensor):
        raise fail(where, f"`fn` returned {describe(y)}, expected a tensor [B, C', H, W].",
                   "pass a map from images [B, C, H, W] to images; wrap a denoiser as "
                   "`lambda z: D(z, sigma, cond)`.")
    if y.dim() < 1 or y.shape[0] != x.shape[0]:
        raise fail(where, f"`fn` returned shape {tuple(y.shape)} for input shape {tuple(x.shape)}; expected the "
                   "same batch size B first.", "the map must keep the batch dimension.")
    if not y.is_floating_point():
        raise fail(where, f"`fn` returned dtype {y.dtype}, expected a floating-point tensor.")
    return y


def _fallback_error(exc: Exception) -> bool:
    """True for the errors vmap raises on functions it cannot batch (then we loop instead)."""
    return isinstance(exc, (RuntimeError, NotImplementedError, ValueError, TypeError))


def jvp_batch(fn: ImageMap, x: Tensor, tangents: Tensor, *, chunk_size: int | None = None) -> Tensor:
    r"""Many Jacobian-vector products at one point: ``out[n] = J_f(x) @ tangents[n]``.

    Forward mode (:func:`torch.func.jvp`) vmapped over the tangents in chunks; if ``fn`` cannot be
    vmapped (data-dependent Python control flow on batched values, ops without batching rules), one
    JVP per tangent is computed in a loop instead. The result is the same either way.

    Args:
        fn: map ``[B, C, H, W] -> [B, *out]``.
        x: ``[B, C, H, W]`` the point.
        tangents: ``[N, B, C, H, W]`` input directions.
        chunk_size: tangents per vmapped call (``None``: all at once).

    Returns:
        ``[N, B, *out]``.

    Examples:
        >>> import torch
        >>> fn = lambda z: 3 * z ** 2
        >>> x = torch.ones(1, 1, 1, 2)
        >>> jvp_batch(fn, x, torch.ones(2, 1, 1, 1, 2)).flatten().tolist()   # 6 x * t
        [6.0, 6.0, 6.0, 6.0]
    """
    def one(t: Tensor) -> Tensor:
        return torch.func.jvp(fn, (x,), (t,))[1]

    try:
        return torch.func.vmap(one, chunk_size=chunk_size)(tangents)
    except Exception as exc:
        if not _fallback_error(exc):
            raise
        return torch.stack([one(t) for t in tangents])


def vjp_batch(fn: ImageMap, x: Tensor, cotangents: Tensor, *, chunk_size: int | None = None) -> Tensor:
    r"""Many vector-Jacobian products at one point: ``out[n] = cotangents[n] @ J_f(x)``.

    One forward pass (:func:`torch.func.vjp`), then the pullback vmapped over the cotangents in
    chunks (a loop if the backward graph cannot be vmapped).

    Args:
        fn: map ``[B, C, H, W] -> [B, *out]``.
        x: ``[B, C, H, W]``.
        cotangents: ``[N, B, *out]`` output directions.
        chunk_size: cotangents per vmapped call (``None``: all at once).

    Returns:
        ``[N, B, C, H, W]``.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[[[1.0, 2.0]]]])
        >>> vjp_batch(lambda z: z ** 2, x, torch.ones(1, 1, 1, 1, 2)).flatten().tolist()   # 2 x
        [2.0, 4.0]
    """
    pullback = torch.func.vjp(fn, x)[1]
    try:
        return torch.func.vmap(lambda u: pullback(u)[0], chunk_size=chunk_size)(cotangents)
    except Exception as exc:
        if not _fallback_error(exc):
            raise
        return torch.stack([pullback(u)[0] for u in cotangents])


def _activation_bytes(fn: ImageMap, x: Tensor) -> int:
    """Bytes of the tensors one forward pass saves for backward (the per-product memory of a VJP/JVP)."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    xr = x.detach().requires_grad_(True)
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(xr)
    except Exception:  # an estimate only: fall back to the input size
        return 0
    return total


def _chunk_for(x: Tensor, n: int, chunk_size: int | None, max_memory: int, per_item: int, where: str) -> int:
    """Products per vmapped call: ``chunk_size``, or what fits ``max_memory`` at ``per_item`` bytes each."""
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise fail(where, f"`chunk_size` is {chunk_size!r}, expected a positive int or None.",
                       "pass e.g. chunk_size=64, or None to size chunks from `max_memory`.")
        return min(chunk_size, n)
    # A vmapped product keeps its own copy of the intermediate activations and gradients, and some batching
    # rules materialise more: budget 8x the saved bytes per product, and at most 256 products per call.
    per = max(1, 8 * per_item, 16 * x.numel() * x.element_size())
    return int(max(1, min(n, 256, max_memory // per)))


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class LocalityViolation:
    """Where a map depends on an input outside a declared Chebyshev radius, and by how much.

    Found by the verification of ``jacobian(..., method="colored")`` and confirmed on the exact Jacobian row
    of one output entry: that row's part beyond the radius has Euclidean norm ``outside_norm``, above the
    tolerance ``tolerance = rtol * scale`` (``scale`` is the RMS row norm of the Jacobian of that image).

    Attributes:
        image: batch index ``b``.
        output: ``(channel, row, col)`` of the output entry.
        input: ``(channel, row, col)`` of the farthest input it depends on (among the entries beyond the radius
            of at least 1e-3 times the largest one).
        distance: Chebyshev distance between the two pixels (``> radius``).
        radius: the declared radius.
        value: ``|J|`` at that entry.
        row_max: the largest ``|J|`` in the output entry's row (for scale).
        probe_error: the largest difference, over the random probes, between the true product and the banded
            reconstruction at this output (input, in reverse mode).
        tolerance: the tolerance ``rtol * scale`` that ``outside_norm`` (and the probe error) exceeded.
        outside_norm: ``sqrt(sum_{dist > radius} J[row]^2)``, the norm of the row beyond the radius.
        scale: the Jacobian scale ``S`` of the image, its RMS row norm (see :meth:`BandedJacobian.scale`).
        largest_input: ``(channel, row, col)`` of the largest entry beyond the radius.
        largest_value: ``|J|`` there.
    """

    image: int
    output: tuple[int, int, int]
    input: tuple[int, int, int]
    distance: int
    radius: int
    value: float
    row_max: float
    probe_error: float
    tolerance: float
    outside_norm: float = float("nan")
    scale: float = float("nan")
    largest_input: tuple[int, int, int] = (-1, -1, -1)
    largest_value: float = float("nan")

    @property
    def excess(self) -> float:
        """``outside_norm / tolerance``: how many times the tolerance the dependence beyond the radius is."""
        return self.outside_norm / self.tolerance if self.tolerance > 0 else float("inf")

    def describe(self) -> str:
        """A one-paragraph human description."""
        c, i, j = self.output
        k, p, q = self.input
        kl, pl, ql = self.largest_input
        far = self.largest_input == self.input
        largest = "" if far else (f"; the largest entry beyond it is |dy/dx| = {self.largest_value:.3g}, on input "
                                  f"pixel (channel {kl}, row {pl}, col {ql})")
        rtol = self.tolerance / self.scale if self.scale > 0 else float("nan")
        probe = ("" if math.isnan(self.probe_error) else
                 f"; the random probes missed the banded reconstruction by {self.probe_error:.3g}")
        return (f"output pixel (channel {c}, row {i}, col {j}) of image {self.image} depends on input pixel "
                f"(channel {k}, row {p}, col {q}) at Chebyshev distance {self.distance} > {self.radius} "
                f"(|dy/dx| = {self.value:.3g}{largest}); the row's norm beyond radius {self.radius} is "
                f"{self.outside_norm:.3g}, {self.excess:.3g} times the tolerance {self.tolerance:.3g} "
                f"(rtol {rtol:.3g} x the Jacobian scale {self.scale:.3g}, its RMS row norm; the largest entry of "
                f"this row is {self.row_max:.3g}{probe})")


@summary_repr
@dataclass(frozen=True)
class BandedJacobian:
    r"""A Jacobian of receptive radius ``R`` stored as one ``P x P`` window per output entry, ``P = 2R + 1``.

    ``values[b, c', i, j, c, u, v] = d y[b, c', i, j] / d x[b, c, i + u - R, j + v - R]``, zero where the
    input pixel lies outside the image. The entries outside the windows are taken to be zero; when built by
    ``jacobian(..., method="colored")`` that is verified to a tolerance: every row's norm beyond its window is
    at most :meth:`leak_bound` (with high probability), and the values then carry at most that much aliasing.

    Attributes:
        values: ``[B, C', H, W, C, P, P]``.
        radius: ``R`` (Chebyshev, pixels).
        rtol: the tolerance the band was verified at (relative to :meth:`scale`); ``None``: not verified.
        probes: the number of random probes of that verification (0: not verified).
        bound: ``[B]`` float64, the verified bound on the norm beyond the window of every row (see
            :meth:`leak_bound`); ``None`` when not verified, or verified in reverse mode (which certifies
            columns).
    """

    values: Tensor
    radius: int
    rtol: float | None = None
    probes: int = 0
    bound: Tensor | None = None

    def scale(self, columns: bool = False) -> Tensor:
        r"""``[B]`` float64: the Jacobian scale ``S_b``, the RMS row norm of image ``b``'s band.

        ``S_b = sqrt(sum_{c', i, j, c, u, v} values[b, c', i, j, c, u, v]^2 / (C' H W))`` (with
        ``columns=True``, divided by ``C H W`` instead: the RMS column norm). The tolerances of the verification
        are relative to it.

        Examples:
            >>> import torch
            >>> BandedJacobian(torch.full((1, 1, 2, 2, 1, 3, 3), 2.0), 1).scale().tolist()   # sqrt(9 * 4)
            [6.0]
        """
        _, Co, H, W, C = self.values.shape[:5]
        total = self.values.detach().double().pow(2).flatten(1).sum(1)
        return (total / ((C if columns else Co) * H * W)).sqrt()

    def leak_bound(self) -> Tensor:
        r"""``[B]`` float64: what the verification certified about the entries beyond the window.

        For image ``b``, every row of ``J`` (one output entry) has Euclidean norm beyond the window at most
        ``leak_bound()[b]``, except with probability at most ``0.08^probes`` per row. Normally
        ``10 rtol S_b`` (:meth:`scale`); larger when the map's own round-off put more than 8 rows above the
        tolerance (then ``10`` times the largest probe residual of a row not recomputed exactly). ``inf`` when
        not verified (``verify=0``, or ``mode="reverse"``). See "What verified means" in the docs.

        Examples:
            >>> import torch
            >>> conv = torch.nn.Conv2d(1, 1, 3, padding=1).double()
            >>> Jb = jacobian(conv, torch.randn(1, 1, 8, 8, dtype=torch.float64), method="colored", radius=1)
            >>> Jb.rtol, Jb.probes, round(float(Jb.leak_bound()[0] / Jb.scale()[0]), 15)    # 10 rtol S
            (1e-10, 4, 1e-09)
        """
        if self.bound is None:
            return torch.full((self.values.shape[0],), float("inf"), dtype=torch.float64)
        return self.bound.detach().double().cpu()

    @property
    def shape(self) -> tuple[int, ...]:
        """The dense shape ``(B, C', H, W, C, H, W)``."""
        B, Co, H, W, C = self.values.shape[:5]
        return (B, Co, H, W, C, H, W)

    def to_dense(self) -> Tensor:
        """``[B, C', H, W, C, H, W]``: the full Jacobian (zeros outside the windows).

        Examples:
            >>> import torch
            >>> x = torch.randn(1, 1, 5, 5)
            >>> Jb = jacobian(lambda z: 2 * z, x, method="colored", radius=0)
            >>> torch.equal(Jb.to_dense().reshape(25, 25), 2 * torch.eye(25))
            True
        """
        B, Co, H, W, C = self.values.shape[:5]
        R = self.radius
        I, J, RI, CJ = _window_index(H, W, R, self.values.device)
        dense = self.values.new_zeros(H, W, H + 2 * R, W + 2 * R, B, Co, C)
        dense[I, J, RI, CJ] = self.values.permute(2, 3, 5, 6, 0, 1, 4)
        dense = dense.permute(4, 5, 0, 1, 6, 2, 3)
        return dense[..., R : R + H, R : R + W].contiguous()

    def matvec(self, v: Tensor) -> Tensor:
        r"""``(J v)[b, c', i, j] = sum_{c, u, v} values[b, c', i, j, c, u, v] * v[b, c, i + u - R, j + v - R]``.

        Args:
            v: ``[B, C, H, W]``.

        Returns:
            ``[B, C', H, W]``.
        """
        return torch.einsum("bkijcuv,bcijuv->bkij", self.values, _windows(v, self.radius))

    @staticmethod
    def from_dense(J: Tensor, radius: int) -> BandedJacobian:
        """Keep the ``(2R + 1)^2`` windows of a dense ``[B, C', H, W, C, H, W]`` Jacobian (drops the rest).

        Examples:
            >>> import torch
            >>> J = torch.randn(1, 2, 4, 4, 3, 4, 4)
            >>> torch.equal(BandedJacobian.from_dense(J, 3).to_dense(), J)   # R = 3 covers 4 x 4
            True
        """
        if J.dim() != 7:
            raise fail("BandedJacobian.from_dense", f"`J` has shape {tuple(J.shape)}, expected "
                       "[B, C', H, W, C, H, W].")
        R = int(radius)
        B, Co, H, W, C = J.shape[:5]
        Jp = F.pad(J.reshape(B * Co * H * W, C, H, W), (R, R, R, R)).reshape(B, Co, H, W, C, H + 2 * R, W + 2 * R)
        I, Jc, RI, CJ = _window_index(H, W, R, J.device)
        vals = Jp.permute(2, 3, 5, 6, 0, 1, 4)[I, Jc, RI, CJ]  # [H, W, P, P, B, Co, C]
        return BandedJacobian(vals.permute(4, 5, 0, 1, 6, 2, 3).contiguous(), R)


@summary_repr
@dataclass(frozen=True)
class JacobianProbes:
    r"""Randomized measurements of a Jacobian too big to build.

    Attributes:
        pixels: ``[N, 2]`` long, the output pixels ``(i, j)`` whose rows were computed exactly.
        mass: ``[B, N, H, W]``, for each sampled output pixel the squared Jacobian mass of every input pixel,
            summed over output and input channels: ``sum_{c', c} J[b, c', i, j, c, p, q]^2``.
        row_norms_sq: ``[B, C', H, W]`` Hutchinson estimate of ``sum_{c, p, q} J[b, c', i, j, c, p, q]^2``:
            the mean over ``n_probes`` sign vectors ``v`` of ``(J v)^2``.
        n_probes: number of sign vectors behind ``row_norms_sq``.
    """

    pixels: Tensor
    mass: Tensor
    row_norms_sq: Tensor
    n_probes: int


# ----------------------------------------------------------------------------- helpers
def _window_index(H: int, W: int, R: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Index tensors ``[H, W, P, P]``: output row, output col, padded input row ``i + u``, col ``j + v``."""
    P = 2 * R + 1
    rows = torch.arange(H, device=device)
    cols = torch.arange(W, device=device)
    u = torch.arange(P, device=device)
    I = rows.view(H, 1, 1, 1).expand(H, W, P, P)
    J = cols.view(1, W, 1, 1).expand(H, W, P, P)
    RI = (rows[:, None] + u[None, :]).view(H, 1, P, 1).expand(H, W, P, P)
    CJ = (cols[:, None] + u[None, :]).view(1, W, 1, P).expand(H, W, P, P)
    return I, J, RI, CJ


def _windows(v: Tensor, R: int) -> Tensor:
    """``[B, C, H, W] -> [B, C, H, W, P, P]``: the zero-padded ``P x P`` window around every pixel."""
    vp = F.pad(v, (R, R, R, R))
    return vp.unfold(2, 2 * R + 1, 1).unfold(3, 2 * R + 1, 1)


# Tolerances of the colored verification, relative to the Jacobian scale S (RMS row norm), chosen from the
# round-off floors measured on honest local networks (docs/locality.md, "What verified means").
_RTOL_FLOAT64 = 1e-10
_RTOL_FLOAT32 = 1e-4
_RTOL_OTHER = 1e-2  # float16 / bfloat16: not measured (verify in float32 or float64)
_DETECT = 10.0  # rows with >= _DETECT * rtol * S beyond the window are missed with probability <= 0.08^probes
_CONFIRM = 8  # flagged rows recomputed exactly (one VJP each)


def _default_rtol(dtype: torch.dtype) -> float:
    if dtype == torch.float64:
        return _RTOL_FLOAT64
    if dtype == torch.float32:
        return _RTOL_FLOAT32
    return _RTOL_OTHER


def _check_radius(radius: Any, where: str, name: str = "radius") -> int:
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise fail(where, f"`{name}` is {describe(radius)}, expected an int >= 0 (a Chebyshev radius in pixels).",
                   "pass the receptive radius R of the map (output pixel i depends on inputs within R of i).")
    return radius


def _check_band(x: Tensor, y: Tensor, R: int, max_memory: int, where: str) -> None:
    """Raise, before allocating, when the band ``[B, C', H, W, C, P, P]`` (``P = 2R + 1``) exceeds ``max_memory``."""
    B, C, H, W = x.shape
    P = 2 * R + 1
    need = B * y.shape[1] * H * W * C * P * P * y.element_size()
    if need > max_memory:
        hint = (f"R = {R} is beyond the image ({H} x {W}): a radius of max(H, W) - 1 = {max(H, W) - 1} already "
                "covers every pixel, and method='dense' computes the same Jacobian" if R >= max(H, W) - 1
                else "use method='probes', a smaller batch, or raise `max_memory`")
        raise fail(where, f"the banded Jacobian of radius R = {R} would take {need / 2**20:.4g} MiB "
                   f"([B, C', H, W, C, P, P] = {[B, y.shape[1], H, W, C, P, P]}), over `max_memory` = "
                   f"{max_memory / 2**20:.1f} MiB (checked before allocating).", hint + ".")


def _colored(fn: ImageMap, x: Tensor, y: Tensor, R: int, chunk: int) -> BandedJacobian:
    B, C, H, W = x.shape
    Co = y.shape[1]
    P = 2 * R + 1
    Ph, Pw = min(P, H), min(P, W)
    n = C * Ph * Pw
    tangents = x.new_zeros(C, Ph, Pw, B, C, H, W)
    for c in range(C):
        for a in range(Ph):
            for b in range(Pw):
                tangents[c, a, b, :, c, a::P, b::P] = 1
    T = jvp_batch(fn, x, tangents.reshape(n, B, C, H, W), chunk_size=chunk)  # [n, B, Co, H, W]
    T = T.reshape(C, Ph, Pw, B, Co, H, W).permute(3, 4, 5, 6, 0, 1, 2)  # [B, Co, H, W, C, Ph, Pw]
    # input pixel i + u - R has colour (i + u - R) mod P; out-of-image window entries are zeroed.
    dev = x.device
    u = torch.arange(P, device=dev)
    pi = torch.arange(H, device=dev)[:, None] + u[None, :] - R  # [H, P]
    qj = torch.arange(W, device=dev)[:, None] + u[None, :] - R  # [W, P]
    ok_i = (pi >= 0) & (pi < H)
    ok_j = (qj >= 0) & (qj < W)
    ci = torch.where(ok_i, pi % P, torch.zeros_like(pi))
    cj = torch.where(ok_j, qj % P, torch.zeros_like(qj))
    idx_a = ci.view(1, 1, H, 1, 1, P, 1).expand(B, Co, H, W, C, P, Pw)
    V = torch.gather(T, 5, idx_a)  # [B, Co, H, W, C, P, Pw]
    idx_b = cj.view(1, 1, 1, W, 1, 1, P).expand(B, Co, H, W, C, P, P)
    V = torch.gather(V, 6, idx_b)  # [B, Co, H, W, C, P, P]
    mask = (ok_i.view(H, 1, 1, P, 1) & ok_j.view(1, W, 1, 1, P)).to(V.dtype)  # [H, W, 1, P, P]
    return BandedJacobian(V * mask, R)


def _colored_reverse(fn: ImageMap, x: Tensor, y: Tensor, R: int, chunk: int) -> BandedJacobian:
    """Colour the *outputs*: the VJP with the indicator of output colour ``(c', a, b)`` gives, at every input
    pixel, the single output of that colour whose window contains it (the same band, transposed)."""
    B, C, H, W = x.shape
    Co = y.shape[1]
    P = 2 * R + 1
    Ph, Pw = min(P, H), min(P, W)
    n = Co * Ph * Pw
    cot = y.new_zeros(Co, Ph, Pw, B, Co, H, W)
    for c in range(Co):
        for a in range(Ph):
            for b in range(Pw):
                cot[c, a, b, :, c, a::P, b::P] = 1
    G = vjp_batch(fn, x, cot.reshape(n, B, Co, H, W), chunk_size=chunk).reshape(Co, Ph, Pw, B, C, H, W)
    values = x.new_zeros(B, Co, H, W, C, P, P)
    for c in range(Co):
        for a in range(Ph):
            for b in range(Pw):
                win = _windows(G[c, a, b], R)  # [B, C, H, W, P, P], a view of the padded gradient
                values[:, c, a::P, b::P] = win[:, :, a::P, b::P].permute(0, 2, 3, 1, 4, 5)
    return BandedJacobian(values, R)


def _rmatvec(banded: BandedJacobian, u: Tensor) -> Tensor:
    """``(J^T u)[b, c, p, q]`` from the windows: the adjoint of :meth:`BandedJacobian.matvec` (``fold``)."""
    B, _, H, W, C, P, _ = banded.values.shape
    t = torch.einsum("bkijcuv,bkij->bcuvij", banded.values, u)  # [B, C, P, P, H, W]
    return F.fold(t.reshape(B, C * P * P, H * W), (H, W), P, padding=banded.radius)


def _gaussian(n: int, shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """``[n, *shape]`` standard Gaussian probes in ``like``'s dtype and device (drawn on the CPU: reproducible)."""
    return torch.randn((n, *shape), generator=generator, dtype=like.dtype, device="cpu").to(like.device)


def _probe_residuals(fn: ImageMap, x: Tensor, banded: BandedJacobian, v: Tensor, chunk: int | None) -> Tensor:
    r"""``[N, B, C', H, W]`` float64: ``|J v_n - J_band v_n|``, the true JVP against the banded reconstruction.

    The JVP runs in the input dtype (its round-off is the floor of the verification); the reconstruction
    and the difference are computed in float64 from the same values, so they add no round-off of their own.
    """
    Jv = jvp_batch(fn, x, v, chunk_size=chunk).detach().double()
    vals = BandedJacobian(banded.values.detach().double(), banded.radius)
    return torch.stack([(Jv[k] - vals.matvec(v[k].double())).abs() for k in range(v.shape[0])])


def _reverse_residuals(fn: ImageMap, x: Tensor, banded: BandedJacobian, u: Tensor) -> Tensor:
    r"""``[N, B, C, H, W]`` float64: ``|J^T u_n - J_band^T u_n|`` (the reverse-mode counterpart)."""
    pullback = torch.func.vjp(fn, x)[1]
    JTu = torch.stack([pullback(uk)[0].detach() for uk in u]).double()
    vals = BandedJacobian(banded.values.detach().double(), banded.radius)
    return torch.stack([(JTu[k] - _rmatvec(vals, u[k].double())).abs() for k in range(u.shape[0])])


def _exact_rows(fn: ImageMap, x: Tensor, y: Tensor, entries: list[tuple[int, int, int, int]]) -> Tensor:
    """``[N, C, H, W]`` float64: the exact Jacobian rows of outputs ``(b, c', i, j)`` (one VJP each, batched)."""
    u = y.new_zeros(len(entries), *y.shape)
    for n, (b, c, i, j) in enumerate(entries):
        u[n, b, c, i, j] = 1
    rows = vjp_batch(fn, x, u).detach().double()  # [N, B, C, H, W]
    return torch.stack([rows[n, e[0]] for n, e in enumerate(entries)])


def _describe_row(row: Tensor, b: int, c: int, i: int, j: int, R: int, *, scale: float, rtol: float,
                  probe_error: float) -> LocalityViolation:
    """Locate the dependence beyond ``R`` in the exact row ``[C, H, W]`` of output ``(b, c, i, j)``.

    The reported input is the farthest one whose entry is at least 1e-3 of the largest entry beyond ``R``
    (round-off-sized entries do not move it); the largest entry beyond ``R`` is reported too.
    """
    C, H, W = row.shape
    rr = torch.arange(H, device=row.device).view(H, 1).expand(H, W)
    cc = torch.arange(W, device=row.device).view(1, W).expand(H, W)
    dist = torch.maximum((rr - i).abs(), (cc - j).abs()).expand(C, H, W)
    a = row.abs()
    outside = a * (dist > R)
    norm = float(outside.pow(2).sum().sqrt())
    big = float(outside.max()) if outside.numel() else 0.0
    if big > 0:
        significant = outside >= 1e-3 * big
        dmax = int((dist * significant).max())
        sel = outside * (dist == dmax)
        k, p, q = (int(t) for t in torch.unravel_index(sel.argmax(), sel.shape))
        kl, pl, ql = (int(t) for t in torch.unravel_index(outside.argmax(), outside.shape))
    else:
        k = p = q = kl = pl = ql = -1
        dmax = R + 1
    return LocalityViolation(
        image=b, output=(c, i, j), input=(k, p, q), distance=dmax, radius=R, value=float(a[k, p, q]) if k >= 0 else 0.0,
        row_max=float(a.max()) if a.numel() else 0.0, probe_error=probe_error, tolerance=rtol * scale,
        outside_norm=norm, scale=scale, largest_input=(kl, pl, ql), largest_value=big)


def _verify_banded(fn: ImageMap, x: Tensor, y: Tensor, banded: BandedJacobian, *, n_probes: int, rtol: float,
                   generator: torch.Generator | None, chunk: int | None = None,
                   ) -> tuple[LocalityViolation | None, Tensor | None]:
    r"""Forward-mode verification of the band (see :func:`jacobian`): ``(violation or None, bound [B] or None)``.

    For Gaussian ``v``, the residual of output row ``r`` is ``e_r = sum_{s out} J[r, s] (v_s - v_{w(s)})`` (with
    ``w(s)`` the window pixel of ``s``'s colour, when it lies in the image): a centred Gaussian of variance
    ``>= ||J_out[r]||^2``. Rows with ``max_n |e_r| > rtol S`` are flagged; the (at most ``_CONFIRM``) worst
    ones are recomputed exactly (one VJP each), and a row whose norm beyond ``R`` exceeds ``rtol S`` is a
    violation. Flags without such a row are round-off. ``bound[b] = 10 max(rtol S_b, T_b)``, ``T_b`` the largest
    residual of image ``b`` among the rows not recomputed.
    """
    if n_probes < 1:
        return None, None
    res = _probe_residuals(fn, x, banded, _gaussian(n_probes, tuple(x.shape), x, generator), chunk)
    S = banded.scale().to(res.device)  # [B]
    stat = res.amax(0)  # [B, C', H, W]
    thr = rtol * S
    ratio = (stat / thr.clamp_min(torch.finfo(torch.float64).tiny).view(-1, 1, 1, 1)).flatten()
    n_flag = int((ratio > 1).sum())
    worst: LocalityViolation | None = None
    unchecked = stat.clone()
    if n_flag:
        top = ratio.topk(min(n_flag, _CONFIRM)).indices
        entries = [tuple(int(t) for t in torch.unravel_index(f, stat.shape)) for f in top]
        rows = _exact_rows(fn, x, y, entries)  # type: ignore[arg-type]
        for (b, c, i, j), row in zip(entries, rows):
            unchecked[b, c, i, j] = 0
            bad = _describe_row(row, b, c, i, j, banded.radius, scale=float(S[b]), rtol=rtol,
                                probe_error=float(stat[b, c, i, j]))
            if bad.outside_norm > bad.tolerance and (worst is None or bad.excess > worst.excess):
                worst = bad
    bound = _DETECT * torch.maximum(thr, unchecked.flatten(1).amax(1))
    return worst, bound


def _verify_reverse(fn: ImageMap, x: Tensor, y: Tensor, banded: BandedJacobian, *, n_probes: int, rtol: float,
                    generator: torch.Generator | None) -> LocalityViolation | None:
    r"""Reverse-mode verification: ``J^T u`` (true, by VJP) against the windows, for Gaussian ``u``.

    Input columns whose residual exceeds ``rtol`` times the RMS column norm are flagged; the worst one is
    traced to an output that depends on it from beyond ``R`` by bisection over the far outputs (2 VJPs per
    halving), and that output's exact row decides, as in forward mode (its norm beyond ``R`` against
    ``rtol S``).
    """
    if n_probes < 1:
        return None
    res = _reverse_residuals(fn, x, banded, _gaussian(n_probes, tuple(y.shape), y, generator))
    S_col = banded.scale(columns=True).to(res.device)
    stat = res.amax(0)  # [B, C, H, W]
    ratio = stat / (rtol * S_col).clamp_min(torch.finfo(torch.float64).tiny).view(-1, 1, 1, 1)
    if float(ratio.max()) <= 1.0:
        return None
    b, k_in, p, q = (int(t) for t in torch.unravel_index(ratio.argmax(), ratio.shape))
    # bisection over the outputs farther than R from (p, q): follow the half whose random pullback at
    # (b, k_in, p, q) is larger (round-off elsewhere is negligible next to a real dependence)
    pullback = torch.func.vjp(fn, x)[1]
    _, Co, H, W = y.shape
    rr = torch.arange(H, device=x.device).view(H, 1)
    cc = torch.arange(W, device=x.device).view(1, W)
    far = (torch.maximum((rr - p).abs(), (cc - q).abs()) > banded.radius).expand(Co, H, W).flatten()
    cand = far.nonzero().flatten()
    while cand.numel() > 1:
        halves = (cand[: cand.numel() // 2], cand[cand.numel() // 2 :])
        gs = []
        for h in halves:
            w = y.new_zeros(y.shape)
            w[b].view(-1)[h] = torch.randn(h.numel(), generator=generator, dtype=y.dtype).to(y.device)
            gs.append(abs(float(pullback(w)[0][b, k_in, p, q])))
        cand = halves[0] if gs[0] >= gs[1] else halves[1]
    if cand.numel() == 0:
        return None
    c, i, j = (int(v) for v in torch.unravel_index(cand[0], (Co, H, W)))
    row = _exact_rows(fn, x, y, [(b, c, i, j)])[0]
    bad = _describe_row(row, b, c, i, j, banded.radius, scale=float(banded.scale()[b]), rtol=rtol,
                        probe_error=float(stat[b, k_in, p, q]))
    return bad if bad.outside_norm > bad.tolerance else None


# ----------------------------------------------------------------------------- the public function
def jacobian(
    fn: ImageMap,
    x: Tensor,
    *,
    method: Method = "dense",
    radius: int | None = None,
    mode: Literal["forward", "reverse"] = "forward",
    chunk_size: int | None = None,
    max_memory: int = _DEFAULT_MEMORY,
    verify: int = 4,
    rtol: float | None = None,
    n_rows: int = 32,
    n_probes: int = 16,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> Any:
    r"""The Jacobian of an image map ``y = fn(x)`` at ``x``, per image of the batch.

    ``fn`` must treat images independently (no batch statistics) and be differentiable in ``x``;
    grad mode is irrelevant (the products run under :mod:`torch.func`).

    * ``method="dense"`` returns a tensor ``J [B, *out, C, H, W]`` with
      ``J[b, o, c, p, q] = d fn(x)[b, o] / d x[b, c, p, q]``: one VJP per output entry, vmapped in chunks.
    * ``method="colored"`` (needs ``radius = R``, and ``out = [C', H, W]``) returns a
      :class:`BandedJacobian`: with ``P = 2R + 1``, the JVP with tangent
      ``t_{c,a,b} = 1[channel = c, p mod P = a, q mod P = b]`` gives at output ``(i, j)`` the single entry
      ``J[c', i, j, c, p, q]`` whose input ``(p, q)`` lies in ``i``'s window and has colour ``(a, b)``;
      ``C min(P, H) min(P, W)`` JVPs in all (``mode="forward"``, default). ``mode="reverse"`` colours the
      outputs instead: the VJP with cotangent ``u_{c',a,b} = 1[channel = c', i mod P = a, j mod P = b]``
      gives at input ``(p, q)`` the entry of the single output of that colour within ``R``;
      ``C' min(P, H) min(P, W)`` VJPs. Then the band is verified with ``verify`` Gaussian probes ``v``: with
      the Jacobian scale ``S`` (:meth:`BandedJacobian.scale`, the RMS row norm) and the residuals
      ``e = |J v - J_banded v|`` (true JVP against the reconstruction), every output row with
      ``max_v e > rtol S`` is flagged, the (at most 8) worst are recomputed exactly (one VJP each), and a
      row whose norm beyond the window, ``sqrt(sum_{dist > R} J[row]^2)``, exceeds ``rtol S`` raises
      :class:`~localscore.LocalScoreError` naming the output pixel, its farthest dependency, the entry and
      how many times the tolerance the row is; otherwise the flags were round-off. Rows below ``rtol S``
      beyond the window always pass; a row at or above the returned :meth:`BandedJacobian.leak_bound`
      (normally ``10 rtol S``) passes with probability at most ``0.08^verify``. Reverse mode probes
      ``J^T u`` (tolerance relative to the RMS column norm), traces the worst input to a far output by
      bisection and decides on that output's exact row the same way. The default ``rtol`` sits above the
      round-off floors measured on honest networks (``docs/locality.md``, "What verified means").
    * ``method="probes"`` returns :class:`JacobianProbes`: exact rows (all ``C'`` channels) at
      ``n_rows`` random output pixels, and Hutchinson estimates ``mean_v (J v)^2`` of every squared row norm
      from ``n_probes`` Rademacher vectors.

    Args:
        fn: map ``[B, C, H, W] -> [B, C', H, W]`` (``dense`` accepts any ``[B, *out]``).
        x: ``[B, C, H, W]`` the point.
        method: ``"dense"``, ``"colored"`` or ``"probes"``.
        radius: the declared Chebyshev receptive radius ``R`` (``colored`` only).
        mode: ``colored`` only: ``"forward"`` colours the inputs (``C P^2`` JVPs, then JVP probes) and
            ``"reverse"`` the outputs (``C' P^2`` VJPs, then VJP probes); both give the same band. Use
            reverse for models with operations that lack forward-mode AD, or when ``C' < C``.
        chunk_size: products per vmapped call (default: ``max_memory`` over 8x the bytes one forward pass
            saves for backward, measured once with saved-tensor hooks; at most 256). A heuristic: pass a
            small ``chunk_size`` for models whose batched backward is unusually memory hungry.
        max_memory: byte budget: the dense Jacobian itself plus the chunks of products (default 2 GiB).
        verify: random probes that verify the declared radius (``colored``, default 4); 0 skips the check.
        rtol: tolerance of the verification, relative to the Jacobian scale ``S`` (default 1e-4 for float32,
            1e-10 for float64, 1e-2 otherwise).
        n_rows: output pixels sampled by ``probes``.
        n_probes: sign vectors of the Hutchinson estimate (``probes``).
        generator: random source for verification and probes.
        create_graph: keep the graph from the result to the parameters of ``fn`` (to differentiate a
            Jacobian penalty, say); by default the result is a measurement without graph, which also
            keeps the memory of chunked products bounded.

    Returns:
        ``Tensor`` (dense), :class:`BandedJacobian` (colored) or :class:`JacobianProbes` (probes).

    Raises:
        LocalScoreError: bad arguments; a dense Jacobian over ``max_memory``; a map less local than the
            declared ``radius``.

    Examples:
        >>> import torch
        >>> conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
        >>> x = torch.randn(1, 1, 12, 12)
        >>> Jd = jacobian(conv, x)                                  # [1, 1, 12, 12, 1, 12, 12]
        >>> Jc = jacobian(conv, x, method="colored", radius=1)      # 9 JVPs instead of 144 VJPs
        >>> torch.allclose(Jc.to_dense(), Jd, atol=1e-6)
        True
        >>> try:
        ...     jacobian(conv, x, method="colored", radius=0)
        ... except Exception as e:
        ...     print(type(e).__name__)
        LocalScoreError
    """
    where = "jacobian"
    if not callable(fn):
        raise fail(where, f"`fn` is {describe(fn)}, expected a callable map of images.",
                   "wrap a denoiser as `lambda z: D(z, sigma, cond)`.")
    x = check_image(x, where)
    check_model(fn, x, where, "fn")
    if method not in ("dense", "colored", "probes"):
        raise fail(where, f"`method` is {method!r}, expected 'dense', 'colored' or 'probes'.")
    if isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory < 1:
        raise fail(where, f"`max_memory` is {max_memory!r}, expected a positive int (bytes).")
    # create_graph=False: the products run without recording a graph to the parameters (a measurement;
    # torch.func transforms work under no_grad), so chunks free their memory as they go.
    with torch.enable_grad() if create_graph else torch.no_grad():
        x = x.detach()
        y = _checked_call(fn, x, where).detach()
        B = x.shape[0]
        per_item = _activation_bytes(fn, x) if chunk_size is None else 0
        if method == "dense":
            n_out = y[0].numel()
            n_in = x[0].numel()
            need = B * n_out * n_in * y.element_size()
            if need > max_memory:
                raise fail(where, f"the dense Jacobian would take {need / 2**20:.1f} MiB ({B} x {n_out} x {n_in} "
                           f"entries), over `max_memory` = {max_memory / 2**20:.1f} MiB.",
                           "use method='colored' with the map's receptive radius, or method='probes', or raise "
                           "`max_memory`.")
            chunk = _chunk_for(x, n_out, chunk_size, max_memory - need, per_item, where)
            J = y.new_zeros(B, n_out, n_in)
            eye_idx = torch.arange(n_out, device=x.device)
            for start in range(0, n_out, chunk):
                idx = eye_idx[start : start + chunk]
                u = y.new_zeros(idx.numel(), B, n_out)
                u[torch.arange(idx.numel(), device=x.device), :, idx] = 1
                g = vjp_batch(fn, x, u.reshape(idx.numel(), *y.shape), chunk_size=chunk)
                J[:, start : start + idx.numel()] = g.reshape(idx.numel(), B, n_in).transpose(0, 1)
            return J.reshape(*y.shape, *x.shape[1:])
        if y.dim() != 4 or tuple(y.shape[2:]) != tuple(x.shape[2:]):
            raise fail(where, f"`fn` returned shape {tuple(y.shape)} for input {tuple(x.shape)}; method={method!r} "
                       "needs an image of the same height and width [B, C', H, W].",
                       "use method='dense' for maps that change the spatial size.")
        if method == "colored":
            if radius is None:
                raise fail(where, "method='colored' needs the declared receptive `radius`.",
                           "pass radius=R (e.g. `localscore.denoisers.receptive_radius(model)`), or use "
                           "method='dense'.")
            R = _check_radius(radius, where)
            _check_band(x, y, R, max_memory, where)
            if isinstance(verify, bool) or not isinstance(verify, int) or verify < 0:
                raise fail(where, f"`verify` is {verify!r}, expected an int >= 0 (number of random probes).")
            P = 2 * R + 1
            n = x.shape[1] * min(P, x.shape[2]) * min(P, x.shape[3])
            chunk = _chunk_for(x, n, chunk_size, max_memory, per_item, where)
            if mode not in ("reverse", "forward"):
                raise fail(where, f"`mode` is {mode!r}, expected 'reverse' or 'forward'.")
            tol = _default_rtol(y.dtype) if rtol is None else rtol
            if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
                raise fail(where, f"`rtol` is {rtol!r}, expected a number > 0 (relative to the Jacobian scale).",
                           "leave rtol=None for the measured default of the dtype (see the 'Measuring locality' docs).")
            tol = float(tol)
            if mode == "forward":
                banded = _colored(fn, x, y, R, chunk)
                bad, bound = _verify_banded(fn, x, y, banded, n_probes=verify, rtol=tol, generator=generator,
                                            chunk=chunk)
            else:
                bound = None
                n = y.shape[1] * min(P, x.shape[2]) * min(P, x.shape[3])
                chunk = _chunk_for(x, n, chunk_size, max_memory, per_item, where)
                banded = _colored_reverse(fn, x, y, R, chunk)
                bad = _verify_reverse(fn, x, y, banded, n_probes=verify, rtol=tol, generator=generator)
            if bad is not None:
                raise fail(where, f"the map is less local than the declared radius R = {R}: {bad.describe()}.",
                           f"declare a radius of at least {bad.distance}, fix the model's locality, or use "
                           "method='dense' / 'probes'.")
            return BandedJacobian(banded.values, R, tol, verify, bound)
            return banded
        # probes
        for name, val in (("n_rows", n_rows), ("n_probes", n_probes)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise fail(where, f"`{name}` is {val!r}, expected a positive int.")
        _, Co, H, W = y.shape
        n_rows = min(n_rows, H * W)
        perm = torch.randperm(H * W, generator=generator)[:n_rows].to(x.device)
        pixels = torch.stack([perm // W, perm % W], dim=1)
        u = y.new_zeros(n_rows, Co, B, Co, H * W)
        for c in range(Co):
            u[torch.arange(n_rows, device=x.device), c, :, c, perm] = 1
        chunk = _chunk_for(x, n_rows * Co, chunk_size, max_memory, per_item, where)
        rows = vjp_batch(fn, x, u.reshape(n_rows * Co, B, Co, H, W), chunk_size=chunk)  # [N*Co, B, C, H, W]
        mass = rows.reshape(n_rows, Co, B, *x.shape[1:]).pow(2).sum(dim=(1, 3)).transpose(0, 1)  # [B, N, H, W]
        signs = torch.randint(0, 2, (n_probes, *x.shape), generator=generator).to(device=x.device, dtype=x.dtype)
        signs = 2 * signs - 1
        chunk = _chunk_for(x, n_probes, chunk_size, max_memory, per_item, where)
        Jv = jvp_batch(fn, x, signs, chunk_size=chunk)
        return JacobianProbes(pixels, mass, Jv.pow(2).mean(0), n_probes)
