"""Reprs of objects holding tensors are summaries (shape, dtype, device, largest |value| and where), never
tensor dumps: result dataclasses, Conditions, and what Hypothesis prints for the testing strategies."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from localscore import Conditions
from localscore._repr import summarize, summary_repr, tensor_summary
from localscore.compose import CompositionResidual
from localscore.lengthgen.data.scenes import Scene
from localscore.metrics import BandedJacobian, JacobianProbes
from localscore.metrics.results import ConditionalLocality, FeatureOrthogonality, LocalityIndex, PixelLocality
from localscore.testing import strategies as lst

MAX_AT = re.compile(r"max\|x\|=([0-9.e+-]+) at \[([0-9, ]+)\]")


def _spike(*shape: int, at: tuple[int, ...], value: float = -7.25) -> torch.Tensor:
    """Small values with one large entry of magnitude |value| at ``at``."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(*shape, generator=g, dtype=torch.float64) - 0.5
    x[at] = value
    return x


def _assert_summary_only(text: str) -> None:
    """No tensor dump: no ``tensor(``, no torch elision ``...``, one line."""
    assert "tensor(" not in text and "..." not in text and "\n" not in text, text


# ----------------------------------------------------------------------------- the helper
def test_tensor_summary_of_a_64x64_tensor_is_one_short_line_with_shape_and_max() -> None:
    x = _spike(64, 64, at=(5, 40))
    text = tensor_summary(x)
    _assert_summary_only(text)
    assert len(text) < 80
    assert "[64, 64]" in text and "float64" in text and "cpu" in text
    m = MAX_AT.search(text)
    assert m is not None and float(m.group(1)) == 7.25 and m.group(2) == "5, 40", text


def test_tensor_summary_counts_nan_and_inf_and_locates_the_finite_max() -> None:
    x = torch.zeros(3, 4)
    x[0, 1], x[1, 2], x[2, 3] = float("nan"), float("-inf"), -3.0
    text = tensor_summary(x)
    assert "max|x|=3 at [2, 3]" in text and "1 nan" in text and "1 inf" in text, text
    assert tensor_summary(torch.zeros(0, 5)).endswith("empty>")
    assert "true=2 of 6" in tensor_summary(torch.tensor([[True, False, True], [False] * 3]))
    assert "value=0.5" in tensor_summary(torch.tensor(0.5))
    assert "max|x|=128 at [1]" in tensor_summary(torch.tensor([3, -128], dtype=torch.int8))


def test_summarize_recurses_into_containers_and_leaves_scalars_as_they_are() -> None:
    text = summarize({"a": _spike(64, 64, at=(1, 2)), "b": [_spike(3, at=(0,)), 2.5], "c": (1.0, 2.0)})
    _assert_summary_only(text)
    assert text.count("<Tensor") == 2 and "2.5" in text and "'c': (1.0, 2.0)" in text


def test_summary_repr_requires_a_dataclass() -> None:
    with pytest.raises(TypeError, match="dataclass"):
        summary_repr(int)


# ----------------------------------------------------------------------------- result classes
def _results() -> list[tuple[Any, dict[str, tuple[int, ...]]]]:
    """Each result class with 64x64-sized tensors, and for each tensor field where its max |value| is."""
    S, B, K = 2, 1, 3
    big = _spike(S, 127, 127, at=(1, 63, 70))
    pixel = PixelLocality(sigmas=torch.tensor([0.1, 2.0]), distances=torch.arange(64), profile=_spike(S, 64, at=(0, 9)),
                          quantiles=(0.5, 0.9), effective_radius=torch.arange(4).view(S, 2), heatmap=big,
                          metric="chebyshev", method="dense", target="denoiser")
    index = LocalityIndex(inside=_spike(B, 64, at=(0, 3)), on_others=_spike(B, 64, at=(0, 4)),
                          valid=torch.ones(B, 64, dtype=torch.bool), total=_spike(B, 64, at=(0, 5)), index=0.75,
                          on_others_mean=0.125)
    maps = _spike(S, B, K, 64, 64, at=(1, 0, 2, 10, 11))
    cond = ConditionalLocality(
        sigmas=torch.tensor([0.1, 2.0]), positions=_spike(B, K, 2, at=(0, 1, 0)),
        valid=torch.ones(B, K, dtype=torch.bool),
        influence={"ablation": maps}, influence_radius={"ablation": _spike(S, B, K, at=(0, 0, 1))},
        inside={"ablation": _spike(S, B, K, at=(1, 0, 0))}, on_others={"ablation": _spike(S, B, K, at=(0, 0, 2))},
        index={"ablation": _spike(S, at=(1,))}, on_others_mean={"ablation": _spike(S, at=(0,))}, quantile=0.9,
        regions="given", metric="chebyshev")
    feat = FeatureOrthogonality(cosine=_spike(64, 64, at=(2, 1)), norms=_spike(64, at=(7,)), max_abs_offdiag=0.25,
                                labels=None)
    return [
        (pixel, {"profile": (0, 9), "heatmap": (1, 63, 70)}),
        (index, {"inside": (0, 3), "on_others": (0, 4), "total": (0, 5)}),
        (cond, {"influence": (1, 0, 2, 10, 11), "positions": (0, 1, 0), "index": (1,)}),
        (feat, {"cosine": (2, 1), "norms": (7,)}),
    ]


