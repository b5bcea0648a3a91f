r"""Projective composition of per-object denoisers: guidance, negation, regional (masked) composition.

A *composition* turns a background denoiser ``D_bg`` and component denoisers ``D_1 .. D_n`` into one
denoiser::

    D_hat(x, sigma) = D_bg(x, sigma) + sum_j a_j(sigma) * ( D_j(x, sigma) - D_bg(x, sigma) )
    a_j[b, c, i, k]  = w_j[b](sigma) * on_j[b](sigma) * m_j[b, c, i, k](sigma)

with weights ``w_j`` (floats, tensors or functions of sigma), an on/off switch ``on_j`` (a sigma window, and
zero for a bound component whose conditioner set is empty for image ``b``) and optional masks ``m_j``
(``1`` everywhere for plain projective composition). Because Tweedie's map ``s = (D - x) / sigma**2`` is
affine in ``D`` and the ``a_j`` do not depend on ``x``, the same identity holds for scores:
``s_hat = s_bg + sum_j a_j (s_j - s_bg)``.

Under conditional projective composition (CPC, see ``docs/design.md``) the composition of single-object
denoisers with ``w_j = 1`` and the unconditional background *equals* the joint denoiser for any number of
objects. :func:`residual` measures how far a model is from that.

Every operator here returns a :class:`Composition`, which is itself a denoiser ``D(x, sigma, cond=None)``:
compositions nest, and every sampler accepts them. Components are denoisers: bound ones
(:func:`localscore.denoisers.bind`) or any callable of the protocol, called with ``cond=None``.

Evaluation strategies (identical results up to float round-off):

* ``sequential``: one call per denoiser (``n + 1`` calls).
* ``batched``: the background and the components that wrap the same network are stacked into one batch
  and evaluated in one call (chunked to ``max_batch`` images / ``max_pixels`` pixels per call).
* ``crop``: for local networks, each component is evaluated only on a crop around its support, dilated by
  the network's receptive radius, and pasted back; exact (see :class:`Composition`).
* ``auto``: ``crop`` when it is valid and cheaper, else ``batched`` on accelerators and ``sequential`` on
  the CPU (where stacking gives no parallelism and costs memory).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ._checks import as_sigma, check_flag, check_image, check_tensor, checked_call, vouch
from ._errors import describe, fail
from ._repr import summary_repr
from .conditions import Conditions, ConditionSet
from .denoisers import BoundDenoiser, bind, call_denoiser, conditioner_radius, receptive_radius
from .masks import MaskRule
from .oracles._base import AnalyticDistribution

__all__ = [
    "Composition",
    "CompositionResidual",
    "MaskSpec",
    "Strategy",
    "WeightSchedule",
    "WeightSpec",
    "guidance",
    "masked",
    "masked_from",
    "projective",
    "projective_from",
    "residual",
]

Strategy = Literal["auto", "sequential", "batched", "crop"]
_STRATEGIES = ("auto", "sequential", "batched", "crop")
_CROP_GAIN = 0.5  # auto crops when the crops hold at most this fraction of the pixels of full passes

WeightSpec = float | int | Tensor | Callable[[Tensor], Any] | Sequence[Any] | None
"""Weights of the components (see :class:`Composition`)."""

MaskSpec = Tensor | MaskRule | Callable[[Tensor], Any] | Sequence[Any] | None
"""Masks of the components (see :class:`Composition`)."""

Window = tuple[float, float]


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


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v: Any, where: str) -> float:
    value = float(v)
    if not math.isfinite(value):
        raise fail(where, f"`weights` holds the non-finite value {value!r}.", "pass finite weights.")
    return value


def _weight_matrix(spec: Any, n: int, s: Tensor, where: str) -> Tensor:
    """Resolve a weight spec to ``[B, n]`` in ``s``'s dtype and device."""
    B = s.shape[0]
    dt, dev = s.dtype, s.device
    if spec is None:
        return torch.ones(B, n, dtype=dt, device=dev)
    if _is_number(spec):
        return torch.full((B, n), _number(spec, where), dtype=dt, device=dev)
    if isinstance(spec, Tensor):
        t = spec.to(dtype=dt, device=dev)
        if t.dim() == 0:
            w = t.expand(B, n)
        elif t.dim() == 1 and t.shape[0] == n:
            w = t[None].expand(B, n)
        elif t.dim() == 2 and t.shape[1] == n and t.shape[0] in (1, B):
            w = t.expand(B, n)
        else:
            raise fail(where, f"`weights` has shape {tuple(spec.shape)}, expected a scalar, [K] = [{n}] "
                       f"(one per component) or [B, K] = [{B}, {n}].",
                       "give one weight per component; per-image weights go in a [B, K] tensor or a list "
                       "of [B] tensors.")
        return _finite_weights(w, where)
    if callable(spec):
        value = spec(s)
        if _is_number(value):
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
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) != n:
            raise fail(where, f"`weights` has {len(spec)} entries but there are {n} components.",
                       "give exactly one weight per component (or a single weight for all).")
        cols = [_weight_column(item, s, where, j) for j, item in enumerate(spec)]
        return torch.stack(cols, dim=1) if cols else torch.zeros(B, 0, dtype=dt, device=dev)
    raise fail(where, f"`weights` is {describe(spec)}, expected None, a number, a tensor, a callable of sigma, "
               "or a list with one of these per component.")


def _weight_column(item: Any, s: Tensor, where: str, j: int) -> Tensor:
    B = s.shape[0]
    value = item(s) if (callable(item) and not isinstance(item, Tensor)) else item
    if _is_number(value):
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


def _finite_weights(w: Tensor, where: str) -> Tensor:
    values = w.detach()
    check_flag(~torch.isfinite(w), lambda: fail(
        where, f"`weights` holds non-finite values {values.flatten()[:6].tolist()}.", "pass finite weights."))
    return w


def _check_static_weights(weights: Any, n: int, where: str) -> None:
    """Construction-time checks of weights whose shape is known (callables are checked when called)."""
    if weights is None:
        return
    if _is_number(weights):
        _number(weights, where)
        return
    if isinstance(weights, Tensor):
        batch = weights.shape[0] if weights.dim() == 2 else 1
        _weight_matrix(weights, n, torch.ones(batch, dtype=torch.float64), where)
        return
    if callable(weights):
        return
    if isinstance(weights, (list, tuple)):
        if len(weights) != n:
            raise fail(where, f"`weights` has {len(weights)} entries but there are {n} components.",
                       "give exactly one weight per component (or a single weight for all).")
        for j, item in enumerate(weights):
            if _is_number(item):
                _number(item, where)
            elif not (isinstance(item, Tensor) or callable(item)):
                raise fail(where, f"the weight of component {j} is {describe(item)}, expected a number, a [B] "
                           "tensor or a callable of sigma.")
            if isinstance(item, Tensor) and (item.dim() > 1 or not bool(torch.isfinite(item).all())):
                raise fail(where, f"the weight of component {j} has shape {tuple(item.shape)} (or non-finite "
                           "values), expected a finite scalar or [B] tensor.")
        return
    raise fail(where, f"`weights` is {describe(weights)}, expected None, a number, a tensor, a callable of sigma, "
               "or a list with one of these per component.")


