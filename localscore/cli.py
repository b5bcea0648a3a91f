"""The `localscore` command line: train, sample, evaluate, measure locality, and the demo.

Subcommands (`localscore COMMAND --help` for each):

* `localscore demo [--out DIR]`: the main job. The shipped 32x32 models, trained on 1-3 objects, sampled
  for 1-3 and 8-10 objects (`--counts` for others): `local-32` (local conditional network, every object
  labelled; sampled with all objects in one pass, and as a projective composition of one-object passes)
  and `baseline-32` (the failing
  baseline: a global cross-attention U-Net trained with one labelled object per image, the others unlabelled
  clutter; sampled as a projective composition of one-object passes; `--method masked` adds the
  sampling-time locality intervention); prints the length-generalization table, with the runs compared at
  8-10 objects by their Wilson intervals, and writes
  `DIR/demo.json` and `DIR/demo.png` (sample grid, requested positions marked). `--retrain` trains
  both from scratch first. `localscore demo --oracle`: the closed-form demo, exact per-object scores of
  an object oracle (`localscore.oracles.FactorizedObjects`) composed projectively beyond the trained
  count, sampled with Euler and Heun, against exact joint samples.
* `localscore train CONFIG`: train the experiments of a JSON config (one experiment, or a `defaults`
  object and an `experiments` list); resumable. `localscore train --print-config local-32` prints the
  config that trained a shipped model, a starting point to edit.
* `localscore sample --checkpoint PATH_OR_NAME --layout LAYOUT.json --seed S --out FILE.npz [FILE.png]`:
  draw one image per layout image; `FILE.npz` holds `images` `[N, 3, H, W]` float32 in `[0, 1]`,
  `FILE.png` is a grid of the images with the requested positions marked `+`.
* `localscore evaluate --checkpoint PATH_OR_NAME`: per-count perfect rate / exact-count accuracy with
  Wilson intervals over counts 0..10.
* `localscore locality --checkpoint PATH_OR_NAME`: conditional locality index and effective pixel
  radius across noise levels.

A layout file is JSON:

    {"size": 32, "images": [[{"pos": [row, col], "color": "red", "shape": "disc", "size": "small"}, ...], ...]}

positions in pixels (row, col from the top-left pixel centre), colours gray, red, blue, green, brown,
purple, cyan, yellow; `shape` (disc / square / triangle) and `size` (small / large) optional
(default: the first of the model's training shapes and sizes). Objects whose outlines would overlap are
refused; objects closer than any pair of the training scenes are sampled with a warning.

Output paths are checked before any work starts; an existing output file is refused unless `--overwrite`
(sample, evaluate, locality). A demo is meant to be re-run: it replaces the `demo.json` and `demo.png` of a
previous demo in its `--out` folder and says so first; two demos at once on one folder are refused (the
second names the first one's pid). `sample` draws a long layout in batches of `--batch-size` images. Everything
that sizes memory or time (steps, images, counts, batch sizes, network sizes in model files and configs)
is bounded before any work. A failure prints one line naming the problem and the fix: exit code 2 for a
mistake in the command or its files, 1 for anything else (out of memory, a full disk, a bug); `--debug`
adds the traceback. The long commands (demo, evaluate, locality, sample,
train) show progress on stderr (a tqdm bar on a terminal when tqdm is installed, otherwise a line every
10 s); `--no-progress` turns it off. Every output file is written atomically (temporary file, fsync,
rename): an interrupted command leaves no half-written file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._errors import LocalScoreError, fail
from ._io import atomic_write, check_output, read_json, remove_stale_temps, run_lock
from .conditions import Conditions
from .lengthgen.data.scenes import MAX_OBJECTS
from .train.trainer import MAX_TRAIN_STEPS

if TYPE_CHECKING:
    from .compose import Strategy

__all__ = ["main"]

_SAMPLE_OUTPUTS = {".npz": "arrays", ".png": "an image grid"}
_JSON_OUTPUT = {".json": "the result as JSON"}
_PROGRESS_EVERY = 10.0
"""Seconds between two progress lines when there is no tqdm bar (read when a progress starts)."""


# ----------------------------------------------------------------------------- helpers
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    atomic_write(path, lambda f: f.write(data))


def _write_json(path: Path, data: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


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


def _span(counts: Sequence[int]) -> str:
    """``[1, 2, 3]`` -> ``"1-3"``; a set with gaps is listed by runs of three or more (``"1-3, 8-10"``).

    Examples:
        >>> _span([3, 1, 2]), _span([1, 3]), _span([4]), _span([1, 2, 3, 8, 9, 10]), _span([1, 2, 5])
        ('1-3', '1, 3', '4', '1-3, 8-10', '1, 2, 5')
    """
    c = sorted(set(counts))
    if len(c) > 1 and c == list(range(c[0], c[-1] + 1)):
        return f"{c[0]}-{c[-1]}"
    runs: list[list[int]] = []
    for v in c:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) >= 3 else ", ".join(map(str, r)) for r in runs)


class _Progress:
    """Progress of a long command, on stderr.

    A tqdm bar where tqdm is installed and stderr is a terminal; otherwise (tqdm missing, or output to a
    file or a pipe) a plain line at most every ``every`` seconds (default ``_PROGRESS_EVERY``), and a last
    one at the end if any was printed (a command shorter than ``every`` prints none), so logs stay
    readable; nothing when ``enabled`` is false. ``step`` fits the ``callback`` of the samplers.

    Examples:
        >>> with _Progress(3, "demo", enabled=False) as p:
        ...     for _ in range(3):
        ...         p.update()
        >>> p.n
        3
    """

    def __init__(self, total: int, desc: str, *, enabled: bool = True, unit: str = "step",
                 every: float | None = None) -> None:
        self.total, self.desc, self.unit = max(int(total), 1), desc, unit
        self.every = _PROGRESS_EVERY if every is None else every
        self.enabled = enabled
        self.printed = False
        self.shown = 0
        self.n = 0
        self.t0 = self.last = time.perf_counter()
        self.bar: Any = None
        self._lock = threading.Lock()  # sampler callbacks of runs side by side (the demo) update it
        isatty = getattr(sys.stderr, "isatty", None)
        if enabled and callable(isatty) and isatty():
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=self.total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stage(self, desc: str) -> None:
        """Name what runs now (the bar's label, or the label of the next line)."""
        self.desc = desc
        if self.bar is not None:
            self.bar.set_description(desc)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done (from any thread)."""
        with self._lock:
            self.n += n
            if self.bar is not None:
                self.bar.update(n)
            elif self.enabled and time.perf_counter() - self.last >= self.every:
                self._line()

    def print(self, text: str) -> None:
        """Print a line on stdout without breaking the bar."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def step(self, info: Any = None) -> None:
        """One unit done (the signature of a sampler ``callback``; ``info`` is ignored)."""
        self.update()

    def close(self) -> None:
        """End the bar, or print the last line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.printed:
            if self.shown != min(self.n, self.total):
                self._line()
            self.enabled = False

    def _line(self) -> None:
        now = time.perf_counter()
        self.last = now
        self.printed = True
        done = self.shown = min(self.n, self.total)
        spent = now - self.t0
        left = f", about {spent * (self.total - done) / done:.0f} s left" if 0 < done < self.total else ""
        print(f"{self.desc}: {done}/{self.total} {self.unit}s ({100 * done / self.total:.0f} %), {spent:.0f} s"
              f"{left}", file=sys.stderr, flush=True)


def _pyplot(*, required: bool, what: str, where: str) -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or ``None`` (with a note) where it is optional and missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if required:
            raise fail(where, f"writing {what} needs matplotlib, which is not installed.",
                       "pip install 'localscore[plot]', or write only .npz files.") from None
        print(f"matplotlib is not installed: skipped {what} (pip install 'localscore[plot]').")
        return None
    return plt


def _write_png_grid(plt: Any, path: Path, images: Sequence[Sequence[Tensor]], marks: Sequence[Sequence[Tensor]], *,
                    title: str, row_labels: Sequence[str] | None = None,
                    col_titles: Sequence[str | None] | None = None, cell: float = 1.2, dpi: int = 100,
                    overwrite: bool = True) -> None:
    """A PNG grid of images with positions marked ``+`` (the demo's figure and ``sample --out FILE.png``).

    ``images[i][j]`` is ``[3, H, W]`` in ``[0, 1]`` (row ``i``, column ``j``; rows may be shorter, their last
    cells stay empty), ``marks[i][j]`` its ``[n, 2]`` ``(row, col)`` positions in pixels.
    """
    rows = len(images)
    cols = max(len(r) for r in images)
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 0.4, cell * rows + 0.5), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(images[i]):
                ax.axis("off")
                continue
            ax.imshow(images[i][j].permute(1, 2, 0).float().clamp(0, 1).numpy(), interpolation="nearest")
            pos = marks[i][j]
            if pos.numel():
                ax.plot(pos[:, 1].numpy(), pos[:, 0].numpy(), "+", color="white", ms=3, mew=0.6)
            if i == 0 and col_titles is not None and j < len(col_titles) and col_titles[j]:
                ax.set_title(col_titles[j], fontsize=8, loc="left")
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
    fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data), overwrite=overwrite, where="localscore")


# ----------------------------------------------------------------------------- argument types
def _int_at_least(lo: int, what: str, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int in ``lo..hi`` (``hi`` bounds what sizes memory or time: checked before any work)."""
    want = f"an int >= {lo}" if hi is None else f"an int in {lo}..{hi:,}"

    def parse(text: str) -> int:
        try:
            v = int(text) if len(text) <= 40 else None
        except ValueError:
            v = None
        if v is None:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer; expected {what}, {want}")
        if v < lo:
            raise argparse.ArgumentTypeError(f"{text} is too small; expected {what}, {want}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{v:,} is over the limit; expected {what}, {want}")
        return v

    return parse


MAX_SAMPLER_STEPS = 10_000
"""The most sampler steps a command runs (``--steps``); a noise grid of 10**9 steps would take 8 GB."""
MAX_IMAGES = 100_000
"""The most images per count (``evaluate --per-count``, ``demo --samples``) and per ``locality --images``."""
MAX_BATCH = 4096
"""The largest ``--batch-size`` (images per sampler call)."""
MAX_PNG_IMAGES = 256
"""The most images ``sample`` draws into a ``.png`` grid (more go to ``.npz`` only)."""
MAX_SAMPLE_BYTES = 8 * 2**30
"""The largest ``images`` array ``sample`` writes to ``.npz`` (8 GiB)."""
_SEED = _int_at_least(0, "a random seed", 2**63 - 1)


def _positive_float(what: str, hi: float = 1e6) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number; expected {what} > 0") from None
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"{text[:40]} is not a finite number > 0; expected {what}")
        if v > hi:
            raise argparse.ArgumentTypeError(f"{text[:40]} is over the limit; expected {what} in (0, {hi:g}]")
        return v

    return parse


def _counts_arg(text: str) -> list[int]:
    """``"0..10"`` or ``"1,2,5"`` -> list of counts."""
    from .lengthgen.data.scenes import MAX_OBJECTS

    shown = text[:40] + ("..." if len(text) > 40 else "")
    try:
        if len(text) > 2000:
            raise ValueError
        if ".." in text:
            a, b = text.split("..")
            lo, hi = int(a), int(b)
            if hi > MAX_OBJECTS:
                raise argparse.ArgumentTypeError(f"{shown!r} asks for {hi:,} objects; at most {MAX_OBJECTS} per image")
            out = list(range(lo, hi + 1))
        else:
            out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown!r} is not a count range like 0..10 or a list like 1,2,5") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"{shown!r} gives an empty or negative set of counts; use e.g. 0..10")
    if max(out) > MAX_OBJECTS:
        raise argparse.ArgumentTypeError(f"{shown!r} asks for {max(out):,} objects; at most {MAX_OBJECTS} per image")
    return out


