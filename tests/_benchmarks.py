"""Load a script of ``benchmarks/`` as a module in a test (not part of the library)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, module_name: str | None = None) -> ModuleType:
    """``benchmarks/<name>.py`` as a module registered under ``module_name`` (dataclasses look it up).

    A script runs as ``python benchmarks/<name>.py``, with its folder on ``sys.path`` (for ``import _bench``);
    here that folder is on ``sys.path`` while the script's module body runs.
    """
    module_name = module_name or f"_benchmark_{name}"
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = mod
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    finally:
        sys.path.remove(str(BENCHMARKS))
    return mod


def bench_helpers() -> ModuleType:
    """``benchmarks/_bench.py``, the helpers the benchmark scripts share (k-diffusion's ``sampling.py``, the CPU's
    name, atomic writes...), loaded as :func:`load_benchmark` loads a script."""
    return load_benchmark("_bench")


def run_script(name: str, config: Path, *args: str, timeout: float = 600) -> str:
    """Run ``python benchmarks/<name>.py --config CONFIG ARGS...``, assert it exits 0 and return its stdout."""
    r = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--config", str(config), *args],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout
