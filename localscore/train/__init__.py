"""Training denoisers: losses, the trainer (EMA, atomic checkpoints, exact resume, DDP through torchrun)."""

from __future__ import annotations

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
    "sample_sigmas",
    "setup_distributed",
    "train",
]
