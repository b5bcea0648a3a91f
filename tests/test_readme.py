"""The README's tour runs as written, and its Quick start matches what CI does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_a_tour() -> None:
    assert len(_python_blocks()) >= 4


def test_readme_tour_runs(capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {}
    for block in _python_blocks():
        exec(compile(block, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    # the printed claims in the README's comments hold
    assert "[[True, True], [True, False]]" in out
    assert out.strip().endswith("True")


def test_quick_start_is_two_commands_and_ci_runs_the_test_command() -> None:
    quick = README.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line for line in quick.splitlines() if line.strip()]
    assert len(lines) == 2
    assert lines[0].endswith("localscore demo")
    test_cmd = lines[1].split("&&")[1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci
