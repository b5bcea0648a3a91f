"""Crowding: when do the shipped models fail, as a function of count, spacing and margin?

The shipped one-label baseline ``baseline-32`` composed projectively loses objects at 8-10 objects on the
benchmark's own (dense) layouts but not on sparse ones, and sampled jointly it holds on both. This benchmark
measures, for the shipped models and their sampling methods, the perfect rate, recall, precision and
exact-count accuracy (Wilson 95 % intervals) on *cells* ``(count, min_distance, margin)``: requested layouts
``model.scene.replace(counts=(count,), labelling="all", min_distance=d, margin=m)``. The cells are the union
of the config's *blocks* (cartesian products ``counts x min_distances x margins``), so a count x distance grid
at the training margin plus a margin sweep at one distance costs far less than the full cube. Cells that the
scene sampler cannot place on the image (the packing bound refuses them at once, or rejection placement gives
up after ``max_rounds`` rounds) are recorded and reported as infeasible.

Usage (from the repository root)::

    python benchmarks/crowding.py --out runs/crowding                        # full: evaluate + report
    python benchmarks/crowding.py --out runs/crowding --stage report --docs docs/crowding.md
    python benchmarks/crowding.py --out runs/crowding --stage archive        # -> benchmarks/results/crowding
    python benchmarks/crowding.py --quick --out /tmp/crowd-quick             # seconds; the numbers mean nothing

Stages (``--stage all`` = ``evaluate`` then ``report``; each resumes what an earlier call left):

* ``plan``: list the jobs with their network passes (images x steps x passes per step), nothing run;
* ``evaluate``: every (model, method, cell) of the config into ``OUT/<model>/<method>/n<count>-d<d>-m<m>.json``
  (an :class:`~localscore.lengthgen.evaluate.EvaluationResult` dict plus ``status`` / ``meta``; written
  atomically; a job whose file exists with the same settings is skipped, so a killed run continues);
* ``report``: ``OUT/results.json``, ``OUT/results.md``, the figure ``OUT/crowding.png`` (matplotlib) and, with
  ``--docs PATH``, the docs page (``--docs-figure PATH`` also copies the figure there and embeds it);
* ``archive``: copy the small result files into ``--archive`` (default ``benchmarks/results/crowding``); the
  report regenerates from the archive alone (``--out benchmarks/results/crowding --stage report``).

Jobs run side by side in ``--workers`` threads with one torch thread each (default: 2, or the CPU count if
smaller): the batches are too small for intra-op threads to pay off.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _bench import atomic_write, cpu_name, write_json

from localscore import LocalScoreError
from localscore.lengthgen import ExperimentConfig, load_model, sampler
from localscore.lengthgen.data import render_scene
from localscore.lengthgen.evaluate import (
    EvaluationResult,
    Proportion,
    detect_objects,
    evaluate_counts,
    evaluate_sampler,
    request_scenes,
)
from localscore.train import run_lock

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "configs" / "crowding.json"
METRICS = ("perfect", "recall", "precision", "exact_count")
FORMAT = "localscore-crowding-cell/1"


# ----------------------------------------------------------------------------------------------- utilities




_LOG_LOCK = threading.Lock()


def _log(msg: str) -> None:
    with _LOG_LOCK:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_avg() -> list[float]:
    """The 1/5/15-minute load averages (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return []


def machine() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "load": load_avg(), "torch": torch.__version__}


# ------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True, order=True)
class Cell:
    """Requested layouts: ``count`` objects, centres at least ``min_distance`` px apart, ``margin`` px from
    the border (between an object's bounding circle and the image edge, as in ``SceneConfig``)."""

    count: int
    min_distance: float
    margin: float

    @property
    def name(self) -> str:
        return f"n{self.count:02d}-d{self.min_distance:g}-m{self.margin:g}"

    def seed(self, base: int) -> int:
        """The layout seed of the cell: the same for every model and method (paired comparisons)."""
        return base + zlib.crc32(self.name.encode()) % 100_000

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "min_distance": self.min_distance, "margin": self.margin}


@dataclass(frozen=True)
class Job:
    model: str
    method: str
    cell: Cell
    per_count: int

    def path(self, out: Path) -> Path:
        return out / self.model / self.method / f"{self.cell.name}.json"


def load_config(path: Path, quick: bool) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    mode = "quick" if quick else "full"
    if mode in data:
        data = data[mode]
    for key in ("blocks", "runs"):
        if key not in data:
            raise SystemExit(f"{path}: the {mode} config has no {key!r}")
    return data


def cells_of(block: dict[str, Any]) -> list[Cell]:
    return [Cell(int(n), float(d), float(m)) for n in block["counts"] for d in block["min_distances"]
            for m in block["margins"]]


def jobs_of(cfg: dict[str, Any], only_models: list[str] | None = None,
            only_methods: list[str] | None = None) -> list[Job]:
    jobs: list[Job] = []
    seen: set[tuple[str, str, Cell]] = set()
    for run in cfg["runs"]:
        if only_models and run["model"] not in only_models:
            continue
        if only_methods and run["method"] not in only_methods:
            continue
        for b in run["blocks"]:
            if b not in cfg["blocks"]:
                raise SystemExit(f"run {run['model']}/{run['method']} names the unknown block {b!r}")
            for cell in cells_of(cfg["blocks"][b]):
                key = (run["model"], run["method"], cell)
                if key not in seen:
                    seen.add(key)
                    jobs.append(Job(run["model"], run["method"], cell, int(run.get("per_count", cfg["per_count"]))))
    return jobs


