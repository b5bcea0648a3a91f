r"""Hypothesis strategies for localscore objects: images, noise levels, conditioner sets, masks.

Images are generated from a drawn seed and a drawn distribution (fast, reproducible, and still shrinkable
through the seed, the sizes and the distribution), not element by element. Positions are ``(row, col)``
in pixels; ``min_separation`` is a Chebyshev distance unless ``metric="euclidean"``.

Failure reports stay short and reproducible. The strategies return plain values (a ``torch.Tensor``, a
:class:`~localscore.Conditions`), never wrappers, so a test sees exactly what it would build itself; what
gets printed is chosen around them:

* :func:`images` and :func:`masks` build their tensors with :func:`hypothesis.strategies.builds`, so
  Hypothesis reports the call that made the tensor, e.g. ``x=image_from_seed(batch=1, channels=1,
  height=8, width=8, kind='normal', seed=1234, dtype=torch.float32, scale=1.0)``, instead of its values;
  calling :func:`image_from_seed` (or :func:`mask_from_seed`) with those arguments rebuilds it.
* :class:`~localscore.Conditions` prints its sizes and its valid positions by slot (a summary of ``pos``
  beyond 16 objects).
* Tensors a test computes from these print as torch prints them (elided beyond 1000 entries).

Examples:
    >>> from hypothesis import given, settings
    >>> from localscore.testing import strategies as lst
    >>> @settings(max_examples=5, derandomize=True, deadline=None)
    ... @given(lst.conditions(height=16, width=16, max_objects=3, min_separation=4.0))
    ... def check(c):
    ...     assert c.num_slots <= 3
    >>> check()
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from hypothesis import assume
from hypothesis import strategies as st

from .._checks import MAX_ELEMENTS as _MAX_ELEMENTS
from .._checks import check_elements
from .._errors import describe, fail
from ..conditions import Conditions

__all__ = ["conditions", "image_from_seed", "images", "mask_from_seed", "masks", "sigmas", "sizes"]

IntSpec = int | tuple[int, int]

MAX_ELEMENTS = _MAX_ELEMENTS
"""The most elements of one drawn tensor (images ``[B, C, H, W]``, masks ``[B, K, H, W]``); a strategy whose
largest draw would exceed it is refused when it is built, before any draw. Read at call time
(``localscore.testing.strategies.MAX_ELEMENTS``)."""
MAX_DRAWS = 2**16
"""The most objects (``batch_size * max_objects``) :func:`conditions` draws one by one from hypothesis."""
_LIMIT = "localscore.testing.strategies.MAX_ELEMENTS"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _hi(spec: IntSpec) -> int:
    return spec if isinstance(spec, int) else spec[1]


def _ints(spec: IntSpec, name: str) -> st.SearchStrategy[int]:
    if _is_int(spec):
        if spec < 1:  # type: ignore[operator]
            raise fail("localscore.testing.strategies", f"`{name}` is {spec}, expected >= 1.")
        return st.just(spec)  # type: ignore[arg-type]
    if isinstance(spec, tuple) and len(spec) == 2 and all(_is_int(v) for v in spec) and 1 <= spec[0] <= spec[1]:
        return st.integers(spec[0], spec[1])
    raise fail("localscore.testing.strategies", f"`{name}` is {spec!r}, expected an int >= 1 or a (lo, hi) range "
               "with 1 <= lo <= hi.")


def _number(value: Any, where: str, name: str, *, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        rng = "" if (lo, hi) == (-math.inf, math.inf) else f" in [{lo}, {hi}]"
        raise fail(where, f"`{name}` is {describe(value)}, expected a finite number{rng}.")
    return float(value)


def _float_dtype(dtype: Any, where: str) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise fail(where, f"`dtype` is {describe(dtype)}, expected a floating torch.dtype (e.g. torch.float32).")


def _bound(shape: tuple[int, ...], where: str, what: str) -> None:
    check_elements(math.prod(shape), MAX_ELEMENTS, where, f"{what} {list(shape)}", "draw smaller tensors",
                   limit_name=_LIMIT)


def sigmas(min_value: float = 0.01, max_value: float = 80.0) -> st.SearchStrategy[float]:
    """Noise levels, log-uniform in ``[min_value, max_value]``.

    Examples:
        >>> from hypothesis import find
        >>> find(sigmas(0.1, 10.0), lambda s: s > 5.0) <= 10.0
        True
    """
    _number(min_value, "sigmas", "min_value")
    _number(max_value, "sigmas", "max_value")
    if not 0 < min_value <= max_value:
        raise fail("sigmas", f"expected 0 < min_value <= max_value, got {min_value!r}, {max_value!r}.")
    lo, hi = math.log(min_value), math.log(max_value)
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(
        lambda t: float(min(max(math.exp(t), min_value), max_value)))


def sizes(min_size: int = 4, max_size: int = 16) -> st.SearchStrategy[tuple[int, int]]:
    """Image sizes ``(H, W)`` with both sides in ``[min_size, max_size]``."""
    side = math.isqrt(MAX_ELEMENTS)
    if not (_is_int(min_size) and _is_int(max_size) and 1 <= min_size <= max_size <= side):
        raise fail("sizes", f"`min_size`, `max_size` are {min_size!r}, {max_size!r}; expected ints with "
                   f"1 <= min_size <= max_size <= {side} (an image of max_size**2 pixels at most MAX_ELEMENTS).")
    return st.tuples(st.integers(min_size, max_size), st.integers(min_size, max_size))


_KINDS = ("normal", "uniform", "constant", "sparse", "checker")


def image_from_seed(
    batch: int,
    channels: int,
    height: int,
    width: int,
    kind: str,
    seed: int,
    *,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
) -> torch.Tensor:
    """The image ``[B, C, H, W]`` that :func:`images` draws for these parameters (failure reports name this call).

    ``kind`` is ``"normal"`` (Gaussian), ``"uniform"`` (in [-1, 1]), ``"constant"``, ``"sparse"`` (10 %
    Gaussian spikes) or ``"checker"`` (a +-1 checkerboard); the values are ``scale`` times those, drawn with
    a CPU generator seeded with ``seed``.

    Examples:
        >>> x = image_from_seed(1, 2, 4, 4, "checker", 0, dtype=torch.float64)
        >>> x.shape, x[0, 0, 0].tolist()
        (torch.Size([1, 2, 4, 4]), [-1.0, 1.0, -1.0, 1.0])
    """
    where = "image_from_seed"
    for name, v in (("batch", batch), ("channels", channels), ("height", height), ("width", width)):
        if not _is_int(v) or v < 1:
            raise fail(where, f"`{name}` is {describe(v)}, expected an int >= 1.")
    if not _is_int(seed):
        raise fail(where, f"`seed` is {describe(seed)}, expected an int.")
    _float_dtype(dtype, where)
    _number(scale, where, "scale")
    shape = (batch, channels, height, width)
    _bound(shape, where, "the image [B, C, H, W] =")
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        x = torch.randn(shape, generator=g, dtype=torch.float64)
    elif kind == "uniform":
        x = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    elif kind == "constant":
        x = torch.full(shape, float(torch.rand((), generator=g, dtype=torch.float64)) * 2 - 1, dtype=torch.float64)
    elif kind == "sparse":
        x = torch.randn(shape, generator=g, dtype=torch.float64) * (torch.rand(shape, generator=g) < 0.1)
    elif kind == "checker":
        r = torch.arange(height).view(height, 1)
        c = torch.arange(width).view(1, width)
        x = (((r + c) % 2) * 2 - 1).to(torch.float64).expand(shape).clone()
    else:
        raise fail("images", f"unknown kind {kind!r}; expected among {', '.join(_KINDS)}.")
    return (scale * x).to(dtype)


def images(
    batch: IntSpec = 1,
    channels: IntSpec = 1,
    height: IntSpec = 8,
    width: IntSpec = 8,
    *,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    kinds: tuple[str, ...] = _KINDS,
) -> st.SearchStrategy[torch.Tensor]:
    """Images ``[B, C, H, W]``: ``scale`` times Gaussian, uniform [-1, 1], a constant, sparse spikes or a
    checkerboard, from a drawn seed (:func:`image_from_seed`). Each of ``batch``, ``channels``, ``height``,
    ``width`` is an int or a ``(lo, hi)`` range. A failure report shows the draw as
    ``image_from_seed(batch=..., ..., seed=...)``.

    Examples:
        >>> from hypothesis import find
        >>> find(images(batch=2, channels=3), lambda x: True).shape
        torch.Size([2, 3, 8, 8])
    """
    _float_dtype(dtype, "images")
    _number(scale, "images", "scale")
    if not isinstance(kinds, (tuple, list)):
        raise fail("images", f"`kinds` is {describe(kinds)}; expected a tuple among {', '.join(_KINDS)}.")
    strategies = [_ints(batch, "batch"), _ints(channels, "channels"), _ints(height, "height"), _ints(width, "width")]
    _bound(tuple(_hi(v) for v in (batch, channels, height, width)), "images", "the largest image [B, C, H, W] =")
    unknown = [k for k in kinds if k not in _KINDS]
    if unknown or not kinds:
        raise fail("images", f"`kinds` is {kinds!r}; expected a non-empty tuple among {', '.join(_KINDS)}.")
    return st.builds(image_from_seed, batch=strategies[0], channels=strategies[1],
                     height=strategies[2], width=strategies[3], kind=st.sampled_from(kinds),
                     seed=st.integers(0, 2**31 - 1), dtype=st.just(dtype), scale=st.just(scale))


@st.composite
def conditions(
    draw: Any,
    batch_size: int = 1,
    *,
    height: int = 16,
    width: int = 16,
    min_objects: int = 0,
    max_objects: int = 4,
    min_separation: float = 0.0,
    metric: Literal["chebyshev", "euclidean"] = "chebyshev",
    margin: float = 0.0,
    attr_dim: int | None = None,
    integer_positions: bool = False,
    padding: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Conditions:
    """Conditioner sets: per image ``min_objects .. max_objects`` positions at least ``min_separation`` apart.

    Positions lie in ``[margin, H - 1 - margin] x [margin, W - 1 - margin]`` (integers when
    ``integer_positions``); attributes (if ``attr_dim``) in ``[-1, 1]``. With ``padding`` the slots are
    padded to ``max_objects`` and valid objects are scattered among the slots (so code that ignores
    ``valid`` or assumes valid slots come first fails). Draws that cannot place ``min_objects``
    separated objects are rejected (``assume``).

    Examples:
        >>> from hypothesis import find
        >>> c = find(conditions(2, min_objects=2, max_objects=2, min_separation=5.0), lambda c: True)
        >>> c.counts().tolist()
        [2, 2]
    """
    where = "conditions"
    for name, v, lo in (("batch_size", batch_size, 1), ("height", height, 1), ("width", width, 1),
                        ("min_objects", min_objects, 0), ("max_objects", max_objects, 0)):
        if not _is_int(v) or v < lo:
            raise fail(where, f"`{name}` is {describe(v)}, expected an int >= {lo}.")
    if batch_size * max(max_objects, 1) > MAX_DRAWS:
        raise fail(where, f"`batch_size` * `max_objects` = {batch_size} * {max_objects} objects to draw one by one, "
                   f"over MAX_DRAWS = {MAX_DRAWS:,} (localscore.testing.strategies.MAX_DRAWS).",
                   "draw fewer images or objects per example (properties need few).")
    _number(min_separation, where, "min_separation", lo=0.0)
    _number(margin, where, "margin")
    if metric not in ("chebyshev", "euclidean"):
        raise fail(where, f"`metric` is {metric!r}, expected 'chebyshev' or 'euclidean'.")
    if attr_dim is not None and (not _is_int(attr_dim) or attr_dim < 1 or attr_dim > 4096):
        raise fail(where, f"`attr_dim` is {describe(attr_dim)}, expected None or an int in [1, 4096].")
    _float_dtype(dtype, where)
    if not 0 <= min_objects <= max_objects:
        raise fail(where, f"expected 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}.")
    if margin < 0 or 2 * margin > min(height, width) - 1:
        raise fail(where, f"`margin` = {margin} leaves no room in a {height} x {width} image.")
    lo_r, hi_r = margin, height - 1 - margin
    lo_c, hi_c = margin, width - 1 - margin
    if integer_positions:
        coord_r = st.integers(math.ceil(lo_r), math.floor(hi_r)).map(float)
        coord_c = st.integers(math.ceil(lo_c), math.floor(hi_c)).map(float)
    else:
        coord_r = st.floats(lo_r, hi_r, allow_nan=False)
        coord_c = st.floats(lo_c, hi_c, allow_nan=False)
    K = max_objects
    pos = torch.zeros(batch_size, K, 2, dtype=torch.float64)
    attr = None if attr_dim is None else torch.zeros(batch_size, K, attr_dim, dtype=torch.float64)
    valid = torch.zeros(batch_size, K, dtype=torch.bool)
    for b in range(batch_size):
        n = draw(st.integers(min_objects, max_objects))
        cands = draw(st.lists(st.tuples(coord_r, coord_c), min_size=n, max_size=n))
        kept: list[tuple[float, float]] = []
        for p in cands:
            ok = True
            for q in kept:
                dr, dc = abs(p[0] - q[0]), abs(p[1] - q[1])
                d = max(dr, dc) if metric == "chebyshev" else math.hypot(dr, dc)
                if d < min_separation:
                    ok = False
                    break
            if ok:
                kept.append(p)
        assume(len(kept) >= min_objects)
        slots = list(range(K))
        if padding and len(kept) < K:
            slots = draw(st.permutations(list(range(K))))[: len(kept)]
        for p, k in zip(kept, slots):
            pos[b, k] = torch.tensor(p, dtype=torch.float64)
            valid[b, k] = True
            if attr is not None:
                A = attr.shape[-1]
                vals = draw(st.lists(st.floats(-1, 1, allow_nan=False), min_size=A, max_size=A))
                attr[b, k] = torch.tensor(vals, dtype=torch.float64)
    if not padding:
        c = Conditions(pos, attr, valid).compact()
        return c.to(dtype=dtype)
    return Conditions(pos.to(dtype), None if attr is None else attr.to(dtype), valid)


def mask_from_seed(batch: int, slots: int, height: int, width: int, seed: int,
                   density: float | None = None) -> torch.Tensor:
    """The mask ``[B, K, H, W]`` that :func:`masks` draws for these parameters (failure reports name this call):
    ``u`` uniform in ``[0, 1)`` from a CPU generator seeded with ``seed`` (float64), or ``u < density`` (bool).

    Examples:
        >>> mask_from_seed(1, 2, 3, 3, seed=0, density=0.0).any().item()
        False
    """
    where = "mask_from_seed"
    for name, v in (("batch", batch), ("slots", slots), ("height", height), ("width", width)):
        if not _is_int(v) or v < 1:
            raise fail(where, f"`{name}` is {describe(v)}, expected an int >= 1.")
    if not _is_int(seed):
        raise fail(where, f"`seed` is {describe(seed)}, expected an int.")
    if density is not None:
        _number(density, where, "density", lo=0.0, hi=1.0)
    _bound((batch, slots, height, width), where, "the mask [B, K, H, W] =")
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(batch, slots, height, width, generator=g, dtype=torch.float64)
    return u if density is None else u < density


def masks(
    batch: IntSpec = 1,
    slots: IntSpec = 2,
    height: IntSpec = 8,
    width: IntSpec = 8,
    *,
    soft: bool = False,
    density: tuple[float, float] = (0.0, 1.0),
) -> st.SearchStrategy[torch.Tensor]:
    """Locality masks ``[B, K, H, W]``: bool (``soft=False``) with a drawn density, or floats in ``[0, 1]``
    (:func:`mask_from_seed`; a failure report shows the draw as ``mask_from_seed(batch=..., ..., seed=...)``).

    Examples:
        >>> from hypothesis import find
        >>> m = find(masks(slots=3, soft=True), lambda m: True)
        >>> m.shape, bool(((m >= 0) & (m <= 1)).all())
        (torch.Size([1, 3, 8, 8]), True)
    """
    where = "masks"
    if not (isinstance(density, (tuple, list)) and len(density) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in density)
            and 0 <= density[0] <= density[1] <= 1):
        raise fail(where, f"`density` is {describe(density)}, expected (lo, hi) with 0 <= lo <= hi <= 1.")
    sizes = [_ints(batch, "batch"), _ints(slots, "slots"), _ints(height, "height"), _ints(width, "width")]
    _bound(tuple(_hi(v) for v in (batch, slots, height, width)), where, "the largest mask [B, K, H, W] =")
    dens = st.none() if soft else st.floats(density[0], density[1], allow_nan=False)
    return st.builds(mask_from_seed, batch=sizes[0], slots=sizes[1],
                     height=sizes[2], width=sizes[3], seed=st.integers(0, 2**31 - 1),
                     density=dens)