def _load(checkpoint: str) -> Any:
    from .lengthgen import load_model

    return load_model(checkpoint)


# ----------------------------------------------------------------------------- demo
def _demo_oracle(args: argparse.Namespace) -> int:
    """``demo --oracle``: exact per-object oracle scores composed beyond the trained count (no training)."""
    from . import sampling
    from .compose import projective_from
    from .oracles import FactorizedObjects
    from .schedules import karras_sigmas

    out_dir = check_output(args.out, where="localscore demo", folder=True)
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
    how = "projective composition of single-object denoisers"
    print(f"Sampled model: the {how}; reference: exact samples of the joint.\n")
    header = f"{'objects':>7} {'sampler':>7} {'NFE':>5} {'mean err':>9} {'std err':>8} {'floor':>7} {'s':>6}"
    print(header)
    print("-" * len(header))
    t_all = time.perf_counter()
    with _Progress(len(counts) * len(samplers) * steps, "localscore demo", enabled=args.progress) as bar:
        for n in counts:
            layout = _grid_layout(n, size, spacing)
            cond = Conditions.from_lists([layout] * n_samples, dtype=torch.float64)
            model = projective_from(oracle, cond)
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

                bar.stage(f"localscore demo ({n} objects, {name})")
                x0 = torch.randn(n_samples, 3, size, size, generator=gen, dtype=torch.float64) * sigmas[0]
                t0 = time.perf_counter()
                out = fn(counted, x0, sigmas, generator=gen, callback=bar.step)
                dt = time.perf_counter() - t0
                err = _moment_errors(out, reference, exact_mean)
                rows.append({"objects": n, "sampler": name, "nfe": nfe[0], **err,
                             "floor_mean_error": floor["mean_error"], "floor_std_error": floor["std_error"],
                             "seconds": round(dt, 3)})
                bar.print(f"{n:>7} {name:>7} {nfe[0]:>5} {err['mean_error']:>9.4f} {err['std_error']:>8.4f} "
                          f"{floor['std_error']:>7.4f} {dt:>6.1f}")
                if name == "heun":
                    grids.append(out[:4])
    total = time.perf_counter() - t_all
    worst = max(r["std_error"] / max(r["floor_std_error"], 1e-12) for r in rows)
    print("\nfloor = the same std error between two independent exact sample sets (pure sampling noise).")
    print(f"Worst std error / floor: {worst:.2f} (about 1-2 means indistinguishable from exact). "
          f"Total {total:.1f} s.")
    payload = {"oracle": {"size": size, "object_radius": radius, "channels": 3},
               "samples_per_count": n_samples, "steps": steps, "seed": args.seed,
               "model": how, "rows": rows}
    _write_json(out_dir / "demo.json", payload)
    print(f"wrote {out_dir / 'demo.json'}")
    plt = _pyplot(required=False, what="demo.png", where="localscore demo")
    if plt is None:
        return 0
    lo = min(float(g.min()) for g in grids)
    hi = max(float(g.max()) for g in grids)
    images = [[((t - lo) / (hi - lo + 1e-8)) for t in g] for g in grids]
    marks = [[torch.tensor(_grid_layout(n, size, spacing))] * len(g) for n, g in zip(counts, grids)]
    _write_png_grid(plt, out_dir / "demo.png", images, marks, row_labels=[f"{n} obj." for n in counts],
                    title="Heun samples of the composed score (+ requested positions)", cell=1.4)
    print(f"wrote {out_dir / 'demo.png'}")
    return 0


