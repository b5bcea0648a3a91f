"""Input normalisers shared by every public function (private).

One place turns what users pass into the shapes the library computes with, and says clearly
what was wrong when it cannot. Every public function calls these first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._errors import describe, fail

__all__ = [
    "as_sigma",
    "check_finite",
    "check_image",
    "check_same_device",
    "check_tensor",
]


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
    """Raise unless ``x`` is a floating ``[B, C, H, W]`` tensor (finite unless ``finite=False``)."""
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
    if finite:
        check_finite(x, where, name)
    return x


def check_finite(t: Tensor, where: str, name: str) -> None:
    """Raise if ``t`` holds NaN or infinite values."""
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
    length other than 1 or ``batch``.
    """
    if isinstance(sigma, bool):
        raise fail(where, f"argument `{name}` is a bool, expected a noise level (a float or a [B] tensor).")
    if isinstance(sigma, (int, float)):
        value = float(sigma)
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
        return torch.full((batch,), value, dtype=dtype, device=device)
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
    if not sigma.is_floating_point():
        sigma = sigma.to(like.dtype if like is not None else torch.get_default_dtype())
    bad = ~torch.isfinite(sigma) | (sigma < 0)
    if not allow_zero:
        bad = bad | (sigma == 0)
    if bool(bad.any()):
        raise fail(
            where,
            f"argument `{name}` holds invalid noise levels {sigma.detach().flatten()[:8].tolist()}; "
            f"expected finite values {'>= 0' if allow_zero else '> 0'}.",
            "noise levels are standard deviations (EDM convention); a sampler's final 0 is never "
            "passed to a denoiser.",
        )
    if like is not None and sigma.dtype != like.dtype:
        sigma = sigma.to(like.dtype)
    return sigma.reshape(-1).expand(batch) if sigma.numel() == 1 else sigma.reshape(batch)


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
