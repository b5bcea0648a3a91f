"""The ``localscore`` command line: train, sample, evaluate, measure locality, and the demo.

Subcommands (``localscore COMMAND --help`` for each):

* ``localscore demo [--out DIR]``: the main job. The shipped 32x32 models, trained on 1-3 objects, sampled
  for 1..10 objects: ``local-32`` (local conditional network, every object labelled; sampled with all objects
  in one pass, and as a projective composition of one-object passes) and ``baseline-32`` (the failing
  baseline: a global cross-attention U-Net trained with one labelled object per image, the others unlabelled
  clutter; sampled as a projective composition of one-object passes; ``--method masked`` adds the
  sampling-time locality intervention); prints the length-generalization table and writes
  ``DIR/demo.json`` and ``DIR/demo.png`` (sample grid, requested positions marked). ``--retrain`` trains
  both from scratch first. ``localscore demo --oracle``: the closed-form demo, exact per-object scores of
  :class:`~localscore.oracles.FactorizedObjects` composed projectively beyond the trained count, sampled
  with Euler and Heun, against exact joint samples.
* ``localscore train CONFIG``: train the experiments of a JSON config (a benchmark config with an
  ``experiments`` list, or one experiment); resumable.
* ``localscore sample --checkpoint PATH_OR_NAME --layout LAYOUT.json --seed S --out FILE.npz``: draw one
  image per layout image; ``FILE.npz`` holds ``images`` ``[N, 3, H, W]`` float32 in ``[0, 1]``.
* ``localscore evaluate --checkpoint PATH_OR_NAME``: per-count perfect rate / exact-count accuracy with
  Wilson intervals over counts 0..10.
* ``localscore locality --checkpoint PATH_OR_NAME``: conditional locality index and effective pixel
  radius across noise levels.

A layout file is JSON::

    {"size": 32, "images": [[{"pos": [row, col], "color": "red", "shape": "disc", "size": "small"}, ...], ...]}

positions in pixels (row, col from the top-left pixel centre), colours gray, red, blue, green, brown,
purple, cyan, yellow; ``shape`` (disc / square / triangle) and ``size`` (small / large) optional
(default: the first of the model's training shapes and sizes). Every output file is written atomically
(temporary file, fsync, rename): an interrupted command leaves no half-written file.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._errors import LocalScoreError
from ._io import atomic_write
from .conditions import Conditions

__all__ = ["main"]


# ----------------------------------------------------------------------------- helpers
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    atomic_write(path, lambda f: f.write(data))


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
def _demo_oracle(args: argparse.Namespace) -> int:
    """The interim demo: exact per-object oracle scores composed beyond the trained count."""
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write_bytes(png, buf.getvalue())
    print(f"Wrote {png}")
    return 0



# ----------------------------------------------------------------------------- shared
def _progress_iter(items: Sequence[Any], show: bool, desc: str) -> Any:
    if not show:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=desc, unit="run")


def _write_json(path: Path, data: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def _counts_arg(text: str) -> list[int]:
    """``"0..10"`` or ``"1,2,5"`` -> list of counts."""
    try:
        if ".." in text:
            a, b = text.split("..")
            out = list(range(int(a), int(b) + 1))
        else:
            out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count range like 0..10 or a list like 1,2,5") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} gives an empty or negative set of counts; use e.g. 0..10")
    return out


def _load(checkpoint: str) -> Any:
    from .experiments import load_model

    return load_model(checkpoint)


# ----------------------------------------------------------------------------- train
def _train(args: argparse.Namespace) -> int:
    from .experiments import ExperimentConfig, load_experiments, train_experiment

    path = Path(args.config)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise LocalScoreError(f"localscore train: cannot read the config {str(path)!r} ({e.strerror or e}).\n"
                              "  Fix: check the path.") from e
    except json.JSONDecodeError as e:
        raise LocalScoreError(f"localscore train: {str(path)!r} is not valid JSON ({e.msg} at line {e.lineno}, "
                              f"column {e.colno}).") from e
    if isinstance(raw, dict) and "experiments" in raw:
        _, exps = load_experiments(path)
    else:
        exps = [ExperimentConfig.from_dict(raw)]
    if args.only:
        names = [e.name for e in exps]
        missing = sorted(set(args.only) - set(names))
        if missing:
            raise LocalScoreError(f"localscore train: --only names {missing} are not in the config; it has "
                                  f"{names}.")
        exps = [e for e in exps if e.name in args.only]
    out = Path(args.out)
    for exp in exps:
        seeds = [args.seed] if args.seed is not None else list(exp.seeds)
        for seed in seeds:
            run_dir = out / exp.name / f"seed{seed}"
            print(f"training {exp.name} (seed {seed}) -> {run_dir}", flush=True)
            model = train_experiment(exp, run_dir, seed=seed, steps=args.steps, progress=not args.quiet)
            print(f"  done: {model.meta['steps']} steps; model file {run_dir / 'model.pt'}", flush=True)
    return 0


# ----------------------------------------------------------------------------- sample
def _sample(args: argparse.Namespace) -> int:
    import numpy as np

    from .data import SHAPES, SIZES, load_layout
    from .experiments import sampler

    model = _load(args.checkpoint)
    scene_cfg = model.scene
    layout = load_layout(args.layout, max_objects=args.max_objects, default_shape=scene_cfg.shapes[0],
                         default_size=scene_cfg.sizes[0], where="localscore sample")
    if model.kind != "local" and layout.resolution != model.resolution:
        raise LocalScoreError(
            f"localscore sample: the layout's size is {layout.resolution} but the model {args.checkpoint!r} "
            f"draws {model.resolution}x{model.resolution} images (a global U-Net works at its training size only).\n"
            f"  Fix: set \"size\": {model.resolution} in the layout.")
    if model.kind == "local" and layout.resolution != model.resolution:
        print(f"note: the local network was trained at {model.resolution}x{model.resolution}; sampling "
              f"{layout.resolution}x{layout.resolution} (it is translation equivariant, any size works).",
              file=sys.stderr)
    shapes_used = {SHAPES[int(v)] for v in layout.shape[layout.valid].tolist()}
    sizes_used = {SIZES[int(v)] for v in layout.size[layout.valid].tolist()}
    unseen = sorted((shapes_used - set(scene_cfg.shapes)) | (sizes_used - set(scene_cfg.sizes)))
    if unseen:
        print(f"warning: the model never saw {unseen} in training (it saw shapes {list(scene_cfg.shapes)}, sizes "
              f"{list(scene_cfg.sizes)}).", file=sys.stderr)
    fn = sampler(model, args.method, steps=args.steps, solver=args.solver, mask_radius=args.mask_radius,
                 crop=args.crop, progress=not args.quiet)
    res = layout.resolution
    if res != model.resolution:
        fn = _sized_sampler(model, res, args)
    cond = layout.conditions()
    g = torch.Generator().manual_seed(args.seed)
    images = fn(cond, g)
    arr = images.numpy().astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, images=arr, positions=layout.pos.numpy(), valid=layout.valid.numpy())
    _atomic_write_bytes(Path(args.out), buf.getvalue())
    print(f"wrote {args.out}: images {list(arr.shape)} in [0, 1] ({args.method} sampling, {args.steps} "
          f"{args.solver} steps, seed {args.seed})")
    return 0


def _sized_sampler(model: Any, res: int, args: argparse.Namespace) -> Callable[..., Tensor]:
    """A sampler at another image size (local networks only)."""
    import dataclasses

    from .experiments import sampler

    resized = dataclasses.replace(model, scene=model.scene.replace(resolution=res))
    return sampler(resized, args.method, steps=args.steps, solver=args.solver, mask_radius=args.mask_radius,
                   crop=args.crop, progress=not args.quiet)


# ----------------------------------------------------------------------------- evaluate
def _evaluate(args: argparse.Namespace) -> int:
    from .experiments import evaluate_model

    model = _load(args.checkpoint)
    t0 = time.perf_counter()
    res = evaluate_model(model, args.method, counts=args.counts, per_count=args.per_count, seed=args.seed,
                         steps=args.steps, solver=args.solver, mask_radius=args.mask_radius, crop=args.crop,
                         batch_size=args.batch_size, progress=not args.quiet,
                         meta={"checkpoint": str(args.checkpoint)})
    print(f"{args.checkpoint} ({model.kind}, {args.method} sampling), {args.per_count} images per count, "
          f"{time.perf_counter() - t0:.0f} s:\n")
    print(res.to_markdown(ci=True))
    if args.out:
        _write_json(Path(args.out), res.to_dict())
        print(f"\nwrote {args.out}")
    return 0


# ----------------------------------------------------------------------------- locality
def _locality(args: argparse.Namespace) -> int:
    from .experiments import measure_locality

    model = _load(args.checkpoint)
    out = measure_locality(model, sigmas=args.sigmas, count=args.count, images=args.images, radius=args.radius,
                           seed=args.seed)
    print(f"{args.checkpoint} ({model.kind}): {args.images} images with {args.count} objects; conditional index "
          f"= share of an object's influence within {out['radius']:.1f} px of it (Chebyshev).\n")
    print(f"{'sigma':>7} {'cond. index':>11} {'on others':>9} {'infl. r90':>9} {'pixel r90':>9}")
    for i, s in enumerate(out["sigmas"]):
        print(f"{s:>7.3f} {out['conditional_index'][i]:>11.3f} {out['on_others'][i]:>9.3f} "
              f"{out['influence_radius'][i]:>9.1f} {out['pixel_radius_90'][i]:>9.1f}")
    if args.out:
        _write_json(Path(args.out), out)
        print(f"\nwrote {args.out}")
    return 0


# ----------------------------------------------------------------------------- demo
_DEMO_MODELS = ("local-32", "baseline-32")


def _demo_runs(method: str | None) -> list[tuple[str, str]]:
    """``(model, method)`` pairs of the trained demo.

    Default: the local model jointly and composed; the baseline (trained with one labelled object per image)
    composed projectively, the way the paper tests it. ``--method masked`` samples both with the
    sampling-time intervention (each object's score acts only near it).
    """
    if method is not None:
        return [(name, method) for name in _DEMO_MODELS]
    return [("local-32", "joint"), ("local-32", "projective"), ("baseline-32", "projective")]


def _demo(args: argparse.Namespace) -> int:
    if args.oracle:
        return _demo_oracle(args)
    from .evaluate import request_scenes
    from .experiments import MODEL_NAMES, ExperimentConfig, checkpoint_dir, evaluate_model, load_model

    out_dir = Path(args.out)
    sources: dict[str, str] = {n: n for n in MODEL_NAMES}
    if args.retrain:
        sources = _retrain(args, out_dir)
    missing = [n for n, src in sources.items() if src in MODEL_NAMES and not (checkpoint_dir() / f"{src}.pt").is_file()]
    if missing:
        raise LocalScoreError(f"localscore demo: the shipped models {missing} are not in {str(checkpoint_dir())!r}.\n"
                              "  Fix: run `localscore demo --retrain` to train them, or `localscore demo --oracle`.")
    counts = list(range(1, 11))
    per_count = args.samples or (2 if args.quick else 8)
    steps = args.steps or (12 if args.quick else 24)
    models = {name: load_model(src) for name, src in sources.items()}
    runs = _demo_runs(args.method)
    print("localscore demo: length generalization of two 32x32 models trained on scenes with 1-3 objects.")
    for name, m in models.items():
        meta = m.meta
        print(f"  {name}: {m.kind} network, labelling {m.scene.labelling!r}, {meta.get('parameters', '?')} "
              f"parameters, {meta.get('steps', '?')} training steps (batch {meta.get('batch_size', '?')})")
    said = {"joint": "all objects in one pass", "projective": "one pass per object, composed",
            "masked": "one pass per object, each acting only near its object (sampling-time locality)",
            "localized": "one pass per object on a window around it, acting only near it (sampling-time locality)"}
    methods = dict.fromkeys(m for _, m in runs)
    print(f"Sampling {per_count} images for each of 1..10 objects ({steps} Euler steps). "
          + "; ".join(f"'{m}': {said[m]}" for m in methods) + ".\n")
    t_all = time.perf_counter()
    results: dict[str, Any] = {}
    images: dict[str, Tensor] = {}
    for name, method in runs:
        key = f"{name} {method}"
        t0 = time.perf_counter()
        keep: list[Tensor] = []
        exp = ExperimentConfig.from_dict(models[name].meta["experiment"])  # masks as the model was benchmarked
        res = evaluate_model(models[name], method, counts=counts, per_count=per_count, seed=args.seed, steps=steps,
                             mask_radius=exp.mask_radius, crop=exp.crop,
                             batch_size=per_count * len(counts), progress=args.progress,
                             meta={"model": name, "method": method}, keep_images=keep)
        images[key] = torch.cat(keep)
        results[key] = {"model": name, "method": method, "evaluation": res.to_dict(),
                        "seconds": round(time.perf_counter() - t0, 1), "meta": models[name].meta}
    total = time.perf_counter() - t_all
    from .evaluate import EvaluationResult

    evals = {k: EvaluationResult.from_dict(r["evaluation"]) for k, r in results.items()}
    width = max(12, *(len(k) for k in results))
    header = f"{'objects':>7} " + " ".join(f"{k:>{width}}" for k in results)
    print(header)
    print(f"{'':>7} " + " ".join(f"{'perfect recall':>{width}}" for _ in results))
    print("-" * len(header))
    for c in counts:
        cells = []
        for k in results:
            row = evals[k].row(c)
            cells.append(f"{f'{row.perfect.rate:.2f}   {row.recall.rate:.2f}':>{width}}")
        print(f"{c:>7} " + " ".join(cells))
    print(f"\n'perfect': share of the {per_count} images per count with exactly the requested objects, each at its "
          "place in its colour; 'recall': share of the requested objects drawn at their place. A model trained with "
          "one labelled object (baseline-32) learned to draw unlabelled extra objects too, so its perfect rate is low "
          "at 1-3 objects by design: read its recall. Wilson intervals and exact-count accuracy are in demo.json. "
          f"Sampling took {total:.0f} s in all.")
    for k in results:
        trained = [evals[k].row(c).recall.rate for c in counts if c <= 3]
        if sum(trained) / len(trained) < 0.5:
            name = results[k]["model"]
            print(f"note: {k} fails already on the trained counts 1-3 (recall {sum(trained) / len(trained):.2f}): "
                  f"it is undertrained ({models[name].meta.get('steps', '?')} steps), so its row measures that, not "
                  "length generalization.")
    requested = request_scenes(models["local-32"].scene.replace(counts=tuple(counts)), counts, per_count,
                               seed=args.seed)
    payload = {"counts": counts, "per_count": per_count, "steps": steps, "seed": args.seed,
               "seconds": round(total, 1), "runs": results}
    _write_json(out_dir / "demo.json", payload)
    print(f"wrote {out_dir / 'demo.json'}")
    _demo_png(out_dir / "demo.png", images, requested, counts, per_count, evals)
    return 0


def _demo_png(path: Path, images: dict[str, Tensor], requested: Any, counts: list[int], per_count: int,
              evals: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipped demo.png (pip install 'localscore[plot]').")
        return
    show = min(per_count, 3)
    names = list(images)
    fig, axes = plt.subplots(len(counts), show * len(names), figsize=(1.2 * show * len(names), 1.25 * len(counts)),
                             squeeze=False)
    for i, c in enumerate(counts):
        for j, name in enumerate(names):
            for k in range(show):
                idx = i * per_count + k
                ax = axes[i, j * show + k]
                ax.imshow(images[name][idx].permute(1, 2, 0).numpy(), interpolation="nearest")
                v = requested.valid[idx]
                pos = requested.pos[idx][v]
                ax.plot(pos[:, 1].numpy(), pos[:, 0].numpy(), "+", color="white", ms=3, mew=0.6)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0 and k == 0:
                    ax.set_title(name, fontsize=8, loc="left")
            if j == 0:
                axes[i, 0].set_ylabel(f"{c} obj.", fontsize=8)
    fig.suptitle("Requested positions marked +; trained on 1-3 objects", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    _atomic_write_bytes(path, buf.getvalue())
    print(f"wrote {path}")


def _retrain(args: argparse.Namespace, out_dir: Path) -> dict[str, str]:
    """Train local-32 and baseline-32 from the benchmark config; return their model files."""
    from .experiments import DEMO_EXPERIMENTS, demo_experiments, train_experiment

    exps = demo_experiments()
    sources = {}
    for name in _DEMO_MODELS:
        exp = exps[name]
        run_dir = out_dir / "retrain" / name
        print(f"training {name} ({DEMO_EXPERIMENTS[name]}, {exp.train.get('steps')} steps) -> {run_dir}", flush=True)
        train_experiment(exp, run_dir, seed=exp.seeds[0], steps=args.retrain_steps, progress=not args.quiet)
        sources[name] = str(run_dir / "model.pt")
    return sources


# ----------------------------------------------------------------------------- entry point
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="localscore", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    d = sub.add_parser("demo", help="length generalization of the shipped models (or --oracle: exact scores)",
                       description="The shipped 32x32 models local-32 (local conditional network, every object "
                       "labelled) and baseline-32 (the failing baseline: a global U-Net trained with one labelled "
                       "object per image, composed per object), both trained on 1-3 objects, sampled for 1..10 "
                       "objects, with the per-count table. With --oracle: exact per-object scores "
                       "of an object oracle composed beyond the trained count, sampled with Euler and Heun against "
                       "exact joint samples. Writes DIR/demo.json and DIR/demo.png.",
                       formatter_class=fmt)
    d.add_argument("--out", default="localscore-demo", help="output folder")
    d.add_argument("--seed", type=int, default=0, help="random seed of the layouts and the samplers")
    d.add_argument("--samples", type=int, default=None, help="images per object count (default 8; --quick 2)")
    d.add_argument("--steps", type=int, default=None, help="sampler steps (default 24; --quick 12)")
    d.add_argument("--quick", action="store_true", help="a small, fast run (CI)")
    d.add_argument("--progress", action="store_true", help="progress bars (needs tqdm)")
    d.add_argument("--trained", action="store_true",
                   help="sample the shipped models local-32 and baseline-32 (the default; kept for old scripts)")
    d.add_argument("--oracle", action="store_true",
                   help="instead: exact per-object scores of an object oracle, composed beyond the trained count")
    d.add_argument("--retrain", action="store_true",
                   help="train local-32 and baseline-32 from scratch first, then sample them (CPU-hours)")
    d.add_argument("--retrain-steps", type=int, default=None, help="override the training steps of --retrain")
    d.add_argument("--method", choices=["joint", "projective", "masked", "localized"], default=None,
                   help="condition both models this way (default: local-32 joint and projective, baseline-32 "
                   "projective; 'masked' is the sampling-time locality intervention)")
    d.add_argument("--quiet", action="store_true", help="no training progress bars")
    d.set_defaults(func=_demo)

    t = sub.add_parser("train", help="train the experiments of a JSON config (resumable)",
                       description="Train every experiment (and seed) of a config file: a benchmark config "
                       "({'defaults': ..., 'experiments': [...]}, see benchmarks/configs/) or one experiment. "
                       "Each run writes OUT/NAME/seedS/{checkpoint.pt, log.jsonl, model.pt}; rerunning resumes.",
                       formatter_class=fmt)
    t.add_argument("config", help="the JSON config file")
    t.add_argument("--out", default="runs", help="output folder")
    t.add_argument("--only", nargs="*", help="train only these experiment names")
    t.add_argument("--seed", type=int, default=None, help="train only this seed (default: the config's seeds)")
    t.add_argument("--steps", type=int, default=None, help="override the config's training steps")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    def model_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--checkpoint", required=True,
                       help="a shipped model name (local-32, baseline-32), a model file, or a training run folder")
        q.add_argument("--method", choices=["joint", "projective", "masked", "localized"], default="joint",
                       help="all objects in one conditioner set, or a (masked / cropped) composition of "
                       "per-object passes")
        q.add_argument("--steps", type=int, default=24, help="sampler steps")
        q.add_argument("--solver", choices=["euler", "heun"], default="euler", help="ODE solver")
        q.add_argument("--mask-radius", type=float, default=6.0,
                       help="disc radius (px) of --method masked / localized")
        q.add_argument("--crop", type=int, default=None, help="window side (px) of --method localized")
        q.add_argument("--seed", type=int, default=0, help="random seed")
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("sample", help="sample images for the objects of a layout file",
                       description="Sample one image per layout image. LAYOUT.json: {\"size\": 32, \"images\": "
                       "[[{\"pos\": [row, col], \"color\": \"red\", \"shape\": \"disc\", \"size\": \"small\"}, ...], "
                       "...]}; FILE.npz gets 'images' [N, 3, H, W] float32 in [0, 1], 'positions', 'valid'.",
                       formatter_class=fmt)
    model_args(s)
    s.add_argument("--layout", required=True, help="the layout JSON file")
    s.add_argument("--out", required=True, help="the output .npz file")
    s.add_argument("--max-objects", type=int, default=10, help="refuse layouts with more objects per image")
    s.set_defaults(func=_sample)

    e = sub.add_parser("evaluate", help="per-count perfect rate and exact-count accuracy over counts 0..10",
                       description="Request random layouts with each count, sample, detect and match; prints "
                       "per-count exact-count accuracy, perfect rate, recall, precision with Wilson 95 %% intervals.",
                       formatter_class=fmt)
    model_args(e)
    e.add_argument("--counts", type=_counts_arg, default=list(range(11)), help="counts, e.g. 0..10 or 1,4,8")
    e.add_argument("--per-count", type=int, default=20, help="images per count")
    e.add_argument("--batch-size", type=int, default=64, help="images per sampler call")
    e.add_argument("--out", default=None, help="also write the result as JSON")
    e.set_defaults(func=_evaluate)

    lo = sub.add_parser("locality", help="conditional locality index and pixel radius across sigma",
                        description="Measure how local a model is: the share of each object's influence near it "
                        "(ablation) and the radius holding 90 %% of the input-pixel Jacobian mass, per noise level.",
                        formatter_class=fmt)
    lo.add_argument("--checkpoint", required=True, help="a shipped model name, a model file or a training run")
    lo.add_argument("--sigmas", type=float, nargs="+", default=[0.05, 0.2, 0.5, 1.0, 2.0], help="noise levels")
    lo.add_argument("--count", type=int, default=4, help="objects per image")
    lo.add_argument("--images", type=int, default=4, help="images")
    lo.add_argument("--radius", type=float, default=None, help="region radius in px (default 0.2 * size)")
    lo.add_argument("--seed", type=int, default=0, help="random seed")
    lo.add_argument("--out", default=None, help="also write the result as JSON")
    lo.set_defaults(func=_locality)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``localscore`` command line; returns the exit code (0 ok, 2 usage or input error).

    Examples:
        >>> main(["evaluate", "--checkpoint", "no-such-model"])  # doctest: +SKIP
        2
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
