"""Trained models of the pipeline: compact model files, the shipped models, and the one loader.

A *model file* (:func:`save_model` / :func:`load_model`) holds the EMA weights, the network config, the
scene config and the training record, loaded with ``weights_only=True``. The shipped files in
``localscore/checkpoints/`` are addressable by name (``"local-32"``, ``"baseline-32"``). :func:`load_model`
reads them, model files, and training runs alike, and returns a :class:`LoadedModel`: the denoiser with
what is needed to sample and evaluate it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._errors import describe, fail
from .._io import load_payload, read_json, save_payload
from ..nn import LocalNetConfig, UNetConfig, build_denoiser
from ..train import load_checkpoint
from .data import SceneConfig
from .experiments import ExperimentConfig, network_config

__all__ = [
    "BACKGROUND_MODELS",
    "DEMO_EXPERIMENTS",
    "MODEL_NAMES",
    "SHIPPED_MODELS",
    "LoadedModel",
    "checkpoint_dir",
    "demo_experiments",
    "load_model",
    "resolve_model",
    "save_model",
]

MODEL_KIND = "localscore-model"
"""The ``format`` tag of a model file."""
MODEL_VERSION = 1
"""The version of the model file format."""
MODEL_NAMES = ("local-32", "baseline-32")
"""Names of the length-generalization model files shipped in ``localscore/checkpoints/`` (``NAME.pt``)."""
BACKGROUND_MODELS = {"bg-single01-32": "single01", "bg-single-32": "single", "bg-empty-32": "empty",
                     "bg-clutter-32": "clutter"}
"""The shipped models of ``localscore demo --background`` and the experiments of
``benchmarks/configs/background.json`` they come from (seed 0): local networks trained on 0-1 objects
(``single01``), on one object with conditioner dropout (``single``), on object-free images (``empty``) and on
1-3 objects with one labelled (``clutter``)."""
SHIPPED_MODELS = MODEL_NAMES + tuple(BACKGROUND_MODELS)
"""Every model name :func:`load_model` accepts."""


DEMO_EXPERIMENTS = {"local-32": "local-all-nodrop", "baseline-32": "unet-one"}
"""The shipped models and the experiments of ``benchmarks/configs/full.json`` they come from (seed 0).

``local-32``: the local conditional network, every object labelled, trained without conditioner dropout
(its empty-set prediction, the background of projective composition, is learned from the pixels far from
every object). ``baseline-32``: the failing baseline of the paper's second experiment, a global
cross-attention U-Net trained with one labelled object per image (the others unlabelled clutter), tested as
a projective composition of one-object passes.
"""


def checkpoint_dir() -> Path:
    """The folder of the shipped model files (``localscore/checkpoints``)."""
    return Path(__file__).resolve().parent.parent / "checkpoints"


@dataclass
class LoadedModel:
    """A trained denoiser with what is needed to sample and evaluate it.

    Attributes:
        denoiser: the denoiser (EMA weights, eval mode, gradients off for its parameters).
        kind: ``"local"`` or ``"unet"``.
        network: the network config.
        scene: the training :class:`~localscore.lengthgen.data.SceneConfig`.
        meta: the training record (experiment config, steps, seconds, ...).
        source: where it was loaded from.
    """

    denoiser: nn.Module
    kind: str
    network: LocalNetConfig | UNetConfig
    scene: SceneConfig
    meta: dict[str, Any]
    source: str = ""

    @property
    def resolution(self) -> int:
        """Image side of the training data."""
        return self.scene.resolution


def save_model(path: str | os.PathLike[str], model: nn.Module, kind: str, network: LocalNetConfig | UNetConfig,
               scene: SceneConfig, meta: Mapping[str, Any] | None = None, *,
               enforce_radius: float | None = None) -> Path:
    """Write a compact model file atomically: weights (float32), configs and metadata (JSON values).

    The file is a ``torch.save`` archive loadable with ``weights_only=True`` and carries a SHA-256 digest of
    its contents (see :func:`load_model`).
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"kind": kind, "network": network.to_dict(), "scene": scene.to_dict(), "enforce_radius": enforce_radius,
               "meta": json.loads(json.dumps(dict(meta or {}))), "weights": state}
    return save_payload(path, payload, kind=MODEL_KIND, version=MODEL_VERSION)


def resolve_model(path_or_name: str | os.PathLike[str]) -> Path:
    """A model file path: a shipped name (``"local-32"``, ``"baseline-32"``) or an existing path.

    Training checkpoints (``checkpoint.pt`` of :func:`localscore.train.train`) are accepted too, when the run
    directory holds the ``experiment.json`` written by :func:`~localscore.lengthgen.train_experiment`.
    """
    text = str(path_or_name)
    if text in SHIPPED_MODELS:
        p = checkpoint_dir() / f"{text}.pt"
        if not p.is_file():
            raise fail("load_model", f"the shipped model {text!r} is missing from {str(checkpoint_dir())!r}.",
                       "reinstall localscore, or rebuild it with `localscore demo --retrain`.")
        return p
    p = Path(text)
    if p.is_dir():
        p = p / "model.pt" if (p / "model.pt").is_file() else p / "checkpoint.pt"
    if not p.is_file():
        raise fail("load_model", f"{text!r} is neither a shipped model name {list(SHIPPED_MODELS)} nor an existing "
                   "file.", "pass a name such as 'local-32', or the path of a model file / training run.")
    return p