def passes_per_step(method: str, count: int) -> int:
    """Network passes per solver step and image: 1 (joint), count + 1 (projective, masked: one pass per
    object plus the background), 2 * count (localized: each object's two passes on its crop window)."""
    return {"joint": 1, "projective": count + 1, "masked": count + 1}.get(method, 2 * count)


# ---------------------------------------------------------------------------------------------- evaluation
_MODELS = threading.local()


def _model(name: str) -> Any:
    """The loaded model, one copy per worker thread (the modules are never shared between threads)."""
    cache = getattr(_MODELS, "cache", None)
    if cache is None:
        cache = _MODELS.cache = {}
    if name not in cache:
        cache[name] = load_model(name)
    return cache[name]


def scene_of(model: Any, cell: Cell, max_rounds: int) -> Any:
    return model.scene.replace(counts=(cell.count,), labelling="all", min_distance=cell.min_distance,
                               margin=cell.margin, max_rounds=max_rounds)


def feasibility(model: Any, cell: Cell, per_count: int, seed: int, max_rounds: int) -> tuple[str, str]:
    """``("ok", "")`` if the cell's layouts can be drawn, else ``("infeasible", reason)``.

    ``sample_scenes`` (through ``request_scenes``) refuses at once what the hexagonal packing bound rules out
    ("cannot fit"), and raises a ``LocalScoreError`` when rejection placement gives up after ``max_rounds``
    rounds ("could not place"); an invalid scene config (a margin too wide for the image) raises too.
    """
    try:
        request_scenes(scene_of(model, cell, max_rounds), [cell.count], per_count, seed=seed)
    except LocalScoreError as e:
        text = str(e).splitlines()[0]
        kind = ("packing bound" if "cannot fit" in text else
                f"placement gave up after {max_rounds} rounds" if "could not place" in text else "invalid scene")
        return "infeasible", f"{kind}: {text}"
    return "ok", ""


def settings_of(job: Job, cfg: dict[str, Any], exp: ExperimentConfig) -> dict[str, Any]:
    """What a result depends on; a result file with other settings is redone."""
    s: dict[str, Any] = {"per_count": job.per_count, "seed": job.cell.seed(int(cfg["seed"])),
                         "steps": int(cfg.get("steps") or exp.sampling_steps), "solver": exp.sampler,
                         "max_rounds": int(cfg["max_rounds"])}
    if job.method in ("masked", "localized"):
        s["mask_radius"] = exp.mask_radius
    if job.method == "localized":
        s["crop"] = exp.crop
    return s


def run_job(job: Job, cfg: dict[str, Any], out: Path, status: str, reason: str) -> dict[str, Any]:
    model = _model(job.model)
    exp = ExperimentConfig.from_dict(model.meta["experiment"])
    st = settings_of(job, cfg, exp)
    meta: dict[str, Any] = {"format": FORMAT, "model": job.model, "method": job.method, **job.cell.to_dict(),
                            "settings": st, "train_steps": int(model.meta.get("steps", 0)),
                            "machine": machine(), "threads": torch.get_num_threads(),
                            "workers": cfg.get("_workers", 1)}
    if status != "ok":
        data = {"status": status, "reason": reason, "meta": meta}
        write_json(job.path(out), data)
        return data
    scene = scene_of(model, job.cell, st["max_rounds"])
    fn = sampler(model, job.method, steps=st["steps"], solver=exp.sampler, mask_radius=exp.mask_radius,
                 crop=exp.crop)
    t0 = time.perf_counter()
    with torch.inference_mode():
        res = evaluate_sampler(fn, scene, counts=[job.cell.count], per_count=job.per_count, seed=st["seed"],
                               batch_size=int(cfg.get("batch_size", 20)))
    seconds = time.perf_counter() - t0
    meta.update({"seconds": round(seconds, 2), "load_end": load_avg(),
                 "network_passes": job.per_count * st["steps"] * passes_per_step(job.method, job.cell.count)})
    data = {"status": "ok", "reason": "", "evaluation": res.to_dict(), "meta": meta}
    write_json(job.path(out), data)
    return data


def _done(job: Job, out: Path, want: dict[str, Any]) -> bool:
    p = job.path(out)
    if not p.is_file():
        return False
    try:
        old = json.loads(p.read_text())
    except (OSError, ValueError):
        return False
    return old.get("meta", {}).get("settings") == want and old.get("status") in ("ok", "infeasible")


def stage_evaluate(jobs: list[Job], cfg: dict[str, Any], out: Path, args: argparse.Namespace) -> dict[str, int]:
    """Run every job not done yet (holding ``out/.lock``); returns ``{"run", "skipped", "infeasible"}``."""
    with run_lock(out, where="crowding --stage evaluate"):
        return _evaluate(jobs, cfg, out, args)