_DEMO_MODELS = ("local-32", "baseline-32")
_DEMO_COUNTS = (1, 2, 3, 8, 9, 10)
"""The object counts the demo samples: the training counts 1-3, then 8-10, where the footer compares the runs."""
_DEMO_SETTINGS = (6, 16)
"""``(images per count, Euler steps)`` of the demo; ``_DEMO_QUICK`` those of ``--quick``."""
_DEMO_QUICK = (2, 12)
_DEMO_STRATEGY: Strategy = "auto"
"""How the demo's compositions evaluate their passes: ``auto``, one call per pass on the CPU. ``batched`` (all
passes of a step in one call) was measured side by side on the 2-core CPU at the demo's size: 8 % less user
time but 1 s of system time per step (page faults of the large batch), 27 % more CPU time in all (the
``localscore demo`` profile of docs/experiments.md)."""
_GAP = 0.1
"""How far (as a rate) two numbers of the demo's footer must differ before it calls them different."""


def _demo_runs(method: str | None) -> list[tuple[str, str]]:
    """``(model, method)`` pairs of the trained demo.

    Default: the local model jointly and composed; the baseline (trained with one labelled object per image)
    composed projectively, the way the paper tests it. ``--method masked`` samples both with the
    sampling-time intervention (each object's score acts only near it).
    """
    if method is not None:
        return [(name, method) for name in _DEMO_MODELS]
    return [("local-32", "joint"), ("local-32", "projective"), ("baseline-32", "projective")]


def _demo_footer(evals: Mapping[str, Any], results: Mapping[str, Any], models: Mapping[str, Any],
                 counts: Sequence[int]) -> list[str]:
    """The demo's closing lines, every claim computed from the table's numbers.

    Per run: the mean perfect rate and recall over the model's training counts and over the counts beyond,
    then a note where the recall falls beyond the training counts, where the perfect rate on the training
    counts is well below the recall (extra objects drawn), and where the model fails its training counts.
    """
    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    width = max(len(k) for k in results)
    width = max(width, len("mean over the counts"))
    lines = [f"{'mean over the counts':<{width}} {'trained':>8} {'perfect':>8} {'recall':>7} {'beyond':>8} "
             f"{'perfect':>8} {'recall':>7}"]
    notes: list[str] = []
    for k in results:
        model = models[results[k]["model"]]
        trained = set(model.scene.counts)
        inside = [c for c in counts if c in trained]
        beyond = [c for c in counts if c > max(trained)]
        rows = {c: evals[k].row(c) for c in counts}
        p_in = mean([rows[c].perfect.rate for c in inside])
        r_in = mean([rows[c].recall.rate for c in inside])
        p_out = mean([rows[c].perfect.rate for c in beyond])
        r_out = mean([rows[c].recall.rate for c in beyond])
        prec_in = mean([rows[c].precision.rate for c in inside])
        lines.append(f"{k:<{width}} {_span(inside):>8} {p_in:>8.2f} {r_in:>7.2f} {_span(beyond):>8} {p_out:>8.2f} "
                     f"{r_out:>7.2f}")
        if r_in < 0.5:
            notes.append(f"{k} fails already on its training counts {_span(inside)} (recall {r_in:.2f}): it is "
                         f"undertrained ({model.meta.get('steps', '?')} steps), so its row measures that, not "
                         "length generalization.")
            continue
        if r_out < r_in - _GAP:
            notes.append(f"{k}: recall falls from {r_in:.2f} on the training counts to {r_out:.2f} beyond them.")
        else:
            notes.append(f"{k}: recall holds beyond the training counts ({r_in:.2f} -> {r_out:.2f}).")
        if p_in < r_in - _GAP:
            text = f"{k}: on its training counts, perfect {p_in:.2f} is below recall {r_in:.2f}"
            if prec_in < 1:
                text += f": it draws objects that were not requested (precision {prec_in:.2f})"
                if model.scene.labelling == "one":
                    text += ", as its training images held unlabelled objects (one labelled object per image)"
            notes.append(text + "; its recall measures the requested objects.")
    notes += _demo_top_notes(evals, results, models, counts)
    return lines + [""] + [f"note: {n}" for n in notes]


def _demo_top_notes(evals: Mapping[str, Any], results: Mapping[str, Any], models: Mapping[str, Any],
                    counts: Sequence[int]) -> list[str]:
    """The runs compared at the largest counts shown (those within 2 of the largest, beyond every model's
    training counts): the perfect rate pooled over those counts with its Wilson 95 % interval, and, for each
    pair of runs whose rates differ by more than ``_GAP``, whether the intervals separate them."""
    from .lengthgen.evaluate import Proportion

    seen = max(max(models[r["model"]].scene.counts) for r in results.values())
    top = [c for c in counts if c >= max(counts) - 2 and c > seen]
    if not top or len(results) < 2:
        return []
    pooled = {}
    for k in results:
        rows = [evals[k].row(c).perfect for c in top]
        pooled[k] = Proportion(sum(p.successes for p in rows), sum(p.trials for p in rows))
    at = f"at {_span(top)} objects"
    out = [f"{at}, perfect rate with its Wilson 95 % interval ({next(iter(pooled.values())).trials} images per run): "
           + "; ".join(f"{k} {p.format(ci=True)}" for k, p in pooled.items()) + "."]
    ranked = sorted(pooled, key=lambda k: -pooled[k].rate)
    for i, a in enumerate(ranked):
        for b in ranked[i + 1:]:
            pa, pb = pooled[a], pooled[b]
            if pa.rate - pb.rate <= _GAP:
                continue
            if pa.interval()[0] > pb.interval()[1]:
                out.append(f"{at}, {a} draws more scenes perfectly than {b} ({pa.rate:.2f} vs {pb.rate:.2f}); "
                           "the intervals do not overlap.")
            else:
                out.append(f"{at}, {a} ({pa.rate:.2f}) and {b} ({pb.rate:.2f}) are not separated: their intervals "
                           "overlap (more images per count, --samples, would tell).")
    return out


_DEMO_FILES = ("demo.json", "demo.png")
"""The files a demo writes into its ``--out`` folder."""
_BACKGROUND_FILES = ("background.json", "background.png")
"""The files ``demo --background`` writes into its ``--out`` folder."""


def _demo_background(args: argparse.Namespace, out_dir: Path) -> int:
    """``localscore demo --background``: projective composition over four backgrounds (shipped bg-* models)."""
    from .lengthgen import BACKGROUND_MODELS, checkpoint_dir
    from .lengthgen import _background_demo as bg

    clash = [flag for flag, on in (("--oracle", args.oracle), ("--retrain", args.retrain),
                                   ("--method", args.method is not None)) if on]
    if clash:
        raise fail("localscore demo", f"--background cannot be combined with {', '.join(clash)}.",
                   "run `localscore demo --background` alone (it composes the shipped bg-* models).")
    missing = [n for n in BACKGROUND_MODELS if not (checkpoint_dir() / f"{n}.pt").is_file()]
    if missing:
        raise fail("localscore demo", f"the shipped models {missing} are not in {str(checkpoint_dir())!r}.",
                   "reinstall localscore, or train them with `python benchmarks/background.py --out runs/background "
                   "--stage train --seeds 0` and `--stage ship`.")
    return bg.run(args, out_dir, _write_json, _pyplot, _write_png_grid)


