r"""The specs of a composition: weights, sigma windows and masks, normalised once at construction.

A :class:`~localscore.compose.Composition` takes its weights, windows and masks in many forms (numbers,
tensors, callables of sigma, mask rules, lists with one entry per component). This module checks them once,
when the composition is built, and keeps them normalised: per-component coefficient sources
(:class:`WeightSpecs`), per-component windows, and a mask source (:class:`MaskSpecs`). At each call only the
parts that depend on the call are evaluated: callables of sigma, the shapes that depend on the batch, and the
values of tensors the caller may change in place (checked on the device, read back once at the end of the
call).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from .._checks import check_flag, check_tensor
from .._errors import describe, fail
from ..conditions import Conditions
from ..masks import MaskRule

# The public names; the normalised specs (WeightSpecs, MaskSpecs, check_windows) serve the package only.
__all__ = ["MaskSpec", "Strategy", "WeightSchedule", "WeightSpec"]

Strategy = Literal["auto", "sequential", "batched", "crop"]
"""How a composition is evaluated (see :class:`~localscore.compose.Composition`)."""

STRATEGIES = ("auto", "sequential", "batched", "crop")

WeightSpec = float | int | Tensor | Callable[[Tensor], Any] | Sequence[Any] | None
"""Weights of the components (see :class:`~localscore.compose.Composition`)."""

MaskSpec = Tensor | MaskRule | Callable[[Tensor], Any] | Sequence[Any] | None
"""Masks of the components (see :class:`~localscore.compose.Composition`)."""

Window = tuple[float, float]
"""A sigma window ``(sigma_lo, sigma_hi)``: a component is on for ``sigma_lo <= sigma <= sigma_hi``."""


# --------------------------------------------------------------------------------------------- weights
class WeightSchedule:
    r"""A weight that depends on the noise level: piecewise linear in ``log sigma``, constant outside.

    ``w(sigma) = values[0]`` for ``sigma <= sigmas[0]``, ``values[-1]`` for ``sigma >= sigmas[-1]``, and in
    between ``w = (1 - t) * values[i] + t * values[i + 1]`` with
    ``t = (log sigma - log sigmas[i]) / (log sigmas[i + 1] - log sigmas[i])`` on the knot interval
    ``sigmas[i] <= sigma <= sigmas[i + 1]``.

    Args:
        sigmas: increasing positive knots ``[N]`` (``N >= 1``; a sequence of floats or a tensor).
        values: the weights at the knots ``[N]``.

    Examples:
        >>> import torch
        >>> w = WeightSchedule([0.1, 10.0], [0.0, 2.0])
        >>> w(torch.tensor([0.01, 1.0, 100.0])).tolist()
        [0.0, 1.0, 2.0]
    """

    def __init__(self, sigmas: Sequence[float] | Tensor, values: Sequence[float] | Tensor) -> None:
        where = "WeightSchedule"
        s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
        v = torch.as_tensor(values, dtype=torch.float64).flatten()
        if s.numel() == 0 or s.numel() != v.numel():
            raise fail(where, f"`sigmas` has {s.numel()} knots and `values` {v.numel()}; expected the same "
                       "number, at least one.", "give one weight per knot.")
        if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()) or bool((s[1:] <= s[:-1]).any()):
            raise fail(where, f"`sigmas` is {s.tolist()[:8]}, expected strictly increasing positive finite "
                       "noise levels.", "sort the knots, e.g. `sorted(sigmas)`.")
        if not bool(torch.isfinite(v).all()):
            raise fail(where, f"`values` holds non-finite weights {v.tolist()[:8]}.", "pass finite weights.")
        self.sigmas = s
        self.values = v

    def __call__(self, sigma: Tensor) -> Tensor:
        """``[B]`` weights for noise levels ``sigma [B]`` (in ``sigma``'s dtype and device)."""
        sig = torch.as_tensor(sigma)
        log_s = sig.detach().to(torch.float64).log().reshape(-1)
        ls = self.sigmas.log().to(log_s.device)
        v = self.values.to(log_s.device)
        if ls.numel() == 1:
            out = v.expand(log_s.shape[0])
        else:
            idx = torch.searchsorted(ls, log_s.contiguous()).clamp(1, ls.numel() - 1)
            lo, hi = ls[idx - 1], ls[idx]
            t = ((log_s - lo) / (hi - lo)).clamp(0, 1)
            out = (1 - t) * v[idx - 1] + t * v[idx]
        dtype = sig.dtype if sig.is_floating_point() else torch.get_default_dtype()
        return out.to(dtype)

    def __repr__(self) -> str:
        return f"WeightSchedule(sigmas={self.sigmas.tolist()}, values={self.values.tolist()})"


def is_number(v: Any) -> bool:
    """Whether ``v`` is a Python int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v: Any, where: str) -> float:
    value = float(v)
    if not math.isfinite(value):
        raise fail(where, f"`weights` holds the non-finite value {value!r}.", "pass finite weights.")
    return value


def _finite_weights(w: Tensor, where: str) -> Tensor:
    values = w.detach()
    check_flag(~torch.isfinite(w), lambda: fail(
        where, f"`weights` holds non-finite values {values.flatten()[:6].tolist()}.", "pass finite weights."))
    return w


def _tensor_matrix(t: Tensor, shape: torch.Size, n: int, B: int, where: str) -> Tensor:
    """A ``weights`` tensor (already in the call's dtype and device) as ``[B, n]``."""
    if t.dim() == 0:
        return t.expand(B, n)
    if t.dim() == 1 and t.shape[0] == n:
        return t[None].expand(B, n)
    if t.dim() == 2 and t.shape[1] == n and t.shape[0] in (1, B):
        return t.expand(B, n)
    raise fail(where, f"`weights` has shape {tuple(shape)}, expected a scalar, [K] = [{n}] "
               f"(one per component) or [B, K] = [{B}, {n}].",
               "give one weight per component; per-image weights go in a [B, K] tensor or a list "
               "of [B] tensors.")


def _callable_matrix(value: Any, n: int, s: Tensor, where: str) -> Tensor:
    """What a ``weights`` callable returned, as ``[B, n]``."""
    B, dt, dev = s.shape[0], s.dtype, s.device
    if is_number(value):
        return torch.full((B, n), _number(value, where), dtype=dt, device=dev)
    if not isinstance(value, Tensor):
        raise fail(where, f"the `weights` callable returned {describe(value)}, expected a number, a [B] "
                   f"or a [B, K] = [{B}, {n}] tensor.")
    t = value.to(dtype=dt, device=dev)
    if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1):
        w = t.reshape(1, 1).expand(B, n)
    elif t.dim() == 1 and t.shape[0] == B:
        w = t[:, None].expand(B, n)
    elif t.dim() == 2 and t.shape[1] == n and t.shape[0] in (1, B):
        w = t.expand(B, n)
    else:
        raise fail(where, f"the `weights` callable returned shape {tuple(t.shape)}, expected a scalar, "
                   f"[B] = [{B}] or [B, K] = [{B}, {n}].")
    return _finite_weights(w, where)


def _column(item: Any, s: Tensor, where: str, j: int) -> Tensor:
    """Component ``j``'s weight (a number, a tensor, or what its callable returned) as ``[B]``."""
    B = s.shape[0]
    value = item(s) if (callable(item) and not isinstance(item, Tensor)) else item
    if is_number(value):
        return torch.full((B,), _number(value, where), dtype=s.dtype, device=s.device)
    if isinstance(value, Tensor):
        t = value.to(dtype=s.dtype, device=s.device)
        if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1):
            return _finite_weights(t.reshape(1).expand(B), where)
        if t.dim() == 1 and t.shape[0] == B:
            return _finite_weights(t, where)
        raise fail(where, f"the weight of component {j} has shape {tuple(t.shape)}, expected a scalar or "
                   f"[B] = [{B}] (one per image).")
    raise fail(where, f"the weight of component {j} is {describe(value)}, expected a number, a [B] tensor or "
               "a callable of sigma returning one.")


