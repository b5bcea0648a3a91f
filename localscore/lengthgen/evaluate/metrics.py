r"""Matching detections to requested objects, per-count length-generalization metrics, and tables.

For an image with ``n`` requested objects and ``m`` detections, detections are matched to requests
by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the cost
``|c_req - c_det|`` if it is at most ``max_distance`` and ``1e6`` otherwise, so the number of pairs
within ``max_distance`` is maximised first and their total distance second. A pair is *correct* when
it lies within ``max_distance`` and its attributes agree (colour by default; shape and size on
request; an unspecified requested attribute always agrees). Then, per requested count ``n``:

* exact-count accuracy: fraction of images with ``m == n``;
* perfect rate: fraction of images with ``m == n`` and ``n`` correct pairs;
* recall: correct pairs / requested objects (pooled over the images);
* precision: correct pairs / detections (pooled over the images).

Each is a :class:`Proportion` ``k / N`` with a Wilson score interval (95 % by default):
``(p + z^2 / (2N) -+ z sqrt(p (1 - p) / N + z^2 / (4 N^2))) / (1 + z^2 / N)`` with ``p = k / N``.
Recall and precision pool objects of the same images, which are not independent trials: their
intervals are optimistic.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..._errors import describe, fail
from ...conditions import Conditions
from ..data.attributes import ATTR_DIM, decode_attributes
from ..data.scenes import Scene

__all__ = [
    "CountResult",
    "EvaluationResult",
    "Proportion",
    "SeedTable",
    "comparison_table",
    "evaluate_counts",
    "match_objects",
    "wilson_interval",
]

_Z95 = 1.959963984540054
METRICS = ("exact_count", "perfect", "recall", "precision")


def wilson_interval(successes: int, trials: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / trials``.

    ``(p + z^2/(2n) -+ z sqrt(p(1-p)/n + z^2/(4n^2))) / (1 + z^2/n)``; ``(0, 1)`` when ``trials == 0``.

    Examples:
        >>> [round(v, 4) for v in wilson_interval(8, 10)]
        [0.4902, 0.9433]
    """
    def integer(v: object) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if not (integer(successes) and integer(trials) and 0 <= successes <= trials):
        raise fail("wilson_interval", f"got successes = {successes!r}, trials = {trials!r}; expected "
                   "integers with 0 <= successes <= trials.", "pass counts, e.g. wilson_interval(8, 10).")
    if isinstance(z, bool) or not isinstance(z, numbers.Real) or not (0 < z < math.inf):
        raise fail("wilson_interval", f"got z = {z!r}; expected a finite number > 0 (the normal quantile of the "
                   "interval's confidence).", "leave the default (1.96, a 95 % interval) or pass e.g. z=2.576.")
    if trials == 0:
        return (0.0, 1.0)
    n = float(trials)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Proportion:
    """``successes`` out of ``trials``, with its rate and Wilson interval.

    Examples:
        >>> Proportion(9, 10).rate, Proportion(0, 0).format()
        (0.9, '–')
    """

    successes: int
    trials: int

    @property
    def rate(self) -> float:
        """``successes / trials`` (NaN when there are no trials)."""
        return self.successes / self.trials if self.trials else float("nan")

    def interval(self, z: float = _Z95) -> tuple[float, float]:
        """The Wilson interval (95 % by default)."""
        return wilson_interval(self.successes, self.trials, z)

    def __add__(self, other: Proportion) -> Proportion:
        return Proportion(self.successes + other.successes, self.trials + other.trials)

    def format(self, digits: int = 2, ci: bool = False) -> str:
        """``"0.95"`` or with ``ci`` ``"0.95 [0.88, 0.98]"``; ``"–"`` without trials."""
        if not self.trials:
            return "–"
        text = f"{self.rate:.{digits}f}"
        if ci:
            lo, hi = self.interval()
            text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
        return text

    def to_dict(self) -> dict[str, Any]:
        """``{"successes", "trials", "rate", "ci95"}`` (rate ``None`` without trials)."""
        return {"successes": self.successes, "trials": self.trials,
                "rate": None if not self.trials else self.rate, "ci95": list(self.interval())}


