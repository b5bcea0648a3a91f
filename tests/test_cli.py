"""The ``localscore`` command line: train, sample (layouts and their errors), evaluate, locality, demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from localscore import cli
from localscore.cli import main
from localscore.lengthgen import MODEL_NAMES, ExperimentConfig, LocalityProfile, load_model, locality_profile
from localscore.lengthgen.evaluate import CountResult, EvaluationResult, Proportion

sys.path.insert(0, str(Path(__file__).parent))
from test_lengthgen_experiments import tiny_experiment

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``localscore train CONFIG`` on a tiny experiment (2 steps); returns the run folder."""
    root = tmp_path_factory.mktemp("cli")
    cfg = root / "tiny.json"
    cfg.write_text(json.dumps(tiny_experiment().to_dict()))
    assert main(["train", str(cfg), "--out", str(root / "runs"), "--no-progress"]) == 0
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
    assert main(["train", str(single), "--out", str(root), "--steps", "3", "--no-progress"]) == 0
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
            "--out", str(out), "--steps", "2", "--no-progress"]
    assert main(args) == 0
    with np.load(out) as f:
        images = f["images"]
        assert images.shape == (2, 3, 16, 16) and images.dtype == np.float32
        assert images.min() >= 0 and images.max() <= 1
        assert f["valid"].tolist() == [[True, True], [False, False]]
    first = images.copy()
    assert main(args) == 2                              # an existing output is refused ...
    assert main([*args, "--overwrite"]) == 0            # ... unless --overwrite; same seed, same images
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
    ({"images": [[{"pos": [4, 5], "color": "red"}]]}, "'size' is missing.* Fix: give the image side"),
    ({"size": 16, "images": [[{"pos": [4, 5], "color": "red"}, {"pos": [4, 5.5], "color": "blue"}]]},
     "objects 0 and 1 are 0.5 px apart.*overlap.* Fix: move them at least 2.9 px apart"),
])
def test_sample_bad_layouts(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: object,
                            message: str) -> None:
    out = tmp_path / "never.npz"
    code = main(["sample", "--checkpoint", str(run_dir), "--layout", str(_layout(tmp_path, layout)),
                 "--out", str(out), "--steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "localscore sample: error" in err
    assert re.search(message, err, flags=re.S), err
    assert not out.exists()


def test_sample_errors_model_and_size(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = _layout(tmp_path, {"size": 16, "images": [[{"pos": [4, 5], "color": "red"}]]})
    assert main(["sample", "--checkpoint", "no-such-model", "--layout", str(layout), "--out",
                 str(tmp_path / "x.npz")]) == 2
    assert "neither a shipped model name" in capsys.readouterr().err
    # A local network samples any size (it is translation equivariant), with a note.
    big = _layout(tmp_path, {"size": 24, "images": [[{"pos": [20, 20], "color": "blue"}]]}, "big.json")
    assert main(["sample", "--checkpoint", str(run_dir), "--layout", str(big), "--out", str(tmp_path / "b.npz"),
                 "--steps", "1", "--no-progress"]) == 0
    assert "any size works" in capsys.readouterr().err
    with np.load(tmp_path / "b.npz") as f:
        assert f["images"].shape == (1, 3, 24, 24)


def test_evaluate_and_locality_commands(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(run_dir / "model.pt"), "--counts", "0,2", "--per-count", "2",
                 "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| objects | images | exact count | perfect |" in text
    res = json.loads(out.read_text())
    assert [r["count"] for r in res["rows"]] == [0, 2]
    loc = tmp_path / "loc.json"
    assert main(["locality", "--checkpoint", str(run_dir), "--sigmas", "0.5", "--count", "2", "--images", "1",
                 "--out", str(loc)]) == 0
    data = json.loads(loc.read_text())
    assert data["format"] == "localscore-locality" and len(data["index"]) == 1 and 0 <= data["index"][0] <= 1
    assert LocalityProfile.from_dict(data).sigmas == (0.5,)


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


def test_demo_run_twice_replaces_its_files_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--oracle", "--quick", "--samples", "4", "--steps", "2", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "previous demo" not in first
    (tmp_path / ".demo.json.abc123.tmp").write_text("stale")  # a write killed mid-way by an earlier demo
    assert main([*argv[:-3], "--seed", "1", "--out", str(tmp_path)]) == 0  # the README runs `localscore demo` twice
    second = capsys.readouterr().out
    assert "holds a previous demo's demo.json and demo.png; this run replaces them" in second
    assert json.loads((tmp_path / "demo.json").read_text())["seed"] == 1   # last writer wins, as announced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "demo.png"]   # no lock or temp left


def test_a_second_concurrent_demo_on_one_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import fcntl

    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text('{"kept": true}')
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)   # another demo holds the folder (its own flock)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        code = main(["demo", "--oracle", "--quick", "--samples", "4", "--steps", "2", "--no-progress", "--out",
                     str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "in use by another localscore process (pid 4242)" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 2   # the line and its fix
        assert (out / "demo.json").read_text() == '{"kept": true}'          # nothing written
    finally:
        os.close(fd)


def test_demo_shipped_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quick", "--samples", "1", "--steps", "2", "--out", str(tmp_path)]) == 0  # the default
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.lstrip().startswith("objects"))
    assert header.split()[1:] == ["local-32", "joint", "local-32", "projective", "baseline-32", "projective"]
    assert "labelling 'all'" in text and "labelling 'one'" in text  # local-32 and the paper's failing baseline
    assert "by design" not in text and "mean over the counts" in text  # the footer is computed from the table
    data = json.loads((tmp_path / "demo.json").read_text())
    assert data["counts"] == [1, 2, 3, 8, 9, 10]  # the training counts, then 8-10 where the footer compares
    assert sorted(data["runs"]) == ["baseline-32 projective", "local-32 joint", "local-32 projective"]
    for run in data["runs"].values():
        rows = run["evaluation"]["rows"]
        assert [r["count"] for r in rows] == [1, 2, 3, 8, 9, 10] and all(r["images"] == 1 for r in rows)
        assert run["model"] in MODEL_NAMES
    assert "at 8-10 objects, perfect rate with its Wilson 95 % interval (3 images per run)" in text
    assert (tmp_path / "demo.png").stat().st_size > 1000


def test_demo_background_composes_the_shipped_models_over_four_backgrounds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--background", "--quick", "--samples", "1", "--steps", "2", "--counts", "1,3",
                 "--no-progress", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.lstrip().startswith("objects"))
    assert header.split()[1:] == ["empty", "empty-separate", "unconditional", "cluttered"]
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["1"], ["3"])]
    assert [r[0] for r in rows] == ["1", "3"] and all(len(r) == 1 + 3 * 4 for r in rows)
    data = json.loads((tmp_path / "background.json").read_text())
    assert data["counts"] == [1, 3] and data["per_count"] == 1 and data["steps"] == 2
    assert list(data["runs"]) == ["empty", "empty-separate", "unconditional", "cluttered"]
    for name, run in data["runs"].items():
        ev = run["evaluation"]
        assert ev["requested"] == [1, 3] and ev["meta"]["composition"] == name
        # the two compositions over another model's empty set record it; the others use their own
        assert ("background" in ev["meta"]) == (name == "empty-separate")
    assert (tmp_path / "background.png").stat().st_size > 1000
    assert not (tmp_path / "demo.json").exists()


