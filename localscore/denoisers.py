r"""The denoiser protocol, parameterisation adapters, and the score of a denoiser.

Every model in localscore is a *denoiser* ``D(x, sigma, cond) -> x0_hat`` in the EDM
(variance-exploding) convention ``x_sigma = x_0 + sigma * eps``:

* ``x``: ``[B, C, H, W]`` noisy images,
* ``sigma``: ``[B]`` noise levels (a Python float is broadcast),
* ``cond``: a :class:`~localscore.Conditions` batch, or ``None`` for the unconditional model,
* returns ``[B, C, H, W]``, an estimate of ``E[x_0 | x_sigma = x, cond]``.

Tweedie's formula links it to the score: ``s(x, sigma, cond) = (D(x, sigma, cond) - x) / sigma**2``
(:func:`tweedie`, the one place the library computes it).

The adapters below wrap networks that predict something else (noise, velocity, score, clean image,
or a discrete-time DDPM network indexed by timestep) into this protocol, as k-diffusion's ``external.py``
does: each parameterisation states only its scalings ``get_scalings(sigma) -> (c_skip, c_out, c_in)`` and
the noise input ``c_noise(sigma)`` its network takes, and one shared forward computes

    D(x, sigma, cond) = c_skip * x + c_out * F(c_in * x, c_noise(sigma), cond).

A wrapped network is called as ``F(x_in, noise_in, cond)``; wrap a network without conditioning as
``lambda x, t, cond: net(x, t)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Literal, Protocol, cast, runtime_checkable

import torch
from torch import Tensor, nn

from ._checks import (
    CheckScope,
    as_sigma,
    check_flag,
    check_image,
    check_model,
    check_tensor,
    checked_call,
    current_scope,
    trusted,
    trusting_scope,
)
from ._errors import LocalScoreError, describe, fail
from .conditions import ConditionSet

__all__ = [
    "BoundDenoiser",
    "Denoiser",
    "DiscreteDDPMDenoiser",
    "EDMPreconditioner",
    "EpsilonDenoiser",
    "ScoreDenoiser",
    "ScoreFunction",
    "VDenoiser",
    "X0Denoiser",
    "bind",
    "call_denoiser",
    "conditioner_radius",
    "receptive_radius",
    "score",
    "tweedie",
]


@runtime_checkable
class Denoiser(Protocol):
    """The model protocol: ``D(x [B, C, H, W], sigma [B], cond) -> x0_hat [B, C, H, W]``.

    Any callable with this signature is a denoiser: an ``nn.Module``, a function, an oracle, a
    composition. Optionally it declares locality through integer attributes ``receptive_radius``
    (output pixel ``i`` depends only on input pixels within this Chebyshev distance) and
    ``conditioner_radius`` (and only on conditioners within this distance); see
    :func:`receptive_radius`. A model whose output is not translation equivariant (coordinate channels,
    absolute position embeddings) sets ``translation_equivariant = False`` so that it is never evaluated
    on crops (see :mod:`localscore.compose`).

    For type checkers the protocol is what the library calls, ``D(x, sigma, cond)`` with three positional
    arguments (any names will do; ``cond=None`` is the unconditional model), and ``cond`` is typed ``Any``:
    a denoiser of objects takes :class:`~localscore.Conditions`, one of prompts
    :class:`~localscore.adapters.diffusers.PromptConditions`, and both are denoisers.
    """

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any, /) -> Tensor: ...


ScoreFunction = Callable[..., Tensor]
"""A score ``s(x [B, C, H, W], sigma [B], cond) -> [B, C, H, W]``, ``grad_x log p_sigma(x | cond)``."""

Network = Callable[..., Tensor]
"""A network an adapter wraps: ``F(x_in [B, C, H, W], noise_in [B], cond) -> [B, C, H, W]`` (its ``inner``)."""


def call_denoiser(
    denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: ConditionSet | None, where: str, name: str = "denoiser"
) -> Tensor:
    """Call ``denoiser(x, sigma, cond)`` and check that it returned a tensor shaped like ``x``.

    Used by samplers and operators so a misbehaving model fails with a message, not a broadcast.
    Non-finite outputs raise too: at once when called from user code; inside a sampler (or another
    checked call) the finiteness check runs on the device and the sampler raises at the end of its
    call, naming the first step whose output was not finite.
    """
    out = denoiser(x, sigma, cond)
    if not isinstance(out, torch.Tensor):
        raise fail(where, f"`{name}` returned {describe(out)}, expected a tensor shaped like x "
                   f"{tuple(x.shape)}.", "a denoiser returns the estimate of the clean image x0.")
    if out.shape != x.shape:
        raise fail(where, f"`{name}` returned shape {tuple(out.shape)} for input shape {tuple(x.shape)}; "
                   "expected the same shape.",
                   "check the network's output channels and that it does not down- or up-sample.")
    scope = current_scope()
    if scope is not None:  # sigma [B] is small: the message reads it only if the check fails
        scope.require_finite(out, _non_finite_output, where, name, sigma)
        return out
    if not bool(torch.isfinite(out).all()):
        raise _non_finite_output(where, name, sigma)
    return out


def _non_finite_output(where: str, name: str, sigma: Tensor) -> LocalScoreError:
    return fail(where, f"`{name}` returned non-finite values at sigma = {sigma.detach().flatten()[:4].tolist()}.",
                "check the model (and its preconditioning) at this noise level.")


def _find_int_attr(obj: object, attr: str) -> int | None:
    seen: set[int] = set()
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        value = getattr(obj, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        obj = getattr(obj, "inner", None)
    return None


def receptive_radius(denoiser: Denoiser) -> int | None:
    """The declared receptive radius of ``denoiser``, or ``None`` if it declares none.

    Looks for an integer ``receptive_radius`` attribute on the denoiser, then on the model it wraps
    (the ``inner`` attribute of every adapter), and so on down.

    Examples:
        >>> import torch
        >>> net = torch.nn.Conv2d(3, 3, 5, padding=2); net.receptive_radius = 2
        >>> receptive_radius(EDMPreconditioner(lambda x, t, c: net(x)))
        >>> receptive_radius(EDMPreconditioner(net))
        2
    """
    return _find_int_attr(denoiser, "receptive_radius")


def conditioner_radius(denoiser: Denoiser) -> int | None:
    """The declared conditioner radius of ``denoiser`` (see :func:`receptive_radius`), or ``None``."""
    return _find_int_attr(denoiser, "conditioner_radius")


def tweedie(denoised: Tensor, x: Tensor, sigma: Tensor | float) -> Tensor:
    r"""Tweedie's map from a denoiser's output to the score: ``s = (denoised - x) / sigma**2``.

    For the posterior mean ``denoised = E[x_0 | x_sigma = x]`` this is the score ``grad_x log p_sigma(x)``.
    It is the one place localscore computes the score of a denoiser (:func:`score`, the oracles' ``score``,
    the locality metrics). It checks shapes but reads no values (it runs inside sampling loops): pass
    ``sigma > 0``.

    Args:
        denoised: ``[B, C, H, W]`` (or any ``[B, ...]``), the denoiser's output ``D(x, sigma)``.
        x: the noisy input, shaped like ``denoised``.
        sigma: ``[B]`` noise levels, one per item, broadcast over the other dimensions as
            ``sigma.view(B, 1, 1, 1)``; or a 0-dim tensor or a float, for all items.

    Returns:
        ``(denoised - x) / sigma**2``, shaped like ``x``.

    Examples:
        Data ``N(mu, v I)``: ``D = mu + v / (v + sigma**2) * (x - mu)``, and the score is
        ``-(x - mu) / (v + sigma**2)``.

        >>> import torch
        >>> x = torch.tensor([2.0, -1.0], dtype=torch.float64).view(2, 1, 1, 1)
        >>> sigma = torch.tensor([0.5, 3.0], dtype=torch.float64)
        >>> mu, v, s2 = 0.5, 2.0, sigma.view(2, 1, 1, 1) ** 2
        >>> D = mu + v / (v + s2) * (x - mu)
        >>> torch.allclose(tweedie(D, x, sigma), -(x - mu) / (v + s2), rtol=1e-15, atol=0)
        True
    """
    if not isinstance(sigma, torch.Tensor) or sigma.dim() == 0:
        return (denoised - x) / sigma**2
    if sigma.dim() != 1 or x.dim() == 0 or sigma.shape[0] not in (1, x.shape[0]):
        raise fail("tweedie", f"`sigma` has shape {tuple(sigma.shape)} for `x` of shape {tuple(x.shape)}; "
                   "expected [B] (one noise level per item), a 0-dim tensor or a float.")
    return (denoised - x) / sigma.view(-1, *([1] * (x.dim() - 1))) ** 2


class _Score:
    """The score of a denoiser, ``s = tweedie(D(x, sigma, cond), x, sigma)``."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.inner = denoiser

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: ConditionSet | None = None) -> Tensor:
        x = check_image(x, "score")
        s = as_sigma(sigma, x.shape[0], "score", like=x)
        with checked_call("score") as scope:
            scope.vouch(x, s)
            d = call_denoiser(self.inner, x, s, cond, "score")
        return tweedie(d, x, s)

    def __repr__(self) -> str:
        return f"score({self.inner!r})"


