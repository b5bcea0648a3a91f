r"""Jacobians of image-to-image maps: dense, graph-coloured (compressed) and randomized probes.

A map ``f: [B, C, H, W] -> [B, C', H, W]`` that treats the images of a batch independently has, per
image, the Jacobian ``J[c', i, j, c, p, q] = d f(x)[c', i, j] / d x[c, p, q]``. Three ways to get it:

* ``dense``: one vector-Jacobian product (VJP) per output entry, ``C' H W`` of them, batched with
  :func:`torch.func.vmap` in chunks sized by a memory budget. Exact for any map; costly.
* ``colored``: for a map of receptive radius ``R`` (output pixel ``(i, j)`` depends only on input pixels
  with Chebyshev distance ``max(|p - i|, |q - j|) <= R``), colour input pixel ``(p, q)`` of channel
  ``c`` with ``(c, p mod P, q mod P)``, ``P = 2R + 1``. Inside any ``P x P`` window every colour appears
  once, so one Jacobian-vector product (JVP) per colour, ``C P^2`` in all, recovers every entry exactly.
  The declared radius is *verified* with random probes, and a map less local than declared raises
  :class:`~localscore.LocalScoreError` instead of returning a wrong matrix.
* ``probes``: for big models, exact rows at randomly chosen output pixels (VJPs) and Hutchinson
  estimates of every row norm (JVPs with random sign vectors).

Distances are Chebyshev (square neighbourhoods), in pixels, throughout this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_image
from .._errors import describe, fail

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
    """Where a map depends on an input outside a declared Chebyshev radius.

    Attributes:
        image: batch index ``b``.
        output: ``(channel, row, col)`` of the output entry.
        input: ``(channel, row, col)`` of the farthest input it depends on.
        distance: Chebyshev distance between the two pixels (``> radius``).
        radius: the declared radius.
        value: ``|J|`` at that entry.
        row_max: the largest ``|J|`` in the output entry's row (for scale).
        probe_error: how much a random probe disagreed with the banded reconstruction at this output.
        tolerance: the tolerance the probe error exceeded.
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

    def describe(self) -> str:
        """A one-paragraph human description."""
        c, i, j = self.output
        k, p, q = self.input
        return (f"output pixel (channel {c}, row {i}, col {j}) of image {self.image} depends on input pixel "
                f"(channel {k}, row {p}, col {q}) at Chebyshev distance {self.distance} > {self.radius} "
                f"(|dy/dx| = {self.value:.3g}; the largest entry of this row is {self.row_max:.3g}); a random "
                f"probe missed the banded reconstruction by {self.probe_error:.3g} (tolerance {self.tolerance:.3g})")


@dataclass(frozen=True)
class BandedJacobian:
    r"""A Jacobian of receptive radius ``R`` stored as one ``P x P`` window per output entry, ``P = 2R + 1``.

    ``values[b, c', i, j, c, u, v] = d y[b, c', i, j] / d x[b, c, i + u - R, j + v - R]``, zero where the
    input pixel lies outside the image. Every entry outside the windows is zero (verified when built by
    ``jacobian(..., method="colored")``).

    Attributes:
        values: ``[B, C', H, W, C, P, P]``.
        radius: ``R`` (Chebyshev, pixels).
    """

    values: Tensor
    radius: int

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


def _default_rtol(dtype: torch.dtype) -> float:
    if dtype == torch.float64:
        return 1e-9
    if dtype == torch.float32:
        return 1e-4
    return 1e-2


def _check_radius(radius: Any, where: str, name: str = "radius") -> int:
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise fail(where, f"`{name}` is {describe(radius)}, expected an int >= 0 (a Chebyshev radius in pixels).",
                   "pass the receptive radius R of the map (output pixel i depends on inputs within R of i).")
    return radius


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


