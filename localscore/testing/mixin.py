r"""``LocalScoreTesterMixin``: the whole battery of locality properties for your model, in one subclass.

Example (in your test suite)::

    from localscore.testing import LocalScoreTesterMixin

    class TestMyNet(LocalScoreTesterMixin):
        image_shape = (3, 16, 16)
        attr_dim = 4                      # None: conditioners without attributes
        conditional = True

        def make_model(self):
            return MyNet(receptive_radius=3, conditioner_radius=2).eval()

pytest then collects ``test_pixel_locality``, ``test_pixel_locality_property`` (hypothesis),
``test_conditional_locality``, ``test_projective_one_pass``, ... for ``TestMyNet``. The radii are the model's
declared ``receptive_radius`` / ``conditioner_radius`` (see :func:`localscore.denoisers.receptive_radius`)
unless the class sets them. Override any test method (or set it to ``None``) to skip it. Needs pytest and
hypothesis.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .._errors import describe, fail
from ..conditions import Conditions
from ..denoisers import conditioner_radius as declared_conditioner_radius
from ..denoisers import receptive_radius as declared_receptive_radius
from . import strategies as lst
from .assertions import (
    assert_conditionally_local,
    assert_permutation_invariant,
    assert_pixel_local,
    assert_projective,
)

__all__ = ["LocalScoreTesterMixin"]


class LocalScoreTesterMixin:
    """Mix into a pytest test class and implement :meth:`make_model` to test a denoiser's locality.

    Class attributes (override as needed):

    * ``image_shape``: ``(C, H, W)`` of the test images.
    * ``receptive_radius`` / ``conditioner_radius``: radii to check (``None``: the model's declared ones;
      a test whose radius is unknown is skipped with a message).
    * ``conditional``: whether the model takes conditions.
    * ``attr_dim``: attribute length of the conditioners (``None`` for none).
    * ``sigmas``: the noise levels every property is checked at.
    * ``dtype``, ``device``: where the checks run.
    * ``atol``: tolerance of the assertions (``None``: scaled by dtype).
    * ``hypothesis_examples``: examples of the property-based test.

    Examples:
        >>> import torch
        >>> from localscore.testing import LocalConvDenoiser
        >>> class TestLocalConv(LocalScoreTesterMixin):
        ...     image_shape = (2, 12, 12)
        ...     def make_model(self):
        ...         return LocalConvDenoiser(2, 1, cond_radius=1.0, hidden=4)
        >>> t = TestLocalConv()
        >>> t.test_pixel_locality(); t.test_conditional_locality(); t.test_projective_one_pass()
    """

    image_shape: ClassVar[tuple[int, int, int]] = (3, 16, 16)
    receptive_radius: ClassVar[int | None] = None
    conditioner_radius: ClassVar[float | None] = None
    conditional: ClassVar[bool] = True
    attr_dim: ClassVar[int | None] = None
    sigmas: ClassVar[tuple[float, ...]] = (0.05, 1.0, 20.0)
    dtype: ClassVar[torch.dtype] = torch.float32
    device: ClassVar[str] = "cpu"
    atol: ClassVar[float | None] = None
    hypothesis_examples: ClassVar[int] = 10
    seed: ClassVar[int] = 0

    # ------------------------------------------------------------------ to implement
    def make_model(self) -> Any:
        """Return the denoiser ``D(x, sigma, cond)`` to test (a fresh one per call is fine)."""
        raise fail(type(self).__name__, "make_model() is not implemented; expected the subclass to return the "
                   "denoiser to test.", "define `def make_model(self): return MyDenoiser(...)` in the test class.")

    # ------------------------------------------------------------------ helpers
    def _model(self) -> Any:
        if not hasattr(self, "_cached_model"):
            self._check_settings()
            model = self.make_model()
            if not callable(model):
                raise fail(type(self).__name__, f"make_model() returned {describe(model)}, expected a denoiser "
                           "D(x, sigma, cond) (a callable).", "return the model instance from make_model().")
            self._cached_model = model
        return self._cached_model

    def _check_settings(self) -> None:
        """The class attributes, checked once before the first test runs the model."""
        where = type(self).__name__
        shape = self.image_shape
        if not (isinstance(shape, tuple) and len(shape) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
            raise fail(where, f"`image_shape` is {describe(shape)}, expected (C, H, W) with ints >= 1.")
        if math.prod(shape) > 2**24:
            raise fail(where, f"`image_shape` {shape} has {math.prod(shape):,} values per image, over the 2**24 the "
                       "battery is sized for (it evaluates the model on many copies).", "test on small images.")
        sig = self.sigmas
        if not isinstance(sig, (tuple, list)) or not sig or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in sig):
            raise fail(where, f"`sigmas` is {describe(sig)}, expected a non-empty tuple of finite noise levels > 0.")
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise fail(where, f"`dtype` is {describe(self.dtype)}, expected a floating torch.dtype.")
        if self.attr_dim is not None and (isinstance(self.attr_dim, bool) or not isinstance(self.attr_dim, int)
                                          or self.attr_dim < 1):
            raise fail(where, f"`attr_dim` is {describe(self.attr_dim)}, expected None or an int >= 1.")
        for name in ("receptive_radius", "conditioner_radius", "atol"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not (math.isfinite(v) and v >= 0)):
                raise fail(where, f"`{name}` is {describe(v)}, expected None or a finite number >= 0.")

    def _gen(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def _x(self, batch: int = 2) -> torch.Tensor:
        C, H, W = self.image_shape
        return torch.randn(batch, C, H, W, generator=self._gen(), dtype=self.dtype).to(self.device)

    def _radius(self) -> int:
        R = self.receptive_radius if self.receptive_radius is not None else declared_receptive_radius(self._model())
        if R is None:
            pytest.skip("the model declares no receptive_radius and the test class sets none")
        return int(R)

    def _cond_radius(self) -> float:
        if not self.conditional:
            pytest.skip("unconditional model (conditional = False)")
        r = self.conditioner_radius if self.conditioner_radius is not None else declared_conditioner_radius(
            self._model())
        if r is None:
            pytest.skip("the model declares no conditioner_radius and the test class sets none")
        return float(r)

    def _attrs(self, k: int, g: torch.Generator) -> list[list[float]] | None:
        if self.attr_dim is None:
            return None
        return (torch.rand(k, self.attr_dim, generator=g, dtype=torch.float64) * 2 - 1).tolist()

    def _separated(self, n: int, sep: float) -> Conditions | None:
        """``n`` conditioners pairwise more than ``sep`` apart (Chebyshev), on a grid; None if they do not fit."""
        _, H, W = self.image_shape
        step = math.floor(sep) + 1
        pts = [(float(r), float(c)) for r in range(0, H, step) for c in range(0, W, step)]
        if len(pts) < n:
            return None
        g = self._gen()
        chosen = [pts[int(i)] for i in torch.randperm(len(pts), generator=g)[:n]]
        attrs = None if self.attr_dim is None else [self._attrs(n, g)]
        return Conditions.from_lists([chosen], attrs, dtype=self.dtype, device=self.device)

    def _cond(self, batch: int = 2, k: int = 3) -> Conditions:
        _, H, W = self.image_shape
        g = self._gen()
        pos = [[(float(torch.rand((), generator=g)) * (H - 1), float(torch.rand((), generator=g)) * (W - 1))
                for _ in range(k)] for _ in range(batch)]
        attrs = None if self.attr_dim is None else [self._attrs(k, g) for _ in range(batch)]
        return Conditions.from_lists(pos, attrs, dtype=self.dtype, device=self.device)

    # ------------------------------------------------------------------ the battery
    def test_output_shape_dtype_and_finite(self) -> None:
        """``D(x, sigma, cond)`` has ``x``'s shape and dtype and is finite at every sigma."""
        D, x = self._model(), self._x()
        cond = self._cond() if self.conditional else None
        for s in self.sigmas:
            out = D(x, torch.full((x.shape[0],), s, dtype=self.dtype, device=self.device), cond)
            assert out.shape == x.shape, f"output shape {tuple(out.shape)} != input shape {tuple(x.shape)} at sigma {s}"
            assert out.dtype == x.dtype, f"output dtype {out.dtype} != input dtype {x.dtype}"
            assert bool(torch.isfinite(out).all()), f"non-finite output at sigma = {s}"

    def test_batch_independence(self) -> None:
        """Image ``b``'s output does not depend on the other images of the batch."""
        D, x = self._model(), self._x(3)
        cond = self._cond(3) if self.conditional else None
        s = torch.full((3,), self.sigmas[len(self.sigmas) // 2], dtype=self.dtype, device=self.device)
        full = D(x, s, cond).detach()
        x2 = x.clone()
        x2[1:] = torch.randn(x2[1:].shape, generator=self._gen(), dtype=self.dtype).to(self.device) * 3
        part = D(x2, s, cond).detach()
        diff = float((full[0] - part[0]).abs().max())
        tol = self.atol if self.atol is not None else 1e-5 * (1 + float(full.abs().max()))
        assert diff <= tol, (f"image 0's output changed by {diff:.3g} when only the other images changed "
                             "(batch coupling)")

    def test_pixel_locality(self) -> None:
        """The Jacobian vanishes outside the receptive radius at every sigma (with and without conditions)."""
        R = self._radius()
        D = self._model()
        cond = self._cond() if self.conditional else None
        assert_pixel_local(D, self._x(), list(self.sigmas), R, cond=cond, atol=self.atol, generator=self._gen())

    def test_conditional_locality(self) -> None:
        """Dropping or moving a conditioner changes nothing beyond the conditioner radius."""
        r = self._cond_radius()
        assert_conditionally_local(self._model(), self._x(), list(self.sigmas), self._cond(), r, atol=self.atol,
                                   generator=self._gen())

    def test_projective_one_pass(self) -> None:
        """Conditioners more than ``2 * conditioner_radius`` apart: one pass == the projective composition."""
        r = self._cond_radius()
        cond = self._separated(3, 2 * r) or self._separated(2, 2 * r)
        if cond is None:
            pytest.skip(f"the image {self.image_shape} is too small for two conditioners {2 * r:g} px apart")
        x = self._x(1)
        assert_projective(self._model(), x, list(self.sigmas), cond, rtol=1e-5, atol=self.atol)

    def test_permutation_invariance(self) -> None:
        """The order of conditioner slots (padding included) does not matter."""
        if not self.conditional:
            pytest.skip("unconditional model (conditional = False)")
        cond = self._cond(2, 3)
        valid = cond.valid.clone()
        valid[1, 1] = False  # a padding slot in the middle
        cond = Conditions(cond.pos, cond.attr, valid)
        assert_permutation_invariant(self._model(), self._x(), list(self.sigmas), cond, atol=self.atol,
                                     generator=self._gen())

    def test_empty_conditions_are_unconditional(self) -> None:
        """``cond=None``, ``K = 0`` and all-padding conditions give the same output."""
        if not self.conditional:
            pytest.skip("unconditional model (conditional = False)")
        D, x = self._model(), self._x()
        s = torch.full((x.shape[0],), self.sigmas[0], dtype=self.dtype, device=self.device)
        c = self._cond()
        outs = {
            "cond=None": D(x, s, None),
            "K = 0": D(x, s, c.drop_all()),
            "all slots padding": D(x, s, Conditions(c.pos, c.attr, torch.zeros_like(c.valid))),
        }
        ref = outs["cond=None"].detach()
        tol = self.atol if self.atol is not None else 1e-5 * (1 + float(ref.abs().max()))
        for name, out in outs.items():
            diff = float((out.detach() - ref).abs().max())
            assert diff <= tol, f"{name} differs from cond=None by {diff:.3g}"

    def test_pixel_locality_property(self) -> None:
        """Hypothesis: pixel locality holds for random images (normal, uniform, constant, sparse, checkerboard),
        sigmas and (for conditional models) conditioner sets, each image scaled like a noisy input at its sigma.

        Failures are not shrunk (every example costs a coloured Jacobian, and the message already names the
        output pixel, the input it depends on, the distance and the size)."""
        R = self._radius()
        C, H, W = self.image_shape
        D = self._model()
        conds = (lst.conditions(1, height=H, width=W, max_objects=3, attr_dim=self.attr_dim, dtype=self.dtype)
                 if self.conditional else st.none())

        @settings(max_examples=self.hypothesis_examples, deadline=None, derandomize=True,
                  phases=(Phase.explicit, Phase.generate),
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        @given(x=lst.images(1, C, H, W, dtype=self.dtype), cond=conds,
               sigma=lst.sigmas(min(self.sigmas), max(self.sigmas)), seed=st.integers(0, 2**16))
        def prop(x: torch.Tensor, cond: Conditions | None, sigma: float, seed: int) -> None:
            z = (x * math.sqrt(1 + sigma**2)).to(self.device)
            assert_pixel_local(D, z, sigma, R, cond=None if cond is None else cond.to(self.device), atol=self.atol,
                               generator=torch.Generator().manual_seed(seed))

        prop()

    def test_conditional_locality_property(self) -> None:
        """Hypothesis: conditional locality holds for random positions, counts and sigmas."""
        r = self._cond_radius()
        _, H, W = self.image_shape
        D = self._model()
        x = self._x(1)

        @settings(max_examples=self.hypothesis_examples, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        @given(cond=lst.conditions(1, height=H, width=W, max_objects=3, attr_dim=self.attr_dim, dtype=self.dtype),
               sigma=lst.sigmas(min(self.sigmas), max(self.sigmas)), seed=st.integers(0, 2**16))
        def prop(cond: Conditions, sigma: float, seed: int) -> None:
            assert_conditionally_local(D, x, sigma, cond.to(self.device), r, atol=self.atol,
                                       generator=torch.Generator().manual_seed(seed))

        prop()
