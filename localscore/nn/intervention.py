r"""The locality intervention: mask a model's cross-attention by a rule, and the sampling-time local form.

Two tools, with different guarantees:

* :func:`enforce_locality` (*architectural*): finds the model's cross-attention layers and masks them by a
  :class:`~localscore.masks.MaskRule`, sharing the original weights. It is reversible and reports what it
  patched, what it found but could not patch, and the pathways that still carry information across the
  image (downsampling, GroupNorm, global self-attention, pooled set embeddings, token encoders). A model
  whose only conditioning is through patched layers and that is local in pixels (e.g.
  :class:`~localscore.nn.LocalConditionalDenoiser`) becomes exactly conditionally local with conditioner
  radius ``ceil(support) + R_after``. In a U-Net with downsampling, masking alone gives only a *coarse*
  locality: a masked layer at stride ``s`` lets a whole ``s x s`` cell see a conditioner, the following
  convolutions at that stride spread it ``s`` pixels per tap, and GroupNorm statistics, global
  self-attention and a pooled token embedding carry every conditioner everywhere.
* :func:`localize` (*sampling-time*): wraps any denoiser as the rule-gated projective composition
  ``D(x, none) + sum_j m_j * (D(x, {c_j}) - D(x, none))``, optionally evaluating each object's pass on a
  crop around it: a front-end on :func:`localscore.compose.masked_from` (its ``crop_size`` windows). Exactly
  conditionally local for every model (pixel ``p`` depends on conditioner ``j`` only where ``m_j(p) > 0``),
  at the price of ``K + 1`` passes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import as_sigma, check_image, checked_call
from .._errors import describe, fail
from ..compose import Composition, masked_from
from ..conditions import Conditions
from ..denoisers import call_denoiser, conditioner_radius, receptive_radius
from ..masks import MaskRule
from .attention import ConditioningLayer

__all__ = [
    "LocalityEnforced",
    "LocalityReport",
    "LocalizedDenoiser",
    "enforce_locality",
    "localize",
    "register_locality_patch",
    "share_weights_copy",
]

PatchFn = Callable[[nn.Module, MaskRule], Callable[[], None]]
"""``patch(module, rule) -> undo``: masks a third-party attention layer by ``rule``; ``undo()`` reverts it."""

_PATCHES: dict[type, PatchFn] = {}


def register_locality_patch(module_type: type, patch: PatchFn) -> None:
    """Teach :func:`enforce_locality` to mask a third-party attention layer type.

    ``patch(module, rule)`` must make the module's attention respect ``rule`` (a
    :class:`~localscore.masks.MaskRule`) and return a zero-argument function that undoes the change.
    Layers you can modify can instead implement the protocol directly: an attribute ``locality_rule`` and
    a method ``set_locality_rule(rule_or_None)``, as :class:`~localscore.nn.ConditioningLayer` does.

    Examples:
        >>> import torch
        >>> class MyAttention(torch.nn.Module):
        ...     rule = None
        >>> def patch(module, rule):
        ...     old, module.rule = module.rule, rule
        ...     return lambda: setattr(module, "rule", old)
        >>> register_locality_patch(MyAttention, patch)
        >>> from localscore.masks import DiscRule
        >>> model = torch.nn.Sequential(MyAttention())
        >>> local = enforce_locality(model, DiscRule(2.0))
        >>> local.report.patched, model[0].rule is None, local.inner[0].rule == DiscRule(2.0)
        (['0 (MyAttention, registered patch)'], True, True)
    """
    if not isinstance(module_type, type):
        raise fail("register_locality_patch", f"`module_type` is {describe(module_type)}, expected a class.")
    if not callable(patch):
        raise fail("register_locality_patch", f"`patch` is {describe(patch)}, expected patch(module, rule) -> undo.")
    _PATCHES[module_type] = patch


@dataclass
class LocalityReport:
    """What :func:`enforce_locality` did.

    Attributes:
        patched: names of the layers now masked by the rule (with how).
        unpatched: ``(name, reason)`` for attention layers it found but could not mask.
        nonlocal_pathways: ``(name, reason)`` for modules that still carry information across the image.
        support: the rule's support radius (pixels, Chebyshev), or ``None`` if unbounded.

    Examples:
        >>> from localscore.masks import DiscRule
        >>> from localscore.nn import LocalConditionalDenoiser
        >>> report = enforce_locality(LocalConditionalDenoiser(width=8, heads=2), DiscRule(2.0)).report
        >>> report.patched
        ['inner.blocks.0.cond (MaskedCrossAttention)', 'inner.blocks.1.cond (MaskedCrossAttention)']
        >>> report.exact
        True
    """

    patched: list[str] = field(default_factory=list)
    unpatched: list[tuple[str, str]] = field(default_factory=list)
    nonlocal_pathways: list[tuple[str, str]] = field(default_factory=list)
    support: float | None = None

    @property
    def exact(self) -> bool:
        """True when every conditioning layer was patched and nothing non-local remains."""
        return bool(self.patched) and not self.unpatched and not self.nonlocal_pathways

    @property
    def guarantee(self) -> str:
        """One sentence: which locality guarantee holds after the intervention."""
        if not self.patched:
            return "none: no cross-attention layer was found or patched; the model is unchanged."
        if self.exact:
            return ("exact: every conditioning layer sees only the conditioners the rule allows and the rest of "
                    "the model is local in pixels, so output pixel p depends on conditioner k only if "
                    "|pos_k - p|_inf <= ceil(support) + (receptive radius after the first conditioning layer).")
        return ("coarse: the patched layers see only the conditioners the rule allows (pooled to their "
                "resolution), but the pathways listed in nonlocal_pathways / unpatched still carry conditioner "
                "information beyond the rule's support; use localize() for an exact sampling-time guarantee.")

    def __str__(self) -> str:
        lines = [f"enforce_locality: {len(self.patched)} layer(s) patched, support radius {self.support}"]
        lines += [f"  patched    {n}" for n in self.patched]
        lines += [f"  UNPATCHED  {n}: {r}" for n, r in self.unpatched]
        by_reason: dict[str, list[str]] = {}
        for n, r in self.nonlocal_pathways:
            by_reason.setdefault(r, []).append(n)
        for r, names in by_reason.items():
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            lines.append(f"  non-local  {shown}: {r}")
        lines.append(f"  guarantee: {self.guarantee}")
        return "\n".join(lines)


def _nonlocal_reason(m: nn.Module) -> str | None:
    reason = getattr(m, "nonlocal_reason", None)
    if isinstance(reason, str):
        return reason
    if isinstance(m, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return "normalisation statistics over the whole feature map: every pixel moves every other pixel"
    if isinstance(m, nn.Conv2d) and any(s > 1 for s in m.stride):
        return (f"downsampling (stride {tuple(m.stride)}): a coarse cell mixes a block of pixels, and later "
                "convolutions at that resolution spread it by the stride per tap")
    if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return "pooling: mixes pixels over its window (or the whole image, for adaptive pooling)"
    return None


def _looks_like_attention(m: nn.Module) -> bool:
    if isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return True
    name = type(m).__name__.lower()
    return "attention" in name or getattr(m, "is_cross_attention", False) is True


def share_weights_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` whose parameters and buffers *are* the original's (no data copied).

    Changing the copy's module attributes (e.g. a layer's ``locality_rule``) leaves the original alone;
    training either one changes both, since they share the weight tensors.

    Examples:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2); c = share_weights_copy(m)
        >>> c is m, c.weight is m.weight
        (False, True)
    """
    memo: dict[int, Any] = {id(p): p for p in model.parameters()}
    memo.update({id(b): b for b in model.buffers()})
    return copy.deepcopy(model, memo)


