"""``localscore train`` killed (SIGKILL) at random moments, again and again, resumes to the same bits.

The run is killed at least 10 times at random points (between steps, during checkpoint and log writes, at
start-up), each time restarted with the same command, until it finishes. Its final weights must equal those
of an uninterrupted run bit for bit (one thread), its log must read as one run, and no temporary file of a
killed write, and no lock file, may be left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_lengthgen_experiments import tiny_experiment

REPO = Path(__file__).resolve().parents[1]
KILLS = 10
STEPS = 40


def _command(cfg: Path, out: Path) -> list[str]:
    code = "import sys, torch; torch.set_num_threads(1); from localscore.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code, "train", str(cfg), "--out", str(out), "--no-progress"]


def _steps_logged(run: Path) -> int:
    try:
        return len((run / "log.jsonl").read_text().splitlines())
    except OSError:
        return 0


@pytest.mark.slow
def test_sigkill_ten_times_at_random_points_then_resume_is_bit_identical(tmp_path: Path) -> None:
    exp = tiny_experiment().to_dict()
    exp["train"].update(steps=STEPS, log_every=1, checkpoint_every=1)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(exp))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_command(cfg, straight), check=True, env=env, timeout=240, capture_output=True)

    killed = tmp_path / "killed"
    run = killed / "tiny" / "seed0"
    rng = random.Random(18)
    kills = 0
    deadline = time.time() + 150
    while kills < KILLS:
        assert time.time() < deadline, f"only {kills} kills before the deadline"
        before = _steps_logged(run)
        proc = subprocess.Popen(_command(cfg, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill at a random point: after 0-3 more logged steps, plus a random delay of up to 50 ms (so some kills
        # land in start-up, some between steps, some in the middle of a checkpoint or log write).
        more = rng.randint(0, 3)
        t0 = time.time()
        while proc.poll() is None and _steps_logged(run) < before + more and time.time() - t0 < 60:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is not None:
            break                               # it finished before the kill: the run is complete
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= KILLS
    subprocess.run(_command(cfg, killed), check=True, env=env, timeout=240, capture_output=True)

    a = torch.load(straight / "tiny" / "seed0" / "model.pt", weights_only=True)["payload"]["weights"]
    b = torch.load(run / "model.pt", weights_only=True)["payload"]["weights"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(straight / "tiny" / "seed0" / "checkpoint.pt", weights_only=True)["payload"]
    cb = torch.load(run / "checkpoint.pt", weights_only=True)["payload"]
    for part in ("model", "ema"):
        assert all(torch.equal(ca[part][k], cb[part][k]) for k in ca[part])
    log_a = [(r["step"], r["loss"]) for r in map(json.loads, (straight / "tiny" / "seed0" / "log.jsonl").read_text()
                                                  .splitlines())]
    log_b = [(r["step"], r["loss"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]
    assert log_a == log_b and len(log_a) == STEPS
    left = sorted(p.name for p in run.iterdir())
    assert left == ["checkpoint.pt", "experiment.json", "log.jsonl", "model.pt"], left   # no .tmp, no .lock