def _check_windows(windows: Any, n: int, where: str) -> list[Window | None]:
    if windows is None:
        return [None] * n

    def one(w: Any, label: str) -> Window | None:
        if w is None:
            return None
        ok = (isinstance(w, (tuple, list)) and len(w) == 2 and all(_is_number(v) for v in w))
        if not ok:
            raise fail(where, f"{label} is {describe(w)}, expected a pair (sigma_lo, sigma_hi) of numbers or None.",
                       "e.g. windows=(0.5, 80.0) switches a component on for 0.5 <= sigma <= 80 only.")
        lo, hi = float(w[0]), float(w[1])
        if math.isnan(lo) or math.isnan(hi) or lo < 0 or hi < lo:
            raise fail(where, f"{label} is ({lo}, {hi}), expected 0 <= sigma_lo <= sigma_hi.",
                       "use float('inf') as sigma_hi for 'no upper limit'.")
        return (lo, hi)

    if isinstance(windows, (tuple, list)) and len(windows) == 2 and all(_is_number(v) for v in windows):
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
class _MaskSource:
    """Normalised mask spec: evaluates to ``n`` per-component masks ``[B, 1 or C, H, W]`` (or None)."""

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
            self.kind = "rule"
            self.rule = masks
            if mask_cond is None:
                raise fail(where, "`masks` is a mask rule but no `mask_cond` was given to place it.",
                           "pass mask_cond=cond (one slot per component), or use `masked_from`.")
            if mask_cond.num_slots != n:
                raise fail(where, f"`mask_cond` has K = {mask_cond.num_slots} slots but there are {n} components; "
                           "expected one slot per component.")
        elif isinstance(masks, Tensor):
            self.kind = "tensor"
            t = check_tensor(masks.to(torch.get_default_dtype()) if masks.dtype == torch.bool else masks,
                             where, "masks")
            if t.dim() != 4 or t.shape[1] != n:
                raise fail(where, f"`masks` has shape {tuple(masks.shape)}, expected [B, K, H, W] with K = {n} "
                           "(one channel per component).",
                           "for per-component masks [B, 1 or C, H, W] pass a list with one per component.")
            self.tensor = masks
        elif callable(masks):
            self.kind = "callable"
            self.fn = masks
        elif isinstance(masks, (list, tuple)):
            if len(masks) != n:
                raise fail(where, f"`masks` has {len(masks)} entries but there are {n} components.",
                           "give one mask (tensor [B, 1 or C, H, W], callable of sigma, or None) per component.")
            for j, m in enumerate(masks):
                if m is not None and not isinstance(m, Tensor) and not callable(m):
                    raise fail(where, f"`masks[{j}]` is {describe(m)}, expected a tensor [B, 1 or C, H, W], a "
                               "callable of sigma returning one, or None (no mask).")
            self.kind = "list"
            self.items = list(masks)
        else:
            raise fail(where, f"`masks` is {describe(masks)}, expected None, a [B, K, H, W] tensor, a mask rule "
                       "(with mask_cond), a callable of sigma, or a list with one mask per component.")
        if mask_cond is not None and self.kind != "rule":
            raise fail(where, "`mask_cond` is only used with a mask rule in `masks`.",
                       "drop `mask_cond`, or pass masks=DiscRule(...) / BoxRule(...) / GaussianRule(...).")
        self.n = n

    @property
    def present(self) -> bool:
        return self.kind != "none"

    def evaluate(self, x: Tensor, s: Tensor, where: str) -> list[Tensor | None]:
        n = self.n
        B, C, H, W = x.shape
        if self.kind == "none":
            return [None] * n
        if self.kind in ("rule", "tensor", "callable"):
            if self.kind == "rule":
                assert self.cond is not None
                cond = self.cond
                if cond.device != x.device:
                    raise fail(where, f"`mask_cond` is on {cond.device} but x is on {x.device}.",
                               "move it with `mask_cond.to(x.device)`.")
                if cond.batch_size not in (1, B):
                    raise fail(where, f"`mask_cond` has B = {cond.batch_size} images but x has B = {B}.",
                               "pass one conditioner set per image (or one for all).")
                m = self.rule(cond, (H, W), s if cond.batch_size == B else s[:1])
                label = "the mask rule's output"
            elif self.kind == "tensor":
                m = self.tensor
                label = "`masks`"
            else:
                m = self.fn(s)
                label = "the `masks` callable's output"
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


# --------------------------------------------------------------------------------------------- evaluation plumbing
@dataclass
class _Job:
    """One denoiser evaluation: ``fn(x, s, cond)``, grouped with others of the same key."""

    key: tuple[Any, ...]
    fn: Any
    x: Tensor
    s: Tensor
    cond: ConditionSet | None
    name: str


def _target(d: Any, B: int, device: torch.device) -> tuple[Any, ConditionSet | None, bool]:
    """``(network, conditioner set tiled to B or None, bound?)`` for a denoiser (any bound one: objects, prompts)."""
    if isinstance(d, BoundDenoiser):
        return d.inner, d.conditions_for(B, device), True
    return d, None, False


def _crop_blocker(d: Any) -> str | None:
    """Why network ``d`` cannot be evaluated on crops (``None`` if nothing says it cannot).

    Walks the ``inner`` chain: a network with a fixed image shape (an analytic oracle) or one that declares
    ``translation_equivariant = False`` (coordinate channels, absolute position embeddings) is never cropped.
    """
    seen: set[int] = set()
    obj = d
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        if getattr(obj, "translation_equivariant", None) is False:
            return f"{type(obj).__name__} declares translation_equivariant = False"
        if isinstance(obj, AnalyticDistribution):
            return f"{type(obj).__name__} is defined on a fixed image shape {tuple(obj.shape)}"
        if isinstance(obj, BoundDenoiser):
            return "it wraps a bound denoiser whose conditions are in full-image coordinates"
        obj = getattr(obj, "inner", None)
    return None


