"""No host syncs inside the sampling loop: values are checked at the boundary, once per call.

Every read of a tensor's value on the host (``.item()``, ``bool(t)``, ``float(t)``, ``if t:``) dispatches
``aten::_local_scalar_dense``; ``.tolist()`` reads directly. On a GPU each waits for the device. The counters
below see both; a sampler's steady state (the difference between runs of ``2 N`` and ``N`` steps) must read
nothing back, for a local network sampled jointly and for a projective composition of it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from localscore import Conditions, LocalConditionalDenoiser, LocalScoreError
from localscore.compose import masked_from, projective, projective_from
from localscore.denoisers import EDMPreconditioner, bind
from localscore.masks import DiscRule
from localscore.sampling import (
    sample_deis,
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lms,
    sample_unipc,
)
from localscore.schedules import karras_sigmas

pytestmark = pytest.mark.filterwarnings("ignore")


class _Reads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


class _ToList(TorchFunctionMode):
    def __init__(self, reads: _Reads) -> None:
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        if func is torch.Tensor.tolist:
            self.reads.count += 1
        return func(*args, **(kwargs or {}))


def _reads(fn: Any) -> int:
    with _Reads() as reads, _ToList(reads):
        fn()
    return reads.count


def _per_step(sampler: Any, denoiser: Any, x: torch.Tensor, cond: Conditions | None, n: int = 2) -> tuple[float, int]:
    """``(reads per step, reads per call)`` in steady state: runs of ``n`` and ``2 n`` steps after a warm-up."""
    def run(steps: int) -> int:
        sig = karras_sigmas(steps, 0.05, 4.0)
        return _reads(lambda: sampler(denoiser, x, sig, cond))

    run(n)
    c1, c2 = run(n), run(2 * n)
    per_step = (c2 - c1) / n
    return per_step, int(c1 - per_step * n)


def _net() -> LocalConditionalDenoiser:
    torch.manual_seed(0)
    return LocalConditionalDenoiser(width=8, depth=1, heads=2, attr_dim=0, cond_radius=1.5).eval()


COND = Conditions.from_lists([[(1.0, 2.0), (6.0, 9.0), (10.0, 3.0)]])
X = 3.0 * torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def _churned(d: Any, x: torch.Tensor, s: torch.Tensor, c: Any = None) -> torch.Tensor:
    return sample_euler(d, x, s, c, s_churn=5.0, generator=torch.Generator().manual_seed(0))


def _sde_heun(d: Any, x: torch.Tensor, s: torch.Tensor, c: Any = None) -> torch.Tensor:
    return sample_dpmpp_2m_sde(d, x, s, c, solver_type="heun", generator=torch.Generator().manual_seed(0))


SAMPLERS = [sample_euler, sample_heun, _churned, sample_euler_ancestral, sample_dpm_2, sample_dpm_2_ancestral,
            sample_dpmpp_2s_ancestral, sample_dpmpp_2m, sample_dpmpp_2m_sde, _sde_heun, sample_dpmpp_3m_sde,
            sample_lms, sample_deis, sample_unipc]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=[getattr(s, "__name__", "?").lstrip("_") for s in SAMPLERS])
def test_no_reads_per_step_local_net_sampled_jointly(sampler: Any) -> None:
    with torch.no_grad():
        per_step, per_call = _per_step(sampler, _net(), X, COND)
    assert per_step == 0
    assert per_call <= 2  # the grid and x, read once at the start; the recorded checks, once at the end


@pytest.mark.parametrize(("strategy", "sampler"), [(s, sample_euler) for s in ("auto", "sequential", "batched", "crop")]
                         + [("batched", sample_dpmpp_2m), ("crop", sample_unipc), ("auto", sample_dpmpp_3m_sde)])
def test_no_reads_per_step_projective_composition(strategy: str, sampler: Any) -> None:
    comp = projective_from(_net(), COND, strategy=strategy)
    with torch.no_grad():
        per_step, per_call = _per_step(sampler, comp, X, None)
    assert per_step == 0
    assert per_call <= 2


def test_no_reads_per_step_with_gradients() -> None:
    per_step, _ = _per_step(sample_euler, projective_from(_net(), COND), X.clone().requires_grad_(True), None)
    assert per_step == 0


def test_the_counter_sees_a_read_in_the_loop() -> None:
    """The check can fail: a denoiser that reads a value back costs one read per step."""
    net = _net()

    def reading(x: torch.Tensor, sigma: torch.Tensor, cond: Conditions | None = None) -> torch.Tensor:
        if bool(sigma.max() > 100.0):  # a host read on every call
            raise AssertionError
        return net(x, sigma, cond)

    with torch.no_grad():
        per_step, _ = _per_step(sample_euler, reading, X, COND)
    assert per_step == 1


@pytest.mark.parametrize("strategy", ["auto", "sequential", "batched", "crop"])
def test_masked_composition_with_fixed_masks_reads_nothing_per_step(strategy: str) -> None:
    """A rule of a fixed size gives the same masks at every sigma: kept from the first call, like the activity."""
    with torch.no_grad():
        per_step, per_call = _per_step(sample_euler, masked_from(_net(), COND, DiscRule(2.0), strategy=strategy), X,
                                       None)
    assert per_step == 0
    assert per_call <= 2


def test_masked_composition_with_sigma_dependent_masks_reads_once_per_step() -> None:
    """Masks that depend on sigma decide per call which components act where: one read, documented."""
    with torch.no_grad():
        per_step, _ = _per_step(sample_euler, masked_from(_net(), COND, DiscRule(lambda s: 1.0 + s, bound=3.0),
                                                          strategy="sequential"), X, None)
    assert per_step == 1


def test_a_rule_that_declares_no_fixed_size_is_recomputed_every_step() -> None:
    """The same disc masks through a user rule that does not declare ``fixed_size``: read once per step."""
    inner = DiscRule(2.0)
    assert inner.fixed_size and not DiscRule(lambda s: 2.0 + 0 * s).fixed_size
    assert not DiscRule(torch.tensor(2.0)).fixed_size

    class Plain:
        def __call__(self, cond: Conditions, size: tuple[int, int], sigma: Any = None) -> torch.Tensor:
            return inner(cond, size, sigma)

        def support_radius(self, sigma: Any = None) -> float | None:
            return inner.support_radius(sigma)

    with torch.no_grad():
        per_step, _ = _per_step(sample_euler, masked_from(_net(), COND, Plain(), strategy="sequential"), X, None)
    assert per_step == 1


def test_fixed_masks_are_kept_per_image_size_and_match_fresh_ones() -> None:
    """The kept masks are those of the image size of the call: a composition called at two sizes gives what
    two fresh compositions give, bit for bit (an object outside the smaller canvas acts on the larger only)."""
    net = _net()
    cond = Conditions.from_lists([[(1.0, 2.0), (13.0, 13.0)]])
    kept = masked_from(net, cond, DiscRule(2.0))
    sigma = torch.tensor([0.7])
    with torch.no_grad():
        for size in (8, 16, 8):
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
            fresh = masked_from(net, cond, DiscRule(2.0))(x, sigma)
            torch.testing.assert_close(kept(x, sigma), fresh, atol=0, rtol=0)
    assert kept.plan(torch.zeros(1, 3, 16, 16), 1.0) in ("sequential", "crop", "batched")


# ------------------------------------------------------------------------------------- errors, now at the end
def test_non_finite_output_raises_at_the_end_naming_the_first_bad_step() -> None:
    seen: list[int] = []

    def breaks_at_2(x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        seen.append(len(seen))
        return x * (float("nan") if len(seen) >= 3 else 0.5)

    with pytest.raises(LocalScoreError, match=r"returned non-finite values[\s\S]*step 2 \(sigma = "):
        sample_euler(breaks_at_2, torch.ones(1, 1, 2, 2), karras_sigmas(5, 0.1, 2.0))
    assert len(seen) == 5  # the loop ran to its end, then raised once


def test_heun_names_the_step_of_its_second_evaluation() -> None:
    calls: list[float] = []

    def bad_below_1(x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        calls.append(float(sigma[0]))
        return x if float(sigma[0]) > 1.0 else x * float("inf")

    sig = torch.tensor([4.0, 2.0, 0.5, 0.25, 0.0])
    with pytest.raises(LocalScoreError, match=r"step 1 \(sigma = 2 -> 0.5\)"):
        sample_heun(bad_below_1, torch.ones(1, 1, 1, 1), sig)


def test_a_component_is_named_inside_a_sampler() -> None:
    good = lambda x, s, c=None: torch.zeros_like(x)  # noqa: E731
    bad = lambda x, s, c=None: x / 0  # noqa: E731
    comp = projective(good, [good, bad])
    with pytest.raises(LocalScoreError, match=r"`components\[1\]` returned non-finite values[\s\S]*step 0"):
        sample_euler(comp, torch.ones(1, 1, 2, 2), torch.tensor([2.0, 1.0, 0.0]))
    with pytest.raises(LocalScoreError, match=r"`components\[1\]` returned non-finite values"):
        comp(torch.ones(1, 1, 2, 2), 1.0)  # a direct call raises too, at its end


def test_bad_values_passed_inside_a_sampler_still_raise() -> None:
    """A user wrapper that corrupts sigma on its way to a checked network is caught (at the end of the call)."""
    net = EDMPreconditioner(lambda x, t, c: torch.zeros_like(x))
    wrapper = lambda x, s, c=None: net(x, s - 10.0)  # noqa: E731  (negative noise levels)
    with pytest.raises(LocalScoreError, match=r"EDMPreconditioner: argument `sigma` holds invalid noise levels"):
        sample_euler(wrapper, torch.ones(1, 1, 2, 2), torch.tensor([2.0, 1.0, 0.0]))
    weights = lambda s: s * float("inf")  # noqa: E731
    comp = projective(bind(net, None), [bind(net, None)], [weights])
    with pytest.raises(LocalScoreError, match="non-finite"):
        sample_euler(comp, torch.ones(1, 1, 2, 2), torch.tensor([2.0, 1.0, 0.0]))


def test_callback_runs_outside_the_deferred_checks() -> None:
    """Library calls made from a callback check their inputs at once, as from any user code."""
    def callback(info: dict[str, Any]) -> None:
        EDMPreconditioner(lambda x, t, c: x)(info["x"], -1.0)

    with pytest.raises(LocalScoreError, match=r"invalid noise levels|expected a finite noise level"):
        sample_euler(lambda x, s, c=None: x, torch.ones(1, 1, 1, 1), torch.tensor([2.0, 1.0]), callback=callback)


# ------------------------------------------------------------------------------------- masks: same thresholds
