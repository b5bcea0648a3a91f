"""benchmarks/color.py end to end on a tiny model, its outcome classifier, and its shipped config."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from _benchmarks import load_benchmark, run_script

from localscore.lengthgen import load_experiments
from localscore.lengthgen.data import COLORS, Scene, SceneConfig
from localscore.lengthgen.evaluate import detect_objects

REPO = Path(__file__).resolve().parents[1]
TINY_UNET = {"base_width": 8, "channel_mult": [1, 2], "attention_levels": [1], "heads": 2, "groups": 4,
             "token_dim": 8, "sigma_embed_dim": 16, "token_positions": False, "relative_freqs": 0}


def _scene(colors: list[list[str]]) -> Scene:
    """Scenes with the given colours per image (compact, padded), at fixed places."""
    B, K = len(colors), max(len(c) for c in colors)
    pos = torch.tensor([[8.0 + 12 * k, 10.0] for k in range(K)]).expand(B, K, 2).clone()
    idx = torch.zeros(B, K, dtype=torch.long)
    valid = torch.zeros(B, K, dtype=torch.bool)
    for b, row in enumerate(colors):
        for k, c in enumerate(row):
            idx[b, k], valid[b, k] = COLORS.index(c), True
    zero = torch.zeros(B, K, dtype=torch.long)
    return Scene(pos, idx, zero, zero, valid, 32)


def test_outcomes_of_known_detections() -> None:
    color = load_benchmark("color")
    found = _scene([["yellow", "blue"], ["blue"], ["red"], [], ["yellow", "blue", "red"], ["red", "green"]])
    got = [color.classify(found, b, ("yellow", "blue")) for b in range(6)]
    assert got == ["both", "one", "hybrid", "none", "extra", "wrong"]
    assert color.tally(found, ("blue", "yellow"))["both"] == 1
    assert color.classify(_scene([["red"]]), 0, ("red",)) == "both"
    assert len(color.pairs()) == 28 and ("yellow", "blue") not in color.pairs() and ("blue", "yellow") in color.pairs()


def test_detector_reads_rendered_pairs() -> None:
    """The classifier the benchmark trusts, on renders of known colours (the ground-truth check of the stage)."""
    color = load_benchmark("color")
    cfg = SceneConfig(resolution=32, counts=(2,), shapes=("disc",))
    for wanted in (("yellow", "blue"), ("yellow", "red"), ("gray", "brown")):
        img = color._truth(cfg, wanted, 8, seed=3)
        assert color.tally(detect_objects(img, cfg), wanted)["both"] == 8
    # a third colour is read as a hybrid, not as either of the pair
    img = color._truth(cfg, ("cyan",), 4, seed=3)
    assert color.tally(detect_objects(img, cfg), ("yellow", "blue"))["hybrid"] == 4


def test_rgb_cosine_matches_the_palette_oracle() -> None:
    """In the same layouts, a flat colour f draws bg + a (f - bg): d_f = mean(a) (f - bg), so the RGB cosine of
    two colours is exactly that of their offsets from the background colour."""
    from localscore.lengthgen.data import COLOR_RGB
    from localscore.metrics import feature_orthogonality
    color = load_benchmark("color")
    cfg = SceneConfig(resolution=32, counts=(0, 1))
    concept = [color._truth(cfg, (c,), 6, seed=5) for c in COLORS]
    res = feature_orthogonality(concept, color._truth(cfg, (), 6, seed=4), samples=True, labels=COLORS)
    off = COLOR_RGB.double() - torch.tensor(cfg.background_color, dtype=torch.float64)
    unit = off / off.norm(dim=1, keepdim=True)
    torch.testing.assert_close(res.cosine, unit @ unit.T, atol=1e-5, rtol=0)


def test_shipped_config_is_a_concept_model() -> None:
    _, (exp,) = load_experiments(REPO / "benchmarks" / "configs" / "color.json")
    assert exp.scene_config().labelling == "color" and exp.scene_config().counts == (0, 1)
    assert exp.network_config().token_positions is False and exp.train_config(0).cond_dropout == 0
    assert exp.seeds == (0, 1, 2)


def test_benchmark_end_to_end_tiny(tmp_path: Path) -> None:
    defaults = {"model": "unet", "network": TINY_UNET,
                "scene": {"resolution": 16, "counts": [0, 1], "labelling": "color", "shapes": ["disc"]},
                "train": {"steps": 2, "batch_size": 4, "log_every": 1, "checkpoint_every": 1, "cond_dropout": 0.0},
                "methods": ["projective"], "sampling_steps": 2, "per_count": 2, "seeds": [0]}
    cfg = {"mode": "color-test", "defaults": defaults, "experiments": [{"name": "c"}], "feature_sigmas": [0.5]}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "runs"

    def bench(*args: str) -> str:
        return run_script("color", path, *args)

    bench("--out", str(out), "--truth-images", "4", "--no-plots")
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0] and len(results["pairs"]) == 28
    assert results["classifier"]["total"] == 4 * 36
    yb = next(r for r in results["pairs"] if r["pair"] == "blue+yellow")
    assert yb["projective"]["trials"] == 2 and sum(yb["projective_outcomes"].values()) == 2
    assert set(yb["feature_cosine"]) == {"0.5"} and -1 <= yb["feature_cosine"]["0.5"] <= 1
    # the RGB cosine is a property of the palette and the background: blue and yellow point apart from gray
    assert yb["rgb_cosine"] < -0.5
    assert set(results["spearman"]) == {"projective", "joint"}
    # evaluate skips what is done; the archive keeps no weights and regenerates the same report
    assert "evaluate seed" not in bench("--out", str(out), "--stage", "evaluate")
    archive = tmp_path / "archive"
    bench("--out", str(out), "--stage", "archive", "--archive", str(archive))
    assert not list(archive.rglob("*.pt"))
    bench("--out", str(archive), "--stage", "report")
    assert json.loads((archive / "results.json").read_text()) == results


def test_figure_takes_rates_of_zero_and_one(tmp_path: Path) -> None:
    """Wilson bounds at 0/48 and 48/48 miss the rate by rounding; the error bars must not go negative."""
    color = load_benchmark("color")
    rows = [{"pair": f"{a}+{b}", "rgb_cosine": 0.1 * i, "feature_cosine": {"0.5": 0.05 * i},
             "projective": color._prop([{**dict.fromkeys(color.OUTCOMES, 0), "both": 48 * (i % 2),
                                         "one": 48 * (1 - i % 2)}])}
            for i, (a, b) in enumerate(color.pairs())]
    results = {"pairs": rows, "feature_sigmas": ["0.5"], "spearman": {}}
    assert color.figure(results, tmp_path / "c.png") is (color.pyplot() is not None)
