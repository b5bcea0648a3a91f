"""Colour composition: does the orthogonality cosine of two colour concepts predict whether they compose?

A U-Net is trained on images of zero or one object, conditioned on the object's colour as a *concept* (no
position: :func:`localscore.lengthgen.data.color_concepts`, ``UNetConfig(token_positions=False)``), without
conditioner dropout, so its empty set is the model of object-free images. For each pair ``(a, b)`` of the 8
colours the projective composition over that empty background,

    D_hat(x, sigma) = D(x, sigma, none) + (D(x, sigma, {a}) - D(x, sigma, none))
                                        + (D(x, sigma, {b}) - D(x, sigma, none)),

is sampled, and each sample is classified by the detector (:func:`localscore.lengthgen.evaluate.detect_objects`,
validated on ground-truth renders here): ``both`` (exactly two objects, one of each colour: success), ``one``
(a single object of one of the two colours), ``hybrid`` (a single object of a third colour), ``none``,
``extra`` (both colours and more objects) or ``wrong``. The same pair given jointly, ``D(x, sigma, {a, b})``
(a set size the network never saw), is sampled as a contrast, and each colour alone as a check of the model.

The necessary condition of projective composition in a feature space ``z = A(x)`` is that the mean
differences ``d_i = E[A(x) | i] - E[A(x) | none]`` be orthogonal. Their cosine is measured on ground-truth
renders (:func:`localscore.metrics.feature_orthogonality`; every colour drawn in the same layouts, so only
the colour differs), in RGB pixels (``A`` the identity) and in the
network's own features (``A(x)`` the output of the U-Net's last middle block, ``mid2``, for input ``x`` at
noise level ``sigma`` and the empty set, recorded by :class:`localscore.adapters.diffusers.FeatureMap`), and
the rank correlation (Spearman) of success against cosine over the 28 pairs is reported.

Usage (from the repository root)::

    python benchmarks/color.py --out runs/color                          # every stage below
    python benchmarks/color.py --out runs/color --stage train --seeds 0
    python benchmarks/color.py --out runs/color --stage report --docs docs/color.md
    python benchmarks/color.py --out runs/color --stage archive         # -> benchmarks/results/color
    python benchmarks/color.py --out benchmarks/results/color --stage report --docs docs/color.md

Stages (each resumes what an earlier call left; ``all`` runs the first five):

* ``train``: the model of ``benchmarks/configs/color.json`` for every seed (``OUT/<model>/seed<k>/``);
* ``classifier``: the detector's colour classification on ground-truth renders of every pair and every
  single colour (``OUT/classifier.json``);
* ``evaluate``: singles, projective pairs and joint pairs per seed (``OUT/compose/seed<k>/eval.json``,
  ``matrix.png``, ``pairs.png``);
* ``orthogonality``: the cosine matrices in RGB (``OUT/orthogonality-rgb.json``) and in the features of each
  seed's network at several noise levels (``OUT/compose/seed<k>/orthogonality.json``);
* ``report``: ``OUT/results.md``, ``OUT/results.json``, the figure ``OUT/color.png`` and, with ``--docs``,
  the docs page;
* ``archive``: the small result files (no checkpoints) copied to ``--archive``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from _bench import archive_results, fmt, log, machine_line, pyplot, write_docs_block, write_json

from localscore.adapters.diffusers import FeatureMap
from localscore.lengthgen import ExperimentConfig, load_experiments, load_model, sampler, train_experiment
from localscore.lengthgen.data import COLORS, Scene, SceneConfig, color_concepts, render_scene, sample_scenes
from localscore.lengthgen.evaluate import Proportion, detect_objects
from localscore.metrics import feature_orthogonality
from localscore.train import run_lock

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "configs" / "color.json"
EVAL_SEED_OFFSET = 1000
"""Evaluation noise comes from ``seed + 1000``: never the training stream's seed."""
OUTCOMES = ("both", "one", "hybrid", "none", "extra", "wrong")
FEATURE_BLOCK = "mid2"
FEATURE_SIGMAS = (0.1, 0.5, 2.0)
PRIMARY_SIGMA = 0.5
SHOWN_PAIRS = (("yellow", "blue"), ("yellow", "red"))
"""The paper's example: yellow + blue composes, yellow + red does not."""


