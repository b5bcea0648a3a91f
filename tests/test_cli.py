"""The ``localscore`` command line: train, sample (layouts and their errors), evaluate, locality, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from localscore.cli import main
from localscore.experiments import MODEL_NAMES, checkpoint_dir

sys.path.insert(0, str(Path(__file__).parent))
from test_experiments import tiny_experiment

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``localscore train CONFIG`` on a tiny experiment (2 steps); returns the run folder."""
    root = tmp_path_factory.mktemp("cli")
    cfg = root / "tiny.json"
    cfg.write_text(json.dumps(tiny_experiment().to_dict()))
    assert main(["train", str(cfg), "--out", str(root / "runs"), "--quiet"]) == 0
    out = root / "runs" / "tiny" / "seed0"
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt").is_file()
    return out


def _layout(tmp_path: Path, layout: object, name: str = "layout.json") -> Path:
    p = tmp_path / name
    p.write_text(layout if isinstance(layout, str) else json.dumps(layout))
    return p


def test_train_resumes_and_extends(run_dir: Path, tmp_path: Path) -> None:
    cfg = run_dir / "experiment.json"
    exp = json.loads(cfg.read_text())["experiment"]
    single = tmp_path / "one.json"
    single.write_text(json.dumps(exp))
    root = run_dir.parents[1]
    # Rerunning with more steps resumes from the checkpoint: the log continues at step 3.
    assert main(["train", str(single), "--out", str(root), "--steps", "3", "--quiet"]) == 0
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_train_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _layout(tmp_path, {"name": "x", "model": "transformer"}, "bad.json")
    assert main(["train", str(bad)]) == 2
    assert "'local' or 'unet'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.json")]) == 2
    assert "cannot read the config" in capsys.readouterr().err


def test_sample_writes_npz(run_dir: Path, tmp_path: Path) -> None:
    layout = {"size": 16, "images": [[{"pos": [4, 5], "color": "red"}, {"pos": [11, 10.5], "color": "cyan",
                                                                           "shape": "disc", "size": "small"}], []]}
    out = tmp_path / "s.npz"
    args = ["sample", "--checkpoint", str(run_dir), "--layout", str(_layout(tmp_path, layout)), "--seed", "3",
            "--out", str(out), "--steps", "2", "--quiet"]
    assert main(args) == 0
    with np.load(out) as f:
        images = f["images"]
        assert images.shape == (2, 3, 16, 16) and images.dtype == np.float32
        assert images.min() >= 0 and images.max() <= 1
        assert f["valid"].tolist() == [[True, True], [False, False]]
    first = images.copy()
    assert main(args) == 0                              # same seed, same images
    with np.load(out) as f:
        np.testing.assert_array_equal(f["images"], first)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary files left


