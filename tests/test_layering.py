"""Layering: the core never imports the length-generalization pipeline, there are no import cycles, and the
names of 0.1.0 that moved still import from their old places, with a DeprecationWarning naming the new one.

The imports are read from the source with ``ast`` (every ``import`` statement, at module level or inside a
function), so an import that only runs on some code path counts too.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "localscore"

PIPELINE = ("localscore.lengthgen", "localscore.cli", "localscore.__main__")
"""The length-generalization pipeline and the command line that drives it."""
SHIMS = ("localscore.experiments", "localscore.data", "localscore.evaluate", "localscore.train.run")
"""The 0.1.0 locations of moved names: deprecation shims that forward to the pipeline."""
CORE = ("localscore.conditions", "localscore.denoisers", "localscore.schedules", "localscore.sampling",
        "localscore.compose", "localscore.masks", "localscore.nn", "localscore.metrics", "localscore.oracles",
        "localscore.empirical", "localscore.testing", "localscore.train", "localscore.adapters")
"""The core: what every user of the library needs, independent of the pipeline."""


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("localscore", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The localscore modules that ``name`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_module_table_is_complete() -> None:
    # every module is core, pipeline, shim, the package itself or a private helper: a new one must be placed
    for name in MODULES:
        private = name.split(".")[1].startswith("_") if name != "localscore" else False
        assert name == "localscore" or private or _within(name, CORE + PIPELINE + SHIMS), name
    assert "localscore.lengthgen.experiments" in MODULES and "localscore.lengthgen.data.scenes" in MODULES


def test_the_core_never_imports_the_pipeline() -> None:
    for name, deps in GRAPH.items():
        if _within(name, PIPELINE + SHIMS):
            continue
        bad = sorted(d for d in deps if _within(d, PIPELINE + SHIMS))
        assert not bad, f"{name} imports {bad}; the core must not depend on the length-generalization pipeline"


def test_the_pipeline_uses_no_shim() -> None:
    for name, deps in GRAPH.items():
        if _within(name, PIPELINE):
            bad = sorted(d for d in deps if _within(d, SHIMS))
            assert not bad, f"{name} imports the deprecated {bad}"


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """An import cycle of ``graph``, or ``None``; a submodule and its own package importing each other (a
    package's ``__init__`` re-exporting its submodules, which import siblings through it) is not one."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycle = [*stack[stack.index(d):], d]
                if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in itertools.pairwise(cycle)):
                    return cycle
            elif d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycles() -> None:
    cycle = _find_cycle(GRAPH)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"
    # positive control: the detector finds a planted cycle, and allows a package and its submodule
    assert _find_cycle({**GRAPH, "localscore.masks": GRAPH["localscore.masks"] | {"localscore.compose"}})
    assert _find_cycle({"p": {"p.a"}, "p.a": {"p"}}) is None


def test_the_graph_is_not_vacuous() -> None:
    # positive controls: the reader sees relative, absolute, function-level and `from . import` imports
    assert "localscore.lengthgen.data.scenes" in GRAPH["localscore.lengthgen.evaluate.locality"]
    assert "localscore.metrics" in GRAPH["localscore.lengthgen.evaluate.locality"]        # inside a function
    assert "localscore.compose" in GRAPH["localscore.lengthgen.recipes"]                  # `from .. import compose`
    assert "localscore.lengthgen" in GRAPH["localscore.cli"]
    assert "localscore.nn.unet" in GRAPH["localscore.nn"]


MOVED = [
    ("localscore.experiments", "ExperimentConfig", "localscore.lengthgen"),
    ("localscore.experiments", "load_model", "localscore.lengthgen"),
    ("localscore.experiments", "sampler", "localscore.lengthgen"),
    ("localscore.experiments", "build_denoiser", "localscore.nn.build_denoiser"),
    ("localscore.experiments", "model_from_checkpoint", "localscore.lengthgen.load_model"),
    ("localscore.experiments", "measure_locality", "localscore.lengthgen.locality_profile"),
    ("localscore.data", "SceneConfig", "localscore.lengthgen.data"),
    ("localscore.data.scenes", "render_scene", "localscore.lengthgen.data.scenes"),
    ("localscore.evaluate", "locality_profile", "localscore.lengthgen.evaluate"),
    ("localscore.evaluate.metrics", "EvaluationResult", "localscore.lengthgen.evaluate.metrics"),
    ("localscore.train", "RunConfig", "localscore.lengthgen.runs"),
    ("localscore.train.run", "run_training", "localscore.lengthgen.runs"),
]


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_moved_names_still_import_and_warn(old: str, name: str, new: str) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} is deprecated .* use {new}") as record:
        value = getattr(module, name)
    assert record[0].filename == __file__          # attributed to the caller, not to the shim
    assert callable(value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            module.no_such_name  # noqa: B018


def test_deprecated_aliases_behave_as_in_0_1_0() -> None:
    from localscore.lengthgen import load_model, locality_profile
    from localscore.nn import LocalNetConfig

    with pytest.warns(DeprecationWarning):
        from localscore.experiments import build_denoiser, measure_locality
    D = build_denoiser("local", {"width": 8, "depth": 1})
    assert type(D).__name__ == "LocalConditionalDenoiser" and D.config == LocalNetConfig(width=8, depth=1)
    from localscore import LocalScoreError

    with pytest.raises(LocalScoreError, match="does not match"):
        build_denoiser("unet", LocalNetConfig())
    m = load_model("local-32")
    old = measure_locality(m, sigmas=[1.0], count=2, images=1, pixel_rows=2)
    new = locality_profile(m.denoiser, m.scene, sigmas=[1.0], count=2, n_images=1, pixel_rows=2)
    assert old["conditional_index"] == list(new.index) and old["radius"] == new.region_radius
    assert old["summary"]["pixel_radius_90"] == new.mean_pixel_radius
