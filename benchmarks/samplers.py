"""Benchmark the samplers: sample quality against denoiser evaluations, and per-step overhead.

1. Quality: for an exact Gaussian-mixture oracle (its denoiser is the true posterior mean, so every
   error is the sampler's), the energy distance between each sampler's samples and exact samples, at
   several budgets of denoiser evaluations (NFE). The last column is the noise floor: the energy
   distance between two independent sets of exact samples of the same size.
2. Overhead: the time each sampler spends per step *outside* the denoiser (arithmetic, noise, input
   checks), measured with a denoiser that returns a precomputed tensor, as a ratio to one forward pass
   of a small conv net on the same batch. All timings are taken side by side in one run.

Run:  python benchmarks/samplers.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from localscore.oracles import GaussianMixture
from localscore.sampling import (
    mala_correct,
    sample_ddim,
    sample_ddpm,
    sample_euler,
    sample_euler_maruyama,
    sample_heun,
)
from localscore.schedules import karras_sigmas

F64 = torch.float64


def make_mixture(seed: int = 0) -> GaussianMixture:
    """Five well-separated components with random full covariances over 1 x 4 x 4 images (D = 16)."""
    g = torch.Generator().manual_seed(seed)
    m, d = 5, 16
    means = 2.0 * torch.randn(m, d, generator=g, dtype=F64)
    a = torch.randn(m, d, d, generator=g, dtype=F64) / math.sqrt(d)
    covs = 0.3 * a @ a.transpose(1, 2) + 0.05 * torch.eye(d, dtype=F64)
    weights = torch.tensor([0.1, 0.15, 0.2, 0.25, 0.3], dtype=F64)
    return GaussianMixture(weights, means.view(m, 1, 4, 4), covs)


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased (U-statistic) energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between [n, ...] and [m, ...].

    Zero in expectation when both samples come from the same distribution (it can then be slightly negative).
    """
    a, b = a.flatten(1).double(), b.flatten(1).double()
    n, m = a.shape[0], b.shape[0]
    aa = torch.cdist(a, a).sum() / (n * (n - 1))
    bb = torch.cdist(b, b).sum() / (m * (m - 1))
    return float(2 * torch.cdist(a, b).mean() - aa - bb)


def cov_error(a: torch.Tensor, cov: torch.Tensor) -> float:
    """Relative Frobenius error of the sample covariance of ``a [n, ...]`` against the exact ``cov [D, D]``."""
    return float(torch.linalg.norm(torch.cov(a.flatten(1).double().T) - cov) / torch.linalg.norm(cov))