@pytest.mark.parametrize("result, maxima", [pytest.param(*case, id=type(case[0]).__name__) for case in _results()])
def test_result_repr_summarises_every_tensor(result: Any, maxima: dict[str, tuple[int, ...]]) -> None:
    text = repr(result)
    _assert_summary_only(text)
    assert text.startswith(type(result).__name__ + "(")
    assert len(text) < 1500, len(text)
    for f in dataclasses.fields(result):
        assert f"{f.name}=" in text, f.name
        value = getattr(result, f.name)
        if isinstance(value, torch.Tensor):
            assert f"<Tensor {list(value.shape)} {str(value.dtype)[6:]} cpu" in text, f.name
        elif isinstance(value, (float, str, tuple)) or value is None:
            assert f"{f.name}={value!r}" in text, f.name
    for name, at in maxima.items():
        field_text = text.split(f"{name}=", 1)[1]
        m = MAX_AT.search(field_text)
        assert m is not None and float(m.group(1)) == 7.25, (name, field_text[:120])
        assert tuple(int(i) for i in m.group(2).split(", ")) == at, (name, field_text[:120])


def _other_results() -> list[Any]:
    """Result dataclasses defined outside localscore/metrics/results.py that hold tensors."""
    x = _spike(2, 64, 64, at=(1, 2, 3))
    residual = CompositionResidual(per_image=x[:, 0, 0].abs(), per_pixel=x, error_norm=x[:, 0, 0].abs(),
                                   signal_norm=x[:, 0, 1].abs())
    banded = BandedJacobian(values=_spike(1, 1, 64, 64, 1, 3, 3, at=(0, 0, 5, 6, 0, 1, 1)), radius=1)
    probes = JacobianProbes(pixels=torch.zeros(64, 2, dtype=torch.long), mass=_spike(64, 3, 3, at=(4, 1, 1)),
                            row_norms_sq=_spike(64, at=(4,)), n_probes=8)
    scene = Scene(pos=_spike(1, 2, 2, at=(0, 0, 0), value=7.25).abs().float(),
                  color=torch.zeros(1, 2, dtype=torch.long), shape=torch.zeros(1, 2, dtype=torch.long),
                  size=torch.zeros(1, 2, dtype=torch.long), valid=torch.ones(1, 2, dtype=torch.bool), resolution=64,
                  texture=_spike(1, 1, 64, 64, at=(0, 0, 1, 1)).float())
    return [residual, banded, probes, scene]



@pytest.mark.parametrize("result", [pytest.param(r, id=type(r).__name__) for r in _other_results()])
def test_other_result_reprs_summarise_every_tensor(result: Any) -> None:
    text = repr(result)
    _assert_summary_only(text)
    assert MAX_AT.search(text) is not None and "max|x|=7.25" in text, text


# ----------------------------------------------------------------------------- Conditions
def test_conditions_repr_lists_small_sets_by_slot_and_summarises_large_ones() -> None:
    pos = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [10.0, 2.5]]])
    small = repr(Conditions(pos, valid=torch.tensor([[True, False, True]])))
    assert small == ("Conditions(B=1, K=3, A=None, counts=[2], dtype=float32, device=cpu, "
                     "pos=[{0: (3, 4), 2: (10, 2.5)}])")
    large = Conditions(_spike(8, 64, 2, at=(3, 17, 1), value=63.0), attr=_spike(8, 64, 16, at=(0, 0, 0)))
    text = repr(large)
    _assert_summary_only(text)
    assert len(text) < 250 and "counts=[64, 64, 64, 64, 64, 64, 64, 64]" in text
    assert "pos=<Tensor [8, 64, 2] float64 cpu, max|x|=63 at [3, 17, 1]>" in text
    assert "attr=<Tensor [8, 64, 16] float64 cpu, max|x|=7.25 at [0, 0, 0]>" in text
    meta = repr(Conditions(torch.empty(2, 3, 2, device="meta")))
    assert meta == "Conditions(B=2, K=3, A=None, dtype=float32, device=meta)"


# ----------------------------------------------------------------------------- Hypothesis reports
def _failure_report(strategies: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Run a test that fails on its first example; return Hypothesis's report and the values it saw."""
    seen: dict[str, Any] = {}

    @settings(max_examples=1, derandomize=True, deadline=None, database=None, phases=[Phase.generate])
    @given(**strategies)
    def check(**values: Any) -> None:
        seen.update(values)
        raise AssertionError("planted failure")

    with pytest.raises(AssertionError, match="planted failure") as info:
        check()
    return "\n".join(getattr(info.value, "__notes__", [])), seen


def test_strategy_tensors_are_reported_as_the_call_that_rebuilds_them() -> None:
    report, seen = _failure_report({"x": lst.images(channels=3, height=64, width=64, dtype=torch.float64),
                                    "m": lst.masks(height=64, width=64), "s": lst.masks(height=64, width=64, soft=True),
                                    "c": lst.conditions(min_objects=2, max_objects=3)})
    assert "tensor(" not in report and "..." not in report, report
    assert len(report) < 1200, report
    assert type(seen["x"]) is torch.Tensor and type(seen["m"]) is torch.Tensor  # plain tensors, no wrapper
    # the reported calls rebuild exactly the values the test saw
    namespace = {"image_from_seed": lst.image_from_seed, "mask_from_seed": lst.mask_from_seed, "torch": torch}
    for name in ("x", "m", "s"):
        call = re.search(rf"{name}=((?:image|mask)_from_seed\(.*?\))", report, re.S)
        assert call is not None, report
        rebuilt = eval(re.sub(r"#[^\n]*", "", call.group(1)), namespace)  # drop Hypothesis's '# or any ...'
        assert torch.equal(rebuilt, seen[name]), name
    assert f"c={seen['c']!r}" in report and "pos=[{" in report


def test_result_objects_in_hypothesis_reports_are_summaries() -> None:
    result = _results()[2][0]
    report, _ = _failure_report({"r": st.just(result)})
    assert "r=ConditionalLocality(" in report and "<Tensor [2, 1, 3, 64, 64]" in report, report
    _assert_summary_only(report.replace("\n", " "))
