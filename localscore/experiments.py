"""Deprecated: the length-generalization pipeline moved to :mod:`localscore.lengthgen` in 0.2.

Every public name of 0.1.0 still resolves here until 0.3, with a ``DeprecationWarning`` naming its new
location:

* ``ExperimentConfig``, ``load_experiments`` -> :mod:`localscore.lengthgen` (``lengthgen.experiments``);
* ``LoadedModel``, ``MODEL_NAMES``, ``DEMO_EXPERIMENTS``, ``checkpoint_dir``, ``demo_experiments``,
  ``load_model``, ``resolve_model``, ``save_model`` -> :mod:`localscore.lengthgen` (``lengthgen.models``);
* ``train_experiment``, ``sampler``, ``evaluate_model`` -> :mod:`localscore.lengthgen` (``lengthgen.recipes``);
* ``build_denoiser(kind, network, enforce_radius=...)`` -> :func:`localscore.nn.build_denoiser` of
  :func:`localscore.lengthgen.network_config`;
* ``model_from_checkpoint(path)`` -> :func:`localscore.lengthgen.load_model` (which reads checkpoints);
* ``measure_locality(model, ...)`` -> :func:`localscore.lengthgen.locality_profile` (one schema,
  :class:`~localscore.lengthgen.LocalityProfile`); the shim returns the 0.1.0 dict.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._moved import forward, warn_moved

_NEW = "localscore.lengthgen"
_FORWARDED = {
    "DEMO_EXPERIMENTS", "MODEL_NAMES", "ExperimentConfig", "LoadedModel", "checkpoint_dir", "demo_experiments",
    "evaluate_model", "load_experiments", "load_model", "resolve_model", "sampler", "save_model",
    "train_experiment", "ModelKind", "Method",
}


def _build_denoiser(kind: str, network: Any, *, enforce_radius: float | None = None) -> Any:
    """0.1.0's ``build_denoiser(kind, network, enforce_radius=None)``."""
    from .lengthgen import network_config
    from .nn import LocalNetConfig, UNetConfig, build_denoiser

    cfg = network if isinstance(network, (LocalNetConfig, UNetConfig)) else network_config(kind, network)
    expected = LocalNetConfig if kind == "local" else UNetConfig if kind == "unet" else None
    if expected is None or not isinstance(cfg, expected):
        from ._errors import fail

        raise fail("build_denoiser", f"`kind` {kind!r} does not match the config {type(cfg).__name__}.",
                   "use kind='local' with a LocalNetConfig and kind='unet' with a UNetConfig.")
    return build_denoiser(cfg, enforce_radius=enforce_radius)


def _model_from_checkpoint(path: str | os.PathLike[str], *, device: Any = "cpu") -> Any:
    """0.1.0's ``model_from_checkpoint(path)``: ``load_model`` reads training checkpoints."""
    from .lengthgen import load_model

    return load_model(path, device=device)


def _measure_locality(model: Any, *, sigmas: Sequence[float] = (0.05, 0.2, 0.5, 1.0, 2.0), count: int = 4,
                      images: int = 4, radius: float | None = None, pixel_rows: int = 16, seed: int = 0,
                      callback: Callable[[int], None] | None = None) -> dict[str, Any]:
    """0.1.0's ``measure_locality(model, ...)``: the same numbers, in the 0.1.0 dict."""
    from .lengthgen import locality_profile

    p = locality_profile(model.denoiser, model.scene, sigmas=sigmas, n_images=images, count=count,
                         region_radius=radius, pixel_rows=pixel_rows, seed=seed, callback=callback)
    n = len(p.sigmas)
    return {"sigmas": list(p.sigmas), "radius": p.region_radius, "count": count, "images": images,
            "conditional_index": list(p.index), "on_others": list(p.on_others),
            "influence_radius": list(p.radius), "pixel_radius_90": list(p.pixel_radius),
            "summary": {"conditional_index": sum(p.index) / n, "pixel_radius_90": sum(p.pixel_radius) / n}}


_REPLACED: Mapping[str, tuple[Callable[..., Any], str]] = {
    "build_denoiser": (_build_denoiser, "localscore.nn.build_denoiser(localscore.lengthgen.network_config(kind, "
                       "network), enforce_radius=...)"),
    "model_from_checkpoint": (_model_from_checkpoint, "localscore.lengthgen.load_model"),
    "measure_locality": (_measure_locality, "localscore.lengthgen.locality_profile(model.denoiser, model.scene, "
                         "...)"),
}


def __getattr__(name: str) -> Any:
    if name in _REPLACED:
        fn, new = _REPLACED[name]
        warn_moved(f"{__name__}.{name}", new, stacklevel=3)
        return fn
    if name in _FORWARDED:
        return forward(__name__, f"{_NEW}.experiments" if name in ("ModelKind", "Method") else _NEW, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
