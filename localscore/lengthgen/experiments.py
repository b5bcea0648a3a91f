r"""Length-generalization experiments: the :class:`ExperimentConfig` and the benchmark's config files.

An *experiment* trains one denoiser on CLEVR-like scenes with few objects and measures how well it draws
scenes with many. It is described by an :class:`ExperimentConfig` (JSON-serialisable; the files in
``benchmarks/configs/`` hold lists of them, read by :func:`load_experiments`) and run with
:func:`~localscore.lengthgen.train_experiment`, :func:`~localscore.lengthgen.sampler`,
:func:`~localscore.lengthgen.evaluate_model` and :func:`~localscore.lengthgen.locality_profile`.

The network of an experiment is ``"local"``, a :class:`~localscore.nn.LocalConditionalDenoiser` (local in
pixels and in conditioners by construction), or ``"unet"``, a :class:`~localscore.nn.GlobalConditionalDenoiser`
(a U-Net with global cross-attention; with ``token_encoder_layers > 0`` the tokens first see each other, the
failing kind), built by :func:`localscore.nn.build_denoiser` from :func:`network_config`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._config import ConfigMixin
from .._errors import describe, fail
from .._io import read_json
from ..nn import LocalNetConfig, UNetConfig
from ..train import TrainConfig
from .data import ATTR_DIM, SceneConfig

__all__ = ["METHODS", "ExperimentConfig", "Method", "ModelKind", "load_experiments", "network_config"]

ModelKind = Literal["local", "unet"]
"""The network kinds of an experiment."""
Method = Literal["joint", "projective", "masked", "localized"]
"""How a trained model is sampled (see :func:`~localscore.lengthgen.sampler`)."""
METHODS: tuple[str, ...] = ("joint", "projective", "masked", "localized")
"""The sampling methods, in the order of :data:`Method`."""


@dataclass(frozen=True)
class ExperimentConfig(ConfigMixin):
    """One model of a length-generalization experiment (JSON-serialisable, validated on construction).

    Attributes:
        name: a short identifier (file names, table rows).
        model: ``"local"`` or ``"unet"`` (see :func:`localscore.nn.build_denoiser`).
        network: fields of :class:`~localscore.nn.LocalNetConfig` / :class:`~localscore.nn.UNetConfig`;
            the attribute length is always ``localscore.lengthgen.data.ATTR_DIM`` (13).
        scene: fields of :class:`~localscore.lengthgen.data.SceneConfig` of the *training* data (resolution, counts,
            labelling, ...).
        train: fields of :class:`~localscore.train.TrainConfig` (``seed`` is set per run).
        methods: how the trained model is sampled at test time (each evaluated): ``"joint"``,
            ``"projective"`` or ``"masked"`` (see :func:`~localscore.lengthgen.sampler`).
        mask_radius: radius in pixels of the disc masks of ``"masked"`` and ``"localized"`` sampling.
        crop: window side of ``"localized"`` sampling (each object's passes see only that window of pixels);
            ``None``: whole-image passes.
        enforce_radius: the training-time intervention: if given, every cross-attention layer of the network is
            masked to the conditioners within this Euclidean radius (pixels) during training and sampling
            (:func:`localscore.nn.enforce_locality` with a :class:`~localscore.masks.DiscRule`).
        sampler: ``"euler"`` or ``"heun"``.
        sampling_steps: steps of the sampler.
        sigma_min: smallest positive noise level of the sampling grid.
        sigma_max: largest noise level of the sampling grid.
        eval_counts: requested object counts at test time.
        per_count: test images per count and seed.
        seeds: training seeds (one model each).
        note: free text shown in the results.

    Examples:
        >>> cfg = ExperimentConfig(name="local", model="local", network={"width": 16}, scene={"resolution": 16})
        >>> ExperimentConfig.from_dict(cfg.to_dict()) == cfg
        True
        >>> cfg.scene_config().resolution, cfg.network_config().width
        (16, 16)
    """

    _from_dict_fix = "check the spelling of the experiment keys."

    name: str
    model: ModelKind = "local"
    network: dict[str, Any] = field(default_factory=dict)
    scene: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    methods: tuple[str, ...] = ("joint",)
    mask_radius: float = 4.0
    crop: int | None = None
    enforce_radius: float | None = None
    sampler: Literal["euler", "heun"] = "euler"
    sampling_steps: int = 32
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    eval_counts: tuple[int, ...] = tuple(range(11))
    per_count: int = 50
    seeds: tuple[int, ...] = (0,)
    note: str = ""

    def __post_init__(self) -> None:
        w = "ExperimentConfig"
        if not isinstance(self.name, str) or not self.name or any(c in self.name for c in "/\\ "):
            raise fail(w, f"`name` is {self.name!r}, expected a non-empty string without spaces or slashes.")
        if self.model not in ("local", "unet"):
            raise fail(w, f"`model` is {self.model!r}, expected 'local' or 'unet'.")
        for name in ("network", "scene", "train"):
            if not isinstance(getattr(self, name), dict):
                raise fail(w, f"`{name}` is {describe(getattr(self, name))}, expected a dict of fields.")
        methods = tuple(self.methods)
        if not methods or any(m not in METHODS for m in methods):
            raise fail(w, f"`methods` is {self.methods!r}, expected a non-empty list of {METHODS}.")
        object.__setattr__(self, "methods", methods)
        if self.sampler not in ("euler", "heun"):
            raise fail(w, f"`sampler` is {self.sampler!r}, expected 'euler' or 'heun'.")
        for name in ("sampling_steps", "per_count"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise fail(w, f"`{name}` is {v!r}, expected an int >= 1.")
        for name in ("mask_radius", "sigma_min", "sigma_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise fail(w, f"`{name}` is {v!r}, expected a positive finite number.")
        for name in ("enforce_radius",):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                                  or v <= 0):
                raise fail(w, f"`{name}` is {v!r}, expected None or a positive radius in pixels.")
        if self.crop is not None and (isinstance(self.crop, bool) or not isinstance(self.crop, int) or self.crop < 4):
            raise fail(w, f"`crop` is {self.crop!r}, expected None or a window side (int >= 4).")
        if not self.sigma_min < self.sigma_max:
            raise fail(w, f"`sigma_min` = {self.sigma_min} is not below `sigma_max` = {self.sigma_max}.")
        for name in ("eval_counts", "seeds"):
            v = tuple(getattr(self, name))
            if not v or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in v):
                raise fail(w, f"`{name}` is {getattr(self, name)!r}, expected a non-empty list of ints >= 0.")
            object.__setattr__(self, name, v)
        # Validate the nested configs now, so a bad file fails before any training.
        self.scene_config()
        self.network_config()
        self.train_config(self.seeds[0])

    def scene_config(self) -> SceneConfig:
        """The training :class:`~localscore.lengthgen.data.SceneConfig`."""
        return SceneConfig.from_dict(dict(self.scene))

    def eval_scene_config(self) -> SceneConfig:
        """The scene config of the evaluation: the training one with ``counts = eval_counts``."""
        return self.scene_config().replace(counts=self.eval_counts, labelling="all")

    def network_config(self) -> LocalNetConfig | UNetConfig:
        """The network config (attribute length 13, the CLEVR-like labels)."""
        return network_config(self.model, self.network)

    def train_config(self, seed: int) -> TrainConfig:
        """The :class:`~localscore.train.TrainConfig` of the run with training seed ``seed``."""
        data = dict(self.train)
        data["seed"] = int(seed)
        return TrainConfig.from_dict(data)


def network_config(kind: str, network: Mapping[str, Any]) -> LocalNetConfig | UNetConfig:
    """The network config of a model kind from a dict of its fields (attribute length 13 unless given).

    Args:
        kind: ``"local"`` (:class:`~localscore.nn.LocalNetConfig`) or ``"unet"``
            (:class:`~localscore.nn.UNetConfig`).
        network: fields of that config; ``attr_dim`` defaults to ``localscore.lengthgen.data.ATTR_DIM``.

    Examples:
        >>> network_config("local", {"width": 8}).attr_dim
        13
    """
    if not isinstance(network, Mapping):
        raise fail("network_config", f"`network` is {describe(network)}, expected a dict of network fields.")
    data = {"attr_dim": ATTR_DIM, **dict(network)}
    if kind not in ("local", "unet"):
        raise fail("network_config", f"`kind` is {kind!r}, expected 'local' or 'unet'.")
    check_network_size(data)
    cfg = LocalNetConfig.from_dict(data) if kind == "local" else UNetConfig.from_dict(data)
    _check_parameters(cfg)
    return cfg


NETWORK_LIMITS: dict[str, int] = {
    "channels": 64, "width": 4096, "depth": 256, "kernel_size": 31, "attr_dim": 4096, "token_dim": 4096,
    "heads": 64, "relative_freqs": 256, "base_width": 2048, "blocks_per_level": 32, "fourier_freqs": 256,
    "token_encoder_layers": 64, "groups": 4096, "sigma_embed_dim": 4096,
}
"""Upper bounds of the integer fields of a network config, checked before anything is built."""
MAX_CHANNEL_MULT = (16, 8)
"""``UNetConfig.channel_mult``: at most 8 levels, each a multiple of at most 16."""
MAX_PARAMETERS = 2 * 10**9
"""The most parameters a network of the pipeline may have (8 GB of float32 weights)."""


def check_network_size(fields: Mapping[str, Any], *, where: str = "network_config") -> None:
    """Refuse network fields over ``NETWORK_LIMITS`` before any module is built.

    A model file or config is data: ``width = 200000`` would allocate 160 GB and ``depth = 10**7`` would
    build modules for minutes, so the sizes are checked first, with a message naming the field and its limit.

    Examples:
        >>> try:
        ...     check_network_size({"width": 200000})
        ... except ValueError as e:
        ...     print(str(e).splitlines()[0])
        network_config: network field `width` is 200000, over the limit of 4096.
    """
    for name, top in NETWORK_LIMITS.items():
        v = fields.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v > top:
            raise fail(where, f"network field `{name}` is {v}, over the limit of {top}.",
                       f"use `{name}` <= {top}; a network that large does not fit in memory.")
    mult = fields.get("channel_mult")
    if isinstance(mult, (list, tuple)) and (len(mult) > MAX_CHANNEL_MULT[1] or any(
            isinstance(m, int) and m > MAX_CHANNEL_MULT[0] for m in mult)):
        raise fail(where, f"network field `channel_mult` is {list(mult)[:12]!r}, over the limit of "
                   f"{MAX_CHANNEL_MULT[1]} levels of at most {MAX_CHANNEL_MULT[0]}.", "use fewer, smaller levels.")


def _check_parameters(cfg: LocalNetConfig | UNetConfig, where: str = "network_config") -> None:
    """Count the parameters of ``cfg``'s network on the meta device (no memory) and refuse too many."""
    import torch

    from ..nn import build_denoiser

    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in build_denoiser(cfg).parameters())
    except Exception:   # a network that cannot be built on the meta device is checked when it is built
        return
    if n > MAX_PARAMETERS:
        raise fail(where, f"this network config has {n:,} parameters, over the limit of {MAX_PARAMETERS:,}.",
                   "use a smaller width or depth.")