class WeightSpecs:
    """A weight spec checked and normalised once: evaluates to the ``[B, n]`` weights of a call.

    The forms (see :class:`~localscore.compose.Composition`): ``None`` (all ``1``), a number, a tensor
    (scalar, ``[n]`` or ``[B, n]``), a callable of sigma, or a list with one number, ``[B]`` tensor or callable
    per component. Numbers are checked and converted here; the shapes of tensors are checked here against
    everything but the batch size; callables, the batch size, and the values of tensors (which may change in
    place, e.g. when the weights are optimised) are checked at each call.

    Attributes:
        spec: the spec as given.
        kind: ``"ones"``, ``"number"``, ``"tensor"``, ``"callable"`` or ``"list"``.
        static: whether the weights are numbers (or ``None``): the same at every call.
    """

    def __init__(self, spec: Any, n: int, where: str) -> None:
        self.spec = spec
        self.n = n
        self.number: float | None = None
        self.items: list[Any] = []
        if spec is None:
            self.kind = "ones"
        elif is_number(spec):
            self.kind = "number"
            self.number = _number(spec, where)
        elif isinstance(spec, Tensor):
            self.kind = "tensor"
            batch = spec.shape[0] if spec.dim() == 2 else 1
            self.matrix(torch.ones(batch, dtype=torch.float64), where)  # shape and values, now
        elif callable(spec):
            self.kind = "callable"
        elif isinstance(spec, (list, tuple)):
            self.kind = "list"
            if len(spec) != n:
                raise fail(where, f"`weights` has {len(spec)} entries but there are {n} components.",
                           "give exactly one weight per component (or a single weight for all).")
            self.items = [self._item(item, j, where) for j, item in enumerate(spec)]
        else:
            raise fail(where, f"`weights` is {describe(spec)}, expected None, a number, a tensor, a callable of "
                       "sigma, or a list with one of these per component.")
        self.static = self.kind in ("ones", "number") or (self.kind == "list" and all(is_number(v) for v in self.items))

    @staticmethod
    def _item(item: Any, j: int, where: str) -> Any:
        if is_number(item):
            return _number(item, where)
        if not (isinstance(item, Tensor) or callable(item)):
            raise fail(where, f"the weight of component {j} is {describe(item)}, expected a number, a [B] "
                       "tensor or a callable of sigma.")
        if isinstance(item, Tensor) and (item.dim() > 1 or not bool(torch.isfinite(item).all())):
            raise fail(where, f"the weight of component {j} has shape {tuple(item.shape)} (or non-finite "
                       "values), expected a finite scalar or [B] tensor.")
        return item

    def values(self) -> tuple[Any, ...]:
        """The number weights, for comparing two specs by value (only meaningful when :attr:`static`)."""
        return (self.kind, self.number, tuple(self.items))

    def matrix(self, s: Tensor, where: str) -> Tensor:
        """The weights ``[B, n]`` at noise levels ``s [B]``, in ``s``'s dtype and device."""
        B, n, dt, dev = s.shape[0], self.n, s.dtype, s.device
        if self.kind == "ones":
            return torch.ones(B, n, dtype=dt, device=dev)
        if self.kind == "number":
            assert self.number is not None
            return torch.full((B, n), self.number, dtype=dt, device=dev)
        if self.kind == "tensor":
            return _finite_weights(_tensor_matrix(self.spec.to(dtype=dt, device=dev), self.spec.shape, n, B, where),
                                   where)
        if self.kind == "callable":
            return _callable_matrix(self.spec(s), n, s, where)
        cols = [_column(item, s, where, j) for j, item in enumerate(self.items)]
        return torch.stack(cols, dim=1) if cols else torch.zeros(B, 0, dtype=dt, device=dev)


