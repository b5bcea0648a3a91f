"""Benchmark: dense versus graph-coloured Jacobians of local networks (wall time, peak memory, agreement).

For each image size (16, 32, 64 pixels, 3 channels) and receptive radius R (2, 4, 8) the reference
network ``LocalConvDenoiser(3, R)`` (R 3x3 convolutions, so its receptive radius is exactly R) is
differentiated at one image by ``jacobian(method="dense")`` (one VJP per output entry) and by
``jacobian(method="colored", radius=R)`` (one JVP per colour, (2R + 1)^2 C of them, plus 4 verification
probes; and ``mode="reverse"``, one VJP per output colour). Every measurement runs in a fresh subprocess
so peak memory is the process's own
(``ru_maxrss`` above its baseline; ``torch.cuda.max_memory_allocated`` on a GPU). Agreement: the dense
Jacobian's (2R + 1)^2 band is compared with both coloured ones (``rel. diff`` = max |difference| / max |J|),
and the dense entries outside the band must be exactly zero (``outside``).

Usage::

    python benchmarks/jacobian.py             # 16, 32, 64 px x R = 2, 4, 8
    python benchmarks/jacobian.py --quick     # 16, 32 px x R = 2, 4
    python benchmarks/jacobian.py --sizes 64 --radii 4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def worker(method: str, size: int, radius: int, hidden: int, threads: int, device: str, out: str) -> None:
    import resource

    import torch

    from localscore.metrics import BandedJacobian, jacobian
    from localscore.testing import LocalConvDenoiser

    torch.set_num_threads(threads)
    dev = torch.device(device)
    net = LocalConvDenoiser(3, radius, hidden=hidden, seed=radius).to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    sigma = torch.full((1,), 0.5, device=dev)
    fn = lambda z: net(z, sigma)  # noqa: E731
    fn(x)  # warm-up: the forward pass, and the method once on a small image (first-call costs of torch.func)
    small = x[..., :8, :8].contiguous()
    if method == "dense":
        jacobian(fn, small)
    else:
        mode = "reverse" if method == "colored-reverse" else "forward"
        jacobian(fn, small, method="colored", radius=radius, mode=mode)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if method == "dense":
        J = jacobian(fn, x)  # default 2 GiB budget: the Jacobian plus chunks of VJPs
    else:
        mode = "reverse" if method == "colored-reverse" else "forward"
        J = jacobian(fn, x, method="colored", radius=radius, mode=mode, generator=torch.Generator().manual_seed(1))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    if method == "dense":
        band = BandedJacobian.from_dense(J, radius)
        outside = float((J - band.to_dense()).abs().max())
        values = band.values
        scale = float(J.abs().max())
    else:
        outside = 0.0
        values = J.values
        scale = float(values.abs().max())
    torch.save(values.detach().cpu(), out)
    print(json.dumps({"seconds": elapsed, "peak_bytes": peak, "outside_band_max": outside, "max_abs": scale}))


def run_one(method: str, size: int, radius: int, args: argparse.Namespace, out: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", method, str(size), str(radius), "--hidden", str(args.hidden),
           "--threads", str(args.threads), "--device", args.device, "--out", out]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker {method} {size} R={radius} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sizes 16, 32 and radii 2, 4 only")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--radii", type=int, nargs="*", default=None)
    ap.add_argument("--hidden", type=int, default=8, help="hidden channels of the conv stack")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--worker", nargs=3, metavar=("METHOD", "SIZE", "RADIUS"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        method, size, radius = args.worker[0], int(args.worker[1]), int(args.worker[2])
        worker(method, size, radius, args.hidden, args.threads, args.device, args.out)
        return
    sizes = args.sizes or ([16, 32] if args.quick else [16, 32, 64])
    radii = args.radii or ([2, 4] if args.quick else [2, 4, 8])
    import torch

    print(f"device {args.device}, {args.threads} threads, LocalConvDenoiser(3, R, hidden={args.hidden}), float32")
    header = (f"{'size':>5} {'R':>3} {'dense s':>9} {'colored s':>9} {'speed-up':>9} {'rev. s':>7} {'speed-up':>9} "
              f"{'dense MiB':>10} {'colored MiB':>11} {'mem ratio':>9} {'max|J|':>8} {'rel. diff':>10} {'outside':>8}")
    print(header)
    print("-" * len(header))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            for R in radii:
                fd, fc, fr = (os.path.join(tmp, f) for f in ("d.pt", "c.pt", "r.pt"))
                d = run_one("dense", size, R, args, fd)
                c = run_one("colored", size, R, args, fc)
                r = run_one("colored-reverse", size, R, args, fr)
                dense_band = torch.load(fd)
                diff = max(float((dense_band - torch.load(fc)).abs().max()),
                           float((dense_band - torch.load(fr)).abs().max())) / max(d["max_abs"], 1e-300)
                md, mc = d["peak_bytes"] / 2**20, c["peak_bytes"] / 2**20
                row = dict(size=size, R=R, dense_s=d["seconds"], colored_s=c["seconds"],
                           speedup=d["seconds"] / c["seconds"], reverse_s=r["seconds"],
                           reverse_speedup=d["seconds"] / r["seconds"], dense_mib=md, colored_mib=mc,
                           mem_ratio=md / mc if mc > 0 else float("nan"), max_abs=d["max_abs"], rel_diff=diff,
                           outside=d["outside_band_max"])
                rows.append(row)
                print(f"{size:>5} {R:>3} {d['seconds']:>9.3f} {c['seconds']:>9.3f} {row['speedup']:>8.1f}x "
                      f"{r['seconds']:>7.3f} {row['reverse_speedup']:>8.1f}x {md:>10.1f} {mc:>11.1f} "
                      f"{row['mem_ratio']:>8.1f}x {d['max_abs']:>8.2e} {diff:>10.2e} {row['outside']:>8.1e}",
                      flush=True)
    print(json.dumps(rows))


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


if __name__ == "__main__":
    main()
