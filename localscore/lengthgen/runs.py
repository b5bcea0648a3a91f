"""A training run of scenes from one JSON run configuration (:class:`RunConfig`, :func:`run_training`).

A run configuration names the model, the scenes, the training hyper-parameters and the data::

    {
      "name": "local-32",
      "model": {"kind": "local", "width": 48, "conditioning": "render", "cond_radius": 4.8},
      "scenes": {"resolution": 32, "counts": [1, 2, 3], "labelling": "all"},
      "train": {"steps": 3000, "batch_size": 64, "lr": 0.002, "cond_dropout": 0.0},
      "data": {"seed": 0, "dataset": null}
    }

``model.kind`` is ``"local"`` (:class:`~localscore.nn.LocalConditionalDenoiser`, other keys are
:class:`~localscore.nn.LocalNetConfig` fields) or ``"global"``
(:class:`~localscore.nn.GlobalConditionalDenoiser`, :class:`~localscore.nn.UNetConfig` fields);
``scenes`` holds :class:`~localscore.lengthgen.data.SceneConfig` fields, ``train`` :class:`TrainConfig` fields;
``data.dataset`` optionally names a file written by :func:`~localscore.lengthgen.data.write_dataset` (relative
paths are relative to the configuration file), otherwise scenes are made on the fly from ``data.seed``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .._errors import describe, fail
from .._io import atomic_write, read_json, remove_stale_temps, run_lock
from ..train import TrainConfig, Trainer, setup_distributed, train
from ..train._state import seed_everything
from .data.attributes import ATTR_DIM
from .data.datasets import DatasetStream, SceneStream, read_dataset
from .data.scenes import SceneConfig

__all__ = ["MODEL_KINDS", "RunConfig", "run_training"]

MODEL_KINDS = ("local", "global")
"""The model kinds a run configuration can name."""
_TOP_KEYS = {"name", "model", "scenes", "train", "data"}


@dataclass(frozen=True)
class RunConfig:
    """A parsed run configuration (see the module docstring).

    Examples:
        >>> cfg = RunConfig.from_dict({"model": {"kind": "local", "width": 16, "conditioning": "render"},
        ...                            "scenes": {"resolution": 16}, "train": {"steps": 10, "batch_size": 8}})
        >>> cfg.build_model().receptive_radius, cfg.train.steps
        (6, 10)
    """

    model_kind: str
    model: dict[str, Any]
    scenes: SceneConfig
    train: TrainConfig
    name: str = "run"
    data_seed: int = 0
    dataset: str | None = None
    source: str | None = field(default=None, compare=False)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | os.PathLike[str] | None = None) -> RunConfig:
        """Parse and validate a configuration dict; every problem raises a clear LocalScoreError."""
        where = f"run configuration{f' {str(source)!r}' if source else ''}"
        if not isinstance(data, dict):
            raise fail(where, f"is {describe(data)}, expected a JSON object with keys {sorted(_TOP_KEYS)}.")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise fail(where, f"has unknown keys {unknown}; expected some of {sorted(_TOP_KEYS)}.")
        for key in ("model", "scenes", "train"):
            if not isinstance(data.get(key), dict):
                raise fail(where, f"'{key}' is {describe(data.get(key))}, expected an object.",
                           "see the example in the documentation of localscore.train.run.")
        model = dict(data["model"])
        kind = model.pop("kind", None)
        if kind not in MODEL_KINDS:
            raise fail(where, f"model 'kind' is {kind!r}, expected one of {MODEL_KINDS}.")
        scenes = SceneConfig.from_dict(data["scenes"])
        train_cfg = TrainConfig.from_dict(data["train"])
        d = data.get("data", {}) or {}
        if not isinstance(d, dict) or set(d) - {"seed", "dataset"}:
            raise fail(where, f"'data' is {d!r}, expected an object with optional 'seed' and 'dataset'.")
        seed = d.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise fail(where, f"data 'seed' is {seed!r}, expected an int >= 0.")
        dataset = d.get("dataset")
        if dataset is not None and not isinstance(dataset, str):
            raise fail(where, f"data 'dataset' is {dataset!r}, expected a file path or null.")
        if dataset is not None and source is not None and not os.path.isabs(dataset):
            dataset = str(Path(source).parent / dataset)
        name = data.get("name", "run")
        if not isinstance(name, str) or not name:
            raise fail(where, f"'name' is {name!r}, expected a non-empty string.")
        cfg = cls(kind, model, scenes, train_cfg, name, seed, dataset, None if source is None else str(source))
        cfg._model_config()   # validate the model fields now
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> RunConfig:
        """Read a JSON configuration file."""
        p = Path(path)
        data = read_json(p, where="RunConfig.from_file", what="run configuration")
        return cls.from_dict(data, source=p)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``from_dict`` inverts it)."""
        return {"name": self.name, "model": {"kind": self.model_kind, **self.model},
                "scenes": self.scenes.to_dict(), "train": self.train.to_dict(),
                "data": {"seed": self.data_seed, "dataset": self.dataset}}

    def _model_config(self) -> Any:
        from ..nn import LocalNetConfig, UNetConfig

        cls = LocalNetConfig if self.model_kind == "local" else UNetConfig
        cfg = cls.from_dict(dict(self.model))
        if cfg.attr_dim != ATTR_DIM:
            raise fail("RunConfig", f"model attr_dim is {cfg.attr_dim}, but scene conditioners carry {ATTR_DIM} "
                       "attributes (8 colours + 3 shapes + 2 sizes).", f"set \"attr_dim\": {ATTR_DIM} (the default).")
        if cfg.channels != 3:
            raise fail("RunConfig", f"model channels is {cfg.channels}, but scenes are RGB.", "set \"channels\": 3.")
        return cfg

    def build_model(self) -> nn.Module:
        """A freshly initialised denoiser of the configured kind (initialised from torch's global RNG)."""
        from ..nn import build_denoiser

        return build_denoiser(self._model_config())

    def build_data(self) -> SceneStream | DatasetStream:
        """The batch source: a :class:`~localscore.lengthgen.data.DatasetStream` over ``dataset`` if given, else a
        :class:`~localscore.lengthgen.data.SceneStream`, with the global batch size of ``train``."""
        if self.dataset is not None:
            ds = read_dataset(self.dataset)
            if ds.config.resolution != self.scenes.resolution:
                raise fail("RunConfig", f"the dataset {self.dataset!r} is {ds.config.resolution}x"
                           f"{ds.config.resolution} but scenes.resolution is {self.scenes.resolution}.")
            return DatasetStream(ds, self.train.batch_size, seed=self.data_seed, labelling=self.scenes.labelling)
        return SceneStream(self.scenes, self.train.batch_size, seed=self.data_seed)


