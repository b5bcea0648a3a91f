r"""The locality profile of a model across noise levels, and the table relating it to length generalization.

:func:`locality_profile` is the one measurement of the pipeline (the ``localscore locality`` command, the
benchmark's ``locality`` stage and this API all call it, and its :class:`LocalityProfile` is what their
``locality.json`` files hold). ``n_images`` scenes of ``count`` objects are drawn from the scene config
(every object labelled) and rendered to ``x0`` in the model's value range; one noise draw ``eps`` is shared
by all noise levels, and at each ``sigma`` the model sees ``x = x0 + sigma * eps``. Then

* :func:`~localscore.metrics.conditional_locality` (ablation) measures where each object's influence
  ``sum_c (D(x, cond) - D(x, cond \ k))^2`` lands: ``index``, the mean share inside the Chebyshev ball of
  radius ``region_radius`` around the object (default ``REGION_FRACTION * resolution``; 1 for a local
  conditional model); ``on_others``, the mean share on the other objects' balls; ``radius``, the mean over
  objects of the distance holding ``quantile`` (0.9) of it (r90);
* :func:`~localscore.metrics.pixel_locality` (``pixel_rows`` exact Jacobian rows, probes) measures
  ``pixel_radius``, the radius around an output pixel holding 90 % of ``sum |dD/dx|^2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..._errors import describe, fail
from ..data.scenes import SceneConfig, render_scene
from .metrics import EvaluationResult, SeedTable, _md_table
from .runner import request_scenes

__all__ = ["LOCALITY_FORMAT", "REGION_FRACTION", "LocalityProfile", "locality_profile", "locality_table"]

#: An object's region for the locality index, as a share of the image side: a Chebyshev ball of radius
#: ``REGION_FRACTION * resolution`` (the default of :func:`locality_profile`, and of the published indices).
REGION_FRACTION = 0.2

#: The ``format`` tag of a :meth:`LocalityProfile.to_dict` (the schema of every ``locality.json``).
LOCALITY_FORMAT = "localscore-locality"


def _nan_list(v: Sequence[float]) -> list[float | None]:
    return [None if math.isnan(x) else x for x in v]


def _floats(v: Sequence[Any]) -> tuple[float, ...]:
    return tuple(float("nan") if x is None else float(x) for x in v)


def _mean(v: Sequence[float]) -> float:
    return sum(v) / len(v) if v else float("nan")


@dataclass(frozen=True)
class LocalityProfile:
    """Conditional (and pixel) locality of one model across noise levels (see the module docstring).

    Attributes:
        sigmas: the noise levels.
        index: per sigma, the mean share of an object's influence inside its own region.
        on_others: per sigma, the mean share on the other objects' regions.
        radius: per sigma, the mean influence radius r90 in pixels (the ``quantile`` of the influence).
        region_radius: the radius of the regions in pixels.
        pixel_radius: per sigma, the pixel radius r90 (NaN where not measured; empty: not measured).
        meta: the measurement's settings (``count``, ``n_images``, ``seed``, ``quantile``) and free-form
            metadata (the benchmark adds ``train_steps``).

    Examples:
        >>> p = LocalityProfile((0.5, 2.0), (1.0, 0.9), (0.0, 0.05), (2.0, 3.0), 6.4, (1.0, 2.0))
        >>> p.mean_index, p.mean_pixel_radius
        (0.95, 1.5)
        >>> LocalityProfile.from_dict(p.to_dict()) == p
        True
    """

    sigmas: tuple[float, ...]
    index: tuple[float, ...]
    on_others: tuple[float, ...]
    radius: tuple[float, ...]
    region_radius: float
    pixel_radius: tuple[float, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_index(self) -> float:
        """The locality index averaged over the noise levels (the benchmark's summary)."""
        return _mean(self.index)

    @property
    def mean_pixel_radius(self) -> float:
        """The pixel radius r90 averaged over the noise levels (NaN if not measured)."""
        return _mean(self.pixel_radius)

    def to_dict(self) -> dict[str, Any]:
        """The one JSON schema of ``locality.json`` (NaN as ``None``).

        ``{"format": "localscore-locality", "version": 1, "sigmas", "index", "on_others", "radius",
        "pixel_radius", "region_radius", "summary": {"index", "pixel_radius"}, "meta"}``: per-sigma lists,
        ``summary`` their means over sigma.
        """
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {"format": LOCALITY_FORMAT, "version": 1, "sigmas": list(self.sigmas), "index": _nan_list(self.index),
                "on_others": _nan_list(self.on_others), "radius": _nan_list(self.radius),
                "pixel_radius": _nan_list(self.pixel_radius), "region_radius": self.region_radius,
                "summary": {"index": clean(self.mean_index), "pixel_radius": clean(self.mean_pixel_radius)},
                "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LocalityProfile:
        """Inverse of :meth:`to_dict`; also reads the ``locality.json`` files of localscore 0.1.

        The 0.1 files (``measure_locality``: ``conditional_index``, ``influence_radius``,
        ``pixel_radius_90``, ``radius`` = the region radius, ``count``, ``images``, ``train_steps``) map onto
        the same fields, so archived results stay readable.
        """
        where = "LocalityProfile.from_dict"
        if not isinstance(data, Mapping):
            raise fail(where, f"expected a dict, got {describe(data)}.")
        try:
            if data.get("format") == LOCALITY_FORMAT:
                return cls(_floats(data["sigmas"]), _floats(data["index"]), _floats(data["on_others"]),
                           _floats(data["radius"]), float(data["region_radius"]), _floats(data["pixel_radius"]),
                           dict(data.get("meta", {})))
            if "conditional_index" in data:  # localscore 0.1 (experiments.measure_locality)
                meta = {"count": data.get("count"), "n_images": data.get("images"), "quantile": 0.9}
                if "train_steps" in data:
                    meta["train_steps"] = data["train_steps"]
                return cls(_floats(data["sigmas"]), _floats(data["conditional_index"]), _floats(data["on_others"]),
                           _floats(data["influence_radius"]), float(data["radius"]),
                           _floats(data.get("pixel_radius_90", [])), meta)
        except (KeyError, TypeError, ValueError) as e:
            raise fail(where, f"the locality record is incomplete or malformed ({type(e).__name__}: {e}).",
                       "pass the dict written by LocalityProfile.to_dict().") from e
        raise fail(where, f"not a locality record (keys {sorted(data)}); expected format {LOCALITY_FORMAT!r}.",
                   "pass the dict written by LocalityProfile.to_dict().")

    def to_markdown(self, digits: int = 2) -> str:
        """One row per sigma: index, share on other objects, influence radius r90, pixel radius r90."""
        pix = self.pixel_radius or (float("nan"),) * len(self.sigmas)
        rows = [[f"{s:.3g}", f"{i:.{digits}f}", f"{o:.{digits}f}", f"{r:.1f}", "–" if math.isnan(p) else f"{p:.1f}"]
                for s, i, o, r, p in zip(self.sigmas, self.index, self.on_others, self.radius, pix)]
        return _md_table(["sigma", "locality index", "on other objects", "influence radius r90 (px)",
                          "pixel radius r90 (px)"], rows)


def locality_profile(
    denoiser: Any,
    config: SceneConfig,
    *,
    sigmas: Sequence[float] = (0.05, 0.2, 0.5, 1.0, 2.0),
    n_images: int = 4,
    count: int = 4,
    region_radius: float | None = None,
    quantile: float = 0.9,
    pixel_rows: int | None = 16,
    seed: int = 0,
    value_range: tuple[float, float] = (-1.0, 1.0),
    max_batch: int = 64,
    callback: Callable[[int], None] | None = None,
) -> LocalityProfile:
    """Measure the locality of ``denoiser`` on ``n_images`` scenes of ``count`` objects, per noise level.

    Args:
        denoiser: ``D(x, sigma, cond)`` trained on scenes of ``config`` (images in ``value_range``); for a
            :class:`~localscore.lengthgen.LoadedModel` ``m`` pass ``m.denoiser, m.scene``.
        config: the scene configuration (its resolution, sizes, separation; every object is labelled).
        sigmas: noise levels.
        n_images: scenes.
        count: objects per scene (>= 2: the share on *other* objects needs two).
        region_radius: radius (pixels, Chebyshev) of an object's region; ``None`` means
            ``REGION_FRACTION * resolution`` (``0.2 * resolution``).
        quantile: quantile of the influence radius.
        pixel_rows: exact Jacobian rows of the pixel radius; ``None`` skips it (``pixel_radius`` empty).
        seed: seed of the scenes, the noise (``seed + 7``) and the Jacobian probes.
        value_range: the model's image range (``[0, 1]`` renders are mapped to it).
        max_batch: the largest batch passed to the denoiser.
        callback: called with the index of each noise level once it is measured.

    Returns:
        A :class:`LocalityProfile`.

    Examples:
        >>> from localscore.testing import LocalConvDenoiser
        >>> D = LocalConvDenoiser(3, radius=1, cond_radius=1.0)
        >>> p = locality_profile(D, SceneConfig(resolution=16), sigmas=[1.0], n_images=1, count=2,
        ...                      region_radius=2.0, pixel_rows=None)
        >>> p.index, p.on_others
        ((1.0,), (0.0,))
    """
    from ...metrics import conditional_locality, pixel_locality

    where = "locality_profile"
    if not callable(denoiser):
        raise fail(where, f"`denoiser` is {describe(denoiser)}, expected a callable D(x, sigma, cond).")
    if not isinstance(config, SceneConfig):
        raise fail(where, f"`config` is {describe(config)}, expected a SceneConfig.",
                   "pass the scene config the model was trained on (LoadedModel.scene).")
    sig = [float(s) for s in sigmas]
    if not sig or not all(s > 0 and math.isfinite(s) for s in sig):
        raise fail(where, f"`sigmas` is {sigmas!r}, expected positive finite noise levels.")
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise fail(where, f"`count` is {count!r}, expected an int >= 2 (influence on *other* objects needs two).")
    if pixel_rows is not None and (isinstance(pixel_rows, bool) or not isinstance(pixel_rows, int) or pixel_rows < 1):
        raise fail(where, f"`pixel_rows` is {pixel_rows!r}, expected None or an int >= 1.")
    radius = REGION_FRACTION * config.resolution if region_radius is None else float(region_radius)
    scene_cfg = config.replace(counts=(count,), labelling="all")
    scene = request_scenes(scene_cfg, [count], n_images, seed=seed)
    lo, hi = value_range
    x0 = lo + (hi - lo) * render_scene(scene, scene_cfg)
    cond = scene.conditions()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 7))
    index, others, radii, pixel = [], [], [], []
    for i, s in enumerate(sig):
        x = x0 + s * eps
        res = conditional_locality(denoiser, x, s, cond, regions=radius, quantile=quantile, max_batch=max_batch)
        index.append(float(res.index["ablation"].flatten()[0]))
        others.append(float(res.on_others_mean["ablation"].flatten()[0]))
        r = res.influence_radius["ablation"][0].float()[cond.valid]
        r = r[torch.isfinite(r)]
        radii.append(float(r.mean()) if r.numel() else float("nan"))
        if pixel_rows is not None:
            pl = pixel_locality(denoiser, x, s, cond, method="probes", n_rows=pixel_rows,
                                generator=torch.Generator().manual_seed(seed))
            pixel.append(float(pl.radius(0.9).float().flatten()[0]))
        if callback is not None:
            callback(i)
    meta = {"count": count, "n_images": n_images, "seed": seed, "quantile": quantile}
    return LocalityProfile(tuple(sig), tuple(index), tuple(others), tuple(radii), radius, tuple(pixel), meta)