def _demo(args: argparse.Namespace) -> int:
    """``localscore demo``: one writer per output folder; a previous demo's files are replaced, and said so.

    The folder is locked (:func:`localscore._io.run_lock`) for the whole demo, so a second demo on the same
    ``--out`` is refused at once, naming the first one's pid, instead of interleaving its files. A demo is
    meant to be re-run, so, unlike ``sample``, it needs no ``--overwrite``: the previous ``demo.json`` and
    ``demo.png`` are replaced (each atomically, when the new one is written) and the demo prints that it
    replaces them before it starts.
    """
    where = "localscore demo"
    out_dir = check_output(args.out, where=where, folder=True)
    created = not out_dir.exists()
    try:
        with run_lock(out_dir, where=where):
            remove_stale_temps(out_dir)
            files = _BACKGROUND_FILES if args.background else _DEMO_FILES
            previous = [name for name in files if (out_dir / name).exists()]
            if previous:
                print(f"localscore demo: {str(out_dir)!r} holds a previous demo's {' and '.join(previous)}; this run "
                      "replaces them (pass another --out to keep them).", flush=True)
            if args.background:
                return _demo_background(args, out_dir)
            return _demo_oracle(args) if args.oracle else _demo_trained(args)
    except BaseException:
        if created:  # leave no empty folder behind a demo that failed before writing anything
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


def _demo_trained(args: argparse.Namespace) -> int:
    from .lengthgen import MODEL_NAMES, ExperimentConfig, checkpoint_dir, evaluate_model, load_model
    from .lengthgen.evaluate import EvaluationResult, request_scenes

    out_dir = check_output(args.out, where="localscore demo", folder=True)
    sources: dict[str, str] = {n: n for n in MODEL_NAMES}
    if args.retrain:
        sources = _retrain(args, out_dir)
    missing = [n for n, src in sources.items() if src in MODEL_NAMES and not (checkpoint_dir() / f"{src}.pt").is_file()]
    if missing:
        raise fail("localscore demo", f"the shipped models {missing} are not in {str(checkpoint_dir())!r}.",
                   "run `localscore demo --retrain` to train them, or `localscore demo --oracle`.")
    counts = sorted(set(args.counts)) if args.counts else list(_DEMO_COUNTS)
    per_count = args.samples or (_DEMO_QUICK[0] if args.quick else _DEMO_SETTINGS[0])
    steps = args.steps or (_DEMO_QUICK[1] if args.quick else _DEMO_SETTINGS[1])
    models = {name: load_model(src) for name, src in sources.items()}
    runs = _demo_runs(args.method)
    trained = _span(sorted({c for m in models.values() for c in m.scene.counts}))
    print(f"localscore demo: length generalization of two 32x32 models trained on scenes with {trained} objects.")
    for name, m in models.items():
        meta = m.meta
        print(f"  {name}: {m.kind} network, labelling {m.scene.labelling!r}, {meta.get('parameters', '?')} "
              f"parameters, {meta.get('steps', '?')} training steps (batch {meta.get('batch_size', '?')})")
    said = {"joint": "all objects in one pass", "projective": "one pass per object, composed",
            "masked": "one pass per object, each acting only near its object (sampling-time locality)",
            "localized": "one pass per object on a window around it, acting only near it (sampling-time locality)"}
    methods = dict.fromkeys(m for _, m in runs)
    print(f"Sampling {per_count} images for each of {_span(counts)} objects ({steps} Euler steps). "
          + "; ".join(f"'{m}': {said[m]}" for m in methods) + ".\n", flush=True)
    t_all = time.perf_counter()
    results: dict[str, Any] = {}
    images: dict[str, Tensor] = {}

    def run(name: str, method: str, bar: _Progress) -> tuple[dict[str, Any], Tensor]:
        t0 = time.perf_counter()
        keep: list[Tensor] = []
        exp = ExperimentConfig.from_dict(models[name].meta["experiment"])  # masks as the model was benchmarked
        res = evaluate_model(models[name], method, counts=counts, per_count=per_count, seed=args.seed,
                             steps=steps, mask_radius=exp.mask_radius, crop=exp.crop,
                             batch_size=per_count * len(counts), strategy=_DEMO_STRATEGY, callback=bar.step,
                             meta={"model": name, "method": method}, keep_images=keep)
        return ({"model": name, "method": method, "evaluation": res.to_dict(),
                 "seconds": round(time.perf_counter() - t0, 1), "meta": models[name].meta}, torch.cat(keep))

    # The runs are independent (each draws from its own seeded generator), so on a machine with several cores
    # they run side by side in threads, one torch thread each: the demo's batches are too small for torch's
    # intra-op threads to pay off, and every run gives the same numbers as alone on one thread.
    workers = min(torch.get_num_threads(), len(runs))
    with _Progress(len(runs) * steps, "localscore demo", enabled=args.progress) as bar:
        if workers > 1:
            bar.stage(f"localscore demo ({len(runs)} runs, {workers} at a time)")
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    by_cost = sorted(runs, key=lambda r: r[1] == "joint")  # compositions first: the longest
                    futures = {r: pool.submit(run, r[0], r[1], bar) for r in by_cost}
                    done = {r: f.result() for r, f in futures.items()}
            finally:
                torch.set_num_threads(threads)
        else:
            done = {}
            for name, method in runs:
                bar.stage(f"localscore demo ({name} {method})")
                done[(name, method)] = run(name, method, bar)
    for name, method in runs:
        results[f"{name} {method}"], images[f"{name} {method}"] = done[(name, method)]
    total = time.perf_counter() - t_all

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
          "place in its colour; 'recall': share of the requested objects drawn at their place. Wilson intervals "
          f"and exact-count accuracy are in demo.json. Sampling took {total:.0f} s in all.\n")
    print("\n".join(_demo_footer(evals, results, models, counts)))
    requested = request_scenes(models["local-32"].scene.replace(counts=tuple(counts)), counts, per_count,
                               seed=args.seed)
    payload = {"counts": counts, "per_count": per_count, "steps": steps, "seed": args.seed,
               "seconds": round(total, 1), "runs": results}
    _write_json(out_dir / "demo.json", payload)
    print(f"wrote {out_dir / 'demo.json'}")
    plt = _pyplot(required=False, what="demo.png", where="localscore demo")
    if plt is not None:
        _demo_png(plt, out_dir / "demo.png", images, requested, counts, per_count, trained)
    return 0


def _demo_png(plt: Any, path: Path, images: dict[str, Tensor], requested: Any, counts: list[int], per_count: int,
              trained: str) -> None:
    show = min(per_count, 3)
    names = list(images)
    grid: list[list[Tensor]] = []
    marks: list[list[Tensor]] = []
    for i in range(len(counts)):
        grid.append([images[name][i * per_count + k] for name in names for k in range(show)])
        marks.append([requested.pos[i * per_count + k][requested.valid[i * per_count + k]]
                      for _ in names for k in range(show)])
    titles = [name if k == 0 else None for name in names for k in range(show)]
    _write_png_grid(plt, path, grid, marks, row_labels=[f"{c} obj." for c in counts], col_titles=titles,
                    title=f"Requested positions marked +; trained on {trained} objects")
    print(f"wrote {path}")


