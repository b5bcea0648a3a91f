"""Tutorial: train a local conditional denoiser on *your own* renderer and draw more objects than it saw.

    python examples/tutorial_own_renderer.py --quick --out out/tutorial

The renderer here stands for yours: soft "plus" signs of two colours at continuous positions on a dark
background, 16x16 (24x24 without --quick). Conditioners are the positions and a one-hot colour. The
steps (see docs/tutorial.md):

1. a resumable batch source around the renderer (``__next__``, ``state_dict``, ``load_state_dict``);
2. a :class:`~localscore.nn.LocalConditionalDenoiser` sized to the objects (its declared receptive and
   conditioner radii);
3. :func:`localscore.train.train` (EDM loss, EMA, atomic checkpoints; rerun to resume);
4. sampling 1..8 objects with Euler, jointly and as a projective composition of one-object passes;
5. a check that fits the renderer: one brightness peak per object, each next to a requested position and
   of the requested colour (your own detector goes here);
6. the model's conditional locality (:func:`localscore.metrics.conditional_locality`).

Writes ``samples.png`` (with matplotlib) and ``summary.json`` to ``--out``. Exits with status 1 if the
conditional locality index within the declared conditioner radius is not 1 (the network is local by
construction, trained or not) or if no composed single-object image is right.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from scipy import ndimage
from torch import Tensor

from localscore import Conditions
from localscore.compose import projective_from
from localscore.metrics import conditional_locality
from localscore.nn import LocalConditionalDenoiser, LocalNetConfig
from localscore.sampling import sample_euler
from localscore.schedules import karras_sigmas
from localscore.train import TrainConfig, train

COLOURS = torch.tensor([[1.0, 0.3, 0.1], [0.1, 0.6, 1.0]])   # the renderer's two colours (RGB in [0, 1])


def render(pos: Tensor, colour: Tensor, valid: Tensor, size: int) -> Tensor:
    """Your renderer: ``[B, K, 2]`` positions, ``[B, K]`` colour indices, ``[B, K]`` validity -> ``[B, 3, S, S]``.

    Each object is a soft plus sign: ``a(d) = exp(-min(|d_r|, |d_c|)^2 / 0.3) * exp(-max(|d_r|, |d_c|)^2 / 4)``.
    """
    r = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1)
    c = torch.arange(size, dtype=torch.float32).view(1, 1, 1, size)
    dr = (r - pos[..., 0, None, None]).abs()
    dc = (c - pos[..., 1, None, None]).abs()
    a = torch.exp(-torch.minimum(dr, dc) ** 2 / 0.3) * torch.exp(-torch.maximum(dr, dc) ** 2 / 4.0)
    a = a * valid[..., None, None]                                             # [B, K, S, S]
    rgb = COLOURS[colour]                                                      # [B, K, 3]
    img = 0.1 + torch.einsum("bkhw,bkc->bchw", a, rgb - 0.1)
    return img.clamp(0, 1)


def random_layouts(n: int, counts: list[int], size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
    """Positions at least 3.5 px apart and 2 px from the border, colours uniform; counts uniform from ``counts``."""
    K = max(counts)
    cnt = torch.tensor(counts)[torch.randint(len(counts), (n,), generator=generator)]
    pos = torch.zeros(n, K, 2)
    for b in range(n):
        placed: list[Tensor] = []
        tries = 0
        while len(placed) < int(cnt[b]):
            p = 2 + (size - 5) * torch.rand(2, generator=generator)
            tries += 1
            if all(float((p - q).norm()) >= 3.5 for q in placed):
                placed.append(p)
            elif tries > 200:            # jammed: start this image again
                placed, tries = [], 0
        if placed:
            pos[b, : len(placed)] = torch.stack(placed)
    valid = torch.arange(K).view(1, K) < cnt.view(n, 1)
    colour = torch.randint(2, (n, K), generator=generator)
    return pos, colour, valid


def conditions(pos: Tensor, colour: Tensor, valid: Tensor) -> Conditions:
    """Conditioners: positions and a one-hot colour (attribute length 2)."""
    return Conditions(pos, torch.nn.functional.one_hot(colour, 2).float(), valid)


class MyStream:
    """A resumable, seeded batch source: yields ``(x0 in [-1, 1], cond)`` forever."""

    def __init__(self, batch_size: int, size: int, seed: int) -> None:
        self.batch_size, self.size = batch_size, size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> MyStream:
        return self

    def __next__(self) -> tuple[Tensor, Conditions]:
        pos, colour, valid = random_layouts(self.batch_size, [1, 2, 3], self.size, self.generator)
        return render(pos, colour, valid, self.size) * 2 - 1, conditions(pos, colour, valid)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16x16, 250 steps (CI, about a minute on 2 cores)")
    p.add_argument("--out", default="out/tutorial", help="output folder (default: out/tutorial)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 250 quick, 1200 full)")
    args = p.parse_args()
    out = Path(args.out)
    size = 16 if args.quick else 24
    steps = args.steps or (250 if args.quick else 1200)

    # 2. The network: receptive radius 6, conditioning from objects within 3 px of a feature pixel.
    cfg = LocalNetConfig(attr_dim=2, width=24, depth=2, conditioning="render", cond_radius=3.0, norm="none",
                         relative_freqs=4, token_dim=16, sigma_embed_dim=32)
    torch.manual_seed(0)  # a reproducible initialisation (and so a reproducible run)
    model = LocalConditionalDenoiser(cfg)
    print(f"receptive radius {model.receptive_radius} px, conditioner radius {model.conditioner_radius} px")

    # 3. Train (rerun the script to resume from out/checkpoint.pt).
    t0 = time.perf_counter()
    tcfg = TrainConfig(steps=steps, batch_size=32, lr=2e-3, warmup_steps=20, ema_decay=0.99, cond_dropout=0.1,
                       checkpoint_every=50, progress=False)
    trainer = train(model, MyStream(32, size, seed=0), tcfg, out_dir=out)
    D = trainer.ema_model.eval()
    loss = f"; loss {trainer.history[-1]['loss']:.3f}" if trainer.history else " (resumed: nothing left to train)"
    print(f"trained {trainer.step} steps in {time.perf_counter() - t0:.0f} s{loss}")

    # 4. Sample 1..8 objects (trained on 1..3), jointly and as a projective composition.
    g = torch.Generator().manual_seed(1)
    counts = [1, 2, 4, 6, 8]
    per = 4
    pos, colour, valid = [], [], []
    for n in counts:
        a, b, c = random_layouts(per, [n], size, g)
        pad = max(counts) - a.shape[1]
        pos.append(torch.nn.functional.pad(a, (0, 0, 0, pad)))
        colour.append(torch.nn.functional.pad(b, (0, pad)))
        valid.append(torch.nn.functional.pad(c, (0, pad)))
    P, Cl, V = torch.cat(pos), torch.cat(colour), torch.cat(valid)
    cond = conditions(P, Cl, V)
    sig = karras_sigmas(24, 0.002, 80.0)
    x = sig[0] * torch.randn(P.shape[0], 3, size, size, generator=g)
    with torch.no_grad():
        joint = ((sample_euler(D, x, sig, cond) + 1) / 2).clamp(0, 1)
        composed = ((sample_euler(projective_from(D, cond), x, sig) + 1) / 2).clamp(0, 1)

    # 5. A renderer-specific check: blobs found by thresholding, and a bright pixel of the right hue at each
    #    requested position.
    summary: dict[str, Any] = {"steps": trainer.step, "size": size, "counts": {}}
    for name, imgs in (("joint", joint), ("projective", composed)):
        for i, n in enumerate(counts):
            ok = 0
            for b in range(i * per, (i + 1) * per):
                # Objects = local maxima of brightness above 0.3 (each plus sign has one, at its centre).
                bright = (imgs[b] - 0.1).abs().amax(0).numpy()
                peaks = (bright == ndimage.maximum_filter(bright, size=3)) & (bright > 0.3)
                hits = 0
                for k in range(n):
                    r, c = (round(float(v)) for v in P[b, k])
                    near = peaks[max(r - 1, 0): r + 2, max(c - 1, 0): c + 2].any()
                    # Colour: the palette colour whose direction from the background best matches the pixel's.
                    d = imgs[b, :, r, c] - 0.1
                    guess = int(torch.argmax((COLOURS - 0.1) @ d / (COLOURS - 0.1).norm(dim=1)))
                    hits += int(bool(near) and guess == int(Cl[b, k]))
                ok += int(int(peaks.sum()) == n and hits == n)
            summary["counts"].setdefault(name, {})[n] = ok / per
    print("fraction of images with exactly the requested objects (trained on 1-3):")
    for name, row in summary["counts"].items():
        print(f"  {name:>10}: " + "  ".join(f"{n}: {v:.2f}" for n, v in row.items()))

    # 6. Conditional locality: each object's influence (ablation) inside the declared conditioner radius.
    loc = conditional_locality(D, x[-2:] * 0 + joint[-2:] * 2 - 1, [0.2, 1.0], cond[-2:],
                               regions=float(model.conditioner_radius))
    summary["conditional_index"] = loc.index["ablation"].tolist()
    print(f"conditional locality index at sigma 0.2, 1.0: {summary['conditional_index']} (1 = fully local)")

    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    problems = []
    if any(abs(v - 1.0) > 1e-6 for v in summary["conditional_index"]):
        problems.append(f"conditional locality index {summary['conditional_index']}, expected 1 within the "
                        f"declared conditioner radius {model.conditioner_radius}")
    if summary["counts"]["projective"][1] == 0.0:  # one object, as trained: the easiest case
        problems.append("no composed one-object image has its object")
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        raise SystemExit(1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(len(counts), per, figsize=(1.2 * per, 1.2 * len(counts)), squeeze=False)
    for i in range(len(counts)):
        for j in range(per):
            b = i * per + j
            axes[i, j].imshow(joint[b].permute(1, 2, 0).numpy(), interpolation="nearest")
            pts = P[b][V[b]]
            axes[i, j].plot(pts[:, 1], pts[:, 0], "+", color="white", ms=3)
            axes[i, j].axis("off")
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=90)
    print(f"wrote {out / 'summary.json'} and {out / 'samples.png'}")


if __name__ == "__main__":
    main()