def _evaluate(jobs: list[Job], cfg: dict[str, Any], out: Path, args: argparse.Namespace) -> dict[str, int]:
    todo: list[tuple[Job, str, str]] = []
    skipped = infeasible = 0
    feas: dict[tuple[str, Cell, int, int, int], tuple[str, str]] = {}
    for job in jobs:
        model = _model(job.model)
        exp = ExperimentConfig.from_dict(model.meta["experiment"])
        want = settings_of(job, cfg, exp)
        if not args.force and _done(job, out, want):
            skipped += 1
            continue
        # Layouts depend on the scene config (the same for both shipped models but the labelling, which
        # `scene_of` overrides), the cell, the images and the seed: check each once.
        scene = {k: v for k, v in model.scene.to_dict().items() if k not in ("labelling", "counts")}
        key = (json.dumps(scene, sort_keys=True), job.cell, job.per_count, want["seed"], want["max_rounds"])
        if key not in feas:
            feas[key] = feasibility(model, job.cell, job.per_count, want["seed"], want["max_rounds"])
        status, reason = feas[key]
        infeasible += status != "ok"
        todo.append((job, status, reason))
    m = machine()
    _log(f"evaluate: {len(todo)} jobs to run ({infeasible} infeasible), {skipped} done already; "
         f"{args.workers} worker(s) x 1 torch thread; CPU {m['cpu']} ({m['cores']} cores), load {m['load']}")
    if not todo:
        return {"run": 0, "skipped": skipped, "infeasible": infeasible}
    total = sum(j.per_count * passes_per_step(j.method, j.cell.count) for j, s, _ in todo if s == "ok")
    lock = threading.Lock()
    state = {"passes": 0, "t0": time.perf_counter()}
    cfg = {**cfg, "_workers": args.workers}

    def work(item: tuple[Job, str, str]) -> None:
        job, status, reason = item
        data = run_job(job, cfg, out, status, reason)
        if data["status"] != "ok":
            _log(f"{job.model} / {job.method} {job.cell.name}: infeasible ({reason[:120]})")
            return
        row = data["evaluation"]["rows"][0]
        with lock:
            state["passes"] += job.per_count * passes_per_step(job.method, job.cell.count)
            frac = state["passes"] / max(total, 1)
            el = time.perf_counter() - state["t0"]
        _log(f"{job.model} / {job.method} {job.cell.name}: perfect {row['perfect']['rate']:.2f}, recall "
             f"{row['recall']['rate']:.2f} ({job.per_count} images, {data['meta']['seconds']:.1f} s, load "
             f"{data['meta']['load_end']}); {100 * frac:.0f} % done, about {el / max(frac, 1e-9) - el:.0f} s left")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if args.workers <= 1:
            for item in todo:
                work(item)
        else:
            with ThreadPoolExecutor(max_workers=args.workers) as pool:
                list(pool.map(work, todo))
    finally:
        torch.set_num_threads(threads)
    _log(f"evaluate: done in {time.perf_counter() - state['t0']:.0f} s, load {load_avg()}")
    return {"run": len(todo), "skipped": skipped, "infeasible": infeasible}


def stage_plan(jobs: list[Job], cfg: dict[str, Any], out: Path) -> None:
    steps = cfg.get("steps") or 32
    by: dict[tuple[str, str], list[int]] = {}
    for j in jobs:
        v = by.setdefault((j.model, j.method), [0, 0, 0])
        v[0] += 1
        v[1] += j.per_count
        v[2] += j.per_count * steps * passes_per_step(j.method, j.cell.count)
    print(f"{'model / method':<28} {'cells':>5} {'images':>7} {'network passes':>15}")
    for (mo, me), (c, i, p) in by.items():
        print(f"{mo + ' / ' + me:<28} {c:>5} {i:>7} {p:>15,}")
    done = sum(j.path(out).is_file() for j in jobs)
    print(f"{len(jobs)} jobs, {done} with a result file in {out}")


# ------------------------------------------------------------------------------------------------- report
def _prop(d: dict[str, Any]) -> Proportion:
    return Proportion(int(d["successes"]), int(d["trials"]))


def read_results(out: Path) -> list[dict[str, Any]]:
    """Every cell result under ``out`` (files of this benchmark's format), sorted."""
    rows = []
    for p in sorted(out.glob("*/*/n*-d*-m*.json")):
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        meta = data.get("meta", {})
        if meta.get("format") != FORMAT:
            continue
        row: dict[str, Any] = {"model": meta["model"], "method": meta["method"],
                               "cell": Cell(int(meta["count"]), float(meta["min_distance"]), float(meta["margin"])),
                               "status": data["status"], "reason": data.get("reason", ""), "meta": meta}
        if data["status"] == "ok":
            ev = EvaluationResult.from_dict(data["evaluation"])
            r = ev.rows[0]
            row.update({m: getattr(r, m) for m in METRICS})
            row["images"] = r.images
            row["per_image"] = list(zip(ev.requested, ev.detected, ev.correct))
        rows.append(row)
    rows.sort(key=lambda r: (r["model"], r["method"], r["cell"]))
    return rows


def layouts_of(cell: Cell, per_count: int, seed: int, max_rounds: int) -> Any:
    return request_scenes(scene_of(_model("baseline-32"), cell, max_rounds), [cell.count], per_count, seed=seed)


def neighbours(scene: Any, radius: float) -> torch.Tensor:
    """``[B]``: the mean number of other requested objects within ``radius`` px of an object, per image."""
    pos, v = scene.pos.double(), scene.valid
    d = torch.cdist(pos, pos)
    near = (d < radius) & v[:, :, None] & v[:, None, :]
    near &= ~torch.eye(pos.shape[1], dtype=torch.bool)[None]
    n = v.sum(1).clamp(min=1)
    return near.sum((1, 2)).double() / n


