"""Throughput of the local network and the global U-Net baseline, side by side, on this machine's CPU.

Measures, in one run:

1. forward and forward+backward throughput (images/s) at 16, 32 and 64 pixels for
   ``LocalConditionalDenoiser`` and ``GlobalConditionalDenoiser`` at matched parameter counts (the local
   net's width is chosen to match the U-Net's parameter count), with 4 conditioners per image;
2. how the local network's forward cost grows with the number of conditioners K = 0..64 (32x32), for the
   matched-parameter attention network above and for the rendered-map network of the experiments
   (``LocalNetConfig(width=32, depth=3, norm="none", conditioning="render", cond_radius=6.0,
   relative_freqs=4)``), each with the conditioning path forced dense and chosen automatically (the default);
3. forward+backward (training) at K = 1..4 for both networks, dense against automatic.

With ``--before PATH`` (another checkout's ``localscore`` package directory, e.g. ``/work/main/localscore``)
parts 2 and 3 also time that version's networks, with the same weights and inputs, interleaved in the same
run, so "before" and "after" are measured side by side.

Usage::

    python benchmarks/networks.py            # full settings
    python benchmarks/networks.py --quick    # fewer repetitions and smaller batches
    python benchmarks/networks.py --only-k --before ../main/localscore   # parts 2-3 against another version
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from localscore import Conditions
from localscore.nn import GlobalConditionalDenoiser, LocalConditionalDenoiser, LocalNetConfig, UNetConfig


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def matched_local(target: int, **kw: object) -> LocalConditionalDenoiser:
    """The local net (default depth) whose width (a multiple of 4) gives the parameter count closest to target."""
    best, best_gap = None, None
    for width in range(8, 257, 4):
        D = LocalConditionalDenoiser(LocalNetConfig(width=width, **kw))  # type: ignore[arg-type]
        gap = abs(n_params(D) - target)
        if best_gap is None or gap < best_gap:
            best, best_gap = D, gap
        elif n_params(D) > target:
            break
    assert best is not None
    return best


def random_cond(batch: int, k: int, size: int, attr_dim: int, g: torch.Generator) -> Conditions:
    pos = torch.rand(batch, k, 2, generator=g) * (size - 1)
    attr = torch.rand(batch, k, attr_dim, generator=g)
    return Conditions(pos, attr)


def best_rates(fns: dict[str, Callable[[], object]], batch: int, reps: int) -> dict[str, float]:
    """Images/s of each function from its *fastest* of ``reps`` timed calls, calls interleaved.

    On a shared machine the minimum is the best estimate of the uncontended cost (as ``timeit`` advises),
    and interleaving exposes every function to the same bursts of contention.
    """
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: batch / t for name, t in best.items()}


def load_before(path: str) -> ModuleType:
    """Import another checkout's ``localscore`` package under the name ``localscore_before``."""
    init = Path(path) / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--before: {path} is not a package directory (no __init__.py)")
    spec = importlib.util.spec_from_file_location("localscore_before", init, submodule_search_locations=[str(path)])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["localscore_before"] = mod
    spec.loader.exec_module(mod)
    return mod


RENDER = {"width": 32, "depth": 3, "norm": "none", "conditioning": "render", "cond_radius": 6.0, "relative_freqs": 4}


def k_models(local: LocalConditionalDenoiser, before: ModuleType | None) -> dict[str, dict[str, Callable[..., object]]]:
    """For each network ("attention": the matched one; "render": the experiments'), its variants by name."""
    out: dict[str, dict[str, Callable[..., object]]] = {}
    for net, cfg in (("attention", local.config), ("render", LocalNetConfig(**RENDER))):  # type: ignore[arg-type]
        D = LocalConditionalDenoiser(cfg) if net == "render" else local
        variants: dict[str, Callable[..., object]] = {}
        if before is not None:
            old = before.nn.LocalConditionalDenoiser(before.nn.LocalNetConfig.from_dict(cfg.to_dict()))
            old.load_state_dict(D.state_dict())

            def run_old(x: torch.Tensor, s: torch.Tensor, c: Conditions, old: torch.nn.Module = old) -> object:
                return old(x, s, before.Conditions(c.pos, c.attr, c.valid))

            variants["before"] = run_old
        for mode in ("dense", "auto"):
            def run(x: torch.Tensor, s: torch.Tensor, c: Conditions, D: LocalConditionalDenoiser = D,
                    mode: str = mode) -> object:
                D.inner.sparse = mode  # type: ignore[assignment]
                return D(x, s, c)

            variants[mode] = run
        out[net] = variants
    return out