def score(denoiser: Denoiser) -> ScoreFunction:
    r"""The score of a denoiser: ``s(x, sigma, cond) = (D(x, sigma, cond) - x) / sigma**2`` (:func:`tweedie`).

    Args:
        denoiser: any :class:`Denoiser`.

    Returns:
        A callable ``s(x [B, C, H, W], sigma [B] or float, cond=None) -> [B, C, H, W]``.

    Examples:
        >>> import torch
        >>> D = lambda x, sigma, cond=None: torch.zeros_like(x)   # data = a point mass at 0
        >>> s = score(D)
        >>> s(torch.ones(1, 1, 2, 2), 2.0).flatten().tolist()    # -x / sigma^2
        [-0.25, -0.25, -0.25, -0.25]
    """
    if not callable(denoiser):
        raise fail("score", f"`denoiser` is {describe(denoiser)}, expected a callable D(x, sigma, cond).")
    return _Score(denoiser)


def _as_module_or_callable(model: Network, where: str) -> Network:
    if not callable(model):
        raise fail(where, f"`model` is {describe(model)}, expected a callable model(x, noise, cond).")
    return model


def _check_bool(value: Any, where: str, name: str) -> bool:
    """Raise unless ``value`` is a bool (a string such as ``"yes"`` or an int is not silently truthy)."""
    if not isinstance(value, bool):
        raise fail(where, f"`{name}` is {describe(value)}, expected True or False.",
                   f"pass `{name}=True` or `{name}=False`.")
    return value


