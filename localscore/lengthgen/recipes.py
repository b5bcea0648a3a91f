r"""The pipeline's recipes: train an experiment, sample a trained model, evaluate it per object count.

* :func:`train_experiment`: :func:`localscore.train.train` (EDM loss, EMA, atomic checkpoints, exact
  resume) on an endless :class:`~localscore.lengthgen.data.SceneStream` of the experiment's scenes (images
  in ``[-1, 1]``, ``sigma_data = 0.5``), then a model file (:func:`~localscore.lengthgen.save_model`);
* :func:`sampler`: Euler or Heun on the EDM grid :func:`~localscore.schedules.karras_sigmas`, with the
  requested objects as one conditioner set (``"joint"``), as a projective composition of single-object
  passes (``"projective"``), or as a masked composition in which each object's prediction acts only near it
  (``"masked"``, ``"localized"``: sampling-time conditioner locality); the image shape comes from the model;
* :func:`evaluate_model`: :func:`localscore.lengthgen.evaluate.evaluate_sampler` over counts 0..10.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import compose
from .._errors import describe, fail
from .._io import atomic_write, read_json, remove_stale_temps, run_lock
from ..conditions import Conditions
from ..denoisers import bind
from ..masks import DiscRule
from ..nn import LocalNetConfig, UNetConfig, build_denoiser, localize
from ..sampling import sample_euler, sample_heun
from ..schedules import karras_sigmas
from ..train import train
from ..train._state import seed_everything
from .data import SceneStream
from .evaluate import EvaluationResult, evaluate_sampler
from .experiments import METHODS, ExperimentConfig
from .models import LoadedModel, save_model

__all__ = ["evaluate_model", "sampler", "train_experiment"]


def train_experiment(
    config: ExperimentConfig,
    out_dir: str | os.PathLike[str],
    *,
    seed: int | None = None,
    steps: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Train one model of an experiment; resumable; writes ``OUT/checkpoint.pt``, ``log.jsonl``, ``model.pt``.

    Every generator is seeded with ``seed`` before the model is built (torch, numpy, python: the initial
    weights), the data stream with ``seed`` and the trainer with ``seed`` (noise levels, noise, dropout), so
    a run is reproducible bit for bit at a fixed thread count (float reductions in another thread count
    differ in the last bits), and an interrupted one (killed at any moment) continues exactly from its last
    checkpoint when called again with the same arguments.

    The run folder is locked while it trains (``out_dir/.lock`` holds the pid; a second writer is refused
    with a :class:`~localscore.LocalScoreError`), temporary files of writes killed mid-way are removed first,
    and a folder whose ``experiment.json`` records another training setup or seed is refused (``name``,
    ``model``, ``network``, ``scene``, ``enforce_radius`` and ``train`` must agree, except ``train``'s ``steps``,
    ``log_every``, ``checkpoint_every`` and ``progress``; the test-time settings may change).

    Args:
        config: the experiment.
        out_dir: the run directory.
        seed: the training seed (default ``config.seeds[0]``).
        steps: override the config's ``train.steps``.
        progress: show a progress bar.
        log: optional function receiving one-line progress messages.

    Returns:
        The trained model (EMA weights), also saved as ``OUT/model.pt``.
    """
    seed = config.seeds[0] if seed is None else seed
    out = Path(out_dir)
    with run_lock(out, where="train_experiment"):
        remove_stale_temps(out)
        return _train_experiment(config, out, seed, steps, progress, log)


_FREE_TRAIN = {"steps", "log_every", "checkpoint_every", "progress"}
"""``train`` fields a run may resume with other values (they do not change the trajectory)."""
_TRAINING_FIELDS = {"name", "model", "network", "scene", "train", "enforce_radius"}
"""The :class:`ExperimentConfig` fields that shape the trained weights (the others are test-time settings)."""


def _check_record(config: ExperimentConfig, out: Path, seed: int) -> None:
    """Refuse a run folder whose ``experiment.json`` records another experiment or seed."""
    record = out / "experiment.json"
    if not record.exists():
        return
    where = "train_experiment"
    fix = f"train into a new folder, or use the config of the run in {str(out)!r} (its experiment.json)."
    theirs = read_json(record, where=where, what="run record")
    if not isinstance(theirs, dict) or not isinstance(theirs.get("experiment"), dict):
        raise fail(where, f"{str(record)!r} is not a run record (expected an object with 'experiment').", fix)
    try:
        old = ExperimentConfig.from_dict(theirs["experiment"]).to_dict()
    except ValueError as e:
        raise fail(where, f"{str(record)!r} holds an experiment this localscore cannot read "
                   f"({str(e).splitlines()[0]}).", fix) from None
    new = config.to_dict()
    for d in (old, new):   # what shapes the trained weights; the test-time settings may change
        for k in set(d) - _TRAINING_FIELDS:
            d.pop(k)
        d["train"] = {k: v for k, v in d["train"].items() if k not in _FREE_TRAIN}
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if theirs.get("seed") != seed:
        differ.append("seed")
    if differ:
        detail = "; ".join(f"{k}: run {old.get(k, theirs.get(k))!r} vs now {new.get(k, seed)!r}"
                           for k in differ[:4])
        raise fail(where, f"{str(out)!r} holds a run of another configuration ({detail[:400]}); resuming it with "
                   "this one would mix two runs.", fix)


