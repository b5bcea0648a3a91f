"""A tiny conditional conv denoiser for trainer tests (not part of the library)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from localscore import Conditions
from localscore.denoisers import EDMPreconditioner


class TinyNet(nn.Module):
    """Conv net that sees the noise level and a rendered map of conditioner positions."""

    def __init__(self, channels: int = 3, hidden: int = 16, attr_dim: int = 13) -> None:
        super().__init__()
        self.attr = nn.Linear(attr_dim, 4)
        self.inp = nn.Conv2d(channels + 4 + 1, hidden, 3, padding=1)
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Conditions | None) -> Tensor:
        B, _, H, W = x.shape
        cmap = x.new_zeros(B, 4, H, W)
        if cond is not None and cond.num_slots > 0 and cond.attr is not None:
            rows = torch.arange(H, dtype=x.dtype).view(1, 1, H, 1)
            cols = torch.arange(W, dtype=x.dtype).view(1, 1, 1, W)
            d2 = (rows - cond.pos[..., 0, None, None]) ** 2 + (cols - cond.pos[..., 1, None, None]) ** 2
            bump = torch.exp(-d2 / 4.0) * cond.valid[..., None, None].to(x.dtype)      # [B, K, H, W]
            cmap = torch.einsum("bkhw,bka->bahw", bump, self.attr(cond.attr))
        t = c_noise.view(B, 1, 1, 1).expand(B, 1, H, W)
        h = torch.relu(self.inp(torch.cat([x, cmap, t], 1)))
        h = torch.relu(self.mid(h))
        return self.out(h)


def tiny_denoiser(seed: int = 0) -> EDMPreconditioner:
    torch.manual_seed(seed)
    return EDMPreconditioner(TinyNet(), sigma_data=0.5)