class LocalityEnforced(nn.Module):
    """The model returned by :func:`enforce_locality`: the patched model as ``inner``, plus the report.

    Calling it calls ``inner`` with the same arguments. ``restore()`` (or leaving a ``with`` block) undoes
    every patch. Its ``receptive_radius`` / ``conditioner_radius`` are those the patched model declares
    (for :class:`~localscore.nn.LocalConditionalDenoiser` they account for the new rule).

    Attributes:
        inner: the patched model (a weight-sharing copy unless ``copy=False``).
        report: a :class:`LocalityReport`.

    Examples:
        >>> from localscore.masks import DiscRule
        >>> from localscore.nn import LocalConditionalDenoiser
        >>> D = LocalConditionalDenoiser(width=8, heads=2)           # disc radius 3.5: conditioner radius 9
        >>> with enforce_locality(D, DiscRule(1.0)) as local:
        ...     local.conditioner_radius                             # ceil(1.0) + 5
        6
    """

    def __init__(self, inner: nn.Module, report: LocalityReport, undo: list[Callable[[], None]]) -> None:
        super().__init__()
        self.inner = inner
        self.report = report
        self._undo = undo

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the patched model."""
        return self.inner(*args, **kwargs)

    @property
    def receptive_radius(self) -> int | None:
        """The patched model's declared receptive radius, or ``None``."""
        return receptive_radius(self.inner)

    @property
    def conditioner_radius(self) -> int | None:
        """The patched model's declared conditioner radius, or ``None``."""
        return conditioner_radius(self.inner)

    def restore(self) -> None:
        """Undo every patch (idempotent)."""
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> LocalityEnforced:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def extra_repr(self) -> str:
        return f"patched={len(self.report.patched)}, exact={self.report.exact}"