def _verify_reverse(fn: ImageMap, x: Tensor, y: Tensor, banded: BandedJacobian, *, n_probes: int, rtol: float,
                    generator: torch.Generator | None) -> LocalityViolation | None:
    """Reverse-mode verification: ``J^T u`` (true, by VJP) against the windows, for random Gaussian ``u``;
    a mismatch at input ``(k, p, q)`` is traced to a far output by bisection (2 VJPs per halving)."""
    if n_probes < 1:
        return None
    u = torch.randn((n_probes, *y.shape), generator=generator, dtype=y.dtype, device="cpu").to(y.device)
    pullback = torch.func.vjp(fn, x)[1]
    JTu = torch.stack([pullback(uk)[0].detach() for uk in u])  # [n, B, C, H, W]
    vals = BandedJacobian(banded.values.detach(), banded.radius)
    absv = BandedJacobian(vals.values.abs(), banded.radius)
    worst: tuple[float, int, int, int, int, float, float] | None = None
    for k in range(n_probes):
        err = (JTu[k] - _rmatvec(vals, u[k])).abs()
        scale = _rmatvec(absv, u[k].abs())
        tol = rtol * (scale + scale.mean() + torch.finfo(scale.dtype).tiny)
        ratio = err / tol
        flat = int(ratio.argmax())
        if float(ratio.flatten()[flat]) > 1.0:
            b, c, p, q = (int(t) for t in torch.unravel_index(torch.tensor(flat), ratio.shape))
            e, t = float(err[b, c, p, q]), float(tol[b, c, p, q])
            if worst is None or e / t > worst[5] / worst[6]:
                worst = (e / t, b, c, p, q, e, t)
    if worst is None:
        return None
    _, b, k_in, p, q, e, t = worst
    # bisection over the outputs farther than R from (p, q): follow the half whose random pullback at
    # (b, k_in, p, q) is larger (round-off elsewhere is negligible next to a real dependence)
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
    bad = _describe_row(fn, x, b, c, i, j, banded.radius, e, t)
    top = float(absv.values.max()) if absv.values.numel() else 0.0
    return None if bad.value <= rtol * top else bad


