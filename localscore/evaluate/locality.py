r"""Locality of a trained model on scenes, and the table relating it to length generalization.

For each noise level ``sigma`` the model sees noisy scenes ``x = x0 + sigma * eps`` (``x0`` rendered
scenes in the model's value range, ``eps`` standard normal) with every object labelled, and
:func:`~localscore.metrics.conditional_locality` measures by ablation where each object's influence on
the output lands:

* ``index``: the mean share of an object's influence inside the ball of radius ``region_radius``
  around it (Chebyshev distance by default): 1 for a local conditional model;
* ``on_others``: the mean share that lands on the other objects' balls;
* ``radius``: the median over objects of the influence radius (distance holding ``quantile`` of it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .._errors import describe, fail
from ..data.scenes import SceneConfig, render_scene
from .metrics import EvaluationResult, SeedTable, _md_table
from .runner import request_scenes

__all__ = ["LocalityProfile", "locality_profile", "locality_table"]

#: An object's region for the locality index, as a share of the image side: a Chebyshev ball of radius
#: ``REGION_FRACTION * resolution`` (the one default of :func:`locality_profile` and
#: :func:`localscore.experiments.measure_locality`, and of the published indices).
REGION_FRACTION = 0.2


@dataclass(frozen=True)
class LocalityProfile:
    """Conditional locality of one model across noise levels (see the module docstring).

    Attributes:
        sigmas: the noise levels.
        index: per sigma, the mean share of influence inside the object's own region.
        on_others: per sigma, the mean share on the other objects' regions.
        radius: per sigma, the median influence radius in pixels.
        region_radius: the radius of the regions.
        meta: free-form metadata.
    """

    sigmas: tuple[float, ...]
    index: tuple[float, ...]
    on_others: tuple[float, ...]
    radius: tuple[float, ...]
    region_radius: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN as ``None``)."""
        def clean(v: tuple[float, ...]) -> list[float | None]:
            return [None if math.isnan(x) else x for x in v]

        return {"sigmas": list(self.sigmas), "index": clean(self.index), "on_others": clean(self.on_others),
                "radius": clean(self.radius), "region_radius": self.region_radius, "meta": dict(self.meta)}

    def to_markdown(self, digits: int = 2) -> str:
        """One row per sigma: index, share on other objects, median influence radius."""
        rows = [[f"{s:.3g}", f"{i:.{digits}f}", f"{o:.{digits}f}", f"{r:.1f}"]
                for s, i, o, r in zip(self.sigmas, self.index, self.on_others, self.radius)]
        return _md_table(["sigma", "locality index", "on other objects", "influence radius (px)"], rows)


def locality_profile(
    denoiser: Any,
    config: SceneConfig,
    *,
    sigmas: Sequence[float] = (0.1, 0.5, 2.0, 10.0),
    n_images: int = 4,
    count: int = 4,
    region_radius: float | None = None,
    quantile: float = 0.9,
    seed: int = 0,
    value_range: tuple[float, float] = (-1.0, 1.0),
    max_batch: int = 64,
) -> LocalityProfile:
    """Measure the conditional locality of ``denoiser`` on ``n_images`` scenes of ``count`` objects.

    Args:
        denoiser: ``D(x, sigma, cond)`` trained on scenes of ``config`` (images in ``value_range``).
        config: the scene configuration.
        sigmas: noise levels.
        n_images: scenes per noise level.
        count: objects per scene.
        region_radius: radius (pixels, Chebyshev) of an object's region; ``None`` means
            ``REGION_FRACTION * resolution`` (``0.2 * resolution``).
        quantile: quantile of the influence radius.
        seed: seed of the scenes and the noise.
        value_range: the model's image range (``[0, 1]`` renders are mapped to it).
        max_batch: the largest batch passed to the denoiser.

    Returns:
        A :class:`LocalityProfile`.

    Examples:
        >>> from localscore.testing import LocalConvDenoiser
        >>> D = LocalConvDenoiser(3, radius=1, cond_radius=1.0)
        >>> p = locality_profile(D, SceneConfig(resolution=16), sigmas=[1.0], n_images=1, count=2, region_radius=2.0)
        >>> p.index, p.on_others
        ((1.0,), (0.0,))
    """
    from ..metrics import conditional_locality

    where = "locality_profile"
    if not callable(denoiser):
        raise fail(where, f"`denoiser` is {describe(denoiser)}, expected a callable D(x, sigma, cond).")
    sig = [float(s) for s in sigmas]
    if not sig or not all(s > 0 and math.isfinite(s) for s in sig):
        raise fail(where, f"`sigmas` is {sigmas!r}, expected positive finite noise levels.")
    radius = REGION_FRACTION * config.resolution if region_radius is None else float(region_radius)
    scene = request_scenes(config, [count], n_images, seed=seed)
    lo, hi = value_range
    x0 = lo + (hi - lo) * render_scene(scene, config)
    cond = scene.conditions()
    g = torch.Generator().manual_seed(seed + 1)
    index, others, radii = [], [], []
    for s in sig:
        x = x0 + s * torch.randn(x0.shape, generator=g)
        res = conditional_locality(denoiser, x, s, cond, regions=radius, quantile=quantile, max_batch=max_batch)
        index.append(float(res.index["ablation"][0]))
        others.append(float(res.on_others_mean["ablation"][0]))
        r = res.influence_radius["ablation"][0]
        r = r[torch.isfinite(r)]
        radii.append(float(r.median()) if r.numel() else float("nan"))
    return LocalityProfile(tuple(sig), tuple(index), tuple(others), tuple(radii), radius,
                           {"count": count, "n_images": n_images, "seed": seed, "quantile": quantile})


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
    and the share on other objects there, the median influence radius there, and the perfect rate at
    each of ``counts`` (pooled over seeds for a :class:`~localscore.evaluate.SeedTable`).

    Examples:
        >>> from localscore.evaluate import CountResult, Proportion
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
