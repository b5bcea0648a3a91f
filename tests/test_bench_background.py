"""benchmarks/background.py end to end on tiny models, and its shipped config."""

from __future__ import annotations

import json
from pathlib import Path

from _benchmarks import run_script

from localscore.lengthgen import load_experiments

REPO = Path(__file__).resolve().parents[1]
TINY_LOCAL = {"width": 8, "depth": 1, "token_dim": 8, "heads": 2, "conditioning": "render", "norm": "none",
              "cond_radius": 2.0, "relative_freqs": 2, "sigma_embed_dim": 16}


def test_shipped_config_describes_the_four_backgrounds() -> None:
    header, exps = load_experiments(REPO / "benchmarks" / "configs" / "background.json")
    by = {e.name: e for e in exps}
    assert by["single01"].scene_config().counts == (0, 1) and by["single01"].train_config(0).cond_dropout == 0
    assert by["single"].scene_config().counts == (1,) and by["single"].train_config(0).cond_dropout > 0
    assert by["empty"].scene_config().counts == (0,)
    assert by["clutter"].scene_config().labelling == "one"
    assert all(len(e.seeds) == 3 for e in exps)
    comps = {c["name"]: (c["components"], c["background"]) for c in header["compositions"]}
    assert comps == {"empty": ("single01", "single01"), "empty-separate": ("single", "empty"),
                     "unconditional": ("single", "single"), "cluttered": ("clutter", "clutter")}


def test_benchmark_end_to_end_tiny(tmp_path: Path) -> None:
    defaults = {"model": "local", "network": TINY_LOCAL,
                "scene": {"resolution": 16, "shapes": ["disc"], "sizes": ["small"], "labelling": "all"},
                "train": {"steps": 2, "batch_size": 4, "log_every": 1, "checkpoint_every": 1, "cond_dropout": 0.2},
                "methods": ["projective"], "sampling_steps": 2, "per_count": 1, "eval_counts": [0, 2], "seeds": [0],
                "mask_radius": 3.0}
    cfg = {"mode": "background-test", "defaults": defaults,
           "experiments": [{"name": "one", "scene": {"counts": [1]}},
                           {"name": "none", "scene": {"counts": [0]}, "methods": ["joint"]}],
           "compositions": [{"name": "empty", "components": "one", "background": "none"},
                            {"name": "unconditional", "components": "one", "background": "one"}],
           "mechanism": {"counts": [2], "sigmas": [1.0]}}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "runs"

    def bench(*args: str) -> str:
        return run_script("background", path, *args)

    bench("--out", str(out), "--mechanism-images", "2", "--no-plots")
    results = json.loads((out / "results.json").read_text())
    comps = results["compositions"]
    assert list(comps) == ["empty", "unconditional"]
    for data in comps.values():
        assert [r["count"] for r in data["rows"]] == [0, 2] and data["seeds"] == ["seed0"]
        assert all(r["perfect"]["trials"] == 1 for r in data["rows"])
        (mech,) = data["mechanism"]
        assert mech["k"] == 2 and mech["sigma"] == 1.0
    # the two compositions share the components model; only the background differs, and it changes the terms
    empty, uncond = comps["empty"]["mechanism"][0], comps["unconditional"]["mechanism"][0]
    assert empty["own"] != uncond["own"]
    assert json.loads((out / "compose-empty" / "seed0" / "eval.json").read_text())["meta"]["background"] == "none"

    # evaluate skips what is done; the archive keeps no weights and regenerates the same report
    assert "evaluate" not in bench("--out", str(out), "--stage", "evaluate").split("\n", 1)[1]
    archive = tmp_path / "archive"
    bench("--out", str(out), "--stage", "archive", "--archive", str(archive))
    assert not list(archive.rglob("*.pt"))
    bench("--out", str(archive), "--stage", "report")
    assert json.loads((archive / "results.json").read_text()) == results
