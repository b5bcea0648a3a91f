"""Object oracles: the block-structured exact denoiser against a dense Gaussian solve, side by side.

For each setting, the same exact posterior mean ``D(x) = x - sigma**2 (Sigma_J + sigma**2 I)^{-1} (x - mu_J)``
is computed twice in float64:

* ``oracle``: ``FactorizedObjects`` / ``OverlappingObjects.denoise`` (one small dense block per group of
  objects, a diagonal elsewhere, Woodbury for the shared offset);
* ``dense``: the full ``CHW x CHW`` covariance built from the model's definition and one batched Cholesky solve.

Prints the wall time of each, their ratio (dense / oracle) and the largest difference between the two.

Run:  python benchmarks/oracles_objects.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch

from localscore import Conditions
from localscore.oracles import FactorizedObjects, OverlappingObjects


def dense_cov(oracle, cond: Conditions, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``mu [B, D]``, ``Sigma [B, D, D]`` (order (c, h, w)) from the documented model, vectorised."""
    C = oracle.shape[0]
    H, W = size
    dt = torch.float64
    regions = oracle.regions(cond, size=size).flatten(2).to(dt)  # [B, K, HW]
    mu = oracle.mean(cond, size=size).reshape(cond.batch_size, -1)
    rows = torch.arange(H, dtype=dt).repeat_interleave(W)
    cols = torch.arange(W, dtype=dt).repeat(H)
    sq = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
    se = oracle.object_std**2 * torch.exp(-sq / (2 * oracle.length_scale**2))  # [HW, HW]
    count = torch.einsum("bkp,bkq->bpq", regions, regions)  # objects covering both pixels
    kpix = se * count  # [B, HW, HW]
    sigma = torch.einsum("bpq,cd->bcpdq", kpix, oracle.channel_corr).reshape(cond.batch_size, C * H * W, C * H * W)
    sigma = sigma + torch.diag_embed((oracle.background_std**2).repeat_interleave(H * W)).expand_as(sigma)
    if oracle.global_std > 0:
        same = torch.kron(torch.eye(C, dtype=dt), torch.ones(H * W, H * W, dtype=dt))
        sigma = sigma + oracle.global_std**2 * same
    return mu, sigma


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - t0) / repeats, out


def run(name: str, oracle, cond: Conditions, s: float, repeats: int) -> None:
    C, H, W = oracle.shape
    x = oracle.sample(cond, sigma=s, generator=torch.Generator().manual_seed(0))
    t_oracle, d_oracle = timed(lambda: oracle.denoise(x, s, cond), repeats)

    def dense() -> torch.Tensor:
        mu, sig = dense_cov(oracle, cond, (H, W))
        A = sig + s**2 * torch.eye(sig.shape[-1], dtype=torch.float64)
        L = torch.linalg.cholesky(A)
        xf = x.reshape(x.shape[0], -1)
        return (xf - s**2 * torch.cholesky_solve((xf - mu)[..., None], L)[..., 0]).reshape(x.shape)

    t_dense, d_dense = timed(dense, repeats)
    diff = float((d_oracle - d_dense).abs().max())
    print(f"{name:<42} {cond.batch_size:>3} {C}x{H}x{W:<3} {t_oracle * 1e3:>10.1f} {t_dense * 1e3:>10.1f} "
          f"{t_dense / t_oracle:>8.1f}x {diff:>10.1e}")


def grid(n: int, size: int, spacing: float) -> list[tuple[float, float]]:
    per = int(size // spacing)
    return [(spacing * (k // per + 0.5), spacing * (k % per + 0.5)) for k in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches and one repeat")
    args = parser.parse_args()
    torch.manual_seed(0)
    repeats = 1 if args.quick else 3
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times in ms per call (float64)")
    print(f"{'setting':<42} {'B':>3} {'C x H x W':<9} {'oracle':>10} {'dense':>10} {'ratio':>9} {'max diff':>10}")
    settings = [(16, 8 if args.quick else 16), (24, 2 if args.quick else 4)]
    for size, B in settings:
        fo = FactorizedObjects(3, size, size, object_radius=2.0, object_std=0.4, length_scale=1.5,
                               channel_corr=torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 1.0]]))
        cond = Conditions.from_lists([grid(4 + (b % 4), size, 5.0) for b in range(B)], dtype=torch.float64)
        run("FactorizedObjects, 4-7 disjoint objects", fo, cond, 0.5, repeats)
        oo = OverlappingObjects(3, size, size, object_radius=3.0, object_std=0.4, global_std=0.3)
        gen = torch.Generator().manual_seed(size)
        lists = [[(float(r), float(c)) for r, c in (torch.rand(6, 2, generator=gen) * (size - 1)).tolist()]
                 for _ in range(B)]
        run("OverlappingObjects, 6 random objects, tau>0", oo, Conditions.from_lists(lists, dtype=torch.float64),
            0.5, repeats)


if __name__ == "__main__":
    main()