def _verify_banded(fn: ImageMap, x: Tensor, banded: BandedJacobian, *, n_probes: int, rtol: float,
                   generator: torch.Generator | None) -> LocalityViolation | None:
    """Compare ``J v`` (true, by JVP) with the banded reconstruction for random Gaussian ``v``.

    If ``J`` has an entry outside the declared windows, colouring aliases it onto an entry inside, and
    ``J v`` differs from the reconstruction for almost every ``v``; equality for random ``v`` therefore
    certifies the band (up to ``rtol``).
    """
    if n_probes < 1:
        return None
    v = torch.randn((n_probes, *x.shape), generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    Jv = jvp_batch(fn, x, v).detach()  # [n, B, Co, H, W]
    worst: tuple[float, int, int, int, int, float, float] | None = None
    absvals = banded.values.detach().abs()
    vals = BandedJacobian(banded.values.detach(), banded.radius)
    for k in range(n_probes):
        Bv = vals.matvec(v[k])
        scale = torch.einsum("bkijcuv,bcijuv->bkij", absvals, _windows(v[k].abs(), banded.radius))
        floor = scale.mean() + torch.finfo(scale.dtype).tiny
        err = (Jv[k] - Bv).abs()
        tol = rtol * (scale + floor)
        ratio = err / tol
        flat = int(ratio.argmax())
        if float(ratio.flatten()[flat]) > 1.0:
            b, c, i, j = (int(t) for t in torch.unravel_index(torch.tensor(flat), ratio.shape))
            e, t = float(err[b, c, i, j]), float(tol[b, c, i, j])
            if worst is None or e / t > worst[5] / worst[6]:
                worst = (e / t, b, c, i, j, e, t)
    if worst is None:
        return None
    _, b, c, i, j, e, t = worst
    bad = _describe_row(fn, x, b, c, i, j, banded.radius, e, t)
    # Confirm with the exact row: a probe error without any entry outside the window is round-off
    # (aliasing in row i comes only from row i's own entries outside its window).
    top = float(absvals.max()) if absvals.numel() else 0.0
    if bad.value <= rtol * top:
        return None
    return bad


def _describe_row(fn: ImageMap, x: Tensor, b: int, c: int, i: int, j: int, R: int, err: float,
                  tol: float) -> LocalityViolation:
    """Compute the exact row of output ``(b, c, i, j)`` and find its farthest nonzero input."""
    y = fn(x)
    u = torch.zeros_like(y)
    u[b, c, i, j] = 1
    row = vjp_batch(fn, x, u[None])[0, b].detach()  # [C, H, W]
    C, H, W = row.shape
    rr = torch.arange(H, device=x.device).view(H, 1).expand(H, W)
    cc = torch.arange(W, device=x.device).view(1, W).expand(H, W)
    dist = torch.maximum((rr - i).abs(), (cc - j).abs())  # [H, W]
    a = row.abs()
    row_max = float(a.max())
    outside = a * (dist > R)
    if float(outside.max()) > 0:
        # farthest input with a non-negligible entry
        thresh = 1e-6 * row_max if row_max > 0 else 0.0
        cand = (outside > thresh)
        if bool(cand.any()):
            dmax = int((dist.expand(C, H, W) * cand).max())
        else:
            dmax = int((dist * (outside.amax(0) > 0)).max())
        sel = outside * (dist == dmax)
        flat = int(sel.argmax())
        k, p, q = (int(t) for t in torch.unravel_index(torch.tensor(flat), sel.shape))
        value = float(a[k, p, q])
    else:
        k, p, q, dmax, value = -1, -1, -1, R + 1, 0.0
    return LocalityViolation(b, (c, i, j), (k, p, q), dmax, R, value, row_max, err, tol)


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
    verify: int = 2,
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
      ``C' min(P, H) min(P, W)`` VJPs. Then ``verify`` random Gaussian probes check
      ``|J v - J_banded v| <= rtol * (|J_banded| |v| + mean(|J_banded| |v|))`` entrywise (``J^T u`` in
      reverse mode). A probe failure is confirmed on the exact row of an offending output (found by
      bisection in reverse mode): if that row has an entry outside the window larger than
      ``rtol * max|J_banded|``, :class:`~localscore.LocalScoreError` is raised naming the output pixel and its
      farthest dependency; otherwise the difference was round-off.
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
        verify: random probes that verify the declared radius (``colored``); 0 skips the check.
        rtol: tolerance of the verification (default 1e-4 for float32, 1e-9 for float64).
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
            if isinstance(verify, bool) or not isinstance(verify, int) or verify < 0:
                raise fail(where, f"`verify` is {verify!r}, expected an int >= 0 (number of random probes).")
            P = 2 * R + 1
            n = x.shape[1] * min(P, x.shape[2]) * min(P, x.shape[3])
            chunk = _chunk_for(x, n, chunk_size, max_memory, per_item, where)
            if mode not in ("reverse", "forward"):
                raise fail(where, f"`mode` is {mode!r}, expected 'reverse' or 'forward'.")
            tol = _default_rtol(y.dtype) if rtol is None else float(rtol)
            if mode == "forward":
                banded = _colored(fn, x, y, R, chunk)
                bad = _verify_banded(fn, x, banded, n_probes=verify, rtol=tol, generator=generator)
            else:
                n = y.shape[1] * min(P, x.shape[2]) * min(P, x.shape[3])
                chunk = _chunk_for(x, n, chunk_size, max_memory, per_item, where)
                banded = _colored_reverse(fn, x, y, R, chunk)
                bad = _verify_reverse(fn, x, y, banded, n_probes=verify, rtol=tol, generator=generator)
            if bad is not None:
                raise fail(where, f"the map is less local than the declared radius R = {R}: {bad.describe()}.",
                           f"declare a radius of at least {bad.distance}, fix the model's locality, or use "
                           "method='dense' / 'probes'.")
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