# --------------------------------------------------------------------------------------------- windows
def check_windows(windows: Any, n: int, where: str) -> list[Window | None]:
    """Normalise a windows spec (``None``, one pair, or one pair or ``None`` per component) to ``n`` entries."""
    if windows is None:
        return [None] * n

    def one(w: Any, label: str) -> Window | None:
        if w is None:
            return None
        ok = (isinstance(w, (tuple, list)) and len(w) == 2 and all(is_number(v) for v in w))
        if not ok:
            raise fail(where, f"{label} is {describe(w)}, expected a pair (sigma_lo, sigma_hi) of numbers or None.",
                       "e.g. windows=(0.5, 80.0) switches a component on for 0.5 <= sigma <= 80 only.")
        lo, hi = float(w[0]), float(w[1])
        if math.isnan(lo) or math.isnan(hi) or lo < 0 or hi < lo:
            raise fail(where, f"{label} is ({lo}, {hi}), expected 0 <= sigma_lo <= sigma_hi.",
                       "use float('inf') as sigma_hi for 'no upper limit'.")
        return (lo, hi)

    if isinstance(windows, (tuple, list)) and len(windows) == 2 and all(is_number(v) for v in windows):
        w = one(windows, "`windows`")
        return [w] * n
    if not isinstance(windows, (tuple, list)):
        raise fail(where, f"`windows` is {describe(windows)}, expected None, one (sigma_lo, sigma_hi) pair, "
                   "or a list with one pair (or None) per component.")
    if len(windows) != n:
        raise fail(where, f"`windows` has {len(windows)} entries but there are {n} components.",
                   "give one (sigma_lo, sigma_hi) pair or None per component, or a single pair for all.")
    return [one(w, f"`windows[{j}]`") for j, w in enumerate(windows)]


