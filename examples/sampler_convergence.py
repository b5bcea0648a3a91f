"""How fast do the samplers converge? Measured against exact answers from the Gaussian oracles.

1. Deterministic samplers (Euler, DDIM with eta = 0, Heun) integrate the probability-flow ODE. For a
   Gaussian the exact solution is closed form (``Gaussian.probability_flow``), so the error of each
   sampler's endpoint is known exactly; its log-log slope against the number of steps is the order.
2. Every sampler, run on the exact denoiser of a 2-D Gaussian mixture: the error of the sampled mean,
   covariance and mode weights against the mixture's exact values, as the number of steps grows.

Writes ``convergence.csv``, ``moments.csv`` and (with matplotlib) ``convergence.png`` to ``--out``. Exits with
status 1 if a fitted order is off (Euler and DDIM 1, Heun 2, within 0.25) or if, at the largest number of
steps, a sampler's moments are outside the sampling noise.

Run:  python examples/sampler_convergence.py [--quick] [--out out/]
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import torch

from localscore.oracles import Gaussian, GaussianMixture
from localscore.sampling import sample_ddim, sample_ddpm, sample_euler, sample_euler_maruyama, sample_heun
from localscore.schedules import karras_sigmas, loguniform_sigmas

F64 = torch.float64


def ode_convergence(steps: list[int]) -> dict[str, list[float]]:
    """Endpoint error ||x_N - x_exact|| of the deterministic samplers from sigma = 10 to 0.05."""
    cov = torch.tensor([[1.0, 0.3, 0.0, 0.1], [0.3, 0.5, 0.1, 0.0], [0.0, 0.1, 0.8, -0.2], [0.1, 0.0, -0.2, 0.3]],
                       dtype=F64)
    gauss = Gaussian(torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=F64).view(1, 2, 2), cov)
    x = 10 * torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = gauss.probability_flow(x, 10.0, 0.05)
    errors: dict[str, list[float]] = {"euler": [], "ddim(eta=0)": [], "heun": []}
    for n in steps:
        sigmas = loguniform_sigmas(n, 0.05, 10.0, append_zero=False, dtype=F64)
        errors["euler"].append(float((sample_euler(gauss, x, sigmas) - exact).norm()))
        errors["ddim(eta=0)"].append(float((sample_ddim(gauss, x, sigmas) - exact).norm()))
        errors["heun"].append(float((sample_heun(gauss, x, sigmas) - exact).norm()))
    return errors


def moment_errors(steps: list[int], n: int) -> list[dict[str, float | str | int]]:
    """Sampled vs exact moments of a 2-D Gaussian mixture for every sampler."""
    mix = GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64),
                          torch.tensor([[-2.0, 1.0], [1.5, -0.5]], dtype=F64).view(2, 2, 1, 1),
                          torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.25, -0.15], [-0.15, 0.4]]], dtype=F64))
    mean, cov = mix.moments()
    samplers = {"euler": (sample_euler, {}), "heun": (sample_heun, {}), "ddpm": (sample_ddpm, {}),
                "ddim(eta=0.5)": (sample_ddim, {"eta": 0.5}), "euler_maruyama": (sample_euler_maruyama, {})}
    rows: list[dict[str, float | str | int]] = []
    for name, (fn, kwargs) in samplers.items():
        for steps_n in steps:
            g = torch.Generator().manual_seed(1)
            sigmas = karras_sigmas(steps_n, 0.002, 80.0, dtype=F64)
            x = sigmas[0] * torch.randn(n, 2, 1, 1, generator=g, dtype=F64)
            out = fn(mix, x, sigmas, generator=g, **kwargs).flatten(1)
            rows.append({
                "sampler": name, "steps": steps_n,
                "mean_error": float((out.mean(0) - mean.flatten()).norm()),
                "cov_rel_error": float(torch.linalg.norm(torch.cov(out.T) - cov) / torch.linalg.norm(cov)),
                "weight_error": abs(float((out[:, 0] > -0.25).double().mean()) - 0.7),
            })
    return rows


def check(slopes: dict[str, float], rows: list[dict[str, float | str | int]], n: int) -> list[str]:
    """What contradicts the theory: the ODE orders, and the moments at the largest number of steps against
    their sampling noise (mean: 5 standard errors of the norm; covariance: 5 sqrt(2 / n) relative; weight:
    5 binomial standard errors)."""
    problems = [f"{k}: fitted order {-s:.2f}, expected {order}"
                for k, s, order in ((k, s, 2 if k == "heun" else 1) for k, s in slopes.items())
                if abs(-s - order) > 0.25]
    last = max(int(r["steps"]) for r in rows)
    limits = {"mean_error": 5 * math.sqrt(2.9 / n), "cov_rel_error": 5 * math.sqrt(2 / n),
              "weight_error": 5 * math.sqrt(0.21 / n)}
    for r in rows:
        if r["steps"] == last:
            problems += [f"{r['sampler']} at {last} steps: {key} {float(r[key]):.4f} > {lim:.4f}"
                         for key, lim in limits.items() if float(r[key]) > lim]
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and samples (seconds)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output directory (default out/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    steps = [8, 16, 32, 64] if args.quick else [8, 16, 32, 64, 128, 256]
    errors = ode_convergence(steps)
    print("1. Probability-flow ODE endpoint error against the exact Gaussian solution (sigma 10 -> 0.05)")
    print(f"   {'steps':>8}" + "".join(f"{k:>14}" for k in errors))
    for i, n in enumerate(steps):
        print(f"   {n:>8}" + "".join(f"{errors[k][i]:>14.3e}" for k in errors))
    slopes = {k: float(np.polyfit(np.log(steps), np.log(v), 1)[0]) for k, v in errors.items()}
    print("   fitted order (minus the log-log slope): "
          + ", ".join(f"{k} {-s:.2f}" for k, s in slopes.items()))
    with open(args.out / "convergence.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["steps", *errors])
        for i, n in enumerate(steps):
            w.writerow([n, *(errors[k][i] for k in errors)])

    n = 2000 if args.quick else 20000
    rows = moment_errors([10, 40, 160] if args.quick else [10, 20, 40, 80, 160, 320], n)
    print(f"\n2. Moment errors on a 2-D Gaussian mixture ({n} samples; sampling noise of the mean "
          f"~{math.sqrt(2.9 / n):.3f})")
    print(f"   {'sampler':<16}{'steps':>6}{'|mean err|':>12}{'cov rel err':>13}{'weight err':>12}")
    for r in rows:
        print(f"   {r['sampler']!s:<16}{r['steps']:>6}{r['mean_error']:>12.4f}{r['cov_rel_error']:>13.4f}"
              f"{r['weight_error']:>12.4f}")
    with open(args.out / "moments.csv", "w", newline="") as f:
        w2 = csv.DictWriter(f, fieldnames=list(rows[0]))
        w2.writeheader()
        w2.writerows(rows)
    problems = check(slopes, rows, n)
    if problems:
        print("\nFAILED:\n  " + "\n  ".join(problems))
        raise SystemExit(1)

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\nmatplotlib is not installed: skipping convergence.png (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(5, 4))
    for k, v in errors.items():
        ax.loglog(steps, v, "o-", label=f"{k} (order {-slopes[k]:.2f})")
    ax.set_xlabel("steps")
    ax.set_ylabel("endpoint error")
    ax.set_title("Probability-flow ODE, exact Gaussian")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "convergence.png", dpi=120)
    print(f"\nwrote {args.out / 'convergence.png'}, convergence.csv, moments.csv")


if __name__ == "__main__":
    main()
