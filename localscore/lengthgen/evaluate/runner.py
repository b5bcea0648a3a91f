"""Evaluate a sampler end to end: request layouts, generate, detect, match, count."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..._errors import describe, fail
from ...conditions import Conditions
from ..data.scenes import Scene, SceneConfig, sample_scenes
from .detect import detect_objects
from .metrics import EvaluationResult, evaluate_counts

__all__ = ["evaluate_sampler", "request_scenes"]

SampleFn = Callable[[Conditions, torch.Generator], Tensor]


def request_scenes(config: SceneConfig, counts: Sequence[int], per_count: int, *, seed: int = 0) -> Scene:
    """The requested layouts of an evaluation: ``per_count`` random scenes for each count, in order.

    Drawn with :func:`~localscore.lengthgen.data.sample_scenes` (the config's sizes, separation and margin) from
    a generator seeded with ``seed``: image ``i`` requests ``counts[i // per_count]`` objects.

    Examples:
        >>> s = request_scenes(SceneConfig(resolution=32), [0, 5], 2, seed=3)
        >>> s.counts().tolist()
        [0, 0, 5, 5]
    """
    where = "request_scenes"
    if isinstance(per_count, bool) or not isinstance(per_count, int) or per_count < 1:
        raise fail(where, f"`per_count` is {per_count!r}, expected an int >= 1.")
    counts = list(counts)
    if not counts or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
        raise fail(where, f"`counts` is {counts!r}, expected a non-empty list of ints >= 0.")
    g = torch.Generator().manual_seed(seed)
    wanted = torch.tensor(counts, dtype=torch.long).repeat_interleave(per_count)
    return sample_scenes(config, wanted.numel(), generator=g, counts=wanted)


def evaluate_sampler(
    sample_fn: SampleFn,
    config: SceneConfig,
    *,
    counts: Sequence[int] = tuple(range(11)),
    per_count: int = 50,
    seed: int = 0,
    batch_size: int = 64,
    max_distance: float | None = None,
    detector: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Length-generalization metrics of a conditional sampler.

    For each count in ``counts``, ``per_count`` layouts are requested (:func:`request_scenes`); their
    conditioner sets (every object labelled, ``Scene.conditions()``) are passed batch by batch to
    ``sample_fn(cond, generator)``, which must return images ``[b, 3, H, W]`` in ``[0, 1]``. The
    images are detected (:func:`~localscore.lengthgen.evaluate.detect_objects`) and scored
    (:func:`~localscore.lengthgen.evaluate.evaluate_counts`). The sampler's generator is seeded with
    ``seed + 1`` once, so the whole evaluation is reproducible. For a model trained with labelling
    ``"one"``, ``sample_fn`` should sample the projective composition of the single-object conditionals
    (``cond.singletons()``), as the paper's experiment 3 does.

    Args:
        sample_fn: ``(cond, generator) -> images``; e.g. a sampler around a trained denoiser, mapping
            its ``[-1, 1]`` output to ``[0, 1]``.
        config: the scene configuration (resolution, sizes, separation).
        counts: requested object counts.
        per_count: images per count.
        seed: seed of the layouts and of the sampler's generator.
        batch_size: images per ``sample_fn`` call.
        max_distance: pair distance threshold (see :func:`~localscore.lengthgen.evaluate.evaluate_counts`).
        detector: keyword arguments for :func:`~localscore.lengthgen.evaluate.detect_objects`.
        meta: metadata stored in the result (the seed is added).
        progress: show a tqdm progress bar (if tqdm is installed).

    Examples:
        >>> from localscore.lengthgen.data import decode_attributes, render_scene
        >>> cfg = SceneConfig(resolution=32)
        >>> def oracle(cond, generator):   # a perfect "sampler": render the requested scene
        ...     c, s, z = decode_attributes(cond.attr)
        ...     return render_scene(Scene(cond.pos, c, s, z, cond.valid, 32), cfg)
        >>> res = evaluate_sampler(oracle, cfg, counts=[0, 3], per_count=4)
        >>> [r.perfect.rate for r in res.rows]
        [1.0, 1.0]
    """
    where = "evaluate_sampler"
    if not callable(sample_fn):
        raise fail(where, f"`sample_fn` is {describe(sample_fn)}, expected a callable (cond, generator) -> images.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise fail(where, f"`batch_size` is {batch_size!r}, expected an int >= 1.")
    requested = request_scenes(config, counts, per_count, seed=seed)
    cond_all = requested.conditions()
    g = torch.Generator().manual_seed(seed + 1)
    starts = range(0, requested.batch_size, batch_size)
    if progress:
        try:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="evaluate", unit="batch")
        except ImportError:  # pragma: no cover
            pass
    found = []
    for i in starts:
        cond = cond_all[i : i + batch_size]
        images = sample_fn(cond, g)
        n = cond.batch_size
        if not isinstance(images, torch.Tensor) or tuple(images.shape) != (n, 3, config.resolution, config.resolution):
            raise fail(where, f"`sample_fn` returned {describe(images)}, expected images [{n}, 3, "
                       f"{config.resolution}, {config.resolution}] in [0, 1].")
        found.append(detect_objects(images.detach().float().cpu(), config, **dict(detector or {})))
    detected = Scene.cat(found)
    return evaluate_counts(detected, requested, max_distance=max_distance,
                           meta={"seed": seed, "per_count": per_count, **(dict(meta) if meta else {})})
