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
from .composition import EvaluationOptions
from .operators import check_cond_arg, projective_from

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["CompositionResidual", "residual"]


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
