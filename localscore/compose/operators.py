r"""The constructors of compositions: projective, masked, guided; from denoisers or from one conditional model.

Every constructor takes the same keyword-only evaluation options (:class:`EvaluationOptions`: ``strategy``,
``max_batch``, ``max_pixels``, ``skip_empty``, ``skip_inactive``, ``crop_size``), passed through to
:class:`~localscore.compose.Composition`, which documents them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._errors import describe, fail
from ..conditions import Conditions, ConditionSet
from ..denoisers import bind
from ..masks import MaskRule
from .composition import Composition, EvaluationOptions
from .specs import MaskSpec, WeightSpec, Window

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["guidance", "masked", "masked_from", "projective", "projective_from"]


def check_cond_arg(cond: Any, where: str) -> Conditions:
    """Raise unless ``cond`` is a :class:`~localscore.Conditions`; return it."""
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


def _check_denoiser(denoiser: Any, where: str) -> None:
    if not callable(denoiser):
        raise fail(where, f"`denoiser` is {describe(denoiser)}, expected a conditional denoiser D(x, sigma, cond).")


def projective(background: Any, components: Sequence[Any], weights: WeightSpec = None, *, windows: Any = None,
               **options: Unpack[EvaluationOptions]) -> Composition:
    r"""Projective composition ``D_hat = D_bg + sum_j w_j * (D_j - D_bg)``; zero components give ``D_bg``.

    In score form (Tweedie is affine in ``D``): ``s_hat = s_bg + sum_j w_j * (s_j - s_bg)``. With
    ``w_j = 1``, single-object components and the unconditional background it is exact under CPC.
    See :class:`Composition` for ``weights``, ``windows`` and the evaluation options.

    Args:
        background: the background denoiser ``D_bg``.
        components: the component denoisers ``D_j`` (bound conditional denoisers or any denoiser).
        weights: component weights (default all ``1``); negative weights negate.
        windows: sigma windows, see :class:`Composition`.
        **options: the evaluation options (:class:`EvaluationOptions`).

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
    return Composition(background, components, weights, windows=windows, **options)


def projective_from(denoiser: Any, cond: ConditionSet, weights: WeightSpec = None, *, windows: Any = None,
                    **options: Unpack[EvaluationOptions]) -> Composition:
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
        **options: the evaluation options (:class:`EvaluationOptions`).

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
    _check_denoiser(denoiser, where)
    cond = _check_set_arg(cond, where)
    return Composition(bind(denoiser, cond.drop_all()), [bind(denoiser, c) for c in cond.singletons()], weights,
                       windows=windows, **options)


def masked(background: Any, components: Sequence[Any], masks: MaskSpec, weights: WeightSpec = None, *,
           mask_cond: Conditions | None = None, windows: Any = None,
           **options: Unpack[EvaluationOptions]) -> Composition:
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
        windows: sigma windows, see :class:`Composition`.
        **options: the evaluation options (:class:`EvaluationOptions`).

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
    return Composition(background, components, weights, windows=windows, masks=masks, mask_cond=mask_cond, **options)


def masked_from(denoiser: Any, cond: Conditions, rule: MaskRule, weights: WeightSpec = None, *,
                windows: Any = None, **options: Unpack[EvaluationOptions]) -> Composition:
    r"""Masked composition of one conditional denoiser's single-object outputs, masks from a rule.

    ``D_hat = D(x, sigma, none) + sum_j w_j * m_j(sigma) * (D(x, sigma, c_j) - D(x, sigma, none))`` with
    ``m_j = rule(cond, (H, W), sigma)[:, j]`` (a :class:`~localscore.masks.DiscRule`,
    :class:`~localscore.masks.BoxRule` or :class:`~localscore.masks.GaussianRule`; sigma-dependent sizes
    are evaluated at each call). Padding slots have all-zero masks and contribute nothing. With
    ``crop_size = S`` each object's two passes run on the ``S x S`` window around it (the form
    :func:`localscore.nn.localize` computes).

    Args:
        denoiser: a conditional denoiser ``D(x, sigma, cond)``.
        cond: the conditioner sets ``[B, K]``.
        rule: the mask rule.
        weights: per-slot weights (default ``1``).
        windows: sigma windows, see :class:`Composition`.
        **options: the evaluation options (:class:`EvaluationOptions`).

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
    _check_denoiser(denoiser, where)
    cond = check_cond_arg(cond, where)
    if not isinstance(rule, MaskRule):
        raise fail(where, f"`rule` is {describe(rule)}, expected a mask rule (DiscRule, BoxRule, GaussianRule).",
                   "for mask tensors use `masked(background, components, masks)`.")
    return Composition(bind(denoiser, cond.drop_all()), [bind(denoiser, c) for c in cond.singletons()], weights,
                       windows=windows, masks=rule, mask_cond=cond, **options)


def guidance(cond: Any, uncond: Any, w: WeightSpec, *, window: Window | None = None,
             **options: Unpack[EvaluationOptions]) -> Composition:
    r"""Classifier-free guidance ``D_hat = D_u + w * (D_c - D_u)``.

    Convention: ``w = 1`` is the conditional model, ``w = 0`` the unconditional one, ``w > 1`` amplifies
    the condition (diffusers' ``guidance_scale``; Ho & Salimans' guidance strength is ``w - 1``). In score
    form ``s_hat = s_u + w (s_c - s_u)``, the score of ``p(x) p(c | x)^w``. ``w`` may be a number, a
    ``[B]`` tensor, or a function of sigma (e.g. a :class:`WeightSchedule`); ``window`` switches guidance
    off outside ``sigma_lo <= sigma <= sigma_hi`` (then ``D_hat = D_u``). ``skip_empty`` defaults to
    ``False`` here: the formula is applied as written even where ``D_c``'s conditioner set is empty.

    Args:
        cond: the conditional denoiser (e.g. ``bind(D, c)``).
        uncond: the unconditional denoiser (e.g. ``bind(D, c.drop_all())``).
        w: the guidance weight.
        window: optional ``(sigma_lo, sigma_hi)``.
        **options: the evaluation options (:class:`EvaluationOptions`).

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
    options.setdefault("skip_empty", False)
    return Composition(uncond, [cond], weights, windows=None if window is None else [window], **options)