def load_experiments(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[ExperimentConfig]]:
    """Read a benchmark config file: ``{"mode": ..., "defaults": {...}, "experiments": [{...}, ...]}``.

    Each experiment dict is merged over ``defaults`` (nested dicts ``network``/``scene``/``train`` are
    merged key by key; ``network`` only when the experiment keeps the defaults' ``model`` kind) and
    validated as an :class:`ExperimentConfig`.

    Returns:
        ``(header, experiments)``: the file's other top-level keys, and the experiments in file order.
    """
    where = "load_experiments"
    p = Path(path)
    data = read_json(p, where=where, what="config file")
    if not isinstance(data, dict) or not isinstance(data.get("experiments"), list) or not data["experiments"]:
        raise fail(where, f"{str(p)!r} must be a JSON object with a non-empty list 'experiments'.")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise fail(where, f"'defaults' in {str(p)!r} is {describe(defaults)}, expected an object.")
    out = []
    names: set[str] = set()
    for i, exp in enumerate(data["experiments"]):
        if not isinstance(exp, dict):
            raise fail(where, f"experiment {i} in {str(p)!r} is {describe(exp)}, expected an object.")
        merged = {**defaults, **exp}
        same_kind = exp.get("model", defaults.get("model")) == defaults.get("model")
        for key in ("network", "scene", "train"):
            if key == "network" and not same_kind:
                continue  # another network kind: the defaults' network fields do not apply
            if isinstance(defaults.get(key), dict) and isinstance(exp.get(key), dict):
                merged[key] = {**defaults[key], **exp[key]}
        cfg = ExperimentConfig.from_dict(merged)
        if cfg.name in names:
            raise fail(where, f"two experiments in {str(p)!r} are named {cfg.name!r}.", "give each a unique name.")
        names.add(cfg.name)
        out.append(cfg)
    header = {k: v for k, v in data.items() if k not in ("experiments", "defaults")}
    return header, out


