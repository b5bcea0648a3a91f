"""benchmarks/crowding.py end to end in quick mode (2 sampler steps, 2 images per cell), in a tmp folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _benchmarks import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "crowding.py"


@pytest.fixture(scope="module")
def crowding():
    mod = load_benchmark("crowding", "_bench_crowding")
    try:
        yield mod
    finally:
        sys.modules.pop("_bench_crowding", None)


@pytest.fixture(scope="module")
def quick_run(crowding, tmp_path_factory):
    out = tmp_path_factory.mktemp("crowding")
    page = out / "docs" / "crowding.md"
    assert crowding.main(["--quick", "--out", str(out), "--workers", "1", "--docs", str(page)]) == 0
    return out, page


def _files(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/*/n*-d*-m*.json")}


def test_every_job_has_a_result_file(crowding, quick_run):
    out, _ = quick_run
    cfg = crowding.load_config(crowding.CONFIG, quick=True)
    jobs = crowding.jobs_of(cfg)
    assert jobs and all(j.path(out).is_file() for j in jobs)
    assert len(_files(out)) == len(jobs)
    for j in jobs:
        data = json.loads(j.path(out).read_text())
        assert data["status"] in ("ok", "infeasible")
        assert data["meta"]["count"] == j.cell.count and data["meta"]["method"] == j.method
        assert data["meta"]["machine"]["cpu"]


def test_infeasible_cell_is_recorded_not_sampled(crowding, quick_run):
    """10 objects with centres 10 px apart do not fit a 32x32 image: recorded as infeasible, never a crash."""
    out, page = quick_run
    data = json.loads((out / "baseline-32" / "projective" / "n10-d10-m0.5.json").read_text())
    assert data["status"] == "infeasible"
    assert "could not place" in data["reason"] and "evaluation" not in data
    ok = json.loads((out / "baseline-32" / "projective" / "n10-d5-m0.5.json").read_text())
    assert ok["status"] == "ok" and ok["evaluation"]["rows"][0]["count"] == 10
    md = (out / "results.md").read_text()
    assert "| 10 | " in md and "infeasible" in md
    assert "10 objects, d 10 px, margin 0.5 px" in page.read_text()


def test_feasibility_reports_packing_bound_and_bad_margin(crowding):
    model = crowding._model("baseline-32")
    status, reason = crowding.feasibility(model, crowding.Cell(60, 0.0, 0.5), 2, 0, 5)
    assert status == "infeasible" and reason.startswith("packing bound")
    status, reason = crowding.feasibility(model, crowding.Cell(1, 0.0, 20.0), 2, 0, 5)
    assert status == "infeasible"
    assert crowding.feasibility(model, crowding.Cell(3, 5.0, 0.5), 2, 0, 5) == ("ok", "")


def test_report_schema(crowding, quick_run):
    out, page = quick_run
    res = json.loads((out / "results.json").read_text())
    assert res["format"] == "localscore-crowding/1"
    keys = {(r["model"], r["method"], r["count"], r["min_distance"], r["margin"]) for r in res["rows"]}
    assert ("baseline-32", "joint", 10, 10.0, 0.5) in keys and ("local-32", "projective", 2, 5.0, 4.0) in keys
    for r in res["rows"]:
        if r["status"] == "ok":
            for m in ("perfect", "recall", "precision", "exact_count"):
                lo, hi = r[m]["ci95"]
                assert 0.0 <= lo <= (r[m]["rate"] or 0.0) <= hi <= 1.0
            assert r["ceiling_perfect"]["trials"] == r["images"]
            assert r["mean_neighbours"] >= 0
        else:
            assert "perfect" not in r
    md = (out / "results.md").read_text()
    assert "| objects \\ min distance (px) | 5 | 10 |" in md
    assert "#### baseline-32 / projective" in md
    assert "| model / method | 0.5 | 4 |" in md   # the margin sweep
    text = page.read_text()
    assert text.startswith("# Crowding") and "Quick mode" in text and "Hypothesis" in text
    pytest.importorskip("matplotlib")
    assert (out / "crowding.png").stat().st_size > 1000


def test_resume_skips_done_cells_and_redoes_changed_ones(crowding, quick_run, capsys):
    out, _ = quick_run
    before = _files(out)
    cfg = crowding.load_config(crowding.CONFIG, quick=True)
    args = crowding.argparse.Namespace(force=False, workers=1)
    jobs = crowding.jobs_of(cfg)
    assert crowding.stage_evaluate(jobs, cfg, out, args) == {"run": 0, "skipped": len(jobs), "infeasible": 0}
    assert _files(out) == before
    # A missing file and a file of other settings are redone; the rest stay untouched.
    gone = jobs[0].path(out)
    gone.unlink()
    other = json.loads(jobs[1].path(out).read_text())
    other["meta"]["settings"]["per_count"] = 99
    jobs[1].path(out).write_text(json.dumps(other))
    changed = {str(j.path(out).relative_to(out)) for j in jobs[:2]}
    before = _files(out)
    assert crowding.stage_evaluate(jobs, cfg, out, args)["run"] == 2
    after = _files(out)
    assert set(after) == set(before) | changed
    assert all(after[k] == before[k] for k in before if k not in changed)
    assert json.loads(jobs[1].path(out).read_text())["meta"]["settings"]["per_count"] == jobs[1].per_count


def test_archive_copies_results(crowding, quick_run, tmp_path):
    out, _ = quick_run
    n = crowding.stage_archive(out, tmp_path / "archive")
    assert n == len(_files(out)) + sum((out / f).is_file() for f in ("results.json", "results.md", "crowding.png"))
    assert (tmp_path / "archive" / "baseline-32" / "projective" / "n10-d10-m0.5.json").is_file()
    rows = crowding.read_results(tmp_path / "archive")
    assert len(rows) == len(_files(out))
    with pytest.raises(SystemExit):
        crowding.stage_archive(out, out)


def test_a_second_writer_is_refused(crowding, tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    import os

    out = tmp_path / "runs"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)   # another process holds the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        assert crowding.main(["--quick", "--out", str(out), "--stage", "evaluate", "--workers", "1"]) == 2
    finally:
        os.close(fd)
    assert "in use by another localscore process (pid 4242)" in capsys.readouterr().err
    assert not list(out.glob("*/*/*.json"))
