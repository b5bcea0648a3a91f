"""Helpers the benchmark scripts share (not a benchmark): the CPU's name and load for the report,
k-diffusion's ``sampling.py`` for side-by-side runs, atomic file writes, matplotlib without a display, the
archive copy of a run folder and the generated block of a docs page. The scripts run as
``python benchmarks/<name>.py``, so ``import _bench`` finds this file next to them."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
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


def fmt(v: Any, digits: int = 2) -> str:
    """A number for a results table: ``digits`` decimals, ``"–"`` for None or NaN."""
    return "–" if v is None or (isinstance(v, float) and v != v) else f"{v:.{digits}f}"


def log(msg: str) -> None:
    """Print ``[HH:MM:SS] msg`` at once (benchmarks run for long; their logs are read while they run)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine_line() -> str:
    """One line naming the CPU, its cores and load, torch and its threads: printed beside every timing."""
    import torch

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{cpu_name()}, {os.cpu_count()} cores, load {load}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None when matplotlib is not installed (figures skipped)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def archive_results(out: Path, archive: Path) -> None:
    """Copy the small result files of a run folder (``*.json``, ``*.png``, ``*.md``, ``log.jsonl``; never
    weights) to ``archive``, keeping the folder layout."""
    for p in sorted(out.rglob("*")):
        if p.is_file() and (p.suffix in (".json", ".png", ".md") or p.name == "log.jsonl"):
            dest = archive / p.relative_to(out)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dest)
    log(f"archived {out} -> {archive}")


def write_docs_block(page: Path, name: str, body: str) -> None:
    """Put ``body`` between the markers ``<!-- {name}:start -->`` and ``<!-- {name}:end -->`` of ``page``
    (replacing what was there, or appended with the markers when the page has none)."""
    text = page.read_text() if page.exists() else ""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    page.write_text(text)
    log(f"wrote {page}")
