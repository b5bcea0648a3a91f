"""Measure the pixel and conditional locality of a local and a global network, side by side.

Builds ``localscore.nn.LocalConditionalDenoiser`` (local by construction: declared receptive and
conditioner radii) and ``localscore.nn.GlobalConditionalDenoiser`` (a U-Net with cross-attention to all
conditioners), both untrained (locality here is a property of the architecture; run it on your trained
checkpoints for the learned one), and measures at several noise levels:

* pixel locality: the share of Jacobian mass within Chebyshev distance d of each output pixel, the
  effective radii, and the heat-map of the average local Jacobian (``pixel_locality``; the local net
  uses the verified coloured Jacobian, the U-Net the dense one);
* conditional locality: each conditioner's influence by ablation, its 90 % influence radius, and the
  share of it inside a box of radius ``--region`` around the object (``conditional_locality``).

Writes ``measure_locality.png`` (curves and heat-maps) and ``measure_locality.json`` to ``--out``. Exits with
status 1 if the local net has Jacobian mass beyond its receptive radius or conditioner influence outside
its regions (it is local by construction), or if the U-Net's influence does not spread beyond them.

    python examples/measure_locality.py --quick --out out/measure_locality
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from localscore import Conditions
from localscore.metrics import conditional_locality, pixel_locality
from localscore.nn import GlobalConditionalDenoiser, LocalConditionalDenoiser


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small image and 3 noise levels (CI, < 1 min)")
    ap.add_argument("--out", default="out/measure_locality", help="output directory")
    ap.add_argument("--size", type=int, default=None, help="image size (default 16 quick, 24 full)")
    ap.add_argument("--region", type=float, default=None,
                    help="radius of the objects' regions (Chebyshev px; default: the local net's conditioner radius)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    size = args.size or (16 if args.quick else 24)
    sigmas = [0.05, 0.5, 5.0] if args.quick else [0.02, 0.1, 0.5, 2.0, 10.0]

    if args.quick:  # receptive radius 4, conditioner radius 5
        local = LocalConditionalDenoiser(width=16, depth=1, cond_radius=1.5, attr_dim=0).eval()
    else:  # the 16x16 model of the earlier study (docs/experiments.md): receptive radius 6, conditioner radius 9
        local = LocalConditionalDenoiser(width=16, attr_dim=0).eval()
    glob = GlobalConditionalDenoiser(base_width=8, channel_mult=(1, 2),
                                     attention_levels=(1,), attr_dim=0, token_dim=16, heads=2, groups=4).eval()
    models = {"local": local, "global (U-Net)": glob}
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(1, 3, size, size, generator=g)
    region = float(args.region if args.region is not None else local.conditioner_radius)
    m = 2.0  # objects near three corners, more than 2 x conditioner radius apart
    q = size - 1 - m
    cond = Conditions.from_lists([[(m, m), (q, q), (m, q)]])
    print(f"local net: receptive radius {local.receptive_radius}, conditioner radius {local.conditioner_radius}; "
          f"objects {q - m:g} px apart; regions: boxes of radius {region:g}")
    results = {}
    for name, D in models.items():
        t0 = time.perf_counter()
        pix = pixel_locality(D, x, sigmas, cond, max_memory=2**30)
        con = conditional_locality(D, x, sigmas, cond, regions=region)
        dt = time.perf_counter() - t0
        results[name] = (pix, con)
        print(f"{name:>15}: {pix.method:>7} Jacobian, {dt:5.1f} s")
        for s, r, idx, rad in zip(sigmas, pix.effective_radius.tolist(), con.index["ablation"].tolist(),
                                  con.influence_radius["ablation"].nanmean(dim=(1, 2)).tolist()):
            print(f"{'':>17}sigma {s:<5g} pixel radius 50/90/99% = {r},  conditional index "
                  f"(inside {region:g} px) = {idx:.3f},  90% influence radius = {rad:.1f} px")
    with open(out / "measure_locality.json", "w") as f:
        json.dump({name: {"pixel": p.to_dict(), "conditional": {k: v for k, v in c.to_dict().items()
                                                                  if k != "influence"}}
                   for name, (p, c) in results.items()}, f)
    plot(results, sigmas, region, out / "measure_locality.png")
    print(f"wrote {out / 'measure_locality.png'} and {out / 'measure_locality.json'}")
    problems = []
    pix, con = results["local"]
    R = int(local.receptive_radius)
    if float(pix.outside(R).max()) > 1e-5:  # float32 round-off of the normalised profile is ~1e-6
        problems.append(f"local: Jacobian mass {pix.outside(R).tolist()} beyond its receptive radius {R}")
    if args.region is None and float((con.index["ablation"] - 1).abs().max()) > 1e-9:
        problems.append(f"local: conditional index {con.index['ablation'].tolist()}, expected 1 within its "
                        f"conditioner radius {region:g}")
    if float(results["global (U-Net)"][1].index["ablation"].max()) > 0.9:
        problems.append("global (U-Net): its conditioner influence stays inside the regions")
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        raise SystemExit(1)


def plot(results: dict, sigmas: list[float], region: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid = len(sigmas) // 2
    fig, axes = plt.subplots(len(results), 4, figsize=(16, 3.8 * len(results)), squeeze=False)
    for row, (name, (pix, con)) in enumerate(results.items()):
        a = axes[row, 0]
        for s in range(len(sigmas)):
            a.plot(pix.distances.numpy(), pix.profile[s].numpy(), marker=".", label=f"σ = {sigmas[s]:g}")
        a.set_title(f"{name}: Jacobian mass within d", fontsize=10)
        a.set_xlabel("Chebyshev distance d (px)")
        a.set_ylim(0, 1.02)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
        a = axes[row, 1]
        Hc = pix.heatmap.shape[1] // 2
        k = min(Hc, 10)
        crop = pix.heatmap[mid, Hc - k : Hc + k + 1, Hc - k : Hc + k + 1]
        h = a.imshow(torch.log10(crop.clamp_min(1e-10)).numpy(), extent=(-k - 0.5, k + 0.5, k + 0.5, -k - 0.5),
                     cmap="magma", vmin=-6)
        a.set_title(f"log10 mean |J|² by offset (σ = {sigmas[mid]:g})", fontsize=10)
        fig.colorbar(h, ax=a, fraction=0.046)
        a = axes[row, 2]
        infl = con.influence["ablation"][mid, 0]
        share = infl / infl.sum(dim=(1, 2), keepdim=True).clamp_min(1e-300)
        h = a.imshow(torch.log10(share.sum(0).clamp_min(1e-8)).numpy(), cmap="viridis", vmin=-6)
        pos = con.positions[0]
        a.scatter(pos[:, 1].numpy(), pos[:, 0].numpy(), marker="x", c="red", s=40)
        for p in pos.tolist():
            a.add_patch(plt.Rectangle((p[1] - region - 0.5, p[0] - region - 0.5), 2 * region + 1, 2 * region + 1,
                                      fill=False, ec="red", lw=0.8))
        a.set_title(f"log10 conditioner influence (ablation, σ = {sigmas[mid]:g})", fontsize=10)
        fig.colorbar(h, ax=a, fraction=0.046)
        a = axes[row, 3]
        a.semilogx(sigmas, con.index["ablation"].numpy(), marker="o", label=f"inside own box (r = {region:g})")
        a.semilogx(sigmas, con.on_others_mean["ablation"].numpy(), marker="s", label="on other objects")
        a.set_ylim(-0.02, 1.02)
        a.set_xlabel("σ")
        a.set_title("conditional locality index", fontsize=10)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
