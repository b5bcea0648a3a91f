"""Object attributes of the CLEVR-like scenes, and their encoding as conditioner attributes.

Each object has a colour (8 CLEVR colours), a shape (disc, square, triangle) and a size (small,
large). In a :class:`~localscore.Conditions` batch they are one ``attr`` vector of length
:data:`ATTR_DIM` ``= 13``, three one-hot blocks side by side::

    attr[..., 0:8]    colour   gray, red, blue, green, brown, purple, cyan, yellow   (COLOR_SLICE)
    attr[..., 8:11]   shape    disc, square, triangle                                 (SHAPE_SLICE)
    attr[..., 11:13]  size     small, large                                           (SIZE_SLICE)

An all-zero block means "unspecified" (index ``-1``), for layouts that leave shape or size open.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..._errors import describe, fail

__all__ = [
    "ATTR_DIM",
    "COLORS",
    "COLOR_RGB",
    "COLOR_SLICE",
    "SHAPES",
    "SHAPE_SLICE",
    "SIZES",
    "SIZE_SLICE",
    "color_index",
    "decode_attributes",
    "encode_attributes",
    "shape_index",
    "size_index",
]

COLORS: tuple[str, ...] = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
"""The 8 CLEVR colour names, in attribute order."""

SHAPES: tuple[str, ...] = ("disc", "square", "triangle")
"""The shape names, in attribute order."""

SIZES: tuple[str, ...] = ("small", "large")
"""The size names, in attribute order."""

_RGB_255 = (
    (87, 87, 87),     # gray
    (173, 35, 35),    # red
    (42, 75, 215),    # blue
    (29, 105, 20),    # green
    (129, 74, 25),    # brown
    (129, 38, 192),   # purple
    (41, 208, 208),   # cyan
    (255, 238, 51),   # yellow
)
COLOR_RGB: Tensor = torch.tensor(_RGB_255, dtype=torch.float32) / 255.0
"""``[8, 3]`` RGB values in ``[0, 1]`` of the CLEVR colours (CLEVR's published palette)."""

COLOR_SLICE = slice(0, 8)
"""Where the colour one-hot block lies in an attribute vector."""
SHAPE_SLICE = slice(8, 11)
"""Where the shape one-hot block lies in an attribute vector."""
SIZE_SLICE = slice(11, 13)
"""Where the size one-hot block lies in an attribute vector."""
ATTR_DIM = 13
"""Length of an attribute vector: 8 colours + 3 shapes + 2 sizes."""


def _index(name: Any, names: Sequence[str], kind: str, where: str) -> int:
    if isinstance(name, str):
        key = name.strip().lower()
        if key in names:
            return names.index(key)
    raise fail(where, f"unknown {kind} {name!r}; expected one of {', '.join(names)}.",
               f"use one of the {len(names)} {kind} names above (lower case).")


def color_index(name: str) -> int:
    """Index of a colour name in :data:`COLORS` (case-insensitive).

    Examples:
        >>> color_index("cyan")
        6
    """
    return _index(name, COLORS, "colour", "color_index")


def shape_index(name: str) -> int:
    """Index of a shape name in :data:`SHAPES` (case-insensitive).

    Examples:
        >>> shape_index("triangle")
        2
    """
    return _index(name, SHAPES, "shape", "shape_index")


def size_index(name: str) -> int:
    """Index of a size name in :data:`SIZES` (case-insensitive).

    Examples:
        >>> size_index("large")
        1
    """
    return _index(name, SIZES, "size", "size_index")


def _as_index_tensor(value: Any, where: str, name: str, n: int) -> Tensor:
    t = torch.as_tensor(value)
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise fail(where, f"argument `{name}` has dtype {t.dtype}, expected integer indices.",
                   f"pass `{name}` as a long tensor of indices (-1 = unspecified).")
    t = t.long()
    if bool(((t < -1) | (t >= n)).any()):
        bad = t[(t < -1) | (t >= n)].flatten()[:4].tolist()
        raise fail(where, f"argument `{name}` holds indices {bad}, expected values in -1..{n - 1}.",
                   "use the index helpers (color_index, shape_index, size_index); -1 means unspecified.")
    return t


def encode_attributes(color: Any, shape: Any, size: Any, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot attribute vectors ``[..., 13]`` from index tensors of one common shape ``[...]``.

    ``attr = cat(one_hot(color, 8), one_hot(shape, 3), one_hot(size, 2))``; an index of ``-1`` gives
    an all-zero block (unspecified).

    Args:
        color: ``[...]`` integer indices into :data:`COLORS`.
        shape: ``[...]`` integer indices into :data:`SHAPES`.
        size: ``[...]`` integer indices into :data:`SIZES`.
        dtype: floating dtype of the result.

    Returns:
        ``[..., 13]`` tensor on the indices' device.

    Examples:
        >>> a = encode_attributes(torch.tensor([1]), torch.tensor([0]), torch.tensor([-1]))
        >>> a.tolist()
        [[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]
    """
    where = "encode_attributes"
    c = _as_index_tensor(color, where, "color", len(COLORS))
    s = _as_index_tensor(shape, where, "shape", len(SHAPES))
    z = _as_index_tensor(size, where, "size", len(SIZES))
    if not (c.shape == s.shape == z.shape):
        raise fail(where, f"`color`, `shape` and `size` have shapes {tuple(c.shape)}, {tuple(s.shape)}, "
                   f"{tuple(z.shape)}; expected one common shape.")
    blocks = []
    for idx, n in ((c, len(COLORS)), (s, len(SHAPES)), (z, len(SIZES))):
        onehot = torch.nn.functional.one_hot(idx.clamp(min=0), n).to(dtype)
        blocks.append(onehot * (idx >= 0).unsqueeze(-1).to(dtype))
    return torch.cat(blocks, dim=-1)


def decode_attributes(attr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Index tensors ``(color, shape, size)``, each ``[...]`` long, from attribute vectors ``[..., 13]``.

    Each block is decoded by its argmax; a block whose entries are all ``<= 0`` decodes to ``-1``
    (unspecified). Inverse of :func:`encode_attributes`.

    Examples:
        >>> c, s, z = decode_attributes(encode_attributes(torch.tensor([7]), torch.tensor([2]), torch.tensor([1])))
        >>> COLORS[c[0]], SHAPES[s[0]], SIZES[z[0]]
        ('yellow', 'triangle', 'large')
    """
    where = "decode_attributes"
    if not isinstance(attr, torch.Tensor) or not attr.is_floating_point():
        raise fail(where, f"argument `attr` is {describe(attr)}, expected a floating tensor [..., {ATTR_DIM}].")
    if attr.dim() == 0 or attr.shape[-1] != ATTR_DIM:
        raise fail(where, f"argument `attr` has shape {tuple(attr.shape)}, expected [..., {ATTR_DIM}] "
                   "(8 colours + 3 shapes + 2 sizes).",
                   "build attributes with `encode_attributes`.")
    out = []
    for sl in (COLOR_SLICE, SHAPE_SLICE, SIZE_SLICE):
        block = attr[..., sl]
        idx = block.argmax(-1)
        out.append(torch.where(block.max(-1).values > 0, idx, torch.full_like(idx, -1)))
    return out[0], out[1], out[2]