# name -> (sampler, kwargs, steps for a given NFE budget, NFE of a given number of steps)
SAMPLERS: dict[str, tuple[Callable[..., torch.Tensor], dict[str, Any], Callable[[int], int], Callable[[int], int]]] = {
    "euler": (sample_euler, {}, lambda nfe: nfe, lambda n: n),
    "heun": (sample_heun, {}, lambda nfe: (nfe + 1) // 2, lambda n: 2 * n - 1),
    "heun+churn": (sample_heun, {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 10.0},
                   lambda nfe: (nfe + 1) // 2, lambda n: 2 * n - 1),
    "ddim(eta=0)": (sample_ddim, {}, lambda nfe: nfe, lambda n: n),
    "ddim(eta=0.5)": (sample_ddim, {"eta": 0.5}, lambda nfe: nfe, lambda n: n),
    "ddpm": (sample_ddpm, {}, lambda nfe: nfe, lambda n: n),
    "euler_maruyama": (sample_euler_maruyama, {}, lambda nfe: nfe, lambda n: n),
    # the same deterministic sampler started from exact samples of p_80 instead of 80 * randn: the gap to the
    # row "heun" is the error of the usual start x ~ N(0, 80^2 I), which an ODE carries to the end
    "heun, exact x_T": (sample_heun, {"exact_start": True}, lambda nfe: (nfe + 1) // 2, lambda n: 2 * n - 1),
}


def quality_table(budgets: list[int], n: int, seed: int) -> None:
    oracle = make_mixture()
    _, cov = oracle.moments()
    exact = oracle.sample(n, generator=torch.Generator().manual_seed(seed + 1000), dtype=F64)
    floors = [oracle.sample(n, generator=torch.Generator().manual_seed(seed + 2000 + k), dtype=F64) for k in range(5)]
    ed_floor = torch.tensor([energy_distance(f, exact) for f in floors])
    cov_floor = torch.tensor([cov_error(f, cov) for f in floors])
    results: dict[str, list[tuple[float, float, int]]] = {}
    for name, (fn, kwargs, steps_for, nfe_of) in SAMPLERS.items():
        results[name] = []
        for budget in budgets:
            steps = max(1, steps_for(budget))
            g = torch.Generator().manual_seed(seed)
            sigmas = karras_sigmas(steps, 0.002, 80.0, dtype=F64)
            kw = dict(kwargs)
            if kw.pop("exact_start", False):
                x = oracle.sample(n, sigma=80.0, generator=g, dtype=F64)
            else:
                x = sigmas[0] * torch.randn(n, *oracle.shape, generator=g, dtype=F64)
            out = fn(oracle, x, sigmas, generator=g, **kw)
            results[name].append((energy_distance(out, exact), cov_error(out, cov), nfe_of(steps)))
    header = f"   {'sampler':<17}" + "".join(f"{'NFE~' + str(b):>11}" for b in budgets)
    print(f"\n1. Sample quality against denoiser evaluations (exact Gaussian-mixture denoiser, 5 components, "
          f"D = 16, {n} samples; Karras grid sigma 80 -> 0.002 -> 0; heun uses 2N - 1 evaluations).")
    for k, (title, floor) in enumerate([
            ("1a. Unbiased energy distance to exact samples, x 1000", ed_floor * 1000),
            ("1b. Relative Frobenius error of the sample covariance, in %", cov_floor * 100)]):
        scale = 1000.0 if k == 0 else 100.0
        print(f"\n   {title}  (exact-vs-exact: {floor.mean():.2f} +- {floor.std():.2f})\n")
        print(header)
        print("   " + "-" * (len(header) - 3))
        for name, cells in results.items():
            print(f"   {name:<17}" + "".join(f"{c[k] * scale:>11.2f}" for c in cells))
    print("   (lower is better; values within the exact-vs-exact spread are at the noise floor)")


class SmallConvNet(torch.nn.Module):
    """A small denoiser-sized conv net: 3 -> 64 -> 64 -> 3 channels, 3x3 kernels, SiLU."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(64, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return x + self.body(x) / (1 + sigma.view(-1, 1, 1, 1))


def _time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def overhead_table(batch: int, size: int, steps: int, repeats: int) -> None:
    torch.manual_seed(0)
    net = SmallConvNet().eval()
    x = torch.randn(batch, 3, size, size)
    sig1 = torch.full((batch,), 1.0)
    buffers: dict[tuple[int, ...], torch.Tensor] = {}

    def null_denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Costs (almost) nothing: returns a precomputed tensor of x's shape."""
        if x.shape not in buffers:
            buffers[tuple(x.shape)] = 0.5 * torch.randn(x.shape)
        return buffers[tuple(x.shape)]

    sigmas = karras_sigmas(steps, 0.002, 80.0)
    with torch.no_grad():
        t_net = _time(lambda: net(x, sig1), repeats * 3)
        rows = []
        for name, (fn, kwargs, _, nfe_of) in SAMPLERS.items():
            if "exact_start" in kwargs:
                continue
            t = _time(lambda fn=fn, kwargs=kwargs: fn(null_denoiser, x, sigmas, generator=torch.Generator(),
                                                       **kwargs), repeats)
            rows.append((name, t / steps, nfe_of(steps) / steps))
        for name, metropolis in [("langevin (ULA)", False), ("mala (n_quad=4)", True)]:
            t = _time(lambda metropolis=metropolis: (mala_correct if metropolis else _ula)(
                null_denoiser, x, 1.0, n_steps=steps, generator=torch.Generator()), repeats)
            rows.append((name, t / steps, 5.0 if metropolis else 1.0))
    print(f"\n2. Per-step overhead outside the denoiser (batch {batch} x 3 x {size} x {size}, float32, "
          f"{torch.get_num_threads()} thread(s), {steps} steps, best of {repeats}).")
    print(f"   One call of the small conv net (3-64-64-3, 3x3): {t_net * 1e3:.3f} ms\n")
    print(f"   {'sampler':<18}{'overhead/step':>16}{'ratio to net call':>20}{'NFE/step':>10}")
    print("   " + "-" * 64)
    for name, per_step, nfe_per_step in rows:
        print(f"   {name:<18}{per_step * 1e3:>13.3f} ms{per_step / t_net:>20.3f}{nfe_per_step:>10.2f}")
    print("   (overhead includes input validation and the finiteness check of every denoiser output)")


def _ula(denoiser: Any, x: torch.Tensor, sigma: float, *, n_steps: int, generator: torch.Generator) -> torch.Tensor:
    from localscore.sampling import langevin_correct

    return langevin_correct(denoiser, x, sigma, n_steps=n_steps, generator=generator)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute on 2 cores)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        quality_table([10, 20, 40, 80], n=1000, seed=args.seed)
        overhead_table(batch=8, size=32, steps=20, repeats=3)
    else:
        quality_table([10, 20, 40, 80, 160, 320], n=4000, seed=args.seed)
        overhead_table(batch=16, size=32, steps=50, repeats=5)


if __name__ == "__main__":
    main()