@dataclass(frozen=True)
class CountResult:
    """The metrics of the images that requested ``count`` objects."""

    count: int
    images: int
    exact_count: Proportion
    perfect: Proportion
    recall: Proportion
    precision: Proportion

    def __add__(self, other: CountResult) -> CountResult:
        if other.count != self.count:
            raise fail("CountResult", f"cannot pool count {self.count} with count {other.count}.")
        return CountResult(self.count, self.images + other.images, self.exact_count + other.exact_count,
                           self.perfect + other.perfect, self.recall + other.recall,
                           self.precision + other.precision)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"count": self.count, "images": self.images,
                **{m: getattr(self, m).to_dict() for m in METRICS}}


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class EvaluationResult:
    """Per-count metrics of one evaluation run, plus the per-image outcomes.

    Attributes:
        rows: one :class:`CountResult` per requested count, ascending.
        requested: ``[N]`` requested object count of each image.
        detected: ``[N]`` detections in each image.
        correct: ``[N]`` correct pairs in each image.
        meta: free-form JSON-ready metadata (model name, seed, settings).
    """

    rows: tuple[CountResult, ...]
    requested: tuple[int, ...] = ()
    detected: tuple[int, ...] = ()
    correct: tuple[int, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def row(self, count: int) -> CountResult:
        """The row of ``count`` requested objects."""
        for r in self.rows:
            if r.count == count:
                return r
        raise fail("EvaluationResult.row", f"no images requested {count} objects; counts are "
                   f"{[r.count for r in self.rows]}.")

    @property
    def counts(self) -> list[int]:
        """The requested counts, ascending."""
        return [r.count for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (rows, per-image outcomes, meta)."""
        return {"rows": [r.to_dict() for r in self.rows], "requested": list(self.requested),
                "detected": list(self.detected), "correct": list(self.correct), "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationResult:
        """Inverse of :meth:`to_dict`."""
        try:
            rows = tuple(
                CountResult(int(r["count"]), int(r["images"]),
                            *(Proportion(int(r[m]["successes"]), int(r[m]["trials"])) for m in METRICS))
                for r in data["rows"])
            return cls(rows, tuple(data.get("requested", ())), tuple(data.get("detected", ())),
                       tuple(data.get("correct", ())), dict(data.get("meta", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise fail("EvaluationResult.from_dict", f"malformed evaluation dict ({e!r}).",
                       "pass the output of EvaluationResult.to_dict().") from e

    def to_markdown(self, ci: bool = True, digits: int = 2) -> str:
        """A markdown table: one row per count, columns images / exact count / perfect / recall /
        precision (with 95 % Wilson intervals when ``ci``)."""
        rows = [[str(r.count), str(r.images), *(getattr(r, m).format(digits, ci) for m in METRICS)]
                for r in self.rows]
        return _md_table(["objects", "images", "exact count", "perfect", "recall", "precision"], rows)


def _requested_attrs(requested: Scene | Conditions, where: str) -> tuple[torch.Tensor, torch.Tensor,
                                                                           torch.Tensor | None,
                                                                           torch.Tensor | None,
                                                                           torch.Tensor | None]:
    if isinstance(requested, Scene):
        return requested.pos, requested.valid, requested.color, requested.shape, requested.size
    if isinstance(requested, Conditions):
        if requested.attr is None:
            return requested.pos, requested.valid, None, None, None
        if requested.attr.shape[-1] != ATTR_DIM:
            raise fail(where, f"`requested` has attributes of length {requested.attr.shape[-1]}, expected "
                       f"{ATTR_DIM} (localscore.lengthgen.data's colour/shape/size encoding) or none.")
        c, s, z = decode_attributes(requested.attr)
        return requested.pos, requested.valid, c, s, z
    raise fail(where, f"`requested` is {describe(requested)}, expected a Scene or Conditions.")


def match_objects(
    detected: Scene,
    requested: Scene | Conditions,
    *,
    max_distance: float,
    check_color: bool = True,
    check_shape: bool = False,
    check_size: bool = False,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Hungarian matching of detections to requested objects, image by image.

    Args:
        detected: the detections (:func:`~localscore.lengthgen.evaluate.detect_objects`), batch ``B``.
        requested: the requested objects, a Scene or Conditions (attributes decoded with
            :func:`~localscore.lengthgen.data.decode_attributes`), batch ``B``.
        max_distance: the largest centre distance (pixels) of a pair.
        check_color: a correct pair needs the same colour.
        check_shape: ... and the same shape.
        check_size: ... and the same size.

    Returns:
        One ``(req_idx, det_idx, correct)`` triple of arrays per image: the slot indices of the pairs
        within ``max_distance`` and whether each pair is correct.

    Examples:
        >>> req = Conditions.from_lists([[(5.0, 5.0), (20.0, 20.0)]])
        >>> det = Scene(torch.tensor([[[19.5, 20.0], [9.0, 9.0]]]), torch.zeros(1, 2, dtype=torch.long),
        ...             torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long),
        ...             torch.ones(1, 2, dtype=torch.bool), 32)
        >>> r, d, ok = match_objects(det, req, max_distance=2.0)[0]
        >>> r.tolist(), d.tolist(), ok.tolist()
        ([1], [0], [True])
    """
    where = "match_objects"
    if not isinstance(detected, Scene):
        raise fail(where, f"`detected` is {describe(detected)}, expected a Scene (from detect_objects).")
    if not isinstance(max_distance, (int, float)) or not max_distance > 0:
        raise fail(where, f"`max_distance` is {max_distance!r}, expected a positive number of pixels.")
    r_pos, r_valid, r_col, r_shp, r_siz = _requested_attrs(requested, where)
    if r_pos.shape[0] != detected.batch_size:
        raise fail(where, f"`requested` has {r_pos.shape[0]} images but `detected` has {detected.batch_size}.",
                   "pass the requests and the detections of the same images.")
    rp = r_pos.detach().cpu().double().numpy()
    rv = r_valid.cpu().numpy()
    dp = detected.pos.detach().cpu().double().numpy()
    dv = detected.valid.cpu().numpy()
    checks = []
    for flag, req, det in ((check_color, r_col, detected.color), (check_shape, r_shp, detected.shape),
                           (check_size, r_siz, detected.size)):
        if flag and req is not None:
            checks.append((req.cpu().numpy(), det.cpu().numpy()))
    out = []
    for b in range(detected.batch_size):
        ri = np.flatnonzero(rv[b])
        di = np.flatnonzero(dv[b])
        if ri.size == 0 or di.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            out.append((empty, empty, np.zeros(0, dtype=bool)))
            continue
        dist = np.linalg.norm(rp[b, ri][:, None, :] - dp[b, di][None, :, :], axis=-1)
        cost = np.where(dist <= max_distance, dist, 1e6)
        rows, cols = linear_sum_assignment(cost)
        keep = dist[rows, cols] <= max_distance
        rr, dd = ri[rows[keep]], di[cols[keep]]
        ok = np.ones(rr.size, dtype=bool)
        for req_a, det_a in checks:
            want = req_a[b, rr]
            ok &= (want < 0) | (want == det_a[b, dd])
        out.append((rr, dd, ok))
    return out


def evaluate_counts(
    detected: Scene,
    requested: Scene | Conditions,
    *,
    max_distance: float | None = None,
    check_color: bool = True,
    check_shape: bool = False,
    check_size: bool = False,
    meta: Mapping[str, Any] | None = None,
) -> EvaluationResult:
    """Per-count exact-count accuracy, perfect rate, recall and precision (see the module docstring).

    Args:
        detected: detections of the generated images, batch ``B``.
        requested: what each image was asked to contain (Scene or Conditions), batch ``B``.
        max_distance: pair distance threshold in pixels; ``None`` means ``0.1 * resolution``
            (3.2 px at 32x32).
        check_color: perfect/recall/precision require the right colour.
        check_shape: ... and the right shape.
        check_size: ... and the right size.
        meta: metadata stored in the result.

    Returns:
        An :class:`EvaluationResult` with one row per requested count present.

    Examples:
        >>> from localscore.lengthgen.data import SceneConfig, sample_scenes, render_scene
        >>> from localscore.lengthgen.evaluate import detect_objects
        >>> cfg = SceneConfig(resolution=32)
        >>> req = sample_scenes(cfg, 6, generator=torch.Generator().manual_seed(0), counts=[1, 1, 2, 2, 3, 3])
        >>> res = evaluate_counts(detect_objects(render_scene(req, cfg), cfg), req)
        >>> [(r.count, r.perfect.rate) for r in res.rows]
        [(1, 1.0), (2, 1.0), (3, 1.0)]
    """
    where = "evaluate_counts"
    if max_distance is None:
        max_distance = 0.1 * detected.resolution if isinstance(detected, Scene) else 1.0
    pairs = match_objects(detected, requested, max_distance=max_distance, check_color=check_color,
                          check_shape=check_shape, check_size=check_size)
    _, r_valid, *_ = _requested_attrs(requested, where)
    n_req = r_valid.sum(1).cpu().tolist()
    n_det = detected.counts().cpu().tolist()
    n_ok = [int(ok.sum()) for _, _, ok in pairs]
    rows = []
    for c in sorted(set(n_req)):
        idx = [i for i, n in enumerate(n_req) if n == c]
        m = len(idx)
        exact = sum(1 for i in idx if n_det[i] == c)
        perfect = sum(1 for i in idx if n_det[i] == c and n_ok[i] == c)
        ok = sum(n_ok[i] for i in idx)
        rows.append(CountResult(int(c), m, Proportion(exact, m), Proportion(perfect, m),
                                Proportion(ok, c * m), Proportion(ok, sum(n_det[i] for i in idx))))
    info = {"max_distance": float(max_distance), "check_color": check_color, "check_shape": check_shape,
            "check_size": check_size, **(dict(meta) if meta else {})}
    return EvaluationResult(tuple(rows), tuple(int(v) for v in n_req), tuple(int(v) for v in n_det),
                            tuple(n_ok), info)


@dataclass(frozen=True)
class SeedTable:
    """Results of one model over several seeds: pooled proportions and per-seed spread.

    Attributes:
        results: the per-seed results.
        pooled: per count, the :class:`CountResult` pooled over seeds.
    """

    results: tuple[EvaluationResult, ...]
    pooled: tuple[CountResult, ...]

    @classmethod
    def from_results(cls, results: Sequence[EvaluationResult]) -> SeedTable:
        """Pool ``results`` (one per seed) count by count.

        Examples:
            >>> a = EvaluationResult((CountResult(2, 10, *(Proportion(9, 10),) * 4),))
            >>> b = EvaluationResult((CountResult(2, 10, *(Proportion(7, 10),) * 4),))
            >>> t = SeedTable.from_results([a, b])
            >>> t.pooled[0].perfect.rate, [round(v, 3) for v in t.spread(2, "perfect")]
            (0.8, [0.8, 0.141])
        """
        results = tuple(results)
        if not results or not all(isinstance(r, EvaluationResult) for r in results):
            raise fail("SeedTable.from_results", f"expected a non-empty sequence of EvaluationResult, got "
                       f"{describe(results)}.")
        counts = sorted({c for r in results for c in r.counts})
        pooled = []
        for c in counts:
            rows = [row for r in results for row in r.rows if row.count == c]
            total = rows[0]
            for row in rows[1:]:
                total = total + row
            pooled.append(total)
        return cls(results, tuple(pooled))

    def spread(self, count: int, metric: str = "perfect") -> tuple[float, float]:
        """Mean and sample standard deviation over seeds of a metric's rate at ``count`` (NaN-free seeds)."""
        if metric not in METRICS:
            raise fail("SeedTable.spread", f"`metric` is {metric!r}, expected one of {METRICS}.")
        rates = [getattr(row, metric).rate for r in self.results for row in r.rows if row.count == count]
        rates = [v for v in rates if not math.isnan(v)]
        if not rates:
            return (float("nan"), float("nan"))
        mean = sum(rates) / len(rates)
        sd = math.sqrt(sum((v - mean) ** 2 for v in rates) / (len(rates) - 1)) if len(rates) > 1 else 0.0
        return (mean, sd)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: pooled rows with per-seed mean/sd of every metric, and the per-seed results."""
        rows = []
        for row in self.pooled:
            d = row.to_dict()
            for m in METRICS:
                mean, sd = self.spread(row.count, m)
                d[m]["seed_mean"] = None if math.isnan(mean) else mean
                d[m]["seed_sd"] = None if math.isnan(sd) else sd
            rows.append(d)
        return {"seeds": len(self.results), "rows": rows, "results": [r.to_dict() for r in self.results]}

    def to_markdown(self, digits: int = 2) -> str:
        """Markdown: per count, pooled rate [95 % CI] and mean ± sd over seeds of each metric."""
        out = []
        for row in self.pooled:
            cells = [str(row.count), str(row.images)]
            for m in METRICS:
                mean, sd = self.spread(row.count, m)
                spread = "" if math.isnan(mean) else f" ({mean:.{digits}f} ± {sd:.{digits}f})"
                cells.append(getattr(row, m).format(digits, True) + spread)
            out.append(cells)
        return _md_table(["objects", "images", "exact count", "perfect", "recall", "precision"], out)


def comparison_table(
    results: Mapping[str, EvaluationResult | SeedTable],
    metric: str = "perfect",
    *,
    counts: Sequence[int] | None = None,
    ci: bool = False,
    digits: int = 2,
) -> str:
    """A markdown table of one metric: one row per model, one column per requested count.

    Examples:
        >>> r = EvaluationResult((CountResult(4, 10, *(Proportion(10, 10),) * 4),))
        >>> print(comparison_table({"local": r}))
        | model | 4 |
        |---|---|
        | local | 1.00 |
    """
    if metric not in METRICS:
        raise fail("comparison_table", f"`metric` is {metric!r}, expected one of {METRICS}.")
    if not isinstance(results, Mapping) or not results:
        raise fail("comparison_table", f"`results` is {describe(results)}, expected a non-empty dict "
                   "name -> EvaluationResult or SeedTable.")
    table: dict[str, dict[int, Proportion]] = {}
    for name, res in results.items():
        rows = res.pooled if isinstance(res, SeedTable) else res.rows
        table[name] = {r.count: getattr(r, metric) for r in rows}
    cols = sorted({c for t in table.values() for c in t}) if counts is None else list(counts)
    body = [[name, *(t[c].format(digits, ci) if c in t else "–" for c in cols)] for name, t in table.items()]
    return _md_table(["model", *(str(c) for c in cols)], body)