def cell_context(rows: list[dict[str, Any]], radius: float) -> dict[tuple[Cell, int, int, int], dict[str, Any]]:
    """Per (cell, images, seed, max_rounds) evaluated: the detector ceiling on ground-truth renders of the same
    layouts, and the crowding of the layouts (neighbours within ``radius`` px, per image and mean)."""
    ctx: dict[tuple[Cell, int, int, int], dict[str, Any]] = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        s = r["meta"]["settings"]
        key = (r["cell"], s["per_count"], s["seed"], s["max_rounds"])
        if key in ctx:
            continue
        cfg = scene_of(_model("baseline-32"), r["cell"], s["max_rounds"])
        req = request_scenes(cfg, [r["cell"].count], s["per_count"], seed=s["seed"])
        ref = evaluate_counts(detect_objects(render_scene(req, cfg), cfg), req).rows[0]
        nb = neighbours(req, radius)
        ctx[key] = {"ceiling": ref, "neighbours": nb.tolist(), "mean_neighbours": float(nb.mean())}
    return ctx


def _ctx(ctx: dict[Any, dict[str, Any]], r: dict[str, Any]) -> dict[str, Any] | None:
    s = r["meta"].get("settings", {})
    return ctx.get((r["cell"], s.get("per_count"), s.get("seed"), s.get("max_rounds")))


def _fmt(p: Proportion | None, ci: bool = True) -> str:
    return "–" if p is None else p.format(2, ci=ci)


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])


def _key(r: dict[str, Any]) -> str:
    return f"{r['model']} / {r['method']}"


def grid_margin(rows: list[dict[str, Any]]) -> float:
    """The margin of the count x distance grid: the one with the most distinct distances (0.5 without rows)."""
    by: dict[float, set[float]] = {}
    for r in rows:
        by.setdefault(r["cell"].margin, set()).add(r["cell"].min_distance)
    return max(by, key=lambda m: (len(by[m]), -m)) if by else 0.5


def pivot_tables(rows: list[dict[str, Any]], metric: str) -> str:
    """For each model / method: a count x min-distance table of ``metric`` at the grid margin."""
    m0 = grid_margin(rows)
    parts = []
    keys = list(dict.fromkeys(_key(r) for r in rows))
    for k in keys:
        sub = {r["cell"]: r for r in rows if _key(r) == k and r["cell"].margin == m0}
        if not sub:
            continue
        counts = sorted({c.count for c in sub})
        dists = sorted({c.min_distance for c in sub})
        body = []
        for n in counts:
            line = [str(n)]
            for d in dists:
                r = sub.get(Cell(n, d, m0))
                line.append("not run" if r is None else "infeasible" if r["status"] != "ok" else _fmt(r[metric]))
            body.append(line)
        parts.append(f"#### {k}\n\n" + _md_table(["objects \\ min distance (px)", *(f"{d:g}" for d in dists)], body))
    return "\n\n".join(parts)


def margin_tables(rows: list[dict[str, Any]]) -> str:
    """For each (count, distance) evaluated at several margins: perfect rate and recall per margin."""
    groups: dict[tuple[int, float], set[float]] = {}
    for r in rows:
        groups.setdefault((r["cell"].count, r["cell"].min_distance), set()).add(r["cell"].margin)
    parts = []
    for (n, d), margins in sorted(groups.items()):
        if len(margins) < 2:
            continue
        ms = sorted(margins)
        body = []
        for k in dict.fromkeys(_key(r) for r in rows):
            sub = {r["cell"].margin: r for r in rows if _key(r) == k and r["cell"].count == n
                   and r["cell"].min_distance == d}
            if len(sub) < 2:
                continue
            line = [k]
            for m in ms:
                x = sub.get(m)
                line.append("not run" if x is None else "infeasible" if x["status"] != "ok" else
                            f"{_fmt(x['perfect'])} / {_fmt(x['recall'], ci=False)}")
            body.append(line)
        if body:
            parts.append(f"#### {n} objects, centres at least {d:g} px apart: perfect rate [95 % CI] / recall "
                         "per border margin (px)\n\n" + _md_table(["model / method", *(f"{m:g}" for m in ms)], body))
    return "\n\n".join(parts)


def long_table(rows: list[dict[str, Any]], ctx: dict[Any, Any]) -> str:
    body = []
    for r in rows:
        c = r["cell"]
        head = [_key(r), str(c.count), f"{c.min_distance:g}", f"{c.margin:g}"]
        if r["status"] != "ok":
            body.append(head + ["infeasible: " + r["reason"].split(":")[0]] + ["–"] * 7)
            continue
        x = _ctx(ctx, r)
        body.append([*head, str(r["images"]), *(_fmt(r[m]) for m in METRICS),
                            "–" if x is None else x["ceiling"].perfect.format(2),
                            "–" if x is None else f"{x['mean_neighbours']:.2f}",
                            f"{r['meta'].get('seconds', float('nan')):.0f}"])
    return _md_table(["model / method", "objects", "min dist", "margin", "images", "perfect", "recall",
                      "precision", "exact count", "ceiling (perfect)", "neighbours", "s"], body)