def _retrain(args: argparse.Namespace, out_dir: Path) -> dict[str, str]:
    """Train local-32 and baseline-32 from the benchmark config; return their model files."""
    from .lengthgen import DEMO_EXPERIMENTS, demo_experiments, train_experiment

    exps = demo_experiments()
    sources = {}
    for name in _DEMO_MODELS:
        exp = exps[name]
        run_dir = out_dir / "retrain" / name
        print(f"training {name} ({DEMO_EXPERIMENTS[name]}, {exp.train.get('steps')} steps) -> {run_dir}", flush=True)
        train_experiment(exp, run_dir, seed=exp.seeds[0], steps=args.retrain_steps, progress=args.progress)
        sources[name] = str(run_dir / "model.pt")
    return sources


# ----------------------------------------------------------------------------- train
def _train(args: argparse.Namespace) -> int:
    from .lengthgen import ExperimentConfig, demo_experiments, load_experiments, train_experiment

    if args.print_config:
        print(json.dumps(demo_experiments()[args.print_config].to_dict(), indent=1))
        return 0
    if args.config is None:
        raise fail("localscore train", "no CONFIG file given.",
                   "pass a JSON config, or start from a shipped model's: "
                   "`localscore train --print-config local-32 > local.json`.")
    out = check_output(args.out, where="localscore train", folder=True)
    path = Path(args.config)
    raw = read_json(path, where="localscore train", what="config")
    if isinstance(raw, dict) and "experiments" in raw:
        _, exps = load_experiments(path)
    else:
        exps = [ExperimentConfig.from_dict(raw)]
    if args.only:
        names = [e.name for e in exps]
        missing = sorted(set(args.only) - set(names))
        if missing:
            raise fail("localscore train", f"--only names {missing} are not in the config; it has {names}.")
        exps = [e for e in exps if e.name in args.only]
    for exp in exps:
        seeds = [args.seed] if args.seed is not None else list(exp.seeds)
        for seed in seeds:
            run_dir = out / exp.name / f"seed{seed}"
            check_output(run_dir, where="localscore train", folder=True)
            print(f"training {exp.name} (seed {seed}) -> {run_dir}", flush=True)
            model = train_experiment(exp, run_dir, seed=seed, steps=args.steps, progress=args.progress)
            print(f"  done: {model.meta['steps']} steps; model file {run_dir / 'model.pt'}", flush=True)
    return 0


# ----------------------------------------------------------------------------- sample
def _check_spacing(layout: Any, cfg: Any, where: str) -> list[str]:
    """Refuse objects whose outlines overlap; return warnings for objects closer than any training pair.

    With ``b`` the bounding radius of an object as the model's renderer draws it (its shape and size, see
    `localscore.lengthgen.data.bounding_radius`), objects ``i`` and ``j`` overlap when
    ``|c_i - c_j| < b_i + b_j``; the training scenes keep ``|c_i - c_j| >= b_i + b_j + min_gap``
    (``SceneConfig.min_gap``).
    """
    from .lengthgen.data import bounding_radius

    b = bounding_radius(layout.shape.clamp(min=0), layout.size.clamp(min=0), cfg.object_radii())
    gap = cfg.gap
    warnings = []
    for img in range(layout.batch_size):
        idx = layout.valid[img].nonzero().flatten().tolist()
        for a, i in enumerate(idx):
            for j in idx[a + 1:]:
                d = float(torch.linalg.vector_norm(layout.pos[img, i] - layout.pos[img, j]))
                touch = float(b[img, i] + b[img, j])
                if d < touch:
                    raise fail(where, f"image {img}: objects {i} and {j} are {d:.1f} px apart; drawn by this model "
                               f"(bounding radii {float(b[img, i]):.1f} and {float(b[img, j]):.1f} px) they would "
                               "overlap, which it never saw in training.",
                               f"move them at least {touch + gap:.1f} px apart (the closest a training scene "
                               "places two such objects).")
                if d < touch + gap:
                    warnings.append(f"image {img}: objects {i} and {j} are {d:.1f} px apart, closer than the "
                                    f"{touch + gap:.1f} px of any such pair in the training scenes; they may merge.")
    return warnings


def _sample(args: argparse.Namespace) -> int:
    import numpy as np

    from .lengthgen import sampler
    from .lengthgen.data import SHAPES, SIZES, load_layout

    where = "localscore sample"
    outs = [check_output(o, where=where, suffixes=_SAMPLE_OUTPUTS) for o in args.out]
    if len({o.resolve() for o in outs}) < len(outs):
        raise fail(where, f"--out names the same file twice ({[str(o) for o in outs]}).",
                   "give one .npz and/or one .png file.")
    for out in outs:
        _refuse_existing(out, args.overwrite, where)
    plt = None
    if any(o.suffix.lower() == ".png" for o in outs):
        plt = _pyplot(required=True, what="a .png file", where=where)
    model = _load(args.checkpoint)
    scene_cfg = model.scene
    layout = load_layout(args.layout, max_objects=args.max_objects, default_shape=scene_cfg.shapes[0],
                         default_size=scene_cfg.sizes[0], where=where)
    res = layout.resolution
    if model.kind != "local" and res != model.resolution:
        raise fail(where, f"the layout's size is {res} but the model {args.checkpoint!r} draws "
                   f"{model.resolution}x{model.resolution} images (a global U-Net works at its training size only).",
                   f"set \"size\": {model.resolution} in the layout.")
    if res != model.resolution:
        print(f"note: the local network was trained at {model.resolution}x{model.resolution}; sampling "
              f"{res}x{res} (it is translation equivariant, any size works).", file=sys.stderr)
        model = _resized(model, res)
    for w in _check_spacing(layout, model.scene, where):
        print(f"warning: {w}", file=sys.stderr)
    shapes_used = {SHAPES[int(v)] for v in layout.shape[layout.valid].tolist()}
    sizes_used = {SIZES[int(v)] for v in layout.size[layout.valid].tolist()}
    unseen = sorted((shapes_used - set(scene_cfg.shapes)) | (sizes_used - set(scene_cfg.sizes)))
    if unseen:
        print(f"warning: the model never saw {unseen} in training (it saw shapes {list(scene_cfg.shapes)}, sizes "
              f"{list(scene_cfg.sizes)}).", file=sys.stderr)
    n = layout.batch_size
    if plt is not None and n > MAX_PNG_IMAGES:
        raise fail(where, f"the layout requests {n:,} images; a .png grid shows at most {MAX_PNG_IMAGES}.",
                   "write only a .npz file for a layout that long, or split the layout.")
    nbytes = n * model.network.channels * res * res * 4
    if nbytes > MAX_SAMPLE_BYTES:
        raise fail(where, f"the layout requests {n:,} images of {res}x{res}: {nbytes / 2**30:.1f} GiB of output, over "
                   f"the limit of {MAX_SAMPLE_BYTES / 2**30:.0f} GiB.", "split the layout into several files.")
    g = torch.Generator().manual_seed(args.seed)
    batch = args.batch_size
    chunks = range(0, n, batch)
    images = np.empty((n, model.network.channels, res, res), dtype=np.float32)
    with _Progress(args.steps * len(chunks), "localscore sample", enabled=args.progress) as bar:
        fn = sampler(model, args.method, steps=args.steps, solver=args.solver, mask_radius=args.mask_radius,
                     crop=args.crop, callback=bar.step)
        for start in chunks:   # a long layout is streamed: one sampler call per batch of --batch-size images
            part = layout[start:start + batch]
            with torch.inference_mode():
                images[start:start + batch] = fn(part.conditions(), g).numpy()
    how = f"{args.method} sampling, {args.steps} {args.solver} steps, seed {args.seed}"
    for out in outs:
        if out.suffix.lower() == ".npz":
            arrays = {"images": images, "positions": layout.pos.numpy(), "valid": layout.valid.numpy()}

            def savez(f: Any, a: dict[str, Any] = arrays) -> None:
                np.savez(f, **a)

            atomic_write(out, savez, overwrite=args.overwrite, where=where)
            print(f"wrote {out}: images {list(images.shape)} in [0, 1] ({how})")
        else:
            t = torch.from_numpy(images)
            cols = min(n, 8)
            grid = [[t[i] for i in range(r, min(r + cols, n))] for r in range(0, n, cols)]
            marks = [[layout.pos[i][layout.valid[i]] for i in range(r, min(r + cols, n))] for r in range(0, n, cols)]
            _write_png_grid(plt, out, grid, marks, col_titles=[f"image {i}" for i in range(cols)],
                            row_labels=[f"images {r}-{min(r + cols, n) - 1}" for r in range(0, n, cols)]
                            if n > cols else None,
                            title=f"{Path(args.layout).name}, seed {args.seed}: requested positions marked +",
                            overwrite=args.overwrite)
            print(f"wrote {out}: a grid of {n} images, requested positions marked + ({how})")
    return 0


