"""The length-generalization benchmark's evaluate and locality stages: one writer per run folder."""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from localscore.lengthgen import train_experiment

sys.path.insert(0, str(Path(__file__).parent))
from _benchmarks import load_benchmark
from test_lengthgen_experiments import tiny_experiment

REPO = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    return load_benchmark("length_generalization")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A config of one tiny experiment, and a runs folder where its seed 0 is trained (2 steps)."""
    tmp = tmp_path_factory.mktemp("bench")
    exp = tiny_experiment()
    cfg = {"mode": "test", "description": "tiny", "experiments": [exp.to_dict()]}
    path = tmp / "cfg.json"
    path.write_text(json.dumps(cfg))
    out = tmp / "runs"
    train_experiment(exp, out / exp.name / "seed0", seed=0, progress=False)
    return path, out


@pytest.mark.parametrize("stage", ["evaluate", "locality"])
def test_a_second_writer_of_a_run_folder_is_refused(stage: str, runs: tuple[Path, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg, out = runs
    run_dir = out / "tiny" / "seed0"
    before = sorted(p.name for p in run_dir.iterdir())
    bench = _bench()
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)   # another process holds the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        code = bench.main(["--config", str(cfg), "--out", str(out), "--stage", stage, "--locality-images", "1"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"--stage {stage} (tiny seed 0)" in err and "in use by another localscore process (pid 4242)" in err
        assert "Traceback" not in err
        assert sorted(p.name for p in run_dir.iterdir() if p.name != ".lock") == before    # nothing written
    finally:
        os.close(fd)
        (run_dir / ".lock").unlink()
    # Once the folder is free, the stage runs, and leaves no lock or temporary file behind.
    (run_dir / ".eval-joint.json.x1y2z3.tmp").write_bytes(b"half")  # left by a killed writer
    assert bench.main(["--config", str(cfg), "--out", str(out), "--stage", stage, "--locality-images", "1"]) == 0
    written = "eval-joint.json" if stage == "evaluate" else "locality.json"
    names = {p.name for p in run_dir.iterdir()}
    assert written in names and ".lock" not in names and not any(n.endswith(".tmp") for n in names)


def test_a_stage_skips_untrained_runs_without_creating_their_folders(tmp_path: Path, runs: tuple[Path, Path]) -> None:
    cfg, _ = runs
    bench = _bench()
    out = tmp_path / "empty"
    assert bench.main(["--config", str(cfg), "--out", str(out), "--stage", "evaluate"]) == 0
    assert bench.main(["--config", str(cfg), "--out", str(out), "--stage", "locality"]) == 0
    assert not out.exists()
