"""Cost of a composed evaluation, per strategy, as a ratio to one plain forward pass.

For K = 1, 2, 4, 8, 16 objects on 64x64 images and a small local conditional conv denoiser (receptive
radius R, conditioner radius r, both declared), times one evaluation of ``projective_from(D, cond)`` with
the ``sequential``, ``batched`` and ``crop`` strategies and divides by the time of one plain full-image
forward pass ``D(x, sigma, cond)``, all measured side by side in this run: the strategies are interleaved
and each time is the best of the repeats, in CPU time of the (single) compute thread, so other load on a
shared CPU does not inflate it (``--wall`` for wall-clock; the last column is crop by wall-clock).
Also prints the fraction of the image the crops cover and the largest difference between the strategies'
outputs.

Target (issue 3): crop at K = 8 costs at most 2x one forward pass when the crops cover under a quarter of
the image; sequential costs about K + 1 = 9x.

Run: ``python benchmarks/compose.py [--quick] [--threads 1] [--batch 1]``.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from torch import Tensor, nn

from localscore import Conditions
from localscore.compose import projective_from
from localscore.masks import box_masks


class SmallLocalDenoiser(nn.Module):
    """Conditioning map (objects paint a box of half-size ``paint``) + ``layers`` 3x3 convs.

    Receptive radius ``layers``; conditioner radius ``paint + layers`` (Chebyshev).
    """

    def __init__(self, channels: int = 3, hidden: int = 64, layers: int = 2, paint: int = 1) -> None:
        super().__init__()
        dims = [channels + 2] + [hidden] * (layers - 1) + [channels]
        self.convs = nn.ModuleList(nn.Conv2d(dims[i], dims[i + 1], 3, padding=1) for i in range(layers))
        self.paint = paint
        self.receptive_radius = layers
        self.conditioner_radius = paint + layers

    def forward(self, x: Tensor, sigma: Tensor, cond: Conditions | None = None) -> Tensor:
        B, _, H, W = x.shape
        s = sigma.view(B, 1, 1, 1)
        if cond is None or cond.num_slots == 0:
            cmap = x.new_zeros(B, 1, H, W)
        else:
            cmap = box_masks(cond, (H, W), float(self.paint)).to(x.dtype).sum(1, keepdim=True)
        h = torch.cat([x / torch.sqrt(s**2 + 1), cmap, (torch.log(s) / 4).expand(B, 1, H, W)], 1)
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = torch.nn.functional.silu(h)
        return x / (s**2 + 1) + s / torch.sqrt(s**2 + 1) * h


def spread_positions(k: int, size: int, seed: int) -> list[tuple[float, float]]:
    """``k`` positions on a jittered grid, so supports rarely overlap."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    while n * n < k:
        n += 1
    cell = size / n
    cells = torch.randperm(n * n, generator=g)[:k].tolist()
    out = []
    for c in cells:
        r, q = divmod(c, n)
        jitter = (torch.rand(2, generator=g) - 0.5) * cell * 0.4
        out.append(((r + 0.5) * cell + float(jitter[0]), (q + 0.5) * cell + float(jitter[1])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1, help="images per evaluation")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--paint", type=int, default=1)
    ap.add_argument("--wall", action="store_true", help="time wall-clock even with one thread")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # With one thread the work runs on this thread: its CPU time does not count waiting for a core on a
    # shared machine. With more threads, wall-clock time is the only fair measure.
    clock = time.thread_time if args.threads == 1 and not args.wall else time.perf_counter
    torch.manual_seed(0)
    reps = 5 if args.quick else 15
    B, S = args.batch, args.size
    D = SmallLocalDenoiser(hidden=args.hidden, layers=args.layers, paint=args.paint).eval()
    R, r = D.receptive_radius, D.conditioner_radius
    crop_side = 2 * (r + R) + 1
    print(f"torch {torch.__version__}, {args.threads} thread(s); B = {B}, {S}x{S}, hidden {args.hidden}, "
          f"R = {R}, r = {r}: crop {crop_side}x{crop_side} per object; best of {reps} interleaved repeats; "
          f"{'thread CPU' if clock is time.thread_time else 'wall-clock'} time (last column: crop by wall-clock)")
    print(f"{'K':>3} {'crop cover':>10} {'forward ms':>10} {'sequential':>10} {'batched':>9} {'crop':>7} "
          f"{'auto':>7} {'auto->':>7} {'max |diff|':>10} {'crop wall':>9}")
    x = torch.randn(B, 3, S, S)
    sigma = torch.full((B,), 0.8)
    with torch.inference_mode():
        for K in (1, 2, 4, 8, 16):
            cond = Conditions.from_lists([spread_positions(K, S, seed=b) for b in range(B)])
            comp = projective_from(D, cond)
            fns = {
                "forward": lambda c=cond: D(x, sigma, c),
                "sequential": lambda c=comp: c.evaluate(x, sigma, strategy="sequential"),
                "batched": lambda c=comp: c.evaluate(x, sigma, strategy="batched"),
                "crop": lambda c=comp: c.evaluate(x, sigma, strategy="crop"),
                "auto": lambda c=comp: c.evaluate(x, sigma, strategy="auto"),
            }
            for f in fns.values():  # warm-up
                f()
            times: dict[str, list[float]] = {k: [] for k in fns}
            walls: dict[str, list[float]] = {k: [] for k in fns}
            order = list(fns)
            rng = random.Random(K)
            for _ in range(reps):
                rng.shuffle(order)  # no strategy always runs after the same one (cache effects)
                for name in order:
                    f = fns[name]
                    t0, w0 = clock(), time.perf_counter()
                    f()
                    times[name].append(clock() - t0)
                    walls[name].append(time.perf_counter() - w0)
            med = {k: min(v) for k, v in times.items()}  # best of the repeats: robust to a contended CPU
            wall = {k: min(v) for k, v in walls.items()}
            seq = fns["sequential"]()
            diff = max(float((fns[k]() - seq).abs().max()) for k in ("batched", "crop"))
            cover = min(1.0, K * min(crop_side, S) ** 2 / (S * S))
            print(f"{K:>3} {cover:>10.2f} {med['forward'] * 1e3:>10.2f} {med['sequential'] / med['forward']:>9.2f}x "
                  f"{med['batched'] / med['forward']:>8.2f}x {med['crop'] / med['forward']:>6.2f}x "
                  f"{med['auto'] / med['forward']:>6.2f}x {comp.plan(x, sigma):>7} {diff:>10.1e} "
                  f"{wall['crop'] / wall['forward']:>8.2f}x")


if __name__ == "__main__":
    main()
