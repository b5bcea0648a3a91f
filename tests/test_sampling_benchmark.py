"""Smoke test of benchmarks/samplers.py: both starts run, each prints its floor, best-sampler lines and goal line.

Tiny sizes (a few seconds); the numbers themselves are the benchmark's business, not the test's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_samplers_benchmark_runs_both_starts() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "samplers.py"), "--n", "200", "--budgets", "10,20",
                        "--replicates", "2", "--no-peers", "--no-overhead"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "START: PRIOR" in out and "START: EXACT" in out
    assert out.count("floor: 64 exact sets") == 2
    assert out.count("GOAL (NFE 20") == 2
    assert "start prior" in out and "start exact" in out
    for row in ("dpmpp_2m", "lms", "deis", "unipc"):
        assert f"   {row} " in out
