"""The public API page is current, every name on it resolves, and no object has two public names.

``tools/public_api.py`` walks the installed package; see its docstring for what public, canonical and alias
mean. Regenerate the page with ``python tools/public_api.py --markdown docs/api/index.md``.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "public_api.py"
PAGE = ROOT / "docs" / "api" / "index.md"

# Alias groups that are deliberate: {canonical name: the other names}. Keep it empty; an entry needs a reason.
ALLOWED_ALIASES: dict[str, set[str]] = {}

# The 0.1.0 aliases removed in 0.2: {old dotted name: the canonical name}. Each still resolves until 0.3, with a
# DeprecationWarning that names the canonical one.
REMOVED_ALIASES = {
    **{f"localscore.nn.{n}": f"localscore.masks.{n}" for n in (
        "BoxRule", "DiscRule", "GaussianRule", "MaskRule", "box_masks", "disc_masks", "gaussian_masks",
        "nearest_conditioner", "union", "voronoi_masks")},
    "localscore.metrics.composition_residual": "localscore.compose.residual",
    "localscore.metrics.CompositionResidual": "localscore.compose.CompositionResidual",
    "localscore.adapters.diffusers.math_attention": "localscore.metrics.math_attention",
    "localscore.adapters.diffusers.features.math_attention": "localscore.metrics.math_attention",
}

def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("public_api_tool", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return _load_tool()


@pytest.fixture(scope="module")
def api(tool: ModuleType) -> Any:
    result = tool.walk()
    if result.skipped:
        pytest.skip(f"optional modules skipped: {result.skipped}")
    return result


def test_walk_is_clean(api: Any) -> None:
    assert api.entries, "the walk found no public objects"
    assert api.unresolved == [], "names in __all__ that do not resolve"
    assert api.no_all == [], "public modules without __all__"
    assert api.warnings == [], "warnings raised while importing the public modules"
    assert "localscore.experiments" in api.shims and "localscore.data" in api.shims
    assert not any(name == shim or name.startswith(shim + ".") for name in api.modules for shim in api.shims)


def test_page_is_current(tool: ModuleType, api: Any, capsys: pytest.CaptureFixture[str]) -> None:
    page = tool.render(api)
    assert PAGE.read_text(encoding="utf-8") == page, (
        "docs/api/index.md is not current: run python tools/public_api.py --markdown docs/api/index.md")
    assert tool.main(["--check", str(PAGE)]) == 0, capsys.readouterr().err


def test_check_fails_on_a_modified_copy(tool: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = PAGE.read_text(encoding="utf-8")
    for name, changed in [("edited.md", text.replace("## `localscore.masks`", "## `localscore.maskz`", 1)),
                          ("truncated.md", text[: len(text) // 2]), ("extra.md", text + "\n")]:
        assert changed != text
        copy = tmp_path / name
        copy.write_text(changed, encoding="utf-8")
        assert tool.main(["--check", str(copy)]) == 1, name
        assert "is not current" in capsys.readouterr().err
    assert tool.main(["--check", str(tmp_path / "missing.md")]) == 1


def _resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_every_listed_name_resolves(api: Any) -> None:
    text = PAGE.read_text(encoding="utf-8")
    listed = set()
    for line in text.splitlines():
        if line.startswith("## ") or line.startswith("- `localscore"):
            # the canonical name, the "also" names and section headings; not the code spans of summaries
            head, _, also = line.partition(" Also: ")
            listed.update(re.findall(r"`(localscore(?:\.\w+)*)`", head.split(" (", 1)[0]))
            listed.update(re.findall(r"`(localscore(?:\.\w+)*)`", also))
    expected = {name for entry in api.entries for name in entry.names} | set(api.modules)
    assert listed == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a listed name must not be a deprecated one
        for name in sorted(listed):
            _resolve(name)


def test_alias_rule(tool: ModuleType) -> None:
    assert not tool.is_alias(["a.X", "a.nn.X", "a.nn.local.X"])  # packages re-exporting their submodules' names
    assert tool.is_alias(["a.masks.X", "a.nn.X"])  # the same name from unrelated modules
    assert tool.is_alias(["a.m.f", "a.m.g"])  # two names in one module
    assert tool.is_alias(["a.compose.residual", "a.metrics.composition_residual"])


def test_no_aliases(api: Any) -> None:
    unexpected = {e.canonical: sorted(set(e.names) - {e.canonical}) for e in api.aliases
                  if set(e.names) - {e.canonical} != ALLOWED_ALIASES.get(e.canonical)}
    assert unexpected == {}


def _attribute(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("old", sorted(REMOVED_ALIASES))
def test_removed_aliases_warn_and_resolve(old: str) -> None:
    new = REMOVED_ALIASES[old]
    if old.startswith("localscore.adapters.diffusers"):
        pytest.importorskip("diffusers")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        canonical = _attribute(new)  # the canonical name never warns
    with pytest.warns(DeprecationWarning, match=re.escape(f"{old} is deprecated") + ".*" + re.escape(new)):
        value = _attribute(old)
    assert value is canonical
    module, _, attr = old.rpartition(".")
    assert attr not in importlib.import_module(module).__all__


def test_removed_aliases_are_not_listed(api: Any) -> None:
    listed = {name for e in api.entries for name in e.names}
    assert listed, "positive control: the walk lists names"
    assert "localscore.masks.DiscRule" in listed
    assert not listed & set(REMOVED_ALIASES)