def timing_table(rows: list[dict[str, Any]]) -> tuple[str, float]:
    by: dict[str, list[float]] = {}
    for r in rows:
        if r["status"] == "ok":
            v = by.setdefault(_key(r), [0.0, 0, 0])
            v[0] += float(r["meta"].get("seconds", 0.0))
            v[1] += r["images"]
            v[2] += int(r["meta"].get("network_passes", 0))
    body = [[k, f"{s:.0f}", str(i), f"{s / max(i, 1):.2f}", f"{1e3 * s / max(p, 1):.1f}"]
            for k, (s, i, p) in by.items()]
    total = sum(v[0] for v in by.values())
    return _md_table(["model / method", "seconds (one thread)", "images", "s / image", "ms / network pass (per image)"],
                     body), total


def crowding_split(rows: list[dict[str, Any]],
                   ctx: dict[Any, Any]) -> dict[tuple[str, int], tuple[Proportion, Proportion]]:
    """Per (model / method, count), pooled over every evaluated cell of that count: the perfect rate of the more
    crowded half of the images (most neighbours within the radius) and of the less crowded half."""
    acc: dict[tuple[str, int], list[tuple[float, bool]]] = {}
    for r in rows:
        x = _ctx(ctx, r) if r["status"] == "ok" else None
        if x is None:
            continue
        for (req, det, cor), nb in zip(r["per_image"], x["neighbours"]):
            acc.setdefault((_key(r), r["cell"].count), []).append((nb, det == req and cor == req))
    out = {}
    for k, v in acc.items():
        if len(v) < 4:
            continue
        v.sort(key=lambda t: t[0])
        h = len(v) // 2
        lo, hi = v[:h], v[len(v) - h:]
        out[k] = (Proportion(sum(ok for _, ok in hi), len(hi)), Proportion(sum(ok for _, ok in lo), len(lo)))
    return out


