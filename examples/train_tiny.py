"""Train a tiny local conditional denoiser on rendered scenes, interrupt, resume, sample and evaluate.

    python examples/train_tiny.py --quick --out out/train_tiny

Steps: render scenes on the fly (1-3 labelled objects), train a ``LocalConditionalDenoiser`` with the
EDM loss for half the steps, stop (as if the job were killed), resume from the checkpoint to the end,
sample 0..N-object layouts with Euler on a Karras grid from the EMA weights, detect the objects and
print the per-count table, then measure the model's conditional locality. Writes ``checkpoint.pt``,
``log.jsonl``, ``results.json``, ``results.md``, ``locality.json`` and ``samples.png`` (if matplotlib is
installed) to ``--out``. Exits with status 1 if the run did not resume (the second half restarted), the
loss did not fall, the model is not exactly conditionally local within its conditioner radius, or fewer
than half of the sampled images have the requested number of objects.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from localscore import Conditions
from localscore.lengthgen.data import SceneConfig, SceneStream
from localscore.lengthgen.evaluate import evaluate_sampler, locality_profile, request_scenes
from localscore.nn import LocalConditionalDenoiser
from localscore.sampling import sample_euler
from localscore.schedules import karras_sigmas
from localscore.train import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16x16, 200 steps, small evaluation (CI)")
    p.add_argument("--out", default="out/train_tiny", help="output directory (default: out/train_tiny)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 200 quick, 1500 full)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    res = 16 if args.quick else 32
    steps = args.steps or (200 if args.quick else 1500)
    counts = [0, 1, 2, 3, 4, 5, 6] if args.quick else list(range(11))
    per_count = 4 if args.quick else 32
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    scenes = SceneConfig(resolution=res, counts=(1, 2, 3), colors=("red", "blue", "green", "yellow"),
                         shapes=("disc",), sizes=("large",))
    # rendered conditioning (a masked sum of nearby object tokens): the fastest local network on a CPU
    model = LocalConditionalDenoiser(width=32 if args.quick else 48, conditioning="render", cond_radius=0.15 * res,
                                     attr_dim=13)
    config = TrainConfig(steps=steps, batch_size=16 if args.quick else 32, lr=2e-3, warmup_steps=20,
                         ema_decay=0.99, seed=args.seed, log_every=25, checkpoint_every=50,
                         progress=sys.stderr.isatty())

    def data() -> SceneStream:
        return SceneStream(scenes, config.batch_size, seed=args.seed)

    t0 = time.perf_counter()
    train(model, data(), config, out_dir=out, resume=False, until=steps // 2)      # "killed" half-way
    print(f"stopped at step {steps // 2}; resuming from {out / 'checkpoint.pt'}")
    # a new process would rebuild the model and the stream the same way, then resume exactly
    trainer = train(LocalConditionalDenoiser(model.config), data(), config, out_dir=out)
    train_s = time.perf_counter() - t0
    ema = trainer.ema_model.eval()

    sigmas = karras_sigmas(12 if args.quick else 32, 0.002, 80.0)

    def sample(cond: Conditions, generator: torch.Generator) -> torch.Tensor:
        x = 80.0 * torch.randn(cond.batch_size, 3, res, res, generator=generator)
        with torch.no_grad():
            x0 = sample_euler(ema, x, sigmas, cond)
        return ((x0 + 1) / 2).clamp(0, 1)          # the stream's [-1, 1] back to [0, 1]

    t1 = time.perf_counter()
    result = evaluate_sampler(sample, scenes, counts=counts, per_count=per_count, seed=args.seed, batch_size=32,
                              meta={"model": "LocalConditionalDenoiser", "steps": steps, "resolution": res})
    eval_s = time.perf_counter() - t1
    table = result.to_markdown()
    print(table)
    print(f"training {train_s:.1f} s ({steps} steps), evaluation {eval_s:.1f} s")
    (out / "results.json").write_text(json.dumps(result.to_dict(), indent=1))
    (out / "results.md").write_text(table + "\n")

    profile = locality_profile(ema, scenes, sigmas=[0.2, 1.0, 5.0], n_images=2, count=4, seed=args.seed)
    print("conditional locality of the trained model (4-object scenes):")
    print(profile.to_markdown())
    (out / "locality.json").write_text(json.dumps(profile.to_dict(), indent=1))

    # What must hold whatever the training noise: the second call resumed (it logged only the second half),
    # the loss fell, the network is local by construction, and the samples are mostly right.
    problems = []
    resumed = [r["step"] for r in trainer.history]
    if trainer.step != steps or not resumed or resumed[0] <= steps // 2:
        problems.append(f"the second train() call did not resume from step {steps // 2} (it logged steps {resumed})")
    logged = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    if not logged[-1] < 0.5 * logged[0]:
        problems.append(f"the loss did not fall: {logged[0]:.3f} -> {logged[-1]:.3f}")
    with torch.no_grad():
        exact = locality_profile(ema, scenes, sigmas=[1.0], n_images=1, count=4, seed=args.seed,
                                 region_radius=float(ema.conditioner_radius), pixel_rows=None)
    if abs(exact.index[0] - 1.0) > 1e-6:
        problems.append(f"locality index {exact.index[0]:.6f} within the conditioner radius "
                        f"{ema.conditioner_radius}, expected 1")
    rate = sum(r.exact_count.rate for r in result.rows) / len(result.rows)
    if rate < 0.5:
        problems.append(f"only {rate:.2f} of the samples have the requested number of objects")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        save_samples(plt, sample, scenes, counts, args.seed, out)
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        raise SystemExit(1)


def save_samples(plt: Any, sample: Any, scenes: SceneConfig, counts: list[int], seed: int, out: Path) -> None:
    layouts = request_scenes(scenes, counts, 1, seed=seed + 7)
    images = sample(layouts.conditions(), torch.Generator().manual_seed(1))
    fig, axes = plt.subplots(1, len(counts), figsize=(1.6 * len(counts), 1.9))
    for ax, img, n, b in zip(axes, images, counts, range(len(counts))):
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        pos = layouts.pos[b, layouts.valid[b]]
        ax.scatter(pos[:, 1], pos[:, 0], marker="+", c="k", s=30, linewidths=0.8)
        ax.set_title(f"{n} objects", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=120)
    print(f"wrote {out}/samples.png")


if __name__ == "__main__":
    main()
