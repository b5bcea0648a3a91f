r"""The trainer: AdamW with warm-up, gradient clipping, EMA, conditioner dropout, logs, exact resume, DDP.

One optimisation step ``t -> t + 1`` does, with the trainer's own CPU generator ``g`` (seeded with
``config.seed``) drawing every random number for the *global* batch of ``N`` images (each process
keeps its shard, so the step is the same for any number of processes):

1. ``x0, cond = next(data)`` (this process's ``N / world_size`` images);
2. ``sigma ~ sample_sigmas(N, g)``, ``eps ~ N(0, I)`` ``[N, C, H, W]``, ``drop = U(0, 1) < cond_dropout``
   ``[N]`` from ``g``, then the shard is taken; dropped images get the empty conditioner set;
3. ``loss = denoising_loss(model, x0, sigma, eps, cond)`` (see :mod:`localscore.train.losses`);
   DDP averages the gradients, so the gradient is that of the global-batch mean;
4. ``grad_norm = clip_grad_norm_(params, grad_clip)``; AdamW step with learning rate
   ``lr * min(1, (t + 1) / warmup_steps)``;
5. EMA: ``ema = beta ema + (1 - beta) params`` with ``beta = min(ema_decay, (t + 1) / (t + 10))``;
   buffers are copied.

A checkpoint holds the model, the EMA, the optimizer, the scheduler, the step, the config, the data
stream's position, the trainer generator and every global RNG (torch CPU and CUDA, numpy, python; per
process), and is written atomically; resuming restores all of it, so an interrupted run continues
exactly as if it had never stopped.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._config import ConfigMixin
from .._errors import describe, fail
from .._io import atomic_write, load_payload, remove_stale_temps, run_lock, save_payload
from ..conditions import Conditions
from ._state import get_rng_state, set_rng_state
from .losses import Objective, SigmaSampling, denoising_loss, drop_conditions, sample_sigmas

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "TrainConfig",
    "Trainer",
    "cleanup_distributed",
    "load_checkpoint",
    "setup_distributed",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
"""File name of the latest checkpoint in a run's output directory."""
LOG_NAME = "log.jsonl"
"""File name of the JSON-lines training log in a run's output directory."""
MAX_BATCH_SIZE = 65536
"""The largest global batch a :class:`TrainConfig` accepts."""
MAX_TRAIN_STEPS = 10**9
"""The most steps a :class:`TrainConfig` accepts."""
_KIND = "localscore-checkpoint"
_VERSION = 1
# Config fields that do not change the trajectory: a run may resume with other values.
_FREE_FIELDS = {"steps", "log_every", "checkpoint_every", "progress"}