def pairs(colors: tuple[str, ...] = COLORS) -> list[tuple[str, str]]:
    """Every unordered pair of distinct colours, in palette order (28 for the 8 colours)."""
    return list(itertools.combinations(colors, 2))


def classify(found: Scene, b: int, wanted: tuple[str, ...]) -> str:
    """The outcome of image ``b`` of the detections ``found`` for the requested colours ``wanted``.

    One colour requested: ``both`` means exactly one object, of that colour (the check of the model).
    """
    colors = sorted(COLORS[int(c)] for c, v in zip(found.color[b], found.valid[b]) if v)
    want = sorted(wanted)
    if colors == want:
        return "both"
    if not colors:
        return "none"
    if len(colors) == 1:
        return "one" if colors[0] in want else "hybrid"
    if set(want) <= set(colors):
        return "extra"
    return "wrong"


def tally(found: Scene, wanted: tuple[str, ...]) -> dict[str, int]:
    """How many images of ``found`` fall in each outcome."""
    out = dict.fromkeys(OUTCOMES, 0)
    for b in range(found.batch_size):
        out[classify(found, b, wanted)] += 1
    return out


def _read(path: Path) -> tuple[dict[str, Any], ExperimentConfig]:
    header, exps = load_experiments(path)
    if len(exps) != 1:
        raise SystemExit(f"{path}: expected one experiment (the colour model), found {len(exps)}")
    exp = exps[0]
    if exp.scene_config().labelling != "color" or exp.network_config().token_positions is not False:
        raise SystemExit(f"{path}: the colour model must use labelling 'color' and token_positions false")
    return header, exp


def stage_train(out: Path, exp: ExperimentConfig, seeds: list[int], max_steps: int | None) -> None:
    for seed in seeds:
        t0 = time.perf_counter()
        train_experiment(exp, out / exp.name / f"seed{seed}", seed=seed, steps=max_steps, progress=False)
        log(f"train {exp.name} seed {seed}: {time.perf_counter() - t0:.0f} s ({machine_line()})")


def _trained(out: Path, exp: ExperimentConfig, seed: int) -> Any:
    path = out / exp.name / f"seed{seed}" / "model.pt"
    if not path.is_file():
        return None
    model = load_model(path)
    return model if model.meta.get("steps", 0) >= exp.train_config(seed).steps else None


def _truth(cfg: SceneConfig, colors: tuple[str, ...], n: int, seed: int) -> torch.Tensor:
    """``n`` ground-truth renders ``[n, 3, H, W]`` in ``[0, 1]`` of scenes holding one object per colour."""
    g = torch.Generator().manual_seed(seed)
    scene = sample_scenes(cfg.replace(counts=(len(colors),), labelling="all"), n, generator=g)
    if colors:
        idx = torch.tensor([COLORS.index(c) for c in colors]).expand(n, len(colors))
        scene = Scene(scene.pos, idx.clone(), scene.shape, scene.size, scene.valid, scene.resolution,
                      scene.texture)
    return render_scene(scene, cfg)


def stage_classifier(out: Path, exp: ExperimentConfig, n: int) -> None:
    """The detector on ground truth: the share of renders of each request classified ``both``."""
    if (out / "classifier.json").exists():
        return
    cfg = exp.scene_config()
    rows = {}
    for i, wanted in enumerate([(c,) for c in COLORS] + pairs()):
        found = detect_objects(_truth(cfg, wanted, n, seed=EVAL_SEED_OFFSET + i), cfg)
        rows["+".join(wanted)] = tally(found, wanted)
    correct = sum(r["both"] for r in rows.values())
    write_json(out / "classifier.json", {"per_request": n, "rows": rows, "correct": correct,
                                         "total": n * len(rows)})
    log(f"classifier: {correct} of {n * len(rows)} ground-truth renders classified correctly")


