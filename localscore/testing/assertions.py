r"""Assertions for locality properties, with messages that say where, which input, which sigma and by how much.

Each raises :class:`AssertionError` when the property fails (so pytest reports it as a test failure) and
:class:`~localscore.LocalScoreError` for bad arguments. Distances are Chebyshev (square neighbourhoods),
in pixels, as declared receptive radii are.

* :func:`assert_pixel_local`: output pixel ``i`` depends only on input pixels within ``radius`` of ``i``
  (exact Jacobian check by the verified coloured Jacobian, plus finite perturbations outside the window).
* :func:`assert_conditionally_local`: output pixel ``i`` depends only on conditioners within ``radius``
  (ablation of each conditioner, and moving it / changing its attributes).
* :func:`assert_projective`: one joint pass equals the projective composition of single-conditioner passes.
* :func:`assert_permutation_invariant`: the order of the conditioner slots does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import MAX_ELEMENTS as _MAX_ELEMENTS
from .._checks import as_sigma, check_elements, check_image, check_model
from .._errors import LocalScoreError, describe, fail
from ..conditions import Conditions
from ..denoisers import call_denoiser
from ..masks import distances
from ..metrics.jacobians import BandedJacobian, _describe_row, _exact_rows, jacobian

__all__ = [
    "assert_conditionally_local",
    "assert_permutation_invariant",
    "assert_pixel_local",
    "assert_projective",
]

MAX_ELEMENTS = _MAX_ELEMENTS
"""The most elements of the batch an assertion sends to the model in one call (``x`` repeated once per variant:
perturbation, ablation, permutation). Checked before building it; read at call time, so
``localscore.testing.assertions.MAX_ELEMENTS = 2**31`` raises it where the memory is there."""


def _sigmas(sigma: Any, B: int, where: str, like: Tensor) -> list[Tensor]:
    if isinstance(sigma, (list, tuple)):
        if not sigma:
            raise fail(where, "`sigma` is an empty list, expected at least one noise level.")
        return [as_sigma(s, B, where, like=like, name=f"sigma[{n}]") for n, s in enumerate(sigma)]
    return [as_sigma(sigma, B, where, like=like)]


def _fmt_sigma(s: Tensor) -> str:
    vals = s.detach().flatten().tolist()
    return f"{vals[0]:.4g}" if all(v == vals[0] for v in vals) else str([round(v, 4) for v in vals])


def _default_atol(ref: Tensor) -> float:
    scale = 1.0 + float(ref.detach().abs().max()) if ref.numel() else 1.0
    return (1e-10 if ref.dtype == torch.float64 else 1e-5 if ref.dtype == torch.float32 else 1e-2) * scale


def _check_fn(fn: Any, where: str) -> None:
    if not callable(fn):
        raise fail(where, f"`fn` is {describe(fn)}, expected a denoiser D(x, sigma, cond).")


def _check_x(fn: Any, x: Any, where: str) -> Tensor:
    """``x`` checked as an image, and against ``fn``'s parameters (dtype, device: from metadata)."""
    x = check_image(x, where).detach()
    check_model(fn, x, where, "fn")
    return x


