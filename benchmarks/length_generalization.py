"""Length generalization, reproduced: train on 1-3 objects, evaluate on 0..10, relate to locality.

Usage (from the repository root)::

    python benchmarks/length_generalization.py --config benchmarks/configs/quick.json --out runs/quick
    python benchmarks/length_generalization.py --config benchmarks/configs/full.json --out runs/full
    python benchmarks/length_generalization.py ... --stage train --only local-all --seeds 0
    python benchmarks/length_generalization.py ... --stage report --docs docs/results.md
    python benchmarks/length_generalization.py ... --stage archive          # keep the results in the repository
    python benchmarks/length_generalization.py ... --out benchmarks/results/full --stage report --docs docs/results.md

Stages (``--stage all`` runs them in order; every stage resumes what an earlier call left):

* ``train``: every experiment and seed of the config (``OUT/<name>/seed<k>/``: ``checkpoint.pt``,
  ``log.jsonl``, ``model.pt``), resumable at any moment;
* ``evaluate``: every trained model with each of its test-time methods over counts 0..10
  (``OUT/<name>/seed<k>/eval-<method>.json``, sample grids ``grid-<method>.png``);
* ``locality``: conditional locality index and effective pixel radius of each model across sigma
  (``OUT/<name>/seed<k>/locality.json``);
* ``report``: the tables (``OUT/results.json``, ``OUT/results.md``), the locality-vs-generalization plot
  (``OUT/locality_vs_generalization.png``) and, with ``--docs PATH``, the docs results page.

``status`` lists, per experiment and seed, the steps trained, the methods evaluated and whether locality
was measured. Two maintainer stages are not part of ``all`` either: ``ship`` writes the package's demo
checkpoints from seed 0 of their experiments, and ``archive`` copies every run's small result files
(``experiment.json``, the ``eval-*.json``, ``locality.json``, the sample grids and the training log,
without checkpoints) into ``--archive`` (default ``benchmarks/results/<mode>``). The archive has the run
directory's layout, so the report can be regenerated from it alone (``--out ARCHIVE --stage report``) and
seeds run in different sessions or on different machines add up: runs directories are scratch space, the
archive is the record.

Each run folder has one writer at a time: ``train``, ``evaluate`` and ``locality`` hold its lock
(``OUT/<name>/seed<k>/.lock``, :func:`localscore.train.run_lock`) while they read and write it, so a second
process on the same folder is refused at once with one line naming the first one's pid (exit 2), instead of
computing the same results and overwriting them.

Models whose training stopped short of ``train.steps`` (``--max-minutes``) are evaluated as they are and
reported with the steps they actually ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _bench import atomic_write, write_json

from localscore import LocalScoreError
from localscore.lengthgen import ExperimentConfig, LocalityProfile, load_experiments
from localscore.train import remove_stale_temps, run_lock

ROOT = Path(__file__).resolve().parents[1]




def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)




def _runs(exps: list[ExperimentConfig], only: list[str] | None,
          seeds: list[int] | None) -> list[tuple[ExperimentConfig, int]]:
    out = []
    for e in exps:
        if only and e.name not in only:
            continue
        for s in e.seeds:
            if seeds is not None and s not in seeds:
                continue
            out.append((e, s))
    return out


def stage_train(runs: list[tuple[ExperimentConfig, int]], out: Path, args: argparse.Namespace) -> None:
    from localscore.lengthgen import train_experiment

    for exp, seed in runs:
        run_dir = out / exp.name / f"seed{seed}"
        steps = None
        if args.max_minutes is not None:
            steps = _steps_within(exp, seed, run_dir, args.max_minutes)
        _log(f"train {exp.name} seed {seed} -> {run_dir}" + (f" (until step {steps})" if steps else ""))
        train_experiment(exp, run_dir, seed=seed, steps=steps, progress=args.progress, log=_log)


def _steps_within(exp: ExperimentConfig, seed: int, run_dir: Path, minutes: float) -> int:
    """Train for about ``minutes`` more, measured from a first short burst."""
    from localscore.lengthgen import train_experiment

    probe = min(exp.train_config(seed).steps, _done(run_dir) + 5)
    t0 = time.perf_counter()
    train_experiment(exp, run_dir, seed=seed, steps=probe, progress=False)
    per_step = (time.perf_counter() - t0) / 5
    return min(exp.train_config(seed).steps, probe + int(minutes * 60 / max(per_step, 1e-3)))


def _log_records(run_dir: Path) -> list[dict[str, Any]] | None:
    """The records of ``run_dir/log.jsonl`` (``None`` if there is no log)."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _done(run_dir: Path) -> int:
    return max((r["step"] for r in _log_records(run_dir) or []), default=0)