def stage_evaluate(out: Path, exp: ExperimentConfig, seeds: list[int], per_pair: int | None, plot: bool) -> None:
    n = per_pair or exp.per_count
    for seed in seeds:
        run = out / "compose" / f"seed{seed}"
        if (run / "eval.json").exists():
            continue
        model = _trained(out, exp, seed)
        if model is None:
            log(f"skip evaluate seed {seed}: the model has not finished training")
            continue
        with run_lock(run, where=f"color.py --stage evaluate (seed {seed})"):
            _evaluate_one(run, exp, model, seed, n, plot)


def _evaluate_one(run: Path, exp: ExperimentConfig, model: Any, seed: int, n: int, plot: bool) -> None:
    cfg = exp.scene_config()
    res = cfg.resolution
    kw = {"steps": exp.sampling_steps, "solver": exp.sampler, "sigma_min": exp.sigma_min,
          "sigma_max": exp.sigma_max}
    joint, projective = sampler(model, "joint", **kw), sampler(model, "projective", **kw)
    t0 = time.perf_counter()
    shown: dict[str, dict[str, torch.Tensor]] = {"single": {}, "projective": {}, "joint": {}}
    data: dict[str, Any] = {"seed": seed, "per_pair": n, "singles": {}, "projective": {}, "joint": {}}
    with torch.inference_mode():
        for i, c in enumerate(COLORS):
            g = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET + 100 * i)
            img = joint(color_concepts([[c]] * n, res), g)
            data["singles"][c] = tally(detect_objects(img, cfg), (c,))
            shown["single"][c] = img
        for i, (a, b) in enumerate(pairs()):
            key = f"{a}+{b}"
            for method, fn in (("projective", projective), ("joint", joint)):
                g = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET + 10_000 + 100 * i)
                img = fn(color_concepts([[a, b]] * n, res), g)
                data[method][key] = tally(detect_objects(img, cfg), (a, b))
                shown[method][key] = img
    data["seconds"] = round(time.perf_counter() - t0, 1)
    data["machine"] = machine_line()
    write_json(run / "eval.json", data)
    if plot:
        _matrix(run / "matrix.png", shown)
        _pair_grid(run / "pairs.png", shown["projective"])
    log(f"evaluate seed {seed}: {data['seconds']:.0f} s")


def _show(ax: Any, img: torch.Tensor) -> None:
    ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _matrix(path: Path, shown: dict[str, dict[str, torch.Tensor]]) -> None:
    """An 8 x 8 grid of first samples: each colour alone on the diagonal, projective pairs above, joint below."""
    plt = pyplot()
    if plt is None:
        return
    N = len(COLORS)
    fig, axes = plt.subplots(N, N, figsize=(1.1 * N, 1.1 * N), squeeze=False)
    for i, a in enumerate(COLORS):
        for j, b in enumerate(COLORS):
            if i == j:
                img = shown["single"][a][0]
            elif i < j:
                img = shown["projective"][f"{a}+{b}"][0]
            else:
                img = shown["joint"][f"{b}+{a}"][0]
            _show(axes[i][j], img)
            if j == 0:
                axes[i][j].set_ylabel(a, fontsize=7)
            if i == 0:
                axes[i][j].set_title(b, fontsize=7)
    fig.suptitle("diagonal: one colour; above: projective pair; below: joint pair", fontsize=8)
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _pair_grid(path: Path, images: dict[str, torch.Tensor], cols: int = 6) -> None:
    """A row of projective samples per pair."""
    plt = pyplot()
    if plt is None:
        return
    keys = list(images)
    n = min(cols, min(len(v) for v in images.values()))
    fig, axes = plt.subplots(len(keys), n, figsize=(0.9 * n + 0.9, 0.9 * len(keys)), squeeze=False)
    for r, key in enumerate(keys):
        for j in range(n):
            _show(axes[r][j], images[key][j])
        axes[r][0].set_ylabel(key, fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.1)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _feature_block(denoiser: torch.nn.Module) -> str:
    names = [n for n, _ in denoiser.named_modules() if n.split(".")[-1] == FEATURE_BLOCK]
    if len(names) != 1:
        raise SystemExit(f"expected one block named {FEATURE_BLOCK!r} in the denoiser, found {names}")
    return names[0]