def _check_tol(value: Any, where: str, name: str) -> float | None:
    """A tolerance: ``None`` (the default) or a finite number ``>= 0`` (NaN or inf would let every check pass)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise fail(where, f"`{name}` is {describe(value)}, expected None or a finite number >= 0.",
                   f"a NaN or infinite `{name}` would let every comparison pass; pass e.g. {name}=1e-5.")
    return float(value)


def _check_generator(generator: Any, where: str) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise fail(where, f"`generator` is {describe(generator)}, expected a torch.Generator or None.",
                   "pass torch.Generator().manual_seed(0) (a CPU generator) or None.")


def _check_passes(n: int, x: Tensor, where: str, what: str) -> None:
    """Refuse, before building it, a batch of ``n`` copies of ``x`` above :data:`MAX_ELEMENTS`."""
    B, C, H, W = x.shape
    check_elements(n * x.numel(), MAX_ELEMENTS, where, f"the batch of {n} copies of `x` [{B}, {C}, {H}, {W}] ({what})",
                   "use a smaller image, or fewer conditioners / perturbations / permutations per call",
                   limit_name="localscore.testing.assertions.MAX_ELEMENTS")


def _check_radius(radius: Any, where: str, *, integer: bool) -> float:
    ok = isinstance(radius, int) if integer else isinstance(radius, (int, float))
    if isinstance(radius, bool) or not ok or not radius >= 0:
        kind = "an int" if integer else "a number"
        raise fail(where, f"`radius` is {describe(radius)}, expected {kind} >= 0 (Chebyshev distance in pixels).")
    return float(radius)


def _check_cond(cond: Any, B: int, x: Tensor, where: str) -> Conditions:
    if not isinstance(cond, Conditions):
        raise fail(where, f"`cond` is {describe(cond)}, expected a localscore.Conditions.")
    return cond.check_batch(B, where, device=x.device)


# ----------------------------------------------------------------------------- pixel locality
def _perturbation_diagnosis(f: Any, x: Tensor, Jb: BandedJacobian, b: int, c: int, i: int, j: int, R: int) -> str:
    """What the exact Jacobian row of output ``(b, c, i, j)`` at ``x`` says about its dependence beyond ``R``."""
    row = _exact_rows(f, x, f(x).detach(), [(b, c, i, j)])[0]
    scale = float(Jb.scale()[b])
    rtol = Jb.rtol if Jb.rtol is not None else float("nan")
    found = _describe_row(row, b, c, i, j, R, scale=scale, rtol=rtol, probe_error=float("nan"))
    if found.outside_norm == 0:
        return ("its Jacobian row at x is exactly zero beyond the radius, so the dependence is not differentiable "
                "or not visible at x (a threshold, a dependence whose derivative vanishes at x)")
    below = ("below the Jacobian check's tolerance, which therefore let it pass"
             if found.outside_norm <= found.tolerance else "above the Jacobian check's tolerance, which missed it")
    return f"its Jacobian row at x locates it: {found.describe()}; {below}"


def assert_pixel_local(
    fn: Callable[..., Tensor],
    x: Tensor,
    sigma: Tensor | float | Sequence[Tensor | float],
    radius: int,
    *,
    cond: Conditions | None = None,
    n_perturb: int = 4,
    atol: float | None = None,
    rtol: float | None = None,
    generator: torch.Generator | None = None,
) -> None:
    r"""Assert that output pixel ``i`` of ``fn(x, sigma, cond)`` depends only on inputs within ``radius`` of ``i``.

    Two checks per noise level:

    1. *Jacobian*: ``jacobian(..., method="colored", radius=radius, rtol=rtol)`` with its random-probe
       verification. It fails on every Jacobian row whose norm beyond ``radius``,
       ``sqrt(sum_{|p - i| > radius} (d out_i / d x_p)^2)``, exceeds ``10 rtol S`` (``S`` the Jacobian's RMS row
       norm; default ``rtol`` 1e-4 in float32, 1e-10 in float64), except with probability ``<= 0.08^4``, and
       never on rows below ``rtol S``: see "What verified means" in the docs.
    2. *Finite perturbations* (dependencies of finite size: below the Jacobian tolerance, or not
       differentiable, e.g. thresholds): for ``n_perturb`` random output pixels ``i``, every input pixel
       farther than ``radius`` from ``i`` is replaced by fresh Gaussian noise; ``out_i`` must not change by
       more than ``atol``. A failure is located on the exact Jacobian row of that output (one VJP).

    Args:
        fn: denoiser ``D(x, sigma, cond)``.
        x: ``[B, C, H, W]``.
        sigma: a float, a ``[B]`` tensor, or a list of them (each is checked).
        radius: the Chebyshev receptive radius to check.
        cond: optional conditions passed to ``fn``.
        n_perturb: output pixels of the perturbation check (0 skips it).
        atol: tolerance of the perturbation check (default: scaled by the dtype and output size).
        rtol: tolerance of the Jacobian check, relative to the Jacobian scale (default: by dtype).
        generator: random source.

    Raises:
        AssertionError: naming the output pixel, the input it depends on, the distance, sigma, ``|d out / d x|``
            and how many times the tolerance the dependence is.

    Examples:
        >>> import torch
        >>> from localscore.testing import LocalConvDenoiser
        >>> assert_pixel_local(LocalConvDenoiser(1, 2), torch.randn(1, 1, 10, 10), [0.1, 10.0], radius=2)
        >>> try:
        ...     assert_pixel_local(LocalConvDenoiser(1, 2), torch.randn(1, 1, 10, 10), 1.0, radius=1)
        ... except AssertionError as e:
        ...     print(str(e).split(":")[0])
        not pixel-local at sigma = 1
    """
    where = "assert_pixel_local"
    _check_fn(fn, where)
    x = _check_x(fn, x, where)
    R = int(_check_radius(radius, where, integer=True))
    B, C, H, W = x.shape
    if cond is not None:
        cond = _check_cond(cond, B, x, where)
    if isinstance(n_perturb, bool) or not isinstance(n_perturb, int) or n_perturb < 0:
        raise fail(where, f"`n_perturb` is {n_perturb!r}, expected an int >= 0.")
    atol = _check_tol(atol, where, "atol")
    _check_generator(generator, where)
    _check_passes(min(n_perturb, H * W) + 1, x, where, f"n_perturb = {n_perturb} perturbed inputs")
    for s in _sigmas(sigma, B, where, x):
        label = _fmt_sigma(s)

        def f(z: Tensor, s: Tensor = s) -> Tensor:
            return call_denoiser(fn, z, s, cond, where, "fn")

        try:
            Jb = jacobian(f, x, method="colored", radius=R, rtol=rtol, generator=generator)
        except LocalScoreError as exc:
            text = str(exc)
            if "less local than the declared radius" not in text:
                raise
            detail = text.split(": ", 2)[-1].split("\n")[0]
            raise AssertionError(f"not pixel-local at sigma = {label}: {detail}") from None
        if n_perturb == 0:
            continue
        n = min(n_perturb, H * W)
        pick = torch.randperm(H * W, generator=generator)[:n].tolist()
        rows = torch.arange(H, device=x.device).view(H, 1)
        cols = torch.arange(W, device=x.device).view(1, W)
        xs = [x]
        for flat in pick:
            i, j = divmod(flat, W)
            far = torch.maximum((rows - i).abs(), (cols - j).abs()) > R
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * (1 + x.abs().max())
            xs.append(torch.where(far, noise, x))
        n_tot = len(xs)
        c_rep = None if cond is None else Conditions.cat([cond] * n_tot)
        out = call_denoiser(fn, torch.cat(xs), s.repeat(n_tot), c_rep, where, "fn").detach().view(n_tot, B, C, H, W)
        tol = atol if atol is not None else _default_atol(out[0])
        for k, flat in enumerate(pick):
            i, j = divmod(flat, W)
            diff = (out[k + 1, :, :, i, j] - out[0, :, :, i, j]).abs()  # [B, C]
            if float(diff.max()) > tol:
                b, c = divmod(int(diff.argmax()), C)
                why = _perturbation_diagnosis(f, x, Jb, b, c, i, j, R)
                raise AssertionError(
                    f"not pixel-local at sigma = {label}: output pixel (channel {c}, row {i}, col {j}) of image {b} "
                    f"changed by {float(diff[b, c]):.3g} ({float(diff[b, c]) / tol:.3g} times the tolerance "
                    f"{tol:.3g}) when only input pixels at Chebyshev distance > {R} from it were replaced by noise "
                    f"(a finite perturbation); {why}.")


# ----------------------------------------------------------------------------- conditional locality
def assert_conditionally_local(
    fn: Callable[..., Tensor],
    x: Tensor,
    sigma: Tensor | float | Sequence[Tensor | float],
    cond: Conditions,
    radius: float,
    *,
    move: float = 0.5,
    atol: float | None = None,
    generator: torch.Generator | None = None,
) -> None:
    r"""Assert that output pixel ``i`` depends only on conditioners within ``radius`` (Chebyshev) of ``i``.

    For every valid conditioner ``k`` and noise level, in one batched call:

    * *ablation*: ``D(x, cond) - D(x, cond without k)`` must vanish (``<= atol``) at pixels farther than
      ``radius`` from ``pos_k``;
    * *moving*: shifting ``pos_k`` by a random offset of Chebyshev size ``<= move`` (and perturbing its
      attributes) must not change pixels farther than ``radius`` from both the old and the new position.

    Args:
        fn: denoiser ``D(x, sigma, cond)``.
        x: ``[B, C, H, W]``.
        sigma: a float, a ``[B]`` tensor, or a list of them.
        cond: ``Conditions`` with ``B`` sets.
        radius: the conditioner radius to check (pixels).
        move: size of the position shift (0 skips the moving check).
        atol: tolerance (default: scaled by the dtype and output size).
        generator: random source of the moves.

    Raises:
        AssertionError: naming the conditioner, its position, the output pixel, the distance, sigma and the size.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> from localscore.testing import LocalConvDenoiser
        >>> D = LocalConvDenoiser(1, 1, cond_radius=1.0)          # conditioners reach 1 + 1 = 2 pixels
        >>> c = Conditions.from_lists([[(3.0, 3.0), (8.0, 9.0)]])
        >>> assert_conditionally_local(D, torch.randn(1, 1, 12, 12), 1.0, c, radius=2)
        >>> try:
        ...     assert_conditionally_local(D, torch.randn(1, 1, 12, 12), 1.0, c, radius=1)
        ... except AssertionError as e:
        ...     print(str(e)[:58])
        not conditionally local at sigma = 1: conditioner 0 of ima
    """
    where = "assert_conditionally_local"
    _check_fn(fn, where)
    x = _check_x(fn, x, where)
    r = _check_radius(radius, where, integer=False)
    if not math.isfinite(r):
        raise fail(where, f"`radius` is {radius!r}, expected a finite number >= 0.")
    B, C, H, W = x.shape
    cond = _check_cond(cond, B, x, where)
    if isinstance(move, bool) or not isinstance(move, (int, float)) or not (math.isfinite(move) and move >= 0):
        raise fail(where, f"`move` is {describe(move)}, expected a finite number >= 0 (pixels).",
                   "pass move=0 to check ablations only.")
    atol = _check_tol(atol, where, "atol")
    _check_generator(generator, where)
    K = cond.num_slots
    if K == 0 or not bool(cond.valid.any()):
        return
    _check_passes(K * (2 if move > 0 else 1) + 1, x, where, f"{K} conditioner slots")
    for s in _sigmas(sigma, B, where, x):
        label = _fmt_sigma(s)
        variants: list[tuple[str, int, Conditions]] = []
        for k in range(K):
            keep = cond.valid.clone()
            keep[:, k] = False
            variants.append(("dropping it", k, Conditions(cond.pos, cond.attr, keep)))
            if move > 0:
                shift = (torch.rand(B, 2, generator=generator, dtype=torch.float64) * 2 - 1) * move
                pos = cond.pos.clone()
                pos[:, k] = pos[:, k] + shift.to(pos.dtype).to(pos.device)
                attr = None
                if cond.attr is not None:
                    attr = cond.attr.clone()
                    delta = torch.randn(B, attr.shape[-1], generator=generator, dtype=torch.float64)
                    attr[:, k] = attr[:, k] + 0.5 * delta.to(attr.dtype).to(attr.device)
                variants.append(("moving it (and changing its attributes)", k, Conditions(pos, attr, cond.valid)))
        n = len(variants) + 1
        allc = Conditions.cat([cond] + [v[2] for v in variants])
        out = call_denoiser(fn, x.repeat(n, 1, 1, 1), s.repeat(n), allc, where, "fn").detach().view(n, B, C, H, W)
        tol = atol if atol is not None else _default_atol(out[0])
        d_old = distances(cond, (H, W), "chebyshev")  # [B, K, H, W]
        for v, (how, k, c_v) in enumerate(variants):
            far = d_old[:, k] > r
            if how.startswith("moving"):
                far = far & (distances(c_v, (H, W), "chebyshev")[:, k] > r)
            far = far & cond.valid[:, k, None, None]
            diff = (out[v + 1] - out[0]).abs().amax(1) * far  # [B, H, W]
            if float(diff.max()) > tol:
                b, i, j = (int(t) for t in torch.unravel_index(diff.argmax(), diff.shape))
                d = float(d_old[b, k, i, j])
                p = [round(float(t), 3) for t in cond.pos[b, k]]
                raise AssertionError(
                    f"not conditionally local at sigma = {label}: conditioner {k} of image {b} at (row, col) = "
                    f"{tuple(p)} changes output pixel (row {i}, col {j}) at Chebyshev distance {d:.3g} > {r:g} "
                    f"by {float(diff[b, i, j]):.3g} (tolerance {tol:.3g}) when {how}.")


# ----------------------------------------------------------------------------- projective composition
def assert_projective(
    fn: Callable[..., Tensor],
    x: Tensor,
    sigma: Tensor | float | Sequence[Tensor | float],
    cond: Conditions,
    rtol: float = 1e-5,
    *,
    atol: float | None = None,
) -> None:
    r"""Assert the one-pass identity: ``D(x | c_J) == D(x | none) + sum_k (D(x | c_k) - D(x | none))``.

    All ``K + 2`` passes (joint, ``none`` = ``cond.drop_all()``, the singletons ``cond.select(k)``) run in
    one batched call. Passes when ``|joint - composed| <= atol + rtol * max|joint|`` everywhere. Holds
    exactly for a local model whose conditioners are more than ``2 * conditioner_radius`` apart (the
    conditioner radius already includes the receptive radius, so no pixel sees two).

    Args:
        fn: denoiser ``D(x, sigma, cond)``.
        x: ``[B, C, H, W]``.
        sigma: a float, a ``[B]`` tensor, or a list of them.
        cond: ``Conditions`` with ``B`` sets.
        rtol: relative tolerance.
        atol: absolute tolerance (default: scaled by the dtype).

    Raises:
        AssertionError: naming the pixel, the difference, sigma and the closest pair of conditioners.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> from localscore.testing import LocalConvDenoiser
        >>> D = LocalConvDenoiser(1, 2, cond_radius=1.0)          # reach 3: no pixel sees both if > 6 apart
        >>> x = torch.randn(1, 1, 12, 12)
        >>> assert_projective(D, x, 0.5, Conditions.from_lists([[(2.0, 2.0), (9.0, 10.0)]]))
        >>> try:
        ...     assert_projective(D, x, 0.5, Conditions.from_lists([[(2.0, 2.0), (2.0, 5.0)]]))
        ... except AssertionError as e:
        ...     print(str(e)[:52])
        not projective at sigma = 0.5: the joint pass differ
    """
    where = "assert_projective"
    _check_fn(fn, where)
    x = _check_x(fn, x, where)
    B, C, H, W = x.shape
    cond = _check_cond(cond, B, x, where)
    rtol = _check_tol(rtol, where, "rtol")  # type: ignore[assignment]
    if rtol is None:
        raise fail(where, "`rtol` is None, expected a finite number >= 0.")
    atol = _check_tol(atol, where, "atol")
    _check_passes(cond.num_slots + 2, x, where, f"{cond.num_slots} conditioner slots")
    singles = cond.singletons()
    K = len(singles)
    n = K + 2
    allc = Conditions.cat([cond, cond.drop_all(), *singles])
    for s in _sigmas(sigma, B, where, x):
        out = call_denoiser(fn, x.repeat(n, 1, 1, 1), s.repeat(n), allc, where, "fn").detach().view(n, B, C, H, W)
        joint, none = out[0], out[1]
        composed = none + (out[2:] - none).sum(0)
        diff = (joint - composed).abs()
        base = atol if atol is not None else _default_atol(joint)
        tol = base + rtol * float(joint.abs().max())
        if float(diff.max()) > tol:
            b, c, i, j = (int(t) for t in torch.unravel_index(diff.argmax(), diff.shape))
            pos = cond.pos[b][cond.valid[b]].double()
            if pos.shape[0] >= 2:
                dd = (pos[:, None] - pos[None]).abs().amax(-1) + torch.eye(pos.shape[0], dtype=pos.dtype) * 1e9
                pair = f"; the closest conditioners of image {b} are {float(dd.min()):.3g} px apart (Chebyshev)"
            else:
                pair = ""
            raise AssertionError(
                f"not projective at sigma = {_fmt_sigma(s)}: the joint pass differs from the composition of "
                f"{int(cond.valid[b].sum())} single-conditioner passes at pixel (channel {c}, row {i}, col {j}) of "
                f"image {b} by {float(diff[b, c, i, j]):.3g} (tolerance {tol:.3g}; joint value "
                f"{float(joint[b, c, i, j]):.3g}){pair}.")


# ----------------------------------------------------------------------------- permutation invariance
def assert_permutation_invariant(
    fn: Callable[..., Tensor],
    x: Tensor,
    sigma: Tensor | float | Sequence[Tensor | float],
    cond: Conditions,
    *,
    permutations: int | Sequence[Sequence[int]] = 3,
    atol: float | None = None,
    generator: torch.Generator | None = None,
) -> None:
    r"""Assert that reordering the conditioner slots (padding included) leaves ``D(x, sigma, cond)`` unchanged.

    Args:
        fn: denoiser ``D(x, sigma, cond)``.
        x: ``[B, C, H, W]``.
        sigma: a float, a ``[B]`` tensor, or a list of them.
        cond: ``Conditions`` with ``B`` sets and ``K`` slots.
        permutations: how many random permutations, or explicit permutations of ``range(K)``.
        atol: tolerance (default: scaled by the dtype and output size).
        generator: random source.

    Raises:
        AssertionError: naming the permutation, the pixel, sigma and the difference.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> first_only = lambda x, s, c: x + c.pos[:, :1, :1, None]     # looks at slot 0 only
        >>> c = Conditions.from_lists([[(1.0, 1.0), (3.0, 3.0)]])
        >>> try:
        ...     assert_permutation_invariant(first_only, torch.zeros(1, 1, 4, 4), 1.0, c, permutations=[[1, 0]])
        ... except AssertionError as e:
        ...     print(str(e)[:63])
        not permutation invariant at sigma = 1: reordering the slots as
    """
    where = "assert_permutation_invariant"
    _check_fn(fn, where)
    x = _check_x(fn, x, where)
    B, C, H, W = x.shape
    cond = _check_cond(cond, B, x, where)
    atol = _check_tol(atol, where, "atol")
    _check_generator(generator, where)
    K = cond.num_slots
    if isinstance(permutations, int) and not isinstance(permutations, bool):
        if permutations < 0:
            raise fail(where, f"`permutations` is {permutations}, expected an int >= 0 or a list of permutations.")
        _check_passes(permutations + 1, x, where, f"{permutations} permutations")
        perms = [torch.randperm(K, generator=generator).tolist() for _ in range(permutations)]
    else:
        if isinstance(permutations, (str, bytes)) or not isinstance(permutations, (list, tuple)):
            raise fail(where, f"`permutations` is {describe(permutations)}, expected an int >= 0 (random "
                       f"permutations) or a list of permutations of range({K}).",
                       "e.g. permutations=3, or permutations=[[1, 0, 2]].")
        perms = []
        for p in permutations:
            ok = isinstance(p, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in p)
            if not ok or sorted(p) != list(range(K)):
                raise fail(where, f"permutation {describe(p)} is not a permutation of range({K}); expected a "
                           f"list of the {K} slot indices in some order.")
            perms.append(list(p))
        _check_passes(len(perms) + 1, x, where, f"{len(perms)} permutations")
    if not perms or K < 2:
        return
    variants = []
    for p in perms:
        idx = torch.as_tensor(p, device=cond.device)
        attr = None if cond.attr is None else cond.attr[:, idx]
        variants.append(Conditions(cond.pos[:, idx], attr, cond.valid[:, idx]))
    n = len(variants) + 1
    allc = Conditions.cat([cond, *variants])
    for s in _sigmas(sigma, B, where, x):
        out = call_denoiser(fn, x.repeat(n, 1, 1, 1), s.repeat(n), allc, where, "fn").detach().view(n, B, C, H, W)
        tol = atol if atol is not None else _default_atol(out[0])
        for v, p in enumerate(perms):
            diff = (out[v + 1] - out[0]).abs()
            if float(diff.max()) > tol:
                b, c, i, j = (int(t) for t in torch.unravel_index(diff.argmax(), diff.shape))
                raise AssertionError(
                    f"not permutation invariant at sigma = {_fmt_sigma(s)}: reordering the slots as {p} changed "
                    f"output pixel (channel {c}, row {i}, col {j}) of image {b} by {float(diff[b, c, i, j]):.3g} "
                    f"(tolerance {tol:.3g}).")