EVAL_SEED = 1000
"""Seed of the requested test layouts (the same for every model) and of the sampler noise."""
GRID_COUNTS = (1, 3, 5, 8, 10)


def _model_for(run_dir: Path) -> Any:
    from localscore.lengthgen import load_model

    if (run_dir / "model.pt").is_file():
        return load_model(run_dir / "model.pt")
    if (run_dir / "checkpoint.pt").is_file():
        return load_model(run_dir / "checkpoint.pt")
    return None


def stage_evaluate(runs: list[tuple[ExperimentConfig, int]], out: Path, args: argparse.Namespace) -> None:
    from localscore.lengthgen import evaluate_model

    for exp, seed in runs:
        run_dir = out / exp.name / f"seed{seed}"
        if not run_dir.is_dir():
            _log(f"skip {exp.name} seed {seed}: not trained")
            continue
        # One writer per run folder: a second evaluate (or locality, or train) on it is refused, naming the pid.
        with run_lock(run_dir, where=f"length_generalization --stage evaluate ({exp.name} seed {seed})"):
            remove_stale_temps(run_dir)
            _evaluate_run(exp, seed, run_dir, args, evaluate_model)


def _evaluate_run(exp: ExperimentConfig, seed: int, run_dir: Path, args: argparse.Namespace,
                  evaluate_model: Callable[..., Any]) -> None:
    """The evaluations of one run folder (called holding its lock)."""
    model = _model_for(run_dir)
    if model is None:
        _log(f"skip {exp.name} seed {seed}: not trained")
        return
    steps_trained = int(model.meta.get("steps", 0))
    for method in exp.methods:
        if args.methods and method not in args.methods:
            continue
        target = run_dir / f"eval-{method}.json"
        if target.exists() and not args.force:
            old = json.loads(target.read_text())
            if old.get("meta", {}).get("train_steps") == steps_trained:
                continue
        per_count = args.per_count or exp.per_count
        _log(f"evaluate {exp.name} seed {seed} ({method}, {per_count} per count, {steps_trained} steps)")
        t0 = time.perf_counter()
        keep: list[torch.Tensor] = []
        res = evaluate_model(model, method, counts=exp.eval_counts, per_count=per_count, seed=EVAL_SEED,
                             steps=exp.sampling_steps, solver=exp.sampler, mask_radius=exp.mask_radius,
                             crop=exp.crop, batch_size=args.batch_size, progress=args.progress, keep_images=keep,
                             meta={"experiment": exp.name, "train_seed": seed, "train_steps": steps_trained,
                                   "model": exp.model, "torch": torch.__version__,
                                   "threads": torch.get_num_threads()})
        d = res.to_dict()
        d["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(target, d)
        _grid(run_dir / f"grid-{method}.png", torch.cat(keep), model, exp, per_count,
              f"{exp.name} ({method}), seed {seed}, {steps_trained} steps")


def _grid(path: Path, images: torch.Tensor, model: Any, exp: ExperimentConfig, per_count: int, title: str) -> None:
    from localscore.lengthgen.evaluate import request_scenes

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    counts = list(exp.eval_counts)
    req = request_scenes(model.scene.replace(counts=tuple(counts), labelling="all"), counts, per_count,
                         seed=EVAL_SEED)
    rows = [c for c in GRID_COUNTS if c in counts] or counts[:5]
    cols = min(per_count, 4)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.1 * cols, 1.15 * len(rows)), squeeze=False)
    for i, c in enumerate(rows):
        for k in range(cols):
            idx = counts.index(c) * per_count + k
            ax = axes[i, k]
            ax.imshow(images[idx].permute(1, 2, 0).numpy(), interpolation="nearest")
            pos = req.pos[idx][req.valid[idx]]
            ax.plot(pos[:, 1].numpy(), pos[:, 0].numpy(), "+", color="white", ms=3, mew=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(f"{c}", fontsize=8)
    fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def _save_fig(fig: Any, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))