def run_training(config: RunConfig, out_dir: str | os.PathLike[str], *, resume: bool = True,
                 until: int | None = None) -> Trainer:
    """Train the configured model into ``out_dir`` (``checkpoint.pt``, ``log.jsonl``, ``run.json``).

    Works in a plain process and under ``torchrun`` (it calls :func:`setup_distributed`). The model is
    initialised after seeding every generator (torch, numpy, python) with ``config.train.seed``, so a run is
    reproducible from its file, bit for bit at a fixed thread count. The run folder is locked while it
    trains (a second writer is refused) and temporary files of killed writes are removed first.
    ``run.json`` (the configuration) is written atomically by process 0; a directory that already holds
    another configuration's ``run.json`` is refused.
    """
    if not isinstance(config, RunConfig):
        raise fail("run_training", f"`config` is {describe(config)}, expected a RunConfig.")
    rank, _world, device = setup_distributed()
    out = Path(out_dir)
    with run_lock(out, where="run_training") if rank == 0 else contextlib.nullcontext(out):
        if rank == 0:
            remove_stale_temps(out)
        return _run_training(config, out, rank, device, resume=resume, until=until)


def _run_training(config: RunConfig, out: Path, rank: int, device: Any, *, resume: bool,
                  until: int | None) -> Trainer:
    record = out / "run.json"
    mine = config.to_dict()
    if record.exists():
        theirs = read_json(record, where="run_training", what="run record")
        if not isinstance(theirs, dict):
            raise fail("run_training", f"{str(record)!r} is {describe(theirs)}, not a run record.",
                       "remove it, or train into a new directory.")
        free = {"steps", "log_every", "checkpoint_every", "progress"}
        strip = lambda d: {**d, "train": {k: v for k, v in d.get("train", {}).items() if k not in free}}  # noqa: E731
        if strip(theirs) != strip(mine):
            raise fail("run_training", f"{str(out)!r} holds a run of another configuration ({str(record)!r}).",
                       "train into a new directory, or use the configuration of that run.")
    seed_everything(config.train.seed)
    model = config.build_model()
    data = config.build_data()
    if rank == 0:
        text = json.dumps(mine, indent=1).encode()
        atomic_write(record, lambda f: f.write(text))
    return train(model, data, config.train, out_dir=out, resume=resume, device=device, until=until)
