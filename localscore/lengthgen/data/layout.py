"""Layout files: the JSON description of requested scenes, parsed with clear errors.

A layout is JSON (or the equivalent Python dict)::

    {"size": 32,
     "images": [[{"pos": [row, col], "color": "red", "shape": "disc", "size": "small"}, ...], ...]}

``size`` is the image side in pixels (16..128); each image is a list of objects with ``pos`` in
pixels (``(row, col)``, origin at the top-left pixel centre, inside ``[0, size - 1]``), a colour
from the 8 CLEVR names, and optional ``shape`` (disc / square / triangle) and ``size``
(small / large). An image may be an empty list (the unconditional case).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..._errors import describe, fail
from ..._io import atomic_write, parse_json, read_json
from .attributes import COLORS, SHAPES, SIZES
from .scenes import Scene

__all__ = ["layout_to_dict", "load_layout", "parse_layout", "save_layout"]

MAX_LAYOUT_IMAGES = 1_000_000
"""The most images one layout may request (the CLI samples them in batches of ``--batch-size``)."""

_OBJECT_KEYS = {"pos", "color", "shape", "size"}


def _name(value: Any, names: tuple[str, ...], kind: str, where: str, loc: str) -> int:
    if isinstance(value, str) and value.strip().lower() in names:
        return names.index(value.strip().lower())
    raise fail(where, f"{loc}: unknown {kind} {value!r}; expected one of {', '.join(names)}.",
               f"use one of the {kind} names above.")


def parse_layout(
    layout: Any,
    *,
    max_objects: int | None = None,
    default_shape: str | None = None,
    default_size: str | None = None,
    where: str = "parse_layout",
) -> Scene:
    """Parse a layout (dict, JSON text) into a :class:`~localscore.lengthgen.data.Scene` of requested objects.

    Args:
        layout: a dict as in the module docstring, or a JSON string of one.
        max_objects: if given, images with more objects raise.
        default_shape: shape name for objects without ``shape``; ``None`` leaves them unspecified
            (index ``-1``: encoded as an all-zero block, not renderable).
        default_size: likewise for ``size``.
        where: the name used in error messages (e.g. the CLI command).

    Returns:
        A Scene with one image per layout image and ``K`` = the largest object count.

    Raises:
        LocalScoreError: on malformed JSON, missing or unknown keys, unknown colour/shape/size
            names, positions that are not two finite numbers inside the image, too many objects.

    Examples:
        >>> s = parse_layout({"size": 32, "images": [[{"pos": [4, 5.5], "color": "red"}], []]},
        ...                  default_shape="disc", default_size="small")
        >>> s.pos.tolist(), s.counts().tolist(), s.color.tolist()
        ([[[4.0, 5.5]], [[0.0, 0.0]]], [1, 0], [[1], [0]])
    """
    if isinstance(layout, (str, bytes)):
        layout = parse_json(layout, where=where, what="the layout")
    if not isinstance(layout, dict):
        raise fail(where, f"the layout is {describe(layout)}, expected a JSON object with keys 'size' and 'images'.")
    unknown = sorted(set(layout) - {"size", "images"})
    if unknown:
        raise fail(where, f"the layout has unknown keys {unknown}; expected 'size' and 'images'.")
    size = layout.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 128:
        given = repr(size) if "size" in layout else "missing"
        raise fail(where, f"layout 'size' is {given}, expected an int in 16..128 (the image side in pixels).",
                   'give the image side at the top level, e.g. {"size": 32, "images": [...]}.')
    images = layout.get("images")
    if not isinstance(images, list) or not images:
        raise fail(where, f"layout 'images' is {describe(images)}, expected a non-empty list with one list of "
                   "objects per image.", "an image without objects is an empty list [].")
    if len(images) > MAX_LAYOUT_IMAGES:
        raise fail(where, f"the layout requests {len(images):,} images, over the limit of {MAX_LAYOUT_IMAGES:,}.",
                   "split it into several layout files.")
    if max_objects is not None and (isinstance(max_objects, bool) or not isinstance(max_objects, int)
                                    or max_objects < 0):
        raise fail(where, f"`max_objects` is {max_objects!r}, expected None or an int >= 0.")
    shp_default = -1 if default_shape is None else _name(default_shape, SHAPES, "shape", where, "default_shape")
    siz_default = -1 if default_size is None else _name(default_size, SIZES, "size", where, "default_size")
    rows: list[list[tuple[float, float, int, int, int]]] = []
    for i, objs in enumerate(images):
        if not isinstance(objs, list):
            raise fail(where, f"image {i} is {describe(objs)}, expected a list of objects.")
        if max_objects is not None and len(objs) > max_objects:
            raise fail(where, f"image {i} has {len(objs)} objects, more than the maximum of {max_objects}.",
                       f"request at most {max_objects} objects per image.")
        row = []
        for j, obj in enumerate(objs):
            loc = f"image {i}, object {j}"
            if not isinstance(obj, dict):
                raise fail(where, f"{loc} is {describe(obj)}, expected an object like "
                           '{"pos": [row, col], "color": "red"}.')
            extra = sorted(set(obj) - _OBJECT_KEYS)
            if extra:
                raise fail(where, f"{loc} has unknown keys {extra}; expected pos, color, shape, size.")
            for key in ("pos", "color"):
                if key not in obj:
                    raise fail(where, f"{loc} has no '{key}'.", "every object needs 'pos' and 'color'.")
            pos = obj["pos"]
            if (not isinstance(pos, (list, tuple)) or len(pos) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pos)
                    or not all(_finite(v) for v in pos)):
                raise fail(where, f"{loc}: 'pos' is {pos!r}, expected [row, col], two finite numbers (pixels).")
            r, c = float(pos[0]), float(pos[1])
            if not (0 <= r <= size - 1 and 0 <= c <= size - 1):
                raise fail(where, f"{loc}: 'pos' {pos!r} is off the {size}x{size} image; expected row and col "
                           f"in [0, {size - 1}].", "positions are pixels from the top-left pixel centre.")
            color = _name(obj["color"], COLORS, "colour", where, loc)
            shape = _name(obj["shape"], SHAPES, "shape", where, loc) if "shape" in obj else shp_default
            sz = _name(obj["size"], SIZES, "size", where, loc) if "size" in obj else siz_default
            row.append((r, c, color, shape, sz))
        rows.append(row)
    B = len(rows)
    K = max(len(r) for r in rows)
    pad = (0.0, 0.0, 0, 0, 0)
    table = [row + [pad] * (K - len(row)) for row in rows]
    pos_t = torch.tensor([[(o[0], o[1]) for o in row] for row in table], dtype=torch.float32).reshape(B, K, 2)
    color_t = torch.tensor([[o[2] for o in row] for row in table], dtype=torch.long).reshape(B, K)
    shape_t = torch.tensor([[o[3] for o in row] for row in table], dtype=torch.long).reshape(B, K)
    size_t = torch.tensor([[o[4] for o in row] for row in table], dtype=torch.long).reshape(B, K)
    valid = torch.tensor([[k < len(row) for k in range(K)] for row in rows], dtype=torch.bool).reshape(B, K)
    return Scene(pos_t, color_t, shape_t, size_t, valid, size)


def _finite(v: float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:   # an int too large for a float
        return False


def load_layout(path: str | os.PathLike[str], **kwargs: Any) -> Scene:
    """Read a layout JSON file and parse it with :func:`parse_layout` (same keyword arguments).

    The file is read by one bounded reader: at most 64 MiB of UTF-8 JSON, integers of at most 30 digits,
    finite numbers; anything else is a :class:`~localscore.LocalScoreError` naming the file and the problem.
    """
    where = kwargs.pop("where", "load_layout")
    p = Path(path)
    data = read_json(p, where=where, what="layout file")
    return parse_layout(data, where=f"{where} ({p.name})", **kwargs)


def layout_to_dict(scene: Scene) -> dict[str, Any]:
    """The layout dict of a Scene (inverse of :func:`parse_layout`; unspecified fields are omitted).

    Examples:
        >>> d = {"size": 16, "images": [[{"pos": [3.0, 4.0], "color": "blue", "shape": "square"}]]}
        >>> layout_to_dict(parse_layout(d)) == d
        True
    """
    if not isinstance(scene, Scene):
        raise fail("layout_to_dict", f"`scene` is {describe(scene)}, expected a Scene.")
    images = []
    for b in range(scene.batch_size):
        objs = []
        for k in range(scene.num_slots):
            if not bool(scene.valid[b, k]):
                continue
            obj: dict[str, Any] = {"pos": [float(v) for v in scene.pos[b, k].tolist()],
                                   "color": COLORS[int(scene.color[b, k])]}
            if int(scene.shape[b, k]) >= 0:
                obj["shape"] = SHAPES[int(scene.shape[b, k])]
            if int(scene.size[b, k]) >= 0:
                obj["size"] = SIZES[int(scene.size[b, k])]
            objs.append(obj)
        images.append(objs)
    return {"size": scene.resolution, "images": images}


def save_layout(path: str | os.PathLike[str], scene: Scene) -> Path:
    """Write ``layout_to_dict(scene)`` as JSON, atomically."""
    text = json.dumps(layout_to_dict(scene), indent=1).encode()
    return atomic_write(path, lambda f: f.write(text))
