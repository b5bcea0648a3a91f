"""Compose single-object denoisers into scenes with more objects than any component has.

The data are `FactorizedObjects`: coloured Gaussian blobs on disjoint discs over an independent noisy
background, for which conditional projective composition holds exactly. Every component is the exact
*single-object* denoiser ``bind(oracle, c_j)``; the composition

    D(x | none) + sum_j (D(x | c_j) - D(x | none))

is sampled with Heun for 1, 3, 6 and 10 objects. The grid shows, per row, composed samples next to
exact joint samples of the same scene, and the script prints how far the composed samples' mean is from
the exact mean (RMS over pixels, in standard errors: about 1 when right) and the ratio of variances
(Heun's discretisation inflates it a little with few steps, as in ``--quick``). It exits with status 1
when the composed samples are off: an RMS mean error above 2 standard errors, an object whose mean over
its disc differs from the exact samples' by more than 6 standard errors (Welch t), or a variance ratio
outside [0.8, 1.5]. Outputs: ``compose_objects.png`` and ``compose_objects.json`` in ``--out``.

Run: ``python examples/compose_objects.py [--quick] [--out out/]`` (quick: ~10 s; full: a few CPU-minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localscore import Conditions, bind
from localscore.compose import projective
from localscore.oracles import FactorizedObjects
from localscore.sampling import sample_heun
from localscore.schedules import karras_sigmas

COLOURS = [(1.0, 0.2, 0.2), (0.2, 0.8, 0.2), (0.2, 0.4, 1.0), (1.0, 0.8, 0.1), (0.8, 0.2, 0.9)]


def scene(n: int, size: int, seed: int) -> tuple[list[tuple[float, float]], list[list[float]]]:
    """``n`` objects in distinct cells of a grid (disjoint discs), with colours from a palette."""
    cells = 4
    spacing = size / cells
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(cells * cells, generator=g)[:n].tolist()
    pos = [((i // cells + 0.5) * spacing, (i % cells + 0.5) * spacing) for i in idx]
    cols = [list(COLOURS[k % len(COLOURS)]) for k in range(n)]
    return pos, cols


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small images, few samples and steps (CI)")
    ap.add_argument("--out", default="out", help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    size, n_samples, steps, shown = (24, 16, 16, 4) if args.quick else (32, 64, 48, 6)
    counts = [1, 3, 6, 10]
    oracle = FactorizedObjects(3, size, size, object_radius=size / 10, attr_map=torch.eye(3), object_mean=0.0,
                               object_std=0.15, mean_width=size / 12, background_mean=0.5, background_std=0.05)
    sigmas = karras_sigmas(steps, 0.002, 80.0, dtype=torch.float64)
    rows, report = [], {}
    t0 = time.perf_counter()
    for n in counts:
        pos, cols = scene(n, size, args.seed + n)
        one = Conditions.from_lists([pos], [cols], dtype=torch.float64)
        # one-object components: no component ever sees more than one object
        composed = projective(bind(oracle, one.drop_all()), [bind(oracle, c) for c in one.singletons()])
        g = torch.Generator().manual_seed(args.seed + 100 + n)
        x = sigmas[0] * torch.randn(n_samples, 3, size, size, generator=g, dtype=torch.float64)
        got = sample_heun(composed, x, sigmas)
        exact = oracle.sample(one.repeat_interleave(n_samples), generator=g)
        # z-scores of the per-pixel mean error against the exact mean; RMS ~ 1 when the samples are right
        se = exact.std(0) / n_samples**0.5
        z = float(((got.mean(0) - oracle.mean(one)[0]) / se).square().mean().sqrt())
        # per object: the mean over its disc, composed vs exact samples (Welch t; |t| ~ 1 when right)
        regions = oracle.regions(one)[0].to(torch.float64)  # [n, H, W]
        a = torch.einsum("schw,khw->sk", got, regions) / regions.sum((1, 2))
        b = torch.einsum("schw,khw->sk", exact, regions) / regions.sum((1, 2))
        t = (a.mean(0) - b.mean(0)) / (a.var(0) / n_samples + b.var(0) / n_samples).sqrt()
        report[n] = {"rms_mean_error_in_standard_errors": z,
                     "variance_ratio": float(got.var(0).mean() / exact.var(0).mean()),
                     "worst_object_t": float(t.abs().max())}
        print(f"{n:>2} objects: RMS error of the composed samples' mean = {z:.2f} standard errors; "
              f"variance ratio composed / exact = {report[n]['variance_ratio']:.3f}; "
              f"worst object |t| = {report[n]['worst_object_t']:.2f}")
        rows.append((n, got[:shown], exact[:shown]))
    print(f"sampled in {time.perf_counter() - t0:.1f} s")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 2 * shown, figsize=(2 * shown * 1.2, len(rows) * 1.3))
    for r, (n, got, exact) in enumerate(rows):
        for k in range(shown):
            for half, imgs, label in ((0, got, "composed"), (1, exact, "exact")):
                ax = axes[r, half * shown + k]
                ax.imshow(imgs[k].permute(1, 2, 0).clamp(0, 1).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0 and k == 0:
                    ax.set_title(label, fontsize=8, loc="left")
            if k == 0:
                axes[r, 0].set_ylabel(f"{n} obj.", fontsize=8)
    fig.suptitle("Projective composition of one-object denoisers (left) vs exact joint samples (right)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "compose_objects.png", dpi=110)
    (out / "compose_objects.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'compose_objects.png'} and {out / 'compose_objects.json'}")
    # The composition is exact here, so its samples must match the exact joint (up to sampling noise and
    # Heun's small variance bias): a wrong composition (e.g. one component lost) is far outside these bounds.
    bad = [f"{n} objects: {r}" for n, r in report.items()
           if not (r["rms_mean_error_in_standard_errors"] < 2.0 and r["worst_object_t"] < 6.0
                   and 0.8 < r["variance_ratio"] < 1.5)]
    if bad:
        print("FAILED: the composed samples do not match the exact joint:\n  " + "\n  ".join(bad))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
