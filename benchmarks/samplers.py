"""Benchmark the samplers: sample quality against denoiser evaluations, and per-step overhead.

1. Quality: for an exact Gaussian-mixture oracle (its denoiser is the true posterior mean, so every
   error is the sampler's), the energy distance and the relative covariance error between each sampler's
   samples and exact samples, at budgets of denoiser evaluations (NFE 10 / 20 / 50), next to the noise
   floor (what independent sets of exact samples of the same size score). When
   k-diffusion's ``sampling.py`` can be loaded (``$LOCALSCORE_K_DIFFUSION_SAMPLING`` or an installed
   ``k_diffusion``; only that file, never the package) and diffusers is importable, their samplers run in
   the same table, on the same oracle, grid (sigma 80 -> 0.002, Karras) and start.
2. Overhead: the time each sampler spends per step *outside* the denoiser (arithmetic, noise, input
   checks), measured with a denoiser that returns a precomputed tensor, as a ratio to one forward pass
   of a small conv net on the same batch. All timings are taken side by side in one run.

Run:  python benchmarks/samplers.py [--quick | --full] [--start prior|exact|both] [--threads N] [--no-peers]
      (--full, the default sizes: about 5 min on 2 shared cores, one thread; --quick: under a minute)

The start. Users start a sampler from ``x = sigma_max * z`` (``--start prior``), which is only approximately a
sample of ``p_sigma_max``: it ignores the data's mean and covariance, and a deterministic sampler carries that
error to the end, so its error stops falling with NFE. ``--start exact`` starts from exact samples of
``p_sigma_max`` (the oracle can draw them), so what is left is the discretisation error alone. The default
runs both, one table each, and says for each budget which sampler is best and how far from the floor.

The floor is estimated from many independent sets of exact samples (mean, sd, 5-95 % band); the best sampler
of each budget (the minimum over many rows of one draw each, hence biased low) is re-run with fresh seeds and
judged on the mean of those runs.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from _bench import cpu_name, load_k_diffusion_sampling

from localscore.oracles import GaussianMixture
from localscore.sampling import (
    mala_correct,
    sample_ddim,
    sample_ddpm,
    sample_deis,
    sample_dpm_2,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_euler_maruyama,
    sample_heun,
    sample_lms,
    sample_unipc,
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


def _self_term(a: torch.Tensor) -> float:
    """E|X - X'| over distinct pairs of ``a [n, ...]`` (the U-statistic)."""
    a = a.flatten(1).double()
    return float(torch.cdist(a, a).sum() / (a.shape[0] * (a.shape[0] - 1)))


