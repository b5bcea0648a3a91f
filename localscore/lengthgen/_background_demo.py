"""``localscore demo --background``: the choice of background in projective composition, on shipped models.

Four compositions of single-object models (the shipped ``bg-*-32`` files, seed 0 of
``benchmarks/configs/background.json``) sample the same requested layouts; the table gives, per object count,
the objects drawn (mean), the recall of the requested objects and the perfect rate. See ``docs/background.md``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

BACKGROUND_DEMO = (
    ("empty", "bg-single01-32", None,
     "one-object conditionals over the same network's empty set (trained on object-free images)"),
    ("empty-separate", "bg-single-32", "bg-empty-32",
     "one-object conditionals over a separately trained model of object-free images"),
    ("unconditional", "bg-single-32", None,
     "Bayes composition: the one-object model's own unconditional output as background"),
    ("cluttered", "bg-clutter-32", None,
     "one-label models (1-3 objects, one labelled) over their own empty set, which draws clutter"),
)
"""``(composition, components model, background model or None for the model's own empty set, what it is)``."""
COUNTS = (1, 2, 4, 8)
SETTINGS = (6, 16)
"""``(images per count, Euler steps)``; ``--quick``: ``QUICK``."""
QUICK = (2, 8)


def run(args: argparse.Namespace, out_dir: Path, write_json: Any, pyplot: Any, png_grid: Any) -> int:
    """Sample the four compositions, print the table, write ``background.json`` and ``background.png``."""
    from .evaluate import EvaluationResult, request_scenes
    from .models import load_model
    from .recipes import evaluate_model

    counts = sorted(set(args.counts)) if args.counts else list(COUNTS)
    per_count = args.samples or (QUICK[0] if args.quick else SETTINGS[0])
    steps = args.steps or (QUICK[1] if args.quick else SETTINGS[1])
    names = sorted({m for _, a, b, _ in BACKGROUND_DEMO for m in (a, b) if m})
    models = {n: load_model(n) for n in names}
    print("localscore demo --background: single-object location models composed for k objects, "
          "D = D_bg + sum_j (D(c_j) - D_bg), over four backgrounds (local networks, 32x32, seed 0):")
    for name, _, _, what in BACKGROUND_DEMO:
        print(f"  {name:<15} {what}")
    print(f"Sampling {per_count} images for each of {', '.join(map(str, counts))} objects ({steps} Euler steps).\n",
          flush=True)

    def one(item: tuple[str, str, str | None, str]) -> tuple[dict[str, Any], Tensor]:
        name, comp, bg, _ = item
        keep: list[Tensor] = []
        t0 = time.perf_counter()
        with torch.inference_mode():
            res = evaluate_model(models[comp], "projective", counts=counts, per_count=per_count, seed=args.seed,
                                 steps=steps, background=models[bg] if bg else None,
                                 batch_size=per_count * len(counts), meta={"composition": name},
                                 keep_images=keep)
        return {"evaluation": res.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}, torch.cat(keep)

    t_all = time.perf_counter()
    workers = min(torch.get_num_threads(), len(BACKGROUND_DEMO))
    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
            done = list(pool.map(one, BACKGROUND_DEMO))
    finally:
        torch.set_num_threads(threads)
    total = time.perf_counter() - t_all
    results = {item[0]: r for item, (r, _) in zip(BACKGROUND_DEMO, done)}
    evals = {k: EvaluationResult.from_dict(r["evaluation"]) for k, r in results.items()}
    width = 22
    print(f"{'objects':>7} " + " ".join(f"{k:>{width}}" for k in results))
    print(f"{'':>7} " + " ".join(f"{'drawn recall perfect':>{width}}" for _ in results))
    for c in counts:
        cells = []
        for ev in evals.values():
            drawn = [d for q, d in zip(ev.requested, ev.detected) if q == c]
            row = ev.row(c)
            cells.append(f"{sum(drawn) / len(drawn):>6.1f} {row.recall.rate:>6.2f} {row.perfect.rate:>7.2f}")
        print(f"{c:>7} " + " ".join(f"{cell:>{width}}" for cell in cells))
    print(f"\n'drawn': objects detected per image (mean); 'recall': share of the requested objects drawn at their "
          f"place in their colour; 'perfect': share of the {per_count} images per count with exactly the requested "
          f"objects. Sampling took {total:.0f} s.")
    print("Read it with docs/background.md: the three seeds' results with intervals, and why each background "
          "holds or fails.")
    write_json(out_dir / "background.json", {"counts": counts, "per_count": per_count, "steps": steps,
                                              "seed": args.seed, "seconds": round(total, 1), "runs": results})
    print(f"wrote {out_dir / 'background.json'}")
    plt = pyplot(required=False, what="background.png", where="localscore demo --background")
    if plt is not None:
        requested = request_scenes(models["bg-single-32"].scene.replace(counts=tuple(counts), labelling="all"),
                                   counts, per_count, seed=args.seed)
        per = min(per_count, 2)   # images per composition in each row: a row per count, compositions side by side
        images, marks, titles = [], [], []
        for i in range(len(counts)):
            row_img, row_mark = [], []
            for _, imgs in done:
                for j in range(i * per_count, i * per_count + per):
                    row_img.append(imgs[j])
                    row_mark.append(requested.pos[j][requested.valid[j]])
            images.append(row_img)
            marks.append(row_mark)
        for name, *_ in BACKGROUND_DEMO:
            titles += [name] + [None] * (per - 1)
        labels = [f"{c} obj." for c in counts]
        png_grid(plt, out_dir / "background.png", images, marks, row_labels=labels, col_titles=titles,
                 title="Projective composition of single-object models over four backgrounds (+ requested)",
                 cell=1.1)
        print(f"wrote {out_dir / 'background.png'}")
    return 0
