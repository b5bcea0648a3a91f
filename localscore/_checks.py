"""Input normalisers shared by every public function (private).

One place turns what users pass into the shapes the library computes with, and says clearly
what was wrong when it cannot. Every public function calls these first.

Checks of *values* (finiteness, signs, ranges) need the values on the host: on a GPU each such read
(``bool(t)``, ``.item()``, ``.tolist()``) waits for the device. So they are made at the boundary only:

* Outside a :class:`CheckScope` (a user calling a public function), a value check reads its result back
  and raises at once, as it always did.
* A public function whose body calls other checked functions opens a scope with :func:`checked_call`
  (samplers, compositions, adapters and networks do). Inside it, nested value checks do not read back: a
  tensor the scope *vouches for* (one the library derived from inputs it has already checked, see
  :meth:`CheckScope.vouch`) is not checked again, and any other check is recorded as a device-side flag.
  The outermost scope reads all its flags back with one sync when it ends and raises the first failure
  found (in call order), naming the sampler step where it happened.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

import torch
from torch import Tensor

from ._errors import LocalScoreError, describe, fail

__all__ = [
    "MAX_ELEMENTS",
    "CheckScope",
    "as_sigma",
    "check_elements",
    "check_finite",
    "check_flag",
    "check_image",
    "check_model",
    "check_not_meta",
    "check_same_device",
    "check_tensor",
    "checked_call",
    "current_scope",
    "trusted",
    "trusting_scope",
    "vouch",
]

ErrorFn = Callable[..., LocalScoreError]

MAX_ELEMENTS = 2**28
"""The default bound on the number of elements a function of the core allocates for one result (masks
``[B, K, H, W]``, distance maps, pixel grids, padded condition sets): 268 million, 1 GiB in float32.

