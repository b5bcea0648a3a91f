"""Helpers the benchmark scripts share (not a benchmark): the CPU's name for the report, k-diffusion's
``sampling.py`` for side-by-side runs, and atomic file writes. The scripts run as
``python benchmarks/<name>.py``, so ``import _bench`` finds this file next to them."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def load_k_diffusion_sampling() -> Any:
    """k-diffusion's ``sampling.py`` alone (its package imports clip, clean-fid and torchvision), or ``None``.

    From ``$LOCALSCORE_K_DIFFUSION_SAMPLING`` (a path to ``k_diffusion/sampling.py``) or an installed
    ``k_diffusion``; ``torchsde`` / ``torchdiffeq`` are stubbed when absent (the SDE samplers are then given a
    plain Gaussian ``noise_sampler``, as localscore draws its noise). The stubs and the stand-in package live in
    ``sys.modules`` only while the file runs (a stub without ``__spec__`` breaks diffusers' imports).
    """
    path = os.environ.get("LOCALSCORE_K_DIFFUSION_SAMPLING")
    if not path:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = os.path.join(next(iter(spec.submodule_search_locations)), "sampling.py")
    if not os.path.exists(path):
        return None
    saved = {k: sys.modules.get(k) for k in ("torchsde", "torchdiffeq", "_kd", "_kd.utils", "_kd.sampling")}
    try:
        for name in ("torchsde", "torchdiffeq"):
            if importlib.util.find_spec(name) is None:
                stub = types.ModuleType(name)
                stub.odeint = None  # type: ignore[attr-defined]
                sys.modules[name] = stub
        pkg, utils = types.ModuleType("_kd"), types.ModuleType("_kd.utils")
        pkg.__path__ = []  # type: ignore[attr-defined]
        utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]  # type: ignore[attr-defined]
        pkg.utils = utils  # type: ignore[attr-defined]
        sys.modules["_kd"], sys.modules["_kd.utils"] = pkg, utils
        spec = importlib.util.spec_from_file_location("_kd.sampling", path)
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically: a temporary file in the same folder, fsync, rename (a killed run leaves the old
    file or the new one, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    text = json.dumps(data, indent=1).encode()
    atomic_write(path, lambda f: f.write(text))
