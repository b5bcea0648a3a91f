"""localscore.testing: assertions fail with the promised messages on non-local maps and pass on local ones;
strategies respect their contracts; the mixin and the pytest plugin work (dogfooded on reference models)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from localscore import Conditions, LocalScoreError
from localscore.empirical import PatchLocalEmpirical
from localscore.testing import (
    GlobalConvDenoiser,
    LocalConvDenoiser,
    LocalScoreTesterMixin,
    assert_conditionally_local,
    assert_permutation_invariant,
    assert_pixel_local,
    assert_projective,
)
from localscore.testing import strategies as lst

pytest_plugins = ["pytester"]


# ----------------------------------------------------------------------------- assertions
def test_assert_pixel_local_passes_and_fails_with_message() -> None:
    D = LocalConvDenoiser(2, 2, hidden=4)
    x = torch.randn(1, 2, 10, 10)
    assert_pixel_local(D, x, [0.1, 3.0], 2)
    assert_pixel_local(D, x, 1.0, 3)  # a larger radius is fine
    with pytest.raises(AssertionError) as info:
        assert_pixel_local(D, x, [0.1, 3.0], 1)
    msg = str(info.value)
    assert msg.startswith("not pixel-local at sigma = 0.1: output pixel (channel ")
    assert "at Chebyshev distance 2 > 1" in msg and "|dy/dx| = " in msg
    with pytest.raises(AssertionError, match="sigma = 2"):
        assert_pixel_local(GlobalConvDenoiser(1, 1, hidden=4), torch.randn(1, 1, 8, 8), 2.0, 1)


def test_assert_pixel_local_finite_perturbation_catches_flat_dependencies() -> None:
    # derivative zero everywhere (sign of a far pixel), so only the perturbation check can see it
    def D(x: torch.Tensor, s: torch.Tensor, c: object = None) -> torch.Tensor:
        return x + 0.5 * torch.sign(torch.roll(x, 4, dims=3)).detach()

    with pytest.raises(AssertionError, match="finite perturbation") as info:
        assert_pixel_local(D, torch.randn(1, 1, 9, 9), 1.0, 1, n_perturb=8, generator=torch.Generator().manual_seed(0))
    assert "Jacobian row at x is exactly zero beyond the radius, so the dependence is not differentiable" in str(
        info.value)


def test_assert_pixel_local_jacobian_failure_names_the_dependence_and_its_size() -> None:
    net = LocalConvDenoiser(1, 1, hidden=4)

    def D(x: torch.Tensor, s: torch.Tensor, c: object = None) -> torch.Tensor:
        return net(x, s) + 0.05 * torch.roll(x, 4, dims=3)  # linear, far: output (i, j) reads input (i, j - 4)

    with pytest.raises(AssertionError) as info:
        assert_pixel_local(D, torch.randn(1, 1, 9, 9), 1.0, 1, generator=torch.Generator().manual_seed(0))
    msg = str(info.value)
    assert msg.startswith("not pixel-local at sigma = 1: output pixel (channel 0, row ")
    assert "at Chebyshev distance 4 > 1 (|dy/dx| = 0.05" in msg or "at Chebyshev distance 5 > 1 (|dy/dx| = 0.05" in msg
    assert "times the tolerance" in msg and "not differentiable" not in msg


def test_assert_conditionally_local() -> None:
    cond = Conditions.from_lists([[(2.0, 2.0), (9.0, 10.0)], [(5.0, 5.5)]], attrs=[[[1.0], [0.0]], [[0.5]]])
    x = torch.randn(2, 1, 12, 13)
    D = LocalConvDenoiser(1, 1, cond_radius=1.5, attr_dim=1, hidden=4)  # reach 1 + 1.5 = 2.5
    assert_conditionally_local(D, x, [0.1, 10.0], cond, 2.5)
    with pytest.raises(AssertionError) as info:
        assert_conditionally_local(D, x, 1.0, cond, 1.5)
    msg = str(info.value)
    assert "not conditionally local at sigma = 1: conditioner 0 of image 0 at (row, col) = (2.0, 2.0)" in msg
    assert "Chebyshev distance" in msg and "> 1.5" in msg
    G = GlobalConvDenoiser(1, 1, cond_radius=1.5, attr_dim=1, hidden=4)
    with pytest.raises(AssertionError, match="when dropping it"):
        assert_conditionally_local(G, x, 1.0, cond, 2.5)


def test_assert_conditionally_local_moving_check() -> None:
    # presence is local, but the *position* of conditioner 0 shifts the whole image: only moving finds it
    def D(x: torch.Tensor, s: torch.Tensor, c: Conditions) -> torch.Tensor:
        out = x.clone()
        for b in range(x.shape[0]):
            for k in range(c.num_slots):
                if c.valid[b, k]:
                    r, q = (round(float(v)) for v in c.pos[b, k])
                    out[b, :, r, q] += 1.0
                    out[b] += 1e-3 * (c.pos[b, k, 0] - 3.2)  # zero at the test position: ablation sees nothing
        return out

    cond = Conditions.from_lists([[(3.2, 3.0)]])
    with pytest.raises(AssertionError, match="moving it"):
        assert_conditionally_local(D, torch.zeros(1, 1, 8, 8), 1.0, cond, 1.0,
                                   generator=torch.Generator().manual_seed(0))


def test_assert_projective_far_and_near() -> None:
    D = LocalConvDenoiser(1, 2, cond_radius=1.0, hidden=6)  # conditioner_radius 3
    x = torch.randn(1, 1, 16, 16)
    assert_projective(D, x, [0.1, 1.0, 30.0], Conditions.from_lists([[(2.0, 2.0), (9.0, 3.0), (5.0, 13.0)]]))
    with pytest.raises(AssertionError) as info:
        assert_projective(D, x, 1.0, Conditions.from_lists([[(2.0, 2.0), (4.0, 5.0)]]))
    msg = str(info.value)
    assert "not projective at sigma = 1" in msg and "closest conditioners of image 0 are 3 px apart" in msg


def test_assert_permutation_invariant() -> None:
    D = LocalConvDenoiser(1, 1, cond_radius=1.0, hidden=4)
    cond = Conditions.from_lists([[(2.0, 2.0), (5.0, 5.0), (1.0, 6.0)]])
    assert_permutation_invariant(D, torch.randn(1, 1, 8, 8), [0.5, 5.0], cond, permutations=4)

    def first_only(x: torch.Tensor, s: torch.Tensor, c: Conditions) -> torch.Tensor:
        return x + c.pos[:, :1, :1, None]

    with pytest.raises(AssertionError, match=r"reordering the slots as \[2, 0, 1\]"):
        assert_permutation_invariant(first_only, torch.zeros(1, 1, 4, 4), 1.0, cond, permutations=[[2, 0, 1]])
    with pytest.raises(LocalScoreError, match="not a permutation"):
        assert_permutation_invariant(first_only, torch.zeros(1, 1, 4, 4), 1.0, cond, permutations=[[0, 0, 1]])


def test_assertion_bad_arguments() -> None:
    D = LocalConvDenoiser(1, 1)
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(LocalScoreError, match="`radius`"):
        assert_pixel_local(D, x, 1.0, -1)
    with pytest.raises(LocalScoreError, match="`cond`"):
        assert_conditionally_local(D, x, 1.0, None, 1.0)  # type: ignore[arg-type]
    with pytest.raises(LocalScoreError, match="`fn`"):
        assert_projective(3, x, 1.0, Conditions.empty(1))


# ----------------------------------------------------------------------------- strategies
@given(lst.conditions(2, height=12, width=14, min_objects=1, max_objects=4, min_separation=3.0, attr_dim=2))
def test_conditions_strategy_contract(c: Conditions) -> None:
    assert c.batch_size == 2 and c.num_slots == 4 and c.attr_dim == 2
    for b in range(2):
        p = c.pos[b][c.valid[b]].double()
        assert 1 <= p.shape[0] <= 4
        assert bool(((p[:, 0] >= 0) & (p[:, 0] <= 11) & (p[:, 1] >= 0) & (p[:, 1] <= 13)).all())
        d = (p[:, None] - p[None]).abs().amax(-1) + 1e9 * torch.eye(p.shape[0], dtype=torch.float64)
        assert float(d.min()) >= 3.0 - 1e-5
        a = c.attr[b][c.valid[b]] if c.attr is not None else None
        assert a is not None and bool((a.abs() <= 1).all())


@given(lst.images(batch=(1, 3), channels=(1, 3), height=(2, 9), width=5, dtype=torch.float64), lst.sigmas(0.1, 5.0),
       lst.masks(batch=2, slots=3, height=4, width=4))
def test_images_sigmas_masks_strategies(x: torch.Tensor, s: float, m: torch.Tensor) -> None:
    assert x.dim() == 4 and 1 <= x.shape[0] <= 3 and x.shape[3] == 5 and x.dtype == torch.float64
    assert bool(torch.isfinite(x).all())
    assert 0.1 <= s <= 5.0
    assert m.shape == (2, 3, 4, 4) and m.dtype == torch.bool


@given(st.data())
def test_local_net_is_local_for_any_image_and_conditions(data: st.DataObject) -> None:
    """The toolkit dogfooded as a property: the reference local net passes for hypothesis-drawn inputs."""
    x = data.draw(lst.images(batch=1, channels=2, height=(6, 10), width=(6, 10)))
    c = data.draw(lst.conditions(1, height=x.shape[2], width=x.shape[3], max_objects=3))
    s = data.draw(lst.sigmas())
    assert_conditionally_local(_NET, x, s, c, 2.0)


_NET = LocalConvDenoiser(2, 1, cond_radius=1.0, hidden=4)


# ----------------------------------------------------------------------------- the mixin (dogfood)
class TestLocalConvWithMixin(LocalScoreTesterMixin):
    image_shape = (2, 12, 12)
    attr_dim = 2
    hypothesis_examples = 5

    def make_model(self) -> LocalConvDenoiser:
        return LocalConvDenoiser(2, 2, cond_radius=1.0, attr_dim=2, hidden=6)


class TestPatchLocalWithMixin(LocalScoreTesterMixin):
    image_shape = (1, 10, 10)
    dtype = torch.float64
    sigmas = (0.2, 2.0)
    hypothesis_examples = 4

    def make_model(self) -> PatchLocalEmpirical:
        g = torch.Generator().manual_seed(0)
        data = torch.randn(10, 1, 10, 10, generator=g, dtype=torch.float64)
        pos = [[(float(torch.randint(0, 10, (1,), generator=g)), float(torch.randint(0, 10, (1,), generator=g)))]
               for _ in range(10)]
        return PatchLocalEmpirical(data, 1, cond=Conditions.from_lists(pos, dtype=torch.float64),
                                   conditioner_radius=1.5, temperature=0.5)


def test_mixin_fails_on_a_global_model() -> None:
    class Global(LocalScoreTesterMixin):
        image_shape = (1, 10, 10)
        receptive_radius = 1
        conditioner_radius = 2.0

        def make_model(self) -> GlobalConvDenoiser:
            return GlobalConvDenoiser(1, 1, cond_radius=1.0, hidden=4)

    t = Global()
    with pytest.raises(AssertionError, match="not pixel-local"):
        t.test_pixel_locality()
    with pytest.raises(AssertionError, match="not pixel-local"):
        t.test_pixel_locality_property()
    with pytest.raises(AssertionError, match="not conditionally local"):
        t.test_conditional_locality()
    with pytest.raises(AssertionError, match="not projective"):
        t.test_projective_one_pass()


def test_mixin_pixel_property_fails_on_a_small_linear_leak() -> None:
    """The hypothesis pixel-locality property catches a leak of 1 % through a global mean (every drawn image)."""
    class Leaky(LocalScoreTesterMixin):
        image_shape = (1, 10, 10)
        conditional = False
        receptive_radius = 1
        hypothesis_examples = 3

        def make_model(self) -> object:
            net = LocalConvDenoiser(1, 1, hidden=4)
            return lambda x, s, c=None: net(x, s) + 0.01 * x.mean((2, 3), keepdim=True)

    with pytest.raises(AssertionError, match=r"not pixel-local at sigma = .*times the tolerance"):
        Leaky().test_pixel_locality_property()


# ----------------------------------------------------------------------------- the plugin
def _plugin_args() -> list[str]:
    """``-p localscore.testing.plugin`` unless the installed entry point already loads it (then pytest
    would refuse to register the same module twice)."""
    from importlib.metadata import entry_points

    installed = any(ep.name == "localscore" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "localscore.testing.plugin"]


def test_plugin_marker_and_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(textwrap.dedent("""
        import pytest, torch
        from localscore.testing import LocalConvDenoiser

        @pytest.mark.locality(radius=2)
        def test_ok(locality):
            locality.assert_pixel_local(LocalConvDenoiser(1, 2, hidden=4), torch.randn(1, 1, 8, 8), 1.0)

        @pytest.mark.locality(radius=1)
        def test_fails(locality):
            locality.assert_pixel_local(LocalConvDenoiser(1, 2, hidden=4), torch.randn(1, 1, 8, 8), 1.0)

        def test_no_radius(locality):
            locality.assert_pixel_local(LocalConvDenoiser(1, 2, hidden=4), torch.randn(1, 1, 8, 8), 1.0)

        def test_strategies(localscore_strategies):
            assert hasattr(localscore_strategies, "conditions")
    """))
    result = pytester.runpytest_inprocess(*_plugin_args(), "-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*not pixel-local at sigma = 1*", "*no radius given*"])


def test_plugin_without_hypothesis(tmp_path: Path) -> None:
    test = tmp_path / "test_x.py"
    test.write_text("def test_s(localscore_strategies):\n    pass\n\n"
                    "def test_l(locality):\n    assert locality.radius is None\n")
    code = textwrap.dedent(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):  # hypothesis is 'not installed'
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("hypothesis", "_hypothesis_pytestplugin"):
                    raise ModuleNotFoundError(f"No module named {{name!r}}")
                return None

        sys.meta_path.insert(0, Block())
        import pytest
        sys.exit(pytest.main(["-p", "no:hypothesispytest", *{_plugin_args()!r}, "-p", "no:cacheprovider",
                              "-q", {str(test)!r}]))
    """)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": os.pathsep.join([str(root), *sys.path]), "PATH": "/usr/bin:/bin",
                               "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped" in proc.stdout