def test_demo_background_refuses_the_other_demo_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flag in (["--oracle"], ["--method", "masked"]):
        assert main(["demo", "--background", *flag, "--out", str(tmp_path / "x")]) == 2
        assert f"cannot be combined with {flag[0]}" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_demo_default_settings_and_counts_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The defaults the README's timing was measured with: 6 images per count at 1-3 and 8-10 objects, 16 Euler
    # steps, the compositions' own strategy choice. The sampling itself is stubbed here.
    from localscore import lengthgen
    from localscore.lengthgen.evaluate import evaluate_sampler

    seen: list[dict[str, object]] = []

    def fake(model: object, method: str, **kw: object) -> object:
        seen.append({"method": method, **kw})
        scene = model.scene.replace(counts=tuple(kw["counts"]), labelling="all")  # type: ignore[attr-defined]
        def blank(c: object, g: object) -> torch.Tensor:
            images = torch.zeros(c.batch_size, 3, 32, 32)  # type: ignore[attr-defined]
            kw["keep_images"].append(images)  # type: ignore[attr-defined]
            return images

        return evaluate_sampler(blank, scene, counts=kw["counts"], per_count=kw["per_count"],
                                batch_size=kw["batch_size"])

    monkeypatch.setattr(lengthgen, "evaluate_model", fake)
    threads = torch.get_num_threads()
    assert main(["demo", "--no-progress", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads  # the side-by-side runs give the torch threads back
    # the runs may run side by side in threads (in any order); the table keeps the runs' order
    assert sorted((s["method"], s["counts"], s["per_count"], s["steps"], s["strategy"]) for s in seen) == \
        [(m, [1, 2, 3, 8, 9, 10], 6, 16, "auto") for m in ("joint", "projective", "projective")]
    assert list(json.loads((tmp_path / "demo.json").read_text())["runs"]) == \
        ["local-32 joint", "local-32 projective", "baseline-32 projective"]
    assert "Sampling 6 images for each of 1-3, 8-10 objects (16 Euler steps)" in capsys.readouterr().out
    seen.clear()
    assert main(["demo", "--quick", "--no-progress", "--counts", "1..4", "--out", str(tmp_path)]) == 0
    assert {(tuple(s["counts"]), s["per_count"], s["steps"]) for s in seen} == {((1, 2, 3, 4), 2, 12)}  # type: ignore


def test_demo_method_masked_samples_both_models_with_the_intervention(tmp_path: Path) -> None:
    assert main(["demo", "--method", "masked", "--samples", "1", "--steps", "2", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "demo.json").read_text())
    assert sorted(data["runs"]) == ["baseline-32 masked", "local-32 masked"]
    for run in data["runs"].values():
        meta = run["evaluation"]["meta"]
        # the masks the model was benchmarked with (recorded in the shipped file), not evaluate_model's default
        assert meta["method"] == "masked" and meta["mask_radius"] == run["meta"]["experiment"]["mask_radius"] == 6.0


def test_demo_retrain_trains_both_models_from_their_recorded_configs(tmp_path: Path) -> None:
    argv = ["demo", "--retrain", "--retrain-steps", "2", "--no-progress", "--samples", "1", "--steps", "2",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    for name in MODEL_NAMES:
        assert (tmp_path / "retrain" / name / "model.pt").is_file()
    runs = json.loads((tmp_path / "demo.json").read_text())["runs"]
    assert {r["model"] for r in runs.values()} == set(MODEL_NAMES)
    assert all(int(r["meta"]["steps"]) == 2 for r in runs.values())  # the retrained models, not the shipped ones
    labelling = {r["model"]: r["meta"]["experiment"]["scene"].get("labelling", "all") for r in runs.values()}
    assert labelling == {"local-32": "all", "baseline-32": "one"}


# ----------------------------------------------------------------------------- polish (issue 15, item 5)
def _cannot_write_in(folder: str) -> bool:
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(fd)
    os.unlink(name)
    return False


def test_out_is_checked_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The checkpoint does not exist: an --out error means the path was checked before loading and sampling.
    layout = _layout(tmp_path, {"size": 16, "images": [[{"pos": [4, 5], "color": "red"}]]})
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [(str(a_file / "x.npz"), "which is a file, not a folder"),
             (str(tmp_path), "is a folder; expected a file name.*Fix: name a file in it"),
             (str(tmp_path / "result.txt"), "ends in '.txt'.*writes .npz \\(arrays\\) or .png.*Fix: use a name"),
             (str(tmp_path / "result"), "has no suffix"),
             ("", "--out is empty")]
    if os.path.isdir("/proc") and _cannot_write_in("/proc"):
        cases.append(("/proc/x.npz", "cannot create a file in '/proc'.*Fix: choose a writable folder"))
    for out, message in cases:
        code = main(["sample", "--checkpoint", "no-such-model", "--layout", str(layout), "--out", out])
        err = capsys.readouterr().err
        assert code == 2 and re.search(message, err, flags=re.S), (out, err)
        assert "Traceback" not in err and "no-such-model" not in err
    assert main(["evaluate", "--checkpoint", "no-such-model", "--out", str(tmp_path / "r.csv")]) == 2
    assert "writes .json" in capsys.readouterr().err
    assert main(["locality", "--checkpoint", "no-such-model", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["demo", "--out", str(a_file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert a_file.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "layout.json"]


def test_sample_writes_a_png_grid_and_the_arrays_in_one_run(run_dir: Path, tmp_path: Path) -> None:
    layout = {"size": 16, "images": [[{"pos": [4, 5], "color": "red"}], [], [{"pos": [10, 10], "color": "blue"}]]}
    png, npz = tmp_path / "grid.png", tmp_path / "arrays.npz"
    assert main(["sample", "--checkpoint", str(run_dir), "--layout", str(_layout(tmp_path, layout)), "--out",
                 str(png), str(npz), "--steps", "1", "--no-progress"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(npz) as f:
        assert f["images"].shape == (3, 3, 16, 16)
    assert main(["sample", "--checkpoint", str(run_dir), "--layout", str(_layout(tmp_path, layout)), "--out",
                 str(npz), str(tmp_path / "." / "arrays.npz")]) == 2   # the same file twice


def test_png_without_matplotlib_is_a_clear_error_before_sampling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    layout = _layout(tmp_path, {"size": 16, "images": [[{"pos": [4, 5], "color": "red"}]]})
    assert main(["sample", "--checkpoint", "no-such-model", "--layout", str(layout), "--out",
                 str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert "writing a .png file needs matplotlib" in err and "pip install 'localscore[plot]'" in err
    assert not (tmp_path / "s.png").exists()


def test_progress_on_stderr_by_default_and_off_with_no_progress(run_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "_PROGRESS_EVERY", 0.0)       # a line per step (the default is one per 10 s)
    argv = ["evaluate", "--checkpoint", str(run_dir), "--counts", "2", "--per-count", "2", "--steps", "2"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "localscore evaluate: 1/2 steps (50 %)" in err and "2/2 steps (100 %)" in err
    assert "steps (" not in out                              # the result alone on stdout
    assert main([*argv, "--no-progress"]) == 0
    assert "steps (" not in capsys.readouterr().err
    loc = ["locality", "--checkpoint", str(run_dir), "--sigmas", "0.5", "1", "--count", "2", "--images", "1"]
    assert main(loc) == 0
    assert "localscore locality: 2/2 noise levels (100 %)" in capsys.readouterr().err
    # On a terminal: a tqdm bar where tqdm is installed, the same lines where it is not.
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    pytest.importorskip("tqdm")
    assert main(loc) == 0
    err = capsys.readouterr().err
    assert "2/2" in err and "noise levels (" not in err
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert main(loc) == 0
    assert "localscore locality: 2/2 noise levels (100 %)" in capsys.readouterr().err


COMMANDS = ("demo", "train", "sample", "evaluate", "locality")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_is_plain_text(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"] if command else ["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for raw in ("``", ":class:", ":func:", "%%", "(default: None)", "(default: False)", "(default: True)",
                "benchmarks/configs", "--quiet", "--trained"):
        assert raw not in text, (command, raw)
    assert "`" not in text
    for line in text.splitlines():       # required options never claim a default
        if "--checkpoint PATH_OR_NAME" in line or "--layout LAYOUT.json" in line:
            assert "default" not in line
    flat = " ".join(text.split())
    if command == "evaluate":
        assert "Wilson 95 % intervals" in flat
    if command == "locality":
        assert "localscore.lengthgen.locality_profile" in flat


def test_flags_of_0_1_0_are_deprecated_not_broken(capsys: pytest.CaptureFixture[str]) -> None:
    """The replaced flags still parse for one release, hidden from --help, with a warning that says what to do."""
    from localscore.cli import _parser

    parser = _parser()
    for argv, progress, advice in ((["demo", "--trained"], True, "drop the flag"),
                                   (["demo", "--progress"], True, "by default"),
                                   (["demo", "--quiet"], False, "--no-progress"),
                                   (["evaluate", "--checkpoint", "x", "--quiet"], False, "--no-progress"),
                                   (["locality", "--checkpoint", "x", "--quiet"], False, "--no-progress"),
                                   (["train", "c.json", "--quiet"], False, "--no-progress")):
        args = parser.parse_args(argv)
        err = capsys.readouterr().err
        assert args.progress is progress, argv
        assert f"{argv[-1]} is deprecated" in err and advice in err, (argv, err)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["demo", "--no-such-flag"])
    assert e.value.code == 2


@pytest.mark.parametrize("argv", [
    ["sample", "--checkpoint", "x", "--layout", "l.json", "--out", "x.npz", "--steps", "0"],
    ["evaluate", "--checkpoint", "x", "--steps", "0"],
    ["demo", "--steps", "0"],
    ["evaluate", "--checkpoint", "x", "--per-count", "0"],
    ["locality", "--checkpoint", "x", "--count", "1"],
    ["locality", "--checkpoint", "x", "--sigmas", "-1"],
])
def test_bad_numbers_are_named_by_their_flag(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    flag = next(a for a in argv if a.startswith("--") and a not in ("--checkpoint", "--layout", "--out"))
    assert f"argument {flag}:" in err and "karras" not in err


def test_train_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--print-config", "local-32"]) == 0
    cfg = ExperimentConfig.from_dict(json.loads(capsys.readouterr().out))
    assert cfg.model == "local" and cfg.scene_config().resolution == 32
    assert main(["train"]) == 2
    assert "Fix: pass a JSON config, or start from a shipped model's: `localscore train --print-config" in \
        capsys.readouterr().err


def test_close_objects_warn_and_overlapping_ones_are_refused(run_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # The tiny model draws small discs of radius 0.96 px 16x16 scenes with min_gap 1 px: its training pairs are
    # >= 2.92 px apart; discs closer than 1.92 px overlap.
    close = {"size": 16, "images": [[{"pos": [4, 5], "color": "red"}, {"pos": [4, 7.5], "color": "blue"}]]}
    out = tmp_path / "c.npz"
    assert main(["sample", "--checkpoint", str(run_dir), "--layout", str(_layout(tmp_path, close)), "--out", str(out),
                 "--steps", "1", "--no-progress"]) == 0
    assert "warning: image 0: objects 0 and 1 are 2.5 px apart, closer than the 2.9 px" in capsys.readouterr().err
    far = {"size": 16, "images": [[{"pos": [4, 5], "color": "red"}, {"pos": [4, 8], "color": "blue"}]]}
    assert main(["sample", "--checkpoint", str(run_dir), "--layout", str(_layout(tmp_path, far)), "--out", str(out),
                 "--steps", "1", "--no-progress", "--overwrite"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_locality_explains_its_columns_and_uses_the_api_default_radius(run_dir: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "loc.json"
    assert main(["locality", "--checkpoint", str(run_dir), "--sigmas", "0.5", "--count", "2", "--images", "1",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for column in ("cond. index  share", "on others    share", "infl. r90    distance", "pixel r90    radius"):
        assert column in text
    m = load_model(run_dir)
    api = locality_profile(m.denoiser, m.scene, sigmas=[0.5], count=2, n_images=1)
    assert LocalityProfile.from_dict(json.loads(out.read_text())) == api     # the CLI writes the API's profile
    assert f"R = {api.region_radius:.1f} px (the default" in text


def _evaluation(rates: dict[int, tuple[int, int, int]], images: int = 8) -> EvaluationResult:
    """Per count: (perfect, correct pairs, detections) out of ``images`` images of ``count`` objects each."""
    rows = []
    for c, (perfect, correct, detected) in rates.items():
        n = images * c
        rows.append(CountResult(c, images, Proportion(perfect, images), Proportion(perfect, images),
                                Proportion(correct, n), Proportion(correct, detected)))
    return EvaluationResult(tuple(rows))


def test_demo_footer_says_what_its_numbers_say() -> None:
    from types import SimpleNamespace

    from localscore.lengthgen.data import SceneConfig

    models = {"baseline-32": SimpleNamespace(scene=SceneConfig(counts=(1, 2, 3), labelling="one"), meta={})}
    results = {"baseline-32 projective": {"model": "baseline-32"}}
    counts = [1, 2, 3, 4, 5]
    # The table of the review: perfect 0.88 and 1.00 at 2 and 3 objects, every object drawn.
    good = {"baseline-32 projective": _evaluation({1: (8, 8, 8), 2: (7, 16, 17), 3: (8, 24, 24), 4: (8, 32, 32),
                                                   5: (4, 30, 40)})}
    text = "\n".join(cli._demo_footer(good, results, models, counts))
    assert "not requested" not in text and "perfect" in text
    assert re.search(r"baseline-32 projective\s+1-3\s+0.96\s+1.00\s+4-5\s+0.75\s+0.88", text), text
    assert "recall falls from 1.00 on the training counts to 0.88 beyond them" in text
    # Extra objects on the trained counts: said, with the precision that shows it.
    bad = {"baseline-32 projective": _evaluation({1: (2, 8, 16), 2: (2, 16, 30), 3: (2, 24, 40), 4: (2, 32, 50),
                                                  5: (2, 40, 60)})}
    text = "\n".join(cli._demo_footer(bad, results, models, counts))
    assert "perfect 0.25 is below recall 1.00: it draws objects that were not requested (precision 0.54)" in text
    assert "recall holds beyond the training counts (1.00 -> 1.00)" in text


def test_demo_footer_compares_the_runs_at_the_largest_counts_with_wilson_intervals() -> None:
    from types import SimpleNamespace

    from localscore.lengthgen.data import SceneConfig

    scene = SceneConfig(counts=(1, 2, 3), labelling="all")
    models = {"a": SimpleNamespace(scene=scene, meta={}), "b": SimpleNamespace(scene=scene, meta={})}
    results = {"a projective": {"model": "a"}, "b projective": {"model": "b"}}
    counts = [1, 2, 3, 8, 9, 10]
    trained = {1: (6, 6, 6), 2: (6, 12, 12), 3: (6, 18, 18)}
    holds = _evaluation({**trained, 8: (6, 48, 48), 9: (6, 54, 54), 10: (6, 60, 60)}, images=6)
    fails = _evaluation({**trained, 8: (4, 46, 48), 9: (3, 50, 54), 10: (1, 50, 60)}, images=6)
    text = "\n".join(cli._demo_footer({"a projective": holds, "b projective": fails}, results, models, counts))
    # pooled over 8-10: 18/18 -> [0.82, 1.00] and 8/18 -> [0.25, 0.66]: separated
    assert "a projective 1.00 [0.82, 1.00]; b projective 0.44 [0.25, 0.66]" in text, text
    assert "at 8-10 objects, a projective draws more scenes perfectly than b projective (1.00 vs 0.44); the " \
        "intervals do not overlap." in text
    # one image per count: the same rates are not resolved, and the footer says so
    few = {1: (1, 1, 1), 2: (1, 2, 2), 3: (1, 3, 3)}
    holds1 = _evaluation({**few, 8: (1, 8, 8), 9: (1, 9, 9), 10: (1, 10, 10)}, images=1)
    fails1 = _evaluation({**few, 8: (1, 8, 8), 9: (0, 8, 9), 10: (0, 9, 10)}, images=1)
    text = "\n".join(cli._demo_footer({"a projective": holds1, "b projective": fails1}, results, models, counts))
    assert "a projective (1.00) and b projective (0.33) are not separated: their intervals overlap" in text, text
    assert "draws more scenes perfectly" not in text


def test_error_messages_name_the_command_once() -> None:
    from localscore import LocalScoreError

    assert cli._message("sample", LocalScoreError("localscore sample (l.json): bad")) == \
        "localscore sample: error: l.json: bad"
    assert cli._message("train", LocalScoreError("localscore train: no CONFIG")) == \
        "localscore train: error: no CONFIG"


def test_a_failed_write_is_one_line_not_a_traceback(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def full(path: Path, data: object) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(cli, "_write_json", full)
    out = tmp_path / "loc.json"
    assert main(["locality", "--checkpoint", str(run_dir), "--sigmas", "1", "--count", "2", "--images", "1",
                 "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == f"localscore locality: error: No space left on device ({out})\n"
