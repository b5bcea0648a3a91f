r"""Length-generalization experiments: configs, training, compact model files, sampling and evaluation.

An *experiment* trains one denoiser on CLEVR-like scenes with few objects and measures how well it draws
scenes with many: it is described by an :class:`ExperimentConfig` (JSON-serialisable; the files in
``benchmarks/configs/`` hold lists of them) and run with :func:`train_experiment`,
:func:`sampler` and :func:`evaluate_model`.

The pieces:

* the network (:func:`build_denoiser`): ``"local"``, a :class:`~localscore.nn.LocalConditionalDenoiser`
  (local in pixels and in conditioners by construction), or ``"unet"``, a
  :class:`~localscore.nn.GlobalConditionalDenoiser` (a U-Net with global cross-attention; with
  ``token_encoder_layers > 0`` the tokens first see each other, the failing kind);
* the data: an endless :class:`~localscore.data.SceneStream` of the config's scenes (labelling ``"all"``
  or ``"one"``), images in ``[-1, 1]`` (``sigma_data = 0.5``);
* training: :func:`localscore.train.train` (EDM loss, EMA, atomic checkpoints, exact resume);
* a compact *model file* (:func:`save_model` / :func:`load_model`): the EMA weights, the network config,
  the scene config and the training record, loaded with ``weights_only=True``. The shipped files in
  ``localscore/checkpoints/`` are addressable by name (``"local-32"``, ``"baseline-32"``);
* sampling (:func:`sampler`): Euler or Heun on the EDM grid :func:`~localscore.schedules.karras_sigmas`,
  with the requested objects as one conditioner set (``"joint"``), as a projective composition of
  single-object passes (``"projective"``), or as a masked composition in which each object's prediction
  acts only near it (``"masked"``, sampling-time conditioner locality);
* evaluation (:func:`evaluate_model`): :func:`localscore.evaluate.evaluate_sampler` over counts 0..10.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._errors import describe, fail
from ._io import load_payload, save_payload
from .conditions import Conditions
from .data import SceneConfig, SceneStream
from .evaluate import EvaluationResult, evaluate_sampler
from .evaluate.locality import REGION_FRACTION
from .masks import DiscRule
from .nn import GlobalConditionalDenoiser, LocalConditionalDenoiser, LocalNetConfig, UNetConfig
from .sampling import sample_euler, sample_heun
from .schedules import karras_sigmas

__all__ = [
    "DEMO_EXPERIMENTS",
    "MODEL_NAMES",
    "ExperimentConfig",
    "LoadedModel",
    "build_denoiser",
    "checkpoint_dir",
    "demo_experiments",
    "evaluate_model",
    "load_experiments",
    "load_model",
    "model_from_checkpoint",
    "resolve_model",
    "sampler",
    "save_model",
    "train_experiment",
]

ModelKind = Literal["local", "unet"]
Method = Literal["joint", "projective", "masked", "localized"]
_METHODS = ("joint", "projective", "masked", "localized")
_MODEL_KIND = "localscore-model"
_MODEL_VERSION = 1
MODEL_NAMES = ("local-32", "baseline-32")
"""Names of the model files shipped in ``localscore/checkpoints/`` (``NAME.pt``)."""


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
    return Path(__file__).resolve().parent / "checkpoints"


# ------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ExperimentConfig:
    """One model of a length-generalization experiment (JSON-serialisable, validated on construction).

    Attributes:
        name: a short identifier (file names, table rows).
        model: ``"local"`` or ``"unet"`` (see :func:`build_denoiser`).
        network: fields of :class:`~localscore.nn.LocalNetConfig` / :class:`~localscore.nn.UNetConfig`;
            the attribute length is always ``localscore.data.ATTR_DIM`` (13).
        scene: fields of :class:`~localscore.data.SceneConfig` of the *training* data (resolution, counts,
            labelling, ...).
        train: fields of :class:`~localscore.train.TrainConfig` (``seed`` is set per run).
        methods: how the trained model is sampled at test time (each evaluated): ``"joint"``,
            ``"projective"`` or ``"masked"`` (see :func:`sampler`).
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
        if not methods or any(m not in _METHODS for m in methods):
            raise fail(w, f"`methods` is {self.methods!r}, expected a non-empty list of {_METHODS}.")
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
        """The training :class:`~localscore.data.SceneConfig`."""
        return SceneConfig.from_dict(dict(self.scene))

    def eval_scene_config(self) -> SceneConfig:
        """The scene config of the evaluation: the training one with ``counts = eval_counts``."""
        return self.scene_config().replace(counts=self.eval_counts, labelling="all")

    def network_config(self) -> LocalNetConfig | UNetConfig:
        """The network config (attribute length 13, the CLEVR-like labels)."""
        return _network_config(self.model, self.network)

    def train_config(self, seed: int) -> Any:
        """The :class:`~localscore.train.TrainConfig` of the run with training seed ``seed``."""
        from .train import TrainConfig

        data = dict(self.train)
        data["seed"] = int(seed)
        return TrainConfig.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`~localscore.LocalScoreError`."""
        if not isinstance(data, Mapping):
            raise fail("ExperimentConfig.from_dict", f"expected a dict, got {describe(data)}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise fail("ExperimentConfig.from_dict", f"unknown keys {unknown}; expected some of {sorted(known)}.",
                       "check the spelling of the experiment keys.")
        if "name" not in data:
            raise fail("ExperimentConfig.from_dict", "the experiment has no 'name'.")
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def _network_config(kind: str, network: Mapping[str, Any]) -> LocalNetConfig | UNetConfig:
    from .data import ATTR_DIM

    data = {"attr_dim": ATTR_DIM, **dict(network)}
    if kind == "local":
        return LocalNetConfig.from_dict(data)
    if kind == "unet":
        return UNetConfig.from_dict(data)
    raise fail("build_denoiser", f"`model` is {kind!r}, expected 'local' or 'unet'.")


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
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise fail(where, f"cannot read {str(p)!r} ({e.strerror or e}).", "check the path.") from e
    except json.JSONDecodeError as e:
        raise fail(where, f"{str(p)!r} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from e
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


# ------------------------------------------------------------------------------------------- models
def build_denoiser(kind: str, network: LocalNetConfig | UNetConfig | Mapping[str, Any], *,
                   enforce_radius: float | None = None) -> nn.Module:
    """Build an untrained denoiser ``D(x [B, 3, H, W], sigma [B], cond) -> [B, 3, H, W]``.

    Args:
        kind: ``"local"`` (:class:`~localscore.nn.LocalConditionalDenoiser`) or ``"unet"``
            (:class:`~localscore.nn.GlobalConditionalDenoiser`).
        network: the network config, or a dict of its fields (attribute length 13 unless given).
        enforce_radius: if given, the network's cross-attention is masked to conditioners within this radius
            (:func:`localscore.nn.enforce_locality` with ``DiscRule(enforce_radius)``, patched in place; the
            result is a :class:`~localscore.nn.LocalityEnforced` whose ``inner`` is the network).

    Examples:
        >>> D = build_denoiser("local", {"width": 8, "depth": 1})
        >>> type(D).__name__, D.receptive_radius
        ('LocalConditionalDenoiser', 4)
    """
    cfg = network if isinstance(network, (LocalNetConfig, UNetConfig)) else _network_config(kind, network)
    model: nn.Module | None = None
    if kind == "local" and isinstance(cfg, LocalNetConfig):
        model = LocalConditionalDenoiser(cfg)
    if kind == "unet" and isinstance(cfg, UNetConfig):
        model = GlobalConditionalDenoiser(cfg)
    if model is not None:
        if enforce_radius is None:
            return model
        from .nn import enforce_locality

        return enforce_locality(model, DiscRule(float(enforce_radius)), copy=False)
    raise fail("build_denoiser", f"`kind` {kind!r} does not match the config {type(cfg).__name__}.",
               "use kind='local' with a LocalNetConfig and kind='unet' with a UNetConfig.")


@dataclass
class LoadedModel:
    """A trained denoiser with what is needed to sample and evaluate it.

    Attributes:
        denoiser: the denoiser (EMA weights, eval mode, gradients off for its parameters).
        kind: ``"local"`` or ``"unet"``.
        network: the network config.
        scene: the training :class:`~localscore.data.SceneConfig`.
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
    return save_payload(path, payload, kind=_MODEL_KIND, version=_MODEL_VERSION)


