r"""Object oracles: Gaussian-patch objects on an independent Gaussian background.

Both oracles describe images ``x [C, H, W]`` as a sum of independent Gaussian pieces,

    x = b + sum_j o_j + g 1,

* ``b``: the background, independent per pixel and channel, ``b[c, p] ~ N(mu_b[c], v_b[c])``;
* ``o_j``: the field of object ``j``, supported on its *region*
  ``M_j = {pixels p : |p - pos_j| <= object_radius}`` (Euclidean, in pixels), with mean
  ``m_j[c, p] = colour_j[c] * profile_j(p)`` and covariance
  ``K_j[(p, c), (p', c')] = object_std**2 * exp(-|p - p'|**2 / (2 length_scale**2)) * channel_corr[c, c']``
  for ``p, p'`` in ``M_j`` (zero elsewhere), where ``colour_j = object_mean + attr_map @ attr_j``;
* ``g ~ N(0, global_std**2 * I_C)``: a brightness offset shared by every pixel of an image
  (only :class:`OverlappingObjects`; zero for :class:`FactorizedObjects`).

Given a conditioner set ``c_J`` the image is Gaussian, ``x | c_J ~ N(mu_J, Sigma_J)``, so at noise level
``sigma`` (``x_sigma = x + sigma * eps``) everything is closed form:

    A        = Sigma_J + sigma**2 I
    D(x)     = E[x_0 | x_sigma = x, c_J] = x - sigma**2 A^{-1} (x - mu_J)
    log p    = -1/2 [ (x - mu_J)^T A^{-1} (x - mu_J) + log det A + C H W log(2 pi) ]

``A`` is block diagonal: one dense block per group of objects whose regions share pixels (every object
alone in :class:`FactorizedObjects`), a diagonal elsewhere; the shared offset ``g`` adds the rank-``C``
term ``U T U^T`` (``U`` = ones over pixels per channel, ``T = global_std**2 I_C``), inverted with the
Woodbury identity and the matrix determinant lemma. All of it runs in float64 by default.

The model is defined on a canvas of any size: ``shape = (C, H, W)`` is the canvas of ``sample(n)``,
``regions`` and ``mean``, while ``denoise``, ``score``, ``log_prob`` and ``composition_gap`` accept
``x [B, C, H', W']`` of any ``H', W'`` (positions in that canvas' pixels, regions clipped to it). So the
oracles are translation equivariant with local borders, and local compositions may evaluate them on crops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import MAX_ELEMENTS as _MAX_ELEMENTS
from .._checks import as_sigma, check_elements, check_image
from .._errors import describe, fail
from ..conditions import Conditions
from ._base import AnalyticDistribution, check_samples, check_sigma_range

__all__ = ["FactorizedObjects", "OverlappingObjects"]

MAX_ELEMENTS = _MAX_ELEMENTS
"""The most elements one allocation of an object oracle may hold: region maps ``[B, K, H, W]``, samples
``[B, C, H, W]``, the covariance blocks of the objects (``pixels**2`` per object and channel) and the global
field ``[B, C, H W, C]``. Estimated before allocating; read at call time, so
``localscore.oracles.objects.MAX_ELEMENTS = 2**31`` raises it where the memory is there."""
_LIMIT = "localscore.oracles.objects.MAX_ELEMENTS"


def _bound(count: int, where: str, what: str, fix: str) -> None:
    check_elements(count, MAX_ELEMENTS, where, what, fix, limit_name=_LIMIT)


# --------------------------------------------------------------------------- parameter helpers
def _vector(value: Any, n: int, where: str, name: str, *, positive: bool = False) -> Tensor:
    """A float or a length-``n`` sequence/tensor -> float64 ``[n]`` (finite, ``> 0`` if ``positive``)."""
    if isinstance(value, bool):
        raise fail(where, f"argument `{name}` is a bool, expected a float or {n} floats (one per channel).")
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise fail(where, f"argument `{name}` is {describe(value)}, expected a float or {n} floats "
                   "(one per channel).") from None
    if t.dim() == 0:
        t = t.expand(n).clone()
    if t.dim() != 1 or t.shape[0] != n:
        raise fail(where, f"argument `{name}` has shape {tuple(t.shape)}, expected a float or [{n}] "
                   "(one value per channel).",
                   f"pass a single float, or a list of {n} values.")
    if not bool(torch.isfinite(t).all()) or (positive and bool((t <= 0).any())):
        raise fail(where, f"argument `{name}` is {t.tolist()}, expected finite values"
                   f"{' > 0' if positive else ''}.")
    return t


def _scalar(value: Any, where: str, name: str, *, positive: bool = True, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(where, f"argument `{name}` is {describe(value)}, expected a float.")
    try:
        v = float(value)
    except OverflowError:  # an int beyond float64
        raise fail(where, f"argument `{name}` is an int of {len(str(value))} digits, too large for a float.",
                   f"pass a float for `{name}` (pixels and standard deviations are small numbers).") from None
    ok = math.isfinite(v) and (v > 0 or (allow_zero and v == 0) or not positive)
    if not ok:
        raise fail(where, f"argument `{name}` is {v!r}, expected a finite float "
                   f"{'>= 0' if allow_zero else '> 0'}.")
    if not math.isfinite(v * v) or (v != 0 and v * v == 0):  # the oracles use squares of every scalar
        raise fail(where, f"argument `{name}` is {v!r}, whose square {'overflows' if v * v else 'underflows'} a float; "
                   "expected a value between 1e-150 and 1e150.",
                   f"`{name}` is in pixels or image units: pass a moderate value.")
    return v


def _psd_matrix(value: Any, n: int, where: str, name: str) -> Tensor:
    if value is None:
        return torch.eye(n, dtype=torch.float64)
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise fail(where, f"argument `{name}` is {describe(value)}, expected a [{n}, {n}] matrix.") from None
    if tuple(t.shape) != (n, n):
        raise fail(where, f"argument `{name}` has shape {tuple(t.shape)}, expected [{n}, {n}] "
                   "(channels x channels).")
    if not bool(torch.isfinite(t).all()) or not torch.allclose(t, t.T, atol=1e-12, rtol=1e-10):
        raise fail(where, f"argument `{name}` must be a finite symmetric matrix; got {t.tolist()}.")
    lo = float(torch.linalg.eigvalsh(t).min())
    if lo < -1e-10 * max(1.0, float(t.abs().max())):
        raise fail(where, f"argument `{name}` is not positive semi-definite (smallest eigenvalue {lo:.3g}).",
                   "use a correlation matrix, e.g. (1 - rho) * I + rho * ones with -1/(C-1) <= rho <= 1.")
    return t


def _sqrt_psd(m: Tensor) -> Tensor:
    """``L`` with ``L L^T = m`` for a batch of symmetric PSD matrices (eigen-decomposition, exact for PSD)."""
    lam, vec = torch.linalg.eigh(m)
    return vec * lam.clamp_min(0).sqrt().unsqueeze(-2)


# --------------------------------------------------------------------------- the layout of one batch
@dataclass
class _Blocks:
    """A bucket of ``N`` object groups of similar pixel counts, padded to ``P`` pixels."""

    gb: Tensor  # [N] long: image of each group
    idx: Tensor  # [N, P] long: flat pixel index of each group's pixels (padding arbitrary)
    pmask: Tensor  # [N, P] bool: real (non-padding) pixel of the group
    kpix: Tensor  # [N, P, P] pixel part of sum_j K_j on the group (channel part is channel_corr)


@dataclass
class _Layout:
    """Everything about a batch of conditioner sets that does not depend on ``x`` or ``sigma``."""

    mean: Tensor  # [B, C, H, W]  mu_J
    regions: Tensor  # [B, K, H, W] bool, padding False
    in_group: Tensor  # [B, HW] bool: pixel lies in some region
    blocks: list[_Blocks]  # the dense blocks of A, bucketed by size so padding stays small


class _GaussianObjects(AnalyticDistribution):
    """Shared machinery of :class:`FactorizedObjects` and :class:`OverlappingObjects` (private)."""

    _allow_overlap: bool = False

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        *,
        object_radius: float,
        object_mean: float | Sequence[float] | Tensor = 1.0,
        attr_map: Tensor | None = None,
        object_std: float = 0.3,
        length_scale: float = 1.5,
        channel_corr: Tensor | None = None,
        mean_width: float | None = None,
        background_mean: float | Sequence[float] | Tensor = 0.0,
        background_std: float | Sequence[float] | Tensor = 0.2,
        global_std: float = 0.0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        where = type(self).__name__
        for name, v in (("channels", channels), ("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise fail(where, f"argument `{name}` is {v!r}, expected an int >= 1.")
        self.shape = (channels, height, width)
        self.object_radius = _scalar(object_radius, where, "object_radius")
        if self.object_radius < math.sqrt(0.5):
            raise fail(where, f"`object_radius` = {self.object_radius} is below sqrt(1/2) ~ 0.707, so an object "
                       "between pixel centres could cover no pixel.", "use object_radius >= 0.75.")
        self.object_mean = _vector(object_mean, channels, where, "object_mean")
        if attr_map is not None:
            am = torch.as_tensor(attr_map, dtype=torch.float64).detach().cpu() if not isinstance(
                attr_map, Tensor) else attr_map.detach().to("cpu", torch.float64)
            if am.dim() != 2 or am.shape[0] != channels or am.shape[1] < 1 or not bool(torch.isfinite(am).all()):
                raise fail(where, f"argument `attr_map` has shape {tuple(am.shape)}, expected a finite "
                           f"[C, A] = [{channels}, A] matrix (object colour = object_mean + attr_map @ attr).",
                           "for colour attributes use attr_map=torch.eye(C) and object_mean=0.")
            self.attr_map: Tensor | None = am
        else:
            self.attr_map = None
        self.object_std = _scalar(object_std, where, "object_std", allow_zero=True)
        self.length_scale = _scalar(length_scale, where, "length_scale")
        self.channel_corr = _psd_matrix(channel_corr, channels, where, "channel_corr")
        self.mean_width = None if mean_width is None else _scalar(mean_width, where, "mean_width")
        self.background_mean = _vector(background_mean, channels, where, "background_mean")
        self.background_std = _vector(background_std, channels, where, "background_std", positive=True)
        self.global_std = _scalar(global_std, where, "global_std", allow_zero=True)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise fail(where, f"argument `dtype` is {dtype!r}, expected a floating torch.dtype.")
        self.dtype = dtype

    # ------------------------------------------------------------------ properties
    @property
    def attr_dim(self) -> int | None:
        """``A``, the attribute length the oracle expects in ``cond.attr``, or ``None`` (no attributes)."""
        return None if self.attr_map is None else int(self.attr_map.shape[1])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(shape={self.shape}, object_radius={self.object_radius}, "
                f"attr_dim={self.attr_dim}, global_std={self.global_std})")

    # ------------------------------------------------------------------ geometry
    def _cond(self, cond: Conditions | None, batch: int, device: torch.device, where: str) -> Conditions:
        if cond is None:
            return Conditions.empty(batch, dtype=self.dtype, device=device)
        if not isinstance(cond, Conditions):
            raise fail(where, f"argument `cond` is {describe(cond)}, expected a localscore.Conditions or None.",
                       "build it with `Conditions.from_lists([[(row, col), ...], ...])`.")
        return cond.check_batch(batch, where, device=device)

    def _check_canvas(self, x: Any, where: str) -> Tensor:
        """``x [B, C, H', W']`` with this oracle's ``C``; any canvas size (the model is defined on every canvas)."""
        x = check_image(x, where)
        if x.shape[1] != self.shape[0] or x.shape[2] == 0 or x.shape[3] == 0:
            raise fail(where, f"`x` has {x.shape[1]} channels (shape {tuple(x.shape)}), expected C = {self.shape[0]} "
                       f"(this oracle's images are {tuple(self.shape)}).")
        return x

    def _size(self, size: Any, where: str) -> tuple[int, int] | None:
        if size is None:
            return None
        ok = isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
        if not ok:
            raise fail(where, f"argument `size` is {describe(size)}, expected None or (H, W) with ints >= 1.")
        return int(size[0]), int(size[1])

    def _validate(self, cond: Conditions, where: str, H: int, W: int) -> tuple[Tensor, Tensor | None, Tensor]:
        """Check positions (on an ``H x W`` canvas) and attributes; return ``pos``, ``attr``, ``valid``."""
        C = self.shape[0]
        valid = cond.valid
        pos = cond.pos.to(self.dtype)
        attr = None
        if self.attr_map is None:
            if cond.attr is not None and bool(valid.any()):
                raise fail(where, f"`cond` carries attributes of length A = {cond.attr_dim}, but this oracle "
                           "was built without `attr_map`, so it cannot use them.",
                           f"build it with attr_map of shape [{C}, {cond.attr_dim}], or pass "
                           "Conditions(cond.pos, None, cond.valid).")
        elif bool(valid.any()):
            if cond.attr is None:
                raise fail(where, f"`cond` has no attributes, but this oracle expects A = {self.attr_dim} "
                           "per object (its `attr_map` is [C, A]).",
                           "pass attrs to Conditions.from_lists(..., attrs=...).")
            if cond.attr_dim != self.attr_dim:
                raise fail(where, f"`cond.attr` has A = {cond.attr_dim} values per object, expected "
                           f"A = {self.attr_dim} (the columns of `attr_map`).")
            attr = cond.attr.to(self.dtype)
        lo = -0.5
        off = valid & ((pos[..., 0] < lo) | (pos[..., 0] > H - 0.5) | (pos[..., 1] < lo) | (pos[..., 1] > W - 0.5))
        if bool(off.any()):
            b, k = (int(i) for i in off.nonzero()[0])
            raise fail(where, f"object {k} of image {b} is at (row, col) = {pos[b, k].tolist()}, off the "
                       f"{H} x {W} image (positions must lie in [-0.5, {H - 0.5}] x [-0.5, {W - 0.5}]).",
                       "positions are in pixels, (row, col), origin at the top-left pixel centre; scale "
                       "normalised [0, 1] coordinates by (H - 1, W - 1).")
        return pos, attr, valid

    def _regions(self, pos: Tensor, valid: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
        """``regions [B, K, H, W]`` bool and squared distances ``d2 [B, K, H, W]`` on an ``H x W`` canvas."""
        rows = torch.arange(H, dtype=pos.dtype, device=pos.device)
        cols = torch.arange(W, dtype=pos.dtype, device=pos.device)
        d2 = (rows.view(1, 1, H, 1) - pos[..., 0, None, None]) ** 2 + (
            cols.view(1, 1, 1, W) - pos[..., 1, None, None]
        ) ** 2
        return (d2 <= self.object_radius**2) & valid[..., None, None], d2

    def _layout(self, cond: Conditions, where: str, size: tuple[int, int] | None = None, *,
                blocks: bool = True) -> _Layout:
        C = self.shape[0]
        H, W = size if size is not None else self.shape[1:]
        dt, dev = self.dtype, cond.device
        B, K = cond.valid.shape
        _bound(B * K * H * W, where, f"the object regions [B, K, H, W] = [{B}, {K}, {H}, {W}]",
               "use smaller images or fewer objects per call")
        pos, attr, valid = self._validate(cond, where, H, W)
        regions, d2 = self._regions(pos, valid, H, W)
        flat = regions.flatten(2)  # [B, K, HW]
        sizes = flat.sum(-1)
        empty = valid & (sizes == 0)
        if bool(empty.any()):  # cannot happen for on-image positions and radius >= sqrt(1/2); kept as a guard
            b, k = (int(i) for i in empty.nonzero()[0])
            raise fail(where, f"object {k} of image {b} covers no pixel.", "increase `object_radius`.")
        fl = flat.to(dt)
        overlap = torch.einsum("bkp,bjp->bkj", fl, fl)  # shared pixel counts
        eye = torch.eye(K, dtype=torch.bool, device=dev)
        adj = (overlap > 0) & ~eye
        if not self._allow_overlap and bool(adj.any()):
            b, j, k = (int(i) for i in adj.nonzero()[0])
            dist = float((pos[b, j] - pos[b, k]).norm())
            raise fail(where, f"the regions of objects {j} and {k} of image {b} overlap: they share "
                       f"{int(overlap[b, j, k])} pixels (positions {pos[b, j].tolist()} and {pos[b, k].tolist()}, "
                       f"distance {dist:.4g} <= 2 * object_radius = {2 * self.object_radius:.4g}).",
                       "FactorizedObjects needs disjoint object regions (that is what makes CPC exact); move the "
                       "objects apart, lower `object_radius`, or use OverlappingObjects.")
        # mean image mu_J
        colour = self.object_mean.to(dev, dt).expand(B, K, C)
        if attr is not None and self.attr_map is not None:
            colour = colour + attr @ self.attr_map.to(dev, dt).T
        prof = regions.to(dt)
        if self.mean_width is not None:
            prof = prof * torch.exp(-d2 / (2 * self.mean_width**2))
        mean = self.background_mean.to(dev, dt).view(1, C, 1, 1) + torch.einsum("bkc,bkhw->bchw", colour, prof)
        if not blocks:  # regions and mean only
            return _Layout(mean=mean, regions=regions, in_group=flat.any(1), blocks=[])
        # groups: connected components of the overlap graph (singletons when regions are disjoint)
        label = torch.where(valid, torch.arange(K, device=dev).expand(B, K), torch.full((), K, device=dev))
        link = adj | eye
        for _ in range(max(K - 1, 0)):
            new = torch.where(link, label[:, None, :], torch.full((), K, device=dev)).amin(-1)
            new = torch.where(valid, new, label)
            if torch.equal(new, label):
                break
            label = new
        roots = valid & (label == torch.arange(K, device=dev))
        gb, gl = roots.nonzero(as_tuple=True)
        memb = (label[gb] == gl[:, None]) & valid[gb]  # [N, K]
        owned = flat[gb] & memb[..., None]  # [N, K, HW]: pixels of each group's objects
        gmask = owned.any(1)  # [N, HW]
        # Bucket groups by pixel count (a bucket's largest is at most 1.5x its smallest, or 16 px more), so a
        # few large groups of overlapping objects do not pad every small block to their size.
        sizes = gmask.sum(1)
        by_size = torch.argsort(sizes).tolist()
        size_list = sizes.tolist()
        buckets: list[list[int]] = []
        for g in by_size:
            if buckets and size_list[g] <= max(1.5 * size_list[buckets[-1][0]], size_list[buckets[-1][0]] + 16):
                buckets[-1].append(g)
            else:
                buckets.append([g])
        cc = self.channel_corr
        per_block = C if bool((cc == torch.diag(torch.diagonal(cc))).all()) else C * C  # see _solve
        for members in buckets:
            n_px = max(size_list[g] for g in members)
            _bound(len(members) * n_px * n_px * per_block, where,
                   f"the covariance blocks of {len(members)} object group(s) of up to {n_px} pixels each "
                   f"([N, P, P] x {per_block} channel term(s))",
                   "objects cover pi * object_radius**2 pixels each: use a smaller `object_radius` (or fewer, "
                   "non-overlapping objects)")
        out = []
        for members in buckets:
            sel = torch.as_tensor(members, dtype=torch.long, device=dev)
            N = len(members)
            P = int(sizes[sel].max())
            order = torch.argsort((~gmask[sel]).to(torch.int8), dim=1, stable=True)[:, :P]
            pmask = torch.gather(gmask[sel], 1, order)
            mem = torch.gather(owned[sel], 2, order[:, None, :].expand(N, K, P)).to(dt)  # [N, K, P]
            count = torch.einsum("nkp,nkq->npq", mem, mem)  # number of objects covering both pixels
            r, c = (order // W).to(dt), (order % W).to(dt)
            sq = (r[:, :, None] - r[:, None, :]) ** 2 + (c[:, :, None] - c[:, None, :]) ** 2
            kpix = self.object_std**2 * torch.exp(-sq / (2 * self.length_scale**2)) * count
            out.append(_Blocks(gb=gb[sel], idx=order, pmask=pmask, kpix=kpix))
        return _Layout(mean=mean, regions=regions, in_group=flat.any(1), blocks=out)

    # ------------------------------------------------------------------ the linear algebra
    def _solve(self, x: Tensor, s: Tensor, lay: _Layout) -> tuple[Tensor, Tensor]:
        """``(A^{-1} r [B, C, H, W], log det A [B])`` with ``r = x - mu_J`` and ``A = Sigma_J + s**2 I``."""
        B, C, H, W = x.shape
        dt, dev = x.dtype, x.device
        HW = H * W
        v = self.background_std.to(dev, dt) ** 2  # [C]
        s2 = s**2  # [B]
        vb = v.view(1, C, 1) + s2.view(B, 1, 1)  # [B, C, 1] diagonal of B outside the groups
        r = (x - lay.mean).reshape(B, C, HW)
        z_bg = r / vb
        in_group = lay.in_group[:, None, :]
        logdet = (torch.log(vb) * (~lay.in_group).sum(1).view(B, 1, 1).to(dt)).sum((1, 2))
        use_global = self.global_std > 0
        eye_c = torch.eye(C, dtype=dt, device=dev)
        cc = self.channel_corr.to(dev, dt)
        zg = torch.zeros(B, C, HW, dtype=dt, device=dev)
        gfield = torch.zeros(B, C, HW, C, dtype=dt, device=dev) if use_global else None
        one = torch.ones((), dtype=dt, device=dev)
        zero = torch.zeros((), dtype=dt, device=dev)
        separable = bool((cc == torch.diag(torch.diagonal(cc))).all())  # channels independent: C small systems
        for blk in lay.blocks:
            N, P = blk.idx.shape
            pmc = blk.pmask[:, None, :]  # [N, 1, P]
            rg = torch.where(pmc, torch.gather(r[blk.gb], 2, blk.idx[:, None, :].expand(N, C, P)), zero)  # [N, C, P]
            diag = torch.where(pmc, v.view(1, C, 1) + s2[blk.gb].view(N, 1, 1), one)  # [N, C, P]
            bi = blk.gb[:, None, None].expand(N, P, C)[blk.pmask]
            pi = blk.idx[:, :, None].expand(N, P, C)[blk.pmask]
            ci = torch.arange(C, device=dev).view(1, 1, C).expand(N, P, C)[blk.pmask]
            if separable:
                # A restricted to the block is kron(kpix, diag(cc)) + diag: one [P, P] system per channel
                A = torch.diagonal(cc).view(1, C, 1, 1) * blk.kpix[:, None] + torch.diag_embed(diag)
                L = torch.linalg.cholesky(A)  # [N, C, P, P]
                logdet = logdet.index_add(0, blk.gb, 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum((1, 2)))
                rhs = [rg[..., None]]
                if use_global:  # column c of U restricted to channel c's system is the pixel mask
                    rhs.append(pmc.to(dt).expand(N, C, P)[..., None])
                sol = torch.cholesky_solve(torch.cat(rhs, -1), L)  # [N, C, P, 1 (+1)]
                z_blk = sol[..., 0].transpose(1, 2)  # [N, P, C]
                u_blk = torch.diag_embed(sol[..., 1].transpose(1, 2)) if use_global else None  # [N, P, C, C']
            else:
                A = (blk.kpix[:, :, None, :, None] * cc[None, None, :, None, :]).reshape(N, P * C, P * C)
                A = A + torch.diag_embed(diag.transpose(1, 2).reshape(N, P * C))  # (pixel, channel) order
                L = torch.linalg.cholesky(A)
                logdet = logdet.index_add(0, blk.gb, 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1))
                rhs = [rg.transpose(1, 2).reshape(N, P * C, 1)]
                if use_global:  # B^{-1} U on the block: U is 1 on every (pixel, channel c) for column c
                    pm = blk.pmask[:, :, None, None].to(dt)
                    rhs.append((pm * eye_c.view(1, 1, C, C)).reshape(N, P * C, C))
                sol = torch.cholesky_solve(torch.cat(rhs, -1), L)  # [N, PC, 1 (+C)]
                z_blk = sol[:, :, 0].reshape(N, P, C)
                u_blk = sol[:, :, 1:].reshape(N, P, C, C) if use_global else None
            zg = zg.index_put((bi, ci, pi), z_blk[blk.pmask])
            if gfield is not None and u_blk is not None:
                gfield = gfield.index_put((bi, ci, pi), u_blk[blk.pmask])
        z = torch.where(in_group, zg, z_bg)
        if use_global:
            # Woodbury with U = ones over pixels per channel and T = global_std**2 I_C:
            # A^{-1} r = B^{-1} r - B^{-1} U T (I + W T)^{-1} U^T B^{-1} r,  W = U^T B^{-1} U.
            binv_u = (eye_c.view(1, C, 1, C) / vb[..., None]).expand(B, C, HW, C)  # [B, C, HW, C']
            if gfield is not None:
                binv_u = torch.where(in_group[..., None], gfield, binv_u)
            Wm = binv_u.sum(2)  # [B, C, C']
            T = self.global_std**2 * eye_c
            M = eye_c + Wm @ T
            q = z.sum(2)  # [B, C]
            y = torch.linalg.solve(M, q[..., None])  # [B, C, 1]
            z = z - (binv_u @ (T @ y)[:, None]).squeeze(-1)
            logdet = logdet + torch.linalg.slogdet(M)[1]
        return z.reshape(B, C, H, W), logdet

    # ------------------------------------------------------------------ public API
    def regions(self, cond: Conditions, size: tuple[int, int] | None = None) -> Tensor:
        """The object supports ``M_j``: ``[B, K, H, W]`` bool, ``True`` where ``|p - pos_j| <= object_radius``.

        ``size = (H', W')`` picks another canvas (default: this oracle's ``(H, W)``). Padding slots are all
        ``False``. Raises like :meth:`denoise` for off-image positions, wrong attributes and (for
        :class:`FactorizedObjects`) overlapping regions.

        Examples:
            >>> from localscore import Conditions
            >>> from localscore.oracles import FactorizedObjects
            >>> oracle = FactorizedObjects(1, 8, 8, object_radius=1.0)
            >>> m = oracle.regions(Conditions.from_lists([[(2, 2), (6, 5)], [(0, 7)]]))
            >>> m.shape, m.sum((2, 3)).tolist()      # a radius-1 disc holds 5 pixels, 3 at the corner
            (torch.Size([2, 2, 8, 8]), [[5, 5], [3, 0]])
        """
        where = f"{type(self).__name__}.regions"
        if not isinstance(cond, Conditions):
            raise fail(where, f"argument `cond` is {describe(cond)}, expected a localscore.Conditions.")
        return self._layout(cond, where, self._size(size, where), blocks=False).regions

    def mean(self, cond: Conditions, size: tuple[int, int] | None = None) -> Tensor:
        """``mu_J [B, C, H, W]``, the mean image given each conditioner set (in the oracle's dtype).

        ``mu_J[c, p] = background_mean[c] + sum_j colour_j[c] * profile_j(p) * [p in M_j]``; ``size = (H', W')``
        picks another canvas (default: this oracle's ``(H, W)``).

        Examples:
            >>> from localscore import Conditions
            >>> from localscore.oracles import FactorizedObjects
            >>> oracle = FactorizedObjects(1, 5, 5, object_radius=1.0, object_mean=2.0, background_mean=0.5)
            >>> oracle.mean(Conditions.from_lists([[(2, 2)]]))[0, 0, 1:4, 1:4].tolist()
            [[0.5, 2.5, 0.5], [2.5, 2.5, 2.5], [0.5, 2.5, 0.5]]
        """
        where = f"{type(self).__name__}.mean"
        if not isinstance(cond, Conditions):
            raise fail(where, f"argument `cond` is {describe(cond)}, expected a localscore.Conditions.")
        return self._layout(cond, where, self._size(size, where), blocks=False).mean

    def _prepare(self, x: Any, sigma: Any, cond: Conditions | None, where: str,
                 allow_zero: bool = False) -> tuple[Tensor, Tensor, _Layout]:
        x = self._check_canvas(x, where)
        if self.global_std > 0:
            B, C, H, W = x.shape
            _bound(B * C * H * W * C, where, f"the global field [B, C, H W, C] = [{B}, {C}, {H * W}, {C}]",
                   "denoise fewer or smaller images per call")
        s = as_sigma(sigma, x.shape[0], where, like=x, allow_zero=allow_zero).to(self.dtype)
        check_sigma_range(s, self.dtype, where)
        c = self._cond(cond, x.shape[0], x.device, where)
        return x.to(self.dtype), s, self._layout(c, where, (x.shape[2], x.shape[3]))

    def denoise(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        """Exact posterior mean ``E[x_0 | x_sigma = x, cond]``: ``[B, C, H, W]`` in ``x``'s dtype.

        ``D(x) = x - sigma**2 (Sigma_J + sigma**2 I)^{-1} (x - mu_J)`` (module docstring), solved block by
        block in the oracle's dtype. ``cond=None`` (or an empty set) is the background-only model.

        Examples:
            >>> import torch
            >>> from localscore.oracles import FactorizedObjects
            >>> oracle = FactorizedObjects(1, 4, 4, object_radius=1.0, background_std=1.0)
            >>> x = torch.full((1, 1, 4, 4), 2.0)
            >>> oracle.denoise(x, 1.0)[0, 0, 0, 0].item()   # background: v / (v + sigma**2) * x = 0.5 * 2
            1.0
        """
        where = f"{type(self).__name__}.denoise"
        x0 = x
        xd, s, lay = self._prepare(x, sigma, cond, where)
        z, _ = self._solve(xd, s, lay)
        return (xd - s.view(-1, 1, 1, 1) ** 2 * z).to(x0.dtype)

    def log_prob(self, x: Tensor, sigma: Tensor | float, cond: Conditions | None = None) -> Tensor:
        """``log p_sigma(x | cond)`` ``[B]`` (in ``x``'s dtype); ``sigma = 0`` gives the data density.

        ``log p = -1/2 [ r^T A^{-1} r + log det A + C H W log(2 pi) ]`` with ``r = x - mu_J`` and
        ``A = Sigma_J + sigma**2 I``. Differentiable in ``x``: its gradient is :meth:`score`.

        Examples:
            >>> import math, torch
            >>> from localscore.oracles import FactorizedObjects
            >>> oracle = FactorizedObjects(1, 2, 2, object_radius=1.0, background_std=1.0)
            >>> lp = oracle.log_prob(torch.zeros(1, 1, 2, 2, dtype=torch.float64), 1.0)  # 4 x N(0, 1 + 1)
            >>> round(lp.item(), 10) == round(-2 * math.log(2 * math.pi * 2), 10)
            True
        """
        where = f"{type(self).__name__}.log_prob"
        x0 = x
        xd, s, lay = self._prepare(x, sigma, cond, where, allow_zero=True)
        z, logdet = self._solve(xd, s, lay)
        r = xd - lay.mean
        D = r[0].numel()
        quad = (r * z).flatten(1).sum(1)
        return (-0.5 * (quad + logdet + D * math.log(2 * math.pi))).to(x0.dtype)

    def sample(self, n: int | Conditions, *, sigma: float = 0.0, generator: torch.Generator | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
        """Exact samples of ``x_sigma = x_0 + sigma * eps``, ``x_0 ~ p(x | c)``: ``[B, C, H, W]``.

        Args:
            n: a number of background-only images, or a :class:`~localscore.Conditions` batch (one image
                per conditioner set, on its device).
            sigma: noise level ``>= 0`` added to the clean samples.
            generator: a ``torch.Generator`` for reproducibility (on the samples' device).
            dtype: dtype of the result; default: ``n``'s dtype (``n.dtype``) for a Conditions batch,
                ``torch.get_default_dtype()`` for an int. Samples are drawn in the oracle's dtype either way.

        Returns:
            ``[B, C, H, W]``: ``mu_J + sqrt(v_b) z_b + sum_j L_j z_j + g 1 + sigma * eps`` with
            ``L_j L_j^T = K_j``.

        Examples:
            >>> import torch
            >>> from localscore import Conditions
            >>> from localscore.oracles import FactorizedObjects
            >>> oracle = FactorizedObjects(3, 8, 8, object_radius=2.0)
            >>> g = torch.Generator().manual_seed(0)
            >>> oracle.sample(Conditions.from_lists([[(2, 2)], []]), generator=g).shape
            torch.Size([2, 3, 8, 8])
            >>> oracle.sample(5, sigma=0.5, generator=g).dtype, oracle.sample(5, generator=g, dtype=torch.float64).dtype
            (torch.float32, torch.float64)
        """
        where = f"{type(self).__name__}.sample"
        C, H, W = self.shape
        if isinstance(n, Conditions):
            cond = n
        elif isinstance(n, int) and not isinstance(n, bool) and n >= 1:
            cond = Conditions.empty(n, dtype=self.dtype)
        else:
            raise fail(where, f"argument `n` is {describe(n)}, expected an int >= 1 or a Conditions batch.")
        s = _scalar(sigma, where, "sigma", allow_zero=True)
        check_sigma_range(torch.tensor([s], dtype=torch.float64), self.dtype, where)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise fail(where, f"argument `generator` is {describe(generator)}, expected a torch.Generator or None.")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise fail(where, f"argument `dtype` is {describe(dtype)}, expected a floating torch.dtype.")
        out_dtype = dtype or (cond.dtype if isinstance(n, Conditions) else torch.get_default_dtype())
        _bound(cond.batch_size * C * H * W, where, f"the samples [B, C, H, W] = [{cond.batch_size}, {C}, {H}, {W}]",
               "draw fewer images per call")
        lay = self._layout(cond, where, blocks=False)
        dt, dev = self.dtype, cond.device
        B = cond.batch_size

        def randn(*shape: int) -> Tensor:
            return torch.randn(*shape, dtype=dt, device=dev, generator=generator)

        x = lay.mean + self.background_std.to(dev, dt).view(1, C, 1, 1) * randn(B, C, H, W)
        ob, ok = cond.valid.nonzero(as_tuple=True)
        M = int(ob.shape[0])
        if M and self.object_std > 0:
            flat = lay.regions.flatten(2)[ob, ok]  # [M, HW]
            P = int(flat.sum(1).max())
            _bound(M * P * P, where, f"the covariance blocks [objects, P, P] = [{M}, {P}, {P}] of the objects' fields",
                   "objects cover pi * object_radius**2 pixels each: use a smaller `object_radius`")
            order = torch.argsort((~flat).to(torch.int8), dim=1, stable=True)[:, :P]
            pm = torch.gather(flat, 1, order)
            r, c = (order // W).to(dt), (order % W).to(dt)
            sq = (r[:, :, None] - r[:, None, :]) ** 2 + (c[:, :, None] - c[:, None, :]) ** 2
            both = (pm[:, :, None] & pm[:, None, :]).to(dt)
            kp = torch.exp(-sq / (2 * self.length_scale**2)) * both
            Lp = _sqrt_psd(kp)
            Lc = _sqrt_psd(self.channel_corr.to(dev, dt))
            field = self.object_std * Lp @ randn(M, P, C) @ Lc.T  # [M, P, C]
            bi = ob[:, None, None].expand(M, P, C)[pm]
            pi = order[:, :, None].expand(M, P, C)[pm]
            ci = torch.arange(C, device=dev).view(1, 1, C).expand(M, P, C)[pm]
            add = torch.zeros(B, C, H * W, dtype=dt, device=dev).index_put((bi, ci, pi), field[pm], accumulate=True)
            x = x + add.view(B, C, H, W)
        if self.global_std > 0:
            x = x + self.global_std * randn(B, C, 1, 1)
        if s > 0:
            x = x + s * randn(B, C, H, W)
        return check_samples(x.to(out_dtype), where, s)

    def composition_gap(self, x: Tensor, sigma: Tensor | float, cond: Conditions) -> Tensor:
        """The exact failure of projective composition: ``[B, C, H, W]`` in ``x``'s dtype.

        ``gap = D(x | c_J) - [ D(x | none) + sum_j ( D(x | c_j) - D(x | none) ) ]``, every term the closed-form
        posterior mean of this oracle (padding slots give ``D(x | none)`` and contribute nothing). It is zero
        to round-off for :class:`FactorizedObjects`; for :class:`OverlappingObjects` it is the residual a
        composition operator must reproduce.

        Examples:
            >>> import torch
            >>> from localscore import Conditions
            >>> from localscore.oracles import OverlappingObjects
            >>> oracle = OverlappingObjects(1, 8, 8, object_radius=2.0, global_std=0.5)
            >>> cond = Conditions.from_lists([[(2, 2), (6, 6)]])      # disjoint, but the offset couples them
            >>> x = oracle.sample(cond, sigma=0.5, generator=torch.Generator().manual_seed(0))
            >>> bool(oracle.composition_gap(x, 0.5, cond).abs().max() > 1e-4)
            True
        """
        where = f"{type(self).__name__}.composition_gap"
        x = self._check_canvas(x, where)
        if not isinstance(cond, Conditions):
            raise fail(where, f"argument `cond` is {describe(cond)}, expected a localscore.Conditions.")
        B = x.shape[0]
        s = as_sigma(sigma, B, where, like=x)
        cond.check_batch(B, where, device=x.device)
        singles = cond.singletons()
        K = len(singles)
        allc = Conditions.cat([cond, cond.drop_all(), *singles])
        d = self.denoise(x.repeat(K + 2, 1, 1, 1), s.repeat(K + 2), allc).to(self.dtype).view(K + 2, *x.shape)
        gap = d[0] - d[1] - (d[2:] - d[1]).sum(0)
        return gap.to(x.dtype)


class FactorizedObjects(_GaussianObjects):
    r"""Gaussian-patch objects on disjoint regions over an independent Gaussian background: CPC holds exactly.

    Each object ``j`` (a valid slot of a :class:`~localscore.Conditions`) owns the pixels
    ``M_j = {p : |p - pos_j| <= object_radius}``. On them the image is a Gaussian patch,
    ``x_{M_j} | c_j ~ N(mu_b + m_j, v_b I + K_j)`` with ``m_j = colour_j * profile_j`` and
    ``K_j = object_std**2 * SE(length_scale) (x) channel_corr`` (module docstring); every other pixel is
    background, independent ``N(mu_b[c], v_b[c])`` per pixel and channel. Regions of one image must be
    disjoint (checked: overlapping regions raise :class:`~localscore.LocalScoreError`).

    **Why CPC is exact.** The background is independent across pixels, so
    ``p(x | none) = p(x_{M_J^c} | none) prod_j p(x_{M_j} | none)`` for any disjoint ``M_j``, and by
    construction ``p(x | c_J) = p(x_{M_J^c} | none) prod_j p(x_{M_j} | c_j)``. Hence
    ``log p(x | c_J) - log p(x | none) = sum_j [log p(x_{M_j} | c_j) - log p(x_{M_j} | none)]
    = sum_j [log p(x | c_j) - log p(x | none)]``. Gaussian noise acts independently per pixel, so the same
    factorisation holds for ``p_sigma`` at every ``sigma``; taking gradients (or Tweedie),
    ``D(x | c_J) = D(x | none) + sum_j (D(x | c_j) - D(x | none))`` exactly. A background correlated across
    pixels would break the first equality: that is :class:`OverlappingObjects` with ``global_std > 0``.

    The denoiser is local: the output at a pixel of ``M_j`` depends only on ``x_{M_j}`` and ``c_j``, at a
    background pixel only on that pixel. It is translation equivariant and accepts any canvas size
    ``x [B, C, H', W']`` (module docstring), so it can be evaluated on crops, which is what
    ``localscore.compose``'s ``"crop"`` strategy does with a declared ``receptive_radius``.
    It declares ``receptive_radius = floor(2 object_radius)`` and ``conditioner_radius = ceil(object_radius)``
    (Chebyshev, see :func:`localscore.denoisers.receptive_radius`).

    Args:
        channels: the image's channel count ``C``.
        height: the image height ``H`` in pixels.
        width: the image width ``W`` in pixels.
        object_radius: region radius in pixels (Euclidean), ``>= sqrt(1/2)``.
        object_mean: ``[C]`` (or a float) base colour of the objects' mean.
        attr_map: optional ``[C, A]``; an object's colour is ``object_mean + attr_map @ attr_j``, with
            ``attr_j [A]`` from ``cond.attr``. ``None``: the oracle takes no attributes.
        object_std: amplitude of the object field (``0`` gives deterministic patches over the background noise).
        length_scale: correlation length of the object field, in pixels.
        channel_corr: ``[C, C]`` PSD channel correlation of the object field (default identity).
        mean_width: ``None`` for flat patches; else ``profile_j(p) = exp(-|p - pos_j|**2 / (2 mean_width**2))``.
        background_mean: ``[C]`` (or a float), the background's per-pixel mean.
        background_std: ``[C]`` (or a float), the background's per-pixel std (``> 0``).
        dtype: compute dtype (float64 by default); results of ``denoise``/``log_prob`` come back in ``x``'s dtype.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> from localscore.oracles import FactorizedObjects
        >>> oracle = FactorizedObjects(3, 16, 16, object_radius=2.5, attr_map=torch.eye(3), object_mean=0.0)
        >>> cond = Conditions.from_lists([[(4, 4), (11, 10)]], attrs=[[[1.0, 0, 0], [0, 0, 1.0]]],
        ...                              dtype=torch.float64)
        >>> x = oracle.sample(cond, sigma=1.0, generator=torch.Generator().manual_seed(0))
        >>> oracle.regions(cond).shape, oracle.denoise(x, 1.0, cond).shape
        (torch.Size([1, 2, 16, 16]), torch.Size([1, 3, 16, 16]))
        >>> float(oracle.composition_gap(x, 1.0, cond).abs().max()) < 1e-12
        True
    """

    _allow_overlap = False

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        *,
        object_radius: float,
        object_mean: float | Sequence[float] | Tensor = 1.0,
        attr_map: Tensor | None = None,
        object_std: float = 0.3,
        length_scale: float = 1.5,
        channel_corr: Tensor | None = None,
        mean_width: float | None = None,
        background_mean: float | Sequence[float] | Tensor = 0.0,
        background_std: float | Sequence[float] | Tensor = 0.2,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__(channels, height, width, object_radius=object_radius, object_mean=object_mean,
                         attr_map=attr_map, object_std=object_std, length_scale=length_scale,
                         channel_corr=channel_corr, mean_width=mean_width, background_mean=background_mean,
                         background_std=background_std, global_std=0.0, dtype=dtype)

    @property
    def receptive_radius(self) -> int:
        """``floor(2 object_radius)``: two pixels of one region are at most this far apart (Chebyshev)."""
        return math.floor(2 * self.object_radius)

    @property
    def conditioner_radius(self) -> int:
        """``ceil(object_radius)``: a pixel depends only on objects whose region contains it."""
        return math.ceil(self.object_radius)


class OverlappingObjects(_GaussianObjects):
    r"""Additive Gaussian objects whose regions may overlap, optionally with a shared brightness: CPC fails.

    The image is ``x = b + sum_j o_j + g 1`` (module docstring): the independent background, one
    Gaussian field per object on its region ``M_j`` (regions may overlap: fields *add* there), and, if
    ``global_std > 0``, an offset ``g ~ N(0, global_std**2 I_C)`` shared by all pixels, which correlates
    every pixel (objects and background) with every other.

    **Where CPC fails, in closed form.** ``x | c_J ~ N(mu_J, Sigma_J)`` with
    ``mu_J = mu_b + sum_j m_j`` and ``Sigma_J = diag(v_b) + sum_j K_j + U T U^T``. On overlapping pixels the
    joint's covariance ``v_b + K_1 + K_2`` is not that of either single (and the pixels of ``M_1`` and
    ``M_2`` become coupled through the overlap), so the joint is not ``p(x | none)`` times per-object factors;
    with ``global_std > 0`` the background itself is correlated and even disjoint objects fail. Each
    denoiser is the closed form ``D(x | c) = x - sigma**2 (Sigma_c + sigma**2 I)^{-1} (x - mu_c)``, hence
    the composition gap (:meth:`composition_gap`)

        gap = D(x | c_J) - D(x | none) - sum_j [ D(x | c_j) - D(x | none) ]

    is exact. The means add, so the gap vanishes as ``sigma -> inf`` (``D -> mu``); it also vanishes at
    ``sigma -> 0`` (``D -> x``); in between it is nonzero on the groups of overlapping objects (with
    ``global_std = 0``; elsewhere it is exactly zero) or on every pixel (``global_std > 0``). The gap comes
    from the covariances only: with ``object_std = 0`` every conditional shares one covariance, ``D`` is
    affine in the mean, and the gap is exactly zero. With disjoint regions and ``global_std = 0`` this
    oracle equals :class:`FactorizedObjects` with the same parameters.

    Args:
        channels: as in :class:`FactorizedObjects`.
        height: as in :class:`FactorizedObjects`.
        width: as in :class:`FactorizedObjects`.
        object_radius: as in :class:`FactorizedObjects`.
        object_mean: as in :class:`FactorizedObjects`.
        attr_map: as in :class:`FactorizedObjects`.
        object_std: as in :class:`FactorizedObjects`.
        length_scale: as in :class:`FactorizedObjects`.
        channel_corr: as in :class:`FactorizedObjects`.
        mean_width: as in :class:`FactorizedObjects`.
        background_mean: as in :class:`FactorizedObjects`.
        background_std: as in :class:`FactorizedObjects`.
        dtype: as in :class:`FactorizedObjects`.
        global_std: std of the per-image, per-channel offset shared by all pixels (``>= 0``).

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> from localscore.oracles import OverlappingObjects
        >>> oracle = OverlappingObjects(1, 12, 12, object_radius=3.0)
        >>> cond = Conditions.from_lists([[(5, 4), (5, 7)]], dtype=torch.float64)   # 3 px apart: overlap
        >>> x = oracle.sample(cond, sigma=0.3, generator=torch.Generator().manual_seed(0))
        >>> gap = oracle.composition_gap(x, 0.3, cond)
        >>> bool(gap.abs().max() > 1e-3), bool(gap[..., :, 11].abs().max() == 0)   # nonzero, but local
        (True, True)
    """

    _allow_overlap = True
