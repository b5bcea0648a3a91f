"""Training denoisers: losses, the trainer (EMA, atomic checkpoints, exact resume, DDP through torchrun).

Pipelines that write their own run folders (evaluations, benchmarks) use the trainer's folder discipline:
:func:`run_lock` (one writer per folder, a second one refused naming the holder's pid) and
:func:`remove_stale_temps` (temporary files of writes killed mid-way).
"""

from __future__ import annotations

from typing import Any

from .._io import remove_stale_temps, run_lock
from .._moved import forward
from .losses import (
    Objective,
    SigmaSampling,
    denoising_loss,
    drop_conditions,
    loss_weight,
    sample_sigmas,
)
from .trainer import (
    CHECKPOINT_NAME,
    LOG_NAME,
    TrainConfig,
    Trainer,
    cleanup_distributed,
    load_checkpoint,
    setup_distributed,
    train,
)

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "Objective",
    "SigmaSampling",
    "TrainConfig",
    "Trainer",
    "cleanup_distributed",
    "denoising_loss",
    "drop_conditions",
    "load_checkpoint",
    "loss_weight",
    "remove_stale_temps",
    "run_lock",
    "sample_sigmas",
    "setup_distributed",
    "train",
]

_MOVED = {"MODEL_KINDS", "RunConfig", "run_training"}
"""Names of 0.1.0 that moved to :mod:`localscore.lengthgen.runs` (importable here until 0.3, with a warning)."""


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return forward(__name__, "localscore.lengthgen.runs", name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
