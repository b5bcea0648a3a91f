r"""The composition residual: how far a model's joint output is from its projective composition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._checks import as_sigma, check_image, checked_call
from .._errors import describe, fail
from .._repr import summary_repr
from ..conditions import Conditions
from ..denoisers import call_denoiser
from ..masks import disc_masks
from .composition import EvaluationOptions
from .operators import check_cond_arg, projective_from

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["CompositionResidual", "CompositionTerms", "residual", "terms"]


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


def residual(denoiser: Any, x: Tensor, sigma: Any, cond: Conditions,
             **options: Unpack[EvaluationOptions]) -> CompositionResidual:
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
        **options: the evaluation options of the composition (:class:`EvaluationOptions`).

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
    cond = check_cond_arg(cond, where)
    cond.check_batch(x.shape[0], where, device=x.device)
    s = as_sigma(sigma, x.shape[0], where, like=x)
    with checked_call(where) as scope:  # the three evaluations read their checks back once, at the end
        scope.vouch(x, s)
        joint = call_denoiser(denoiser, x, s, cond, where)
        none = call_denoiser(denoiser, x, s, cond.drop_all(), where)
        proj = projective_from(denoiser, cond, **options)(x, s)
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


@summary_repr
@dataclass(frozen=True)
class CompositionTerms:
    """How the terms of a projective composition act on its objects and away from them (see :func:`terms`).

    Attributes:
        retention: ``[B, K]``, the share of object ``j``'s contrast that the composition predicts on its disc:
            ``base + own + cross`` (1: the object as it is; 0: the reference background; NaN on padding slots).
        base: ``[B, K]``, the background's part of ``retention``.
        own: ``[B, K]``, the part of object ``j``'s own term ``T_j``.
        cross: ``[B, K]``, the part of the other objects' terms ``sum_{i != j} T_i``.
        locality: ``[B]``, the share of the terms' energy ``sum_j ||T_j||**2`` within ``radius`` of each term's
            object (the composition's conditional locality with respect to its background; NaN without terms).
        off_contrast: ``[B]``, root mean square of ``P - reference`` over the pixels farther than ``radius``
            from every object, per channel (what the composition draws where nothing was asked for).
    """

    retention: Tensor
    base: Tensor
    own: Tensor
    cross: Tensor
    locality: Tensor
    off_contrast: Tensor

    def to_dict(self) -> dict[str, Any]:
        """Means over the valid objects and images, as plain Python numbers (NaN where there are none)."""
        def mean(t: Tensor) -> float:
            v = t.detach().double().cpu().flatten()
            v = v[~v.isnan()]
            return float(v.mean()) if v.numel() else float("nan")
        return {name: mean(getattr(self, name)) for name in
                ("retention", "base", "own", "cross", "locality", "off_contrast")}


def terms(background: Any, component: Any, x0: Tensor, sigma: Any, cond: Conditions, *, reference: Tensor,
          object_radius: float, radius: float, generator: torch.Generator | None = None) -> CompositionTerms:
    r"""Decompose a projective composition at noisy versions of known images: where do its objects go?

    With ``x = x0 + sigma * z`` (``z ~ N(0, I)`` from ``generator``), ``U = background(x, sigma, none)``,
    the terms ``T_j = component(x, sigma, c_j) - U`` of the valid slots (0 on padding), the composition
    ``P = U + sum_j T_j``, the object contrast ``G = x0 - reference`` and ``M_j`` the disc of
    ``object_radius`` around object ``j`` (``<a, b>_M`` sums ``a * b`` over channels and the pixels of ``M``)::

        n_j          = <G, G>_{M_j}
        base[b, j]   = <U - reference, G>_{M_j} / n_j
        own[b, j]    = <T_j, G>_{M_j} / n_j
        cross[b, j]  = <sum_{i != j} T_i, G>_{M_j} / n_j
        retention    = base + own + cross  = <P - reference, G>_{M_j} / n_j
        locality[b]  = sum_j ||T_j on the disc of radius around j||**2 / sum_j ||T_j||**2
        off_contrast = sqrt(mean over channels and the pixels beyond radius of every object of (P - reference)**2)

    ``retention`` near 1 means the composition draws object ``j`` as it is; a negative ``cross`` that grows
    with the number of objects is the other terms erasing it. ``locality`` below 1 means each term acts away
    from its object: the components are not factorized against this background, and the composition of many
    of them is not the joint distribution. For a background that is the model of the scenes *without* the
    objects (the empty background under conditional projective composition), ``cross`` is 0 and
    ``locality`` 1 for a local model; for the unconditional model of one-object scenes (Bayes composition),
    each term ``T_j`` also says "no object elsewhere", so ``cross`` falls like ``-(k - 1)`` times a constant.

    Args:
        background: the background denoiser, called with ``cond.drop_all()``.
        component: the conditional denoiser of the components, called with each ``c_j``.
        x0: ``[B, C, H, W]`` clean images holding the objects of ``cond``.
        sigma: the noise level (float or ``[B]``).
        cond: ``[B, K]`` the objects of ``x0``.
        reference: ``[B or 1, C, H, W]`` the same images without their objects (the plain background).
        object_radius: radius in pixels of the object discs ``M_j`` (at least each object's extent).
        radius: radius in pixels of the neighbourhood of ``locality`` and ``off_contrast``.
        generator: source of the noise ``z``.

    Returns:
        A :class:`CompositionTerms`.

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> from localscore.masks import disc_masks
        >>> cond = Conditions.from_lists([[(2.0, 2.0), (8.0, 8.0)]])
        >>> x0 = disc_masks(cond, (11, 11), 1.0).any(1, keepdim=True).float()       # two bright discs on 0
        >>> exact = lambda x, s, c=None: x0 * disc_masks(c, (11, 11), 1.0).any(1, keepdim=True).float()
        >>> t = terms(exact, exact, x0, 1.0, cond, reference=torch.zeros(1, 1, 11, 11), object_radius=1.5,
        ...           radius=3.0)
        >>> t.retention.tolist(), t.cross.tolist(), t.locality.tolist()
        ([[1.0, 1.0]], [[0.0, 0.0]], [1.0])
    """
    where = "terms"
    for name, d in (("background", background), ("component", component)):
        if not callable(d):
            raise fail(where, f"`{name}` is {describe(d)}, expected a denoiser D(x, sigma, cond).")
    x0 = check_image(x0, where, "x0")
    cond = check_cond_arg(cond, where)
    B, C, H, W = x0.shape
    cond.check_batch(B, where, device=x0.device)
    if not isinstance(reference, Tensor) or reference.dim() != 4 or reference.shape[1:] != x0.shape[1:] or \
            reference.shape[0] not in (1, B):
        raise fail(where, f"`reference` is {describe(reference)}, expected a tensor [1 or {B}, {C}, {H}, {W}] "
                   "(the images without their objects).")
    for name, v in (("object_radius", object_radius), ("radius", radius)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e6:
            raise fail(where, f"`{name}` is {v!r}, expected a positive number of pixels.")
    s = as_sigma(sigma, B, where, like=x0)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device) if generator is not None \
        else torch.randn_like(x0)
    x = x0 + s.view(-1, 1, 1, 1) * z
    valid = cond.valid
    with checked_call(where) as scope:
        scope.vouch(x, s)
        U = call_denoiser(background, x, s, cond.drop_all(), where)
        T = torch.stack([torch.where(valid[:, j].view(-1, 1, 1, 1),
                                     call_denoiser(component, x, s, c, where) - U, torch.zeros_like(U))
                         for j, c in enumerate(cond.singletons())], 1) if cond.num_slots else U[:, None, :0]
    ref = reference.to(x0)
    G = x0 - ref
    inner = disc_masks(cond, (H, W), float(object_radius)).unsqueeze(2).to(x0.dtype)   # [B, K, 1, H, W]
    near = disc_masks(cond, (H, W), float(radius)).unsqueeze(2).to(x0.dtype)
    n = (G.unsqueeze(1) ** 2 * inner).flatten(2).sum(2)                                 # [B, K]

    def part(v: Tensor) -> Tensor:   # <v_j, G>_{M_j} / n_j for v [B, K, C, H, W]
        ratio = (v * G.unsqueeze(1) * inner).flatten(2).sum(2) / n.clamp_min(torch.finfo(n.dtype).tiny)
        return torch.where(valid & (n > 0), ratio, torch.full_like(ratio, float("nan")))

    total = T.sum(1, keepdim=True)
    base = part((U - ref).unsqueeze(1).expand_as(T))
    own = part(T)
    cross = part(total - T)
    energy = (T ** 2).flatten(1).sum(1)
    loc = (T ** 2 * near).flatten(1).sum(1) / energy.clamp_min(torch.finfo(energy.dtype).tiny)
    loc = torch.where(energy > 0, loc, torch.full_like(loc, float("nan")))
    P = U + total[:, 0]
    far = ~(near.sum(1) > 0)                                                              # [B, 1, H, W]
    off = (((P - ref) ** 2) * far).flatten(1).sum(1) / (far.flatten(1).sum(1) * C).clamp_min(1)
    return CompositionTerms(retention=base + own + cross, base=base, own=own, cross=cross, locality=loc,
                            off_contrast=off.sqrt())