def _cosines(result: Any) -> dict[str, float]:
    return {f"{a}+{b}": float(result.cosine[COLORS.index(a), COLORS.index(b)]) for a, b in pairs()}


def stage_orthogonality(out: Path, exp: ExperimentConfig, seeds: list[int], n: int, sigmas: tuple[float, ...]
                        ) -> None:
    cfg = exp.scene_config()
    # Common random numbers: every colour is rendered in the same n layouts, so the cosines compare colours,
    # not two samples of places (in RGB, flat colours give exactly cos(f_a - bg, f_b - bg) then).
    concept = [_truth(cfg, (c,), n, seed=2 * EVAL_SEED_OFFSET) for c in COLORS]
    empty = _truth(cfg, (), n, seed=2 * EVAL_SEED_OFFSET - 1)
    if not (out / "orthogonality-rgb.json").exists():
        rgb = feature_orthogonality(concept, empty, samples=True, labels=COLORS)
        write_json(out / "orthogonality-rgb.json", {"images": n, "cosine": _cosines(rgb),
                                                    "matrix": rgb.cosine.tolist(), "norms": rgb.norms.tolist()})
    for seed in seeds:
        path = out / "compose" / f"seed{seed}" / "orthogonality.json"
        if path.exists():
            continue
        model = _trained(out, exp, seed)
        if model is None:
            log(f"skip orthogonality seed {seed}: the model has not finished training")
            continue
        D = model.denoiser
        fmap = FeatureMap(D, D, _feature_block(D))
        rows = {}
        t0 = time.perf_counter()
        for sigma in sigmas:
            def features(x: torch.Tensor, sigma: float = sigma, fmap: FeatureMap = fmap) -> torch.Tensor:
                x = x * 2 - 1  # the network's data range
                return fmap(x, sigma, color_concepts([[]] * x.shape[0], cfg.resolution)).flatten(1)

            with torch.inference_mode():
                res = feature_orthogonality(concept, empty, features, samples=True, labels=COLORS)
            rows[f"{sigma:g}"] = {"cosine": _cosines(res), "matrix": res.cosine.tolist()}
        write_json(path, {"seed": seed, "block": FEATURE_BLOCK, "images": n, "sigmas": rows,
                          "seconds": round(time.perf_counter() - t0, 1)})
        log(f"orthogonality seed {seed}: {time.perf_counter() - t0:.0f} s")


# ---------------------------------------------------------------------------------------------- report
def _spearman(x: list[float], y: list[float]) -> tuple[float, float]:
    from scipy.stats import spearmanr
    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan"), float("nan")
    r = spearmanr(x, y)
    return float(r.statistic), float(r.pvalue)


def _prop(tallies: list[dict[str, int]], outcome: str = "both") -> dict[str, Any]:
    p = Proportion(sum(t[outcome] for t in tallies), sum(sum(t.values()) for t in tallies))
    return {"successes": p.successes, "trials": p.trials, "rate": p.rate if p.trials else None,
            "ci95": list(p.interval())}


