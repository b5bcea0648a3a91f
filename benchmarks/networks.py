"""Throughput of the local network and the global U-Net baseline, side by side, on this machine's CPU.

Measures, in one run:

1. forward and forward+backward throughput (images/s) at 16, 32 and 64 pixels for
   ``LocalConditionalDenoiser`` and ``GlobalConditionalDenoiser`` at matched parameter counts (the local
   net's width is chosen to match the U-Net's parameter count), with 4 conditioners per image;
2. how the local network's forward cost grows with the number of conditioners K = 0..64 (32x32).

Usage::

    python benchmarks/networks.py            # full settings
    python benchmarks/networks.py --quick    # fewer repetitions and smaller batches
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

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


CPU_RATES: list[float] = []


def rate(fn: Callable[[], object], batch: int, reps: int) -> float:
    """Images per wall-clock second; images per process-CPU-second is appended to CPU_RATES."""
    fn()  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    CPU_RATES.append(batch * reps / (time.process_time() - c0))
    return batch * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and smaller batches")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    reps = 2 if args.quick else 5
    unet = GlobalConditionalDenoiser(UNetConfig())
    local = matched_local(n_params(unet))
    print(f"torch {torch.__version__}, {args.threads} threads, {'quick' if args.quick else 'full'} settings")
    print(f"global U-Net: {n_params(unet):,} parameters (config {UNetConfig().channel_mult}, base 24)")
    print(f"local net:    {n_params(local):,} parameters (width {local.config.width}, depth {local.config.depth}, "
          f"receptive radius {local.receptive_radius}, conditioner radius {local.conditioner_radius})")
    print()
    print("1. throughput at matched parameter counts, K = 4 conditioners per image (images/s, higher is better)")
    print(f"{'size':>5} {'batch':>5} | {'local fwd':>10} {'global fwd':>10} {'ratio':>6} | "
          f"{'local f+b':>10} {'global f+b':>10} {'ratio':>6}")
    for size in (16, 32, 64):
        batch = {16: 32, 32: 16, 64: 4}[size] // (2 if args.quick else 1)
        x = torch.randn(batch, 3, size, size)
        sigma = torch.rand(batch) * 2 + 0.1
        cond = random_cond(batch, 4, size, 13, g)
        res = {}
        for name, D in (("local", local), ("global", unet)):
            def fwd(D: torch.nn.Module = D, x: torch.Tensor = x, s: torch.Tensor = sigma, c: Conditions = cond) -> None:
                with torch.no_grad():
                    D(x, s, c)

            def fwd_bwd(D: torch.nn.Module = D, x: torch.Tensor = x, s: torch.Tensor = sigma,
                        c: Conditions = cond) -> None:
                D.zero_grad(set_to_none=True)
                D(x, s, c).square().mean().backward()

            res[name] = (rate(fwd, batch, reps), rate(fwd_bwd, batch, reps))
        lf, lb = res["local"]
        gf, gb = res["global"]
        clf, clb, cgf, cgb = CPU_RATES[-4:]
        print(f"{size:>5} {batch:>5} | {lf:>10.1f} {gf:>10.1f} {lf / gf:>6.2f} | "
              f"{lb:>10.1f} {gb:>10.1f} {lb / gb:>6.2f}   (per CPU-second: fwd ratio {clf / cgf:.2f}, "
              f"f+b ratio {clb / cgb:.2f})")
    print("   ratio = local / global throughput (wall clock; the CPU-second ratios are robust to a busy machine)")
    print()
    print("2. local net forward cost vs number of conditioners K (32x32, images/s, relative to K = 0)")
    size, batch = 32, 8 if args.quick else 16
    x = torch.randn(batch, 3, size, size)
    sigma = torch.ones(batch)
    base: tuple[float, float] | None = None
    for k in (0, 1, 4, 16, 64):
        cond = random_cond(batch, k, size, 13, g)

        def fwd_k(cond: Conditions = cond) -> None:
            with torch.no_grad():
                local(x, sigma, cond)

        r = rate(fwd_k, batch, reps)
        rc = CPU_RATES[-1]
        base = base or (r, rc)
        print(f"   K = {k:>2}: {r:>8.1f} images/s   cost x{base[0] / r:.2f} (wall), x{base[1] / rc:.2f} (CPU time)")


if __name__ == "__main__":
    main()