def _read_locality(path: Path) -> LocalityProfile:
    """A ``locality.json`` (the schema of ``LocalityProfile.to_dict``, or the 0.1 files of the archive)."""
    return LocalityProfile.from_dict(json.loads(path.read_text()))


def stage_locality(runs: list[tuple[ExperimentConfig, int]], out: Path, args: argparse.Namespace) -> None:
    from localscore.lengthgen import locality_profile

    for exp, seed in runs:
        run_dir = out / exp.name / f"seed{seed}"
        if not run_dir.is_dir():
            continue
        with run_lock(run_dir, where=f"length_generalization --stage locality ({exp.name} seed {seed})"):
            remove_stale_temps(run_dir)
            model = _model_for(run_dir)
            if model is None:
                continue
            target = run_dir / "locality.json"
            steps_trained = int(model.meta.get("steps", 0))
            if target.exists() and not args.force and \
                    _read_locality(target).meta.get("train_steps") == steps_trained:
                continue
            _log(f"locality {exp.name} seed {seed}")
            prof = locality_profile(model.denoiser, model.scene, count=4, n_images=args.locality_images,
                                    seed=EVAL_SEED)
            prof.meta["train_steps"] = steps_trained
            write_json(target, prof.to_dict())


def _reference(exp: ExperimentConfig, per_count: int) -> Any:
    """The detector on ground-truth renders of the same requested layouts: the ceiling of every table."""
    from localscore.lengthgen.data import render_scene
    from localscore.lengthgen.evaluate import detect_objects, evaluate_counts, request_scenes

    cfg = exp.eval_scene_config()
    req = request_scenes(cfg, list(exp.eval_counts), per_count, seed=EVAL_SEED)
    return evaluate_counts(detect_objects(render_scene(req, cfg), cfg), req, meta={"experiment": "ground truth"})