def collect(out: Path) -> dict[str, Any]:
    """Every result under ``out``, pooled over seeds."""
    evals = [json.loads(p.read_text()) for p in sorted(out.glob("compose/seed*/eval.json"))]
    orth = [json.loads(p.read_text()) for p in sorted(out.glob("compose/seed*/orthogonality.json"))]
    rgb_path = out / "orthogonality-rgb.json"
    rgb = json.loads(rgb_path.read_text())["cosine"] if rgb_path.exists() else {}
    clf_path = out / "classifier.json"
    classifier = json.loads(clf_path.read_text()) if clf_path.exists() else None
    sigmas = sorted({s for o in orth for s in o["sigmas"]}, key=float)
    rows = []
    for a, b in pairs():
        key = f"{a}+{b}"
        row: dict[str, Any] = {"pair": key, "rgb_cosine": rgb.get(key)}
        for method in ("projective", "joint"):
            tallies = [e[method][key] for e in evals if key in e[method]]
            row[method] = _prop(tallies)
            row[method + "_outcomes"] = {o: sum(t[o] for t in tallies) for o in OUTCOMES}
            row[method + "_per_seed"] = [t["both"] / max(1, sum(t.values())) for t in tallies]
        row["feature_cosine"] = {s: _mean([o["sigmas"][s]["cosine"][key] for o in orth if s in o["sigmas"]])
                                 for s in sigmas}
        rows.append(row)
    singles = {c: _prop([e["singles"][c] for e in evals]) for c in COLORS} if evals else {}
    correlations: dict[str, Any] = {}
    for method in ("projective", "joint"):
        success = [r[method]["rate"] for r in rows]
        if any(v is None for v in success):
            continue
        spaces: dict[str, list[float]] = {}
        if rgb:
            spaces["rgb"] = [r["rgb_cosine"] for r in rows]
        for s in sigmas:
            spaces[f"features sigma={s}"] = [r["feature_cosine"][s] for r in rows]
        # the necessary condition is d_a . d_b ~ 0, so |cosine| is the natural predictor; the signed cosine too
        correlations[method] = {}
        for name, cos in spaces.items():
            correlations[method][name] = dict(zip(("rho", "p"), _spearman(cos, success)))
            correlations[method][name + " |cos|"] = dict(zip(("rho", "p"), _spearman([abs(c) for c in cos],
                                                                                    success)))
    return {"seeds": [e["seed"] for e in evals], "per_pair": evals[0]["per_pair"] if evals else None,
            "classifier": classifier, "singles": singles, "pairs": rows, "feature_sigmas": sigmas,
            "spearman": correlations, "seconds": [e["seconds"] for e in evals],
            "machine": [e["machine"] for e in evals]}


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def _primary(results: dict[str, Any]) -> str | None:
    sig = results["feature_sigmas"]
    if not sig:
        return None
    return min(sig, key=lambda s: abs(float(s) - PRIMARY_SIGMA))


def markdown(results: dict[str, Any]) -> str:
    s0 = _primary(results)
    lines = []
    clf = results["classifier"]
    if clf:
        lines += [f"Detector check on ground truth: {clf['correct']} of {clf['total']} renders ({clf['per_request']} "
                  "per single colour and per pair) classified correctly.", ""]
    if results["singles"]:
        lines += ["Each colour alone (one object of that colour, pooled over seeds): " + ", ".join(
            f"{c} {fmt(p['rate'])}" for c, p in results["singles"].items()) + ".", ""]
    lines += ["| pair | RGB cosine | feature cosine (sigma = " + (s0 or "–") + ") | projective: both [95 % CI] | "
              "one · hybrid · none · extra · wrong | joint: both |", "|---|---|---|---|---|---|"]
    for r in results["pairs"]:
        p = r["projective"]
        lo, hi = p["ci95"]
        o = r["projective_outcomes"]
        lines.append(f"| {r['pair']} | {fmt(r['rgb_cosine'])} | {fmt(r['feature_cosine'].get(s0) if s0 else None)} | "
                     f"{fmt(p['rate'])} [{lo:.2f}, {hi:.2f}] | {o['one']} · {o['hybrid']} · {o['none']} · "
                     f"{o['extra']} · {o['wrong']} | {fmt(r['joint']['rate'])} |")
    lines += ["", "Spearman rank correlation of success (both colours drawn) with the cosine, over the 28 pairs:", "",
              "| sampling | cosine | rho | p |", "|---|---|---|---|"]
    for method, spaces in results["spearman"].items():
        for name, v in spaces.items():
            lines.append(f"| {method} | {name} | {fmt(v['rho'])} | {fmt(v['p'], 3)} |")
    return "\n".join(lines) + "\n"