def enforce_locality(model: nn.Module, rule: MaskRule, *, copy: bool = True) -> LocalityEnforced:
    r"""The causal intervention: mask every cross-attention layer of ``model`` by ``rule``.

    Walks ``model``'s modules. A layer that implements the locality protocol (``locality_rule`` and
    ``set_locality_rule``, e.g. :class:`~localscore.nn.MaskedCrossAttention`) or whose type was registered
    with :func:`register_locality_patch` is patched: its mask becomes ``mask * rule(cond, (H, W), sigma)``,
    pooled to the layer's resolution (a coarse cell sees a conditioner if any of its pixels does). Other
    attention layers are listed as *unpatched*; downsampling, whole-image normalisation and modules with a
    ``nonlocal_reason`` attribute are listed as *non-local pathways*.

    The result shares the original weights: fine-tuning it afterwards (the usual next step, since the
    model was trained without the mask) also changes the original. Deep-copy the model first to keep both.
    A layer that already had a rule gets ``rule`` instead (restored on :meth:`LocalityEnforced.restore`); the
    layer's own mask (e.g. the local network's) always stays, so the result is never less local.

    Args:
        model: any ``nn.Module`` (e.g. :class:`~localscore.nn.GlobalConditionalDenoiser`).
        rule: a :class:`~localscore.masks.MaskRule` (``DiscRule``, ``BoxRule``, ``GaussianRule`` or your own).
        copy: patch a weight-sharing copy (default; the original keeps working unmasked) instead of
            ``model`` itself.

    Returns:
        :class:`LocalityEnforced`: call it like the model; ``.report`` says what was done; ``.restore()``
        or a ``with`` block reverts it.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> from localscore.masks import DiscRule
        >>> from localscore.nn import GlobalConditionalDenoiser
        >>> D = GlobalConditionalDenoiser(base_width=8, channel_mult=(1, 2), attention_levels=(0, 1), attr_dim=0,
        ...                               token_dim=8, heads=2, groups=4)
        >>> local = enforce_locality(D, DiscRule(2.0))
        >>> len(local.report.patched), local.report.exact
        (5, False)
        >>> y = local(torch.randn(1, 3, 8, 8), 1.0, Conditions.from_lists([[(2.0, 2.0)]]))
        >>> local.restore()
    """
    where = "enforce_locality"
    if not isinstance(model, nn.Module):
        raise fail(where, f"`model` is {describe(model)}, expected a torch.nn.Module.",
                   "for a plain function there are no attention layers to patch: use localize(denoiser, rule).")
    if not callable(rule) or not hasattr(rule, "support_radius"):
        raise fail(where, f"`rule` is {describe(rule)}, expected a MaskRule (a callable rule(cond, size, sigma) "
                   "with support_radius(sigma)).", "use localscore.masks.DiscRule(r), BoxRule(r) or GaussianRule(s).")
    support = rule.support_radius(None)
    target = share_weights_copy(model) if copy else model
    report = LocalityReport(support=support)
    undo: list[Callable[[], None]] = []
    skip_prefixes: list[str] = []
    for name, m in target.named_modules():
        if any(name.startswith(p) for p in skip_prefixes):
            continue
        label = name or "<root>"
        patch = next((fn for t, fn in _PATCHES.items() if isinstance(m, t)), None)
        if patch is not None:
            undo.append(patch(m, rule))
            report.patched.append(f"{label} ({type(m).__name__}, registered patch)")
            continue
        setter = getattr(m, "set_locality_rule", None)
        if callable(setter) and hasattr(m, "locality_rule"):
            previous = m.locality_rule

            def _undo(mod: Any = m, prev: Any = previous) -> None:
                mod.set_locality_rule(prev)

            setter(rule)
            undo.append(_undo)
            how = "masked cross-attention" if not isinstance(m, ConditioningLayer) else type(m).__name__
            report.patched.append(f"{label} ({how})")
            continue
        reason = _nonlocal_reason(m)
        if reason is not None:
            report.nonlocal_pathways.append((label, reason))
            skip_prefixes.append(name + ".")
            continue
        if m is not target and _looks_like_attention(m) and not hasattr(m, "receptive_radius"):
            report.unpatched.append((label, f"{type(m).__name__}: an attention layer localscore cannot mask; "
                                     "implement set_locality_rule or call register_locality_patch for its type"))
            skip_prefixes.append(name + ".")
    return LocalityEnforced(target, report, undo)