def stage_report(exps: list[ExperimentConfig], header: dict[str, Any], out: Path, args: argparse.Namespace) -> None:
    from localscore.lengthgen.evaluate import EvaluationResult, SeedTable, comparison_table

    rows: list[dict[str, Any]] = []
    tables: dict[str, Any] = {}
    for exp in exps:
        for method in exp.methods:
            results, seeds, steps, seconds, loc = [], [], [], [], []
            for seed in exp.seeds:
                run_dir = out / exp.name / f"seed{seed}"
                f = run_dir / f"eval-{method}.json"
                if not f.exists():
                    continue
                r = EvaluationResult.from_dict(json.loads(f.read_text()))
                results.append(r)
                seeds.append(seed)
                steps.append(int(r.meta.get("train_steps", 0)))
                lf = run_dir / "locality.json"
                if lf.exists():
                    loc.append(_read_locality(lf))
                recs = _log_records(run_dir)
                if recs is not None:
                    tc = exp.train_config(seed)
                    seconds.append(sum(tc.log_every * tc.batch_size / x["images_per_s"]
                                       for x in recs if x.get("images_per_s")))
            if not results:
                continue
            key = f"{exp.name} / {method}"
            table = SeedTable.from_results(results)
            tables[key] = table
            summary_loc = None
            if loc:
                summary_loc = {"conditional_index": sum(p.mean_index for p in loc) / len(loc),
                               "pixel_radius_90": sum(p.mean_pixel_radius for p in loc) / len(loc)}
            rows.append({"key": key, "experiment": exp.name, "method": method, "model": exp.model,
                         "note": exp.note, "seeds": seeds, "train_steps": steps,
                         "planned_steps": exp.train_config(exp.seeds[0]).steps,
                         "batch_size": exp.train_config(exp.seeds[0]).batch_size,
                         "train_wall_seconds": [round(s, 0) if s else None for s in seconds],
                         "locality": summary_loc, "table": table.to_dict()})
    if not rows:
        _log("report: nothing evaluated yet")
        return
    ref_exp = exps[0]
    per_count = args.per_count or ref_exp.per_count
    reference = _reference(ref_exp, per_count)
    counts = list(ref_exp.eval_counts)
    perfect = comparison_table({"ground truth (detector ceiling)": reference, **tables}, "perfect", counts=counts)
    exact = comparison_table({"ground truth (detector ceiling)": reference, **tables}, "exact_count", counts=counts)
    recall = comparison_table({"ground truth (detector ceiling)": reference, **tables}, "recall",
                              counts=[c for c in counts if c > 0])
    detail = "\n\n".join(f"#### {k}\n\n{t.to_markdown()}" for k, t in tables.items())
    loc_lines = ["| model / method | seeds | steps trained | perfect on 1..3 (trained) | conditional locality index "
                 "| pixel radius r90 (px) | perfect, mean over 4..10 | recall, mean over 4..10 |",
                 "|---|---|---|---|---|---|---|---|"]
    points = []
    plotted: set[str] = set()
    def mean_rate(t: Any, metric: str, lo: int, hi: int) -> float:
        """Mean of the pooled ``metric`` rate over the counts ``lo..hi`` (NaN if none)."""
        vals = [getattr(row, metric).rate for row in t.pooled if lo <= row.count <= hi]
        return sum(vals) / len(vals) if vals else float("nan")

    for r in rows:
        t = tables[r["key"]]
        gen = r["perfect_4_10"] = mean_rate(t, "perfect", 4, 10)
        trained_rate = r["perfect_1_3"] = mean_rate(t, "perfect", 1, 3)
        r["recall_4_10"] = mean_rate(t, "recall", 4, 10)
        flag = " (undertrained)" if mean_rate(t, "recall", 1, 3) < 0.5 else ""
        li = r["locality"]
        loc_lines.append(f"| {r['key']} | {len(r['seeds'])} | {', '.join(map(str, r['train_steps']))} | "
                         f"{trained_rate:.2f}{flag} | "
                         f"{'–' if not li else format(li['conditional_index'], '.3f')} | "
                         f"{'–' if not li else format(li['pixel_radius_90'], '.1f')} | {gen:.2f} | "
                         f"{r['recall_4_10']:.2f} |")
        if li and r["experiment"] not in plotted:  # one point per model: its first test-time method
            plotted.add(r["experiment"])
            points.append((r["key"] + flag, li["conditional_index"], r["recall_4_10"], li["pixel_radius_90"]))
    md = "\n".join([
        f"## Length generalization ({header.get('mode', '?')} mode)",
        "",
        str(header.get("description", "")),
        "",
        "### Perfect rate per requested object count (pooled over seeds)",
        "",
        "'Perfect': the detector finds exactly the requested number of objects and each requested object is "
        "matched (Hungarian matching) to a detection at its place (within 0.1 x image side) in its colour. "
        "Training used 1-3 objects.",
        "",
        perfect,
        "",
        "### Exact-count accuracy",
        "",
        exact,
        "",
        "### Recall: share of the requested objects drawn at their place in their colour",
        "",
        "With labelling `one` the training images hold unlabelled objects (clutter) besides the labelled one, "
        "so the learned conditional distributions draw extra objects too and the composed samples keep some: "
        "exact count and perfect rate are not the goal there, recall is (each requested object present). "
        "An exact sampler of the training distribution given one labelled object draws 1, 2 or 3 objects with "
        "equal probability, so even it is perfect on 1 requested object only a third of the time. "
        "Recall counts per object, pooled over images.",
        "",
        recall,
        "",
        "### Locality and generalization",
        "",
        "A model whose recall on the trained counts 1..3 is below 0.5 (it does not even draw the objects it was "
        "trained on) is marked *undertrained*: its failures at higher counts say nothing about length "
        "generalization. A low perfect rate with a high recall on 1..3 means extra objects (clutter, or the "
        "unconditional background's objects kept by masked composition), not undertraining. The conditional "
        "locality index is the share of an object's influence (ablation) within 0.2 x image side of it, "
        "averaged over sigma in {0.05, 0.2, 0.5, 1, 2}; r90 is the radius holding 90 % of the input-pixel "
        "Jacobian mass.",
        "",
        "\n".join(loc_lines),
        "",
        "### Per-model tables (pooled rate [Wilson 95 % interval] (mean ± sd over seeds))",
        "",
        detail,
        "",
    ])
    results = {"header": header, "eval_seed": EVAL_SEED, "rows": rows, "reference": reference.to_dict()}
    write_json(out / "results.json", results)
    atomic_write(out / "results.md", lambda f: f.write(md.encode()))
    _plot(out / "locality_vs_generalization.png", points)
    _log(f"wrote {out / 'results.json'}, {out / 'results.md'}")
    if args.docs:
        _docs_page(Path(args.docs), md, rows, out, header)