def _train_experiment(config: ExperimentConfig, out: Path, seed: int, steps: int | None, progress: bool,
                      log: Callable[[str], None] | None) -> LoadedModel:
    _check_record(config, out, seed)
    tcfg = config.train_config(seed)
    changes: dict[str, Any] = {"progress": progress}
    if steps is not None:
        changes["steps"] = steps
    tcfg = replace(tcfg, **changes)
    scene = config.scene_config()
    network = config.network_config()
    info = {"experiment": config.to_dict(), "seed": seed}
    text = json.dumps(info, indent=1).encode()
    atomic_write(out / "experiment.json", lambda f: f.write(text))
    seed_everything(seed)   # the initial weights, and any global RNG a module draws from
    model = build_denoiser(network, enforce_radius=config.enforce_radius)
    stream = SceneStream(scene, tcfg.batch_size, seed=seed, value_range=(-1.0, 1.0))
    t0 = time.perf_counter()
    trainer = train(model, stream, tcfg, out_dir=out, resume=True)
    seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in trainer.model.parameters())
    meta = {"experiment": config.to_dict(), "seed": seed, "steps": trainer.step, "batch_size": tcfg.batch_size,
            "parameters": params, "train_seconds_this_call": round(seconds, 1),
            "final_loss": trainer.history[-1]["loss"] if trainer.history else None}
    save_model(out / "model.pt", trainer.ema_model, config.model, network, scene, meta,
               enforce_radius=config.enforce_radius)
    if log is not None:
        log(f"{config.name} seed {seed}: {trainer.step} steps, {params} parameters, {seconds:.0f} s")
    ema = trainer.ema_model.eval().requires_grad_(False)
    return LoadedModel(ema, config.model, network, scene, meta, str(out / "model.pt"))


