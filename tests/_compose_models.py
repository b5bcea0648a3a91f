"""Hand-built local conditional conv denoisers with known radii (test oracles for the compose strategies).

The conditioning is a rendered map: every valid object paints its (1 + attribute sum) on the box of
Chebyshev half-size ``paint`` around its position; ``layers`` 3x3 convolutions follow. So the output at a
pixel depends only on input pixels within ``layers`` (receptive radius) and on objects within
``paint + layers`` (conditioner radius), both Chebyshev; the network is translation equivariant and its
borders are handled by the conv padding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from localscore import Conditions
from localscore.masks import box_masks


class LocalConvDenoiser(nn.Module):
    def __init__(self, channels: int = 2, hidden: int = 6, layers: int = 2, paint: int = 1, *,
                 padding_mode: str = "zeros", seed: int = 0, declare: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        dims = [channels + 2] + [hidden] * (layers - 1) + [channels]
        self.convs = nn.ModuleList(
            nn.Conv2d(dims[i], dims[i + 1], 3, padding=1, padding_mode=padding_mode) for i in range(layers)
        )
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.4)
                assert conv.bias is not None
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)
        self.to(dtype)
        self.paint = paint
        self.calls: list[tuple[int, ...]] = []
        if declare:
            self.receptive_radius = layers
            self.conditioner_radius = paint + layers

    def render(self, cond: Conditions | None, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        if cond is None or cond.num_slots == 0:
            return x.new_zeros(B, 1, H, W)
        m = box_masks(cond.to(dtype=x.dtype), (H, W), float(self.paint)).to(x.dtype)  # [B, K, H, W]
        if cond.attr is not None:
            m = m * (1 + cond.attr.to(x.dtype).sum(-1))[:, :, None, None]
        return m.sum(1, keepdim=True)

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditions | None = None) -> Tensor:
        self.calls.append(tuple(x.shape))
        B = x.shape[0]
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(B).view(B, 1, 1, 1)
        c_in = 1 / torch.sqrt(s**2 + 1)
        noise = (torch.log(s) / 4).expand(B, 1, *x.shape[-2:])
        h = torch.cat([x * c_in, self.render(cond, x), noise], 1)
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = torch.tanh(h)
        c_skip = 1 / (s**2 + 1)
        c_out = s / torch.sqrt(s**2 + 1)
        return c_skip * x + c_out * h