Functions that size an allocation from their arguments estimate it from metadata first and raise a
:class:`~localscore.LocalScoreError` naming this limit above it (see :func:`check_elements`), instead of
attempting it. Each module that bounds sizes reads its own ``MAX_ELEMENTS`` (``localscore.masks.MAX_ELEMENTS``,
``localscore.conditions.MAX_ELEMENTS``) at call time, so a user with the memory raises it there.
"""


# ------------------------------------------------------------------------------------------ deferred checks
class CheckScope:
    """The value checks of one public call, settled with one host sync when the call ends (private).

    ``step`` (set by samplers) is stamped on every check recorded while it is set, and ``step_info(i)``
    describes step ``i`` in the error message (default ``"step i"``).
    """

    __slots__ = ("_entries", "_models", "_vouched", "step", "step_info", "where")

    def __init__(self, where: str) -> None:
        self.where = where
        self.step: int | None = None
        self.step_info: Callable[[int], str] | None = None
        self._entries: list[tuple[int | None, tuple[Tensor, ...], bool, ErrorFn, tuple[Any, ...]]] = []
        self._vouched: dict[int, Tensor] = {}
        self._models: dict[tuple[int, torch.dtype, torch.device], Any] = {}

    def check_model(self, model: Any, x: Tensor, where: str, name: str = "denoiser") -> None:
        """:func:`check_model`, once per scope for each model, dtype and device: a sampler's nested denoiser
        calls pay a dictionary lookup per step, not a walk of the model. The scope holds the model, so its
        ``id`` cannot be reused while the scope lives."""
        key = (id(model), x.dtype, x.device)
        if self._models.get(key) is model:
            return
        _check_model_now(model, x, where, name)
        self._models[key] = model

    def vouch(self, *tensors: Tensor) -> None:
        """Mark tensors as already checked (or derived from checked values): nested checks skip them.

        The scope holds them (so that their ``id`` cannot be reused) until :meth:`begin_step` or its end.
        """
        for t in tensors:
            self._vouched[id(t)] = t

    def vouched(self, t: Tensor) -> bool:
        """Whether ``t`` (this very tensor object) was vouched for in this scope."""
        return self._vouched.get(id(t)) is t

    def begin_step(self, step: int | None) -> None:
        """Stamp ``step`` on the checks recorded from now on, and forget the tensors vouched for so far (a
        sampler vouches for each step's inputs anew, so the scope never holds more than one step's tensors)."""
        self.step = step
        self._vouched.clear()

    def require_finite(self, t: Tensor, error: ErrorFn, *args: Any) -> None:
        """Record that ``t`` must hold only finite values (its minimum and maximum, computed on the device);
        ``error(*args)`` builds the error raised if it does not. Skipped for a tensor wrapped by a
        :mod:`torch.func` transform (vmap, jvp, grad): its values cannot be read back after the transform."""
        if _transformed(t):
            return
        try:
            lo, hi = torch.aminmax(t.detach() if t.requires_grad else t)  # NaN propagates; +-inf in max or min
        except RuntimeError:  # an empty tensor has nothing to check
            if t.numel() == 0:
                return
            raise
        self._entries.append((self.step, (lo, hi), True, error, args))

    def require_false(self, bad: Tensor, error: ErrorFn, *args: Any) -> None:
        """Record that the bool tensor ``bad`` (any shape) must be all False; ``error(*args)`` if not."""
        if bad.is_meta or bad.numel() == 0:
            return
        self._entries.append((self.step, (bad.detach().any(),), False, error, args))

    def settle(self) -> LocalScoreError | None:
        """Read every recorded check back (one sync) and return the error of the first that failed, if any.

        A handful of operations whatever the number of checks: the recorded values are stacked, reduced and
        read back together; only when that shows a failure are the checks read one by one to find the first.
        """
        entries = [e for e in self._entries if not e[1][0].is_meta]  # no values to check on "meta"
        self._entries = []
        if not entries:
            return None
        # Fast path, one read: the float64 sum of every recorded minimum and maximum is finite iff they all
        # are (float64 does not overflow on these float32 / half values; if it ever did, the slow path below
        # decides), and the count of failed flags is 0.
        finite = [v for _, values, fin, _, _ in entries if fin for v in values]
        flags = [values[0] for _, values, fin, _, _ in entries if not fin]
        try:
            parts = ([torch.stack(finite).double().sum()] if finite else []) + (
                [torch.stack(flags).sum().double()] if flags else [])
            summary = (parts[0] if len(parts) == 1 else torch.stack(parts)).reshape(-1).tolist()
            if math.isfinite(summary[0]) and (not flags or summary[-1] == 0):
                return None
        except RuntimeError:  # values on several devices: the slow path tells them apart
            pass
        # Slow path (an error is found, or the fast path could not decide): each check in call order.
        first = next((e for e in entries if not _passed(e[1], e[2])), None)
        if first is None:
            return None
        step, _, _, error, args = first
        err = error(*args)
        if step is None:
            return err
        info = self.step_info(step) if self.step_info is not None else f"step {step}"
        return LocalScoreError(f"{err}\n  Found at {info} of {self.where}, which checks values on the device "
                               "and raises once, at the end of the call.")


_FUNCTORCH_WRAPPED: Callable[[Tensor], bool] | None = getattr(
    getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)  # looked up once, not per check


def _transformed(t: Tensor) -> bool:
    """Whether ``t`` is wrapped by a :mod:`torch.func` transform (a batched or dual tensor of vmap / jvp / grad)."""
    return _FUNCTORCH_WRAPPED is not None and bool(_FUNCTORCH_WRAPPED(t))


def _passed(values: tuple[Tensor, ...], finite: bool) -> bool:
    """One recorded check, read back on its own (the slow path of :meth:`CheckScope.settle`)."""
    if finite:
        return all(math.isfinite(v) for v in torch.stack(values).double().tolist())
    return not bool(values[0])


_SCOPE: ContextVar[CheckScope | None] = ContextVar("localscore_check_scope", default=None)


def current_scope() -> CheckScope | None:
    """The active :class:`CheckScope`, or ``None`` outside every checked call."""
    return _SCOPE.get()


class checked_call:
    """``with checked_call(where) as scope:`` runs a public function's body in a :class:`CheckScope`.

    Inside an enclosing scope it joins it (nothing is settled here); the outermost one settles when the
    body ends, raising the first recorded failure. If the body raises, the recorded checks are settled
    first: a failure recorded earlier is the cause, and is raised (chained) instead.
    """

    __slots__ = ("_scope", "_token", "owned", "where")

    def __init__(self, where: str) -> None:
        self.where = where
        self.owned = False  # whether this call opened the scope (True) or joined an enclosing one
        self._token: Token[CheckScope | None] | None = None
        self._scope: CheckScope | None = None

    def __enter__(self) -> CheckScope:
        outer = _SCOPE.get()
        if outer is not None:
            return outer
        self.owned = True
        self._scope = CheckScope(self.where)
        self._token = _SCOPE.set(self._scope)
        return self._scope

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._token is None or self._scope is None:
            return
        _SCOPE.reset(self._token)
        self._token = None
        scope, self._scope = self._scope, None
        if exc is not None and not isinstance(exc, Exception):
            return  # KeyboardInterrupt and the like go through untouched
        try:
            err = scope.settle()
        except Exception:
            if exc is None:
                raise
            return  # reading the checks back failed too (a device error?): the body's exception goes on
        if err is not None:
            raise err from exc


class unchecked_section:
    """``with unchecked_section():`` runs user code (e.g. a sampler's callback) outside any scope, so
    the library calls it makes check their inputs at once, as calls from user code do."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _SCOPE.set(None)

    def __exit__(self, *args: Any) -> None:
        _SCOPE.reset(self._token)


def vouch(*tensors: Tensor) -> None:
    """Vouch for tensors in the active scope, if any (see :meth:`CheckScope.vouch`)."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.vouch(*tensors)


def trusted(x: Any, sigma: Any) -> bool:
    """Whether a checked call may take ``x`` and ``sigma`` as they are (the fast path of nested denoiser calls).

    True when the active scope vouches for both and they have one batch size: the library vouches only for
    images ``[B, C, H, W]`` and noise levels ``[B]`` it has checked or derived itself, on one device and in one
    dtype (a caller that changes either passes a new, unvouched tensor).
    """
    return trusting_scope(x, sigma) is not None


def trusting_scope(x: Any, sigma: Any) -> CheckScope | None:
    """The active scope when it trusts ``x`` and ``sigma`` (see :func:`trusted`), else ``None``: the fast path of a
    nested denoiser call, which goes on with the scope it got here (one context lookup per call)."""
    scope = _SCOPE.get()
    if scope is None:
        return None
    vouched = scope._vouched
    t, s = vouched.get(id(x)), vouched.get(id(sigma))  # the very objects x and sigma, if vouched for
    if t is None or s is None or t is not x or s is not sigma:
        return None
    return scope if s.shape[0] == t.shape[0] else None


def check_flag(bad: Tensor, error: ErrorFn) -> None:
    """Raise ``error()`` if the bool tensor ``bad`` holds a True: at once outside a scope, at its end inside."""
    scope = _SCOPE.get()
    if scope is None:
        if bad.device.type != "meta" and bool(bad.any()):
            raise error()
    else:
        scope.require_false(bad, error)


def check_elements(count: int, limit: int, where: str, what: str, fix: str, *, limit_name: str = "MAX_ELEMENTS"
                   ) -> None:
    """Raise before allocating when ``count`` elements (computed from metadata) exceed ``limit``.

    ``what`` describes the allocation (``"masks [B, K, H, W] = [1, 2, 10**9, 10**9]"``), ``limit_name`` names
    the setting that holds ``limit`` and ``fix`` says how to stay below it.
    """
    if count > limit:
        size = f"{count:.3g}" if count <= sys.float_info.max else f"about 10**{len(str(count)) - 1}"
        raise fail(where, f"{what} would hold {size} elements, over the limit {limit_name} = {limit:,} "
                   "(checked before allocating).",
                   f"{fix} (or raise {limit_name} if the memory is really there).")


def check_not_meta(t: Tensor, where: str, name: str) -> None:
    """Raise for a tensor on the ``meta`` device, which has a shape but no values to compute with."""
    if t.device.type == "meta":
        raise fail(where, f"argument `{name}` is on the meta device (a shape without values), but this function "
                   "computes with its values.",
                   f"create `{name}` on a real device, e.g. `{name}.to_empty(device='cpu')` filled with data, or "
                   "`torch.randn(shape, device='cpu')`.")


def _chain(obj: Any) -> list[Any]:
    """``obj`` and what it wraps, through the usual attributes (``inner``, ``denoiser``, ``model``,
    ``background``), at most 8 deep."""
    out: list[Any] = []
    while obj is not None and len(out) < 8 and all(o is not obj for o in out):
        out.append(obj)
        obj = next((getattr(obj, a) for a in ("inner", "denoiser", "model", "background")
                    if getattr(obj, a, None) is not None), None)
    return out


def _first_parameter(chain: list[Any]) -> Tensor | None:
    """The first floating-point parameter of the first :class:`torch.nn.Module` of the chain that has one
    (parameters only: buffers such as a DDPM table may keep another dtype by design)."""
    for obj in chain:
        if isinstance(obj, torch.nn.Module):
            p = next((t for t in obj.parameters() if t.is_floating_point()), None)
            if p is not None:
                return p
    return None


def check_model(model: Any, x: Tensor, where: str, name: str = "denoiser") -> None:
    """Raise when the parameters of ``model`` are in another dtype or on another device than ``x``.

    Inside a check scope (a sampler's or a composition's call) each model is checked once per dtype and device
    (:meth:`CheckScope.check_model`), so the per-step calls of a sampler pay a dictionary lookup.
    """
    scope = _SCOPE.get()
    if scope is not None:
        scope.check_model(model, x, where, name)
    else:
        _check_model_now(model, x, where, name)


def _check_model_now(model: Any, x: Tensor, where: str, name: str) -> None:
    """The check of :func:`check_model`, done now.

    Metadata only (no host sync): the first floating-point parameter of the model, found through the adapters'
    ``inner`` chain, is compared with ``x``. Models without parameters (functions, oracles) pass. The dtype is
    not compared under :func:`torch.autocast` for ``x``'s device, nor for a model that converts its inputs to its
    own dtype by design and says so with the class attribute ``casts_inputs = True`` (the diffusers adapter).
    """
    chain = _chain(model)
    p = _first_parameter(chain)
    if p is None:
        return
    if p.device != x.device:
        raise fail(where, f"`{name}` has its parameters on {p.device} but `x` is on {x.device}.",
                   f"move one to the other: `{name}.to({str(x.device)!r})` or `x.to({str(p.device)!r})`.")
    if p.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
        return
    if any(getattr(type(o), "casts_inputs", False) for o in chain):
        return
    raise fail(where, f"`{name}` has {p.dtype} parameters but `x` is {x.dtype}.",
               f"convert one to the other: `{name}.to({x.dtype})` or `x.to({p.dtype})`; for mixed "
               "precision, run the call under `torch.autocast`.")


def check_tensor(value: Any, where: str, name: str) -> Tensor:
    """Raise unless ``value`` is a floating-point tensor; return it."""
    if not isinstance(value, torch.Tensor):
        raise fail(
            where,
            f"argument `{name}` is {describe(value)}, expected a torch.Tensor.",
            f"pass `{name}` as a tensor, e.g. torch.as_tensor({name}, dtype=torch.float32).",
        )
    if not value.is_floating_point():
        raise fail(
            where,
            f"argument `{name}` has dtype {value.dtype}, expected a floating-point dtype.",
            f"convert it with `{name}.float()` (or `.double()` for float64 work).",
        )
    return value


def check_image(x: Any, where: str, name: str = "x", *, finite: bool = True) -> Tensor:
    """Raise unless ``x`` is a floating ``[B, C, H, W]`` tensor (finite unless ``finite=False``).

    Inside a :class:`CheckScope`, a 4-d tensor the scope vouches for passes at once (it was checked when the
    library derived it); any other is checked, its finiteness recorded rather than read back.
    """
    scope = _SCOPE.get()
    if scope is not None and scope.vouched(x) and x.dim() == 4:
        return x
    x = check_tensor(x, where, name)
    if x.dim() != 4:
        raise fail(
            where,
            f"argument `{name}` has shape {tuple(x.shape)}, expected [B, C, H, W] (4 dimensions).",
            f"add a batch dimension with `{name}[None]` for one image, or reshape to [B, C, H, W].",
        )
    if x.shape[0] == 0:
        raise fail(where, f"argument `{name}` has an empty batch (shape {tuple(x.shape)}).",
                   "pass at least one image.")
    check_not_meta(x, where, name)
    if finite:
        check_finite(x, where, name)
    return x


def check_finite(t: Tensor, where: str, name: str) -> None:
    """Raise if ``t`` holds NaN or infinite values.

    Inside a :class:`CheckScope` the check is skipped for a vouched tensor and otherwise recorded.
    """
    scope = _SCOPE.get()
    if scope is not None:
        if not scope.vouched(t):
            shape = tuple(t.shape)  # not `t`: a recorded check keeps no image alive
            scope.require_finite(t, lambda: fail(
                where, f"argument `{name}` holds NaN or infinite values (shape {shape}).",
                "find where the non-finite values come from (a diverging sampler step, a division by "
                "sigma = 0) and pass finite values."))
            scope.vouch(t)
        return
    if not bool(torch.isfinite(t).all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise fail(
            where,
            f"argument `{name}` holds {n_nan} NaN and {n_inf} infinite values (shape {tuple(t.shape)}).",
            "find where the non-finite values come from (a diverging sampler step, a division by "
            "sigma = 0) and pass finite values.",
        )


def as_sigma(
    sigma: Any,
    batch: int,
    where: str,
    *,
    like: Tensor | None = None,
    name: str = "sigma",
    allow_zero: bool = False,
) -> Tensor:
    """Normalise a noise level to a ``[B]`` tensor on ``like``'s device and dtype.

    Accepts a Python number, a 0-d tensor, a ``[1]`` tensor (broadcast to the batch) or a ``[B]``
    tensor. Raises for NaN, infinite or negative values, for zero unless ``allow_zero``, and for a
    length other than 1 or ``batch``. Inside a :class:`CheckScope` the value check of a tensor is skipped
    when the scope vouches for it and recorded otherwise; the result is vouched for.
    """
    scope = _SCOPE.get()
    if (scope is not None and isinstance(sigma, Tensor) and scope.vouched(sigma) and sigma.dim() == 1
            and sigma.shape[0] == batch
            and (like is None or (sigma.dtype == like.dtype and sigma.device == like.device))):
        return sigma  # the fast path inside a sampler step: a [B] tensor checked earlier in this call
    if isinstance(sigma, bool):
        raise fail(where, f"argument `{name}` is a bool, expected a noise level (a float or a [B] tensor).")
    if isinstance(sigma, (int, float)):
        try:
            value = float(sigma)
        except OverflowError:   # an int beyond the float range, e.g. 10**400
            value = math.inf
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise fail(
                where,
                f"argument `{name}` is {value!r}, expected a finite noise level "
                f"{'>= 0' if allow_zero else '> 0'}.",
                "noise levels are standard deviations of the added noise (EDM convention); "
                "pass a positive float or a [B] tensor of them.",
            )
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        device = like.device if like is not None else None
        full = torch.full((batch,), value, dtype=dtype, device=device)
        if scope is not None:
            scope.vouch(full)
        return full
    if not isinstance(sigma, torch.Tensor):
        raise fail(
            where,
            f"argument `{name}` is {describe(sigma)}, expected a float or a tensor of shape [B].",
            f"pass `{name}` as a float or torch.tensor([...]).",
        )
    if sigma.dim() > 1:
        raise fail(
            where,
            f"argument `{name}` has shape {tuple(sigma.shape)}, expected a scalar or [B] with B = {batch}.",
            f"flatten it with `{name}.reshape(-1)` if it holds one value per image.",
        )
    if sigma.dim() == 1 and sigma.shape[0] not in (1, batch):
        raise fail(
            where,
            f"argument `{name}` has {sigma.shape[0]} values, expected 1 or B = {batch} (one per image).",
            "pass one noise level per image in the batch, or a single one to broadcast.",
        )
    if like is not None and sigma.device != like.device:
        raise fail(
            where,
            f"argument `{name}` is on {sigma.device} but the images are on {like.device}.",
            f"move it with `{name}.to(x.device)`.",
        )
    trusted = scope is not None and scope.vouched(sigma)
    if not sigma.is_floating_point():
        sigma = sigma.to(like.dtype if like is not None else torch.get_default_dtype())
    if not trusted and sigma.device.type != "meta":
        bad = ~torch.isfinite(sigma) | (sigma < 0)
        if not allow_zero:
            bad = bad | (sigma == 0)
        values = sigma.detach()

        def error() -> LocalScoreError:
            return fail(
                where,
                f"argument `{name}` holds invalid noise levels {values.flatten()[:8].tolist()}; "
                f"expected finite values {'>= 0' if allow_zero else '> 0'}.",
                "noise levels are standard deviations (EDM convention); a sampler's final 0 is never "
                "passed to a denoiser.",
            )

        check_flag(bad, error)
    if like is not None and sigma.dtype != like.dtype:
        sigma = sigma.to(like.dtype)
    if sigma.dim() == 1 and sigma.shape[0] == batch:
        out = sigma  # already [B]
    else:
        out = sigma.reshape(-1).expand(batch) if sigma.numel() == 1 else sigma.reshape(batch)
    if scope is not None:
        scope.vouch(out)
    return out


def check_same_device(where: str, **tensors: Tensor | None) -> None:
    """Raise if the given tensors (``None`` skipped) are not all on one device."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    if not items:
        return
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise fail(
                where,
                f"argument `{name}` is on {t.device} but `{first_name}` is on {first.device}.",
                f"move everything to one device, e.g. `{name}.to({first_name}.device)`.",
            )


def check_shape(t: Tensor, expected: Sequence[int | None], where: str, name: str, meaning: str) -> None:
    """Raise unless ``t.shape`` matches ``expected`` (``None`` = any size)."""
    ok = t.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape))
    if not ok:
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise fail(
            where,
            f"argument `{name}` has shape {tuple(t.shape)}, expected {want} ({meaning}).",
        )
