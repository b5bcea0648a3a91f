"""The tiny random diffusers models the adapter tests share (no download; not part of the library):
``test_adapters_diffusers.py`` and ``test_fuzz_diffusers.py``. diffusers is imported when a model is built, so a
test file skips on its own ``pytest.importorskip("diffusers")`` first."""

from __future__ import annotations

from typing import Any

import torch

T_TOK, D_EMB = 5, 8
"""Prompt tokens and the embedding width (the UNet's ``cross_attention_dim``)."""


def tiny_unet(seed: int = 0, **extra: Any) -> torch.nn.Module:
    """A float64 ``UNet2DConditionModel`` in eval mode: 4 latent channels, 8 x 8 samples, two blocks (8 and 16
    channels, cross-attention in the outer ones), seeded with ``torch.manual_seed(seed)``; ``extra`` overrides
    or adds config entries."""
    import diffusers

    torch.manual_seed(seed)
    cfg: dict[str, Any] = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                               block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=D_EMB,
                               norm_num_groups=4, attention_head_dim=2)
    cfg.update(extra)
    unet: Any = diffusers.UNet2DConditionModel(**cfg)  # Any: mypy finds no `.to` on the diffusers class
    return unet.to(torch.float64).eval()