class LocalizedDenoiser(nn.Module):
    r"""The sampling-time local form of any denoiser (built by :func:`localize`), a front-end on the composition engine.

    With the rule's masks ``m_j = rule({c_j}, (H, W), sigma)`` (``[B, 1, H, W]`` per slot, zero for
    padding) and ``D_0 = D(x, sigma, none)``::

        out = D_0 + sum_j m_j * (D_j - D_0),     D_j = D(x, sigma, {c_j})             (crop = None)
        D_j - D_0 on the crop window W_j around c_j, zero elsewhere                  (crop = S)

    which is :func:`localscore.compose.masked_from` ``(D, cond, rule, strategy="batched",
    skip_inactive=False, crop_size=crop)`` (see :meth:`composition`): a call evaluates that composition,
    built once per conditioner set. With ``crop = S`` the two passes of object ``j`` run on the ``S x S``
    window of ``x`` centred (clamped to the image) on ``round(pos_j)``, with the conditioner's position
    shifted into the window; the rule's masks must fit in the windows (checked). Guarantees, for *any* ``D``:

    * conditioner locality: ``out`` at pixel ``p`` depends on conditioner ``j`` only if ``m_j(p) > 0``,
      i.e. ``|pos_j - p|_inf <= support`` (``conditioner_radius = ceil(support)``);
    * with ``crop``, the conditional part at ``p`` depends only on input pixels in the windows of the
      conditioners whose mask covers ``p``; the unconditional ``D_0`` keeps ``D``'s own pixel dependence.

    Cost: ``K + 1`` passes of ``D`` batched into one call (with ``crop``: ``D_0`` on the full images, and the
    ``2 K`` window passes in a second call); no host sync.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> from localscore.masks import DiscRule
        >>> from localscore.nn import GlobalConditionalDenoiser
        >>> unet = GlobalConditionalDenoiser(base_width=8, channel_mult=(1, 2), heads=2, groups=4, token_dim=8,
        ...                                  attr_dim=0, attention_levels=(1,))
        >>> L = LocalizedDenoiser(unet, DiscRule(2.0), crop=8)
        >>> L(torch.randn(1, 3, 16, 16), 1.0, Conditions.from_lists([[(3.0, 3.0), (12.0, 12.0)]])).shape
        torch.Size([1, 3, 16, 16])
        >>> L.conditioner_radius
        2
    """

    def __init__(self, denoiser: Any, rule: MaskRule, *, crop: int | None = None) -> None:
        super().__init__()
        where = "localize"
        if not callable(denoiser):
            raise fail(where, f"`denoiser` is {describe(denoiser)}, expected a callable D(x, sigma, cond).")
        if not callable(rule) or not hasattr(rule, "support_radius"):
            raise fail(where, f"`rule` is {describe(rule)}, expected a MaskRule.",
                       "use localscore.masks.DiscRule(r), BoxRule(r) or GaussianRule(s).")
        support = rule.support_radius(None)
        if support is None:
            raise fail(where, f"the rule {rule!r} declares no finite support radius.",
                       "use a rule with bounded support (e.g. GaussianRule(s, truncate=3)).")
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
            raise fail(where, f"`crop` is {crop!r}, expected None or a window side in pixels (int >= 1).")
        if crop is not None and crop < 2 * int(torch.tensor(support).ceil()) + 2:
            raise fail(where, f"`crop` = {crop} is too small for the rule's support radius {support}: the mask "
                       f"of an object must fit in its window (crop >= 2 * ceil(support) + 2).",
                       "use a larger crop.")
        self.inner = denoiser
        self.rule = rule
        self.crop = crop
        self.support = float(support)
        self._held: tuple[Conditions, Composition] | None = None  # the composition of the last conditions

    @property
    def conditioner_radius(self) -> int:
        """``ceil(support)``: output pixel ``p`` depends on conditioner ``j`` only within this distance."""
        return int(torch.tensor(self.support).ceil())

    def composition(self, cond: Conditions) -> Composition:
        """The masked composition a call with ``cond`` evaluates (kept for the last ``cond`` seen).

        Examples:
            >>> from localscore import Conditions
            >>> from localscore.masks import DiscRule
            >>> L = localize(lambda x, s, c=None: x, DiscRule(1.0), crop=4)
            >>> comp = L.composition(Conditions.from_lists([[(0.0, 0.0), (2.0, 2.0)]]))
            >>> len(comp), comp.crop_size
            (2, 4)
        """
        held = self._held
        if held is None or held[0] is not cond:
            comp = masked_from(self.inner, cond, self.rule, strategy="batched", skip_inactive=False,
                               crop_size=self.crop)
            held = (cond, comp)
            self._held = held
        return held[1]

    def forward(self, x: Tensor, sigma: Any, cond: Conditions | None = None) -> Tensor:
        """``x [B, C, H, W]``, ``sigma``, ``cond`` → ``[B, C, H, W]``, the rule-gated composition."""
        where = "LocalizedDenoiser"
        x = check_image(x, where)
        B, _, H, W = x.shape
        s = as_sigma(sigma, B, where, like=x)
        if cond is not None and not isinstance(cond, Conditions):
            raise fail(where, f"`cond` is {describe(cond)}, expected a localscore.Conditions or None.")
        if cond is not None:
            cond.check_batch(B, where, device=x.device)
        if self.crop is not None and (self.crop > H or self.crop > W):
            raise fail(where, f"`crop` = {self.crop} is larger than the image {(H, W)}.", "use a smaller crop.")
        with checked_call(where) as scope:  # nested checks record, and read back once, at the end
            scope.vouch(x, s)
            if cond is None or cond.num_slots == 0:
                return call_denoiser(self.inner, x, s, cond, where)
            return self.composition(cond)(x, s)


