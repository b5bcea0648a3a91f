"""Evaluation: the detector on ground-truth renders, matching against brute force, metrics, Wilson intervals."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError
from localscore.lengthgen.data import Scene, SceneConfig, decode_attributes, render_scene
from localscore.lengthgen.evaluate import (
    CountResult,
    EvaluationResult,
    Proportion,
    SeedTable,
    comparison_table,
    detect_objects,
    evaluate_counts,
    evaluate_sampler,
    match_objects,
    request_scenes,
    wilson_interval,
)

COUNTS = list(range(11))


def _detector_report(cfg: SceneConfig, per_count: int, seed: int) -> tuple[float, float, float, float, float]:
    """Exact-count rate, max position error, colour, shape and size accuracy over matched objects."""
    truth = request_scenes(cfg, COUNTS, per_count, seed=seed)
    found = detect_objects(render_scene(truth, cfg), cfg)
    exact = float((found.counts() == truth.counts()).float().mean())
    pairs = match_objects(found, truth, max_distance=2.0, check_color=False)
    err, col, shp, siz, n = 0.0, 0, 0, 0, 0
    for b, (r, d, _) in enumerate(pairs):
        if r.size:
            err = max(err, float((truth.pos[b, r] - found.pos[b, d]).norm(dim=-1).max()))
        col += int((truth.color[b, r] == found.color[b, d]).sum())
        shp += int((truth.shape[b, r] == found.shape[b, d]).sum())
        siz += int((truth.size[b, r] == found.size[b, d]).sum())
        n += r.size
    return exact, err, col / n, shp / n, siz / n


def test_detector_is_exact_on_ground_truth_renders_at_32() -> None:
    exact, err, col, shp, siz = _detector_report(SceneConfig(resolution=32), per_count=20, seed=0)
    assert exact == 1.0 and col == 1.0 and siz == 1.0
    assert shp >= 0.99 and err < 0.3


def test_detector_handles_texture_shading_and_shadow() -> None:
    cfg = SceneConfig(resolution=32, background="textured", shading=0.2, shadow=0.3)
    exact, err, col, shp, siz = _detector_report(cfg, per_count=10, seed=1)
    assert exact >= 0.99 and col >= 0.99 and siz >= 0.97 and shp >= 0.9 and err < 1.0


def test_detector_at_16_counts_and_colours() -> None:
    exact, err, col, _, _ = _detector_report(SceneConfig(resolution=16), per_count=10, seed=2)
    assert exact >= 0.95 and col >= 0.99 and err < 0.6


def test_detector_sees_nothing_on_a_blank_image_and_checks_inputs() -> None:
    cfg = SceneConfig(resolution=32)
    blank = torch.full((2, 3, 32, 32), 0.75)
    assert detect_objects(blank, cfg).counts().tolist() == [0, 0]
    noisy = (blank + 0.03 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert detect_objects(noisy, cfg).counts().tolist() == [0, 0]
    with pytest.raises(LocalScoreError, match=r"expected \[B, 3, 32, 32\]"):
        detect_objects(torch.zeros(1, 3, 16, 16), cfg)
    with pytest.raises(LocalScoreError, match="SceneConfig"):
        detect_objects(blank, "32")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- matching vs brute force
def _brute_force(req: np.ndarray, det: np.ndarray, max_d: float) -> tuple[int, float]:
    """Most pairs within max_d, then least total distance, by enumerating all injections."""
    best = (0, 0.0)
    n, m = len(req), len(det)
    small, big = (req, det) if n <= m else (det, req)
    for perm in itertools.permutations(range(len(big)), len(small)):
        d = np.linalg.norm(small - big[list(perm)], axis=-1)
        ok = d <= max_d
        cand = (int(ok.sum()), -float(d[ok].sum()))
        best = max(best, cand)
    return best[0], -best[1]


@given(n=st.integers(0, 5), m=st.integers(0, 5), seed=st.integers(0, 10_000))
def test_hungarian_matching_is_optimal(n: int, m: int, seed: int) -> None:
    g = np.random.default_rng(seed)
    req = g.uniform(0, 10, (n, 2))
    det = g.uniform(0, 10, (m, 2))
    requested = Conditions.from_lists([req.tolist()])
    detected = Scene(torch.tensor(det, dtype=torch.float32).view(1, m, 2), torch.zeros(1, m, dtype=torch.long),
                     torch.zeros(1, m, dtype=torch.long), torch.zeros(1, m, dtype=torch.long),
                     torch.ones(1, m, dtype=torch.bool), 32)
    r, d, ok = match_objects(detected, requested, max_distance=3.0)[0]
    pairs, total = _brute_force(req, det, 3.0)
    assert r.size == pairs and ok.all()
    assert len(set(r.tolist())) == r.size and len(set(d.tolist())) == d.size
    got = float(np.linalg.norm(req[r] - det[d], axis=-1).sum()) if r.size else 0.0
    assert got == pytest.approx(total, abs=1e-4)


# ----------------------------------------------------------------------------- metrics
def _one(objs: list[tuple[float, float, int]], res: int = 32) -> Scene:
    K = len(objs)
    pos = torch.tensor([[o[0], o[1]] for o in objs], dtype=torch.float32).view(1, K, 2)
    col = torch.tensor([[o[2] for o in objs]], dtype=torch.long).view(1, K)
    z = torch.zeros(1, K, dtype=torch.long)
    return Scene(pos, col, z, z.clone(), torch.ones(1, K, dtype=torch.bool), res)


def test_metrics_on_hand_made_outcomes() -> None:
    req = Scene.cat([_one([(5, 5, 1), (20, 20, 2)]), _one([(5, 5, 1), (20, 20, 2)]),
                     _one([(5, 5, 1), (20, 20, 2)]), _one([(8, 8, 3)]), _one([])])
    det = Scene.cat([
        _one([(5.5, 5, 1), (20, 21, 2)]),                 # perfect
        _one([(5, 5, 1), (20, 20, 4)]),                   # right count, one wrong colour
        _one([(5, 5, 1), (20, 20, 2), (28, 3, 0)]),       # one extra object
        _one([(15, 15, 3)]),                              # right count, misplaced
        _one([(3, 3, 0)]),                                # an object where none was asked
    ])
    res = evaluate_counts(det, req, max_distance=2.0)
    two, one, zero = res.row(2), res.row(1), res.row(0)
    assert (two.images, two.exact_count.successes, two.perfect.successes) == (3, 2, 1)
    assert (two.recall.successes, two.recall.trials) == (5, 6)
    assert (two.precision.successes, two.precision.trials) == (5, 7)
    assert (one.exact_count.rate, one.perfect.rate, one.recall.rate) == (1.0, 0.0, 0.0)
    assert zero.exact_count.rate == 0.0 and zero.recall.trials == 0 and math.isnan(zero.recall.rate)
    assert res.requested == (2, 2, 2, 1, 0) and res.detected == (2, 2, 3, 1, 1) and res.correct == (2, 1, 2, 0, 0)
    # the colour check can be switched off; then the wrong-colour image is perfect
    assert evaluate_counts(det, req, max_distance=2.0, check_color=False).row(2).perfect.successes == 2
    # conditions with encoded attributes give the same result as the scene
    assert evaluate_counts(det, req.conditions(), max_distance=2.0).to_dict()["rows"] == res.to_dict()["rows"]
    assert evaluate_counts(det, Conditions(req.pos, None, req.valid), max_distance=2.0).row(2).perfect.successes == 2


@given(k=st.integers(0, 60), extra=st.integers(0, 60), z=st.sampled_from([1.0, 1.959963984540054, 2.576]))
def test_wilson_interval_solves_its_defining_equation(k: int, extra: int, z: float) -> None:
    n = k + extra
    if n == 0:
        assert wilson_interval(0, 0) == (0.0, 1.0)
        return
    p_hat = k / n
    lo, hi = wilson_interval(k, n, z)
    assert 0 <= lo <= p_hat <= hi <= 1
    # the Wilson bounds are the roots p of (p_hat - p)^2 = z^2 p (1 - p) / n
    for p in (lo, hi):
        if 0 < p < 1:
            assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, abs=1e-9)
    if k == 0:
        assert lo == 0
    if k == n:
        assert hi == 1


def test_wilson_interval_rejects_bad_counts() -> None:
    with pytest.raises(LocalScoreError, match="0 <= successes <= trials"):
        wilson_interval(5, 3)
    with pytest.raises(LocalScoreError, match="expected integers"):
        wilson_interval(1.5, 3)  # type: ignore[arg-type]  # was (0.13, 0.87): a fractional count accepted


@pytest.mark.parametrize("z", [-1.0, 0.0, math.nan, math.inf, "1.96", True])
def test_wilson_interval_rejects_bad_z(z: object) -> None:
    # z = -1 gave (0.65, 0.35), z = 0 (0.5, 0.5), NaN and inf (0, 1): all silently wrong
    assert wilson_interval(5, 10, 1.0) != (0.0, 1.0)  # positive control: a good z gives an interval
    with pytest.raises(LocalScoreError, match="finite number > 0"):
        wilson_interval(5, 10, z)  # type: ignore[arg-type]


def test_seed_table_pools_and_renders() -> None:
    def res(k: int) -> EvaluationResult:
        return EvaluationResult((CountResult(3, 10, Proportion(k, 10), Proportion(k, 10), Proportion(3 * k, 30),
                                             Proportion(3 * k, 30)),))

    table = SeedTable.from_results([res(10), res(8), res(6)])
    assert table.pooled[0].perfect == Proportion(24, 30) and table.pooled[0].images == 30
    mean, sd = table.spread(3, "perfect")
    assert mean == pytest.approx(0.8) and sd == pytest.approx(0.2)
    md = table.to_markdown()
    assert "| 3 | 30 |" in md and "0.80 [" in md and "± 0.20" in md
    d = json.loads(json.dumps(table.to_dict()))
    assert d["rows"][0]["perfect"]["seed_sd"] == pytest.approx(0.2) and d["seeds"] == 3
    again = EvaluationResult.from_dict(json.loads(json.dumps(res(7).to_dict())))
    assert again.rows == res(7).rows
    txt = comparison_table({"local": table, "baseline": res(2)}, counts=[3, 4])
    assert txt.splitlines()[2] == "| local | 0.80 | – |" and txt.splitlines()[3] == "| baseline | 0.20 | – |"
    with pytest.raises(LocalScoreError, match="metric"):
        comparison_table({"a": table}, metric="accuracy")


# ----------------------------------------------------------------------------- end to end
def test_evaluate_sampler_with_an_oracle_and_a_failing_sampler() -> None:
    cfg = SceneConfig(resolution=32)

    def render(cond: Conditions, keep: int | None) -> torch.Tensor:
        assert cond.attr is not None
        c, s, z = decode_attributes(cond.attr)
        valid = cond.valid.clone()
        if keep is not None:
            valid &= torch.arange(cond.num_slots).view(1, -1) < keep
        return render_scene(Scene(cond.pos, c, s, z, valid, 32), cfg)

    perfect = evaluate_sampler(lambda c, g: render(c, None), cfg, counts=[0, 2, 6], per_count=5, batch_size=4)
    assert [r.perfect.rate for r in perfect.rows] == [1.0, 1.0, 1.0]
    capped = evaluate_sampler(lambda c, g: render(c, 4), cfg, counts=[0, 2, 6], per_count=5, batch_size=4)
    assert [r.perfect.rate for r in capped.rows] == [1.0, 1.0, 0.0]
    assert capped.row(6).recall.rate == pytest.approx(4 / 6) and capped.row(6).precision.rate == 1.0
    with pytest.raises(LocalScoreError, match="sample_fn"):
        evaluate_sampler(lambda c, g: torch.zeros(1), cfg, counts=[1], per_count=1)


def test_request_scenes_is_seeded() -> None:
    cfg = SceneConfig(resolution=32)
    a, b = request_scenes(cfg, [1, 4], 3, seed=5), request_scenes(cfg, [1, 4], 3, seed=5)
    assert torch.equal(a.pos, b.pos) and a.counts().tolist() == [1, 1, 1, 4, 4, 4]
    assert not torch.equal(a.pos, request_scenes(cfg, [1, 4], 3, seed=6).pos)
    with pytest.raises(LocalScoreError, match="per_count"):
        request_scenes(cfg, [1], 0)


@given(seed=st.integers(0, 10_000), scale=st.floats(0.0, 1.0))
def test_detector_survives_arbitrary_images(seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = 0.75 + scale * (torch.rand(3, 3, 16, 16, generator=g) * 2 - 1)     # clipped to [0, 1] inside
    found = detect_objects(x, SceneConfig(resolution=16))
    assert found.batch_size == 3 and bool(torch.isfinite(found.pos).all())
    assert bool(((found.pos >= -0.5) & (found.pos <= 15.5)).all())


# ----------------------------------------------------------------------------- locality
def test_locality_profile_of_a_local_and_of_a_global_model() -> None:
    from localscore.lengthgen.evaluate import LocalityProfile, locality_profile, locality_table
    from localscore.testing import LocalConvDenoiser

    cfg = SceneConfig(resolution=16)
    local = LocalConvDenoiser(3, radius=1, cond_radius=1.0)            # influence within 1 + 1 px
    p = locality_profile(local, cfg, sigmas=[0.5, 5.0], n_images=2, count=2, region_radius=2.0)
    assert p.index == (1.0, 1.0) and p.on_others == (0.0, 0.0) and all(r <= 2.0 for r in p.radius)

    def global_model(x: torch.Tensor, sigma: torch.Tensor, cond: Conditions | None = None) -> torch.Tensor:
        # every object shifts every pixel by the same amount: influence is uniform over the image
        assert cond is not None
        shift = (cond.pos.sum(-1) * cond.valid).sum(1) / 100.0
        return 0.5 * x + shift.view(-1, 1, 1, 1)

    g = locality_profile(global_model, cfg, sigmas=[1.0], n_images=2, count=2, region_radius=2.0)
    scene = request_scenes(cfg, [2], 2, seed=0)                         # the scenes locality_profile used
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    shares = []
    for b in range(2):
        for k in range(2):
            d = torch.maximum((rows - scene.pos[b, k, 0]).abs(), (cols - scene.pos[b, k, 1]).abs())
            shares.append(float((d <= 2.0).float().mean()))
    assert g.index[0] == pytest.approx(sum(shares) / 4, abs=1e-6)
    assert g.index[0] < 0.2
    table = locality_table({"local": p, "global": g},
                           {"local": EvaluationResult((CountResult(4, 5, *(Proportion(5, 5),) * 4),)),
                            "global": EvaluationResult((CountResult(4, 5, *(Proportion(1, 5),) * 4),))},
                           counts=[4])
    assert "| local | 5 | 1.00 | 0.00 |" in table and "| global | 1 | 0.06 |" in table
    with pytest.raises(LocalScoreError, match="no evaluation result"):
        locality_table({"x": LocalityProfile((1.0,), (1.0,), (0.0,), (1.0,), 2.0)}, {})