def locality_table(
    profiles: Mapping[str, LocalityProfile],
    results: Mapping[str, EvaluationResult | SeedTable],
    *,
    sigma: float | None = None,
    counts: Sequence[int] = (4, 6, 8, 10),
    digits: int = 2,
) -> str:
    """Markdown table relating locality to length generalization, one row per model.

    Columns: the profile's noise level nearest to ``sigma`` (default: its largest), the locality index
    and the share on other objects there, the influence radius r90 there, and the perfect rate at
    each of ``counts`` (pooled over seeds for a :class:`~localscore.lengthgen.evaluate.SeedTable`).

    Examples:
        >>> from localscore.lengthgen.evaluate import CountResult, Proportion
        >>> p = LocalityProfile((1.0,), (0.97,), (0.01,), (2.0,), 4.8)
        >>> r = EvaluationResult((CountResult(8, 10, *(Proportion(9, 10),) * 4),))
        >>> print(locality_table({"local": p}, {"local": r}, counts=[8]))
        | model | σ | locality index | on other objects | influence radius (px) | perfect @ 8 |
        |---|---|---|---|---|---|
        | local | 1 | 0.97 | 0.01 | 2.0 | 0.90 |
    """
    if not isinstance(profiles, Mapping) or not profiles:
        raise fail("locality_table", f"`profiles` is {describe(profiles)}, expected a non-empty dict "
                   "name -> LocalityProfile.")
    missing = sorted(set(profiles) - set(results))
    if missing:
        raise fail("locality_table", f"no evaluation result for models {missing}.",
                   "pass `results` with the same model names as `profiles`.")
    rows = []
    for name, prof in profiles.items():
        target = max(prof.sigmas) if sigma is None else sigma
        j = min(range(len(prof.sigmas)), key=lambda i: abs(math.log(prof.sigmas[i] / target)))
        res = results[name]
        per = {r.count: r.perfect for r in (res.pooled if isinstance(res, SeedTable) else res.rows)}
        rows.append([name, f"{prof.sigmas[j]:.3g}", f"{prof.index[j]:.{digits}f}",
                     f"{prof.on_others[j]:.{digits}f}", f"{prof.radius[j]:.1f}",
                     *(per[c].format(digits) if c in per else "–" for c in counts)])
    header = ["model", "σ", "locality index", "on other objects", "influence radius (px)",
              *(f"perfect @ {c}" for c in counts)]
    return _md_table(header, rows)