def _refuse_existing(out: Path | None, overwrite: bool, where: str) -> None:
    """Refuse an existing output file unless ``--overwrite`` (checked before any work)."""
    if out is not None and out.exists() and not overwrite:
        raise fail(where, f"--out {str(out)!r} exists; it is not overwritten without --overwrite.",
                   "pass --overwrite to replace it, or choose another --out name.")


def _resized(model: Any, res: int) -> Any:
    """The same model with its scene at another image size (local networks only)."""
    import dataclasses

    return dataclasses.replace(model, scene=model.scene.replace(resolution=res))


# ----------------------------------------------------------------------------- evaluate
def _evaluate(args: argparse.Namespace) -> int:
    from .lengthgen import evaluate_model

    out = None if args.out is None else check_output(args.out, where="localscore evaluate", suffixes=_JSON_OUTPUT)
    _refuse_existing(out, args.overwrite, "localscore evaluate")
    model = _load(args.checkpoint)
    t0 = time.perf_counter()
    batches = math.ceil(len(args.counts) * args.per_count / args.batch_size)
    with _Progress(batches * args.steps, "localscore evaluate", enabled=args.progress) as bar:
        res = evaluate_model(model, args.method, counts=args.counts, per_count=args.per_count, seed=args.seed,
                             steps=args.steps, solver=args.solver, mask_radius=args.mask_radius, crop=args.crop,
                             batch_size=args.batch_size, callback=bar.step,
                             meta={"checkpoint": str(args.checkpoint)})
    print(f"{args.checkpoint} ({model.kind}, {args.method} sampling), {args.per_count} images per count, "
          f"{time.perf_counter() - t0:.0f} s:\n")
    print(res.to_markdown(ci=True))
    if out is not None:
        _write_json(out, res.to_dict())
        print(f"\nwrote {out}")
    return 0


# ----------------------------------------------------------------------------- locality
def _locality(args: argparse.Namespace) -> int:
    from .lengthgen import locality_profile

    where = "localscore locality"
    path = None if args.out is None else check_output(args.out, where=where, suffixes=_JSON_OUTPUT)
    _refuse_existing(path, args.overwrite, where)
    model = _load(args.checkpoint)
    with _Progress(len(args.sigmas), where, enabled=args.progress, unit="noise level") as bar:
        prof = locality_profile(model.denoiser, model.scene, sigmas=args.sigmas, count=args.count,
                                n_images=args.images, region_radius=args.radius, seed=args.seed,
                                callback=lambda i: bar.update())
    r = prof.region_radius
    origin = "--radius" if args.radius is not None else f"the default, {r / model.resolution:.2g} x the image side"
    print(f"{args.checkpoint} ({model.kind}): {args.images} image{'s' if args.images != 1 else ''} with "
          f"{args.count} objects; region radius "
          f"R = {r:.1f} px ({origin}).\n")
    print(f"{'sigma':>7} {'cond. index':>11} {'on others':>9} {'infl. r90':>9} {'pixel r90':>9}")
    for i, s in enumerate(prof.sigmas):
        print(f"{s:>7.3f} {prof.index[i]:>11.3f} {prof.on_others[i]:>9.3f} "
              f"{prof.radius[i]:>9.1f} {prof.pixel_radius[i]:>9.1f}")
    print("\n".join([
        "",
        "Per noise level sigma, means over objects and images. An object's influence: how much the output changes",
        "when the object is removed from the conditioner set, pixel by pixel.",
        f"  cond. index  share of an object's influence within R = {r:.1f} px of it (Chebyshev); 1 = local.",
        "  on others    share of it within R px of the other objects; low = objects do not interfere. The regions",
        f"               of objects less than 2R = {2 * r:.1f} px apart overlap, so the shares can add up to more "
        "than 1.",
        "  infl. r90    distance (px) from an object within which 90 % of its influence lies.",
        "  pixel r90    radius (px) around an output pixel holding 90 % of its sensitivity to the input pixels",
        "               (squared Jacobian).",
    ]))
    if path is not None:
        _write_json(path, prof.to_dict())
        print(f"\nwrote {path}")
    return 0


# ----------------------------------------------------------------------------- entry point
class _Deprecated(argparse.Action):
    """A flag of 0.1.0 kept for one release: hidden from ``--help``, it warns on stderr and sets ``dest``."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, value: Any = None, note: str = "",
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help=argparse.SUPPRESS, **kwargs)
        self.value, self.note = value, note

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"localscore: warning: {option_string} is deprecated and will be removed in 0.3; {self.note}",
              file=sys.stderr)
        if self.value is not None:
            setattr(namespace, self.dest, self.value)


def _deprecated_flags(q: argparse.ArgumentParser, *, demo: bool = False) -> None:
    """The 0.1.0 flags that progress-by-default replaced: ``--quiet`` (all commands), ``--progress`` and
    ``--trained`` (demo)."""
    q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="on an error, show the Python traceback too (for a bug report)")
    q.add_argument("--quiet", dest="progress", action=_Deprecated, value=False, note="use --no-progress.")
    if demo:
        q.add_argument("--progress", dest="progress", action=_Deprecated, value=True,
                       note="progress is shown by default now.")
        q.add_argument("--trained", dest="progress", action=_Deprecated,
                       note="the shipped models are what the demo samples by default; drop the flag.")


class _Formatter(argparse.HelpFormatter):
    """Descriptions kept in paragraphs; ``(default: X)`` only where a default means something.

    Descriptions: paragraphs (separated by blank lines) are wrapped to the terminal, ``* `` bullets each on
    their own lines, indented blocks (code) kept as written. The default is not appended to required options,
    flags, options whose default is ``None`` (their help says what happens then), or help that names its
    default already.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for para in re.split(r"\n\s*\n", text.strip("\n")):
            if para.startswith("    "):
                blocks.append(textwrap.indent(para, indent))
                continue
            items = re.split(r"\n(?=\* )", para)
            blocks.append("\n".join(
                textwrap.fill(" ".join(item.split()), width, initial_indent=indent,
                              subsequent_indent=indent + ("  " if item.startswith("* ") else ""),
                              break_on_hyphens=False, break_long_words=False)
                for item in items))
        return "\n\n".join(blocks)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.required or action.nargs == 0 or not action.option_strings
                or action.default is None or action.default is argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def _plain(text: str) -> str:
    """Docstring markup -> plain text for ``--help``: code spans lose their backticks.

    Examples:
        >>> _plain("run `localscore demo` or ``x``")
        'run localscore demo or x'
    """
    return re.sub(r"`+([^`]*)`+", r"\1", text)


