r"""k-diffusion interop, both ways.

**localscore in k-diffusion.** Every localscore denoiser (networks, adapters, oracles, compositions) is already a
k-diffusion model: k-diffusion's samplers call ``model(x, sigma, **extra_args)`` with ``sigma [B]`` in the same
EDM convention, so pass the conditions by keyword::

    k_diffusion.sampling.sample_dpmpp_2m(D, x, sigmas, extra_args={"cond": cond})

(a bound denoiser or a composition needs no ``extra_args``).

**k-diffusion in localscore.** A k-diffusion model (its ``external`` wrappers ``VDenoiser``,
``DiscreteEpsDDPMDenoiser``, ``CompVisDenoiser``, or any ``forward(x, sigma, **kwargs)``) takes its conditioning
by keyword, while localscore passes ``cond`` as the third positional argument. :func:`from_k_diffusion` wraps one.
This module never imports k-diffusion.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._checks import as_sigma, check_image, check_model, current_scope
from .._errors import describe, fail

__all__ = ["KDiffusionDenoiser", "from_k_diffusion"]


class KDiffusionDenoiser(nn.Module):
    r"""A k-diffusion-style model ``model(x, sigma, **kwargs) -> x0_hat`` as a localscore denoiser.

    ``D(x, sigma, cond) = model(x, sigma, **{cond_key: cond}, **extra)``, with ``cond`` left out when it is
    ``None`` (an unconditional model need not accept the keyword) and ``sigma`` broadcast to ``[B]``. The model
    is ``inner``, so :func:`localscore.denoisers.receptive_radius` and ``conditioner_radius`` read its declared
    radii.

    Args:
        model: the k-diffusion model (an ``nn.Module`` or a callable).
        cond_key: the keyword the model takes its conditioning under (``"cond"``; ``"c"`` for CompVis wrappers,
            ``"context"`` for some UNets).
        extra: further keyword arguments passed on every call (e.g. ``{"uncond_scale": 1.0}``).

    Examples:
        >>> import torch
        >>> class KModel(torch.nn.Module):              # k-diffusion's calling convention
        ...     def forward(self, x, sigma, **kwargs):
        ...         return x / (1 + sigma.view(-1, 1, 1, 1) ** 2) + kwargs.get("cond", 0.0)
        >>> D = from_k_diffusion(KModel())
        >>> D(torch.ones(2, 1, 1, 1), 1.0, None).flatten().tolist()
        [0.5, 0.5]
        >>> D(torch.ones(2, 1, 1, 1), torch.ones(2), 1.0).flatten().tolist()   # cond passed as cond=1.0
        [1.5, 1.5]
    """

    def __init__(self, model: Any, cond_key: str = "cond", extra: dict[str, Any] | None = None) -> None:
        super().__init__()
        where = "from_k_diffusion"
        if not callable(model):
            raise fail(where, f"argument `model` is {describe(model)}, expected a k-diffusion model "
                       "forward(x, sigma, **kwargs).")
        if not isinstance(cond_key, str) or not cond_key.isidentifier():
            raise fail(where, f"argument `cond_key` is {describe(cond_key)}, expected a keyword name such as 'cond'.")
        if extra is not None and not (isinstance(extra, dict) and all(isinstance(k, str) for k in extra)):
            raise fail(where, f"argument `extra` is {describe(extra)}, expected a dict of keyword arguments or None.")
        self.inner = model
        self.cond_key = cond_key
        self.extra = dict(extra or {})

    def forward(self, x: Tensor, sigma: Any, cond: Any = None) -> Tensor:
        """``D(x [B, C, H, W], sigma [B] or float, cond) -> [B, C, H, W]``.

        The inputs are checked here (the model's parameters against ``x``'s dtype and device from metadata). Called
        from user code, a non-finite output raises here; called by a sampler or a composition, the caller records
        the output's finiteness on the device and raises at the end of its call, naming the step.
        """
        where = "KDiffusionDenoiser"
        x = check_image(x, where, finite=False)
        check_model(self.inner, x, where, "net")
        s = as_sigma(sigma, x.shape[0], where, like=x, allow_zero=True)
        kwargs = dict(self.extra)
        if cond is not None:
            kwargs[self.cond_key] = cond
        out = self.inner(x, s, **kwargs)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else describe(out)
            raise fail("KDiffusionDenoiser", f"the k-diffusion model returned {got}; expected shape {tuple(x.shape)}.",
                       "a k-diffusion model returns the denoised image (wrap eps/v networks with its `external` "
                       "wrappers first).")
        if current_scope() is None and not bool(torch.isfinite(out).all()):  # user code: one read-back
            raise fail(where, "the k-diffusion model returned non-finite values at sigma = "
                       f"{s.flatten()[:4].tolist()}.", "check the model at this noise level.")
        return out


def from_k_diffusion(model: Any, cond_key: str = "cond", **extra: Any) -> KDiffusionDenoiser:
    r"""Wrap a k-diffusion-style model ``forward(x, sigma, **kwargs)`` as a localscore denoiser passing ``cond`` by
    keyword: ``D(x, sigma, cond) = model(x, sigma, **{cond_key: cond}, **extra)`` (see :class:`KDiffusionDenoiser`).

    Args:
        model: the k-diffusion model (``VDenoiser``, ``DiscreteEpsDDPMDenoiser``, ... or any such callable).
        cond_key: the keyword of the conditioning.
        **extra: constant keyword arguments for every call.

    Returns:
        The denoiser, usable by every localscore sampler, operator and composition.

    Examples:
        >>> import torch
        >>> D = from_k_diffusion(lambda x, sigma, c=None: x * 0 + (0 if c is None else c), cond_key="c")
        >>> D(torch.ones(1, 1, 1, 1), 2.0, 3.0).item()
        3.0
    """
    return KDiffusionDenoiser(model, cond_key, extra)