def _group_key(fn: Any, cond: ConditionSet | None, extra: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    """Jobs of one key share calls: the same network, and conditioner sets that ``type(cond).cat`` joins."""
    if cond is None:
        return (id(fn), "none", *extra)
    return (id(fn), "cond", type(cond), getattr(cond, "attr_dim", None), *extra)


def _chunks(n: int, per_item_pixels: int, max_batch: int | None, max_pixels: int | None) -> list[slice]:
    size = n
    if max_batch is not None:
        size = min(size, max_batch)
    if max_pixels is not None:
        size = min(size, max(1, max_pixels // max(1, per_item_pixels)))
    size = max(1, size)
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _run_jobs(jobs: list[_Job], where: str, *, merge: bool, max_batch: int | None,
              max_pixels: int | None) -> list[Tensor]:
    """Evaluate every job; with ``merge``, jobs of the same key share calls (concatenated batches)."""
    outs: list[Tensor | None] = [None] * len(jobs)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, job in enumerate(jobs):
        key = job.key if merge else (i,)
        groups.setdefault(key, []).append(i)
    for idx in groups.values():
        first = jobs[idx[0]]
        if len(idx) == 1:
            x, s, cond = first.x, first.s, first.cond
        else:
            x = torch.cat([jobs[i].x for i in idx])
            s = torch.cat([jobs[i].s for i in idx])
            conds = [jobs[i].cond for i in idx]
            cond = None if first.cond is None else type(first.cond).cat([c for c in conds if c is not None])
        pix = x.shape[-1] * x.shape[-2]
        parts = []
        chunks = _chunks(x.shape[0], pix, max_batch, max_pixels)
        for sl in chunks:
            xc, sc, cc = (x, s, cond) if len(chunks) == 1 else (x[sl], s[sl], None if cond is None else cond[sl])
            vouch(xc, sc)  # images, crops and noise levels taken from the checked inputs
            parts.append(call_denoiser(first.fn, xc, sc, cc, where, first.name))
        y = parts[0] if len(parts) == 1 else torch.cat(parts)
        start = 0
        for i in idx:
            m = jobs[i].x.shape[0]
            outs[i] = y[start : start + m]
            start += m
    return [o for o in outs if o is not None]


@dataclass
class _CropGroup:
    """The crops of one network, laid out on the device: what :meth:`Composition._eval_crop` gathers and pastes.

    ``N`` crops of ``h x w`` pixels: crop ``e`` is component ``jj[e]`` of image ``bi[e]``, read from rows
    ``rows[e]`` and columns ``cols[e]`` of the image, and pasted back where ``inside[e]`` (its effect box).
    """

    key: tuple[Any, ...]
    fn: Any
    jj: Tensor  # [N]
    bi: Tensor  # [N]
    rows: Tensor  # [N, h]
    cols: Tensor  # [N, w]
    inside: Tensor  # [N, h, w] bool
    cond: Conditions | None  # the crops' conditions, positions shifted into crop coordinates


@dataclass
class _CropPlan:
    """Every crop of a composition: one entry per (component, image) with a non-empty effect box.

    Entries hold ``(j, b, r0, r1, c0, c1, n0, n1, m0, m1)``: the component, the image, the inclusive effect
    box ``S`` and the inclusive box ``S`` dilated by the receptive radius and clipped to the image.
    ``groups`` is their layout on the device, built on first use (and kept with a cached plan).
    """

    entries: list[tuple[int, ...]]
    groups: list[_CropGroup] | None = None


@dataclass
class _Static:
    """What a composition whose activity does not depend on sigma (number weights, no windows, no masks)
    keeps per input batch, dtype and device, so that its calls read nothing back from the device.

    ``values`` (the number weights, ``skip_empty``) and ``refs`` (the background and components, the models
    and conditions they bind) are what it was computed from: a call where one differs recomputes it.
    ``act[b][j]`` says whether component ``j`` acts on image ``b``.
    """

    values: tuple[Any, ...]
    refs: tuple[Any, ...]
    coef: Tensor  # [B, n]
    act: list[list[bool]]
    index: dict[int, Tensor]  # component -> the images it acts on, when not all
    choice: dict[tuple[Any, ...], tuple[str, _CropPlan | None]]  # (H, W, declarations) -> what "auto" resolves to
    plans: dict[tuple[Any, ...], _CropPlan | None]  # (H, W, declarations, strict) -> the crop plan


# --------------------------------------------------------------------------------------------- the operator
class Composition:
    r"""A composed denoiser ``D_hat(x, sigma) = D_bg + sum_j a_j * (D_j - D_bg)`` (see the module doc).

    Line by line, for ``x [B, C, H, W]`` and ``sigma [B]``, :meth:`__call__` computes::

        w   = weights resolved at sigma                               # [B, n]
        on  = window_lo_j <= sigma <= window_hi_j                     # [B, n] bool (True without a window)
              and (bound component j has a valid conditioner in image b, when skip_empty)
        a_j = (w[:, j] * on[:, j]).view(B, 1, 1, 1) * m_j(sigma)      # m_j = 1 without masks
        D_hat = D_bg(x, sigma) + sum_j a_j * (D_j(x, sigma) - D_bg(x, sigma))

    A component with ``a_j = 0`` for an image is not evaluated for it (where the strategy allows) and adds
    exactly zero. The score of ``D_hat`` is ``s_bg + sum_j a_j (s_j - s_bg)``.

    Args:
        background: the denoiser ``D_bg`` (e.g. ``bind(D, cond.drop_all())``, the unconditional model).
        components: the denoisers ``D_j`` (e.g. ``bind(D, c_j)``), each called with ``cond=None``.
        weights: ``None`` (all ``1``); a number (all components); a tensor ``[K]`` (one per component),
            ``[B, K]`` or a scalar; a callable ``sigma [B] -> number, [B] or [B, K]``; or a list with one
            entry per component, each a number, a ``[B]`` tensor, or a callable ``sigma [B] -> number or
            [B]`` (e.g. a :class:`WeightSchedule`). Negative weights negate a component.
        windows: ``None``; one ``(sigma_lo, sigma_hi)`` pair for all components; or a list of pairs (or
            ``None``), one per component. A component is on only for ``sigma_lo <= sigma <= sigma_hi``.
        masks: ``None`` (projective composition); a list with one mask per component, each a tensor
            ``[B or 1, 1 or C, H, W]`` (bool or soft), a callable ``sigma [B] -> `` such a tensor, or
            ``None``; a tensor ``[B or 1, K, H, W]`` (channel ``j`` is component ``j``'s mask); a callable
            ``sigma -> [B, K, H, W]``; or a mask rule of :mod:`localscore.masks` (``DiscRule``, ``BoxRule``,
            ``GaussianRule``) evaluated at every call on ``mask_cond``.
        mask_cond: the conditions a mask rule is placed with, ``K`` = number of components.
        strategy: ``"auto"``, ``"sequential"``, ``"batched"`` or ``"crop"`` (see below).
        max_batch: at most this many images (or crops) per network call (the memory budget).
        max_pixels: at most this many ``batch * H * W`` pixels per network call (the memory budget for
            mixed image and crop sizes).
        skip_empty: a bound component whose conditioner set is empty (all padding) for an image
            contributes exactly zero for that image; by the protocol its output equals the unconditional
            model's, so this is only a difference when the background is not unconditional.

    Strategies (all compute the formula above):

    * ``sequential``: one call per denoiser that has work (background and each component).
    * ``batched``: denoisers that wrap the same network (``bind(D, c)`` of one ``D``) are stacked into one
      batch of ``(n + 1) B`` images with concatenated conditions and evaluated in one call (chunked to
      ``max_batch`` / ``max_pixels``). The network must treat padding slots as absent (the protocol).
    * ``crop``: the background is evaluated once on the full images; component ``j`` of image ``b`` is
      evaluated on a crop only. Requirements: every cropped component declares ``receptive_radius`` ``R``
      (its output at a pixel depends only on input pixels within Chebyshev distance ``R``), is translation
      equivariant (shifting the image and the conditioner positions shifts the output; conditioner
      positions are shifted into crop coordinates; a network that is not, e.g. one with coordinate
      channels, must declare ``translation_equivariant = False``, and analytic oracles, defined on one
      image shape, are never cropped), accepts smaller images, treats image borders locally (zero,
      reflect or replicate padding; not circular), and has a bounded *effect support* ``S_jb``: the box holding the
      non-zero entries of its mask, and/or, for ``bind(D, c)`` over the background ``bind(D, none)`` of the
      same ``D`` declaring ``conditioner_radius`` ``r``, the box ``pos +- r`` around the valid conditioners
      (where ``D(x|c) != D(x|none)`` can hold).

      *Exactness.* Let the crop ``Q`` be a box containing ``S`` dilated by ``R`` and clipped to the image.
      For a pixel ``i`` in ``S``, every input pixel within ``R`` of ``i`` is either inside ``Q`` or outside
      the image; in the second case ``Q`` touches the image border on that side, so the network sees the
      same padding there as on the full image. Hence the network's output at ``i`` on ``Q`` equals its
      output at ``i`` on the full image. Outside ``S``, ``a_j (D_j - D_bg) = 0`` (by the mask, or by the
      conditioner radius). So ``D_bg + a_j (D_j[Q] - D_bg)`` restricted to ``S`` and pasted back equals the
      full-image formula. Crops of one network share a size (the largest needed, placed inside the image,
      which only adds context), so they are evaluated as one batch.
    * ``auto``: ``crop`` when it is valid and its crops hold at most half the pixels of the ``n`` full
      component passes (the rest pays for the extra call); else ``batched`` on accelerators and
      ``sequential`` on the CPU, where a stacked batch buys no parallelism (measured in
      ``benchmarks/compose.py``).

    Host syncs: a call checks ``x`` and ``sigma`` once; the value checks inside it (component outputs
    finite, weights and soft masks finite) are computed on the device and read back together when the call
    ends (inside a sampler, when the sampler's call ends). Which component acts on which image needs no
    read-back when the weights are numbers (or ``None``) and there are no windows and no masks: it is
    computed at the first call for a batch size, dtype and device, and kept with the crop plan, so such a
    composition reads nothing back in a sampler's steps. Otherwise it is read back once per call (and the
    masks' boxes once more for ``crop``). Conditions are immutable: do not write into their tensors.

    Raises:
        LocalScoreError: on malformed arguments at construction, and at call time on images, noise
            levels, masks or weights of the wrong shape, or ``strategy="crop"`` when a component declares
            no receptive radius or has no bounded support; non-finite outputs, weights or masks at the end
            of the call.

    Examples:
        >>> import torch
        >>> from localscore.compose import Composition
        >>> bg = lambda x, s, c=None: torch.zeros_like(x)
        >>> d1 = lambda x, s, c=None: torch.ones_like(x)
        >>> d2 = lambda x, s, c=None: 2 * torch.ones_like(x)
        >>> comp = Composition(bg, [d1, d2], weights=[1.0, -0.5])
        >>> comp(torch.zeros(1, 1, 2, 2), 1.0)[0, 0, 0, 0].item()   # 0 + 1 * (1 - 0) - 0.5 * (2 - 0)
        0.0
    """

    #: Never evaluated on crops as a component of another composition: its conditions and masks are in
    #: full-image coordinates.
    translation_equivariant = False

    def __init__(
        self,
        background: Any,
        components: Sequence[Any],
        weights: WeightSpec = None,
        *,
        windows: Any = None,
        masks: MaskSpec = None,
        mask_cond: Conditions | None = None,
        strategy: Strategy = "auto",
        max_batch: int | None = None,
        max_pixels: int | None = None,
        skip_empty: bool = True,
    ) -> None:
        where = "Composition"
        if not callable(background):
            raise fail(where, f"`background` is {describe(background)}, expected a denoiser D(x, sigma, cond).",
                       "pass e.g. `bind(D, cond.drop_all())`, the unconditional model.")
        if isinstance(components, Tensor) or not isinstance(components, Sequence) or isinstance(components, str):
            raise fail(where, f"`components` is {describe(components)}, expected a list of denoisers.",
                       "wrap a single component in a list: `[bind(D, c)]`.")
        comps = list(components)
        for j, c in enumerate(comps):
            if not callable(c):
                raise fail(where, f"`components[{j}]` is {describe(c)}, expected a denoiser D(x, sigma, cond).")
        n = len(comps)
        if strategy not in _STRATEGIES:
            raise fail(where, f"`strategy` is {strategy!r}, expected one of {list(_STRATEGIES)}.")
        for name, v in (("max_batch", max_batch), ("max_pixels", max_pixels)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise fail(where, f"`{name}` is {v!r}, expected None or an int >= 1.")
        _check_static_weights(weights, n, where)
        self.background = background
        self.components = comps
        self.weights = weights
        self.windows = _check_windows(windows, n, where)
        self._masks = _MaskSource(masks, mask_cond, n, where)
        self.masks = masks
        self.mask_cond = mask_cond
        self.strategy: Strategy = strategy
        self.max_batch = max_batch
        self.max_pixels = max_pixels
        self.skip_empty = bool(skip_empty)
        # host-side facts kept between calls (see _Static and _host_cond); never part of the result
        self._static: dict[tuple[int, torch.dtype, torch.device], _Static] = {}
        self._hosts: dict[int, tuple[Conditions, list[list[list[float]]], list[list[bool]]]] = {}

    # ----------------------------------------------------------------- declared locality
    @property
    def receptive_radius(self) -> int | None:
        """The largest declared receptive radius of the parts, or ``None`` if any part declares none.

        Masks do not widen it (they are fixed in ``x``), so a composition of local models is local.
        """
        radii = [receptive_radius(d) for d in (self.background, *self.components)]
        if any(r is None for r in radii):
            return None
        return max(int(r) for r in radii if r is not None)

    def __len__(self) -> int:
        return len(self.components)

    def __repr__(self) -> str:
        return (f"Composition(background={self.background!r}, n_components={len(self.components)}, "
                f"masks={self._masks.kind}, strategy={self.strategy!r})")

    # ----------------------------------------------------------------- the denoiser
    def __call__(self, x: Tensor, sigma: Any, cond: Conditions | None = None) -> Tensor:
        """``D_hat(x [B, C, H, W], sigma [B] or float) -> [B, C, H, W]`` with ``self.strategy``."""
        return self.evaluate(x, sigma, cond, strategy=self.strategy)

    def evaluate(self, x: Tensor, sigma: Any, cond: Conditions | None = None, *,
                 strategy: Strategy | None = None) -> Tensor:
        """Evaluate the composition with an explicit ``strategy`` (default: the one set at construction).

        Args:
            x: ``[B, C, H, W]`` noisy images.
            sigma: ``[B]`` noise levels or a float.
            cond: must be ``None``: the components carry their own conditions.
            strategy: ``"auto"``, ``"sequential"``, ``"batched"`` or ``"crop"``.

        Returns:
            ``[B, C, H, W]``, the composed denoiser output.

        Examples:
            >>> import torch
            >>> from localscore import Conditions
            >>> D = lambda x, s, c=None: x + (0 if c is None else c.counts().view(-1, 1, 1, 1).to(x.dtype))
            >>> comp = projective_from(D, Conditions.from_lists([[(0.0, 0.0), (1.0, 1.0)]]))
            >>> x = torch.zeros(1, 1, 2, 2)
            >>> torch.equal(comp.evaluate(x, 1.0, strategy="sequential"), comp.evaluate(x, 1.0, strategy="batched"))
            True
        """
        where = "Composition"
        if cond is not None:
            raise fail(where, "a composition carries the conditions of its components; got another `cond`.",
                       "call it with cond=None (samplers do by default); build the composition from the "
                       "conditions you want, e.g. `projective_from(D, cond)`.")
        chosen: str = self.strategy if strategy is None else strategy
        if chosen not in _STRATEGIES:
            raise fail(where, f"`strategy` is {strategy!r}, expected one of {list(_STRATEGIES)}.")
        x = check_image(x, where)
        s = as_sigma(sigma, x.shape[0], where, like=x)
        with checked_call(where) as scope:
            scope.vouch(x, s)
            coef, masks, act, targets, static = self._prepare(x, s, where)
            plan: _CropPlan | None = None
            if chosen == "auto":
                chosen, plan = self._choose(x, masks, act, targets, where, static)
            if chosen == "crop":
                if plan is None:
                    plan = self._cached_crop_plan(x, masks, act, targets, where, static, strict=True)
                assert plan is not None
                return self._eval_crop(x, s, coef, masks, targets, plan, where)
            return self._eval_full(x, s, coef, masks, act, targets, where, static, merge=chosen == "batched")

    def plan(self, x: Tensor, sigma: Any) -> str:
        """The strategy a call would use for these inputs: ``self.strategy``, or what ``auto`` resolves to.

        Examples:
            >>> import torch
            >>> from localscore import Conditions
            >>> D = lambda x, s, c=None: x                       # declares no receptive radius: no crops
            >>> projective_from(D, Conditions.from_lists([[(0.0, 0.0)]])).plan(torch.zeros(1, 1, 4, 4), 1.0)
            'sequential'
        """
        where = "Composition.plan"
        x = check_image(x, where)
        s = as_sigma(sigma, x.shape[0], where, like=x)
        with checked_call(where) as scope:
            scope.vouch(x, s)
            _, masks, act, targets, static = self._prepare(x, s, where)
            if self.strategy != "auto":
                return self.strategy
            return self._choose(x, masks, act, targets, where, static)[0]

    # ----------------------------------------------------------------- internals
    def _is_static(self) -> bool:
        """Whether which component acts on which image is fixed: number weights, no windows, no masks.

        (Weight tensors are not: their values may change in place, e.g. when the weights are optimised.)
        """
        w = self.weights
        numbers = w is None or _is_number(w) or (isinstance(w, (list, tuple)) and all(_is_number(v) for v in w))
        return numbers and not self._masks.present and all(win is None for win in self.windows)

    def _prepare(self, x: Tensor, s: Tensor, where: str
                 ) -> tuple[Tensor, list[Tensor | None], list[list[bool]], list[Any], _Static | None]:
        """``(coef [B, n], masks, act, targets, static)``: ``act[b][j]`` on the host says whether component ``j``
        acts on image ``b``. A static composition (see :meth:`_is_static`) computes it once per batch size,
        dtype and device and keeps it (``static``); any other reads it back once per call."""
        B = x.shape[0]
        targets = [_target(d, B, x.device) for d in self.components]
        if not self._is_static():
            coef, masks, active = self._activity(x, s, targets, where)
            return coef, masks, active.tolist(), targets, None
        w = self.weights
        values = (tuple(w) if isinstance(w, (list, tuple)) else w, self.skip_empty)  # compared by value
        parts = (self.background, *self.components)  # compared by identity, with what they wrap
        refs = (*parts, *(getattr(d, "inner", None) for d in parts), *(getattr(d, "cond", None) for d in parts))
        key = (B, x.dtype, x.device)
        static = self._static.get(key)
        if (static is None or static.values != values or len(static.refs) != len(refs)
                or any(a is not b for a, b in zip(static.refs, refs))):
            coef, _, active = self._activity(x, s, targets, where)
            static = _Static(values, refs, coef, active.tolist(), {}, {}, {})
            self._static[key] = static
        return static.coef, [None] * len(self.components), static.act, targets, static

    def _activity(self, x: Tensor, s: Tensor, targets: list[Any], where: str
                  ) -> tuple[Tensor, list[Tensor | None], Tensor]:
        """``(coef [B, n], masks, active [B, n] bool)`` on the device."""
        B = x.shape[0]
        n = len(self.components)
        w = _weight_matrix(self.weights, n, s, where)  # [B, n]
        on = torch.ones(B, n, dtype=torch.bool, device=x.device)
        for j, win in enumerate(self.windows):
            if win is not None:
                on[:, j] = (s >= win[0]) & (s <= win[1])
        if self.skip_empty:
            for j, (_, c, bound) in enumerate(targets):
                if bound and c is not None:
                    on[:, j] &= c.valid.any(dim=1)
        coef = w * on.to(w.dtype)  # [B, n]
        masks = self._masks.evaluate(x, s, where)
        active = coef != 0
        for j, m in enumerate(masks):
            if m is not None:
                nz = m.reshape(m.shape[0], -1).ne(0).any(dim=1)
                active[:, j] &= nz.expand(B) if nz.shape[0] == 1 else nz
        return coef, masks, active

    def _host_cond(self, d: Any, B: int) -> tuple[list[list[list[float]]], list[list[bool]]] | None:
        """Positions and validity of a bound denoiser's conditions tiled to ``B`` images, as Python lists.

        Read back once per conditions object (conditions are immutable) and kept; ``None`` if ``d`` is not bound.
        """
        c = d.cond if isinstance(d, BoundDenoiser) and isinstance(d.cond, Conditions) else None
        if c is None:  # unbound, or a set without positions (prompts): no effect boxes from positions
            return None
        hit = self._hosts.get(id(c))
        if hit is None or hit[0] is not c:
            Bc, K = c.batch_size, c.num_slots
            flat = torch.cat([c.pos.detach().reshape(-1).double(), c.valid.reshape(-1).double()]).tolist()
            pos = [[flat[2 * (b * K + k) : 2 * (b * K + k) + 2] for k in range(K)] for b in range(Bc)]
            valid = [[flat[2 * Bc * K + b * K + k] != 0 for k in range(K)] for b in range(Bc)]
            hit = (c, pos, valid)
            self._hosts[id(c)] = hit
        _, pos, valid = hit
        Bc = len(pos)
        return [pos[b % Bc] for b in range(B)], [valid[b % Bc] for b in range(B)]

    def _bg_target(self, B: int, device: torch.device) -> tuple[Any, ConditionSet | None, bool]:
        return _target(self.background, B, device)

    def _eval_full(self, x: Tensor, s: Tensor, coef: Tensor, masks: list[Tensor | None], act: list[list[bool]],
                   targets: list[Any], where: str, static: _Static | None, *, merge: bool) -> Tensor:
        B = x.shape[0]
        jobs: list[_Job] = []
        fn_bg, c_bg, _ = self._bg_target(B, x.device)
        jobs.append(_Job(_group_key(fn_bg, c_bg), fn_bg, x, s, c_bg, "background"))
        used: list[tuple[int, Tensor | None]] = []
        for j, (fn, c, _) in enumerate(targets):
            rows = [b for b in range(B) if act[b][j]]
            if not rows:
                continue
            if len(rows) == B:
                jobs.append(_Job(_group_key(fn, c), fn, x, s, c, f"components[{j}]"))
                used.append((j, None))
            else:
                sel = static.index.get(j) if static is not None else None
                if sel is None:
                    sel = torch.tensor(rows, dtype=torch.long, device=x.device)
                    if static is not None:
                        static.index[j] = sel
                jobs.append(_Job(_group_key(fn, c), fn, x[sel], s[sel], None if c is None else c[sel],
                                 f"components[{j}]"))
                used.append((j, sel))
        outs = _run_jobs(jobs, where, merge=merge, max_batch=self.max_batch, max_pixels=self.max_pixels)
        d_bg = outs[0]
        out = d_bg
        for (j, idx), d_j in zip(used, outs[1:]):
            # a_j = w_j * on_j * m_j on the images the component acts on; D_hat += a_j * (D_j - D_bg)
            m = masks[j]
            if idx is None:
                a = coef[:, j].view(-1, 1, 1, 1)
                if m is not None:
                    a = a * m.to(x.dtype)
                out = out + a * (d_j - d_bg)
            else:
                a = coef[idx, j].view(-1, 1, 1, 1)
                if m is not None:
                    mm = m.to(x.dtype)
                    a = a * (mm if mm.shape[0] == 1 else mm[idx])
                out = out.index_add(0, idx, a * (d_j - d_bg[idx]))
        return out

    @staticmethod
    def _plan_key(x: Tensor, targets: list[Any]) -> tuple[Any, ...]:
        """What a crop plan depends on besides the activity: the image size and the networks' declarations
        (read on every call: a network's declared radii may change)."""
        fns = {id(fn): fn for fn, _, _ in targets}
        return (x.shape[-2], x.shape[-1],
                tuple((receptive_radius(fn), conditioner_radius(fn), _crop_blocker(fn)) for fn in fns.values()))

    def _choose(self, x: Tensor, masks: list[Tensor | None], act: list[list[bool]], targets: list[Any],
                where: str, static: _Static | None) -> tuple[str, _CropPlan | None]:
        H, W = x.shape[-2:]
        key = self._plan_key(x, targets) if static is not None else ()
        if static is not None and key in static.choice:
            return static.choice[key]
        result: tuple[str, _CropPlan | None] = (
            # On the CPU a stacked batch buys no parallelism and its activations fall out of cache: in
            # benchmarks/compose.py it was up to 1.7x slower than sequential calls at K = 16.
            ("sequential" if x.device.type == "cpu" else "batched"), None)
        plan = self._cached_crop_plan(x, masks, act, targets, where, static, strict=False)
        if plan is not None:
            full = sum(sum(row) for row in act) * H * W
            crop = sum(len(entries) * h * w for (h, w), entries in self._crop_groups(plan, targets).values())
            if crop <= _CROP_GAIN * full:
                result = ("crop", plan)
        if static is not None:
            static.choice[key] = result
        return result

    def _cached_crop_plan(self, x: Tensor, masks: list[Tensor | None], act: list[list[bool]], targets: list[Any],
                          where: str, static: _Static | None, *, strict: bool) -> _CropPlan | None:
        """:meth:`_crop_plan`, kept in ``static`` when there is one (it then depends on the image size only)."""
        if static is None:
            return self._crop_plan(x, masks, act, targets, where, strict=strict)
        key = (*self._plan_key(x, targets), strict)
        if key not in static.plans:
            static.plans[key] = self._crop_plan(x, masks, act, targets, where, strict=strict)
        return static.plans[key]

    def _crop_plan(self, x: Tensor, masks: list[Tensor | None], act: list[list[bool]], targets: list[Any],
                   where: str, *, strict: bool) -> _CropPlan | None:
        """The crops of every active (component, image) pair; ``None`` if some component cannot be cropped."""
        B, _, H, W = x.shape
        n = len(targets)
        radii: list[int] = []
        # Declarations of each distinct network, read once (bound components share their network's radii).
        decl: dict[int, tuple[int | None, int | None, str | None]] = {}
        for fn, _, _ in targets:
            if id(fn) not in decl:
                decl[id(fn)] = (receptive_radius(fn), conditioner_radius(fn), _crop_blocker(fn))
        for j in range(n):
            R = decl[id(targets[j][0])][0]
            if R is None and any(act[b][j] for b in range(B)):
                if strict:
                    raise fail(where, f"strategy 'crop' needs the receptive radius of components[{j}] "
                               f"({describe(self.components[j])}), which declares none.",
                               "set an int `receptive_radius` attribute on the network (output pixel i depends "
                               "only on input pixels within that Chebyshev distance), or use strategy='batched'.")
                return None
            radii.append(0 if R is None else int(R))
            blocker = decl[id(targets[j][0])][2] if any(act[b][j] for b in range(B)) else None
            if blocker is not None:
                if strict:
                    raise fail(where, f"strategy 'crop' cannot evaluate components[{j}] on crops: {blocker}.",
                               "use strategy='batched' (or 'auto', which only crops where it is exact).")
                return None
        # Effect boxes from the masks: first and last non-zero row and column, all masks at once.
        boxes: dict[tuple[int, int], list[int]] = {}
        with_mask = [j for j in range(n) if masks[j] is not None]
        if with_mask:
            big = max(H, W) + 1
            stacked = torch.stack([m.ne(0).any(dim=1).expand(B, H, W) for m in masks if m is not None])  # [nm, B, H, W]
            rows, cols = stacked.any(dim=3), stacked.any(dim=2)
            ar_h = torch.arange(H, device=x.device)
            ar_w = torch.arange(W, device=x.device)
            mb = torch.stack([torch.where(rows, ar_h, big).amin(-1), torch.where(rows, ar_h, -1).amax(-1),
                              torch.where(cols, ar_w, big).amin(-1), torch.where(cols, ar_w, -1).amax(-1)], -1)
            for i, row in enumerate(mb.tolist()):
                for b in range(B):
                    boxes[(with_mask[i], b)] = row[b]
        # Effect boxes from the conditioner radius: valid positions +- r (Chebyshev), for bind(D, c) over
        # the unconditional background of the same D.
        fn_bg, c_bg, _ = self._bg_target(B, x.device)
        bg_host = self._host_cond(self.background, B)
        bg_uncond = c_bg is None or bg_host is None or not any(any(v) for v in bg_host[1])
        for j, (fn, c, bound) in enumerate(targets):
            if not any(act[b][j] for b in range(B)):
                continue
            r = decl[id(fn)][1] if bound else None
            same_net = bound and fn is fn_bg and bg_uncond
            host = self._host_cond(self.components[j], B)
            if r is None or not same_net or c is None or host is None:
                if (j, 0) in boxes:
                    continue
                if strict:
                    reason = ("it is not a bound conditional denoiser (bind(D, c))" if not bound else
                              "it declares no `conditioner_radius`" if r is None else
                              "the background is not the unconditional model of the same network "
                              "(bind(D, cond.drop_all()))")
                    raise fail(where, f"strategy 'crop' needs a bounded support for components[{j}], but it has "
                               f"no mask and {reason}.",
                               "give the component a mask, declare `conditioner_radius` on the network, or use "
                               "strategy='batched'.")
                return None
            pos, valid = host
            for b in range(B):
                pts = [p for p, v in zip(pos[b], valid[b]) if v]
                if not pts:
                    cb = [1, 0, 1, 0]  # empty
                else:
                    cb = [math.floor(min(p[0] for p in pts) - r), math.ceil(max(p[0] for p in pts) + r),
                          math.floor(min(p[1] for p in pts) - r), math.ceil(max(p[1] for p in pts) + r)]
                old = boxes.get((j, b))
                boxes[(j, b)] = cb if old is None else [max(old[0], cb[0]), min(old[1], cb[1]),
                                                        max(old[2], cb[2]), min(old[3], cb[3])]
        entries: list[tuple[int, ...]] = []
        for j in range(n):
            R = radii[j]
            for b in range(B):
                if not act[b][j]:
                    continue
                r0, r1, c0, c1 = boxes[(j, b)]
                r0, r1, c0, c1 = max(r0, 0), min(r1, H - 1), max(c0, 0), min(c1, W - 1)
                if r0 > r1 or c0 > c1:
                    continue
                entries.append((j, b, r0, r1, c0, c1, max(r0 - R, 0), min(r1 + R, H - 1), max(c0 - R, 0),
                                min(c1 + R, W - 1)))
        return _CropPlan(entries)

    @staticmethod
    def _crop_groups(plan: _CropPlan, targets: list[Any]
                     ) -> dict[tuple[Any, ...], tuple[tuple[int, int], list[tuple[int, ...]]]]:
        """Entries grouped by network, with one crop size per group (the largest needed): one call each."""
        groups: dict[tuple[Any, ...], tuple[tuple[int, int], list[tuple[int, ...]]]] = {}
        for e in plan.entries:
            j = e[0]
            key = _group_key(targets[j][0], targets[j][1])
            (h, w), lst = groups.get(key, ((0, 0), []))
            lst.append(e)
            groups[key] = ((max(h, e[7] - e[6] + 1), max(w, e[9] - e[8] + 1)), lst)
        return groups

    def _crop_layout(self, plan: _CropPlan, targets: list[Any], H: int, W: int, dev: torch.device
                     ) -> list[_CropGroup]:
        """The plan's crops on the device, one group per network (built once per plan)."""
        if plan.groups is not None:
            return plan.groups
        out: list[_CropGroup] = []
        for key, ((h, w), entries) in self._crop_groups(plan, targets).items():
            # Crops placed inside the image: start at the needed box, moved in where it would overflow.
            rows_meta = [(e[0], e[1], e[2], e[3], e[4], e[5], min(e[6], H - h), min(e[8], W - w)) for e in entries]
            meta = torch.tensor(rows_meta, device=dev)  # [N, 8]
            jj, bi, box, top, left = meta[:, 0], meta[:, 1], meta[:, 2:6], meta[:, 6], meta[:, 7]
            rows = top[:, None] + torch.arange(h, device=dev)  # [N, h]
            cols = left[:, None] + torch.arange(w, device=dev)  # [N, w]
            r3, c3 = rows[:, :, None], cols[:, None, :]
            inside = ((r3 >= box[:, 0, None, None]) & (r3 <= box[:, 1, None, None])
                      & (c3 >= box[:, 2, None, None]) & (c3 <= box[:, 3, None, None]))  # [N, h, w]
            fn = targets[entries[0][0]][0]
            cc = None
            if key[1] == "cond":
                comps = sorted({e[0] for e in entries})
                local = {j: i for i, j in enumerate(comps)}
                conds = [targets[j][1] for j in comps]
                K = max(c.num_slots for c in conds)
                conds = [c.pad_to(K) for c in conds]
                li = torch.tensor([local[e[0]] for e in entries], device=dev)
                pos = torch.stack([c.pos for c in conds])[li, bi]  # [N, K, 2]
                valid = torch.stack([c.valid for c in conds])[li, bi]
                attr = None if conds[0].attr is None else torch.stack([c.attr for c in conds])[li, bi]
                shift = torch.stack([top, left], dim=1).to(pos.dtype)[:, None, :]
                cc = Conditions._derived(pos - shift, attr, valid)  # finite positions, shifted: still valid
            out.append(_CropGroup((*key, h, w), fn, jj, bi, rows, cols, inside, cc))
        plan.groups = out
        return out

    def _eval_crop(self, x: Tensor, s: Tensor, coef: Tensor, masks: list[Tensor | None],
                   targets: list[Any], plan: _CropPlan, where: str) -> Tensor:
        B, _, H, W = x.shape
        dev = x.device
        fn_bg, c_bg, _ = self._bg_target(B, dev)
        jobs: list[_Job] = [_Job(("bg",), fn_bg, x, s, c_bg, "background")]
        layout = self._crop_layout(plan, targets, H, W, dev)
        for g in layout:
            crops = x[g.bi[:, None, None], :, g.rows[:, :, None], g.cols[:, None, :]].permute(0, 3, 1, 2)  # N C h w
            jobs.append(_Job(g.key, g.fn, crops.contiguous(), s[g.bi], g.cond, "components"))
        outs = _run_jobs(jobs, where, merge=False, max_batch=self.max_batch, max_pixels=self.max_pixels)
        d_bg = outs[0]
        out = d_bg.permute(0, 2, 3, 1)  # [B, H, W, C] view
        stacked_masks = None
        if any(m is not None for m in masks):
            cm = max(m.shape[1] for m in masks if m is not None)
            one = torch.ones(1, dtype=x.dtype, device=dev).expand(B, cm, H, W)
            stacked_masks = torch.stack([one if m is None else m.to(x.dtype).expand(B, cm, H, W) for m in masks])
        for g, y in zip(layout, outs[1:]):
            b3, r3, c3 = g.bi[:, None, None], g.rows[:, :, None], g.cols[:, None, :]
            a = coef[g.bi, g.jj].view(-1, 1, 1, 1) * g.inside[..., None].to(x.dtype)  # [N, h, w, 1]
            if stacked_masks is not None:
                a = a * stacked_masks[g.jj[:, None, None], b3, :, r3, c3]  # [N, h, w, 1 or C]
            delta = a * (y.permute(0, 2, 3, 1) - d_bg[b3, :, r3, c3])
            out = out.index_put((b3, r3, c3), delta, accumulate=True)
        return out.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------- constructors
def projective(background: Any, components: Sequence[Any], weights: WeightSpec = None, *, windows: Any = None,
               strategy: Strategy = "auto", max_batch: int | None = None, max_pixels: int | None = None,
               skip_empty: bool = True) -> Composition:
    r"""Projective composition ``D_hat = D_bg + sum_j w_j * (D_j - D_bg)``; zero components give ``D_bg``.

    In score form (Tweedie is affine in ``D``): ``s_hat = s_bg + sum_j w_j * (s_j - s_bg)``. With
    ``w_j = 1``, single-object components and the unconditional background it is exact under CPC.
    See :class:`Composition` for ``weights``, ``windows``, the strategies and the memory budget.

    Args:
        background: the background denoiser ``D_bg``.
        components: the component denoisers ``D_j`` (bound conditional denoisers or any denoiser).
        weights: component weights (default all ``1``); negative weights negate.

    Returns:
        A :class:`Composition`, itself a denoiser ``D_hat(x [B, C, H, W], sigma [B]) -> [B, C, H, W]``.

    Examples:
        >>> import torch
        >>> from localscore import Conditions, bind
        >>> D = lambda x, s, c=None: x + (0 if c is None else c.counts().view(-1, 1, 1, 1))  # adds #objects
        >>> cond = Conditions.from_lists([[(1.0, 1.0), (2.0, 2.0), (0.0, 3.0)]])
        >>> comp = projective(bind(D, None), [bind(D, c) for c in cond.singletons()])
        >>> comp(torch.zeros(1, 1, 4, 4), 1.0)[0, 0, 0, 0].item()   # 0 + 3 * (1 - 0)
        3.0
    """
    return Composition(background, components, weights, windows=windows, strategy=strategy, max_batch=max_batch,
                       max_pixels=max_pixels, skip_empty=skip_empty)


def _check_cond_arg(cond: Any, where: str) -> Conditions:
    if not isinstance(cond, Conditions):
        raise fail(where, f"`cond` is {describe(cond)}, expected a localscore.Conditions.",
                   "build one with `Conditions.from_lists([[(row, col), ...], ...])`.")
    return cond


def _check_set_arg(cond: Any, where: str) -> ConditionSet:
    if not isinstance(cond, ConditionSet):
        raise fail(where, f"`cond` is {describe(cond)}, expected a conditioner set (localscore.Conditions, a "
                   "PromptConditions, or any localscore.conditions.ConditionSet).",
                   "build one with `Conditions.from_lists([[(row, col), ...], ...])`.")
    return cond


def projective_from(denoiser: Any, cond: ConditionSet, weights: WeightSpec = None, *, windows: Any = None,
                    strategy: Strategy = "auto", max_batch: int | None = None,
                    max_pixels: int | None = None) -> Composition:
    r"""Projective composition of one conditional denoiser's single-object outputs.

    ``D_hat(x, sigma) = D(x, sigma, none) + sum_j w_j * (D(x, sigma, c_j) - D(x, sigma, none))``

    with background ``bind(denoiser, cond.drop_all())`` and components ``bind(denoiser, c_j)`` for
    ``c_j in cond.singletons()``. Images may hold different numbers of objects: a padding slot gives an
    empty singleton, which contributes exactly zero (and is never evaluated or cropped).

    Args:
        denoiser: a conditional denoiser ``D(x, sigma, cond)``.
        cond: the conditioner sets ``[B, K]`` to compose, one per image (or ``B = 1`` for all images): any
            :class:`~localscore.conditions.ConditionSet` (objects, or the concepts of a prompt).
        weights: per-slot weights, see :class:`Composition` (``[K]``, ``[B, K]``, callables, schedules).
        windows: sigma windows, see :class:`Composition`.
        strategy: ``"auto"``, ``"sequential"``, ``"batched"`` or ``"crop"``.
        max_batch: memory budget, images (or crops) per call.
        max_pixels: memory budget, pixels per call.

    Returns:
        A :class:`Composition` with ``K`` components.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> D = lambda x, s, c=None: x + (0 if c is None else c.counts().view(-1, 1, 1, 1).to(x.dtype))
        >>> cond = Conditions.from_lists([[(1.0, 1.0), (2.0, 2.0)], [(0.0, 0.0)]])   # 2 and 1 objects
        >>> projective_from(D, cond)(torch.zeros(2, 1, 3, 3), 1.0)[:, 0, 0, 0].tolist()
        [2.0, 1.0]
    """
    where = "projective_from"
    if not callable(denoiser):
        raise fail(where, f"`denoiser` is {describe(denoiser)}, expected a conditional denoiser D(x, sigma, cond).")
    cond = _check_set_arg(cond, where)
    return Composition(bind(denoiser, cond.drop_all()), [bind(denoiser, c) for c in cond.singletons()], weights,
                       windows=windows, strategy=strategy, max_batch=max_batch, max_pixels=max_pixels)


def masked(background: Any, components: Sequence[Any], masks: MaskSpec, weights: WeightSpec = None, *,
           mask_cond: Conditions | None = None, windows: Any = None, strategy: Strategy = "auto",
           max_batch: int | None = None, max_pixels: int | None = None, skip_empty: bool = True) -> Composition:
    r"""Masked (regional) composition: each component acts only on its mask, the background elsewhere.

    ``D_hat = D_bg + sum_j w_j * m_j * (D_j - D_bg)``, with masks ``m_j [B, 1 or C, H, W]`` (bool, or soft
    in ``[0, 1]``; fixed, or functions of sigma; or a mask rule evaluated on ``mask_cond``). Masks of all
    ones give :func:`projective`; all zeros give the background. With disjoint hard masks and unit weights
    this is the regional composition ``D_hat = D_j`` on ``m_j`` and ``D_bg`` elsewhere.

    Args:
        background: the background denoiser.
        components: the component denoisers.
        masks: the masks, see :class:`Composition`.
        weights: component weights (default ``1``).
        mask_cond: the conditions a mask rule is evaluated on (``K`` = number of components).

    Returns:
        A :class:`Composition`.

    Examples:
        >>> import torch
        >>> bg = lambda x, s, c=None: torch.zeros_like(x)
        >>> fg = lambda x, s, c=None: torch.ones_like(x)
        >>> m = torch.tensor([[[[True, False]]]])             # [B=1, 1, H=1, W=2]
        >>> masked(bg, [fg], [m])(torch.zeros(1, 1, 1, 2), 1.0).flatten().tolist()
        [1.0, 0.0]
    """
    if masks is None:
        raise fail("masked", "`masks` is None; a masked composition needs masks.",
                   "use `projective(...)` for a composition without masks.")
    return Composition(background, components, weights, windows=windows, masks=masks, mask_cond=mask_cond,
                       strategy=strategy, max_batch=max_batch, max_pixels=max_pixels, skip_empty=skip_empty)


def masked_from(denoiser: Any, cond: Conditions, rule: MaskRule, weights: WeightSpec = None, *,
                windows: Any = None, strategy: Strategy = "auto", max_batch: int | None = None,
                max_pixels: int | None = None) -> Composition:
    r"""Masked composition of one conditional denoiser's single-object outputs, masks from a rule.

    ``D_hat = D(x, sigma, none) + sum_j w_j * m_j(sigma) * (D(x, sigma, c_j) - D(x, sigma, none))`` with
    ``m_j = rule(cond, (H, W), sigma)[:, j]`` (a :class:`~localscore.masks.DiscRule`,
    :class:`~localscore.masks.BoxRule` or :class:`~localscore.masks.GaussianRule`; sigma-dependent sizes
    are evaluated at each call). Padding slots have all-zero masks and contribute nothing.

    Args:
        denoiser: a conditional denoiser ``D(x, sigma, cond)``.
        cond: the conditioner sets ``[B, K]``.
        rule: the mask rule.
        weights: per-slot weights (default ``1``).

    Returns:
        A :class:`Composition` with ``K`` masked components.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> from localscore.masks import BoxRule
        >>> D = lambda x, s, c=None: x + (0 if c is None else c.counts().view(-1, 1, 1, 1).to(x.dtype))
        >>> cond = Conditions.from_lists([[(0.0, 0.0)]])
        >>> masked_from(D, cond, BoxRule(1))(torch.zeros(1, 1, 3, 3), 1.0)[0, 0].tolist()
        [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    where = "masked_from"
    if not callable(denoiser):
        raise fail(where, f"`denoiser` is {describe(denoiser)}, expected a conditional denoiser D(x, sigma, cond).")
    cond = _check_cond_arg(cond, where)
    if not isinstance(rule, MaskRule):
        raise fail(where, f"`rule` is {describe(rule)}, expected a mask rule (DiscRule, BoxRule, GaussianRule).",
                   "for mask tensors use `masked(background, components, masks)`.")
    return Composition(bind(denoiser, cond.drop_all()), [bind(denoiser, c) for c in cond.singletons()], weights,
                       windows=windows, masks=rule, mask_cond=cond, strategy=strategy, max_batch=max_batch,
                       max_pixels=max_pixels)


def guidance(cond: Any, uncond: Any, w: WeightSpec, *, window: Window | None = None,
             strategy: Strategy = "auto", max_batch: int | None = None) -> Composition:
    r"""Classifier-free guidance ``D_hat = D_u + w * (D_c - D_u)``.

    Convention: ``w = 1`` is the conditional model, ``w = 0`` the unconditional one, ``w > 1`` amplifies
    the condition (diffusers' ``guidance_scale``; Ho & Salimans' guidance strength is ``w - 1``). In score
    form ``s_hat = s_u + w (s_c - s_u)``, the score of ``p(x) p(c | x)^w``. ``w`` may be a number, a
    ``[B]`` tensor, or a function of sigma (e.g. a :class:`WeightSchedule`); ``window`` switches guidance
    off outside ``sigma_lo <= sigma <= sigma_hi`` (then ``D_hat = D_u``).

    Args:
        cond: the conditional denoiser (e.g. ``bind(D, c)``).
        uncond: the unconditional denoiser (e.g. ``bind(D, c.drop_all())``).
        w: the guidance weight.
        window: optional ``(sigma_lo, sigma_hi)``.

    Returns:
        A :class:`Composition` with one component.

    Examples:
        >>> import torch
        >>> Dc = lambda x, s, c=None: torch.ones_like(x)
        >>> Du = lambda x, s, c=None: torch.zeros_like(x)
        >>> guidance(Dc, Du, 3.0)(torch.zeros(1, 1, 1, 1), 1.0).item()
        3.0
    """
    weights: Any = [w] if not (isinstance(w, Sequence) and not isinstance(w, str)) else w
    return Composition(uncond, [cond], weights, windows=None if window is None else [window], strategy=strategy,
                       max_batch=max_batch, skip_empty=False)


# --------------------------------------------------------------------------------------------- residual
@summary_repr
@dataclass(frozen=True)
class CompositionResidual:
    """How far a model's joint output is from the projective composition of its single-object outputs.

    Attributes:
        per_image: ``[B]``, ``||D(x|c_J) - proj||_b / ||D(x|c_J) - D(x|none)||_b`` (0 where both are 0,
            ``inf`` where only the conditional signal is 0).
        per_pixel: ``[B, H, W]``, the channel norm of ``D(x|c_J) - proj`` at each pixel divided by the
            image's ``||D(x|c_J) - D(x|none)||``; its squares sum to ``per_image**2`` over the pixels.
        error_norm: ``[B]``, ``||D(x|c_J) - proj||`` over channels and pixels of each image.
        signal_norm: ``[B]``, ``||D(x|c_J) - D(x|none)||``.
    """

    per_image: Tensor
    per_pixel: Tensor
    error_norm: Tensor
    signal_norm: Tensor

    def to_dict(self) -> dict[str, Any]:
        """Plain Python numbers for logging: the per-image values and their mean and max (no pixel map)."""
        r = self.per_image.detach().double().cpu()
        return {
            "per_image": r.tolist(),
            "mean": float(r.mean()) if r.numel() else float("nan"),
            "max": float(r.max()) if r.numel() else float("nan"),
            "error_norm": self.error_norm.detach().double().cpu().tolist(),
            "signal_norm": self.signal_norm.detach().double().cpu().tolist(),
        }


def residual(denoiser: Any, x: Tensor, sigma: Any, cond: Conditions, *,
             strategy: Strategy = "auto", max_batch: int | None = None) -> CompositionResidual:
    r"""The composition residual of a conditional denoiser, per image and per pixel.

    With ``J = D(x, sigma, c_J)`` (one pass with every object), ``U = D(x, sigma, none)`` and
    ``P = U + sum_j (D(x, sigma, c_j) - U)`` (:func:`projective_from`, unit weights)::

        error_norm[b]  = ||J[b] - P[b]||                   (over channels and pixels)
        signal_norm[b] = ||J[b] - U[b]||
        per_image[b]   = error_norm[b] / signal_norm[b]
        per_pixel[b, i] = ||J[b, :, i] - P[b, :, i]|| / signal_norm[b]

    ``per_image`` is 0 where both norms are 0 (e.g. no object) and ``inf`` where only the signal is 0.
    Under CPC (and for a local model whose objects are more than twice the conditioner radius apart) it
    is 0 up to round-off.

    Args:
        denoiser: a conditional denoiser ``D(x, sigma, cond)``.
        x: ``[B, C, H, W]`` noisy images.
        sigma: ``[B]`` noise levels or a float.
        cond: ``[B, K]`` conditioner sets.
        strategy: the evaluation strategy of the composition.
        max_batch: memory budget of the composition's calls.

    Returns:
        A :class:`CompositionResidual`.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> D = lambda x, s, c=None: x + (0 if c is None else c.counts().view(-1, 1, 1, 1).to(x.dtype) ** 2)
        >>> cond = Conditions.from_lists([[(0.0, 0.0), (1.0, 1.0)]])       # joint adds 4, projection adds 2
        >>> residual(D, torch.zeros(1, 1, 2, 2), 1.0, cond).per_image.tolist()
        [0.5]
    """
    where = "residual"
    if not callable(denoiser):
        raise fail(where, f"`denoiser` is {describe(denoiser)}, expected a conditional denoiser D(x, sigma, cond).")
    x = check_image(x, where)
    cond = _check_cond_arg(cond, where)
    cond.check_batch(x.shape[0], where, device=x.device)
    s = as_sigma(sigma, x.shape[0], where, like=x)
    with checked_call(where) as scope:  # the three evaluations read their checks back once, at the end
        scope.vouch(x, s)
        joint = call_denoiser(denoiser, x, s, cond, where)
        none = call_denoiser(denoiser, x, s, cond.drop_all(), where)
        proj = projective_from(denoiser, cond, strategy=strategy, max_batch=max_batch)(x, s)
    err = joint - proj
    sig = joint - none
    err_norm = err.flatten(1).norm(dim=1)
    sig_norm = sig.flatten(1).norm(dim=1)
    safe = torch.where(sig_norm > 0, sig_norm, torch.ones_like(sig_norm))
    ratio = err_norm / safe
    zero = torch.zeros_like(ratio)
    inf = torch.full_like(ratio, float("inf"))
    per_image = torch.where(sig_norm > 0, ratio, torch.where(err_norm > 0, inf, zero))
    pix = err.norm(dim=1)  # [B, H, W]
    per_pixel = torch.where(sig_norm.view(-1, 1, 1) > 0, pix / safe.view(-1, 1, 1),
                            torch.where(pix > 0, torch.full_like(pix, float("inf")), torch.zeros_like(pix)))
    return CompositionResidual(per_image=per_image, per_pixel=per_pixel, error_norm=err_norm, signal_norm=sig_norm)