def figure(results: dict[str, Any], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    s0 = _primary(results)
    panels = [("RGB", "rgb_cosine", None)] + ([(f"features (mid2, sigma = {s0})", "feature_cosine", s0)] if s0 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    shown = {f"{a}+{b}" for a, b in SHOWN_PAIRS}
    for ax, (title, key, sub) in zip(axes[0], panels):
        for r in results["pairs"]:
            cos = r[key] if sub is None else r[key].get(sub)
            if cos is None:
                continue
            rate = r["projective"]["rate"]
            lo, hi = r["projective"]["ci95"]
            hot = r["pair"] in shown
            err = [[max(0.0, rate - lo)], [max(0.0, hi - rate)]]  # Wilson bounds may miss 0 and 1 by rounding
            ax.errorbar([cos], [rate], yerr=err, fmt="o", ms=5 if hot else 3,
                        color="C3" if hot else "C0", alpha=1.0 if hot else 0.6, lw=0.8)
            if hot:  # the paper's two pairs; the table names the others
                ax.annotate(r["pair"], (cos, rate), fontsize=8, xytext=(4, 3), textcoords="offset points",
                            color="C3")
        rho = results["spearman"].get("projective", {}).get("rgb" if sub is None else f"features sigma={sub}")
        label = f" (Spearman rho = {fmt(rho['rho'])})" if rho else ""
        ax.set(xlabel="cosine of the mean differences d_a, d_b", ylabel="both colours drawn (95 % CI)",
               title=title + label, ylim=(-0.03, 1.03))
        ax.axvline(0.0, color="k", lw=0.6, ls=":")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def stage_report(out: Path, docs: Path | None) -> None:
    results = collect(out)
    if not results["seeds"]:
        raise SystemExit(f"no evaluations under {out}: run --stage evaluate first")
    write_json(out / "results.json", results)
    table = markdown(results)
    (out / "results.md").write_text(table)
    figure(results, out / "color.png")
    print(table)
    if docs is None:
        return
    images = docs.parent / "img"
    images.mkdir(parents=True, exist_ok=True)
    shown = []
    if (out / "color.png").exists():
        shutil.copyfile(out / "color.png", images / "color.png")
        shown.append("![success against the orthogonality cosine, per pair](img/color.png)")
    for name, what in (("matrix", "seed 0: each colour alone (diagonal), projective pairs (above), joint pairs "
                                  "(below)"), ("pairs", "seed 0: six projective samples per pair")):
        grid = out / "compose" / "seed0" / f"{name}.png"
        if grid.exists():
            shutil.copyfile(grid, images / f"color-{name}.png")
            shown.append(f"![{what}](img/color-{name}.png)")
    figures = "\n\n".join(shown)
    write_docs_block(docs, "color-results", f"Generated by `benchmarks/color.py --stage report` from "
                     f"{len(results['seeds'])} seeds, {results['per_pair']} samples per pair and seed.\n\n"
                     f"{table}\n{figures}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stage", default="all",
                    choices=["all", "train", "classifier", "evaluate", "orthogonality", "report", "archive"])
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--per-pair", type=int, default=None, help="samples per pair and seed (default: per_count)")
    ap.add_argument("--truth-images", type=int, default=64,
                    help="ground-truth renders per colour (orthogonality) and per request (classifier)")
    ap.add_argument("--max-steps", type=int, default=None, help="train at most this many steps (smoke runs)")
    ap.add_argument("--docs", type=Path, default=None)
    ap.add_argument("--archive", type=Path, default=ROOT / "benchmarks" / "results" / "color")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    header, exp = _read(args.config)
    seeds = [s for s in exp.seeds if args.seeds is None or s in args.seeds]
    sigmas = tuple(float(s) for s in header.get("feature_sigmas", FEATURE_SIGMAS))
    log(f"{args.stage}: {exp.name}; seeds {seeds}; {machine_line()}")
    if args.stage in ("all", "train"):
        stage_train(args.out, exp, seeds, args.max_steps)
    if args.stage in ("all", "classifier"):
        stage_classifier(args.out, exp, args.truth_images)
    if args.stage in ("all", "evaluate"):
        stage_evaluate(args.out, exp, seeds, args.per_pair, not args.no_plots)
    if args.stage in ("all", "orthogonality"):
        stage_orthogonality(args.out, exp, seeds, args.truth_images, sigmas)
    if args.stage in ("all", "report"):
        stage_report(args.out, args.docs)
    if args.stage == "archive":
        archive_results(args.out, args.archive)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
