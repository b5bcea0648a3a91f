"""What one output pixel sees: the local network, the global U-Net, and the U-Net after the intervention.

Builds a :class:`~localscore.nn.LocalConditionalDenoiser` and a :class:`~localscore.nn.GlobalConditionalDenoiser`
(freshly initialised: the maps show what the *architecture* allows, before any training), picks one output
pixel, and plots, by autograd, how strongly it depends on every input pixel and on every conditioner
(``|dD_p / d pos_k| + |dD_p / d attr_k|``). A third row shows the U-Net after
``enforce_locality(unet, DiscRule(r))``: its cross-attention is masked, but downsampling, GroupNorm, the
bottleneck self-attention and the pooled token embedding still carry far conditioners to the pixel. A fourth
row shows ``localize(unet, DiscRule(r))``, the sampling-time form, which is exactly conditionally local.

It exits with status 1 if a map contradicts this: a declared radius with dependence beyond it, no dependence
on the nearby object, or a global U-Net that does not see the farthest conditioner.

Usage::

    python examples/local_vs_global.py --quick --out out/local_vs_global
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Rectangle

from localscore import Conditions
from localscore.masks import DiscRule
from localscore.nn import (
    GlobalConditionalDenoiser,
    LocalConditionalDenoiser,
    LocalNetConfig,
    enforce_locality,
    localize,
)


def dependence(D: torch.nn.Module, x: torch.Tensor, sigma: float, cond: Conditions,
               pixel: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``([H, W], [K])``: sum over output channels of |d D(x)[c, pixel] / d x| and of |d / d conditioner k|."""
    x = x.clone().requires_grad_(True)
    pos = cond.pos.clone().requires_grad_(True)
    assert cond.attr is not None
    attr = cond.attr.clone().requires_grad_(True)
    out = D(x, sigma, Conditions(pos, attr, cond.valid))
    dx = torch.zeros(x.shape[2:])
    dc = torch.zeros(cond.num_slots)
    for c in range(x.shape[1]):
        gx, gp, ga = torch.autograd.grad(out[0, c, pixel[0], pixel[1]], (x, pos, attr), retain_graph=True)
        dx += gx[0].abs().sum(0)
        dc += gp[0].abs().sum(-1) + ga[0].abs().sum(-1)
    return dx, dc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32x32 images and the 16x16 local config (CI); "
                    "default 48x48 images and the 32x32 local config")
    ap.add_argument("--out", default="out/local_vs_global", help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    size = 32 if args.quick else 48
    local = LocalConditionalDenoiser(LocalNetConfig.for_image_size(16 if args.quick else 32))
    unet = GlobalConditionalDenoiser()
    r = local.config.cond_radius
    g = torch.Generator().manual_seed(args.seed)
    K = 8
    pos = torch.rand(1, K, 2, generator=g) * (size - 1)
    pos[0, 0] = torch.tensor([size / 2 - 1.0, size / 2 + 1.0])  # one object near the pixel we look at
    cond = Conditions(pos, torch.rand(1, K, 13, generator=g))
    x = torch.randn(1, 3, size, size, generator=g)
    pixel = (size // 2, size // 2)
    models = [
        ("local network", local, local.receptive_radius, local.conditioner_radius),
        ("global U-Net", unet, None, None),
        (f"U-Net + enforce_locality(DiscRule({r}))", enforce_locality(unet, DiscRule(r)), None, None),
        (f"localize(U-Net, DiscRule({r}))", localize(unet, DiscRule(r)), None, int(torch.tensor(r).ceil())),
    ]
    fig, axes = plt.subplots(len(models), 2, figsize=(8, 3.6 * len(models)))
    summary = {}
    maps = []
    for row, (name, D, R, rc) in enumerate(models):
        dx, dc = dependence(D, x, 1.0, cond, pixel)
        maps.append((dx, dc))
        ar = torch.arange(size)
        cheb = torch.maximum((ar[:, None] - pixel[0]).abs(), (ar[None] - pixel[1]).abs())
        dist_c = (cond.pos[0] - torch.tensor(pixel, dtype=torch.float32)).abs().amax(-1)
        summary[name] = {
            "receptive_radius": R,
            "conditioner_radius": rc,
            "input_share_beyond_8px": float(dx[cheb > 8].sum() / dx.sum()),
            "conditioner_dependence": dc.tolist(),
            "conditioner_distance": dist_c.tolist(),
        }
        ax = axes[row, 0]
        ax.imshow(dx.log10().clamp(min=-8).numpy(), cmap="magma")
        ax.plot(pixel[1], pixel[0], "c+", ms=10)
        if R is not None:
            ax.add_patch(Rectangle((pixel[1] - R - 0.5, pixel[0] - R - 0.5), 2 * R + 1, 2 * R + 1, fill=False,
                                   ec="cyan", lw=1.5))
        ax.set_title(f"{name}\nlog10 |dD_p/dx|  (box: receptive radius)", fontsize=8)
        ax = axes[row, 1]
        ax.imshow(torch.zeros(size, size).numpy(), cmap="gray", vmin=-1, vmax=1)
        vals = dc.clamp(min=1e-12).log10()
        sc = ax.scatter(cond.pos[0, :, 1], cond.pos[0, :, 0], c=vals.numpy(), cmap="viridis", vmin=-6,
                        vmax=float(vals.max()), s=80, edgecolors="w")
        for k in range(K):
            label = "0" if float(dc[k]) == 0.0 else f"{float(dc[k]):.1e}"
            ax.annotate(label, (float(cond.pos[0, k, 1]) + 0.6, float(cond.pos[0, k, 0])), color="w", fontsize=6)
        ax.plot(pixel[1], pixel[0], "c+", ms=10)
        if rc is not None:
            ax.add_patch(Rectangle((pixel[1] - rc - 0.5, pixel[0] - rc - 0.5), 2 * rc + 1, 2 * rc + 1, fill=False,
                                   ec="cyan", lw=1.5))
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)
        fig.colorbar(sc, ax=ax, fraction=0.046)
        ax.set_title("|dD_p/d conditioner| (box: conditioner radius)", fontsize=8)
    fig.tight_layout()
    png = out_dir / "dependence_map.png"
    fig.savefig(png, dpi=72)
    (out_dir / "dependence.json").write_text(json.dumps(summary, indent=2))
    far = int(dist_c.argmax())
    print(f"output pixel {pixel}; farthest conditioner {far} at Chebyshev distance {float(dist_c[far]):.1f} px")
    for name, s in summary.items():
        print(f"{name:42s} input share beyond 8 px: {s['input_share_beyond_8px']:.3f}; "
              f"|dD_p/d farthest conditioner| = {s['conditioner_dependence'][far]:.2e}")
    print(f"wrote {png}")
    problems = []
    for (name, _, R, rc), (dx, dc) in zip(models, maps):
        if R is not None and float(dx[cheb > R].abs().max()) != 0.0:
            problems.append(f"{name}: the output pixel depends on input pixels beyond its receptive radius {R}")
        if rc is not None and float((dc * (dist_c > rc)).abs().max()) != 0.0:
            problems.append(f"{name}: it depends on conditioners beyond its conditioner radius {rc}")
        if float(dc[0]) == 0.0:
            problems.append(f"{name}: it does not depend on the object next to the pixel")
    if float(maps[1][1][far]) == 0.0:
        problems.append("global U-Net: it does not depend on the farthest conditioner")
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