def localize(denoiser: Any, rule: MaskRule, *, crop: int | None = None) -> LocalizedDenoiser:
    r"""The sampling-time locality intervention: rule-gated projective composition of single-object passes.

    ``out = D(x, none) + sum_j m_j * (D(x, {c_j}) - D(x, none))`` with ``m_j`` the rule's mask of object
    ``j``; with ``crop = S`` each object's passes run on an ``S x S`` window around it (see
    :class:`LocalizedDenoiser` for the exact formula and guarantees). Works for any denoiser, and is
    exactly conditionally local with ``conditioner_radius = ceil(support)``, which
    :func:`enforce_locality` cannot promise for models with global pathways.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> from localscore.masks import DiscRule
        >>> def D(x, sigma, cond):   # 1 wherever the image has an object, 0 without: a global model
        ...     has = cond.valid.any(1) if cond is not None else torch.zeros(x.shape[0], dtype=torch.bool)
        ...     return x * 0 + has.to(x.dtype).view(-1, 1, 1, 1)
        >>> L = localize(D, DiscRule(1.0))
        >>> L(torch.zeros(1, 1, 3, 3), 1.0, Conditions.from_lists([[(0.0, 0.0)]]))[0, 0].tolist()
        [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    return LocalizedDenoiser(denoiser, rule, crop=crop)