# --------------------------------------------------------------------------------------------- masks
class MaskSpecs:
    """A mask spec checked and normalised once: evaluates to ``n`` per-component masks ``[B, 1 or C, H, W]``.

    The forms (see :class:`~localscore.compose.Composition`): ``None``, a ``[B, K, H, W]`` tensor, a mask rule
    placed with ``mask_cond``, a callable of sigma, or a list with one mask (tensor, callable or ``None``) per
    component. What depends on the call (the image size and batch, the device, finiteness of soft masks) is
    checked at each call.

    Attributes:
        kind: ``"none"``, ``"rule"``, ``"tensor"``, ``"callable"`` or ``"list"``.
    """

    def __init__(self, masks: Any, mask_cond: Conditions | None, n: int, where: str) -> None:
        self.kind: str
        self.items: list[Any] = []
        self.rule: Any = None
        self.tensor: Tensor | None = None
        self.fn: Any = None
        self.cond = mask_cond
        if mask_cond is not None and not isinstance(mask_cond, Conditions):
            raise fail(where, f"`mask_cond` is {describe(mask_cond)}, expected Conditions or None.")
        if masks is None:
            self.kind = "none"
            if mask_cond is not None:
                raise fail(where, "`mask_cond` was given without a mask rule in `masks`.",
                           "pass masks=DiscRule(r) (or BoxRule / GaussianRule) together with mask_cond.")
        elif isinstance(masks, MaskRule) and not isinstance(masks, Tensor):
            self._init_rule(masks, mask_cond, n, where)
        elif isinstance(masks, Tensor):
            self.kind = "tensor"
            check_tensor(masks.to(torch.get_default_dtype()) if masks.dtype == torch.bool else masks, where, "masks")
            if masks.dim() != 4 or masks.shape[1] != n:
                raise fail(where, f"`masks` has shape {tuple(masks.shape)}, expected [B, K, H, W] with K = {n} "
                           "(one channel per component).",
                           "for per-component masks [B, 1 or C, H, W] pass a list with one per component.")
            self.tensor = masks
        elif callable(masks):
            self.kind = "callable"
            self.fn = masks
        elif isinstance(masks, (list, tuple)):
            self._init_list(masks, n, where)
        else:
            raise fail(where, f"`masks` is {describe(masks)}, expected None, a [B, K, H, W] tensor, a mask rule "
                       "(with mask_cond), a callable of sigma, or a list with one mask per component.")
        if mask_cond is not None and self.kind != "rule":
            raise fail(where, "`mask_cond` is only used with a mask rule in `masks`.",
                       "drop `mask_cond`, or pass masks=DiscRule(...) / BoxRule(...) / GaussianRule(...).")
        self.n = n

    def _init_rule(self, rule: MaskRule, mask_cond: Conditions | None, n: int, where: str) -> None:
        self.kind = "rule"
        self.rule = rule
        if mask_cond is None:
            raise fail(where, "`masks` is a mask rule but no `mask_cond` was given to place it.",
                       "pass mask_cond=cond (one slot per component), or use `masked_from`.")
        if mask_cond.num_slots != n:
            raise fail(where, f"`mask_cond` has K = {mask_cond.num_slots} slots but there are {n} components; "
                       "expected one slot per component.")

    def _init_list(self, masks: Sequence[Any], n: int, where: str) -> None:
        if len(masks) != n:
            raise fail(where, f"`masks` has {len(masks)} entries but there are {n} components.",
                       "give one mask (tensor [B, 1 or C, H, W], callable of sigma, or None) per component.")
        for j, m in enumerate(masks):
            if m is not None and not isinstance(m, Tensor) and not callable(m):
                raise fail(where, f"`masks[{j}]` is {describe(m)}, expected a tensor [B, 1 or C, H, W], a "
                           "callable of sigma returning one, or None (no mask).")
        self.kind = "list"
        self.items = list(masks)

    @property
    def present(self) -> bool:
        """Whether there are masks at all."""
        return self.kind != "none"

    @property
    def static(self) -> bool:
        """Whether the masks depend on the image size alone: a rule placed by ``mask_cond`` (immutable) that
        declares ``fixed_size`` (``DiscRule``, ``BoxRule``, ``GaussianRule`` of a plain-number size). Not a
        tensor or callable spec, not a rule that declares nothing."""
        return self.kind == "rule" and getattr(self.rule, "fixed_size", False) is True

    def evaluate(self, x: Tensor, s: Tensor, where: str) -> list[Tensor | None]:
        """The ``n`` masks ``[B or 1, 1 or C, H, W]`` (``None``: no mask) for images ``x`` at noise levels ``s``."""
        n = self.n
        B, C, H, W = x.shape
        if self.kind == "none":
            return [None] * n
        if self.kind in ("rule", "tensor", "callable"):
            m, label = self._joint(x, s, where)
            m = self._check(m, (None, n, H, W), B, where, label, f"[B, K, H, W] = [{B}, {n}, {H}, {W}]", x.device)
            return [m[:, j : j + 1] for j in range(n)]
        out: list[Tensor | None] = []
        for j, item in enumerate(self.items):
            if item is None:
                out.append(None)
                continue
            m = item if isinstance(item, Tensor) else item(s)
            m = self._check(m, (None, None, H, W), B, where, f"`masks[{j}]`", f"[B, 1 or C, H, W] = [{B}, 1 or {C}, "
                            f"{H}, {W}]", x.device, channels=C)
            out.append(m)
        return out

    def _joint(self, x: Tensor, s: Tensor, where: str) -> tuple[Any, str]:
        """The ``[B, K, H, W]`` masks of a rule, tensor or callable spec, and how to name them in errors."""
        B, _, H, W = x.shape
        if self.kind == "tensor":
            return self.tensor, "`masks`"
        if self.kind == "callable":
            return self.fn(s), "the `masks` callable's output"
        assert self.cond is not None
        cond = self.cond
        if cond.device != x.device:
            raise fail(where, f"`mask_cond` is on {cond.device} but x is on {x.device}.",
                       "move it with `mask_cond.to(x.device)`.")
        if cond.batch_size not in (1, B):
            raise fail(where, f"`mask_cond` has B = {cond.batch_size} images but x has B = {B}.",
                       "pass one conditioner set per image (or one for all).")
        return self.rule(cond, (H, W), s if cond.batch_size == B else s[:1]), "the mask rule's output"

    @staticmethod
    def _check(m: Any, shape: tuple[int | None, ...], B: int, where: str, label: str, want: str,
               device: torch.device, channels: int | None = None) -> Tensor:
        if not isinstance(m, Tensor):
            raise fail(where, f"{label} is {describe(m)}, expected a tensor {want}.")
        if m.device != device:
            raise fail(where, f"{label} is on {m.device} but x is on {device}.", "move the masks to x's device.")
        ok = m.dim() == 4 and m.shape[0] in (1, B) and all(e is None or e == g for e, g in zip(shape[1:], m.shape[1:]))
        if ok and channels is not None:
            ok = m.shape[1] in (1, channels)
        if not ok:
            raise fail(where, f"{label} has shape {tuple(m.shape)}, expected {want} (batch 1 broadcasts).",
                       "build masks at the images' size, e.g. with localscore.masks.disc_masks(cond, x.shape[-2:], r).")
        if m.dtype == torch.bool:
            return m
        if not m.is_floating_point():
            raise fail(where, f"{label} has dtype {m.dtype}, expected bool or a floating dtype.")
        check_flag(~torch.isfinite(m), lambda: fail(
            where, f"{label} holds non-finite values.", "masks are weights in [0, 1]; pass finite values."))
        return m