def _check_sigma_data(value: Any, where: str) -> float:
    """Raise unless ``value`` is a finite real number > 0 (the data's standard deviation)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= sys.float_info.max
    if not ok:  # compared exactly: an int beyond float64 never reaches float()
        raise fail(where, f"`sigma_data` is {describe(value)}, expected a finite float > 0 (the standard deviation "
                   "of the training data).", "pass e.g. sigma_data=0.5 (EDM's default for images in [-1, 1]).")
    return float(value)


_COL4 = (-1, 1, 1, 1)
"""The view of ``[B]`` scalings broadcast over images ``[B, C, H, W]``."""


class _Adapter(nn.Module):
    r"""The one forward of every parameterisation: ``D = c_skip * x + c_out * F(c_in * x, c_noise(sigma), cond)``.

    A parameterisation states only :meth:`get_scalings` (and :meth:`c_noise`, when its network takes
    something other than ``sigma``); :meth:`forward` checks the inputs once, calls the network ``F`` (the
    ``inner`` model) and combines.
    """

    _where = "adapter"

    def __init__(self, model: Network, noise_input: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.inner = _as_module_or_callable(model, self._where)
        self.noise_input = noise_input

    def get_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in)``, each ``[B]``, for ``sigma [B]``."""
        raise NotImplementedError  # pragma: no cover - every adapter overrides it

    def c_noise(self, sigma: Tensor) -> Tensor:
        """``[B]``: the network's noise input for ``sigma [B]``, ``noise_input(sigma)`` (default: ``sigma``)."""
        return self.noise_input(sigma) if self.noise_input is not None else sigma

    def _check_sigma(self, sigma: Tensor) -> None:
        """Value checks a parameterisation adds on ``sigma [B]`` (a device-side flag inside a checked call)."""

    def forward(self, x: Tensor, sigma: Tensor | float, cond: ConditionSet | None = None) -> Tensor:
        """``D(x [B, C, H, W], sigma [B] or float, cond) -> [B, C, H, W]``.

        The inputs are checked here, once: shapes and values, and (metadata only) that the wrapped network's
        parameters have ``x``'s dtype and device. The network runs inside a checked call (see
        :func:`~localscore.denoisers.call_denoiser`), so nested checks do not read values back. Called from user
        code, a non-finite output raises here; called by a sampler or a composition, the output's finiteness is
        recorded on the device and the caller raises at the end of its call, naming the step.
        """
        scope = trusting_scope(x, sigma)
        if scope is not None:  # called by a sampler or a composition with inputs it has checked
            s = cast(Tensor, sigma)  # trusted only for a vouched tensor [B]
            inner = self.inner
            scope.check_model(inner, x, self._where, "net")  # metadata, once per scope (see _checks.check_model)
            self._check_sigma(s)
            return self._denoise(x, s, cond, scope, inner)
        x = check_image(x, self._where)
        check_model(self.inner, x, self._where, "net")
        s = as_sigma(sigma, x.shape[0], self._where, like=x)
        self._check_sigma(s)
        scope = current_scope()
        if scope is not None:  # nested in a sampler or composition: its scope holds x and s
            return self._denoise(x, s, cond, scope, self.inner)
        with checked_call(self._where) as scope:  # called from user code: the output is checked here
            scope.vouch(x, s)
            out = self._denoise(x, s, cond, scope, self.inner)
            scope.require_finite(out, _non_finite_output, self._where, "the wrapped model", s)
            return out

    def _denoise(self, x: Tensor, s: Tensor, cond: ConditionSet | None, scope: CheckScope, inner: Network) -> Tensor:
        """The combination, for checked inputs, in the check scope ``scope``; ``inner`` is ``self.inner``, read
        once by the caller (a module attribute lookup is not free on a sampler's per-step path)."""
        c_skip, c_out, c_in = self.get_scalings(s)
        col = _COL4 if x.dim() == 4 else (-1,) + (1,) * (x.dim() - 1)  # [B] -> [B, 1, 1, 1], broadcast over x
        x_in = x * c_in.view(col)
        scope.vouch(x_in)  # derived from checked inputs: the network's own checks skip it
        out = inner(x_in, self.c_noise(s), cond)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else describe(out)
            raise fail(self._where, f"the wrapped model returned {got} for input shape {tuple(x.shape)}; "
                       "expected a tensor of the same shape.")
        return c_skip.view(col) * x + c_out.view(col) * out


