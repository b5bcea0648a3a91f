"""Background choice in projective composition: empty, unconditional (Bayes) and cluttered backgrounds.

Single-object location models are composed for k = 0..10 objects,
``D_hat = D_bg + sum_j (D(x, sigma, c_j) - D_bg)``, with three backgrounds ``D_bg``:

* ``empty``: a model of object-free images (``empty``), under components trained on one-object images
  (``single``): under conditional projective composition this is exact for any k;
* ``unconditional``: the one-object model's own empty-set output, i.e. the unconditional model of its
  training images (one object somewhere): Bayes composition;
* ``cluttered``: components trained on images of 1-3 objects of which one is labelled (``clutter``), over
  their own empty-set output, which draws clutter (the local twin of the one-label baseline).

Usage (from the repository root)::

    python benchmarks/background.py --out runs/background                       # every stage below
    python benchmarks/background.py --out runs/background --stage train --seeds 0
    python benchmarks/background.py --out runs/background --stage report --docs docs/background.md
    python benchmarks/background.py --out runs/background --stage archive       # -> benchmarks/results/background
    python benchmarks/background.py --out benchmarks/results/background --stage report --docs docs/background.md

Stages (each resumes what an earlier call left; ``all`` runs the first four):

* ``train``: the three models of ``benchmarks/configs/background.json`` for every seed
  (``OUT/<model>/seed<k>/``, resumable at any moment);
* ``evaluate``: each background's composition over counts 0..10 (``OUT/compose-<background>/seed<k>/eval.json``
  and ``grid.png``): detected count, recall, perfect rate, precision;
* ``mechanism``: :func:`localscore.compose.terms` at noisy renders of held-out scenes for k objects and
  several noise levels (``OUT/compose-<background>/seed<k>/mechanism.json``): how much of each object the
  composition keeps, split into the background's, the object's own and the other objects' part, and the
  terms' conditional locality;
* ``report``: ``OUT/results.md``, ``OUT/results.json``, the figure ``OUT/background.png`` and, with
  ``--docs``, the docs page;
* ``archive``: the small result files (no checkpoints) copied to ``--archive``;
* ``ship``: the seed-0 models copied to ``localscore/checkpoints/`` (``bg-single01-32.pt``, ``bg-single-32.pt``,
  ``bg-empty-32.pt``, ``bg-clutter-32.pt``) for ``localscore demo --background``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from _bench import archive_results, fmt, log, machine_line, pyplot, write_docs_block, write_json

from localscore.compose import terms
from localscore.lengthgen import (
    BACKGROUND_MODELS,
    ExperimentConfig,
    evaluate_model,
    load_experiments,
    load_model,
    train_experiment,
)
from localscore.lengthgen.data import render_scene
from localscore.lengthgen.evaluate import EvaluationResult, Proportion, request_scenes
from localscore.train import run_lock

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "configs" / "background.json"
MECHANISM_COUNTS = (1, 2, 4, 6, 8, 10)
MECHANISM_SIGMAS = (0.25, 1.0, 4.0)
EVAL_SEED_OFFSET = 1000
"""Evaluation layouts and noise come from ``seed + 1000``: never the training stream's seed."""


def read_config(path: Path) -> tuple[dict[str, Any], dict[str, ExperimentConfig], list[dict[str, Any]]]:
    """``(header, models by name, compositions)`` of a background config."""
    header, exps = load_experiments(path)
    models = {e.name: e for e in exps}
    comps = header.get("compositions")
    if not isinstance(comps, list) or not comps:
        raise SystemExit(f"{path}: expected a non-empty list 'compositions'")
    for c in comps:
        for key in ("components", "background"):
            if c.get(key) not in models:
                raise SystemExit(f"{path}: composition {c.get('name')!r} names {key} {c.get(key)!r}, "
                                 f"not one of the models {sorted(models)}")
    return header, models, comps


def _seeds(models: dict[str, ExperimentConfig], only: list[int] | None) -> list[int]:
    seeds = sorted({s for e in models.values() for s in e.seeds})
    return [s for s in seeds if only is None or s in only]


def stage_train(out: Path, models: dict[str, ExperimentConfig], seeds: list[int], max_steps: int | None) -> None:
    for seed in seeds:
        for name, exp in models.items():
            t0 = time.perf_counter()
            train_experiment(exp, out / name / f"seed{seed}", seed=seed, steps=max_steps, progress=False)
            log(f"train {name} seed {seed}: {time.perf_counter() - t0:.0f} s ({machine_line()})")