def energy_distance(a: torch.Tensor, b: torch.Tensor, b_self: float | None = None) -> float:
    """Unbiased (U-statistic) energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between [n, ...] and [m, ...].

    Zero in expectation when both samples come from the same distribution (it can then be slightly negative).
    ``b_self`` is ``_self_term(b)`` when the caller has it already (the reference set, compared many times).
    """
    bb = _self_term(b) if b_self is None else b_self
    return float(2 * torch.cdist(a.flatten(1).double(), b.flatten(1).double()).mean() - _self_term(a) - bb)


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
    "euler_ancestral": (sample_euler_ancestral, {}, lambda nfe: nfe, lambda n: n),
    "dpm_2": (sample_dpm_2, {}, lambda nfe: (nfe + 1) // 2, lambda n: 2 * n - 1),
    "dpmpp_2s_ancestral": (sample_dpmpp_2s_ancestral, {}, lambda nfe: (nfe + 1) // 2, lambda n: 2 * n - 1),
    "dpmpp_2m": (sample_dpmpp_2m, {}, lambda nfe: nfe, lambda n: n),
    "dpmpp_2m_sde": (sample_dpmpp_2m_sde, {}, lambda nfe: nfe, lambda n: n),
    "dpmpp_2m_sde(heun)": (sample_dpmpp_2m_sde, {"solver_type": "heun"}, lambda nfe: nfe, lambda n: n),
    "dpmpp_3m_sde": (sample_dpmpp_3m_sde, {}, lambda nfe: nfe, lambda n: n),
    "dpmpp_3m(eta=0)": (sample_dpmpp_3m_sde, {"eta": 0.0}, lambda nfe: nfe, lambda n: n),
    "lms": (sample_lms, {}, lambda nfe: nfe, lambda n: n),
    "deis": (sample_deis, {}, lambda nfe: nfe, lambda n: n),
    "unipc": (sample_unipc, {}, lambda nfe: nfe, lambda n: n),
    "unipc(bh1)": (sample_unipc, {"variant": "bh1"}, lambda nfe: nfe, lambda n: n),
}


# the samplers without fresh noise (probability-flow ODE solvers): they carry the start's error to the end
DETERMINISTIC = ["euler", "heun", "ddim(eta=0)", "dpm_2", "dpmpp_2m", "dpmpp_3m(eta=0)", "lms", "deis", "unipc",
                 "unipc(bh1)"]


def k_diffusion_rows(kd: Any) -> dict[str, Runner]:
    """k-diffusion's samplers as ``(oracle, x, sigmas, generator) -> samples`` (noise from the same generator)."""
    def make(name: str, stochastic: bool, **kw: Any) -> Runner:
        def run(oracle: Any, x: torch.Tensor, sigmas: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            extra: dict[str, Any] = {}
            if stochastic:
                extra["noise_sampler"] = lambda s, s_next: torch.randn(x.shape, generator=g, dtype=x.dtype)
            return getattr(kd, name)(oracle, x, sigmas, disable=True, **extra, **kw)
        return run
    return {
        "kd euler": make("sample_euler", False), "kd heun": make("sample_heun", False),
        "kd dpm_2": make("sample_dpm_2", False), "kd lms": make("sample_lms", False),
        "kd dpmpp_2m": make("sample_dpmpp_2m", False), "kd euler_ancestral": make("sample_euler_ancestral", True),
        "kd dpmpp_2s_ancestral": make("sample_dpmpp_2s_ancestral", True),
        "kd dpmpp_2m_sde": make("sample_dpmpp_2m_sde", True), "kd dpmpp_3m_sde": make("sample_dpmpp_3m_sde", True),
    }


def diffusers_rows() -> dict[str, Runner]:
    """diffusers' schedulers, run by their own loop on the oracle, on a training table whose Karras grid is
    localscore's (``alphas_cumprod = 1 / (1 + sigma_t**2)``, ``sigma_t`` log-uniform from 0.002 to 80)."""
    try:
        import diffusers
    except ImportError:
        return {}
    table = torch.exp(torch.linspace(math.log(0.002), math.log(80.0), 1000, dtype=F64))
    ac = 1 / (1 + table**2)
    betas = (1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])).tolist()

    def make(cls: Any, **kw: Any) -> Runner:
        def run(oracle: Any, x: torch.Tensor, sigmas: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            sched = cls(num_train_timesteps=1000, trained_betas=betas, use_karras_sigmas=True, **kw)
            sched.set_timesteps(len(sigmas) - 1)
            grid = sched.sigmas.double()
            lat = x / float(grid[0]) * sched.init_noise_sigma         # the same standard normal draws
            for i, t in enumerate(sched.timesteps):
                s = grid[i]
                xv = sched.scale_model_input(lat, t) * torch.sqrt(1 + s**2)
                eps = (xv - oracle(xv, s.expand(x.shape[0]))) / s
                lat = sched.step(eps, t, lat, return_dict=False)[0]
            return lat * torch.sqrt(1 + grid[-1] ** 2)
        return run

    return {"df DPMSolverMultistep": make(diffusers.DPMSolverMultistepScheduler),
            "df UniPCMultistep": make(diffusers.UniPCMultistepScheduler),
            "df DEISMultistep": make(diffusers.DEISMultistepScheduler),
            "df LMSDiscrete": make(diffusers.LMSDiscreteScheduler),
            "df EulerDiscrete": make(diffusers.EulerDiscreteScheduler)}


Runner = Callable[[Any, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def start_samples(oracle: GaussianMixture, start: str, n: int, sigma_max: float, g: torch.Generator) -> torch.Tensor:
    """The sampler's starting point at ``sigma_max``: ``prior`` is ``sigma_max * z``, ``z ~ N(0, I)`` (what users
    run; it ignores the data's mean and covariance), ``exact`` is ``n`` exact samples of ``p_sigma_max`` (data
    plus ``sigma_max`` times Gaussian noise, from the oracle), so that every error left is the discretisation's."""
    if start == "exact":
        return oracle.sample(n, sigma=sigma_max, generator=g, dtype=F64)
    return sigma_max * torch.randn(n, *oracle.shape, generator=g, dtype=F64)


START_TEXT = {"prior": "x = 80 z, z ~ N(0, I) (what users run)",
              "exact": "x ~ p_80 exactly (oracle samples: the table measures the discretisation error alone)"}


def _run_localscore(name: str, oracle: GaussianMixture, start: str, budget: int, n: int,
                    seed: int) -> tuple[torch.Tensor, int]:
    fn, kwargs, steps_for, nfe_of = SAMPLERS[name]
    steps = max(1, steps_for(budget))
    g = torch.Generator().manual_seed(seed)
    sigmas = karras_sigmas(steps, 0.002, 80.0, dtype=F64)
    x = start_samples(oracle, start, n, float(sigmas[0]), g)
    return fn(oracle, x, sigmas, generator=g, **kwargs), nfe_of(steps)


def noise_floor(oracle: GaussianMixture, cov: torch.Tensor, exact: torch.Tensor, n: int, cov_sets: int,
                ed_sets: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What exact samples score: the covariance error of ``cov_sets`` independent sets of ``n`` exact samples,
    and the energy distance of ``ed_sets`` of them to the reference set ``exact`` (the one every sampler is
    compared to). A sampler whose samples were exact would score a draw from these distributions."""
    sets = [oracle.sample(n, generator=torch.Generator().manual_seed(seed + 2000 + k), dtype=F64)
            for k in range(max(cov_sets, ed_sets))]
    ref_self = _self_term(exact)
    ed = torch.tensor([energy_distance(f, exact, b_self=ref_self) for f in sets[:ed_sets]])
    ce = torch.tensor([cov_error(f, cov) for f in sets[:cov_sets]])
    return ed, ce


def quality_table(budgets: list[int], n: int, seed: int, peers: bool = True, start: str = "prior",
                  replicates: int = 16, cov_sets: int = 64, ed_sets: int = 16) -> dict[str, Any]:
    """Print tables 1a / 1b for one start and the best localscore sampler per budget, re-run with fresh seeds.

    Returns ``{"rows": {name: [(energy distance, cov. error, NFE), ...]}, "floor_cov": tensor, "floor_ed": tensor,
    "best": [(budget, name, table value, replicate values tensor), ...]}``.
    """
    oracle = make_mixture()
    _, cov = oracle.moments()
    exact = oracle.sample(n, generator=torch.Generator().manual_seed(seed + 1000), dtype=F64)
    ref_self = _self_term(exact)
    ed_floor, cov_floor = noise_floor(oracle, cov, exact, n, cov_sets, ed_sets, seed)
    results: dict[str, list[tuple[float, float, int]]] = {}
    for name in SAMPLERS:
        results[name] = []
        for budget in budgets:
            out, nfe = _run_localscore(name, oracle, start, budget, n, seed)
            results[name].append((energy_distance(out, exact, b_self=ref_self), cov_error(out, cov), nfe))
    kd = load_k_diffusion_sampling() if peers else None
    peer_rows: dict[str, Runner] = {}
    if kd is not None:
        peer_rows.update(k_diffusion_rows(kd))
    if peers:
        peer_rows.update(diffusers_rows())
    two_calls = ("kd heun", "kd dpm_2", "kd dpmpp_2s_ancestral")
    for name, runner in peer_rows.items():
        results[name] = []
        for budget in budgets:
            steps = (budget + 1) // 2 if name in two_calls else budget
            g = torch.Generator().manual_seed(seed)
            sigmas = karras_sigmas(steps, 0.002, 80.0, dtype=F64)
            x = start_samples(oracle, start, n, float(sigmas[0]), g)
            with torch.no_grad():
                out = runner(oracle, x, sigmas, g)
            results[name].append((energy_distance(out, exact, b_self=ref_self), cov_error(out, cov),
                                  2 * steps - 1 if name in two_calls else steps))
    header = f"   {'sampler':<24}" + "".join(f"{'NFE~' + str(b):>11}" for b in budgets)
    print(f"\n1. Sample quality against denoiser evaluations, START: {start.upper()}, {START_TEXT[start]}.\n"
          f"   Exact Gaussian-mixture denoiser, 5 components, D = 16, {n} samples; Karras grid sigma 80 -> 0.002 -> 0 "
          f"(rho 7); two-call samplers use 2N - 1 evaluations; 'kd' = k-diffusion "
          f"{'(loaded)' if kd is not None else '(not available)'}, 'df' = diffusers "
          f"{'(loaded)' if 'df EulerDiscrete' in peer_rows else '(not available)'}; one seed per cell.")
    for k, (title, floor) in enumerate([
            (f"1a. Unbiased energy distance to exact samples, x 1000  (floor: {ed_sets} exact sets vs the same "
             f"reference", ed_floor * 1000),
            (f"1b. Relative Frobenius error of the sample covariance, in %  (floor: {cov_sets} exact sets",
             cov_floor * 100)]):
        scale = 1000.0 if k == 0 else 100.0
        print(f"\n   {title}: mean {floor.mean():.2f}, sd {floor.std():.2f}, "
              f"5-95 % {floor.quantile(0.05):.2f} .. {floor.quantile(0.95):.2f})\n")
        print(header)
        print("   " + "-" * (len(header) - 3))
        for name, cells in results.items():
            print(f"   {name:<24}" + "".join(f"{c[k] * scale:>11.2f}" for c in cells))
    print("   (lower is better; a cell is one draw: within the floor's 5-95 % band it is at the noise floor)")

    # the best localscore sampler per budget, by covariance error; the minimum over many rows of one draw each
    # is biased low, so it is re-run with fresh seeds (independent starts and noise) and judged on their mean.
    # The best deterministic (ODE) sampler too: with the prior start its error stops falling with NFE.
    f_mean, f_sd = float(cov_floor.mean()), float(cov_floor.std())
    f_se = f_sd / math.sqrt(len(cov_floor))
    best: list[tuple[int, str, float, torch.Tensor]] = []
    rerun: dict[tuple[str, int], torch.Tensor] = {}

    def ratio_of(reps: torch.Tensor) -> tuple[float, float, float, float]:
        r_mean = float(reps.mean())
        r_se = float(reps.std()) / math.sqrt(len(reps)) if len(reps) > 1 else float("nan")
        ratio = r_mean / f_mean
        return r_mean, r_se, ratio, ratio * math.sqrt((r_se / r_mean) ** 2 + (f_se / f_mean) ** 2)

    print(f"\n   Best localscore sampler per budget, by covariance error (start {start}); floor {100 * f_mean:.2f} "
          f"+- {100 * f_se:.2f} % (mean +- its standard error; sd of one set {100 * f_sd:.2f} %). "
          f"'re-run': the same sampler with {replicates} fresh seeds, mean +- standard error.\n")
    print(f"   {'':<15}{'NFE':<6}{'sampler':<20}{'table %':>9}{'ratio':>8}{'re-run %':>16}{'ratio':>16}")
    print("   " + "-" * 90)
    for kind, pool in (("any", list(SAMPLERS)), ("deterministic", DETERMINISTIC)):
        for j, budget in enumerate(budgets):
            name = min(pool, key=lambda r: results[r][j][1])
            if (name, budget) not in rerun:
                rerun[name, budget] = torch.tensor([
                    cov_error(_run_localscore(name, oracle, start, budget, n, seed + 100 * (r + 1))[0], cov)
                    for r in range(replicates)])
            reps = rerun[name, budget]
            if kind == "any":
                best.append((budget, name, results[name][j][1], reps))
            r_mean, r_se, ratio, ratio_se = ratio_of(reps)
            print(f"   {kind:<15}{results[name][j][2]:<6}{name:<20}{100 * results[name][j][1]:>9.2f}"
                  f"{results[name][j][1] / f_mean:>7.2f}x{100 * r_mean:>9.2f} +- {100 * r_se:.2f}"
                  f"{ratio:>9.2f}x +- {ratio_se:.2f}")
    if 20 in budgets:
        _, name, _, reps = best[budgets.index(20)]
        _, _, ratio, ratio_se = ratio_of(reps)
        close = " (borderline: within 2 standard errors of 1.5x)" if abs(ratio - 1.5) < 2 * ratio_se else ""
        print(f"\n   GOAL (NFE 20, best sampler's covariance error <= 1.5x the floor), start {start}: "
              f"{'MET' if ratio <= 1.5 else 'NOT MET'} ({name}, {ratio:.2f}x +- {ratio_se:.2f}, mean of "
              f"{replicates} re-runs){close}")
    return {"rows": results, "floor_cov": cov_floor, "floor_ed": ed_floor, "best": best}


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
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute on 2 cores)")
    parser.add_argument("--full", action="store_true", help="the documented sizes (the default)")
    parser.add_argument("--start", choices=["prior", "exact", "both"], default="both",
                        help="the starting point at sigma 80: 'prior' = 80 * randn (what users run), 'exact' = "
                             "exact samples of p_80 (discretisation error alone), 'both' (default): one table each")
    parser.add_argument("--n", type=int, default=None, help="samples per set (default 4000, --quick 1000)")
    parser.add_argument("--budgets", type=str, default="10,20,50", help="NFE budgets, comma separated")
    parser.add_argument("--replicates", type=int, default=None,
                        help="fresh-seed re-runs of the best sampler per budget (default 16, --quick 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peers", action="store_true", help="skip k-diffusion and diffusers")
    parser.add_argument("--no-overhead", action="store_true", help="skip the per-step overhead table")
    args = parser.parse_args(argv)
    if args.quick and args.full:
        parser.error("--quick and --full exclude each other")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(f"CPU: {cpu_name()}; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}; torch {torch.__version__}; {torch.get_num_threads()} thread(s)")
    n = args.n or (1000 if args.quick else 4000)
    replicates = args.replicates or (4 if args.quick else 16)
    cov_sets, ed_sets = (32, 4) if args.quick else (64, 16)
    budgets = [int(b) for b in args.budgets.split(",")]
    starts = ["prior", "exact"] if args.start == "both" else [args.start]
    goals = {}
    for start in starts:
        res = quality_table(budgets, n=n, seed=args.seed, peers=not args.no_peers, start=start,
                            replicates=replicates, cov_sets=cov_sets, ed_sets=ed_sets)
        if 20 in budgets:
            _, name, _, reps = res["best"][budgets.index(20)]
            ratio = float(reps.mean() / res["floor_cov"].mean())
            se = ratio * math.sqrt(float(reps.var() / reps.mean() ** 2) / len(reps)
                                   + float(res["floor_cov"].var() / res["floor_cov"].mean() ** 2)
                                   / len(res["floor_cov"]))
            goals[start] = (name, ratio, se)
    if goals:
        print("\n   Summary, goal 'at NFE 20 the best sampler's covariance error <= 1.5x the floor' "
              f"({n} samples per set):")
        for start, (name, ratio, se) in goals.items():
            print(f"     start {start:<6} {'MET    ' if ratio <= 1.5 else 'NOT MET'} {name} {ratio:.2f}x +- {se:.2f}"
                  f"{'  (borderline)' if abs(ratio - 1.5) < 2 * se else ''}")
    if not args.no_overhead:
        if args.quick:
            overhead_table(batch=8, size=32, steps=20, repeats=3)
        else:
            overhead_table(batch=16, size=32, steps=50, repeats=5)
    print(f"\nTotal run time {time.perf_counter() - t0:.0f} s; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