def _vp_scale(s: Tensor, sigma_data: float) -> Tensor:
    return 1.0 / torch.sqrt(s**2 + sigma_data**2)


class EpsilonDenoiser(_Adapter):
    r"""Wrap a noise-predicting network: ``D = x - sigma * eps(c_in * x, noise_input(sigma), cond)``.

    Scalings: ``c_skip = 1``, ``c_out = -sigma``, and ``c_in = 1 / sqrt(sigma**2 + 1)`` with
    ``vp_input=True`` (default: the network sees the variance-preserving input, as VP-trained models
    expect), ``c_in = 1`` with ``False`` (VE-trained models).

    Args:
        model: ``model(x_in [B, C, H, W], noise_in [B], cond) -> eps [B, C, H, W]``.
        vp_input: scale the input to unit variance as above.
        noise_input: maps ``sigma [B]`` to what the network takes as its noise input
            (default: ``sigma`` itself).

    Examples:
        >>> import torch
        >>> eps_net = lambda x, s, c: torch.zeros_like(x)       # predicts no noise
        >>> D = EpsilonDenoiser(eps_net)
        >>> torch.equal(D(torch.ones(1, 1, 2, 2), 0.5), torch.ones(1, 1, 2, 2))
        True
    """

    _where = "EpsilonDenoiser"

    def __init__(self, model: Network, *, vp_input: bool = True,
                 noise_input: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__(model, noise_input)
        self.vp_input = _check_bool(vp_input, self._where, "vp_input")

    def get_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(1, -sigma, 1 / sqrt(sigma**2 + 1) or 1)`` for ``sigma [B]``."""
        c_in = _vp_scale(sigma, 1.0) if self.vp_input else torch.ones_like(sigma)
        return torch.ones_like(sigma), -sigma, c_in


class VDenoiser(_Adapter):
    r"""Wrap a v-predicting network (Salimans & Ho), for data of standard deviation ``sigma_data``.

    ``D = c_skip * x + c_out * v(c_in * x, noise_input(sigma), cond)`` with
    ``c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)``,
    ``c_out = -sigma * sigma_data / sqrt(sigma**2 + sigma_data**2)``,
    ``c_in = 1 / sqrt(sigma**2 + sigma_data**2)``.
    With ``sigma_data = 1`` this is diffusers' ``v_prediction`` in VE variables.

    Examples:
        >>> import torch
        >>> D = VDenoiser(lambda x, s, c: torch.zeros_like(x))
        >>> D(torch.ones(1, 1, 1, 1), 1.0).item()   # c_skip = 1 / 2
        0.5
    """

    _where = "VDenoiser"

    def __init__(self, model: Network, *, sigma_data: float = 1.0,
                 noise_input: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__(model, noise_input)
        self.sigma_data = _check_sigma_data(sigma_data, self._where)

    def get_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in)`` of the class docstring for ``sigma [B]``."""
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = -sigma * sd / torch.sqrt(sigma**2 + sd**2)
        return c_skip, c_out, _vp_scale(sigma, sd)


