"""The pytest plugin (entry point ``pytest11: localscore``, imported by pytest in every run of an environment
where localscore is installed) and the packages above it import nothing heavy: no torch, no hypothesis, no
other localscore module. The public names still load on first use, exactly as before."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path | None = None, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (nothing imported yet) with the repository on the path."""
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_plugin_import_does_not_import_torch() -> None:
    proc = _python("import localscore.testing.plugin, sys; print('torch' in sys.modules)")
    assert proc.stdout.strip() == "False"


def test_plugin_import_loads_only_the_plugin_and_its_packages() -> None:
    proc = _python(textwrap.dedent("""
        import sys
        before = set(sys.modules)
        import localscore.testing.plugin
        new = sorted(set(sys.modules) - before)
        print(sorted(m for m in new if m.split('.')[0] == 'localscore'))
        print(sorted(m for m in new if m.split('.')[0] in ('torch', 'numpy', 'hypothesis')))
    """))
    ours, heavy = proc.stdout.strip().splitlines()
    assert ours == str(["localscore", "localscore._lazy", "localscore.testing", "localscore.testing.plugin"])
    assert heavy == "[]"


def test_public_names_still_load_on_first_use() -> None:
    # every name of __all__ resolves (from-import, attribute access, star import), dir() lists them, and
    # submodules are reachable as attributes after a bare `import localscore`.
    proc = _python(textwrap.dedent("""
        import sys
        import localscore, localscore.testing
        assert 'torch' not in sys.modules
        assert set(localscore.__all__) <= set(dir(localscore))
        assert set(localscore.testing.__all__) <= set(dir(localscore.testing))
        from localscore import Conditions, LocalScoreError, compose, score
        assert Conditions.__module__ == 'localscore.conditions' and issubclass(LocalScoreError, ValueError)
        assert compose is sys.modules['localscore.compose'] and score.__module__ == 'localscore.denoisers'
        assert localscore.compose.CompositionResidual.__module__ == "localscore.compose.residuals"
        assert localscore.data is sys.modules['localscore.data']  # any submodule, as an attribute
        for mod in (localscore, localscore.testing):
            for name in mod.__all__:
                assert getattr(mod, name) is not None, name
        ns = {}
        exec('from localscore import *', ns)
        assert set(localscore.__all__) <= set(ns)
        from localscore.testing import LocalConvDenoiser, assert_pixel_local, strategies
        assert strategies.__name__ == 'localscore.testing.strategies'
        for missing in ('nope', 'Nope', 'a.b'):
            assert not hasattr(localscore, missing) and not hasattr(localscore.testing, missing)
        print('ok')
    """))
    assert proc.stdout.strip() == "ok"


def test_a_pytest_run_with_the_plugin_imports_torch_only_when_a_fixture_needs_it(tmp_path: Path) -> None:
    (tmp_path / "test_unrelated.py").write_text(textwrap.dedent("""
        import sys

        def test_first():  # the plugin is registered, but nothing of localscore beyond it was imported
            assert 'torch' not in sys.modules
            assert sorted(m for m in sys.modules if m.startswith('localscore')) == [
                'localscore', 'localscore._lazy', 'localscore.testing', 'localscore.testing.plugin']

        def test_fixture_loads_on_use(locality):
            import torch
            from localscore.testing import LocalConvDenoiser
            locality.assert_pixel_local(LocalConvDenoiser(1, 1, hidden=2), torch.randn(1, 1, 6, 6), 1.0, radius=1)
    """))
    installed = any(ep.name == "localscore" for ep in entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "localscore.testing.plugin"]
    proc = _python("import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))", cwd=tmp_path,
                   args=(*plugin, "-p", "no:cacheprovider", "-q", "-c", os.devnull, "--rootdir", str(tmp_path),
                         "test_unrelated.py"))
    assert "2 passed" in proc.stdout
