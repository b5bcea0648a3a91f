r"""An object detector for rendered CLEVR-like scenes (background subtraction + connected components).

For each image ``p [3, H, W]`` in ``[0, 1]``:

1. Background colour ``bg [3]``: the per-channel median of the image (objects cover far less than
   half of it).
2. Foreground residual, allowing for shadows that darken the background by up to ``shadow``:
   ``a = clamp(<p, bg> / <bg, bg>, 1 - shadow, 1)``, ``res = max_c |p_c - a bg_c|``; foreground is
   ``res > threshold``.
3. Connected components of the foreground (4-connectivity, ``scipy.ndimage.label``).
4. Colour of a component: the palette colour ``f`` whose segment ``bg -> f`` best explains its
   pixels, ``argmin_f sum_i min_{t in [0, 1.5]} |p_i - bg - t (f - bg)|^2``.
5. Coverage ``alpha_i = clamp(<p_i - bg, f - bg> / |f - bg|^2, 0, 1)`` on the component dilated by one
   pixel (other components excluded); area ``A = sum alpha``, centre ``c = sum alpha_i x_i / A``.
   Components with ``A < min_area * (smallest object area)`` are dropped as noise.
6. Shape and size: the (shape, size) whose anti-aliased template rendered at ``c``
   (:func:`~localscore.lengthgen.data.coverage`) minimises ``sum_i (alpha_i - template_i)^2`` on that support.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from ..._checks import check_image
from ..._errors import describe, fail
from ..data.attributes import COLOR_RGB, COLORS, SHAPES, SIZES
from ..data.scenes import Scene, SceneConfig, coverage

__all__ = ["detect_objects"]

_FOUR = ndimage.generate_binary_structure(2, 1)
_EIGHT = ndimage.generate_binary_structure(2, 2)


def _smallest_area(config: SceneConfig) -> float:
    r = min(config.object_radii()[SIZES.index(z)] for z in config.sizes)
    areas = {"disc": math.pi * r * r, "square": (2 * 0.85 * r) ** 2,
             "triangle": (3 * math.sqrt(3) / 4) * (1.25 * r) ** 2}
    return min(areas[s] for s in config.shapes)


def detect_objects(
    images: Tensor,
    config: SceneConfig,
    *,
    threshold: float | None = None,
    min_area: float = 0.35,
    shadow: float | None = None,
) -> Scene:
    """Detect the objects of rendered (or generated) scenes.

    Args:
        images: ``[B, 3, H, W]`` RGB in ``[0, 1]`` (values outside are clipped), ``H = W =
            config.resolution``.
        config: the scene configuration (resolution, radii, allowed colours/shapes/sizes).
        threshold: foreground threshold on the residual ``res`` (see the module docstring); ``None``
            means ``min(0.2, 0.5 * min_f res(f))``, half the smallest residual of a pure palette colour
            ``f`` on ``config.background_color`` (gray objects under strong shadows need less than 0.2).
        min_area: drop components whose coverage area is below this fraction of the smallest
            object's area.
        shadow: largest background darkening to ignore; ``None`` uses ``config.shadow``.

    Returns:
        A :class:`~localscore.lengthgen.data.Scene` of the detections (``K`` = the most detections in an image),
        positions in pixels, colour/shape/size indices classified as above.

    Examples:
        >>> from localscore.lengthgen.data import SceneConfig, sample_scenes, render_scene
        >>> cfg = SceneConfig(resolution=32, counts=(4,))
        >>> truth = sample_scenes(cfg, 2, generator=torch.Generator().manual_seed(0))
        >>> found = detect_objects(render_scene(truth, cfg), cfg)
        >>> found.counts().tolist()
        [4, 4]
    """
    where = "detect_objects"
    images = check_image(images, where, "images")
    if not isinstance(config, SceneConfig):
        raise fail(where, f"`config` is {describe(config)}, expected the SceneConfig the images were made with.")
    B, C, H, W = images.shape
    if C != 3 or H != config.resolution or W != config.resolution:
        raise fail(where, f"`images` has shape {tuple(images.shape)}, expected [B, 3, {config.resolution}, "
                   f"{config.resolution}] (config.resolution = {config.resolution}).",
                   "map generated images to [0, 1] RGB at the config's resolution.")
    shadow = config.shadow if shadow is None else shadow
    if not isinstance(shadow, (int, float)) or not 0 <= shadow < 1:
        raise fail(where, f"`shadow` is {shadow!r}, expected a float in [0, 1).")
    palette_idx = [COLORS.index(c) for c in config.colors]
    palette = COLOR_RGB.double().numpy()[palette_idx]                           # [P, 3]
    if threshold is None:
        bg0 = np.asarray(config.background_color, dtype=np.float64)
        a0 = np.clip(palette @ bg0 / max(float(bg0 @ bg0), 1e-12), 1 - shadow, 1.0)
        threshold = min(0.2, 0.5 * float(np.abs(palette - a0[:, None] * bg0).max(1).min()))
    for name, v in (("threshold", threshold), ("min_area", min_area)):
        if not isinstance(v, (int, float)) or not v > 0:
            raise fail(where, f"`{name}` is {v!r}, expected a positive float.")
    x = images.detach().to("cpu", torch.float64).clamp(0, 1).numpy()
    combos = [(SHAPES.index(s), SIZES.index(z)) for s in config.shapes for z in config.sizes]
    radii = config.object_radii()
    min_px = min_area * _smallest_area(config)
    rows_g, cols_g = np.mgrid[0:H, 0:W].astype(np.float64)
    found: list[list[tuple[float, float, int, int, int]]] = []
    for b in range(B):
        p = x[b]                                                                 # [3, H, W]
        bg = np.median(p.reshape(3, -1), axis=1)                                 # [3]
        a = np.clip(np.tensordot(bg, p, axes=(0, 0)) / max(float(bg @ bg), 1e-12), 1 - shadow, 1.0)
        res = np.abs(p - a[None] * bg[:, None, None]).max(0)                     # [H, W]
        fg = res > threshold
        lab, n = ndimage.label(fg, structure=_FOUR)
        objs: list[tuple[float, float, int, int, int]] = []
        comps: list[tuple[np.ndarray, np.ndarray, int]] = []
        for j in range(1, n + 1):
            mask = lab == j
            pix = p[:, mask].T - bg                                              # [n_j, 3]
            d = palette - bg                                                     # [P, 3]
            dd = np.maximum((d * d).sum(1), 1e-12)
            t = np.clip(pix @ d.T / dd, 0.0, 1.5)                                # [n_j, P]
            err = ((pix[:, None, :] - t[..., None] * d[None]) ** 2).sum(-1).sum(0)   # [P]
            ci = int(np.argmin(err))
            support = ndimage.binary_dilation(mask, structure=_EIGHT) & ~(fg & ~mask)
            alpha = np.clip(np.tensordot(d[ci], p - bg[:, None, None], axes=(0, 0)) / dd[ci], 0.0, 1.0) * support
            area = float(alpha.sum())
            if area < min_px:
                continue
            r0 = float((alpha * rows_g).sum() / area)
            c0 = float((alpha * cols_g).sum() / area)
            comps.append((alpha, support, palette_idx[ci]))
            objs.append((r0, c0, palette_idx[ci], -1, -1))
        if objs:
            m = len(objs)
            pos = torch.tensor([[o[0], o[1]] for o in objs], dtype=torch.float64)
            pos_rep = pos.repeat_interleave(len(combos), 0)
            shp = torch.tensor([s for s, _ in combos] * m)
            rad = torch.tensor([radii[z] for _, z in combos] * m, dtype=torch.float64)
            tmpl = coverage(pos_rep, shp, rad, H, W).numpy().reshape(m, len(combos), H, W)
            for k, (alpha, support, _ci) in enumerate(comps):
                err_t = (((alpha[None] - tmpl[k]) * support[None]) ** 2).sum((1, 2))
                best = combos[int(np.argmin(err_t))]
                r0, c0, col, _, _ = objs[k]
                objs[k] = (r0, c0, col, best[0], best[1])
        found.append(objs)
    K = max((len(o) for o in found), default=0)
    pos_t = torch.zeros(B, K, 2)
    col_t = torch.zeros(B, K, dtype=torch.long)
    shp_t = torch.zeros(B, K, dtype=torch.long)
    siz_t = torch.zeros(B, K, dtype=torch.long)
    valid = torch.zeros(B, K, dtype=torch.bool)
    for b, objs in enumerate(found):
        for k, (r0, c0, col, s, z) in enumerate(objs):
            pos_t[b, k, 0], pos_t[b, k, 1] = r0, c0
            col_t[b, k], shp_t[b, k], siz_t[b, k] = col, s, z
            valid[b, k] = True
    return Scene(pos_t, col_t, shp_t, siz_t, valid, config.resolution)


