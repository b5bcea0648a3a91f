r"""Procedural CLEVR-like scenes: configuration, random layouts, and a vectorised torch renderer.

A scene is a set of objects on a background. Each object has a centre ``(row, col)`` in pixels
(origin at the top-left pixel centre), a colour, a shape and a size (see
:mod:`localscore.lengthgen.data.attributes`). Geometry, for an object of radius ``r`` (``r`` depends on its
size, see :attr:`SceneConfig.radii`) with centre ``c`` and pixel offset ``d = p - c``:

* disc: signed distance ``sdf = |d| - r``;
* square (axis-aligned, half side ``0.85 r``): ``sdf = max(|d_row|, |d_col|) - 0.85 r``;
* triangle (equilateral, apex up, circumradius ``R = 1.25 r``, centre = centroid):
  ``sdf = max(d_row, -d_row / 2 - (sqrt(3) / 2) d_col, -d_row / 2 + (sqrt(3) / 2) d_col) - R / 2``.

Anti-aliasing: the coverage of a pixel of a disc or triangle is ``a = clamp(0.5 - sdf, 0, 1)`` (a
one-pixel linear ramp across the edge, the box-filter coverage of a straight edge; approximate at
corners and for strongly curved edges). A square's coverage is the exact box filter,
``a = o(d_row) o(d_col)`` with ``o(d) = clamp(min(d + 1/2, h) - max(d - 1/2, -h), 0, 1)``, ``h = 0.85 r``.
The *bounding radius* ``b`` of an object is ``r``, ``0.85 sqrt(2) r`` and ``R`` for the three shapes.

Compositing (objects drawn in slot order, ``a_k`` the coverage of object ``k``, ``f_k`` its colour):
``image = bg * prod_k (1 - a_k) + sum_k a_k f_k prod_{j > k} (1 - a_j)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..._config import ConfigMixin
from ..._errors import describe, fail
from ..._repr import summary_repr
from ...conditions import Conditions
from .attributes import ATTR_DIM, COLOR_RGB, COLORS, SHAPES, SIZES, encode_attributes

__all__ = [
    "Labelling",
    "Scene",
    "SceneConfig",
    "bounding_radius",
    "color_concepts",
    "coverage",
    "label_scene",
    "render_scene",
    "sample_scenes",
]

Labelling = Literal["all", "one", "color"]

MAX_OBJECTS = 100
"""The most objects one scene may hold (``SceneConfig.counts``, layouts, ``locality --count``): placement and
rendering cost grow with the square of the count, and no 16..128 px image fits more of the shipped sizes."""

_SQUARE_HALF = 0.85
_TRI_CIRCUM = 1.25
_SQRT3_2 = math.sqrt(3.0) / 2.0
_SHAPE_BOUND = (1.0, _SQUARE_HALF * math.sqrt(2.0), _TRI_CIRCUM)


@dataclass(frozen=True)
class SceneConfig(ConfigMixin):
    """How scenes are drawn and rendered.

    Args:
        resolution: image side ``H = W`` in pixels, 16..128.
        counts: the object counts to draw from, uniformly (e.g. ``(1, 2, 3)`` for training).
        colors: allowed colour names (subset of :data:`~localscore.lengthgen.data.COLORS`).
        shapes: allowed shape names (subset of :data:`~localscore.lengthgen.data.SHAPES`).
        sizes: allowed size names (subset of :data:`~localscore.lengthgen.data.SIZES`).
        radii: object radius ``r`` in pixels for (small, large); ``None`` means
            ``(0.06, 0.09) * resolution``.
        min_gap: minimal gap in pixels between the bounding circles of two objects
            (``|c_i - c_j| >= b_i + b_j + min_gap``), so objects never touch; ``None`` means
            ``max(1, 0.047 * resolution)`` (1.5 px at 32x32).
        min_distance: minimal centre-to-centre distance in pixels (applied on top of ``min_gap``).
        margin: minimal gap in pixels between an object's bounding circle and the image border.
        background: ``"plain"`` or ``"textured"`` (smooth gray noise of amplitude ``texture``).
        background_color: RGB of the background in ``[0, 1]``.
        texture: amplitude of the background texture (used when ``background == "textured"``).
        shading: strength of the soft shading: an object's colour is multiplied by
            ``1 + shading * g`` with ``g = clamp(-(d_row + d_col) / (sqrt(2) b), -1, 1)`` (light from the
            top left). ``0`` is flat.
        shadow: strength of the soft drop shadow (darkening of the background), ``0`` for none.
        labelling: ``"all"`` (every object is a conditioner), ``"one"`` (one randomly chosen
            object is; the others are unlabelled clutter) or ``"color"`` (every object is a *colour concept*:
            its colour only, without a place in the image; see :func:`color_concepts`).
        max_rounds: placement rounds before giving up on a crowded configuration.

    Examples:
        >>> cfg = SceneConfig(resolution=32, counts=(1, 2, 3))
        >>> cfg.object_radii()
        (1.92, 2.88)
    """

    _from_dict_fix = "check the spelling of the scene configuration keys."

    resolution: int = 32
    counts: tuple[int, ...] = (1, 2, 3)
    colors: tuple[str, ...] = COLORS
    shapes: tuple[str, ...] = SHAPES
    sizes: tuple[str, ...] = SIZES
    radii: tuple[float, float] | None = None
    min_gap: float | None = None
    min_distance: float = 0.0
    margin: float = 0.5
    background: Literal["plain", "textured"] = "plain"
    background_color: tuple[float, float, float] = (0.75, 0.75, 0.75)
    texture: float = 0.04
    shading: float = 0.0
    shadow: float = 0.0
    labelling: Labelling = "all"
    max_rounds: int = 200

    def __post_init__(self) -> None:
        where = "SceneConfig"
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or not (
                16 <= self.resolution <= 128):
            raise fail(where, f"`resolution` is {self.resolution!r}, expected an int in 16..128.",
                       "pick an image side between 16 and 128 pixels.")
        counts = tuple(self.counts) if isinstance(self.counts, (list, tuple)) else None
        if not counts or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
            raise fail(where, f"`counts` is {self.counts!r}, expected a non-empty sequence of ints >= 0.",
                       "e.g. counts=(1, 2, 3) for training, counts=tuple(range(11)) for evaluation.")
        if len(counts) > 10_000 or max(counts) > MAX_OBJECTS:
            raise fail(where, f"`counts` asks for {max(counts):,} objects per scene ({len(counts):,} counts), over "
                       f"the limit of {MAX_OBJECTS} objects.", f"use counts of at most {MAX_OBJECTS}.")
        object.__setattr__(self, "counts", counts)
        for name, allowed in (("colors", COLORS), ("shapes", SHAPES), ("sizes", SIZES)):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
                raise fail(where, f"`{name}` is {value!r}, expected a non-empty tuple of names from "
                           f"{allowed}.")
            for v in value:
                if v not in allowed:
                    raise fail(where, f"`{name}` holds {v!r}; expected names from {allowed}.")
            object.__setattr__(self, name, tuple(value))
        if self.radii is not None:
            r = tuple(self.radii)
            if len(r) != 2 or not all(isinstance(v, (int, float)) and 0.5 <= v for v in r) or r[0] > r[1]:
                raise fail(where, f"`radii` is {self.radii!r}, expected (small, large) pixel radii with "
                           "0.5 <= small <= large.")
            object.__setattr__(self, "radii", (float(r[0]), float(r[1])))
        if self.min_gap is None:
            object.__setattr__(self, "min_gap", max(1.0, round(0.047 * self.resolution, 6)))
        for name in ("min_gap", "min_distance", "margin", "texture", "shading", "shadow"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise fail(where, f"`{name}` is {v!r}, expected a finite number >= 0.")
        if self.shading > 0.9:
            raise fail(where, f"`shading` is {self.shading!r}, expected at most 0.9 (colours would invert).")
        if self.shadow > 0.9:
            raise fail(where, f"`shadow` is {self.shadow!r}, expected at most 0.9.")
        if self.background not in ("plain", "textured"):
            raise fail(where, f"`background` is {self.background!r}, expected 'plain' or 'textured'.")
        bg = tuple(self.background_color)
        if len(bg) != 3 or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in bg):
            raise fail(where, f"`background_color` is {self.background_color!r}, expected 3 floats in [0, 1].")
        object.__setattr__(self, "background_color", tuple(float(v) for v in bg))
        if self.labelling not in ("all", "one", "color"):
            raise fail(where, f"`labelling` is {self.labelling!r}, expected 'all', 'one' or 'color'.",
                       "'all' lists every object in the conditioner set; 'one' lists one random object; "
                       "'color' lists every object's colour as a concept without position.")
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int) or self.max_rounds < 1:
            raise fail(where, f"`max_rounds` is {self.max_rounds!r}, expected an int >= 1.")

    @property
    def gap(self) -> float:
        """The minimal gap in pixels between bounding circles (``min_gap`` resolved)."""
        return float(self.min_gap if self.min_gap is not None else 1.0)

    def object_radii(self) -> tuple[float, float]:
        """The (small, large) object radii ``r`` in pixels."""
        if self.radii is not None:
            return self.radii
        return (round(0.06 * self.resolution, 6), round(0.09 * self.resolution, 6))


@summary_repr
@dataclass(frozen=True)
class Scene:
    """A batch of scenes, padded to ``K`` object slots.

    Attributes:
        pos: ``[B, K, 2]`` float object centres ``(row, col)`` in pixels.
        color: ``[B, K]`` long indices into :data:`~localscore.lengthgen.data.COLORS`.
        shape: ``[B, K]`` long indices into :data:`~localscore.lengthgen.data.SHAPES` (``-1`` = unspecified).
        size: ``[B, K]`` long indices into :data:`~localscore.lengthgen.data.SIZES` (``-1`` = unspecified).
        valid: ``[B, K]`` bool, ``False`` marks padding.
        resolution: image side in pixels.
        texture: optional ``[B, 1, h, w]`` low-resolution background noise in ``[-1, 1]``.
    """

    pos: Tensor
    color: Tensor
    shape: Tensor
    size: Tensor
    valid: Tensor
    resolution: int
    texture: Tensor | None = None

    def __post_init__(self) -> None:
        where = "Scene"
        if not isinstance(self.pos, torch.Tensor) or self.pos.dim() != 3 or self.pos.shape[-1] != 2:
            raise fail(where, f"`pos` is {describe(self.pos)}, expected a float tensor [B, K, 2].")
        B, K = self.pos.shape[:2]
        for name in ("color", "shape", "size", "valid"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (B, K):
                raise fail(where, f"`{name}` is {describe(t)}, expected a tensor [B, K] = [{B}, {K}].")
        if self.valid.dtype != torch.bool:
            raise fail(where, f"`valid` has dtype {self.valid.dtype}, expected torch.bool.")
        if not self.pos.is_floating_point():
            raise fail(where, f"`pos` has dtype {self.pos.dtype}, expected a floating dtype (pixels).")
        for name in ("color", "shape", "size"):
            t = getattr(self, name)
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise fail(where, f"`{name}` has dtype {t.dtype}, expected integer indices (torch.long).")
        res = self.resolution
        if isinstance(res, bool) or not isinstance(res, int) or not 1 <= res <= 4096:
            raise fail(where, f"`resolution` is {self.resolution!r}, expected an int in 1..4096 (pixels).")
        tex = self.texture
        if tex is not None and not (isinstance(tex, torch.Tensor) and tex.is_floating_point() and tex.dim() == 4
                                    and tex.shape[0] == B and tex.shape[1] == 1 and min(tex.shape[2:]) >= 1):
            raise fail(where, f"`texture` is {describe(tex)}, expected None or a float tensor [B, 1, h, w] = "
                       f"[{B}, 1, h, w] of low-resolution noise in [-1, 1].",
                       "pass the texture sample_scenes draws, or None for a plain background.")
        if K > MAX_OBJECTS:
            raise fail(where, f"`pos` has {K} object slots, over the limit of {MAX_OBJECTS}.",
                       f"request at most {MAX_OBJECTS} objects per scene.")
        v = self.valid
        if self.pos.device.type != "meta" and v.numel():
            # Padding slots may hold anything (as in Conditions); valid slots must be drawable.
            if bool((v & ~torch.isfinite(self.pos).all(-1)).any()):
                b, k = (v & ~torch.isfinite(self.pos).all(-1)).nonzero()[0].tolist()
                raise fail(where, f"image {b}, object {k}: position {self.pos[b, k].tolist()} is not finite.",
                           "give every valid object a finite (row, col) in pixels; padding slots are ignored.")
            for name, names, low in (("color", COLORS, 0), ("shape", SHAPES, -1), ("size", SIZES, -1)):
                t = getattr(self, name)
                bad = v & ((t < low) | (t >= len(names)))
                if bool(bad.any()):
                    b, k = bad.nonzero()[0].tolist()
                    allowed = f"{low}..{len(names) - 1}" + (" (-1: unspecified)" if low < 0 else "")
                    raise fail(where, f"image {b}, object {k}: `{name}` index {int(t[b, k])} is out of range; "
                               f"expected {allowed}, an index into {names}.",
                               f"use the index helpers ({name}_index) or parse_layout.")

    @property
    def batch_size(self) -> int:
        """``B``."""
        return int(self.pos.shape[0])

    @property
    def num_slots(self) -> int:
        """``K``."""
        return int(self.pos.shape[1])

    def counts(self) -> Tensor:
        """``[B]`` long: objects per image."""
        return self.valid.sum(1)

    def attributes(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[B, K, 13]`` attribute vectors (see :func:`~localscore.lengthgen.data.encode_attributes`)."""
        return encode_attributes(self.color, self.shape, self.size, dtype=dtype)

    def conditions(self, dtype: torch.dtype = torch.float32) -> Conditions:
        """Every object as a conditioner (labelling ``"all"``): ``Conditions(pos, attr, valid)``."""
        return Conditions(self.pos.to(dtype), self.attributes(dtype), self.valid)

    def __getitem__(self, index: int | slice | Tensor) -> Scene:
        """Batch indexing (an int keeps a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        tex = None if self.texture is None else self.texture[index]
        return Scene(self.pos[index], self.color[index], self.shape[index], self.size[index],
                     self.valid[index], self.resolution, tex)

    def to(self, device: torch.device | str) -> Scene:
        """Move every tensor to ``device``."""
        tex = None if self.texture is None else self.texture.to(device)
        return Scene(self.pos.to(device), self.color.to(device), self.shape.to(device), self.size.to(device),
                     self.valid.to(device), self.resolution, tex)

    @staticmethod
    def cat(scenes: Sequence[Scene]) -> Scene:
        """Concatenate batches (same resolution), padding ``K`` to the largest."""
        scenes = list(scenes)
        if not scenes:
            raise fail("Scene.cat", "got no scenes, expected at least one.")
        res = {s.resolution for s in scenes}
        if len(res) != 1:
            raise fail("Scene.cat", f"scenes have different resolutions {sorted(res)}.")
        K = max(s.num_slots for s in scenes)

        def pad(t: Tensor, value: Any) -> Tensor:
            extra = K - t.shape[1]
            if extra == 0:
                return t
            shape = (t.shape[0], extra, *t.shape[2:])
            return torch.cat([t, torch.full(shape, value, dtype=t.dtype, device=t.device)], 1)

        texs = [s.texture for s in scenes]
        tex = torch.cat([t for t in texs if t is not None]) if all(t is not None for t in texs) else None
        return Scene(torch.cat([pad(s.pos, 0.0) for s in scenes]), torch.cat([pad(s.color, 0) for s in scenes]),
                     torch.cat([pad(s.shape, 0) for s in scenes]), torch.cat([pad(s.size, 0) for s in scenes]),
                     torch.cat([pad(s.valid, False) for s in scenes]), scenes[0].resolution, tex)


def bounding_radius(shape: Tensor, size: Tensor, radii: tuple[float, float]) -> Tensor:
    """Bounding radius ``b`` in pixels of objects given shape and size indices (same shape ``[...]``).

    ``b = r`` (disc), ``0.85 sqrt(2) r`` (square), ``1.25 r`` (triangle), with ``r = radii[size]``.

    Examples:
        >>> bounding_radius(torch.tensor([0, 2]), torch.tensor([1, 1]), (2.0, 4.0)).tolist()
        [4.0, 5.0]
    """
    r = torch.tensor(radii, dtype=torch.float32, device=shape.device)[size.clamp(min=0)]
    f = torch.tensor(_SHAPE_BOUND, dtype=torch.float32, device=shape.device)[shape.clamp(min=0)]
    return r * f


def _sdf(d_row: Tensor, d_col: Tensor, shape: Tensor, r: Tensor) -> Tensor:
    """Signed distance (pixels, negative inside) for broadcastable offsets; shape/r broadcast too."""
    disc = torch.sqrt((d_row**2 + d_col**2).clamp_min(1e-12)) - r   # clamped: finite gradient at the centre
    square = torch.maximum(d_row.abs(), d_col.abs()) - _SQUARE_HALF * r
    half_in = 0.5 * _TRI_CIRCUM * r
    tri = torch.maximum(torch.maximum(d_row, -0.5 * d_row - _SQRT3_2 * d_col), -0.5 * d_row + _SQRT3_2 * d_col)
    tri = tri - half_in
    return torch.where(shape == 0, disc, torch.where(shape == 1, square, tri))


def _overlap(d: Tensor, h: Tensor) -> Tensor:
    """Length of ``[d - 1/2, d + 1/2] ∩ [-h, h]``: the 1-D box filter of an interval of half width ``h``."""
    return (torch.minimum(d + 0.5, h) - torch.maximum(d - 0.5, -h)).clamp(0.0, 1.0)


def _coverage(d_row: Tensor, d_col: Tensor, shape: Tensor, r: Tensor) -> Tensor:
    """Pixel coverage: exact box filter for squares, ``clamp(0.5 - sdf, 0, 1)`` for discs and triangles."""
    ramp = (0.5 - _sdf(d_row, d_col, shape, r)).clamp(0.0, 1.0)
    h = _SQUARE_HALF * r
    box = _overlap(d_row, h) * _overlap(d_col, h)
    return torch.where(shape == 1, box, ramp)


def coverage(pos: Tensor, shape: Tensor, radius: Tensor, height: int, width: int) -> Tensor:
    """Anti-aliased coverage of objects on a pixel grid (see the module docstring).

    Args:
        pos: ``[N, 2]`` centres ``(row, col)`` in pixels.
        shape: ``[N]`` long shape indices.
        radius: ``[N]`` object radii ``r`` in pixels.
        height: grid rows.
        width: grid columns.

    Returns:
        ``[N, height, width]`` coverage in ``[0, 1]``.

    Examples:
        >>> a = coverage(torch.tensor([[2.0, 2.0]]), torch.tensor([1]), torch.tensor([1.0]), 5, 5)
        >>> a[0, 2].tolist()   # half side 0.85: full inside, 0.35 at the edge pixels, 0 beyond
        [0.0, 0.3500000238418579, 1.0, 0.3500000238418579, 0.0]
    """
    dev, dt = pos.device, pos.dtype
    rows = torch.arange(height, device=dev, dtype=dt).view(1, height, 1)
    cols = torch.arange(width, device=dev, dtype=dt).view(1, 1, width)
    d_row = rows - pos[:, 0].view(-1, 1, 1)
    d_col = cols - pos[:, 1].view(-1, 1, 1)
    return _coverage(d_row, d_col, shape.view(-1, 1, 1), radius.to(dt).view(-1, 1, 1))


def _draw_indices(allowed: Sequence[str], names: Sequence[str], shape: tuple[int, ...],
                  generator: torch.Generator | None) -> Tensor:
    table = torch.tensor([names.index(a) for a in allowed], dtype=torch.long)
    pick = torch.randint(len(allowed), shape, generator=generator)
    return table[pick]


def sample_scenes(
    config: SceneConfig,
    n: int,
    *,
    generator: torch.Generator | None = None,
    counts: Tensor | Sequence[int] | None = None,
) -> Scene:
    """Draw ``n`` random scenes (object counts, attributes, positions, background texture).

    Counts are drawn uniformly from ``config.counts`` (or given per image). Colours, shapes and sizes
    are uniform over the allowed names (padding slots hold index 0). Positions are uniform subject
    to the constraints
    ``margin + b_k <= c_k <= resolution - 1 - margin - b_k`` (per coordinate) and
    ``|c_i - c_j| >= max(b_i + b_j + min_gap, min_distance)``: objects are placed one slot at a
    time from 128 uniform candidates per image (the first admissible one is taken); an image with no
    admissible candidate redraws its attributes and positions (rejection), up to
    ``config.max_rounds`` rounds. Everything is drawn from ``generator`` on the CPU, so the result
    depends only on its state.

    Args:
        config: the scene configuration.
        n: number of scenes.
        generator: a CPU ``torch.Generator`` (``None``: torch's global one).
        counts: optional ``[n]`` object counts (overrides ``config.counts``).

    Returns:
        A :class:`Scene` with ``K = max(counts)`` slots.

    Raises:
        LocalScoreError: if the objects cannot be placed (too many for the resolution and sizes).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> s = sample_scenes(SceneConfig(resolution=32, counts=(3,)), 4, generator=g)
        >>> s.pos.shape, s.counts().tolist()
        (torch.Size([4, 3, 2]), [3, 3, 3, 3])
    """
    where = "sample_scenes"
    if not isinstance(config, SceneConfig):
        raise fail(where, f"`config` is {describe(config)}, expected a SceneConfig.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise fail(where, f"`n` is {n!r}, expected an int >= 1.")
    if counts is None:
        pick = torch.randint(len(config.counts), (n,), generator=generator)
        cnt = torch.tensor(config.counts, dtype=torch.long)[pick]
    else:
        cnt = torch.as_tensor(counts, dtype=torch.long).flatten()
        if cnt.numel() != n or bool((cnt < 0).any()):
            raise fail(where, f"`counts` is {describe(counts)}, expected {n} ints >= 0.")
    K = int(cnt.max()) if n else 0
    valid = torch.arange(K).view(1, K) < cnt.view(n, 1)
    radii = config.object_radii()
    side = float(config.resolution - 1)
    largest = max(radii[SIZES.index(z)] for z in config.sizes) * max(
        _SHAPE_BOUND[SHAPES.index(s)] for s in config.shapes)
    smallest = min(radii[SIZES.index(z)] for z in config.sizes) * min(
        _SHAPE_BOUND[SHAPES.index(s)] for s in config.shapes)
    if K > 0 and side - 2 * config.margin - 2 * smallest < 0:
        raise fail(where, f"objects of bounding radius {smallest:.2f} px with margin {config.margin} px do not "
                   f"fit in a {config.resolution}x{config.resolution} image.",
                   "use smaller `radii`, a smaller `margin`, or a larger `resolution`.")
    # No packing of K discs of radius (smallest + gap / 2) is denser than the hexagonal one (pi / sqrt(12)):
    # refuse at once what no number of rejection rounds could place.
    free = side - 2 * config.margin + config.gap   # the square the discs of the centres lie in
    if K > 0 and K * math.pi * (smallest + config.gap / 2) ** 2 > math.pi / math.sqrt(12) * free ** 2:
        raise fail(where, f"{K} objects (bounding radius >= {smallest:.2f} px, gap {config.gap} px) cannot fit in a "
                   f"{config.resolution}x{config.resolution} image: their discs cover more than any packing allows.",
                   "lower the object count, `min_gap` or `radii`, or raise `resolution`.")
    color = torch.zeros(n, K, dtype=torch.long)
    shape = torch.zeros(n, K, dtype=torch.long)
    size = torch.zeros(n, K, dtype=torch.long)
    pos = torch.zeros(n, K, 2)
    todo = cnt > 0
    M = 128
    for _ in range(config.max_rounds):
        idx = todo.nonzero().flatten()
        if idx.numel() == 0:
            break
        m = idx.numel()
        # Rejection sampling: an image whose placement fails redraws its attributes and positions.
        c_i = _draw_indices(config.colors, COLORS, (m, K), generator)
        s_i = _draw_indices(config.shapes, SHAPES, (m, K), generator)
        z_i = _draw_indices(config.sizes, SIZES, (m, K), generator)
        b = bounding_radius(s_i, z_i, radii)                                    # [m, K]
        lo = config.margin + b
        hi = side - config.margin - b
        v_i = valid[idx]
        p = torch.zeros(m, K, 2)
        ok_img = ~((hi < lo) & v_i).any(1)
        for k in range(K):
            u = torch.rand(m, M, 2, generator=generator)
            lo_k, hi_k = lo[:, k].view(m, 1, 1), hi[:, k].view(m, 1, 1)
            cand = lo_k + (hi_k - lo_k).clamp(min=0) * u                       # [m, M, 2]
            if k > 0:
                dist = torch.linalg.vector_norm(cand[:, :, None, :] - p[:, None, :k, :], dim=-1)  # [m, M, k]
                need = (b[:, k].view(m, 1, 1) + b[:, :k].view(m, 1, k) + config.gap)
                need = need.clamp(min=config.min_distance)
                ok = ((dist >= need) | ~v_i[:, :k].view(m, 1, k)).all(-1)                        # [m, M]
            else:
                ok = torch.ones(m, M, dtype=torch.bool)
            first = ok.to(torch.int8).argmax(1)
            p[:, k] = cand[torch.arange(m), first]
            ok_img &= ok.any(1) | ~v_i[:, k]
        good = idx[ok_img]
        pos[good] = p[ok_img]
        color[good], shape[good], size[good] = c_i[ok_img], s_i[ok_img], z_i[ok_img]
        todo[good] = False
    if bool(todo.any()):
        worst = int(cnt[todo].max())
        raise fail(where, f"could not place {worst} objects in a {config.resolution}x{config.resolution} "
                   f"image after {config.max_rounds} rounds (min_gap {config.gap} px, radii {radii}, "
                   f"largest bounding radius {largest:.2f} px).",
                   "lower the object count, `min_gap`, `min_distance` or `radii`, or raise `resolution`.")
    pos = pos * valid[..., None]
    texture = None
    if config.background == "textured":
        h = max(2, config.resolution // 8) + 1
        texture = torch.rand(n, 1, h, h, generator=generator) * 2 - 1
    return Scene(pos, color, shape, size, valid, config.resolution, texture)


def render_scene(scene: Scene, config: SceneConfig | None = None, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Render scenes to RGB images ``[B, 3, H, W]`` in ``[0, 1]`` (``H = W = scene.resolution``).

    Background: ``bg = background_color + texture * upsample(scene.texture)`` (bilinear), darkened by
    the soft shadows ``bg *= 1 - shadow * (1 - prod_k (1 - s_k))``, where ``s_k`` is the coverage of
    object ``k``'s shape shifted by ``0.3 b_k`` down and right with an edge ramp of width ``1 + b_k / 2``.
    Objects: colour ``f_k = rgb_k * (1 + shading * g_k)`` (see :class:`SceneConfig`), coverage ``a_k``,
    composited in slot order as in the module docstring. The result is clamped to ``[0, 1]``. Pure
    and differentiable in ``scene.pos``.

    Args:
        scene: the scenes (every valid object needs a shape and a size, not ``-1``).
        config: rendering options; ``None`` means ``SceneConfig(resolution=scene.resolution)``. Its
            resolution must equal the scene's.
        dtype: floating dtype of the result.

    Returns:
        ``[B, 3, H, W]`` images on the scene's device.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> cfg = SceneConfig(resolution=16, counts=(2,))
        >>> img = render_scene(sample_scenes(cfg, 2, generator=g), cfg)
        >>> img.shape, bool((img >= 0).all() and (img <= 1).all())
        (torch.Size([2, 3, 16, 16]), True)
    """
    where = "render_scene"
    if not isinstance(scene, Scene):
        raise fail(where, f"`scene` is {describe(scene)}, expected a Scene (see sample_scenes / parse_layout).")
    if config is None:
        config = SceneConfig(resolution=scene.resolution)
    if not isinstance(config, SceneConfig):
        raise fail(where, f"`config` is {describe(config)}, expected a SceneConfig or None.")
    if config.resolution != scene.resolution:
        raise fail(where, f"`config.resolution` is {config.resolution} but the scene was laid out at "
                   f"{scene.resolution}.", "use the same resolution (config.replace(resolution=...)).")
    v = scene.valid
    if bool((v & ((scene.shape < 0) | (scene.size < 0))).any()):
        raise fail(where, "some objects have an unspecified shape or size (-1); they cannot be drawn.",
                   "give every object a shape and a size (parse_layout(..., default_shape=..., default_size=...)).")
    if bool((v & ((scene.color < 0) | (scene.color >= len(COLORS)))).any()):
        raise fail(where, "some objects have a colour index outside 0..7.")
    dev = scene.pos.device
    B, K = scene.batch_size, scene.num_slots
    H = W = scene.resolution
    bg = torch.tensor(config.background_color, dtype=dtype, device=dev).view(1, 3, 1, 1).expand(B, 3, H, W)
    if config.background == "textured" and config.texture > 0 and scene.texture is not None:
        noise = torch.nn.functional.interpolate(scene.texture.to(dtype), size=(H, W), mode="bilinear",
                                                align_corners=True)
        bg = bg + config.texture * noise
    if K == 0:
        return bg.clamp(0, 1).contiguous()
    radii = torch.tensor(config.object_radii(), dtype=dtype, device=dev)
    # Padding slots are ignored whatever they hold (NaN positions, any ids): they are drawn as a zero-coverage
    # disc at the origin, so nothing of theirs can reach a pixel.
    shape = torch.where(v, scene.shape, 0).clamp(min=0)
    r = radii[torch.where(v, scene.size, 0).clamp(min=0)]                       # [B, K]
    b = r * torch.tensor(_SHAPE_BOUND, dtype=dtype, device=dev)[shape]
    pos = torch.where(v[..., None], scene.pos.to(dtype), 0.0)
    rows = torch.arange(H, device=dev, dtype=dtype).view(1, 1, H, 1)
    cols = torch.arange(W, device=dev, dtype=dtype).view(1, 1, 1, W)
    d_row = rows - pos[..., 0, None, None]                                      # [B, K, H, 1]
    d_col = cols - pos[..., 1, None, None]                                      # [B, K, 1, W]
    shp = shape[..., None, None]
    rr = r[..., None, None]
    bb = b[..., None, None]
    vf = v.to(dtype)[..., None, None]
    a = _coverage(d_row, d_col, shp, rr) * vf                                   # [B, K, H, W]
    if config.shadow > 0:
        off = 0.3 * bb
        width = 1.0 + 0.5 * bb
        s = ((0.5 * width - _sdf(d_row - off, d_col - off, shp, rr)) / width).clamp(0, 1) * vf
        shade_bg = 1.0 - torch.prod(1.0 - s, dim=1)                            # [B, H, W]
        bg = bg * (1.0 - config.shadow * shade_bg[:, None])
    rgb = COLOR_RGB.to(device=dev, dtype=dtype)[torch.where(v, scene.color, 0).clamp(0, len(COLORS) - 1)]
    one_minus = 1.0 - a
    rev = torch.flip(torch.cumprod(torch.flip(one_minus, [1]), dim=1), [1])   # prod_{j >= k}
    after = torch.cat([rev[:, 1:], torch.ones_like(rev[:, :1])], dim=1)       # prod_{j > k}
    w = a * after                                                               # [B, K, H, W]
    if config.shading > 0:
        g = (-(d_row + d_col) / (math.sqrt(2.0) * bb)).clamp(-1, 1)            # [B, K, H, W]
        w = w * (1.0 + config.shading * g)                                      # f_k = rgb_k (1 + shading g_k)
    img = bg * rev[:, 0, None] + torch.einsum("bkhw,bkc->bchw", w, rgb)
    return img.clamp(0, 1)


def label_scene(
    scene: Scene,
    labelling: Labelling = "all",
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Conditions:
    """The conditioner sets of a batch of scenes under a labelling mode.

    * ``"all"``: every object, ``Conditions(pos [B, K, 2], attr [B, K, 13], valid [B, K])``.
    * ``"one"``: one object per image chosen uniformly among its objects (drawn from ``generator``),
      ``K = 1``; images without objects get an empty set. The other objects stay in the image as
      unlabelled clutter.
    * ``"color"``: every object's colour as a concept, without its place, shape or size (the sets
      :func:`color_concepts` builds): for concept models, ``UNetConfig(token_positions=False)``.

    Examples:
        >>> g = torch.Generator().manual_seed(1)
        >>> s = sample_scenes(SceneConfig(counts=(3,)), 2, generator=g)
        >>> label_scene(s, "one", generator=g).pos.shape
        torch.Size([2, 1, 2])
    """
    where = "label_scene"
    if not isinstance(scene, Scene):
        raise fail(where, f"`scene` is {describe(scene)}, expected a Scene.")
    if labelling == "all":
        return scene.conditions(dtype)
    if labelling == "color":
        return _concepts(scene.color, scene.valid, scene.resolution, dtype)
    if labelling != "one":
        raise fail(where, f"`labelling` is {labelling!r}, expected 'all', 'one' or 'color'.")
    B, K = scene.batch_size, scene.num_slots
    cnt = scene.counts()
    if K == 0:
        return Conditions.empty(B, attr_dim=ATTR_DIM, dtype=dtype, device=scene.pos.device)
    u = torch.rand(B, generator=generator).to(scene.pos.device)
    # The valid slots come first (Scene layouts are compact), so slot floor(u * count) is uniform.
    pick = torch.minimum((u * cnt.to(u.dtype)).long(), (cnt - 1).clamp(min=0))
    order = torch.argsort((~scene.valid).to(torch.int8), dim=1, stable=True)
    slot = order.gather(1, pick.view(B, 1))                                     # [B, 1]
    attr = scene.attributes(dtype).gather(1, slot[..., None].expand(B, 1, ATTR_DIM))
    pos = scene.pos.to(dtype).gather(1, slot[..., None].expand(B, 1, 2))
    return Conditions(pos, attr, (cnt > 0).view(B, 1))


def _concepts(color: Tensor, valid: Tensor, resolution: int, dtype: torch.dtype) -> Conditions:
    """``color [B, K]`` long, ``valid [B, K]`` -> colour-concept sets (see :func:`color_concepts`)."""
    B, K = color.shape
    attr = torch.zeros(B, K, ATTR_DIM, dtype=dtype, device=color.device)
    attr.scatter_(2, color.clamp(0, len(COLORS) - 1).unsqueeze(-1), 1.0)
    attr = attr * valid.unsqueeze(-1).to(dtype)
    pos = torch.full((B, K, 2), (resolution - 1) / 2.0, dtype=dtype, device=color.device)
    return Conditions(pos, attr, valid.clone())


def color_concepts(
    colors: Sequence[Sequence[str]],
    resolution: int = 32,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Conditions:
    """Conditioner sets of *colour concepts*: "an object of this colour", with no place in the image.

    Set ``b`` holds one slot per name in ``colors[b]`` (padded to the longest set; an empty list is the
    empty set). A slot's attribute vector is the colour's one-hot block (shape and size blocks zero, see
    :func:`~localscore.lengthgen.data.encode_attributes`); its position is the image centre
    ``((H - 1) / 2, (W - 1) / 2)`` for every slot, so it carries nothing: a concept model is built with
    ``UNetConfig(token_positions=False)`` and never reads it. These are the sets a model trained with
    labelling ``"color"`` sees, and what a projective composition of colours selects slot by slot.

    Args:
        colors: ``B`` lists of colour names from :data:`~localscore.lengthgen.data.COLORS`.
        resolution: the image side ``H = W`` (only fixes the centre).
        dtype: float dtype of ``pos`` and ``attr``.
        device: where the tensors live.

    Returns:
        ``Conditions(pos [B, K, 2], attr [B, K, 13], valid [B, K])``, ``K`` the longest list.

    Examples:
        >>> c = color_concepts([["yellow", "blue"], []], resolution=32)
        >>> c.counts().tolist(), c.attr[0, :, :8].argmax(-1).tolist(), c.pos[0, 0].tolist()
        ([2, 0], [7, 2], [15.5, 15.5])
    """
    where = "color_concepts"
    if isinstance(colors, (str, bytes)) or not isinstance(colors, Sequence) or not all(
            isinstance(row, Sequence) and not isinstance(row, (str, bytes)) for row in colors):
        raise fail(where, f"`colors` is {describe(colors)}, expected a list of B lists of colour names.",
                   'e.g. [["yellow", "blue"], ["red"]]; a single image is [["yellow"]].')
    if not colors:
        raise fail(where, "`colors` is empty, expected B >= 1 lists of colour names.",
                   "pass [[]] for one image conditioned on nothing.")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= 4096:
        raise fail(where, f"`resolution` is {resolution!r}, expected an int in 1..4096 (pixels).")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise fail(where, f"`dtype` is {dtype!r}, expected a floating-point torch.dtype.")
    K = max(len(row) for row in colors)
    if K > MAX_OBJECTS:
        raise fail(where, f"a set holds {K} colours, expected at most {MAX_OBJECTS}.")
    idx = torch.zeros(len(colors), K, dtype=torch.long)
    valid = torch.zeros(len(colors), K, dtype=torch.bool)
    for b, row in enumerate(colors):
        for k, name in enumerate(row):
            if not isinstance(name, str) or name.lower() not in COLORS:
                raise fail(where, f"`colors[{b}][{k}]` is {name!r}, expected one of {', '.join(COLORS)}.")
            idx[b, k] = COLORS.index(name.lower())
            valid[b, k] = True
    return _concepts(idx.to(device), valid.to(device), resolution, dtype)