def load_model(path_or_name: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a trained model: a shipped name, a model file (:func:`save_model`) or a training run.

    The one loader of the pipeline. ``path_or_name`` is resolved by :func:`resolve_model`: a shipped name
    (``"local-32"``, ``"baseline-32"``), a model file, a run folder of
    :func:`~localscore.lengthgen.train_experiment` (its ``model.pt``, else its ``checkpoint.pt``), or a
    training checkpoint next to that run's ``experiment.json`` (the EMA weights are loaded). Everything is
    read with ``torch.load(..., weights_only=True)`` and the digest is checked. The digest detects damage
    (a truncated or corrupted file), not tampering: it is no signature, so the record's fields are checked
    as untrusted data before anything is built (network sizes against
    ``localscore.lengthgen.experiments.NETWORK_LIMITS``, the weights a dict of tensors).

    Args:
        path_or_name: what to load.
        device: where the denoiser goes.

    Returns:
        The :class:`LoadedModel` (eval mode, gradients off for its parameters).

    Raises:
        LocalScoreError: for unknown names, missing, corrupt or foreign files.

    Examples:
        >>> m = load_model("local-32")
        >>> m.kind, m.resolution, m.network.channels
        ('local', 32, 3)
    """
    p = resolve_model(path_or_name)
    if p.name == "checkpoint.pt" or _is_checkpoint(p):
        return _from_checkpoint(p, device=device)
    payload = load_payload(p, kind=MODEL_KIND, version=MODEL_VERSION, where="load_model")
    _check_payload(payload, p)
    network = network_config(payload["kind"], payload["network"])
    scene = SceneConfig.from_dict(payload["scene"])
    model = build_denoiser(network, enforce_radius=payload.get("enforce_radius"))
    try:
        model.load_state_dict(payload["weights"])
    except (RuntimeError, TypeError, ValueError, KeyError) as e:
        raise fail("load_model", f"the weights in {str(p)!r} do not fit its network config "
                   f"({str(e).splitlines()[0]}).", "recreate the model file.") from e
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(model, payload["kind"], network, scene, dict(payload["meta"]), str(p))


def _check_payload(payload: Any, p: Path) -> None:
    """The fields of a model file, checked before anything is built from them."""
    fix = "recreate the model file with save_model (or `localscore train`)."
    if not isinstance(payload, dict):
        raise fail("load_model", f"{str(p)!r} holds {describe(payload)}, not a model record.", fix)
    missing = sorted({"kind", "network", "scene", "weights"} - set(payload))
    if missing:
        raise fail("load_model", f"{str(p)!r} has no {', '.join(repr(m) for m in missing)} in its record.", fix)
    if payload["kind"] not in ("local", "unet"):
        raise fail("load_model", f"{str(p)!r} names the network kind {describe(payload['kind'])}; expected 'local' "
                   "or 'unet'.", fix)
    for key in ("network", "scene", "weights"):
        if not isinstance(payload[key], dict):
            raise fail("load_model", f"'{key}' in {str(p)!r} is {describe(payload[key])}, expected a dict.", fix)
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload["weights"].items()):
        raise fail("load_model", f"'weights' in {str(p)!r} is not a dict of named tensors.", fix)
    if not isinstance(payload.get("meta", {}), dict):
        raise fail("load_model", f"'meta' in {str(p)!r} is {describe(payload.get('meta'))}, expected a dict.", fix)
    payload.setdefault("meta", {})
    r = payload.get("enforce_radius")
    if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1e6):
        raise fail("load_model", f"'enforce_radius' in {str(p)!r} is {describe(r)}, expected None or a radius "
                   "in pixels.", fix)


def _is_checkpoint(p: Path) -> bool:
    return (p.parent / "experiment.json").is_file() and p.suffix == ".pt" and p.name != "model.pt"


def _from_checkpoint(path: Path, *, device: torch.device | str = "cpu") -> LoadedModel:
    """The EMA model of a training checkpoint of :func:`~localscore.lengthgen.train_experiment` (its folder
    holds ``experiment.json``)."""
    exp_file = path.parent / "experiment.json"
    if not exp_file.is_file():
        raise fail("load_model", f"no experiment.json next to {str(path)!r}; cannot rebuild the network.",
                   "pass a model file written by save_model, or a run directory of train_experiment.")
    info = read_json(exp_file, where="load_model", what="run record")
    if not isinstance(info, dict) or not isinstance(info.get("experiment"), dict):
        raise fail("load_model", f"{str(exp_file)!r} is {describe(info)}, expected an object with an 'experiment' "
                   "config.", "restore it from the run's model.pt, or retrain into a new folder.")
    exp = ExperimentConfig.from_dict(info["experiment"])
    model = build_denoiser(exp.network_config(), enforce_radius=exp.enforce_radius)
    state = load_checkpoint(path, model, weights="ema")
    model.to(device).eval().requires_grad_(False)
    meta = {"experiment": exp.to_dict(), "seed": info.get("seed"), "steps": int(state["step"])}
    return LoadedModel(model, exp.model, exp.network_config(), exp.scene_config(), meta, str(path))


def demo_experiments() -> dict[str, ExperimentConfig]:
    """The experiment configs that trained the shipped models, read from the files themselves.

    Each shipped file records its :class:`ExperimentConfig` and the steps it actually ran; the returned
    configs train for exactly those steps, so ``train_experiment(cfg, dir, seed=cfg.seeds[0])`` reproduces
    the shipped weights up to float round-off (``localscore demo --retrain`` does this).
    """
    out = {}
    for name in MODEL_NAMES:
        p = resolve_model(name)
        payload = load_payload(p, kind=MODEL_KIND, version=MODEL_VERSION, where="demo_experiments")
        meta = payload["meta"]
        exp = ExperimentConfig.from_dict(meta["experiment"])
        train = {**exp.train, "steps": int(meta["steps"])}
        out[name] = exp.replace(train=train, seeds=(int(meta["seed"]),))
    return out