def _trained(out: Path, models: dict[str, ExperimentConfig], name: str, seed: int) -> Any:
    """The model of run ``name``/``seed`` if it finished training (its ``model.pt`` has the config's steps)."""
    path = out / name / f"seed{seed}" / "model.pt"
    if not path.is_file():
        return None
    model = load_model(path)
    return model if model.meta.get("steps", 0) >= models[name].train_config(seed).steps else None


def _composition_models(out: Path, models: dict[str, ExperimentConfig], comp: dict[str, Any],
                        seed: int) -> tuple[Any, Any] | None:
    """``(components model, background model or None)``, or None (with a message) while one is not trained."""
    comp_model = _trained(out, models, comp["components"], seed)
    bg = None if comp["background"] == comp["components"] else _trained(out, models, comp["background"], seed)
    if comp_model is None or (bg is None and comp["background"] != comp["components"]):
        log(f"skip {comp['name']} seed {seed}: its models have not finished training")
        return None
    return comp_model, bg


def stage_evaluate(out: Path, models: dict[str, ExperimentConfig], comps: list[dict[str, Any]],
                   seeds: list[int], per_count: int | None, plot: bool) -> None:
    for seed in seeds:
        for comp in comps:
            run = out / f"compose-{comp['name']}" / f"seed{seed}"
            if (run / "eval.json").exists():
                continue
            exp = models[comp["components"]]
            pair = _composition_models(out, models, comp, seed)
            if pair is None:
                continue
            with run_lock(run, where=f"background.py --stage evaluate ({comp['name']} seed {seed})"):
                _evaluate_one(run, comp, exp, seed, pair, per_count, plot)


def _evaluate_one(run: Path, comp: dict[str, Any], exp: ExperimentConfig, seed: int, pair: tuple[Any, Any],
                  per_count: int | None, plot: bool) -> None:
    model, bg = pair
    keep: list[torch.Tensor] = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        res = evaluate_model(model, "projective", counts=exp.eval_counts,
                             per_count=per_count or exp.per_count, seed=seed + EVAL_SEED_OFFSET,
                             steps=exp.sampling_steps, solver=exp.sampler, background=bg,
                             batch_size=64, meta={"composition": comp["name"], "seed": seed},
                             keep_images=keep)
    seconds = time.perf_counter() - t0
    data = res.to_dict()
    data["meta"]["seconds"] = round(seconds, 1)
    data["meta"]["machine"] = machine_line()
    write_json(run / "eval.json", data)
    if plot:
        _grid(run / "grid.png", torch.cat(keep), exp.eval_counts, per_count or exp.per_count)
    log(f"evaluate {comp['name']} seed {seed}: {seconds:.0f} s")


