r"""Hypothesis strategies for localscore objects: images, noise levels, conditioner sets, masks.

Images are generated from a drawn seed and a drawn distribution (fast, reproducible, and still shrinkable
through the seed, the sizes and the distribution), not element by element. Positions are ``(row, col)``
in pixels; ``min_separation`` is a Chebyshev distance unless ``metric="euclidean"``.

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

from .._errors import fail
from ..conditions import Conditions

__all__ = ["conditions", "images", "masks", "sigmas", "sizes"]

IntSpec = int | tuple[int, int]


def _ints(spec: IntSpec, name: str) -> st.SearchStrategy[int]:
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 1:
            raise fail("localscore.testing.strategies", f"`{name}` is {spec}, expected >= 1.")
        return st.just(spec)
    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(v, int) for v in spec) and 1 <= spec[0] <= spec[1]:
        return st.integers(spec[0], spec[1])
    raise fail("localscore.testing.strategies", f"`{name}` is {spec!r}, expected an int >= 1 or a (lo, hi) range.")


def sigmas(min_value: float = 0.01, max_value: float = 80.0) -> st.SearchStrategy[float]:
    """Noise levels, log-uniform in ``[min_value, max_value]``.

    Examples:
        >>> from hypothesis import find
        >>> find(sigmas(0.1, 10.0), lambda s: s > 5.0) <= 10.0
        True
    """
    if not 0 < min_value <= max_value:
        raise fail("sigmas", f"expected 0 < min_value <= max_value, got {min_value!r}, {max_value!r}.")
    lo, hi = math.log(min_value), math.log(max_value)
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(
        lambda t: float(min(max(math.exp(t), min_value), max_value)))


def sizes(min_size: int = 4, max_size: int = 16) -> st.SearchStrategy[tuple[int, int]]:
    """Image sizes ``(H, W)`` with both sides in ``[min_size, max_size]``."""
    return st.tuples(st.integers(min_size, max_size), st.integers(min_size, max_size))


@st.composite
def images(
    draw: Any,
    batch: IntSpec = 1,
    channels: IntSpec = 1,
    height: IntSpec = 8,
    width: IntSpec = 8,
    *,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    kinds: tuple[str, ...] = ("normal", "uniform", "constant", "sparse", "checker"),
) -> torch.Tensor:
    """Images ``[B, C, H, W]``: ``scale`` times Gaussian, uniform [-1, 1], a constant, sparse spikes or a
    checkerboard, from a drawn seed. Each of ``batch``, ``channels``, ``height``, ``width`` is an int or a
    ``(lo, hi)`` range.

    Examples:
        >>> from hypothesis import find
        >>> find(images(batch=2, channels=3), lambda x: True).shape
        torch.Size([2, 3, 8, 8])
    """
    B, C = draw(_ints(batch, "batch")), draw(_ints(channels, "channels"))
    H, W = draw(_ints(height, "height")), draw(_ints(width, "width"))
    kind = draw(st.sampled_from(kinds))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    shape = (B, C, H, W)
    if kind == "normal":
        x = torch.randn(shape, generator=g, dtype=torch.float64)
    elif kind == "uniform":
        x = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    elif kind == "constant":
        x = torch.full(shape, float(torch.rand((), generator=g, dtype=torch.float64)) * 2 - 1, dtype=torch.float64)
    elif kind == "sparse":
        x = torch.randn(shape, generator=g, dtype=torch.float64) * (torch.rand(shape, generator=g) < 0.1)
    elif kind == "checker":
        r = torch.arange(H).view(H, 1)
        c = torch.arange(W).view(1, W)
        x = (((r + c) % 2) * 2 - 1).to(torch.float64).expand(shape).clone()
    else:
        raise fail("images", f"unknown kind {kind!r}; expected among normal, uniform, constant, sparse, checker.")
    return (scale * x).to(dtype)


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


@st.composite
def masks(
    draw: Any,
    batch: IntSpec = 1,
    slots: IntSpec = 2,
    height: IntSpec = 8,
    width: IntSpec = 8,
    *,
    soft: bool = False,
    density: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Locality masks ``[B, K, H, W]``: bool (``soft=False``) with a drawn density, or floats in ``[0, 1]``.

    Examples:
        >>> from hypothesis import find
        >>> m = find(masks(slots=3, soft=True), lambda m: True)
        >>> m.shape, bool(((m >= 0) & (m <= 1)).all())
        (torch.Size([1, 3, 8, 8]), True)
    """
    B, K = draw(_ints(batch, "batch")), draw(_ints(slots, "slots"))
    H, W = draw(_ints(height, "height")), draw(_ints(width, "width"))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(B, K, H, W, generator=g, dtype=torch.float64)
    if soft:
        return u
    p = draw(st.floats(density[0], density[1], allow_nan=False))
    return u < p