class X0Denoiser(_Adapter):
    r"""Wrap a network that predicts the clean image: ``D = x0(c_in * x, noise_input(sigma), cond)``.

    Scalings: ``c_skip = 0``, ``c_out = 1``, and ``c_in = 1 / sqrt(sigma**2 + 1)`` when ``vp_input``
    (default), else 1.

    Examples:
        >>> import torch
        >>> D = X0Denoiser(lambda x, s, c: 2 * x, vp_input=False)
        >>> D(torch.ones(1, 1, 1, 1), 3.0).item()
        2.0
    """

    _where = "X0Denoiser"

    def __init__(self, model: Network, *, vp_input: bool = True,
                 noise_input: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__(model, noise_input)
        self.vp_input = _check_bool(vp_input, self._where, "vp_input")

    def get_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(0, 1, 1 / sqrt(sigma**2 + 1) or 1)`` for ``sigma [B]``."""
        c_in = _vp_scale(sigma, 1.0) if self.vp_input else torch.ones_like(sigma)
        return torch.zeros_like(sigma), torch.ones_like(sigma), c_in


class ScoreDenoiser(_Adapter):
    r"""Wrap a score network: ``D = x + sigma**2 * s(x, noise_input(sigma), cond)`` (Tweedie).

    The inverse of :func:`score`: scalings ``c_skip = 1``, ``c_out = sigma**2``, ``c_in = 1`` (the score
    network sees ``x`` unscaled).

    Examples:
        >>> import torch
        >>> D = ScoreDenoiser(lambda x, s, c: -x / (1 + s.view(-1, 1, 1, 1) ** 2))  # N(0, I) data
        >>> D(torch.ones(1, 1, 1, 1), 1.0).item()     # x / (1 + sigma^2)
        0.5
    """

    _where = "ScoreDenoiser"

    def get_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(1, sigma**2, 1)`` for ``sigma [B]``."""
        one = torch.ones_like(sigma)
        return one, sigma**2, one


class EDMPreconditioner(_Adapter):
    r"""EDM preconditioning (Karras et al. 2022, Table 1) around a raw network ``F``.

    ``D = c_skip * x + c_out * F(c_in * x, c_noise, cond)`` with
    ``c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)``,
    ``c_out = sigma * sigma_data / sqrt(sigma**2 + sigma_data**2)``,
    ``c_in = 1 / sqrt(sigma**2 + sigma_data**2)``, ``c_noise = log(sigma) / 4``.

    The matching training loss weight is ``lambda(sigma) = 1 / c_out**2``
    (see :meth:`loss_weight`).

    Examples:
        >>> import torch
        >>> D = EDMPreconditioner(lambda x, t, c: torch.zeros_like(x), sigma_data=0.5)
        >>> D(torch.ones(1, 1, 1, 1), 0.5).item()    # c_skip = 0.25 / 0.5
        0.5
    """

    _where = "EDMPreconditioner"

    def __init__(self, model: Network, *, sigma_data: float = 0.5) -> None:
        super().__init__(model, None)
        self.sigma_data = _check_sigma_data(sigma_data, self._where)

    def get_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in)`` of the class docstring for ``sigma [B]``."""
        sd = self.sigma_data
        # The operators' own arithmetic, without their Python wrappers (this runs at every sampler step):
        # ``a / t`` for a float a is ``t.reciprocal() * a`` (``* 1.0`` is exact) and ``t**2`` is ``t.pow(2)``, bit
        # for bit.
        s2 = sigma.pow(2) + sd**2  # sigma**2 + sigma_data**2, and its root, computed once
        root = torch.sqrt(s2)
        c_skip = s2.reciprocal() * sd**2  # sigma_data**2 / s2
        c_out = sigma * sd / root
        c_in = root.reciprocal()  # 1 / root
        return c_skip, c_out, c_in

    def c_noise(self, sigma: Tensor) -> Tensor:
        """``log(sigma) / 4`` for ``sigma [B]``."""
        return torch.log(sigma) / 4

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """EDM's loss weight ``(sigma**2 + sigma_data**2) / (sigma * sigma_data)**2`` for ``sigma [B]``."""
        sd = self.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2