def _desc(*paragraphs: str) -> str:
    """A help description of several paragraphs (wrapped by :class:`_Formatter`)."""
    return "\n\n".join(paragraphs)


_LAYOUT_HELP = ('LAYOUT.json: {"size": 32, "images": [[{"pos": [row, col], "color": "red", "shape": "disc", '
                '"size": "small"}, ...], ...]}: "size" is the image side in pixels, one list of objects per image '
                '(an empty list for none), positions in pixels from the top-left pixel centre, colours gray, red, '
                'blue, green, brown, purple, cyan, yellow; "shape" (disc / square / triangle) and "size" (small / '
                'large) default to the first the model was trained with.')
_SPACING_HELP = ("Objects whose outlines would overlap as the model draws them (centres closer than the sum of "
                 "their bounding radii) are refused; objects closer than the model's training scenes ever place "
                 "two objects (that sum plus the scene's min_gap) are sampled with a warning.")


def _parser() -> argparse.ArgumentParser:
    from .lengthgen import MODEL_NAMES

    p = _Parser(prog="localscore", description=_plain(__doc__ or ""), formatter_class=_Formatter)
    p.add_argument("--debug", action="store_true",
                   help="on an error, show the Python traceback too (for a bug report)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    methods = ["joint", "projective", "masked", "localized"]
    no_progress = "no progress on stderr (otherwise: a tqdm bar on a terminal, else a line every 10 s)"

    d = sub.add_parser("demo", help="length generalization of the shipped models (or --oracle: exact scores)",
                       description=_desc(
                           "The shipped 32x32 models local-32 (local conditional network, every object labelled) "
                           "and baseline-32 (the failing baseline: a global U-Net trained with one labelled object "
                           "per image, composed per object), both trained on 1-3 objects, sampled for 1-3 and "
                           "8-10 objects, with the per-count table and the runs compared at 8-10 objects. Writes "
                           "DIR/demo.json and DIR/demo.png.",
                           "With --oracle: exact per-object scores of an object oracle composed beyond the trained "
                           "count, sampled with Euler and Heun against exact joint samples."),
                       formatter_class=_Formatter)
    d.add_argument("--out", metavar="DIR", default="localscore-demo", help="output folder, created if missing")
    d.add_argument("--seed", metavar="S", type=_SEED, default=0, help="random seed of the layouts and the samplers")
    d.add_argument("--samples", metavar="N", type=_int_at_least(1, "images per count", MAX_IMAGES), default=None,
                   help=f"images per object count (default: {_DEMO_SETTINGS[0]}; {_DEMO_QUICK[0]} with --quick; "
                   "--oracle: 256, 64)")
    d.add_argument("--steps", metavar="N", type=_int_at_least(1, "sampler steps", MAX_SAMPLER_STEPS), default=None,
                   help=f"sampler steps (default: {_DEMO_SETTINGS[1]}; {_DEMO_QUICK[1]} with --quick; --oracle: 48, "
                   "24)")
    d.add_argument("--counts", metavar="COUNTS", type=_counts_arg, default=None,
                   help=f"object counts, e.g. 1..10 or 1,2,3,8 (default: {','.join(map(str, _DEMO_COUNTS))}; "
                   "not with --oracle)")
    d.add_argument("--quick", action="store_true", help="a small, fast run (CI)")
    d.add_argument("--oracle", action="store_true",
                   help="instead: exact per-object scores of an object oracle, composed beyond the trained count")
    d.add_argument("--background", action="store_true",
                   help="instead: single-object models composed over an empty, a separately trained empty, the "
                   "unconditional (Bayes) and a cluttered background, for 1, 2, 4 and 8 objects; writes "
                   "DIR/background.json and DIR/background.png (docs/background.md explains it)")
    d.add_argument("--retrain", action="store_true",
                   help="train local-32 and baseline-32 from scratch first, then sample them (CPU-hours)")
    d.add_argument("--retrain-steps", metavar="N", type=_int_at_least(1, "training steps", MAX_TRAIN_STEPS),
                   default=None,
                   help="training steps of --retrain (default: the steps recorded in the shipped models)")
    d.add_argument("--method", choices=methods, default=None,
                   help="condition both models this way (default: local-32 joint and projective, baseline-32 "
                   "projective; 'masked' is the sampling-time locality intervention)")
    d.add_argument("--no-progress", dest="progress", action="store_false", help=no_progress)
    _deprecated_flags(d, demo=True)
    d.set_defaults(func=_demo)

    t = sub.add_parser("train", help="train the experiments of a JSON config (resumable)",
                       description=_desc(
                           "Train every experiment (and seed) of a config file. Each run writes "
                           "OUT/NAME/seedS/{checkpoint.pt, log.jsonl, model.pt}; rerunning resumes.",
                           "CONFIG is one experiment, a JSON object with the fields of "
                           "localscore.lengthgen.ExperimentConfig: name, model ('local' or 'unet'), network "
                           "(fields of localscore.nn.LocalNetConfig or UNetConfig), scene (fields of "
                           "localscore.lengthgen.data.SceneConfig: resolution, counts, labelling, ...), train "
                           "(fields of localscore.train.TrainConfig: steps, batch_size, lr, ...), seeds, and the "
                           "test-time settings (methods, sampling_steps, ...). Or several: {\"defaults\": {...}, "
                           "\"experiments\": [{...}, ...]}, each experiment merged over the defaults.",
                           "Start from the config that trained a shipped model: localscore train --print-config "
                           "local-32 > local.json"),
                       formatter_class=_Formatter)
    t.add_argument("config", nargs="?", metavar="CONFIG", help="the JSON config file")
    t.add_argument("--print-config", choices=MODEL_NAMES, default=None, metavar="NAME",
                   help=f"print the config that trained a shipped model ({', '.join(MODEL_NAMES)}) and exit")
    t.add_argument("--out", metavar="DIR", default="runs", help="output folder, created if missing")
    t.add_argument("--only", nargs="+", metavar="NAME", help="train only these experiments")
    t.add_argument("--seed", metavar="S", type=_SEED, default=None,
                   help="train only this seed (default: the config's seeds)")
    t.add_argument("--steps", metavar="N", type=_int_at_least(1, "training steps", MAX_TRAIN_STEPS), default=None,
                   help="training steps (default: the config's)")
    t.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no training progress bar (it needs tqdm)")
    _deprecated_flags(t)
    t.set_defaults(func=_train)

    def model_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--checkpoint", required=True, metavar="PATH_OR_NAME",
                       help=f"a shipped model name ({', '.join(MODEL_NAMES)}), a model file, or a training run "
                       "folder")
        q.add_argument("--method", choices=methods, default="joint",
                       help="all objects in one conditioner set, or a (masked / cropped) composition of "
                       "per-object passes")
        q.add_argument("--steps", metavar="N", type=_int_at_least(1, "sampler steps", MAX_SAMPLER_STEPS), default=24,
                       help="sampler steps")
        q.add_argument("--solver", choices=["euler", "heun"], default="euler", help="ODE solver")
        q.add_argument("--mask-radius", metavar="PX", type=_positive_float("a radius in px"), default=6.0,
                       help="disc radius (px) of --method masked / localized")
        q.add_argument("--crop", metavar="PX", type=_int_at_least(4, "a window side in px", 4096), default=None,
                       help="window side (px) of --method localized (default: the whole image)")
        q.add_argument("--seed", metavar="S", type=_SEED, default=0, help="random seed")
        q.add_argument("--no-progress", dest="progress", action="store_false", help=no_progress)
        _deprecated_flags(q)

    s = sub.add_parser("sample", help="sample images for the objects of a layout file",
                       description=_desc(
                           "Sample one image per layout image.", _LAYOUT_HELP, _SPACING_HELP,
                           "Outputs, by suffix: FILE.npz gets 'images' [N, 3, H, W] float32 in [0, 1], "
                           "'positions' and 'valid'; FILE.png a grid of the images with the requested positions "
                           "marked + (needs matplotlib: pip install 'localscore[plot]'). Give both to write both."),
                       formatter_class=_Formatter)
    model_args(s)
    s.add_argument("--layout", required=True, metavar="LAYOUT.json", help="the layout JSON file")
    s.add_argument("--out", required=True, nargs="+", metavar="FILE",
                   help="output file(s): .npz (arrays) and/or .png (image grid)")
    s.add_argument("--max-objects", metavar="N", type=_int_at_least(1, "objects per image", MAX_OBJECTS), default=10,
                   help="refuse layouts with more objects per image")
    s.add_argument("--batch-size", metavar="N", type=_int_at_least(1, "images per sampler call", MAX_BATCH),
                   default=64, help="images per sampler call: a long layout is sampled in batches of N (the images "
                   "depend on N, as each batch draws its own noise)")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files (otherwise refused)")
    s.set_defaults(func=_sample)

    e = sub.add_parser("evaluate", help="per-count perfect rate and exact-count accuracy over counts 0..10",
                       description=_desc(
                           "Request random layouts with each count, sample, detect and match; prints per-count "
                           "exact-count accuracy, perfect rate, recall, precision with Wilson 95 % intervals."),
                       formatter_class=_Formatter)
    model_args(e)
    e.add_argument("--counts", metavar="COUNTS", type=_counts_arg, default=list(range(11)),
                   help="counts, e.g. 0..10 or 1,4,8 (default: 0..10)")
    e.add_argument("--per-count", metavar="N", type=_int_at_least(1, "images per count", MAX_IMAGES), default=20,
                   help="images per count")
    e.add_argument("--batch-size", metavar="N", type=_int_at_least(1, "images per sampler call", MAX_BATCH), default=64,
                   help="images per sampler call")
    e.add_argument("--out", metavar="FILE.json", default=None, help="also write the result as JSON")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out file (otherwise refused)")
    e.set_defaults(func=_evaluate)

    lo = sub.add_parser("locality", help="conditional locality index and pixel radius across sigma",
                        description=_desc(
                            "Measure how local a model is, per noise level: the share of each object's influence "
                            "near it (ablation) and the radius holding 90 % of the input-pixel Jacobian mass. "
                            "The output explains each column."),
                        formatter_class=_Formatter)
    lo.add_argument("--checkpoint", required=True, metavar="PATH_OR_NAME",
                    help="a shipped model name, a model file or a training run")
    lo.add_argument("--sigmas", metavar="SIGMA", type=_positive_float("a noise level"), nargs="+",
                    default=[0.05, 0.2, 0.5, 1.0, 2.0],
                    help="noise levels (default: 0.05 0.2 0.5 1 2)")
    lo.add_argument("--count", metavar="N", type=_int_at_least(2, "objects per image", MAX_OBJECTS), default=4,
                    help="objects per image")
    lo.add_argument("--images", metavar="N", type=_int_at_least(1, "images", 1000), default=4, help="images")
    lo.add_argument("--radius", metavar="PX", type=_positive_float("a radius in px"), default=None,
                    help="region radius R in px (default: that of localscore.lengthgen.locality_profile, "
                    "0.2 x the image side)")
    lo.add_argument("--seed", metavar="S", type=_SEED, default=0, help="random seed")
    lo.add_argument("--out", metavar="FILE.json", default=None, help="also write the result as JSON")
    lo.add_argument("--no-progress", dest="progress", action="store_false", help=no_progress)
    _deprecated_flags(lo)
    lo.add_argument("--overwrite", action="store_true", help="replace an existing --out file (otherwise refused)")
    lo.set_defaults(func=_locality)
    return p


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit code 2), naming the flag and ``--help``."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see `{self.prog} --help`)\n")