def plot(path: Path, rows: list[dict[str, Any]]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return False
    import io

    m0 = grid_margin(rows)
    keys = list(dict.fromkeys(_key(r) for r in rows if r["cell"].margin == m0))
    if not keys:
        return False
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols + 1.0, 2.7 * nrows + 0.4), squeeze=False,
                             layout="constrained")
    im = None
    for ax, k in zip(axes.flat, keys):
        sub = {r["cell"]: r for r in rows if _key(r) == k and r["cell"].margin == m0}
        counts = sorted({c.count for c in sub})
        dists = sorted({c.min_distance for c in sub})
        grid = torch.full((len(counts), len(dists)), float("nan"))
        for i, n in enumerate(counts):
            for j, d in enumerate(dists):
                r = sub.get(Cell(n, d, m0))
                if r is None:
                    continue
                if r["status"] != "ok":
                    ax.text(j, i, "infeasible", ha="center", va="center", fontsize=6, color="0.3")
                    continue
                grid[i, j] = r["perfect"].rate
                ax.text(j, i, f"{r['perfect'].rate:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if r["perfect"].rate < 0.5 else "black")
        im = ax.imshow(grid.numpy(), vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        ax.set_xticks(range(len(dists)), [f"{d:g}" for d in dists])
        ax.set_yticks(range(len(counts)), [str(n) for n in counts])
        ax.set_xlabel("min centre distance (px)", fontsize=8)
        ax.set_ylabel("objects", fontsize=8)
        ax.set_title(k, fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="perfect rate")
    fig.suptitle(f"perfect rate over count x distance (margin {m0:g} px)", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))
    return True


def stage_report(cfg: dict[str, Any], out: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    rows = read_results(out)
    if not rows:
        _log("report: nothing evaluated yet")
        return None
    radius = float(cfg.get("neighbour_radius", 8.0))
    ctx = cell_context(rows, radius)
    timing, total = timing_table(rows)
    split = crowding_split(rows, ctx)
    split_body = [[k, str(n), _fmt(a), _fmt(b)] for (k, n), (a, b) in sorted(split.items())]
    machines = sorted({(r["meta"]["machine"]["cpu"], r["meta"]["machine"]["cores"]) for r in rows})
    loads = [r["meta"]["machine"]["load"][0] for r in rows if r["meta"]["machine"].get("load")]
    workers = sorted({int(r["meta"].get("workers", 1)) for r in rows})
    md = "\n".join([
        f"## Crowding ({cfg.get('mode', '?')} mode)", "", str(cfg.get("description", "")), "",
        "### Perfect rate per object count x minimal centre distance (at the grid margin) [Wilson 95 % interval]",
        "", pivot_tables(rows, "perfect"), "",
        "### Recall per object count x minimal centre distance [Wilson 95 % interval, optimistic: objects of one "
        "image are pooled]", "", pivot_tables(rows, "recall"), "",
        "### Border margin", "", margin_tables(rows) or "(no cell was evaluated at several margins)", "",
        f"### Crowded vs sparse images (perfect rate; images split at the median of their mean number of other "
        f"objects within {radius:g} px of an object, pooled over the distances and margins of each count)", "",
        _md_table(["model / method", "objects", "more crowded half", "less crowded half"], split_body)
        if split_body else "(too few images)", "",
        "### Every cell", "",
        "'ceiling': the detector's perfect rate on ground-truth renders of the same layouts; 'neighbours': mean "
        f"number of other objects within {radius:g} px of an object; 's': seconds of the job (one torch thread).",
        "", long_table(rows, ctx), "",
        "### Time", "",
        f"CPU: {'; '.join(f'{c} ({n} cores)' for c, n in machines)}; 1-minute load at the jobs' start "
        f"{min(loads, default=float('nan')):.1f}-{max(loads, default=float('nan')):.1f}. "
        f"Sum of the job times: {total:.0f} s, run by {'/'.join(map(str, workers))} worker thread(s) side by side "
        "(wall time about the sum divided by the workers, on an otherwise idle machine).", "",
        timing, "",
    ])
    records = []
    for r in rows:
        x = _ctx(ctx, r)
        rec = {"model": r["model"], "method": r["method"], **r["cell"].to_dict(), "status": r["status"],
               "reason": r["reason"], "settings": r["meta"].get("settings"), "seconds": r["meta"].get("seconds"),
               "machine": r["meta"].get("machine")}
        if r["status"] == "ok":
            rec.update({"images": r["images"], **{m: r[m].to_dict() for m in METRICS}})
            if x is not None:
                rec["ceiling_perfect"] = x["ceiling"].perfect.to_dict()
                rec["mean_neighbours"] = round(x["mean_neighbours"], 4)
        records.append(rec)
    results = {"format": "localscore-crowding/1", "mode": cfg.get("mode"), "neighbour_radius": radius,
               "rows": records,
               "split": [{"key": k, "count": n, "crowded": a.to_dict(), "sparse": b.to_dict()}
                         for (k, n), (a, b) in sorted(split.items())]}
    write_json(out / "results.json", results)
    atomic_write(out / "results.md", lambda f: f.write(md.encode()))
    drew = plot(out / "crowding.png", rows)
    _log(f"wrote {out / 'results.json'}, {out / 'results.md'}" + (f", {out / 'crowding.png'}" if drew else ""))
    if args.docs:
        fig = None
        if args.docs_figure and drew:
            src = (out / "crowding.png").read_bytes()
            atomic_write(Path(args.docs_figure), lambda f: f.write(src))
            fig = os.path.relpath(Path(args.docs_figure).resolve(), Path(args.docs).resolve().parent)
        page = docs_page(rows, ctx, split, md, cfg, out, fig)
        atomic_write(Path(args.docs), lambda f: f.write(page.encode()))
        _log(f"wrote {args.docs}")
    return results


# --------------------------------------------------------------------------------------------------- docs
def _holds(p: Proportion) -> bool:
    return p.trials > 0 and p.rate >= 0.9


def _fails(p: Proportion) -> bool:
    """Clearly below the 90 % bar: the upper end of the Wilson interval is below 0.9."""
    return p.trials > 0 and p.interval()[1] < 0.9


def _cells(cs: list[Cell]) -> str:
    return ", ".join(f"{c.count} objects at d {c.min_distance:g} / m {c.margin:g}" for c in cs) or "none"


def _differs(a: Proportion, b: Proportion) -> bool:
    """The two Wilson intervals do not overlap (a conservative test of a difference)."""
    return a.interval()[0] > b.interval()[1] or b.interval()[0] > a.interval()[1]


def docs_page(rows: list[dict[str, Any]], ctx: dict[Any, Any], split: dict[Any, Any], md: str,
              cfg: dict[str, Any], out: Path, figure: str | None) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    by = {(_key(r), r["cell"]): r for r in ok}
    infeasible = sorted({r["cell"] for r in rows if r["status"] != "ok"})
    reasons = {r["cell"]: r["reason"] for r in rows if r["status"] != "ok"}
    keys = list(dict.fromkeys(_key(r) for r in ok))
    lines = ["# Crowding", "",
             "<!-- Generated by benchmarks/crowding.py --stage report --docs; do not edit by hand. -->", "",
             f"Generated on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from `{out}` by "
             "`python benchmarks/crowding.py --stage report --docs ...` "
             f"({cfg.get('mode', '?')} mode).", "",
             "The shipped models were trained on 32x32 scenes of 1-3 objects. Here they are asked for more objects "
             "on layouts of controlled crowding: a *cell* is (object count, minimal centre distance `d`, border "
             "margin `m`), the requested layouts are `model.scene.replace(counts=(n,), labelling='all', "
             "min_distance=d, margin=m)` (the margin is the gap between an object's bounding circle and the image "
             "edge; the training layouts have `m = 0.5` and no centre distance beyond the 1.5 px gap between "
             "bounding circles, which for the shipped sizes puts centres 5.3-8.7 px apart, so `d = 5` is "
             "the training spacing). Every model and method with the same number of images in a cell sees the same "
             "layouts (the layout seed depends on the cell only). 'Perfect': exactly "
             "the requested objects are detected, each at its place in its colour; recall: the share of the "
             "requested objects drawn; a cell *holds* when its perfect rate is at least 0.90 "
             "and *fails* when the upper end of its 95 % interval is below 0.90.", ""]
    if cfg.get("mode") == "quick":
        lines += ["!!! warning", "    Quick mode: 2 sampler steps and 2 images per cell. The numbers below test the "
                  "pipeline and mean nothing about the models.", ""]
    lines += ["## What the numbers say", ""]
    for k in keys:
        cells = sorted(c for (kk, c) in by if kk == k)
        fails = [c for c in cells if _fails(by[(k, c)]["perfect"])]
        holds = [c for c in cells if _holds(by[(k, c)]["perfect"])]
        rec_low = [c for c in cells if by[(k, c)]["recall"].rate < 0.9]
        prec_low = [c for c in cells if by[(k, c)]["precision"].rate < 0.9]
        lines.append(f"- **{k}**: holds in {len(holds)} of {len(cells)} cells, fails in {len(fails)} "
                     f"({_cells(fails)}). Recall below 0.90 in: {_cells(rec_low)}; precision below 0.90 in: "
                     f"{_cells(prec_low)}.")
    lines.append("")
    # Distance dependence at each count, at the grid margin.
    m0 = grid_margin(ok)
    trend = []
    for k in keys:
        for n in sorted({c.count for (kk, c) in by if kk == k}):
            ds = sorted(c.min_distance for (kk, c) in by if kk == k and c.count == n and c.margin == m0)
            if len(ds) < 2:
                continue
            a, b = by[(k, Cell(n, ds[0], m0))]["perfect"], by[(k, Cell(n, ds[-1], m0))]["perfect"]
            if _differs(a, b):
                word = "rises" if b.rate > a.rate else "falls"
                trend.append(f"- {k}, {n} objects: the perfect rate {word} from {a.format(2, ci=True)} at d "
                             f"{ds[0]:g} to {b.format(2, ci=True)} at d {ds[-1]:g} (intervals disjoint).")
    lines += ["### Spacing", "",
              *(trend or ["No model / method changes its perfect rate between the densest and the sparsest "
                          "layouts of a count by more than the 95 % intervals allow."]), ""]
    # Joint vs projective of the same model.
    comp = []
    for model in dict.fromkeys(r["model"] for r in ok):
        pj, jt = f"{model} / projective", f"{model} / joint"
        both = sorted(c for (kk, c) in by if kk == pj and (jt, c) in by)
        better_joint = [c for c in both if _differs(by[(jt, c)]["perfect"], by[(pj, c)]["perfect"])
                        and by[(jt, c)]["perfect"].rate > by[(pj, c)]["perfect"].rate]
        better_proj = [c for c in both if _differs(by[(jt, c)]["perfect"], by[(pj, c)]["perfect"])
                       and by[(jt, c)]["perfect"].rate < by[(pj, c)]["perfect"].rate]
        if both:
            comp.append(f"- **{model}**: of {len(both)} cells sampled both ways, joint sampling is better (disjoint "
                        f"intervals) in {_cells(better_joint)}; projective composition is better in "
                        f"{_cells(better_proj)}.")
    lines += ["### Joint sampling against projective composition", "", *(comp or ["(not both evaluated)"]), ""]
    sp = [f"- {k}, {n} objects: perfect {a.format(2, ci=True)} in the more crowded half of the images against "
          f"{b.format(2, ci=True)} in the less crowded half" + (" (intervals disjoint)." if _differs(a, b) else ".")
          for (k, n), (a, b) in sorted(split.items()) if k.endswith("projective") or k.endswith("joint")]
    lines += ["### Crowding within a count", "",
              f"Pooling every layout of a count and splitting its images at the median of their crowding (mean "
              f"number of other requested objects within {float(cfg.get('neighbour_radius', 8.0)):g} px of an "
              "object):", "", *(sp or ["(too few images)"]), ""]
    if infeasible:
        lines += ["### Infeasible cells", "",
                  "These cells cannot be laid out on a 32x32 image by the scene sampler and were not sampled:", "",
                  *(f"- {c.count} objects, d {c.min_distance:g} px, margin {c.margin:g} px: {reasons[c]}"
                    for c in infeasible), ""]
    lines += ["## Why joint sampling of the one-label U-Net can hold where its projective composition fails", "",
              "Projective composition samples with `D = (1 - k) D(x, none) + sum_j D(x, c_j)` for `k` requested "
              "objects. The one-label U-Net learned `D(x, c_j)` from images in which one object is labelled and "
              "0-2 others are unlabelled clutter, and `D(x, none)` from images of 1-3 unlabelled objects: both "
              "carry a clutter prior. The composition cancels that prior only if every one-object pass treats "
              "the pixels away from its own object exactly as the background pass does; the background's weight "
              "`1 - k` is large and negative, so whatever residual each of the `k` passes leaves at an object's "
              "pixels is summed over all `k` passes. Joint sampling makes one pass with all objects in one "
              "conditioner set: no residual is summed over passes and no term enters with a negative weight.", "",
              "*Hypothesis* (these measurements do not observe it directly): crowding puts the neighbouring "
              "objects inside the region a pass for object `j` reacts to (the U-Net sees the whole image, but "
              "most of an object's influence stays near it: conditional locality index 0.908 for this training "
              "setup in [the results](results.md)), so that pass sees object `i`'s "
              "half-formed pixels as clutter and pulls them towards its clutter prior (erasing, moving or "
              "recolouring them), and with more neighbours per object more passes do so at the same pixels. "
              "It predicts that projective composition loses requested objects (recall, not precision, drops), "
              "that it fails more the denser the layout at a fixed count, and that within a count the more "
              "crowded images fail more often, while joint sampling does not depend on spacing in the same way. "
              "The sections above test each prediction; where an interval overlaps, the data neither support "
              "nor refute it, and a prediction contradicted above is contradicted.", "",
              "Checked against this run:", "", *predictions(by, split), ""]
    if figure:
        lines += [f"![perfect rate over count x distance]({figure})", ""]
    lines += ["## Tables", "", md.split("\n", 1)[1] if md.startswith("## ") else md, ""]
    return "\n".join(lines)


def predictions(by: dict[tuple[str, Cell], dict[str, Any]], split: dict[Any, Any]) -> list[str]:
    """The hypothesis' predictions, each checked on the numbers of every model with both joint and projective."""
    out = []
    for model in dict.fromkeys(k.split(" / ")[0] for k, _ in by):
        pj, jt = f"{model} / projective", f"{model} / joint"
        cells = sorted(c for (k, c) in by if k == pj)
        if not cells:
            continue
        fails = [c for c in cells if _fails(by[(pj, c)]["perfect"])]
        if not fails:
            out.append(f"- {pj} fails in no cell: nothing to explain for this model.")
            continue
        lost = sum(1 - by[(pj, c)]["recall"].rate for c in fails) / len(fails)
        extra = sum(1 - by[(pj, c)]["precision"].rate for c in fails) / len(fails)
        verdict = "supported" if lost > 2 * extra else "contradicted" if extra > 2 * lost else "undecided"
        out.append(f"- *Lost rather than extra objects* ({pj}): in its {len(fails)} failing cells the mean recall "
                   f"shortfall is {lost:.2f} and the mean precision shortfall {extra:.2f}: {verdict}.")
        mono = []
        for n in sorted({c.count for c in cells}):
            for m in sorted({c.margin for c in cells if c.count == n}):
                ds = sorted(c.min_distance for c in cells if c.count == n and c.margin == m)
                if len(ds) >= 2:
                    a, b = by[(pj, Cell(n, ds[0], m))]["perfect"], by[(pj, Cell(n, ds[-1], m))]["perfect"]
                    mono.append("up" if _differs(a, b) and b.rate > a.rate else
                                "down" if _differs(a, b) else "flat")
        verdict = ("contradicted" if "down" in mono else "supported" if "up" in mono else "undecided")
        out.append(f"- *Denser fails more* ({pj}): densest vs sparsest layout of each count and margin: "
                   f"{mono.count('up')} better when sparse, {mono.count('down')} worse, {mono.count('flat')} within "
                   f"the intervals: {verdict}.")
        sp = [(n, a, b) for (k, n), (a, b) in split.items() if k == pj]
        if sp:
            up = sum(_differs(a, b) and a.rate < b.rate for _, a, b in sp)
            down = sum(_differs(a, b) and a.rate > b.rate for _, a, b in sp)
            verdict = "contradicted" if down else "supported" if up else "undecided"
            out.append(f"- *More crowded images fail more often within a count* ({pj}): {up} of {len(sp)} counts "
                       f"show it with disjoint intervals, {down} the opposite: {verdict}.")
        jcells = [c for c in fails if (jt, c) in by]
        if jcells:
            hold = [c for c in jcells if _holds(by[(jt, c)]["perfect"])]
            jf = [c for c in jcells if _fails(by[(jt, c)]["perfect"])]
            out.append(f"- *Joint sampling holds where the composition fails* ({model}): of the {len(jcells)} cells "
                       f"where {pj} fails, joint sampling holds in {len(hold)} and fails in {len(jf)} "
                       f"({_cells(jf)}).")
    return out or ["- (no projective composition evaluated)"]


# ------------------------------------------------------------------------------------------------ archive
def _copy(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    atomic_write(dst, lambda fh: fh.write(data))


def stage_archive(out: Path, archive: Path) -> int:
    """Copy the cell files and the report (``results.json``, ``results.md``, ``crowding.png``) to ``archive``."""
    if archive.resolve() == out.resolve():
        raise SystemExit("archive: --archive and --out are the same directory; nothing to copy")
    files = sorted(out.glob("*/*/n*-d*-m*.json")) + [out / n for n in ("results.json", "results.md", "crowding.png")
                                                       if (out / n).is_file()]
    for f in files:
        _copy(f, archive / f.relative_to(out))
    _log(f"archive: {len(files)} files -> {archive}")
    return len(files)


# --------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(CONFIG), help="the JSON config (its 'full' or, with --quick, 'quick' part)")
    ap.add_argument("--quick", action="store_true", help="the config's quick part (seconds; for tests)")
    ap.add_argument("--out", default=None, help="run folder (default runs/crowding or runs/crowding-quick)")
    ap.add_argument("--stage", choices=["all", "plan", "evaluate", "report", "archive"], default="all")
    ap.add_argument("--archive", default=str(ROOT / "benchmarks" / "results" / "crowding"))
    ap.add_argument("--models", nargs="*", help="only these models")
    ap.add_argument("--methods", nargs="*", help="only these methods")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="jobs side by side")
    ap.add_argument("--force", action="store_true", help="redo jobs whose result file exists")
    ap.add_argument("--docs", default=None, help="also write the docs page here (e.g. docs/crowding.md)")
    ap.add_argument("--docs-figure", default=None, help="copy crowding.png here and embed it in the docs page")
    args = ap.parse_args(argv)
    cfg = load_config(Path(args.config), args.quick)
    out = Path(args.out or ("runs/crowding-quick" if args.quick else "runs/crowding"))
    jobs = jobs_of(cfg, args.models, args.methods)
    if args.stage == "plan":
        stage_plan(jobs, cfg, out)
    if args.stage in ("all", "evaluate"):
        try:
            stage_evaluate(jobs, cfg, out, args)
        except LocalScoreError as e:
            print(str(e), file=sys.stderr)
            return 2
    if args.stage in ("all", "report"):
        stage_report(cfg, out, args)
    if args.stage == "archive":
        stage_archive(out, Path(args.archive))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