def part_k(local: LocalConditionalDenoiser, before: ModuleType | None, quick: bool, reps: int,
           g: torch.Generator) -> None:
    size, batch = 32, 8 if quick else 16
    x = torch.randn(batch, 3, size, size)
    sigma = torch.ones(batch)
    ks = (0, 1, 4, 16, 64)
    conds = {k: random_cond(batch, k, size, 13, g) for k in (*ks, 2)}
    models = k_models(local, before)
    print(f"2. local net forward cost vs number of conditioners K (32x32, batch {batch}): cost relative to K = 0 "
          "of the same column")
    print("   attention: the matched network above (width "
          f"{local.config.width}, disc radius {local.config.cond_radius}); render: LocalNetConfig({RENDER})")
    print("   dense: sparse='dense' forced; auto: the default rule (choose_sparse)"
          + ("; before: the --before version" if before is not None else ""))
    fns: dict[str, Callable[[], object]] = {}
    for net, variants in models.items():
        for name, run in variants.items():
            for k in ks:
                def fwd(run: Callable[..., object] = run, c: Conditions = conds[k]) -> None:
                    with torch.no_grad():
                        run(x, sigma, c)

                fns[f"{net}/{name}/{k}"] = fwd
    r = best_rates(fns, batch, reps)
    cols = [(net, name) for net, variants in models.items() for name in variants]
    print("   " + " " * 6 + " ".join(f"{net[:6] + ' ' + name:>16}" for net, name in cols))
    for k in ks:
        cells = []
        for net, name in cols:
            rate, base = r[f"{net}/{name}/{k}"], r[f"{net}/{name}/0"]
            cells.append(f"{rate:>7.1f} x{base / rate:<6.2f}")
        print(f"   K = {k:>2} " + " ".join(f"{c:>16}" for c in cells))
    print("   (images/s and cost x relative to K = 0; each rate the fastest of the interleaved repetitions)")
    print()
    print(f"3. forward+backward (training) at small K (32x32, batch {batch}): images/s")
    fns = {}
    for net, variants in models.items():
        for name, run in variants.items():
            for k in (1, 2, 4):
                def fb(run: Callable[..., object] = run, c: Conditions = conds[k]) -> None:
                    out = run(x, sigma, c)
                    assert isinstance(out, torch.Tensor)
                    out.square().mean().backward()

                fns[f"{net}/{name}/{k}"] = fb
    r = best_rates(fns, batch, reps)
    print("   " + " " * 6 + " ".join(f"{net[:6] + ' ' + name:>16}" for net, name in cols))
    for k in (1, 2, 4):
        print(f"   K = {k:>2} " + " ".join(f"{r[f'{net}/{name}/{k}']:>16.1f}" for net, name in cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and smaller batches")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--before", default=None, help="another checkout's localscore package directory to time "
                    "side by side in parts 2 and 3")
    ap.add_argument("--only-k", action="store_true", help="skip part 1 (the matched-parameter throughput)")
    args = ap.parse_args()
    before = load_before(args.before) if args.before else None
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    reps = 3 if args.quick else 7
    unet = GlobalConditionalDenoiser(UNetConfig())
    local = matched_local(n_params(unet))
    print(f"torch {torch.__version__}, {args.threads} threads, {'quick' if args.quick else 'full'} settings")
    print(f"global U-Net: {n_params(unet):,} parameters (config {UNetConfig().channel_mult}, base 24)")
    print(f"local net:    {n_params(local):,} parameters (width {local.config.width}, depth {local.config.depth}, "
          f"receptive radius {local.receptive_radius}, conditioner radius {local.conditioner_radius})")
    print()
    if not args.only_k:
        print("1. throughput at matched parameter counts, K = 4 conditioners per image (images/s, higher is better)")
        print(f"{'size':>5} {'batch':>5} | {'local fwd':>10} {'global fwd':>10} {'ratio':>6} | "
              f"{'local f+b':>10} {'global f+b':>10} {'ratio':>6}")
        for size in (16, 32, 64):
            batch = {16: 32, 32: 16, 64: 4}[size] // (2 if args.quick else 1)
            x = torch.randn(batch, 3, size, size)
            sigma = torch.rand(batch) * 2 + 0.1
            cond = random_cond(batch, 4, size, 13, g)
            fns: dict[str, Callable[[], object]] = {}
            for name, D in (("local", local), ("global", unet)):
                def fwd(D: torch.nn.Module = D, x: torch.Tensor = x, s: torch.Tensor = sigma,
                        c: Conditions = cond) -> None:
                    with torch.no_grad():
                        D(x, s, c)

                def fwd_bwd(D: torch.nn.Module = D, x: torch.Tensor = x, s: torch.Tensor = sigma,
                            c: Conditions = cond) -> None:
                    D.zero_grad(set_to_none=True)
                    D(x, s, c).square().mean().backward()

                fns[f"{name} fwd"] = fwd
                fns[f"{name} f+b"] = fwd_bwd
            r = best_rates(fns, batch, reps)
            lf, gf, lb, gb = r["local fwd"], r["global fwd"], r["local f+b"], r["global f+b"]
            print(f"{size:>5} {batch:>5} | {lf:>10.1f} {gf:>10.1f} {lf / gf:>6.2f} | "
                  f"{lb:>10.1f} {gb:>10.1f} {lb / gb:>6.2f}")
        print("   ratio = local / global throughput; each rate from the fastest of the interleaved repetitions")
        print()
    part_k(local, before, args.quick, reps, g)


if __name__ == "__main__":
    main()