@pytest.mark.parametrize(("layout", "message"), [
    ({"size": 16, "images": [[{"pos": [4, 5], "color": "pink"}]]}, "unknown colour 'pink'"),
    ({"size": 16, "images": [[{"pos": [4, 16.5], "color": "red"}]]}, "off the 16x16 image"),
    ({"size": 16, "images": [[{"pos": [-1, 3], "color": "red"}]]}, "off the 16x16 image"),
    ({"size": 16, "images": [[{"pos": [i, i], "color": "red"} for i in range(11)]]}, "more than the maximum of 10"),
    ({"size": 16, "images": [[{"pos": [4, 5], "color": "red", "shape": "star"}]]}, "unknown shape 'star'"),
    ({"size": 16, "images": [[{"pos": [4], "color": "red"}]]}, "expected \\[row, col\\]"),
    ({"size": 16, "images": [[{"color": "red"}]]}, "has no 'pos'"),
    ({"size": 16, "images": []}, "non-empty list"),
    ({"size": 16, "images": [[{"pos": [4, 5], "color": "red", "weight": 3}]]}, "unknown keys"),
    ("{\"size\": 16, \"images\": [[", "not valid JSON"),
])
def test_sample_bad_layouts(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: object,
                            message: str) -> None:
    out = tmp_path / "never.npz"
    code = main(["sample", "--checkpoint", str(run_dir), "--layout", str(_layout(tmp_path, layout)),
                 "--out", str(out), "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "localscore sample: error" in err
    import re

    assert re.search(message, err), err
    assert not out.exists()


def test_sample_errors_model_and_size(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = _layout(tmp_path, {"size": 16, "images": [[{"pos": [4, 5], "color": "red"}]]})
    assert main(["sample", "--checkpoint", "no-such-model", "--layout", str(layout), "--out",
                 str(tmp_path / "x.npz")]) == 2
    assert "neither a shipped model name" in capsys.readouterr().err
    # A local network samples any size (it is translation equivariant), with a note.
    big = _layout(tmp_path, {"size": 24, "images": [[{"pos": [20, 20], "color": "blue"}]]}, "big.json")
    assert main(["sample", "--checkpoint", str(run_dir), "--layout", str(big), "--out", str(tmp_path / "b.npz"),
                 "--steps", "1", "--quiet"]) == 0
    assert "any size works" in capsys.readouterr().err
    with np.load(tmp_path / "b.npz") as f:
        assert f["images"].shape == (1, 3, 24, 24)


def test_evaluate_and_locality_commands(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(run_dir / "model.pt"), "--counts", "0,2", "--per-count", "2",
                 "--steps", "2", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "| objects | images | exact count | perfect |" in text
    res = json.loads(out.read_text())
    assert [r["count"] for r in res["rows"]] == [0, 2]
    loc = tmp_path / "loc.json"
    assert main(["locality", "--checkpoint", str(run_dir), "--sigmas", "0.5", "--count", "2", "--images", "1",
                 "--out", str(loc)]) == 0
    data = json.loads(loc.read_text())
    assert len(data["conditional_index"]) == 1 and 0 <= data["conditional_index"][0] <= 1


def test_counts_argument_rejects_garbage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--checkpoint", "x", "--counts", "a..b"])
    assert "count range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--checkpoint", "x", "--counts", "5..2"])
    assert "empty or negative" in capsys.readouterr().err


def test_help_lists_every_command() -> None:
    r = subprocess.run([sys.executable, "-m", "localscore", "--help"], capture_output=True, text=True, cwd=REPO,
                       timeout=120)
    assert r.returncode == 0
    for cmd in ("demo", "train", "sample", "evaluate", "locality"):
        assert cmd in r.stdout
    assert '"size": 32' in r.stdout   # the layout format is documented in --help


def test_demo_oracle(tmp_path: Path) -> None:
    assert main(["demo", "--oracle", "--quick", "--samples", "8", "--steps", "6", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "demo.json").read_text())
    assert data["rows"] and (tmp_path / "demo.png").is_file()


def test_demo_shipped_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not all((checkpoint_dir() / f"{n}.pt").is_file() for n in MODEL_NAMES):
        pytest.skip("the shipped checkpoints are not in this checkout")
    assert main(["demo", "--quick", "--samples", "1", "--steps", "2", "--out", str(tmp_path)]) == 0  # the default
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.lstrip().startswith("objects"))
    assert header.split()[1:] == ["local-32", "joint", "local-32", "projective", "baseline-32", "projective"]
    assert "labelling 'all'" in text and "labelling 'one'" in text  # local-32 and the paper's failing baseline
    data = json.loads((tmp_path / "demo.json").read_text())
    assert data["counts"] == list(range(1, 11))
    assert sorted(data["runs"]) == ["baseline-32 projective", "local-32 joint", "local-32 projective"]
    for run in data["runs"].values():
        rows = run["evaluation"]["rows"]
        assert [r["count"] for r in rows] == list(range(1, 11)) and all(r["images"] == 1 for r in rows)
        assert run["model"] in MODEL_NAMES
    assert (tmp_path / "demo.png").stat().st_size > 1000


def test_demo_method_masked_samples_both_models_with_the_intervention(tmp_path: Path) -> None:
    if not all((checkpoint_dir() / f"{n}.pt").is_file() for n in MODEL_NAMES):
        pytest.skip("the shipped checkpoints are not in this checkout")
    assert main(["demo", "--method", "masked", "--samples", "1", "--steps", "2", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "demo.json").read_text())
    assert sorted(data["runs"]) == ["baseline-32 masked", "local-32 masked"]
    for run in data["runs"].values():
        meta = run["evaluation"]["meta"]
        # the masks the model was benchmarked with (recorded in the shipped file), not evaluate_model's default
        assert meta["method"] == "masked" and meta["mask_radius"] == run["meta"]["experiment"]["mask_radius"] == 6.0


def test_demo_retrain_trains_both_models_from_their_recorded_configs(tmp_path: Path) -> None:
    if not all((checkpoint_dir() / f"{n}.pt").is_file() for n in MODEL_NAMES):
        pytest.skip("the shipped checkpoints are not in this checkout")
    argv = ["demo", "--retrain", "--retrain-steps", "2", "--quiet", "--samples", "1", "--steps", "2",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    for name in MODEL_NAMES:
        assert (tmp_path / "retrain" / name / "model.pt").is_file()
    runs = json.loads((tmp_path / "demo.json").read_text())["runs"]
    assert {r["model"] for r in runs.values()} == set(MODEL_NAMES)
    assert all(int(r["meta"]["steps"]) == 2 for r in runs.values())  # the retrained models, not the shipped ones
    labelling = {r["model"]: r["meta"]["experiment"]["scene"].get("labelling", "all") for r in runs.values()}
    assert labelling == {"local-32": "all", "baseline-32": "one"}