def resolve_model(path_or_name: str | os.PathLike[str]) -> Path:
    """A model file path: a shipped name (``"local-32"``, ``"baseline-32"``) or an existing path.

    Training checkpoints (``checkpoint.pt`` of :func:`localscore.train.train`) are accepted too, when the run
    directory holds the ``experiment.json`` written by :func:`train_experiment`.
    """
    text = str(path_or_name)
    if text in MODEL_NAMES:
        p = checkpoint_dir() / f"{text}.pt"
        if not p.is_file():
            raise fail("load_model", f"the shipped model {text!r} is missing from {str(checkpoint_dir())!r}.",
                       "reinstall localscore, or rebuild it with `localscore demo --retrain`.")
        return p
    p = Path(text)
    if p.is_dir():
        p = p / "model.pt" if (p / "model.pt").is_file() else p / "checkpoint.pt"
    if not p.is_file():
        raise fail("load_model", f"{text!r} is neither a shipped model name {list(MODEL_NAMES)} nor an existing "
                   "file.", "pass a name such as 'local-32', or the path of a model file / training run.")
    return p


def load_model(path_or_name: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a model file (:func:`save_model`), a shipped name, or a training run (:func:`train_experiment`).

    Everything is read with ``torch.load(..., weights_only=True)`` and the digest is checked.

    Raises:
        LocalScoreError: for unknown names, missing, corrupt or foreign files.
    """
    p = resolve_model(path_or_name)
    if p.name == "checkpoint.pt" or _is_checkpoint(p):
        return model_from_checkpoint(p, device=device)
    payload = load_payload(p, kind=_MODEL_KIND, version=_MODEL_VERSION, where="load_model")
    network = _network_config(payload["kind"], payload["network"])
    model = build_denoiser(payload["kind"], network, enforce_radius=payload.get("enforce_radius"))
    try:
        model.load_state_dict(payload["weights"])
    except RuntimeError as e:
        raise fail("load_model", f"the weights in {str(p)!r} do not fit its network config "
                   f"({str(e).splitlines()[0]}).", "recreate the model file.") from e
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(model, payload["kind"], network, SceneConfig.from_dict(payload["scene"]),
                       dict(payload["meta"]), str(p))


def _is_checkpoint(p: Path) -> bool:
    return (p.parent / "experiment.json").is_file() and p.suffix == ".pt" and p.name != "model.pt"


def model_from_checkpoint(path: str | os.PathLike[str], *, device: torch.device | str = "cpu") -> LoadedModel:
    """The EMA model of a training checkpoint written by :func:`train_experiment` (its folder holds
    ``experiment.json``)."""
    from .train import load_checkpoint

    p = Path(path)
    exp_file = p.parent / "experiment.json"
    if not exp_file.is_file():
        raise fail("model_from_checkpoint", f"no experiment.json next to {str(p)!r}; cannot rebuild the network.",
                   "pass a model file written by save_model, or a run directory of train_experiment.")
    info = json.loads(exp_file.read_text(encoding="utf-8"))
    exp = ExperimentConfig.from_dict(info["experiment"])
    model = build_denoiser(exp.model, exp.network_config(), enforce_radius=exp.enforce_radius)
    state = load_checkpoint(p, model, weights="ema")
    model.to(device).eval().requires_grad_(False)
    meta = {"experiment": exp.to_dict(), "seed": info.get("seed"), "steps": int(state["step"])}
    return LoadedModel(model, exp.model, exp.network_config(), exp.scene_config(), meta, str(p))


def demo_experiments() -> dict[str, ExperimentConfig]:
    """The experiment configs that trained the shipped models, read from the files themselves.

    Each shipped file records its :class:`ExperimentConfig` and the steps it actually ran; the returned
    configs train for exactly those steps, so ``train_experiment(cfg, dir, seed=cfg.seeds[0])`` reproduces
    the shipped weights up to float round-off (``localscore demo --retrain`` does this).
    """
    out = {}
    for name in MODEL_NAMES:
        p = resolve_model(name)
        payload = load_payload(p, kind=_MODEL_KIND, version=_MODEL_VERSION, where="demo_experiments")
        meta = payload["meta"]
        exp = ExperimentConfig.from_dict(meta["experiment"])
        train = {**exp.train, "steps": int(meta["steps"])}
        out[name] = exp.replace(train=train, seeds=(int(meta["seed"]),))
    return out


# ------------------------------------------------------------------------------------------- training
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

    The data stream is seeded with ``seed`` and the trainer with ``seed`` (noise levels, noise, dropout),
    so a run is reproducible and an interrupted one (killed at any moment) continues exactly from its
    last checkpoint when called again with the same arguments.

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
    from .train import train

    seed = config.seeds[0] if seed is None else seed
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tcfg = config.train_config(seed)
    changes: dict[str, Any] = {"progress": progress}
    if steps is not None:
        changes["steps"] = steps
    tcfg = replace(tcfg, **changes)
    scene = config.scene_config()
    network = config.network_config()
    info = {"experiment": config.to_dict(), "seed": seed}
    text = json.dumps(info, indent=1).encode()
    from ._io import atomic_write

    atomic_write(out / "experiment.json", lambda f: f.write(text))
    model = build_denoiser(config.model, network, enforce_radius=config.enforce_radius)
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


# ------------------------------------------------------------------------------------------- sampling
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
    progress: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> Callable[[Conditions, torch.Generator], Tensor]:
    r"""A sampling function ``(cond [B, K], generator) -> images [B, 3, H, W]`` in ``[0, 1]``.

    Starting from ``x = sigma_max * z`` (``z ~ N(0, I)`` from ``generator``), the probability-flow ODE is
    solved (:func:`~localscore.sampling.sample_euler` / :func:`~localscore.sampling.sample_heun`) on
    ``karras_sigmas(steps, sigma_min, sigma_max)`` with the denoiser

    * ``"joint"``: ``D(x, sigma, cond)``, all requested objects in one conditioner set;
    * ``"projective"``: ``D(x, sigma, none) + sum_k (D(x, sigma, c_k) - D(x, sigma, none))``
      (:func:`~localscore.compose.projective_from`, one pass per object);
    * ``"masked"``: ``D(x, sigma, none) + sum_k m_k (D(x, sigma, c_k) - D(x, sigma, none))`` with disc
      masks ``m_k`` of radius ``mask_radius`` around each object (:func:`~localscore.compose.masked_from`);
    * ``"localized"``: the same masked composition computed by :func:`~localscore.nn.localize` with
      ``crop``: each object's two passes see only the ``crop x crop`` window of pixels around it
      (sampling-time pixel *and* conditioner locality for any network);

    and the result is mapped from ``[-1, 1]`` to ``[0, 1]``: ``images = clamp((x + 1) / 2, 0, 1)``.
    The composed methods need a model trained with conditioner dropout (its unconditional path).
    ``progress`` shows the solver's tqdm bar; ``callback`` is passed to the solver (called after each step
    with its dict, see :mod:`localscore.sampling`).

    Examples:
        >>> from localscore import Conditions
        >>> D = build_denoiser("local", {"width": 8, "depth": 1, "attr_dim": 0})
        >>> f = sampler(D, "projective", steps=2)
        >>> img = f(Conditions.from_lists([[(4.0, 4.0), (10.0, 10.0)]]), torch.Generator().manual_seed(0))
        >>> img.shape, bool(img.min() >= 0 and img.max() <= 1)
        (torch.Size([1, 3, 16, 16]), True)
    """
    where = "sampler"
    D = model.denoiser if isinstance(model, LoadedModel) else model
    res = model.resolution if isinstance(model, LoadedModel) else 16
    if not callable(D):
        raise fail(where, f"`model` is {describe(model)}, expected a LoadedModel or a denoiser module.")
    if method not in _METHODS:
        raise fail(where, f"`method` is {method!r}, expected one of {_METHODS}.")
    if solver not in ("euler", "heun"):
        raise fail(where, f"`solver` is {solver!r}, expected 'euler' or 'heun'.")
    solve = sample_euler if solver == "euler" else sample_heun
    rule = DiscRule(float(mask_radius))

    def run(cond: Conditions, generator: torch.Generator) -> Tensor:
        from . import compose

        B = cond.batch_size
        try:
            dev = next(D.parameters()).device
        except (AttributeError, StopIteration):
            dev = torch.device("cpu")
        cond = cond.to(dev)
        sig = karras_sigmas(steps, sigma_min, sigma_max, device=dev)
        z = torch.randn(B, 3, res, res, generator=generator).to(dev)
        x = sig[0] * z
        with torch.inference_mode():
            if method == "joint":
                out = solve(D, x, sig, cond, progress=progress, callback=callback)
            elif method == "projective":
                out = solve(compose.projective_from(D, cond), x, sig, progress=progress, callback=callback)
            elif method == "masked":
                out = solve(compose.masked_from(D, cond, rule), x, sig, progress=progress, callback=callback)
            else:
                from .nn import localize

                out = solve(localize(D, rule, crop=crop), x, sig, cond, progress=progress, callback=callback)
        return ((out.float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu()

    return run


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
    progress: bool = False,
    meta: Mapping[str, Any] | None = None,
    keep_images: list[Tensor] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> EvaluationResult:
    """Per-count length-generalization metrics of a trained model (see :func:`sampler` for ``method``).

    ``per_count`` layouts per count are drawn with the model's scene config (sizes, separation, margin;
    every object labelled) from ``seed``, sampled, detected and matched:
    :func:`localscore.evaluate.evaluate_sampler`. The requested layouts are
    ``localscore.evaluate.request_scenes(scene, counts, per_count, seed=seed)``, in that order.

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
        progress: progress bar over batches.
        meta: extra metadata stored in the result.
        keep_images: if a list is given, the generated image batches ``[b, 3, H, W]`` are appended to it.
        callback: passed to :func:`sampler` (called after each solver step of each batch).
    """
    scene = model.scene.replace(counts=tuple(counts), labelling="all")
    base = sampler(model, method, steps=steps, solver=solver, mask_radius=mask_radius, crop=crop,
                   callback=callback)
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
    return evaluate_sampler(fn, scene, counts=counts, per_count=per_count, seed=seed, batch_size=batch_size,
                            progress=progress, meta=info)


# ------------------------------------------------------------------------------------------- locality
def measure_locality(
    model: LoadedModel,
    *,
    sigmas: Sequence[float] = (0.05, 0.2, 0.5, 1.0, 2.0),
    count: int = 4,
    images: int = 4,
    radius: float | None = None,
    pixel_rows: int = 16,
    seed: int = 0,
    callback: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    r"""Conditional and pixel locality of a trained model across noise levels (JSON-ready dict).

    ``images`` layouts with ``count`` objects are drawn from the model's scene config (seed ``seed``) and
    rendered to ``x0`` in ``[-1, 1]``; for each ``sigma`` the point is ``x = x0 + sigma * eps``. Then

    * :func:`~localscore.metrics.conditional_locality` (ablation): ``index`` = the share of each object's
      influence ``sum_c (D(x, cond) - D(x, cond \ k))^2`` inside the Chebyshev ball of ``radius`` pixels
      around it (default ``radius = 0.2 * resolution``), ``on_others`` = its share on the other objects'
      balls, ``influence_radius`` = the distance holding 90 % of it (mean over objects);
    * :func:`~localscore.metrics.pixel_locality` (``pixel_rows`` exact Jacobian rows): the effective
      pixel radius holding 90 % of ``sum |dD/dx|^2``.

    ``callback``, if given, is called with the index of each noise level once it is measured.

    Returns:
        ``{"sigmas", "radius", "conditional_index", "on_others", "influence_radius", "pixel_radius_90",
        "summary": {"conditional_index", "pixel_radius_90"}}`` (per-sigma lists; ``summary`` averages them).
    """
    from .data import render_scene
    from .evaluate import request_scenes
    from .metrics import conditional_locality, pixel_locality

    where = "measure_locality"
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise fail(where, f"`count` is {count!r}, expected an int >= 2 (influence on *other* objects needs two).")
    res = model.resolution
    r = float(radius) if radius is not None else REGION_FRACTION * res
    scene_cfg = model.scene.replace(counts=(count,), labelling="all")
    scene = request_scenes(scene_cfg, [count], images, seed=seed)
    x0 = render_scene(scene, scene_cfg) * 2.0 - 1.0
    cond = scene.conditions()
    g = torch.Generator().manual_seed(seed + 7)
    eps = torch.randn(x0.shape, generator=g)
    D = model.denoiser
    out: dict[str, Any] = {"sigmas": [float(s) for s in sigmas], "radius": r, "count": count, "images": images,
                           "conditional_index": [], "on_others": [], "influence_radius": [], "pixel_radius_90": []}
    for s in sigmas:
        x = x0 + float(s) * eps
        cl = conditional_locality(D, x, float(s), cond, methods=("ablation",), regions=r)
        out["conditional_index"].append(float(cl.index["ablation"].flatten()[0]))
        out["on_others"].append(float(cl.on_others_mean["ablation"].flatten()[0]))
        ir = cl.influence_radius["ablation"][0].float()
        out["influence_radius"].append(float(ir[cond.valid].mean()))
        pl = pixel_locality(D, x, float(s), cond, method="probes", n_rows=pixel_rows,
                            generator=torch.Generator().manual_seed(seed))
        out["pixel_radius_90"].append(float(pl.radius(0.9).float().flatten()[0]))
        if callback is not None:
            callback(len(out["pixel_radius_90"]) - 1)
    n = len(out["sigmas"])
    out["summary"] = {"conditional_index": sum(out["conditional_index"]) / n,
                      "pixel_radius_90": sum(out["pixel_radius_90"]) / n}
    return out