Prediction = Literal["epsilon", "v_prediction", "sample"]


class DiscreteDDPMDenoiser(_Adapter):
    r"""Wrap a discrete-time DDPM network ``model(x_in, t, cond)`` trained on ``alphas_cumprod``.

    Timestep ``t`` has noise level ``sigma_t = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])``
    (VE variables: ``x_ve = x_vp / sqrt(alphas_cumprod[t])``). The network sees
    ``x_in = c_in * x`` with ``c_in = 1 / sqrt(sigma**2 + 1)`` (that is ``x_vp``) and the timestep
    ``c_noise = t(sigma)`` obtained by interpolating ``log sigma`` between the table's entries (rounded
    when ``quantize``). ``D = c_skip * x + c_out * model(...)`` with

    * ``epsilon``: ``c_skip = 1``, ``c_out = -sigma``: ``D = x - sigma * model(...)``;
    * ``v_prediction``: ``c_skip = 1 / (sigma**2 + 1)``, ``c_out = -sigma / sqrt(sigma**2 + 1)``
      (:class:`VDenoiser` with ``sigma_data = 1``);
    * ``sample``: ``c_skip = 0``, ``c_out = 1``: ``D = model(...)``.

    ``sigma`` must lie in the table's range ``[sigma_min, sigma_max]``.

    Args:
        model: the network, called as ``model(x_in [B, C, H, W], t [B] float, cond)``.
        alphas_cumprod: ``[T]`` decreasing values in ``(0, 1]``.
        prediction: what the network predicts.
        quantize: round ``t`` to the nearest integer timestep (as the network was trained).

    Examples:
        >>> import torch
        >>> ac = torch.linspace(0.999, 0.01, 1000)
        >>> D = DiscreteDDPMDenoiser(lambda x, t, c: torch.zeros_like(x), ac)
        >>> round(D.t_to_sigma(torch.tensor([999.0])).item(), 3)
        9.95
    """

    _where = "DiscreteDDPMDenoiser"
    sigmas: Tensor
    log_sigmas: Tensor

    def __init__(self, model: Network, alphas_cumprod: Tensor, *, prediction: Prediction = "epsilon",
                 quantize: bool = False) -> None:
        super().__init__(model, None)
        ac = check_tensor(alphas_cumprod, self._where, "alphas_cumprod")
        if ac.dim() != 1 or ac.numel() < 2:
            raise fail(self._where, f"`alphas_cumprod` has shape {tuple(ac.shape)}, expected [T] with T >= 2.")
        if not bool(((ac > 0) & (ac <= 1)).all()):
            raise fail(self._where, "`alphas_cumprod` must lie in (0, 1].",
                       "pass the scheduler's `alphas_cumprod` (products of 1 - beta_t).")
        if not bool((ac[1:] < ac[:-1]).all()):
            raise fail(self._where, "`alphas_cumprod` must be strictly decreasing in t.")
        if prediction not in ("epsilon", "v_prediction", "sample"):
            raise fail(self._where, f"`prediction` is {prediction!r}, expected 'epsilon', 'v_prediction' "
                       "or 'sample'.")
        self.prediction = prediction
        self.quantize = bool(quantize)
        sigmas = torch.sqrt((1 - ac.double()) / ac.double())  # the table is float64; calls use it in x's dtype
        self._table = {"sigmas": sigmas.detach().cpu(), "log_sigmas": sigmas.detach().log().cpu()}  # the masters
        self.register_buffer("sigmas", sigmas, persistent=False)
        self.register_buffer("log_sigmas", sigmas.log(), persistent=False)
        ends = self.sigmas[[0, -1]].tolist()  # read once here, not on every call
        self._range = (float(ends[0]), float(ends[1]))

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> DiscreteDDPMDenoiser:
        # casting the module (``.half()``, ``.float()``, ``.to(dtype)``) never rounds the table: it moves where
        # ``fn`` sends tensors and stays float64 (float32 on a device without float64, such as MPS)
        before = self.sigmas.device
        for name in self._table:
            self._buffers.pop(name)
        try:
            super()._apply(fn, recurse)
        finally:
            device = fn(torch.empty(0, device=before)).device
            dtype = torch.float32 if device.type == "mps" else torch.float64
            for name, master in self._table.items():
                self._buffers[name] = master.to(device, dtype)
        return self

    @staticmethod
    def _compute_dtype(like: Tensor) -> torch.dtype:
        """The dtype of the table in a call: ``like``'s, at least float32 (half precision rounds timesteps)."""
        return torch.promote_types(like.dtype, torch.float32) if like.is_floating_point() else torch.float32

    @property
    def sigma_min(self) -> float:
        """The smallest noise level of the table."""
        return self._range[0]

    @property
    def sigma_max(self) -> float:
        """The largest noise level of the table."""
        return self._range[1]

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Fractional timestep for ``sigma [N]``: linear interpolation in ``log sigma``.

        Computed in ``sigma``'s dtype (float32 for half precision), from the float64 table.
        """
        dtype = self._compute_dtype(sigma)
        log_s = sigma.log().to(dtype)
        ls = self.log_sigmas.to(sigma.device, dtype)
        idx = torch.searchsorted(ls, log_s.contiguous()).clamp(1, ls.numel() - 1)
        lo, hi = ls[idx - 1], ls[idx]
        w = ((log_s - lo) / (hi - lo)).clamp(0, 1)
        t = (idx - 1).to(w.dtype) + w
        return t.round() if self.quantize else t

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Noise level of fractional timestep ``t [N]``: linear interpolation in ``log sigma``.

        Returned in ``t``'s floating dtype (float32 for integer or half-precision ``t``).
        """
        ls = self.log_sigmas.to(t.device, self._compute_dtype(t))
        t = t.to(ls.dtype).clamp(0, ls.numel() - 1)
        lo = t.floor().long().clamp(max=ls.numel() - 2)
        w = t - lo.to(t.dtype)
        return torch.exp((1 - w) * ls[lo] + w * ls[lo + 1])

    def get_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in)`` of the class docstring for ``sigma [B]``, by ``prediction``."""
        c_in = _vp_scale(sigma, 1.0)
        if self.prediction == "epsilon":
            return torch.ones_like(sigma), -sigma, c_in
        if self.prediction == "v_prediction":
            return 1.0 / (sigma**2 + 1), -sigma / torch.sqrt(sigma**2 + 1), c_in
        return torch.zeros_like(sigma), torch.ones_like(sigma), c_in

    def c_noise(self, sigma: Tensor) -> Tensor:
        """``[B]``: the timestep ``t(sigma)`` (:meth:`sigma_to_t`) in ``sigma``'s dtype."""
        return self.sigma_to_t(sigma).to(sigma.dtype)

    def _check_sigma(self, sigma: Tensor) -> None:
        lo, hi = self.sigma_min, self.sigma_max
        values = sigma.detach()
        check_flag((sigma < lo * (1 - 1e-4)) | (sigma > hi * (1 + 1e-4)), lambda: fail(
            self._where, f"sigma = {values.flatten()[:4].tolist()} lies outside the model's range "
            f"[{lo:.4g}, {hi:.4g}].",
            "clip the sampler's sigma grid to [sigma_min, sigma_max] (the final 0 is fine)."))