def _one_line(text: str) -> str:
    r"""A message on one line: its lines joined, the ``Fix:`` line after the problem.

    Examples:
        >>> _one_line("f: bad value.\n  Fix: use a good one.")
        'f: bad value. Fix: use a good one.'
    """
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _message(command: str, error: LocalScoreError) -> str:
    r"""``localscore CMD: error: ...`` on one line, without repeating the command where the message starts with it.

    Examples:
        >>> _message("sample", LocalScoreError("localscore sample (l.json): bad size"))
        'localscore sample: error: l.json: bad size'
        >>> _message("sample", LocalScoreError("load_model: no file\n  Fix: check the path."))
        'localscore sample: error: load_model: no file Fix: check the path.'
    """
    prefix = f"localscore {command}"
    text = str(error)
    if text.startswith(prefix):
        rest = text[len(prefix):]
        m = re.match(r" \(([^)]*)\):\s*", rest)
        text = f"{m.group(1)}: {rest[m.end():]}" if m else rest.lstrip(": ")
    return _one_line(f"{prefix}: error: {text}")


_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
"""OSErrors about a path the user named: their error (exit code 2); other OSErrors (a full disk) exit with 1."""


def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(e, oom):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                            or "not enough memory" in text)


def _failure(command: str, e: BaseException) -> tuple[str, int]:
    """The one line and the exit code of an exception that ends a command (see :func:`main`)."""
    prefix = f"localscore {command}: error:"
    if isinstance(e, LocalScoreError):
        return _message(command, e), 2
    if _out_of_memory(e):
        flags = {"sample": "--batch-size", "evaluate": "--batch-size", "demo": "--samples",
                 "locality": "--images", "train": "the config's train.batch_size"}.get(command, "smaller sizes")
        what = str(e).splitlines()[0][:120] if str(e) else ""
        return _one_line(f"{prefix} out of memory ({type(e).__name__}: {what})"
                         f". Fix: use fewer images at once ({flags}), or a machine with more memory."), 1
    if isinstance(e, _PATH_ERRORS):
        name = f" ({e.filename})" if e.filename else ""
        return f"{prefix} {e.strerror or e}{name}. Fix: check the path and its permissions.", 2
    if isinstance(e, OSError):
        name = f" ({e.filename})" if e.filename else ""
        return f"{prefix} {e.strerror or e}{name}", 1
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return (f"{prefix} internal error ({type(e).__name__}: {first}). Fix: rerun with --debug for the traceback "
            "and report it (https://github.com/localscore/localscore/issues)."), 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``localscore`` command line; returns the exit code (0 ok, 2 a user error, 1 anything else).

    Exit codes: 0 done; 2 a mistake in the command or its files (a bad flag, config, layout or model file, an
    output that exists or is a folder); 1 anything else (out of memory, a full disk, a bug); 130 interrupted.
    Every failure prints one line on stderr naming the problem and the fix; ``--debug`` adds the traceback.

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
    except KeyboardInterrupt:
        print("interrupted; nothing was written half-way.", file=sys.stderr)
        return 130
    except Exception as e:
        line, code = _failure(args.command, e)
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exc()
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
