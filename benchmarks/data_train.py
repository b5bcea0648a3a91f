"""Cost of making training data, of one training step, of a checkpoint and of evaluation, side by side.

For each resolution, times (best of the repeats, interleaved, robust to other load on a shared CPU):

* ``scenes``: drawing one global batch of layouts (``sample_scenes``), counts 1..3;
* ``render``: rendering it (``render_scene``), plain and with texture + shading + shadow;
* ``step``: one training step of a ``LocalConditionalDenoiser`` (rendered conditioning) on that batch;
* ``checkpoint``: writing the full checkpoint (atomic, fsynced, digested);
* ``detect``: detecting the objects of a batch of 10-object ground-truth renders.

and prints each as a ratio to the training step (data made on the fly should cost a small fraction of a
step) plus images per second.

Run: ``python benchmarks/data_train.py [--quick] [--threads 1] [--batch 64]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from localscore.lengthgen.data import SceneConfig, SceneStream, render_scene, sample_scenes
from localscore.lengthgen.evaluate import detect_objects
from localscore.nn import LocalConditionalDenoiser
from localscore.train import TrainConfig, Trainer


def best_of(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k] = min(times[k], time.perf_counter() - t)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16 and 32 only, fewer repeats")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    resolutions = [16, 32] if args.quick else [16, 32, 64]
    repeats = 3 if args.quick else 5
    B = args.batch
    print(f"batch {B}, {args.threads} thread(s), best of {repeats}; ratios are to one training step")
    print("| res | step (s) | scenes | render | render fancy | checkpoint | detect | step img/s | render img/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    tmp = Path(tempfile.mkdtemp())
    for res in resolutions:
        cfg = SceneConfig(resolution=res, counts=(1, 2, 3))
        fancy = cfg.replace(background="textured", shading=0.2, shadow=0.3)
        g = torch.Generator().manual_seed(0)
        scene = sample_scenes(cfg, B, generator=g)
        fancy_scene = sample_scenes(fancy, B, generator=g)
        ten_cfg = cfg.replace(counts=(10,))
        ten = render_scene(sample_scenes(ten_cfg, B, generator=g), ten_cfg)
        model = LocalConditionalDenoiser(width=48, conditioning="render", cond_radius=0.15 * res)
        trainer = Trainer(model, SceneStream(cfg, B, seed=0),
                          TrainConfig(steps=10**6, batch_size=B, progress=False, checkpoint_every=0),
                          out_dir=tmp / str(res))
        trainer.train_step()   # warm-up
        t = best_of({
            "step": trainer.train_step,
            "scenes": lambda cfg=cfg, g=g: sample_scenes(cfg, B, generator=g),
            "render": lambda scene=scene, cfg=cfg: render_scene(scene, cfg),
            "fancy": lambda s=fancy_scene, c=fancy: render_scene(s, c),
            "checkpoint": trainer.save_checkpoint,
            "detect": lambda ten=ten, c=ten_cfg: detect_objects(ten, c),
        }, repeats)
        s = t["step"]
        print(f"| {res} | {s:.3f} | {t['scenes'] / s:.3f} | {t['render'] / s:.3f} | {t['fancy'] / s:.3f} | "
              f"{t['checkpoint'] / s:.3f} | {t['detect'] / s:.3f} | {B / s:.0f} | {B / t['render']:.0f} |")


if __name__ == "__main__":
    main()
