"""The ``localscore`` command.

``localscore demo [--out DIR]``: length generalization in closed form. The exact single-object
denoisers of a :class:`~localscore.oracles.FactorizedObjects` family (conditional projective composition
holds exactly) are composed projectively into images with up to 10 objects, sampled with Euler and
with Heun, and compared with exact samples of the true joint distribution: per-pixel mean and
standard deviation errors, next to the sampling-noise floor (the same statistics between two
independent sets of exact samples). Writes ``DIR/demo.json`` and, with matplotlib, ``DIR/demo.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._errors import LocalScoreError
from .conditions import Conditions

__all__ = ["main"]


# ----------------------------------------------------------------------------- helpers
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _grid_layout(n: int, size: int, spacing: float) -> list[tuple[float, float]]:
    """``n`` positions on a square grid of the given spacing, centred in a ``size x size`` image."""
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    r0 = (size - 1 - (rows - 1) * spacing) / 2
    c0 = (size - 1 - (cols - 1) * spacing) / 2
    return [(r0 + (k // cols) * spacing, c0 + (k % cols) * spacing) for k in range(n)]


def _moment_errors(samples: Tensor, reference: Tensor, mean: Tensor) -> dict[str, float]:
    """Mean absolute error of the per-pixel mean (vs the exact mean) and std (vs reference samples)."""
    return {
        "mean_error": float((samples.mean(0) - mean).abs().mean()),
        "std_error": float((samples.std(0) - reference.std(0)).abs().mean()),
    }


# ----------------------------------------------------------------------------- demo
def _demo(args: argparse.Namespace) -> int:
    import importlib

    from . import sampling
    from .denoisers import bind
    from .oracles import FactorizedObjects
    from .schedules import karras_sigmas

    compose_mod: Any
    try:
        compose_mod = importlib.import_module("localscore.compose")
    except ImportError:  # pragma: no cover - compose ships with the package
        compose_mod = None

    size = 16 if args.quick else 24
    counts = [1, 2, 4] if args.quick else [1, 2, 4, 6, 8, 10]
    n_samples = args.samples or (64 if args.quick else 256)
    steps = args.steps or (24 if args.quick else 48)
    radius, spacing = 2.0, 6.0
    oracle = FactorizedObjects(3, size, size, object_radius=radius, object_mean=[0.9, 0.3, -0.4],
                               object_std=0.25, length_scale=1.5, background_std=0.15)
    sigmas = karras_sigmas(steps, 0.002, 80.0, dtype=torch.float64)
    samplers: dict[str, Callable[..., Tensor]] = {"euler": sampling.sample_euler, "heun": sampling.sample_heun}
    gen = torch.Generator().manual_seed(args.seed)

    rows: list[dict[str, Any]] = []
    grids: list[Tensor] = []
    print(f"localscore demo: FactorizedObjects {size}x{size} RGB, objects of radius {radius} px; "
          f"{n_samples} samples per count, {steps}-step Karras grid.")
    how = "projective composition of single-object denoisers" if compose_mod else "exact joint denoiser"
    print(f"Sampled model: the {how}; reference: exact samples of the joint.\n")
    header = f"{'objects':>7} {'sampler':>7} {'NFE':>5} {'mean err':>9} {'std err':>8} {'floor':>7} {'s':>6}"
    print(header)
    print("-" * len(header))
    t_all = time.perf_counter()
    for n in counts:
        layout = _grid_layout(n, size, spacing)
        cond = Conditions.from_lists([layout] * n_samples, dtype=torch.float64)
        if compose_mod is not None:
            model: Any = compose_mod.projective_from(oracle, cond)
        else:  # pragma: no cover
            model = bind(oracle, cond)
        exact_mean = oracle.mean(cond[0])[0]
        reference = oracle.sample(cond, generator=gen)
        reference2 = oracle.sample(cond, generator=gen)
        floor = _moment_errors(reference2, reference, exact_mean)
        for name, fn in samplers.items():
            nfe = [0]

            def counted(x: Tensor, sigma: Tensor, c: Conditions | None = None, _m: Any = model,
                        _nfe: list[int] = nfe) -> Tensor:
                _nfe[0] += 1
                return _m(x, sigma, c)

            x0 = torch.randn(n_samples, 3, size, size, generator=gen, dtype=torch.float64) * sigmas[0]
            t0 = time.perf_counter()
            out = fn(counted, x0, sigmas, generator=gen, progress=args.progress)
            dt = time.perf_counter() - t0
            err = _moment_errors(out, reference, exact_mean)
            rows.append({"objects": n, "sampler": name, "nfe": nfe[0], **err,
                         "floor_mean_error": floor["mean_error"], "floor_std_error": floor["std_error"],
                         "seconds": round(dt, 3)})
            print(f"{n:>7} {name:>7} {nfe[0]:>5} {err['mean_error']:>9.4f} {err['std_error']:>8.4f} "
                  f"{floor['std_error']:>7.4f} {dt:>6.1f}")
            if name == "heun":
                grids.append(out[:4])
    total = time.perf_counter() - t_all
    worst = max(r["std_error"] / max(r["floor_std_error"], 1e-12) for r in rows)
    print("\nfloor = the same std error between two independent exact sample sets (pure sampling noise).")
    print(f"Worst std error / floor: {worst:.2f} (about 1-2 means indistinguishable from exact). "
          f"Total {total:.1f} s.")
    out_dir = Path(args.out)
    payload = {"oracle": {"size": size, "object_radius": radius, "channels": 3},
               "samples_per_count": n_samples, "steps": steps, "seed": args.seed,
               "model": how, "rows": rows}
    _atomic_write_bytes(out_dir / "demo.json", json.dumps(payload, indent=2).encode())
    print(f"Wrote {out_dir / 'demo.json'}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipped demo.png (pip install 'localscore[plot]').")
        return 0
    lo = min(float(g.min()) for g in grids)
    hi = max(float(g.max()) for g in grids)
    fig, axes = plt.subplots(len(grids), 4, figsize=(6, 1.6 * len(grids)), squeeze=False)
    for i, (n, g) in enumerate(zip(counts, grids)):
        for j in range(4):
            t = g[j].permute(1, 2, 0).float()
            axes[i, j].imshow(((t - lo) / (hi - lo + 1e-8)).clamp(0, 1).numpy(), interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            for r, c in _grid_layout(n, size, spacing):
                axes[i, j].plot(c, r, "w+", ms=4)
        axes[i, 0].set_ylabel(f"{n} obj.")
    fig.suptitle("Heun samples of the composed score (+ requested positions)", fontsize=9)
    fig.tight_layout()
    png = out_dir / "demo.png"
    tmp = out_dir / ".demo.png.tmp"
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, png)
    print(f"Wrote {png}")
    return 0


# ----------------------------------------------------------------------------- entry point
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="localscore", description="Local conditional score models for diffusion.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("demo", help="compose exact per-object scores beyond the trained count and sample them",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--out", default="localscore-demo", help="output folder (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    d.add_argument("--samples", type=int, default=None, help="samples per object count")
    d.add_argument("--steps", type=int, default=None, help="sampler steps")
    d.add_argument("--quick", action="store_true", help="a small, fast run (CI)")
    d.add_argument("--progress", action="store_true", help="progress bars (needs tqdm)")
    d.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``localscore`` command line; returns the exit code.

    Example:
        >>> main(["--help"])  # doctest: +SKIP
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except LocalScoreError as e:
        print(f"localscore {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written half-way.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
