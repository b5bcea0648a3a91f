r"""Pixel-to-conditioner locality masks built from :class:`~localscore.Conditions`.

A mask batch has shape ``[B, K, H, W]``: entry ``[b, k, i, j]`` says how much pixel ``(i, j)`` of
image ``b`` belongs to (may see, or is governed by) conditioner ``k``. Hard rules give ``bool``; the
soft Gaussian rule gives floats in ``[0, 1]``. Padding slots (``cond.valid == False``) are all zero.

Pixel ``(i, j)`` has position ``(i, j)`` (row, col) in pixel units, origin at the top-left pixel centre,
the same convention as ``Conditions.pos``.

Sizes may depend on the noise level: every rule accepts a *radius spec*, which is a float, a ``[B]`` or
``[B, K]`` tensor, or a callable ``sigma [B] -> float or [B]`` (then pass ``sigma``).

Rules as small objects (:class:`DiscRule`, :class:`BoxRule`, :class:`GaussianRule`) are callables
``rule(cond, size, sigma=None) -> [B, K, H, W]``; networks, the intervention and masked composition take
them. Distances: :class:`DiscRule` and :class:`GaussianRule` use the Euclidean distance, :class:`BoxRule`
the Chebyshev distance (a disc of radius ``r`` lies inside the box of half-size ``r``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from ._checks import MAX_ELEMENTS as _MAX_ELEMENTS
from ._checks import as_sigma, check_elements, check_flag
from ._errors import describe, fail
from .conditions import Conditions

__all__ = [
    "BoxRule",
    "DiscRule",
    "GaussianRule",
    "MaskRule",
    "RadiusSpec",
    "box_masks",
    "disc_masks",
    "distances",
    "gaussian_masks",
    "nearest_conditioner",
    "pixel_grid",
    "resolve_radius",
    "union",
    "voronoi_masks",
]

RadiusSpec = float | int | Tensor | Callable[[Tensor], Any]
"""A size in pixels: a number, a ``[B]`` / ``[B, K]`` tensor, or a callable of ``sigma [B]``."""

Metric = Literal["euclidean", "chebyshev"]


MAX_ELEMENTS = _MAX_ELEMENTS
"""The most elements a function of this module allocates for one result (``[B, K, H, W]`` masks and distances,
``[H, W, 2]`` pixel grids): the size is checked from metadata first and anything larger raises a
:class:`~localscore.LocalScoreError` before allocating. Read at call time: raise
``localscore.masks.MAX_ELEMENTS`` if the memory is there."""


def _check_size(size: Any, where: str, cond: Conditions | None = None) -> tuple[int, int]:
    """``(H, W)`` from ``size``; with ``cond``, also bound the ``[B, K, H, W]`` result by :data:`MAX_ELEMENTS`."""
    if (
        not isinstance(size, (tuple, list, torch.Size))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise fail(where, f"`size` is {describe(size)}, expected (H, W), two positive ints.",
                   "pass the image size, e.g. `x.shape[-2:]`.")
    H, W = int(size[0]), int(size[1])
    B, K = (1, 2) if cond is None else (cond.batch_size, cond.num_slots)
    shape = [H, W, 2] if cond is None else [B, K, H, W]
    check_elements(math.prod(shape), MAX_ELEMENTS, where, f"the result {shape}", "pass the image size, e.g. "
                   "`x.shape[-2:]`, and build masks for fewer images or slots at a time",
                   limit_name="localscore.masks.MAX_ELEMENTS")
    return H, W


def _check_cond(cond: Any, where: str) -> Conditions:
    if not isinstance(cond, Conditions):
        raise fail(where, f"`cond` is {describe(cond)}, expected a localscore.Conditions.",
                   "build one with `Conditions.from_lists(...)`.")
    return cond


def pixel_grid(size: tuple[int, int], *, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
    """``[H, W, 2]`` pixel positions ``(row, col)``; ``grid[i, j] = (i, j)``.

    Examples:
        >>> pixel_grid((2, 3))[1, 2].tolist()
        [1.0, 2.0]
    """
    H, W = _check_size(size, "pixel_grid")
    dtype = dtype or torch.get_default_dtype()
    rows = torch.arange(H, device=device, dtype=dtype)
    cols = torch.arange(W, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)


def _axis_offsets(cond: Conditions, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """``(dr [B, K, H], dc [B, K, W])``: ``i - row_k`` and ``j - col_k``; padding rows hold ``+inf``."""
    H, W = size
    rows = torch.arange(H, device=cond.device, dtype=cond.dtype)
    cols = torch.arange(W, device=cond.device, dtype=cond.dtype)
    dr = rows - cond.pos[..., 0:1]  # [B, K, H]
    dc = cols - cond.pos[..., 1:2]  # [B, K, W]
    inf = torch.full((), float("inf"), dtype=dr.dtype, device=dr.device)
    return torch.where(cond.valid[..., None], dr, inf), dc


def _squared_distances(cond: Conditions, size: tuple[int, int]) -> Tensor:
    """``[B, K, H, W]`` squared Euclidean distances ``(i - r_k)**2 + (j - c_k)**2``; ``+inf`` for padding.

    Separable: built from the ``[B, K, H]`` and ``[B, K, W]`` offsets by one broadcast add, never a
    ``[B, K, H, W, 2]`` tensor (the masks are rebuilt on every forward pass of a network).
    """
    dr, dc = _axis_offsets(cond, size)
    return (dr * dr)[..., :, None] + (dc * dc)[..., None, :]


_INT_OF_FLOAT = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_ULP_STEPS = 4  # candidates r*r + k ulps for |k| <= this; the answer is within 2 ulps of r*r (see below)


def _sqrt_threshold(r: Tensor) -> Tensor:
    """The largest float ``t`` with ``sqrt(t) <= r`` (elementwise, ``r >= 0``), so that ``d2 <= t`` is exactly
    ``sqrt(d2) <= r`` for every float ``d2 >= 0`` (``sqrt`` is correctly rounded, hence monotone) without a
    square root per pixel.

    ``fits(t) = sqrt(t) <= r`` is monotone (true up to the answer ``T``, false above), and ``T`` lies within
    two ulps of ``t0 = r * r``: ``sqrt(t)`` rounds to at most ``r`` iff ``t < (r + ulp(r) / 2)**2``, about
    ``r**2 + r ulp(r)``, and ``r ulp(r)`` is between 0.7 and 1.5 ulps of ``r**2``, while ``t0`` is within half
    an ulp of ``r**2``. So ``T`` is the largest fitting one of the floats ``t0 + k ulps``, ``|k| <= 4``, which
    are consecutive integers in the floats' bit patterns (``t0 >= 0``; patterns below ``+0`` read as NaN,
    which never fits). All candidates are tested at once: no value is read back to the host.
    """
    t0 = r * r
    ints = _INT_OF_FLOAT[t0.element_size()]
    steps = torch.arange(-_ULP_STEPS, _ULP_STEPS + 1, dtype=ints, device=r.device)
    cand = (t0.view(ints)[..., None] + steps).view(t0.dtype)  # [..., 2 * _ULP_STEPS + 1], increasing
    fits = torch.sqrt(cand) <= r[..., None]
    ninf = torch.full((), float("-inf"), dtype=t0.dtype, device=r.device)
    return torch.where(fits, cand, ninf).amax(dim=-1)


def distances(cond: Conditions, size: tuple[int, int], metric: Metric = "euclidean") -> Tensor:
    """``[B, K, H, W]`` distance from each pixel to each conditioner's position.

    ``euclidean``: ``sqrt((i - r_k)**2 + (j - c_k)**2)``; ``chebyshev``: ``max(|i - r_k|, |j - c_k|)``.
    Padding slots get ``+inf``. Both are computed separably (per-axis offsets ``[B, K, H]`` and
    ``[B, K, W]``, one broadcast), and the Euclidean distance has gradient 0 (not NaN) where it is 0.

    Examples:
        >>> c = Conditions.from_lists([[(0.0, 0.0)]])
        >>> distances(c, (2, 2), "chebyshev")[0, 0].tolist()
        [[0.0, 1.0], [1.0, 1.0]]
    """
    where = "distances"
    cond = _check_cond(cond, where)
    H, W = _check_size(size, where, cond)
    if metric not in ("euclidean", "chebyshev"):
        raise fail(where, f"`metric` is {metric!r}, expected 'euclidean' or 'chebyshev'.")
    if metric == "chebyshev":
        dr, dc = _axis_offsets(cond, (H, W))
        return torch.maximum(dr.abs()[..., :, None], dc.abs()[..., None, :])
    d2 = _squared_distances(cond, (H, W))
    if torch.is_grad_enabled() and cond.pos.requires_grad:  # sqrt'(0) is inf: keep the gradient finite at 0
        pos = d2 > 0
        return torch.where(pos, torch.sqrt(torch.where(pos, d2, torch.ones((), dtype=d2.dtype, device=d2.device))),
                           torch.zeros((), dtype=d2.dtype, device=d2.device))
    return torch.sqrt(d2)


def resolve_radius(spec: RadiusSpec, cond: Conditions, sigma: Any, where: str, name: str = "radius") -> Tensor:
    """Turn a radius spec into a ``[B, K]`` tensor of non-negative sizes (pixels).

    Examples:
        >>> c = Conditions.from_lists([[(0, 0), (1, 1)]])
        >>> resolve_radius(lambda s: 2 * s, c, 1.5, "demo").tolist()
        [[3.0, 3.0]]
    """
    B, K = cond.batch_size, cond.num_slots
    value: Any = spec
    if callable(spec) and not isinstance(spec, Tensor):
        if sigma is None:
            raise fail(where, f"`{name}` is a function of sigma but no `sigma` was given.",
                       "pass sigma=... (a float or a [B] tensor of noise levels).")
        s = as_sigma(sigma, B, where, like=cond.pos)
        value = spec(s)
    if isinstance(value, bool):
        raise fail(where, f"`{name}` is a bool, expected a size in pixels.")
    if isinstance(value, (int, float)):
        v = float(value) if abs(value) <= torch.finfo(torch.float64).max else math.inf  # an int beyond float64
        if not (math.isfinite(v) and 0 <= v <= torch.finfo(cond.dtype).max):  # checked here, on the host
            raise fail(where, f"`{name}` holds invalid sizes {[v] * min(6, B * K)}; expected finite values >= 0.",
                       "radii are distances in pixels; use 0 for 'the conditioner's own pixel only'.")
        return torch.full((B, K), v, dtype=cond.dtype, device=cond.device)
    if isinstance(value, Tensor):
        t = value.to(device=cond.device, dtype=cond.dtype)
        if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1):
            r = t.reshape(1, 1).expand(B, K)
        elif t.dim() == 1 and t.shape[0] == B:
            r = t[:, None].expand(B, K)
        elif t.dim() == 2 and tuple(t.shape) == (B, K):
            r = t
        else:
            raise fail(where, f"`{name}` has shape {tuple(t.shape)}, expected a scalar, [B] = [{B}] or "
                       f"[B, K] = [{B}, {K}].")
    else:
        raise fail(where, f"`{name}` is {describe(value)}, expected a number, a tensor, or a callable of sigma.")
    values = r.detach()
    check_flag(~torch.isfinite(r) | (r < 0), lambda: fail(
        where, f"`{name}` holds invalid sizes {values.flatten()[:6].tolist()}; expected finite values >= 0.",
        "radii are distances in pixels; use 0 for 'the conditioner's own pixel only'."))
    return r


def disc_masks(cond: Conditions, size: tuple[int, int], radius: RadiusSpec, *, sigma: Any = None) -> Tensor:
    """Hard discs: ``mask[b, k, i, j] = valid[b, k] and ||(i, j) - pos[b, k]||_2 <= radius[b, k]``.

    Returns:
        bool ``[B, K, H, W]``.

    Examples:
        >>> c = Conditions.from_lists([[(1.0, 1.0)]])
        >>> disc_masks(c, (3, 3), 1.0)[0, 0].int().tolist()
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    """
    where = "disc_masks"
    cond = _check_cond(cond, where)
    r = resolve_radius(radius, cond, sigma, where)
    return _squared_distances(cond, _check_size(size, where, cond)) <= _sqrt_threshold(r)[:, :, None, None]


def box_masks(cond: Conditions, size: tuple[int, int], half_size: RadiusSpec, *, sigma: Any = None) -> Tensor:
    """Hard boxes: ``mask[b, k, i, j] = valid[b, k] and max(|i - row|, |j - col|) <= half_size[b, k]``.

    Returns:
        bool ``[B, K, H, W]``.

    Examples:
        >>> c = Conditions.from_lists([[(1.0, 1.0)]])
        >>> int(box_masks(c, (4, 4), 1.0).sum())
        9
    """
    where = "box_masks"
    cond = _check_cond(cond, where)
    r = resolve_radius(half_size, cond, sigma, where, "half_size")
    return distances(cond, _check_size(size, where, cond), "chebyshev") <= r[:, :, None, None]


def gaussian_masks(cond: Conditions, size: tuple[int, int], std: RadiusSpec, *, sigma: Any = None,
                   truncate: float | None = None) -> Tensor:
    """Soft masks: ``mask[b, k, i, j] = exp(-d**2 / (2 * std[b, k]**2))`` with ``d`` the Euclidean distance.

    Zero for padding slots and, if ``truncate`` is given, where ``d > truncate * std`` (so the mask has
    bounded support, which locality needs). ``std = 0`` gives the conditioner's own pixel only.

    Returns:
        float ``[B, K, H, W]`` in ``[0, 1]`` (the dtype of ``cond``).

    Examples:
        >>> c = Conditions.from_lists([[(0.0, 0.0)]])
        >>> round(gaussian_masks(c, (1, 2), 1.0)[0, 0, 0, 1].item(), 4)   # exp(-1/2)
        0.6065
    """
    where = "gaussian_masks"
    cond = _check_cond(cond, where)
    s = resolve_radius(std, cond, sigma, where, "std")[:, :, None, None]
    if truncate is not None and not truncate > 0:
        raise fail(where, f"`truncate` is {truncate!r}, expected a positive number of standard deviations.")
    d2 = _squared_distances(cond, _check_size(size, where, cond))
    finite = torch.isfinite(d2)
    zero = torch.zeros((), dtype=d2.dtype, device=d2.device)
    d0 = torch.where(finite, d2, zero)  # squared distance, 0 for padding
    safe = torch.where(s > 0, s, torch.ones((), dtype=s.dtype, device=s.device))
    m = torch.where(s > 0, torch.exp(-d0 / (2 * safe**2)), (d0 == 0).to(d2.dtype))
    keep = finite if truncate is None else finite & (torch.sqrt(d0.detach()) <= truncate * s)
    return torch.where(keep, m, zero)


def nearest_conditioner(cond: Conditions, size: tuple[int, int], *, max_distance: RadiusSpec | None = None,
                        sigma: Any = None) -> Tensor:
    """``[B, H, W]`` long: the slot of the nearest valid conditioner (Euclidean), ``-1`` if none.

    With ``max_distance``, pixels farther than it from their nearest conditioner get ``-1``. Ties go to
    the lower slot index.

    Examples:
        >>> c = Conditions.from_lists([[(0.0, 0.0), (0.0, 3.0)]])
        >>> nearest_conditioner(c, (1, 4))[0].tolist()
        [[0, 0, 1, 1]]
    """
    where = "nearest_conditioner"
    cond = _check_cond(cond, where)
    H, W = _check_size(size, where, cond)
    B = cond.batch_size
    if cond.num_slots == 0:
        return torch.full((B, H, W), -1, dtype=torch.long, device=cond.device)
    d = distances(cond, (H, W), "euclidean")
    dmin, idx = d.min(dim=1)
    out = torch.where(torch.isfinite(dmin), idx, torch.full_like(idx, -1))
    if max_distance is not None:
        r = resolve_radius(max_distance, cond, sigma, where, "max_distance")
        r_near = torch.gather(r, 1, idx.clamp(min=0).flatten(1)).view(B, H, W)
        out = torch.where(dmin <= r_near, out, torch.full_like(out, -1))
    return out


def voronoi_masks(cond: Conditions, size: tuple[int, int], *, max_distance: RadiusSpec | None = None,
                  sigma: Any = None) -> Tensor:
    """bool ``[B, K, H, W]``: each pixel belongs to its nearest conditioner only (a partition).

    The one-hot form of :func:`nearest_conditioner`; with ``max_distance`` the cells are clipped to
    discs, so the masks are disjoint regions as in conditional projective composition.
    """
    idx = nearest_conditioner(cond, size, max_distance=max_distance, sigma=sigma)
    K = cond.num_slots
    ks = torch.arange(K, device=idx.device).view(1, K, 1, 1)
    return idx[:, None] == ks


def union(masks: Tensor) -> Tensor:
    """``[B, 1, H, W]``: the union (max over ``K``) of a mask batch ``[B, K, H, W]``; zero when ``K = 0``.

    Examples:
        >>> m = torch.tensor([[[[1, 0]], [[0, 1]]]]).bool()   # [1, 2, 1, 2]
        >>> union(m).int().tolist()
        [[[[1, 1]]]]
    """
    if not isinstance(masks, Tensor) or masks.dim() != 4:
        raise fail("union", f"`masks` is {describe(masks)}, expected a [B, K, H, W] tensor.")
    if masks.shape[1] == 0:
        return torch.zeros(masks.shape[0], 1, *masks.shape[2:], dtype=masks.dtype, device=masks.device)
    return masks.amax(dim=1, keepdim=True)


@runtime_checkable
class MaskRule(Protocol):
    """A locality rule: ``rule(cond, size, sigma=None) -> [B, K, H, W]`` masks (bool or in ``[0, 1]``).

    Rules declare ``support_radius(sigma)``: an upper bound (pixels, Chebyshev) on how far from its
    conditioner a mask entry can be non-zero, or ``None`` if unbounded. Networks and the intervention use
    it to compute conditioner radii. A rule may also declare ``fixed_size = True`` when its masks are the
    same at every sigma: a composition then computes them once per image size and reads nothing back per
    step (the library's rules do when their size is a plain number; a rule without it is recomputed).
    """

    def __call__(self, cond: Conditions, size: tuple[int, int], sigma: Any = None) -> Tensor: ...

    def support_radius(self, sigma: Any = None) -> float | None: ...


def _const_max(spec: RadiusSpec, sigma: Any, bound: float | None = None) -> float | None:
    v: float | None = None
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        v = float(spec)
    elif isinstance(spec, Tensor):
        v = float(spec.max()) if spec.numel() else 0.0
    elif callable(spec) and sigma is not None:
        out = spec(sigma if isinstance(sigma, Tensor) else torch.as_tensor([float(sigma)]))
        v = float(torch.as_tensor(out).max())
    if bound is None:
        return v
    return float(bound) if v is None else min(v, float(bound))


def _bounded(spec: RadiusSpec, bound: float | None) -> RadiusSpec:
    """``spec`` clamped to at most ``bound`` (for every sigma); ``spec`` itself when ``bound`` is None."""
    if bound is None:
        return spec
    if not (isinstance(bound, (int, float)) and not isinstance(bound, bool) and bound >= 0):
        raise fail("MaskRule", f"`bound` is {bound!r}, expected a size >= 0 in pixels (or None).")
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return min(float(spec), float(bound))
    if isinstance(spec, Tensor):
        return spec.clamp(max=float(bound))
    if callable(spec):
        return lambda s: torch.as_tensor(spec(s)).clamp(max=float(bound))
    return spec


def _fixed(spec: RadiusSpec) -> bool:
    """Whether a size spec is a plain number: the same masks at every sigma (a tensor may change in place)."""
    return isinstance(spec, (int, float)) and not isinstance(spec, bool)


@dataclass(frozen=True)
class DiscRule:
    """Hard disc rule (:func:`disc_masks`): a pixel sees conditioner ``k`` iff within ``radius`` of it.

    ``bound`` (optional) caps the radius for every sigma, ``radius <- min(radius, bound)``, so a
    sigma-dependent rule still declares a finite :meth:`support_radius` (networks need one).

    Examples:
        >>> rule = DiscRule(2.0)
        >>> rule(Conditions.from_lists([[(4.0, 4.0)]]), (9, 9)).sum().item()
        13
        >>> grow = DiscRule(lambda s: 1.0 + s, bound=2.0)      # wider at high noise, never beyond 2 px
        >>> grow.support_radius(), grow.support_radius(0.5)
        (2.0, 1.5)
    """

    radius: RadiusSpec
    bound: float | None = None

    def __call__(self, cond: Conditions, size: tuple[int, int], sigma: Any = None) -> Tensor:
        return disc_masks(cond, size, _bounded(self.radius, self.bound), sigma=sigma)

    @property
    def fixed_size(self) -> bool:
        """Whether the masks are the same at every sigma (``radius`` a plain number): compositions keep them."""
        return _fixed(self.radius)

    def support_radius(self, sigma: Any = None) -> float | None:
        """The largest radius (pixels); ``bound``, or ``None``, for a sigma-dependent radius without ``sigma``."""
        return _const_max(self.radius, sigma, self.bound)


@dataclass(frozen=True)
class BoxRule:
    """Hard box rule (:func:`box_masks`) of Chebyshev half-size ``half_size`` (capped at ``bound`` if given)."""

    half_size: RadiusSpec
    bound: float | None = None

    def __call__(self, cond: Conditions, size: tuple[int, int], sigma: Any = None) -> Tensor:
        return box_masks(cond, size, _bounded(self.half_size, self.bound), sigma=sigma)

    @property
    def fixed_size(self) -> bool:
        """Whether the masks are the same at every sigma (``half_size`` a plain number): compositions keep them."""
        return _fixed(self.half_size)

    def support_radius(self, sigma: Any = None) -> float | None:
        """The largest half-size (pixels)."""
        return _const_max(self.half_size, sigma, self.bound)


@dataclass(frozen=True)
class GaussianRule:
    """Soft Gaussian rule (:func:`gaussian_masks`), truncated at ``truncate`` standard deviations.

    ``bound`` (optional) caps the standard deviation for every sigma.
    """

    std: RadiusSpec
    truncate: float | None = 3.0
    bound: float | None = None

    def __call__(self, cond: Conditions, size: tuple[int, int], sigma: Any = None) -> Tensor:
        return gaussian_masks(cond, size, _bounded(self.std, self.bound), sigma=sigma, truncate=self.truncate)

    @property
    def fixed_size(self) -> bool:
        """Whether the masks are the same at every sigma (``std`` a plain number): compositions keep them."""
        return _fixed(self.std)

    def support_radius(self, sigma: Any = None) -> float | None:
        """``truncate * std`` (pixels); ``None`` if untruncated."""
        s = _const_max(self.std, sigma, self.bound)
        return None if (s is None or self.truncate is None) else s * self.truncate