def sampler(
    model: LoadedModel | nn.Module,
    method: str = "joint",
    *,
    steps: int = 32,
    solver: str = "euler",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    mask_radius: float = 4.0,
    crop: int | None = None,
    resolution: int | None = None,
    channels: int | None = None,
    strategy: compose.Strategy = "auto",
    background: LoadedModel | nn.Module | None = None,
    progress: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> Callable[[Conditions, torch.Generator], Tensor]:
    r"""A sampling function ``(cond [B, K], generator) -> images [B, C, H, W]`` in ``[0, 1]``.

    Starting from ``x = sigma_max * z`` (``z ~ N(0, I)`` of shape ``[B, C, H, W]`` from ``generator``), the
    probability-flow ODE is solved (:func:`~localscore.sampling.sample_euler` /
    :func:`~localscore.sampling.sample_heun`) on ``karras_sigmas(steps, sigma_min, sigma_max)`` with the
    denoiser

    * ``"joint"``: ``D(x, sigma, cond)``, all requested objects in one conditioner set;
    * ``"projective"``: ``D(x, sigma, none) + sum_k (D(x, sigma, c_k) - D(x, sigma, none))``
      (:func:`~localscore.compose.projective_from`, one pass per object);
    * ``"masked"``: ``D(x, sigma, none) + sum_k m_k (D(x, sigma, c_k) - D(x, sigma, none))`` with disc
      masks ``m_k`` of radius ``mask_radius`` around each object (:func:`~localscore.compose.masked_from`);
    * ``"localized"``: the same masked composition computed by :func:`~localscore.nn.localize` with
      ``crop``: each object's two passes see only the ``crop x crop`` window of pixels around it
      (sampling-time pixel *and* conditioner locality for any network);

    and the result is mapped from ``[-1, 1]`` to ``[0, 1]``: ``images = clamp((x + 1) / 2, 0, 1)``.
    The composed methods need a model trained with conditioner dropout (its unconditional path), unless
    ``background`` gives another model: then ``D(x, sigma, none)`` in ``"projective"`` and ``"masked"`` is
    that model's empty-set output ``D_bg(x, sigma, none)`` (for example a model of object-free images, the
    *empty* background, where the model's own empty set is the *unconditional* one: the choice of background
    decides whether the composition is exact, see :func:`~localscore.lengthgen.evaluate.composition_terms`).
    ``strategy`` is how ``"projective"`` and ``"masked"`` evaluate their passes (the ``strategy`` of
    :class:`~localscore.compose.Composition`: ``"batched"`` stacks the background and every object's pass
    into one network call per step, ``"auto"`` lets the composition choose); it changes the speed, not the
    formula (the results agree to float round-off). ``progress`` shows the solver's tqdm bar; ``callback``
    is passed to the solver (called after each step with its dict, see :mod:`localscore.sampling`). Grad
    mode is the caller's: call the function under ``torch.inference_mode()`` when no gradients are wanted
    (as :func:`evaluate_model` does).

    Args:
        model: a :class:`~localscore.lengthgen.LoadedModel`, or a denoiser module.
        method: ``"joint"``, ``"projective"``, ``"masked"`` or ``"localized"``.
        steps: solver steps.
        solver: ``"euler"`` or ``"heun"``.
        sigma_min: smallest positive noise level of the grid.
        sigma_max: largest noise level of the grid.
        mask_radius: disc radius in pixels of ``"masked"`` and ``"localized"``.
        crop: window side of ``"localized"`` (``None``: whole-image passes).
        resolution: image side ``H = W``; default: the training resolution of a ``LoadedModel`` (required
            for a bare module).
        channels: image channels ``C``; default: the network config's ``channels`` (of a ``LoadedModel``,
            or the ``config`` of the module or of the modules it wraps).
        strategy: evaluation strategy of the ``"projective"`` and ``"masked"`` compositions (``"auto"``,
            ``"sequential"``, ``"batched"`` or ``"crop"``); ignored by ``"joint"`` and ``"localized"``.
        background: the background model of ``"projective"`` and ``"masked"`` (a ``LoadedModel`` or a
            denoiser module, called with the empty set); ``None``: the model's own empty-set output.
        progress: show the solver's progress bar.
        callback: passed to the solver.

    Examples:
        >>> from localscore import Conditions
        >>> from localscore.nn import LocalNetConfig, build_denoiser
        >>> D = build_denoiser(LocalNetConfig(width=8, depth=1, attr_dim=0))
        >>> f = sampler(D, "projective", steps=2, resolution=16)
        >>> img = f(Conditions.from_lists([[(4.0, 4.0), (10.0, 10.0)]]), torch.Generator().manual_seed(0))
        >>> img.shape, bool(img.min() >= 0 and img.max() <= 1)
        (torch.Size([1, 3, 16, 16]), True)
    """
    where = "sampler"
    D = model.denoiser if isinstance(model, LoadedModel) else model
    if not callable(D):
        raise fail(where, f"`model` is {describe(model)}, expected a LoadedModel or a denoiser module.")
    if method not in METHODS:
        raise fail(where, f"`method` is {method!r}, expected one of {METHODS}.")
    if solver not in ("euler", "heun"):
        raise fail(where, f"`solver` is {solver!r}, expected 'euler' or 'heun'.")
    res = resolution if resolution is not None else model.resolution if isinstance(model, LoadedModel) else None
    if res is None:
        raise fail(where, "`resolution` is None and `model` is a bare module, whose image size is unknown.",
                   "pass resolution=H (the image side), or a LoadedModel (its training resolution).")
    C = channels if channels is not None else _channels(model)
    for name, v in (("resolution", res), ("channels", C)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise fail(where, f"`{name}` is {describe(v)}, expected an int >= 1.")
    if strategy not in ("auto", "sequential", "batched", "crop"):
        raise fail(where, f"`strategy` is {strategy!r}, expected 'auto', 'sequential', 'batched' or 'crop'.")
    Dbg: Any = D
    if background is not None:
        if method not in ("projective", "masked"):
            raise fail(where, f"`background` is given with method {method!r}, which has no background.",
                       "pass background only with method='projective' or 'masked'.")
        Dbg = background.denoiser if isinstance(background, LoadedModel) else background
        if not callable(Dbg):
            raise fail(where, f"`background` is {describe(background)}, expected None, a LoadedModel or a "
                       "denoiser module.")
        if isinstance(background, LoadedModel) and isinstance(model, LoadedModel) and (
                background.resolution != model.resolution or background.network.channels != model.network.channels):
            raise fail(where, f"the background model draws {background.network.channels} x {background.resolution}"
                       f" px images, the model {model.network.channels} x {model.resolution} px.",
                       "use a background model trained on images of the same size.")
    solve = sample_euler if solver == "euler" else sample_heun
    rule = DiscRule(float(mask_radius))

    def run(cond: Conditions, generator: torch.Generator) -> Tensor:
        B = cond.batch_size
        try:
            dev = next(D.parameters()).device
        except (AttributeError, StopIteration):
            dev = torch.device("cpu")
        cond = cond.to(dev)
        sig = karras_sigmas(steps, sigma_min, sigma_max, device=dev)
        z = torch.randn(B, C, res, res, generator=generator).to(dev)
        x = sig[0] * z
        if method == "joint":
            out = solve(D, x, sig, cond, progress=progress, callback=callback)
        elif method == "projective":
            comp = compose.projective_from(D, cond, strategy=strategy) if Dbg is D else compose.projective(
                bind(Dbg, cond.drop_all()), [bind(D, c) for c in cond.singletons()], strategy=strategy)
            out = solve(comp, x, sig, progress=progress, callback=callback)
        elif method == "masked":
            comp = compose.masked_from(D, cond, rule, strategy=strategy) if Dbg is D else compose.masked(
                bind(Dbg, cond.drop_all()), [bind(D, c) for c in cond.singletons()], rule, mask_cond=cond,
                strategy=strategy)
            out = solve(comp, x, sig, progress=progress, callback=callback)
        else:
            out = solve(localize(D, rule, crop=crop), x, sig, cond, progress=progress, callback=callback)
        return ((out.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()

    return run


def _channels(model: LoadedModel | nn.Module) -> int:
    """The image channels of a model: its network config's ``channels`` (following ``.inner``), else 3."""
    if isinstance(model, LoadedModel):
        return int(model.network.channels)
    m: Any = model
    for _ in range(16):
        cfg = getattr(m, "config", None)
        if isinstance(cfg, (LocalNetConfig, UNetConfig)):
            return int(cfg.channels)
        m = getattr(m, "inner", None)
        if m is None:
            break
    raise fail("sampler", f"cannot tell the image channels of {describe(model)} (no network config found).",
               "pass channels=C.")


def evaluate_model(
    model: LoadedModel,
    method: str = "joint",
    *,
    counts: Sequence[int] = tuple(range(11)),
    per_count: int = 50,
    seed: int = 0,
    steps: int = 32,
    solver: str = "euler",
    mask_radius: float = 4.0,
    crop: int | None = None,
    batch_size: int = 64,
    strategy: compose.Strategy = "auto",
    background: LoadedModel | None = None,
    progress: bool = False,
    meta: Mapping[str, Any] | None = None,
    keep_images: list[Tensor] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> EvaluationResult:
    """Per-count length-generalization metrics of a trained model (see :func:`sampler` for ``method``).

    ``per_count`` layouts per count are drawn with the model's scene config (sizes, separation, margin;
    every object labelled) from ``seed``, sampled, detected and matched:
    :func:`localscore.lengthgen.evaluate.evaluate_sampler`. The requested layouts are
    ``localscore.lengthgen.evaluate.request_scenes(scene, counts, per_count, seed=seed)``, in that order.

    Args:
        model: the trained model.
        method: ``"joint"``, ``"projective"`` or ``"masked"``.
        counts: requested object counts.
        per_count: images per count.
        seed: seed of the layouts and the sampler noise.
        steps: sampler steps.
        solver: ``"euler"`` or ``"heun"``.
        mask_radius: disc radius of ``"masked"`` and ``"localized"``.
        crop: window side of ``"localized"``.
        batch_size: images per sampler call.
        strategy: evaluation strategy of the composed methods (see :func:`sampler`).
        background: another model as the background of ``"projective"`` / ``"masked"`` (see :func:`sampler`);
            ``None``: the model's own empty-set output.
        progress: progress bar over batches.
        meta: extra metadata stored in the result.
        keep_images: if a list is given, the generated image batches ``[b, C, H, W]`` are appended to it.
        callback: passed to :func:`sampler` (called after each solver step of each batch).
    """
    scene = model.scene.replace(counts=tuple(counts), labelling="all")
    base = sampler(model, method, steps=steps, solver=solver, mask_radius=mask_radius, crop=crop,
                   strategy=strategy, background=background, callback=callback)
    if keep_images is None:
        fn = base
    else:
        def fn(cond: Conditions, generator: torch.Generator) -> Tensor:
            images = base(cond, generator)
            keep_images.append(images)
            return images
    info = {"method": method, "steps": steps, "solver": solver, **(dict(meta) if meta else {})}
    if method in ("masked", "localized"):
        info["mask_radius"] = mask_radius
    if method == "localized":
        info["crop"] = crop
    if background is not None:
        info["background"] = background.meta.get("experiment", {}).get("name") or background.source or "a model"
    with torch.inference_mode():   # metrics only: no gradients
        return evaluate_sampler(fn, scene, counts=counts, per_count=per_count, seed=seed, batch_size=batch_size,
                                progress=progress, meta=info)
