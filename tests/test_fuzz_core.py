"""Fuzz tests of the core library's public entries (issue 18): bad input raises a LocalScoreError that names the
problem, never a raw torch error, an IndexError, a silent NaN or a hang; legitimate variants of good input
(non-contiguous, channels-last, requires_grad, float64) give the reference result.

Sizes are small and every huge-size case must fail from metadata, before allocating. The whole file runs in a
few seconds under the derandomized "ci" profile (tests/conftest.py); ``docs/reliability.md`` gives the table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError, bind
from localscore import compose as C
from localscore import denoisers as DN
from localscore import masks as M
from localscore import metrics as MT
from localscore import sampling as SP
from localscore import schedules as S
from localscore.adapters.k_diffusion import from_k_diffusion
from localscore.nn import LocalConditionalDenoiser, localize

FAST = settings(max_examples=12, deadline=None)


def _net() -> LocalConditionalDenoiser:
    torch.manual_seed(0)
    return LocalConditionalDenoiser(width=8, attr_dim=0)


NET = _net()


def _x(dtype: torch.dtype = torch.float32, device: str = "cpu", B: int = 1, H: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, H, H, generator=g).to(dtype).to(device)


def _cond(B: int = 1, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Conditions:
    return Conditions.from_lists([[(3.0, 3.0)]] * B).to(device=device, dtype=dtype)


def _grid(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return S.karras_sigmas(3, 0.1, 5.0).to(dtype)


class _Bound(torch.nn.Module):
    """``x -> net(x, 1, c)``: a map of images for :func:`~localscore.metrics.jacobian`."""

    def __init__(self, net: torch.nn.Module, c: Conditions) -> None:
        super().__init__()
        self.inner, self.c = net, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x, 1.0, self.c)


# Every public entry that takes images and a model: (name, call(x, cond) with a float32 network).
ENTRIES: dict[str, Callable[[torch.Tensor, Conditions], Any]] = {
    "LocalConditionalDenoiser": lambda x, c: NET(x, 1.0, c),
    "bind": lambda x, c: bind(NET, c)(x, 1.0),
    "localize": lambda x, c: localize(NET, M.DiscRule(2.0))(x, 1.0, c),
    "sample_euler": lambda x, c: SP.sample_euler(NET, x, _grid(), c),
    "sample_heun": lambda x, c: SP.sample_heun(NET, x, _grid(), c),
    "sample_dpmpp_2m": lambda x, c: SP.sample_dpmpp_2m(NET, x, _grid(), c),
    "sample_ddim": lambda x, c: SP.sample_ddim(NET, x, _grid(), c),
    "projective_from": lambda x, c: C.projective_from(NET, c)(x, 1.0),
    "masked_from": lambda x, c: C.masked_from(NET, c, M.DiscRule(2.0))(x, 1.0),
    "masked": lambda x, c: C.masked(NET, [bind(NET, c)], M.DiscRule(2.0), mask_cond=c)(x, 1.0),
    "residual": lambda x, c: C.residual(NET, x, 1.0, c),
    "jacobian": lambda x, c: MT.jacobian(_Bound(NET, c), x),  # a map of x; its parameters are found via `inner`
    "pixel_locality": lambda x, c: MT.pixel_locality(NET, x, 1.0, c),
    "conditional_locality": lambda x, c: MT.conditional_locality(NET, x, 1.0, c),
    "ablation_influence": lambda x, c: MT.ablation_influence(NET, x, 1.0, c),
    "gradient_influence": lambda x, c: MT.gradient_influence(NET, x, 1.0, c),
}

# ------------------------------------------------------------------------------------ dtypes and devices
@FAST
@given(entry=st.sampled_from(sorted(ENTRIES)), dtype=st.sampled_from([torch.float64, torch.float16, torch.bfloat16]))
def test_a_dtype_mismatch_is_caught_at_the_entry(entry: str, dtype: torch.dtype) -> None:
    x = _x(dtype) * 3
    with pytest.raises(LocalScoreError, match=rf"torch.float32 parameters but `x` is {re.escape(str(dtype))}") as e:
        ENTRIES[entry](x, _cond(dtype=dtype))
    assert ".to(" in str(e.value)  # the fix: `net.to(...)` or `x.to(...)`


@FAST
@given(entry=st.sampled_from(sorted(ENTRIES)))
def test_a_meta_input_is_a_clear_error(entry: str) -> None:
    with pytest.raises(LocalScoreError, match="meta"):
        ENTRIES[entry](_x(device="meta"), _cond(device="meta"))


def test_a_device_mismatch_names_both_devices() -> None:
    net = _net().to("meta")
    with pytest.raises(LocalScoreError, match=r"parameters on meta but `x` is on cpu"):
        net(_x(), 1.0, _cond())
    with pytest.raises(LocalScoreError, match=r"parameters on meta but `x` is on cpu"):
        SP.sample_euler(net, _x(), _grid(), None)


def test_autocast_allows_a_lower_precision_input() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = NET(_x(torch.bfloat16), 1.0, _cond())
    assert out.shape == (1, 3, 8, 8)


# ------------------------------------------------------------------------------------ non-finite values
@FAST
@given(entry=st.sampled_from(sorted(ENTRIES)), value=st.sampled_from([math.nan, math.inf, -math.inf]),
       where=st.tuples(st.integers(0, 2), st.integers(0, 7), st.integers(0, 7)))
def test_non_finite_images_raise(entry: str, value: float, where: tuple[int, int, int]) -> None:
    x = _x()
    x[(0, *where)] = value
    with pytest.raises(LocalScoreError, match=r"NaN|infinite|non-finite"):
        ENTRIES[entry](x, _cond())


ADAPTERS: dict[str, Callable[[Callable[..., torch.Tensor]], torch.nn.Module]] = {
    "EpsilonDenoiser": lambda m: DN.EpsilonDenoiser(m),
    "VDenoiser": lambda m: DN.VDenoiser(m),
    "X0Denoiser": lambda m: DN.X0Denoiser(m),
    "ScoreDenoiser": lambda m: DN.ScoreDenoiser(m),
    "EDMPreconditioner": lambda m: DN.EDMPreconditioner(m),
    "DiscreteDDPMDenoiser": lambda m: DN.DiscreteDDPMDenoiser(m, S.ddpm_alphas_cumprod(1000)),
    "from_k_diffusion": lambda m: from_k_diffusion(m),
}


@FAST
@given(name=st.sampled_from(sorted(ADAPTERS)), value=st.sampled_from([math.nan, math.inf]),
       pixel=st.tuples(st.integers(0, 2), st.integers(0, 7), st.integers(0, 7)))
def test_an_adapter_raises_for_its_models_non_finite_output(name: str, value: float,
                                                            pixel: tuple[int, int, int]) -> None:
    def model(x: torch.Tensor, noise: torch.Tensor, cond: Any = None) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[(0, *pixel)] = value
        return out

    D = ADAPTERS[name](model)
    with pytest.raises(LocalScoreError, match="non-finite"):  # called from user code: raised at the adapter
        D(_x(), 1.0)
    with pytest.raises(LocalScoreError, match=r"(?s)non-finite.*Found at step 0"):  # in a sampler: at its end
        SP.sample_euler(D, _x() * 5, _grid(), None)


# ------------------------------------------------------------------------------------ huge sizes: refused early
@FAST
@given(fn=st.sampled_from(["disc_masks", "box_masks", "gaussian_masks", "distances", "nearest_conditioner",
                           "voronoi_masks"]),
       h=st.integers(10**5, 10**12), w=st.integers(10**4, 10**12))
def test_huge_mask_sizes_are_refused_before_allocating(fn: str, h: int, w: int) -> None:
    f = getattr(M, fn)
    args: tuple[Any, ...] = (_cond(), (h, w)) + ((2.0,) if fn.endswith("_masks") and fn != "voronoi_masks" else ())
    with pytest.raises(LocalScoreError, match=r"MAX_ELEMENTS"):
        f(*args)


def test_huge_pixel_grid_and_condition_sets_are_refused() -> None:
    with pytest.raises(LocalScoreError, match="MAX_ELEMENTS"):
        M.pixel_grid((10**9, 10**9))
    with pytest.raises(LocalScoreError, match=r"Conditions.pad_to: .*MAX_ELEMENTS"):
        _cond().pad_to(10**12)
    with pytest.raises(LocalScoreError, match=r"Conditions.repeat_interleave: .*MAX_ELEMENTS"):
        _cond().repeat_interleave(10**12)
    with pytest.raises(LocalScoreError, match=r"Conditions.empty: .*MAX_ELEMENTS"):
        Conditions.empty(10**12)


def test_the_element_limit_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(M, "MAX_ELEMENTS", 10)
    with pytest.raises(LocalScoreError, match=r"localscore.masks.MAX_ELEMENTS = 10"):
        M.disc_masks(_cond(), (4, 4), 1.0)
    monkeypatch.setattr(M, "MAX_ELEMENTS", 16)
    assert M.disc_masks(_cond(), (4, 4), 1.0).shape == (1, 1, 4, 4)


@FAST
@given(fn=st.sampled_from(["karras_sigmas", "loguniform_sigmas", "vp_linear_sigmas", "vp_cosine_sigmas"]),
       n=st.integers(S.MAX_STEPS + 1, 10**12))
def test_huge_grids_are_refused(fn: str, n: int) -> None:
    with pytest.raises(LocalScoreError, match="MAX_STEPS"):
        getattr(S, fn)(n)


def test_huge_ddpm_tables_are_refused() -> None:
    with pytest.raises(LocalScoreError, match=r"num_timesteps.*MAX_STEPS"):
        S.ddpm_alphas_cumprod(10**10)


@FAST
@given(R=st.integers(10**3, 10**9))
def test_a_huge_jacobian_radius_is_refused_before_allocating(R: int) -> None:
    with pytest.raises(LocalScoreError, match=r"max_memory.*before allocating"):
        MT.jacobian(lambda z: 2 * z, _x(), method="colored", radius=R)


# ------------------------------------------------------------------------------------ no silent results
@FAST
@given(sigma_max=st.floats(1.0, 1e308), rho=st.floats(0.01, 1e7),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_karras_grids_are_finite_or_refused(sigma_max: float, rho: float, dtype: torch.dtype) -> None:
    try:
        grid = S.karras_sigmas(10, 1e-6, sigma_max, rho=rho, dtype=dtype)
    except LocalScoreError as e:
        assert "overflow" in str(e)
        return
    assert bool(torch.isfinite(grid).all())


def test_the_issues_overflowing_grids_raise() -> None:
    with pytest.raises(LocalScoreError, match=r"karras_sigmas: the grid.*overflow"):
        S.karras_sigmas(10, 1e-6, 1e300, rho=1e6)
    with pytest.raises(LocalScoreError, match=r"loguniform_sigmas: the grid.*overflow"):
        S.loguniform_sigmas(10, 1e6, 1e300)
    with pytest.raises(LocalScoreError, match=r"vp_linear_t_to_sigma: sigma\(t\) overflows .* for t above"):
        S.vp_linear_t_to_sigma(1e6)


@FAST
@given(t=st.floats(0.0, 1e6), as_tensor=st.booleans())
def test_vp_linear_sigma_is_finite_or_refused(t: float, as_tensor: bool) -> None:
    arg: Any = torch.tensor([t], dtype=torch.float32) if as_tensor else t
    try:
        out = S.vp_linear_t_to_sigma(arg)
    except LocalScoreError as e:
        assert "overflows" in str(e)
        return
    assert math.isfinite(float(out if not as_tensor else out[0]))


@FAST
@given(flag=st.one_of(st.text(max_size=3), st.integers(), st.none(), st.floats(allow_nan=False)),
       cls=st.sampled_from(["EpsilonDenoiser", "X0Denoiser"]))
def test_non_bool_flags_raise(flag: Any, cls: str) -> None:
    with pytest.raises(LocalScoreError, match=r"`vp_input` is .* expected True or False"):
        getattr(DN, cls)(lambda x, s, c=None: x, vp_input=flag)


@FAST
@given(value=st.sampled_from([math.inf, math.nan, -1.0, 0.0, "1", None, True, [0.5]]),
       cls=st.sampled_from(["EDMPreconditioner", "VDenoiser"]))
def test_bad_sigma_data_raises(value: Any, cls: str) -> None:
    with pytest.raises(LocalScoreError, match=r"`sigma_data` is .* expected a finite float > 0"):
        getattr(DN, cls)(lambda x, s, c=None: x, sigma_data=value)


@FAST
@given(radius=st.one_of(st.text(max_size=3), st.floats(), st.integers(max_value=-1), st.just(True)))
def test_a_bad_radius_to_pixel_locality_raises(radius: Any) -> None:
    with pytest.raises(LocalScoreError, match="pixel_locality: `radius`"):
        MT.pixel_locality(NET, _x(), 1.0, method="colored", radius=radius)


@FAST
@given(case=st.sampled_from(["empty", "padding", "off_row", "off_col"]), far=st.floats(8.6, 1e6))
def test_locality_metrics_refuse_what_they_cannot_measure(case: str, far: float) -> None:
    if case == "empty":
        c, msg = Conditions.empty(1), "no valid conditioner"
    elif case == "padding":
        c, msg = Conditions(torch.zeros(1, 2, 2), valid=torch.zeros(1, 2, dtype=torch.bool)), "no valid conditioner"
    else:
        p = (far, 3.0) if case == "off_row" else (3.0, -far)
        c, msg = Conditions.from_lists([[(3.0, 3.0), p]]), "object 1 of image 0 is off the image"
    with pytest.raises(LocalScoreError, match=msg):
        MT.conditional_locality(NET, _x(), 1.0, c)
    if case in ("empty", "padding"):
        with pytest.raises(LocalScoreError, match="locality_index: no valid conditioner"):
            MT.locality_index(torch.zeros(1, c.num_slots, 8, 8), 2.0, cond=c)


# ------------------------------------------------------------------------------------ fuzzed arguments
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10**12), st.sampled_from([10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4), st.lists(st.integers(-3, 20), max_size=3),
    st.builds(lambda shape, v: torch.full(shape, v), st.lists(st.integers(0, 3), max_size=4).map(tuple),
              st.floats(-1e3, 1e3) | st.just(math.nan)),
)


@settings(max_examples=60, deadline=None)
@given(fn=st.sampled_from(["karras_sigmas", "loguniform_sigmas", "vp_linear_sigmas", "vp_cosine_sigmas",
                           "vp_linear_t_to_sigma", "vp_linear_sigma_to_t", "vp_cosine_t_to_sigma",
                           "vp_cosine_sigma_to_t", "ddpm_alphas_cumprod", "alphas_cumprod_to_sigmas",
                           "sigmas_to_alphas_cumprod"]),
       arg=_VALUES)
def test_fuzzed_schedule_arguments_work_or_raise_clearly(fn: str, arg: Any) -> None:
    try:
        out = getattr(S, fn)(arg)
    except LocalScoreError:
        return
    values = out if isinstance(out, torch.Tensor) else torch.tensor(float(out))
    assert bool(torch.isfinite(values).all()), f"{fn}({arg!r}) returned non-finite values"


@settings(max_examples=40, deadline=None)
@given(fn=st.sampled_from(["disc_masks", "box_masks", "gaussian_masks", "distances", "nearest_conditioner",
                           "voronoi_masks", "pixel_grid"]),
       size=st.one_of(_VALUES, st.tuples(st.integers(-2, 12), st.integers(-2, 12))), radius=_VALUES)
def test_fuzzed_mask_arguments_work_or_raise_clearly(fn: str, size: Any, radius: Any) -> None:
    f = getattr(M, fn)
    try:
        if fn == "pixel_grid":
            f(size)
        elif fn in ("distances", "nearest_conditioner", "voronoi_masks"):
            f(_cond(), size)
        else:
            f(_cond(), size, radius)
    except LocalScoreError:
        return


@settings(max_examples=40, deadline=None)
@given(method=st.sampled_from(["pad_to", "repeat_interleave", "select", "drop", "ablate", "__getitem__"]),
       arg=_VALUES)
def test_fuzzed_condition_methods_work_or_raise_clearly(method: str, arg: Any) -> None:
    c = Conditions.from_lists([[(1.0, 2.0), (3.0, 4.0)], [(5.0, 6.0)]])
    try:
        getattr(c, method)(arg)
    except LocalScoreError:
        return


# ------------------------------------------------------------------------------------ legitimate variants
def _variants(x: torch.Tensor) -> dict[str, torch.Tensor]:
    wide = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype)
    wide[..., ::2] = x
    return {
        "non_contiguous": wide[..., ::2],
        "channels_last": x.to(memory_format=torch.channels_last),
        "requires_grad": x.clone().requires_grad_(),
        "float64": x.double(),
    }


REFERENCE_CALLS: dict[str, Callable[[torch.nn.Module, torch.Tensor, Conditions], torch.Tensor]] = {
    "network": lambda net, x, c: net(x, 0.7, c),
    "sample_heun": lambda net, x, c: SP.sample_heun(net, 5 * x, S.karras_sigmas(3, 0.1, 5.0, dtype=x.dtype), c),
    "projective_from": lambda net, x, c: C.projective_from(net, c)(x, 0.7),
    "masked_from": lambda net, x, c: C.masked_from(net, c, M.DiscRule(2.0))(x, 0.7),
    "jacobian_row_sum": lambda net, x, c: MT.jacobian(_Bound(net, c), x[..., :4, :4]).sum(dim=(1, 2, 3)),
}


@FAST
@given(call=st.sampled_from(sorted(REFERENCE_CALLS)),
       variant=st.sampled_from(["non_contiguous", "channels_last", "requires_grad", "float64"]),
       seed=st.integers(0, 3))
def test_legitimate_variants_give_the_reference_result(call: str, variant: str, seed: int) -> None:
    x = _x(seed=seed)
    ref = REFERENCE_CALLS[call](NET, x, _cond()).detach().double()
    v = _variants(x)[variant]
    net = NET.double() if variant == "float64" else NET
    try:
        out = REFERENCE_CALLS[call](net, v, _cond(dtype=v.dtype)).detach().double()
    finally:
        NET.float()
    tol = 1e-4 if variant == "float64" else 1e-5
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


def test_mixed_dtypes_that_are_cast_by_design() -> None:
    """A float64 conditioner set with float32 images, a float64 grid, float64 attributes of a float32 set."""
    x = _x() * 5
    ref = SP.sample_heun(NET, x, _grid(), _cond())
    torch.testing.assert_close(SP.sample_heun(NET, x, _grid(), _cond(dtype=torch.float64)), ref)
    torch.testing.assert_close(SP.sample_heun(NET, x, _grid(torch.float64), _cond()), ref)
    c = Conditions(torch.zeros(1, 1, 2), torch.ones(1, 1, 3, dtype=torch.float64))
    assert c.attr is not None and c.attr.dtype == torch.float32 == c.dtype