class BoundDenoiser(nn.Module):
    """A denoiser with its conditioner set fixed: ``D'(x, sigma) = D(x, sigma, cond)``.

    Built by :func:`bind`. ``cond`` is any :class:`~localscore.conditions.ConditionSet` (objects in
    :class:`~localscore.Conditions`, prompts in :class:`~localscore.adapters.diffusers.PromptConditions`)
    or ``None``. Called with ``cond=None``; a ``cond`` of batch size 1 is broadcast over the images of ``x``
    and a ``cond`` whose batch size divides ``x``'s is tiled (``type(cond).cat``: the batched evaluation of
    compositions stacks copies of ``x``). Declared radii of the inner model are kept.
    """

    def __init__(self, denoiser: Denoiser, cond: ConditionSet | None) -> None:
        super().__init__()
        if not callable(denoiser):
            raise fail("bind", f"`denoiser` is {describe(denoiser)}, expected a callable D(x, sigma, cond).")
        if cond is not None and not isinstance(cond, ConditionSet):
            raise fail("bind", f"`cond` is {describe(cond)}, expected a conditioner set (Conditions, "
                       "PromptConditions, or any localscore.conditions.ConditionSet) or None.")
        self.inner = denoiser
        self.cond = cond

    def conditions_for(self, batch: int, device: torch.device) -> ConditionSet | None:
        """The bound conditioner set tiled to ``batch`` images (``None`` stays ``None``)."""
        c = self.cond
        if c is None:
            return None
        if c.device != device:
            raise fail("BoundDenoiser", f"the bound conditions are on {c.device} but x is on {device}.",
                       "bind conditions on the images' device (`cond.to(device)`).")
        if c.batch_size == batch:
            return c
        if batch % c.batch_size != 0:
            raise fail("BoundDenoiser", f"the bound conditions have B = {c.batch_size} but x has B = "
                       f"{batch}; expected B = {c.batch_size}, 1, or a multiple.",
                       "bind one conditioner set per image.")
        n = batch // c.batch_size
        return type(c).cat([c] * n)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: ConditionSet | None = None) -> Tensor:
        if cond is not None:
            raise fail("BoundDenoiser", "this denoiser already has its conditions bound; got another `cond`.",
                       "call it with cond=None, or bind the conditions you want instead.")
        if trusted(x, sigma):  # called by a sampler or a composition with inputs it has checked
            return call_denoiser(self.inner, x, cast(Tensor, sigma), self.conditions_for(x.shape[0], x.device),
                                 "BoundDenoiser")
        x = check_image(x, "BoundDenoiser")
        s = as_sigma(sigma, x.shape[0], "BoundDenoiser", like=x)
        with checked_call("BoundDenoiser") as scope:
            scope.vouch(x, s)
            return call_denoiser(self.inner, x, s, self.conditions_for(x.shape[0], x.device), "BoundDenoiser")

    def __repr__(self) -> str:
        return f"BoundDenoiser({self.inner!r}, {self.cond!r})"


def bind(denoiser: Denoiser, cond: ConditionSet | None) -> BoundDenoiser:
    """Fix the conditions of a denoiser: ``bind(D, c)(x, sigma) == D(x, sigma, c)``.

    ``c`` is any conditioner set (:class:`~localscore.conditions.ConditionSet`: objects, prompts, ...);
    ``bind(D, None)`` is the unconditional model. Bound denoisers are the components of compositions and
    can be passed to every sampler (with ``cond=None``).

    Examples:
        >>> import torch
        >>> from localscore import Conditions
        >>> D = lambda x, s, c: x * (0 if c is None else c.counts().view(-1, 1, 1, 1))
        >>> Dc = bind(D, Conditions.from_lists([[(1, 1), (2, 2)]]))
        >>> Dc(torch.ones(1, 1, 1, 1), 1.0).item()
        2.0
    """
    return BoundDenoiser(denoiser, cond)