def _grid(path: Path, images: torch.Tensor, counts: tuple[int, ...], per_count: int, cols: int = 6) -> None:
    plt = pyplot()
    if plt is None:
        return
    n = min(cols, per_count)
    fig, axes = plt.subplots(len(counts), n, figsize=(1.2 * n, 1.2 * len(counts)), squeeze=False)
    for r, c in enumerate(counts):
        for j in range(n):
            ax = axes[r][j]
            ax.imshow(images[r * per_count + j].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"k={c}", fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def stage_mechanism(out: Path, models: dict[str, ExperimentConfig], comps: list[dict[str, Any]],
                    seeds: list[int], per_count: int, header: dict[str, Any]) -> None:
    mech = header.get("mechanism", {})
    counts = tuple(mech.get("counts", MECHANISM_COUNTS))
    sigmas = tuple(mech.get("sigmas", MECHANISM_SIGMAS))
    for seed in seeds:
        for comp in comps:
            run = out / f"compose-{comp['name']}" / f"seed{seed}"
            if (run / "mechanism.json").exists():
                continue
            pair = _composition_models(out, models, comp, seed)
            if pair is None:
                continue
            model, bg = pair
            D = model.denoiser
            Dbg = D if bg is None else bg.denoiser
            scene = model.scene.replace(counts=counts, labelling="all")
            radius = float(models[comp["components"]].mask_radius)
            empty = render_scene(request_scenes(scene.replace(counts=(0,)), [0], 1, seed=0), scene) * 2 - 1
            rows = []
            t0 = time.perf_counter()
            for k in counts:
                req = request_scenes(scene, [k], per_count, seed=seed + EVAL_SEED_OFFSET + k)
                x0 = render_scene(req, scene) * 2 - 1
                cond = req.conditions()
                for sigma in sigmas:
                    g = torch.Generator().manual_seed(seed * 1000 + k * 10 + int(sigma * 4))
                    with torch.inference_mode():
                        t = terms(Dbg, D, x0, sigma, cond, reference=empty, radius=radius, generator=g,
                                  object_radius=max(scene.object_radii()) + 0.5)
                    rows.append({"k": k, "sigma": sigma, **t.to_dict()})
            write_json(run / "mechanism.json", {"composition": comp["name"], "seed": seed, "radius": radius,
                                                 "per_count": per_count, "rows": rows,
                                                 "seconds": round(time.perf_counter() - t0, 1)})
            log(f"mechanism {comp['name']} seed {seed}: {time.perf_counter() - t0:.0f} s")


# ---------------------------------------------------------------------------------------------- report
def _pooled(results: list[EvaluationResult], count: int, metric: str) -> Proportion:
    total = Proportion(0, 0)
    for r in results:
        total = total + getattr(r.row(count), metric)
    return total


def _mean_detected(data: list[dict[str, Any]], count: int) -> float:
    values = [n for d in data for req, n in zip(d["requested"], d["detected"]) if req == count]
    return sum(values) / len(values) if values else float("nan")


def collect(out: Path, comps: list[dict[str, Any]]) -> dict[str, Any]:
    """Every archived result, pooled over seeds: ``{"compositions": {name: {...}}}``."""
    table: dict[str, Any] = {}
    for comp in comps:
        folder = out / f"compose-{comp['name']}"
        runs = sorted(folder.glob("seed*/eval.json")) if folder.exists() else []
        if not runs:
            continue
        raw = [json.loads(p.read_text()) for p in runs]
        evals = [EvaluationResult.from_dict(d) for d in raw]
        counts = evals[0].counts
        rows = []
        for c in counts:
            row: dict[str, Any] = {"count": c, "detected": _mean_detected(raw, c)}
            for metric in ("perfect", "recall", "precision", "exact_count"):
                p = _pooled(evals, c, metric)
                row[metric] = {"successes": p.successes, "trials": p.trials,
                               "rate": p.rate if p.trials else None, "ci95": list(p.interval())}
            row["perfect_per_seed"] = [e.row(c).perfect.rate for e in evals]
            rows.append(row)
        mech = []
        for p in sorted(folder.glob("seed*/mechanism.json")):
            mech.append(json.loads(p.read_text()))
        table[comp["name"]] = {"note": comp.get("note", ""), "seeds": [p.parent.name for p in runs], "rows": rows,
                               "mechanism": _mean_mechanism(mech)}
    return {"compositions": table}


def _mean_mechanism(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by: dict[tuple[int, float], list[dict[str, Any]]] = {}
    for run in runs:
        for row in run["rows"]:
            by.setdefault((row["k"], row["sigma"]), []).append(row)
    out = []
    for (k, sigma), rows in sorted(by.items()):
        item: dict[str, Any] = {"k": k, "sigma": sigma, "seeds": len(rows)}
        for key in ("retention", "base", "own", "cross", "locality", "off_contrast"):
            vals = [r[key] for r in rows if not math.isnan(r[key])]
            item[key] = sum(vals) / len(vals) if vals else float("nan")
            item[key + "_range"] = [min(vals), max(vals)] if vals else [float("nan")] * 2
        out.append(item)
    return out


def markdown(results: dict[str, Any], header: dict[str, Any]) -> str:
    comps = results["compositions"]
    names = list(comps)
    lines = ["| k | " + " | ".join(f"{n}: detected · recall · perfect [95 % CI]" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    counts = [r["count"] for r in comps[names[0]]["rows"]] if names else []
    for i, c in enumerate(counts):
        cells = []
        for n in names:
            r = comps[n]["rows"][i]
            lo, hi = r["perfect"]["ci95"]
            cells.append(f"{fmt(r['detected'], 1)} · {fmt(r['recall']['rate'])} · {fmt(r['perfect']['rate'])} "
                         f"[{lo:.2f}, {hi:.2f}]")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    ks = sorted({m["k"] for n in names for m in comps[n]["mechanism"]})
    sig = sorted({m["sigma"] for n in names for m in comps[n]["mechanism"]})
    mech = ["Object retention (own + cross + base) and, in brackets, the other objects' part `cross`, at k objects "
            "(mean over seeds):", "",
            "| background | sigma | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    loc = ["Conditional locality of the terms (share of their energy within the radius of their object) and, in "
           "brackets, the off-object contrast of the composition:", "",
           "| background | sigma | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for n in names:
        by = {(m["k"], m["sigma"]): m for m in comps[n]["mechanism"]}
        for sv in sig:
            cells = [by.get((k, sv)) for k in ks]
            mech.append(f"| {n} | {sv:g} | " + " | ".join(
                f"{fmt(m['retention'])} ({fmt(m['cross'])})" if m else "–" for m in cells) + " |")
            loc.append(f"| {n} | {sv:g} | " + " | ".join(
                f"{fmt(m['locality'])} ({fmt(m['off_contrast'], 3)})" if m else "–" for m in cells) + " |")
    mech += ["", *loc]
    return text + "\n\n" + "\n".join(mech) + "\n"


def figure(results: dict[str, Any], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    comps = results["compositions"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for name, data in comps.items():
        ks = [r["count"] for r in data["rows"]]
        axes[0].plot(ks, [r["detected"] for r in data["rows"]], "o-", label=name)
        rate = [r["perfect"]["rate"] for r in data["rows"]]
        lo = [r["perfect"]["ci95"][0] for r in data["rows"]]
        hi = [r["perfect"]["ci95"][1] for r in data["rows"]]
        axes[1].plot(ks, rate, "o-", label=name)
        axes[1].fill_between(ks, lo, hi, alpha=0.15)
        shown = sorted({m["sigma"] for m in data["mechanism"]}, key=lambda v: abs(v - 1.0))[:1]
        mech = [m for m in data["mechanism"] if m["sigma"] in shown]
        axes[2].plot([m["k"] for m in mech], [m["retention"] for m in mech], "o-", label=name)
    axes[0].plot([0, 10], [0, 10], "k:", lw=1, label="requested")
    axes[0].set(xlabel="objects requested k", ylabel="objects drawn (mean)", title="count vs k")
    axes[1].set(xlabel="objects requested k", ylabel="perfect rate (95 % CI)", title="perfect scenes",
                ylim=(-0.02, 1.02))
    axes[2].axhline(1.0, color="k", lw=0.8, ls=":")
    axes[2].set(xlabel="objects k", ylabel="object contrast kept", title="retention at sigma = 1")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def stage_report(out: Path, header: dict[str, Any], comps: list[dict[str, Any]], docs: Path | None) -> None:
    results = collect(out, comps)
    if not results["compositions"]:
        raise SystemExit(f"no evaluations under {out}: run --stage evaluate first")
    write_json(out / "results.json", results)
    table = markdown(results, header)
    (out / "results.md").write_text(table)
    figure(results, out / "background.png")
    print(table)
    if docs is not None:
        images = docs.parent / "img"
        images.mkdir(parents=True, exist_ok=True)
        shown = []
        if (out / "background.png").exists():
            shutil.copyfile(out / "background.png", images / "background.png")
            shown.append("![count, perfect rate and retention per background](img/background.png)")
        for name in results["compositions"]:
            grid = out / f"compose-{name}" / "seed0" / "grid.png"
            if grid.exists():
                shutil.copyfile(grid, images / f"background-{name}.png")
                shown.append(f"![{name}: seed 0, a row per k](img/background-{name}.png)")
        figures = "\n\n".join(shown)
        write_docs_block(docs, "background-results", f"Generated by `benchmarks/background.py --stage report` from "
                         f"{len(_seeds_of(results))} seeds per composition.\n\n{table}\n{figures}")


def _seeds_of(results: dict[str, Any]) -> set[str]:
    return {s for data in results["compositions"].values() for s in data["seeds"]}


def stage_ship(out: Path) -> None:
    dest = ROOT / "localscore" / "checkpoints"
    for shipped, name in BACKGROUND_MODELS.items():
        src = out / name / "seed0" / "model.pt"
        if not src.exists():
            raise SystemExit(f"{src} is missing: train seed 0 first")
        shutil.copyfile(src, dest / f"{shipped}.pt")
        log(f"shipped {src} -> {dest / (shipped + '.pt')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stage", default="all",
                    choices=["all", "train", "evaluate", "mechanism", "report", "archive", "ship"])
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--per-count", type=int, default=None, help="images per count (default: the config's)")
    ap.add_argument("--mechanism-images", type=int, default=16, help="scenes per k of the mechanism stage")
    ap.add_argument("--max-steps", type=int, default=None, help="train at most this many steps (smoke runs)")
    ap.add_argument("--docs", type=Path, default=None)
    ap.add_argument("--archive", type=Path, default=ROOT / "benchmarks" / "results" / "background")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    header, models, comps = read_config(args.config)
    seeds = _seeds(models, args.seeds)
    log(f"{args.stage}: {', '.join(models)}; seeds {seeds}; {machine_line()}")
    if args.stage in ("all", "train"):
        stage_train(args.out, models, seeds, args.max_steps)
    if args.stage in ("all", "evaluate"):
        stage_evaluate(args.out, models, comps, seeds, args.per_count, not args.no_plots)
    if args.stage in ("all", "mechanism"):
        stage_mechanism(args.out, models, comps, seeds, args.mechanism_images, header)
    if args.stage in ("all", "report"):
        stage_report(args.out, header, comps, args.docs)
    if args.stage == "archive":
        archive_results(args.out, args.archive)
    if args.stage == "ship":
        stage_ship(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