@dataclass(frozen=True)
class TrainConfig(ConfigMixin):
    """Training hyper-parameters (all JSON-serialisable).

    Args:
        steps: total optimisation steps.
        batch_size: the *global* batch size (split evenly over processes).
        lr: AdamW learning rate after warm-up.
        weight_decay: AdamW decoupled weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up length (``0``: none).
        grad_clip: clip the global gradient norm to this value (``None``: no clipping; the norm is
            still logged).
        ema_decay: EMA decay ``beta`` (with the warm-up ``min(beta, (t + 1) / (t + 10))``).
        objective: ``"edm"``, ``"epsilon"`` or ``"v"`` (see :mod:`localscore.train.losses`).
        sigma_sampling: ``"lognormal"``, ``"loguniform"`` or ``"discrete"``.
        p_mean: mean of ``log sigma`` (lognormal).
        p_std: standard deviation of ``log sigma`` (lognormal).
        sigma_min: smallest sigma (loguniform).
        sigma_max: largest sigma (loguniform).
        sigma_data: data standard deviation in the loss weights.
        cond_dropout: probability of replacing an image's conditioner set by the empty set (trains the
            unconditional path of global networks; a conditionally local network trained with every object
            labelled learns it from pixels far from every object and is better off with 0, see the docs'
            training page).
        seed: seed of the trainer's generator (noise levels, noise, dropout).
        log_every: steps between JSON-lines log records.
        checkpoint_every: steps between checkpoints (``0``: only at the end).
        progress: show a tqdm progress bar (if tqdm is installed; process 0 only).

    Examples:
        >>> TrainConfig(steps=100, lr=1e-3).to_dict()["objective"]
        'edm'
    """

    _from_dict_fix = "check the spelling of the training configuration keys."

    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.998
    objective: Objective = "edm"
    sigma_sampling: SigmaSampling = "lognormal"
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    cond_dropout: float = 0.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    progress: bool = True

    def __post_init__(self) -> None:
        where = "TrainConfig"

        def integer(name: str, low: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise fail(where, f"`{name}` is {v!r}, expected an int >= {low}.")

        def positive(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or v < 0 or (v == 0 and not allow_zero):
                raise fail(where, f"`{name}` is {v!r}, expected a finite number {'>= 0' if allow_zero else '> 0'}.")

        integer("steps", 1)
        integer("batch_size", 1)
        for name, top in (("steps", MAX_TRAIN_STEPS), ("batch_size", MAX_BATCH_SIZE)):
            if getattr(self, name) > top:
                raise fail(where, f"`{name}` is {getattr(self, name):,}, over the limit of {top:,}.",
                           f"use `{name}` <= {top:,}.")
        integer("warmup_steps", 0)
        integer("seed", 0)
        integer("log_every", 1)
        integer("checkpoint_every", 0)
        for name in ("lr", "sigma_min", "sigma_max", "sigma_data", "p_std"):
            positive(name)
        positive("weight_decay", allow_zero=True)
        if not isinstance(self.p_mean, (int, float)) or not math.isfinite(self.p_mean):
            raise fail(where, f"`p_mean` is {self.p_mean!r}, expected a finite float.")
        if self.grad_clip is not None:
            positive("grad_clip")
        if not isinstance(self.ema_decay, (int, float)) or not 0 <= self.ema_decay < 1:
            raise fail(where, f"`ema_decay` is {self.ema_decay!r}, expected a float in [0, 1).")
        if not isinstance(self.cond_dropout, (int, float)) or not 0 <= self.cond_dropout <= 1:
            raise fail(where, f"`cond_dropout` is {self.cond_dropout!r}, expected a probability in [0, 1].")
        b = tuple(self.betas)
        if len(b) != 2 or not all(isinstance(v, (int, float)) and 0 <= v < 1 for v in b):
            raise fail(where, f"`betas` is {self.betas!r}, expected two floats in [0, 1).")
        object.__setattr__(self, "betas", (float(b[0]), float(b[1])))
        if self.objective not in ("edm", "epsilon", "v"):
            raise fail(where, f"`objective` is {self.objective!r}, expected 'edm', 'epsilon' or 'v'.")
        if self.sigma_sampling not in ("lognormal", "loguniform", "discrete"):
            raise fail(where, f"`sigma_sampling` is {self.sigma_sampling!r}, expected 'lognormal', "
                       "'loguniform' or 'discrete'.")
        if self.sigma_min >= self.sigma_max:
            raise fail(where, f"`sigma_min` ({self.sigma_min}) must be below `sigma_max` ({self.sigma_max}).")


# ---------------------------------------------------------------------------------------- distributed
def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def setup_distributed(backend: str | None = None) -> tuple[int, int, torch.device]:
    """Initialise ``torch.distributed`` from the ``torchrun`` environment, if there is one.

    Reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (set by ``torchrun``); with ``WORLD_SIZE > 1``
    it calls ``init_process_group`` (backend ``nccl`` when CUDA is available, else ``gloo``, unless
    ``backend`` is given) and selects GPU ``LOCAL_RANK``. Without them it does nothing.

    Returns:
        ``(rank, world_size, device)``: the device to train on (``cuda:LOCAL_RANK`` or ``cpu``).

    Examples:
        >>> setup_distributed()[:2]      # a plain process
        (0, 1)
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (backend in (None, "nccl"))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend or ("nccl" if cuda else "gloo"))
    rank, world = _dist()
    return rank, world, device


def cleanup_distributed() -> None:
    """Destroy the process group if one is initialised (call at the end of a ``torchrun`` script)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------- trainer
def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", None)
    return inner if isinstance(model, nn.parallel.DistributedDataParallel) and isinstance(inner, nn.Module) else model


def _split_batch(batch: Any, where: str) -> tuple[Tensor, Conditions | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, cond = batch[0], batch[1]
        if isinstance(x, torch.Tensor) and (cond is None or isinstance(cond, Conditions)):
            return x, cond
    raise fail(where, f"the data source yielded {describe(batch)}; expected images [B, C, H, W], or a tuple "
               "(images, cond, ...) with cond a Conditions or None.",
               "use localscore.data.SceneStream / DatasetStream, or yield (x0, cond) tuples.")


class Trainer:
    """Trains a denoiser ``model(x, sigma, cond)`` on batches from ``data``; see the module docstring.

    Args:
        model: an ``nn.Module`` denoiser (e.g. a network in an
            :class:`~localscore.denoisers.EDMPreconditioner`); it is moved to ``device``.
        data: an iterator of batches ``(x0 [b, C, H, W], cond, ...)`` (or plain image tensors) with
            ``state_dict()`` / ``load_state_dict()`` for exact resume, and ``set_shard(rank,
            world_size)`` for multi-process training (as :class:`~localscore.data.SceneStream`).
        config: the hyper-parameters.
        out_dir: where ``checkpoint.pt`` and ``log.jsonl`` go (``None``: nothing is written).
        device: training device (default: the model's).
        find_unused_parameters: passed to DistributedDataParallel.

    Attributes:
        model: the trained module (unwrapped from DDP).
        ema_model: the EMA copy, the one to sample from.
        step: optimisation steps done.
        history: the log records of this process (dicts as written to ``log.jsonl``).
    """

    def __init__(self, model: nn.Module, data: Any, config: TrainConfig, *,
                 out_dir: str | os.PathLike[str] | None = None, device: torch.device | str | None = None,
                 find_unused_parameters: bool = False) -> None:
        where = "Trainer"
        if not isinstance(model, nn.Module):
            raise fail(where, f"`model` is {describe(model)}, expected an nn.Module denoiser.",
                       "wrap a function in an nn.Module, or a raw network in EDMPreconditioner.")
        if not isinstance(config, TrainConfig):
            raise fail(where, f"`config` is {describe(config)}, expected a TrainConfig.")
        if not hasattr(data, "__next__"):
            raise fail(where, f"`data` is {describe(data)}, expected an iterator of batches (with __next__).",
                       "use localscore.data.SceneStream(...) or iter(...) of your batches.")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise fail(where, "`model` has no trainable parameters.")
        self.config = config
        self.rank, self.world_size = _dist()
        if self.world_size > 1:
            if config.batch_size % self.world_size:
                raise fail(where, f"batch_size {config.batch_size} is not divisible by the {self.world_size} "
                           "processes.", "choose a global batch size that is a multiple of the process count.")
            if not hasattr(data, "set_shard"):
                raise fail(where, "multi-process training needs a data source with set_shard(rank, world_size).",
                           "use localscore.data.SceneStream or DatasetStream.")
            data.set_shard(self.rank, self.world_size)
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        self.data = data
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
        warm = config.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda t: min(1.0, (t + 1) / warm) if warm > 0 else 1.0)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._pending: list[float] = []
        self._pending_norms: list[float] = []
        self._net: nn.Module = self.model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                            find_unused_parameters=find_unused_parameters)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> float:
        """One optimisation step (module docstring); returns the global-batch loss."""
        cfg = self.config
        x0, cond = _split_batch(next(self.data), "Trainer")
        x0 = x0.to(self.device)
        if cond is not None:
            cond = cond.to(self.device)
        b = x0.shape[0]
        n = b * self.world_size
        if n != cfg.batch_size:
            raise fail("Trainer", f"the data source yielded {b} images per process ({n} in all) but "
                       f"config.batch_size is {cfg.batch_size}.",
                       "give the data source the same global batch size as the TrainConfig.")
        g = self.generator
        sigma = sample_sigmas(n, g, sampling=cfg.sigma_sampling, p_mean=cfg.p_mean, p_std=cfg.p_std,
                              sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, model=self.model)
        noise = torch.randn((n, *x0.shape[1:]), generator=g)
        drop = torch.rand(n, generator=g) < cfg.cond_dropout
        sl = slice(self.rank * b, (self.rank + 1) * b)
        sigma = sigma[sl].to(self.device, x0.dtype)
        noise = noise[sl].to(self.device, x0.dtype)
        cond = drop_conditions(cond, drop[sl]) if cfg.cond_dropout > 0 else cond
        self.model.train()
        loss = denoising_loss(self._net, x0, sigma, noise, cond, objective=cfg.objective,
                              sigma_data=cfg.sigma_data)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        self.optimizer.step()
        self.scheduler.step()
        self._update_ema()
        self.step += 1
        value = loss.detach()
        if self.world_size > 1:
            value = value.clone()
            torch.distributed.all_reduce(value)
            value /= self.world_size
        out = float(value)
        self._pending.append(out)
        self._pending_norms.append(float(grad_norm))
        return out

    def _update_ema(self) -> None:
        beta = min(self.config.ema_decay, (self.step + 1) / (self.step + 10))
        with torch.no_grad():  # the EMA is bookkeeping outside the graph
            for pe, p in zip(self.ema_model.parameters(), self.model.parameters()):
                pe.lerp_(p.detach(), 1.0 - beta)
            for be, bm in zip(self.ema_model.buffers(), self.model.buffers()):
                be.copy_(bm)

    # ------------------------------------------------------------------ loop
    def fit(self, until: int | None = None) -> Trainer:
        """Train up to step ``until`` (default ``config.steps``), logging and checkpointing; returns self.

        A checkpoint is written every ``checkpoint_every`` steps and when the loop ends (if
        ``out_dir`` is set).
        """
        cfg = self.config
        end = cfg.steps if until is None else until
        if isinstance(end, bool) or not isinstance(end, int) or not 0 <= end <= cfg.steps:
            raise fail("Trainer.fit", f"`until` is {until!r}, expected an int in 0..{cfg.steps} (config.steps).")
        bar = self._progress(end)
        t0 = time.perf_counter()
        last = t0
        last_step = self.step
        try:
            while self.step < end:
                loss = self.train_step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    self._log(now - last, self.step - last_step)
                    last, last_step = now, self.step
                if self.out_dir is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if self.out_dir is not None and (not cfg.checkpoint_every or self.step % cfg.checkpoint_every):
            self.save_checkpoint()
        return self

    def _progress(self, end: int) -> Any:
        if not self.config.progress or self.rank != 0 or self.step >= end:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            return None
        return tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True)

    def _log(self, seconds: float, steps: int) -> None:
        record = {
            "step": self.step,
            "loss": sum(self._pending) / max(len(self._pending), 1),
            "grad_norm": sum(self._pending_norms) / max(len(self._pending_norms), 1),
            "lr": float(self.scheduler.get_last_lr()[0]),
            "images_per_s": steps * self.config.batch_size / seconds if seconds > 0 else None,
            "time": time.time(),
        }
        self._pending, self._pending_norms = [], []
        self.history.append(record)
        if self.out_dir is not None and self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / LOG_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (this process's RNG states under ``rng``)."""
        data_state = self.data.state_dict() if hasattr(self.data, "state_dict") else None
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "world_size": self.world_size,
            "model": _unwrap(self.model).state_dict(),
            "ema": self.ema_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "data": data_state,
            "pending": {"loss": list(self._pending), "grad_norm": list(self._pending_norms)},
            "rng": [get_rng_state()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (checks that the trajectory-defining config agrees)."""
        where = "Trainer.load_state_dict"
        saved = state.get("config", {})
        mine = self.config.to_dict()
        differ = sorted(k for k in mine if k not in _FREE_FIELDS and saved.get(k) != mine[k])
        if differ:
            detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {mine[k]!r}" for k in differ[:6])
            raise fail(where, f"the checkpoint was made with a different training configuration ({detail}).",
                       "resume with the same configuration (only steps, log_every, checkpoint_every and "
                       "progress may change), or start a new run in another directory.")
        if int(state["step"]) > self.config.steps:
            raise fail(where, f"the checkpoint is at step {state['step']}, beyond config.steps = "
                       f"{self.config.steps}.", "raise `steps` to continue training.")
        try:
            _unwrap(self.model).load_state_dict(state["model"])
            self.ema_model.load_state_dict(state["ema"])
        except RuntimeError as e:
            raise fail(where, f"the checkpoint's weights do not fit this model ({str(e).splitlines()[0]}).",
                       "build the same architecture as the run that wrote the checkpoint.") from e
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        if state.get("data") is not None:
            if not hasattr(self.data, "load_state_dict"):
                raise fail(where, "the checkpoint holds a data-stream position but `data` has no load_state_dict.",
                           "use a resumable data source (SceneStream, DatasetStream).")
            self.data.load_state_dict(state["data"])
        pending = state.get("pending") or {}
        self._pending = [float(v) for v in pending.get("loss", [])]
        self._pending_norms = [float(v) for v in pending.get("grad_norm", [])]
        rngs = state["rng"]
        same_world = int(state.get("world_size", 1)) == self.world_size
        set_rng_state(rngs[self.rank] if same_world and self.rank < len(rngs) else rngs[0])
        self.step = int(state["step"])

    @property
    def checkpoint_path(self) -> Path | None:
        """``out_dir / "checkpoint.pt"`` (``None`` without ``out_dir``)."""
        return None if self.out_dir is None else self.out_dir / CHECKPOINT_NAME

    def save_checkpoint(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write the state atomically (process 0 writes, after gathering every process's RNG states).

        Returns the path written (``None`` on other processes).
        """
        target = Path(path) if path is not None else self.checkpoint_path
        if target is None:
            raise fail("Trainer.save_checkpoint", "no path given and the trainer has no out_dir.")
        state = self.state_dict()
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, state["rng"][0])
            state["rng"] = gathered
        written = None
        if self.rank == 0:
            written = save_payload(target, state, kind=_KIND, version=_VERSION)
        if self.world_size > 1:
            torch.distributed.barrier()
        return written

    def resume(self, path: str | os.PathLike[str] | None = None) -> bool:
        """Resume from ``path`` (default: ``out_dir/checkpoint.pt``) if it exists; returns whether it did.

        The JSON-lines log is cut back to the checkpoint's step, so it reads as one uninterrupted run.

        Raises:
            LocalScoreError: if the file exists but is corrupt, truncated, foreign, or from another
                configuration; nothing is overwritten then.
        """
        target = Path(path) if path is not None else self.checkpoint_path
        if target is None or not target.exists():
            return False
        state = load_payload(target, kind=_KIND, version=_VERSION, where="Trainer.resume")
        self.load_state_dict(state)
        if self.out_dir is not None and self.rank == 0:
            self._truncate_log()
        if self.world_size > 1:
            torch.distributed.barrier()
        return True

    def _truncate_log(self) -> None:
        assert self.out_dir is not None
        log = self.out_dir / LOG_NAME
        if not log.exists():
            return
        kept = []
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the interruption
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= self.step:
                kept.append(line)
        text = "".join(line + "\n" for line in kept).encode()
        atomic_write(log, lambda f: f.write(text))


def train(
    model: nn.Module,
    data: Any,
    config: TrainConfig,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    device: torch.device | str | None = None,
    until: int | None = None,
    find_unused_parameters: bool = False,
) -> Trainer:
    """Train ``model`` on ``data`` with ``config``; resume from ``out_dir/checkpoint.pt`` if present.

    With ``out_dir``, process 0 holds a lock on the folder while it trains (``out_dir/.lock``, with its pid: a
    second process training into the same folder is refused at once) and first removes the temporary files
    that writes killed mid-way left there.

    Under ``torchrun`` call :func:`setup_distributed` first (and pass its device): the trainer then
    runs DistributedDataParallel and each process reads its shard of every global batch.

    Args:
        model: the denoiser module.
        data: the batch source (see :class:`Trainer`).
        config: hyper-parameters.
        out_dir: run directory for ``checkpoint.pt`` and ``log.jsonl`` (``None``: in memory only).
        resume: continue from an existing checkpoint in ``out_dir`` (a corrupt one raises).
        device: training device.
        until: stop at this step (default ``config.steps``).
        find_unused_parameters: passed to DistributedDataParallel (for models with parameters that a
            step may not use).

    Returns:
        The :class:`Trainer` (``.ema_model`` is the model to sample from).

    Examples:
        >>> import torch
        >>> from localscore.denoisers import EDMPreconditioner
        >>> net = torch.nn.Conv2d(1, 1, 3, padding=1)
        >>> model = EDMPreconditioner(lambda x, t, c: net(x)); model.net = net
        >>> data = iter(lambda: torch.randn(8, 1, 8, 8), None)
        >>> t = train(model, data, TrainConfig(steps=5, batch_size=8, progress=False))
        >>> t.step, len(t.history)
        (5, 1)
    """
    if out_dir is None or _dist()[0] != 0:
        return _train(model, data, config, out_dir, resume, device, until, find_unused_parameters)
    with run_lock(out_dir, where="train"):
        remove_stale_temps(out_dir)
        return _train(model, data, config, out_dir, resume, device, until, find_unused_parameters)


def _train(model: nn.Module, data: Any, config: TrainConfig, out_dir: str | os.PathLike[str] | None, resume: bool,
           device: torch.device | str | None, until: int | None, find_unused_parameters: bool) -> Trainer:
    trainer = Trainer(model, data, config, out_dir=out_dir, device=device,
                      find_unused_parameters=find_unused_parameters)
    if resume and out_dir is not None and not trainer.resume() and trainer.rank == 0:
        trainer._truncate_log()   # no checkpoint yet: lines a killed first attempt logged are not part of the run
    return trainer.fit(until)


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    weights: Literal["ema", "model"] = "ema",
    map_location: Any = "cpu",
) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``, digest checked) and optionally load weights.

    Args:
        path: a ``checkpoint.pt``.
        model: if given, its ``load_state_dict`` receives the ``weights`` of the checkpoint.
        weights: ``"ema"`` (default, the weights to sample from) or ``"model"``.
        map_location: as in ``torch.load``.

    Returns:
        The checkpoint dict (``step``, ``config``, ``model``, ``ema``, ...).

    Raises:
        LocalScoreError: for missing, truncated, corrupt or foreign files, or weights that do not fit.
    """
    where = "load_checkpoint"
    state = load_payload(path, kind=_KIND, version=_VERSION, where=where, map_location=map_location)
    if weights not in ("ema", "model"):
        raise fail(where, f"`weights` is {weights!r}, expected 'ema' or 'model'.")
    if model is not None:
        try:
            model.load_state_dict(state[weights])
        except RuntimeError as e:
            raise fail(where, f"the checkpoint's weights do not fit this model ({str(e).splitlines()[0]}).",
                       "build the same architecture as the run that wrote the checkpoint.") from e
    return state