def _plot(path: Path, points: list[tuple[str, float, float, float]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    markers = "os^vD<>ph*"
    for i, (name, x, y, r) in enumerate(points):  # a legend, not annotations: the points crowd near (1, 1)
        hollow = "undertrained" in name
        color = f"C{i % 10}"
        label = name.replace(" (undertrained)", "") + (" (undertrained)" if hollow else "") + f", r90 {r:.0f} px"
        ax.scatter([x], [y], s=36, marker=markers[i % len(markers)], facecolors="none" if hollow else color,
                   edgecolors=color, label=label, alpha=0.85)
    if points:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("conditional locality index (share of an object's influence near it)")
    ax.set_ylabel("recall, mean over 4..10 objects")
    xs = [p[1] for p in points] or [1.0]
    ys = [p[2] for p in points if p[2] == p[2]] or [1.0]
    ax.set_xlim(min(0.9, min(xs) - 0.02), 1.0)   # the models cluster near 1: zoom to where they are
    ax.set_ylim(min(0.5, min(ys) - 0.05), 1.03)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)


def _docs_page(page: Path, md: str, rows: list[dict[str, Any]], out: Path, header: dict[str, Any]) -> None:
    """Write this mode's section of the docs results page (``results/<mode>-section.txt`` next to the page, with the
    plot and the sample grids), then the page itself: a header and every mode's section (full before quick)."""
    assets = page.parent / "results"
    mode = str(header.get("mode", "run"))
    lines = [
        f"Generated on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from `{out}` by "
        f"`python benchmarks/length_generalization.py --config ... --stage report --docs {page.name}`.",
        "",
        md,
    ]
    plot = out / "locality_vs_generalization.png"
    if plot.exists():
        name = f"{mode}-locality_vs_generalization.png"
        data = plot.read_bytes()
        atomic_write(assets / name, lambda f: f.write(data))
        lines += ["### Locality vs generalization", "", f"![locality vs generalization](results/{name})", ""]
    grids = []
    for r in rows:
        for seed in r["seeds"][:1]:
            g = out / r["experiment"] / f"seed{seed}" / f"grid-{r['method']}.png"
            if g.exists():
                name = f"{mode}-{r['experiment']}-{r['method']}.png"
                data = g.read_bytes()
                atomic_write(assets / name, lambda f, d=data: f.write(d))
                grids.append(f"![{r['key']}](results/{name})")
    if grids:
        lines += ["### Samples (rows: 1, 3, 5, 8, 10 objects; + marks the requested positions)", "", *grids, ""]
    section = "\n".join(lines).encode()
    atomic_write(assets / f"{mode}-section.txt", lambda f: f.write(section))
    order = {"full": 0, "quick": 1}
    sections = sorted(assets.glob("*-section.txt"), key=lambda p: (order.get(p.name.split("-")[0], 2), p.name))
    text = "\n".join([
        "# Results",
        "",
        "<!-- Generated by benchmarks/length_generalization.py --stage report --docs; do not edit by hand. -->",
        "",
        "Every number on this page was measured by the benchmark run named in its section; the steps each "
        "model actually trained are listed (runs cut short by a time budget are reported as they are, and "
        "experiments of a config that have not been run are absent).",
        "",
        *(p.read_text(encoding="utf-8") + "\n" for p in sections),
    ]).encode()
    atomic_write(page, lambda f: f.write(text))
    _log(f"wrote {page}")


def stage_ship(exps: list[ExperimentConfig], out: Path) -> None:
    """Write the shipped model files ``localscore/checkpoints/{local-32,baseline-32}.pt`` from seed 0 of their
    experiments (the latest of ``model.pt`` and ``checkpoint.pt``; the steps actually run are recorded)."""
    from localscore.lengthgen import DEMO_EXPERIMENTS, checkpoint_dir, load_model, save_model

    by = {e.name: e for e in exps}
    for name, exp_name in DEMO_EXPERIMENTS.items():
        exp = by.get(exp_name)
        if exp is None:
            raise SystemExit(f"ship: the config has no experiment {exp_name!r} (for {name})")
        run_dir = out / exp_name / f"seed{exp.seeds[0]}"
        model = _model_for(run_dir)
        if model is None:
            raise SystemExit(f"ship: {run_dir} holds no trained model")
        if (run_dir / "checkpoint.pt").is_file():
            ck = load_model(run_dir / "checkpoint.pt")
            if int(ck.meta["steps"]) > int(model.meta.get("steps", 0)):
                model = ck
        meta = dict(model.meta)
        meta.update({"experiment": exp.to_dict(), "seed": exp.seeds[0], "batch_size": exp.train_config(0).batch_size,
                     "parameters": sum(p.numel() for p in model.denoiser.parameters()), "shipped_as": name})
        target = checkpoint_dir() / f"{name}.pt"
        save_model(target, model.denoiser, exp.model, model.network, model.scene, meta,
                   enforce_radius=exp.enforce_radius)
        _log(f"ship {name}: {exp_name} seed {exp.seeds[0]}, {meta['steps']} steps -> {target} "
             f"({target.stat().st_size / 1e6:.2f} MB)")


def stage_status(runs: list[tuple[ExperimentConfig, int]], out: Path) -> None:
    """Print what each experiment and seed of the config has in ``out``: steps trained (of planned), the
    methods evaluated (with their test images per count) and whether locality was measured."""
    print(f"{'experiment':<28} {'seed':>4} {'steps':>11}  evaluated (images per count)                    locality")
    for exp, seed in runs:
        run_dir = out / exp.name / f"seed{seed}"
        planned = exp.train_config(seed).steps
        evals, steps = [], _done(run_dir)   # the log's last step, or (no log: a copied model) the evaluations'
        for method in exp.methods:
            f = run_dir / f"eval-{method}.json"
            if f.is_file():
                meta = json.loads(f.read_text()).get("meta", {})
                evals.append(f"{method} ({meta.get('per_count', '?')})")
                steps = max(steps, int(meta.get("train_steps", 0)))
        loc = "yes" if (run_dir / "locality.json").is_file() else "-"
        print(f"{exp.name:<28} {seed:>4} {f'{steps}/{planned}':>11}  {', '.join(evals) or '-':<46}  {loc}")


ARCHIVED = ("experiment.json", "locality.json", "eval-*.json", "grid-*.png")
"""The files of a run directory that the archive keeps (plus ``log.jsonl``, trimmed)."""
LOG_KEYS = ("step", "loss", "grad_norm", "lr", "images_per_s")
"""The fields of ``log.jsonl`` the archive keeps (the report needs ``step`` and ``images_per_s``)."""


def stage_archive(runs: list[tuple[ExperimentConfig, int]], out: Path, archive: Path) -> None:
    """Copy each run's result files from ``out`` into ``archive`` (same layout; no checkpoints), replacing
    older copies, so that the report can be regenerated from the archive alone."""
    for exp, seed in runs:
        src = out / exp.name / f"seed{seed}"
        files = sorted({f for pattern in ARCHIVED for f in src.glob(pattern)})
        if not any(f.name.startswith("eval-") for f in files):
            continue
        dst = archive / exp.name / f"seed{seed}"
        for f in files:
            data = f.read_bytes()
            atomic_write(dst / f.name, lambda fh, d=data: fh.write(d))
        recs = _log_records(src)
        if recs is not None:
            text = "".join(json.dumps({k: r[k] for k in LOG_KEYS if k in r}) + "\n" for r in recs).encode()
            atomic_write(dst / "log.jsonl", lambda fh, d=text: fh.write(d))
        _log(f"archive {exp.name} seed {seed}: {len(files) + (recs is not None)} files -> {dst}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "configs" / "quick.json"))
    ap.add_argument("--out", default="runs/quick")
    ap.add_argument("--stage", choices=["all", "train", "evaluate", "locality", "report", "ship", "archive",
                                        "status"],
                    default="all", help="'ship' writes localscore/checkpoints/ from the trained runs; 'archive' "
                    "copies the runs' result files to --archive; 'status' lists what is done (none is part of "
                    "'all')")
    ap.add_argument("--archive", default=None,
                    help="where 'archive' copies the result files (default benchmarks/results/<mode>)")
    ap.add_argument("--only", nargs="*", help="experiment names to run (default all)")
    ap.add_argument("--seeds", nargs="*", type=int, help="training seeds to run (default the config's)")
    ap.add_argument("--methods", nargs="*", help="evaluate only these test-time methods (default each experiment's)")
    ap.add_argument("--max-minutes", type=float, default=None, help="train each model for at most this long")
    ap.add_argument("--per-count", type=int, default=None, help="override the test images per count")
    ap.add_argument("--docs", default=None, help="also write the docs results page here")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    ap.add_argument("--force", action="store_true", help="redo evaluations that exist already")
    ap.add_argument("--batch-size", type=int, default=64, help="images per sampler call")
    ap.add_argument("--locality-images", type=int, default=2, help="images of the locality measurement")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    header, exps = load_experiments(args.config)
    out = Path(args.out)
    runs = _runs(exps, args.only, args.seeds)
    try:
        if args.stage in ("all", "train"):
            stage_train(runs, out, args)
        if args.stage in ("all", "evaluate"):
            stage_evaluate(runs, out, args)
        if args.stage in ("all", "locality"):
            stage_locality(runs, out, args)
    except LocalScoreError as e:  # e.g. a run folder locked by another process: one message, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.stage in ("all", "report"):
        stage_report(exps, header, out, args)
    if args.stage == "ship":
        stage_ship(exps, out)
    if args.stage == "status":
        stage_status(runs, out)
    if args.stage == "archive":
        mode = str(header.get("mode", "run"))
        archive = Path(args.archive) if args.archive else ROOT / "benchmarks" / "results" / mode
        if archive.resolve() == out.resolve():
            raise SystemExit("archive: --archive and --out are the same directory; nothing to copy")
        stage_archive(runs, out, archive)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
