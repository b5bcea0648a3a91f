r"""The model call: a diffusers UNet or transformer denoiser and its scheduler as a localscore denoiser.

Variables. diffusers' latents are variance preserving, ``x_vp = sqrt(a) x_0 + sqrt(1 - a) eps`` with
``a = alphas_cumprod[t]``; localscore's are variance exploding, ``x = x_0 + sigma eps`` with
``sigma = sqrt((1 - a) / a)``, so ``x = x_vp * sqrt(1 + sigma**2)`` (:func:`vp_to_ve`, :func:`ve_to_vp`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from ..._checks import as_sigma, check_image
from ..._errors import describe, fail
from ..._moved import warn_moved
from ...conditions import ConditionSet
from ...denoisers import BoundDenoiser, Denoiser, DiscreteDDPMDenoiser, Prediction, bind
from .prompts import PromptConditions, _check_prompt
from .regional import REGIONS_KWARG, _has_regional, _RegionSpec

if TYPE_CHECKING:
    from ...compose import Composition

__all__ = ["DiffusersDenoiser", "concept_composition", "ve_to_vp", "vp_to_ve"]


def _require_diffusers(where: str) -> Any:
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise fail(where, "this needs the optional dependency `diffusers`, which is not installed.",
                   'install it with `pip install "localscore[diffusers]"` (or `pip install diffusers`).') from e
    return diffusers


def vp_to_ve(latents: Tensor, sigma: Tensor | float) -> Tensor:
    r"""diffusers' variance-preserving latents to localscore's variables: ``x = x_vp * sqrt(1 + sigma**2)``.

    Args:
        latents: ``[B, C, H, W]`` latents at noise level ``sigma``.
        sigma: ``[B]`` or a float, ``sigma = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])``.

    Examples:
        >>> import torch
        >>> round(vp_to_ve(torch.ones(1, 1, 1, 1), 1.0).item(), 4)      # sqrt(2)
        1.4142
    """
    x = check_image(latents, "vp_to_ve", "latents")
    s = as_sigma(sigma, x.shape[0], "vp_to_ve", like=x, allow_zero=True)
    return x * torch.sqrt(1 + s.view(-1, 1, 1, 1) ** 2)


def ve_to_vp(x: Tensor, sigma: Tensor | float) -> Tensor:
    r"""The inverse of :func:`vp_to_ve`: ``x_vp = x / sqrt(1 + sigma**2)``.

    Examples:
        >>> import torch
        >>> x = torch.randn(2, 3, 4, 4)
        >>> torch.allclose(ve_to_vp(vp_to_ve(x, 3.0), 3.0), x)
        True
    """
    x = check_image(x, "ve_to_vp")
    s = as_sigma(sigma, x.shape[0], "ve_to_vp", like=x, allow_zero=True)
    return x / torch.sqrt(1 + s.view(-1, 1, 1, 1) ** 2)


def _alphas_cumprod(scheduler: Any, where: str) -> Tensor:
    if isinstance(scheduler, torch.Tensor):
        return scheduler
    ac = getattr(scheduler, "alphas_cumprod", None)
    if isinstance(ac, torch.Tensor):
        return ac
    if isinstance(scheduler, Mapping):
        diffusers = _require_diffusers(where)
        return cast(Tensor, diffusers.DDPMScheduler.from_config(dict(scheduler)).alphas_cumprod)
    raise fail(where, f"argument `scheduler` is {describe(scheduler)}, expected a diffusers scheduler with "
               "`alphas_cumprod`, its config dict, or an `alphas_cumprod` tensor [T].",
               "pass `pipe.scheduler` (DDIM, DDPM, Euler, DPM-Solver, ...); flow-matching schedulers "
               "(SD3, Flux) are not variance-preserving models and are not supported.")


def _prediction_type(scheduler: Any, given: str | None, where: str) -> str:
    if given is not None:
        pred = given
    else:
        config = getattr(scheduler, "config", scheduler if isinstance(scheduler, Mapping) else None)
        pred = config.get("prediction_type", "epsilon") if isinstance(config, Mapping) else "epsilon"
    if pred not in ("epsilon", "v_prediction", "sample"):
        raise fail(where, f"prediction type {pred!r} is not supported; expected 'epsilon', 'v_prediction' or "
                   "'sample'.", "pass `prediction_type=` explicitly if the scheduler config is wrong.")
    return str(pred)


class _ModelCall(nn.Module):
    """``(x_in, t, prompt) -> raw model output`` for diffusers' UNet / transformer call conventions."""

    casts_inputs = True  # the inputs go to the model's dtype and the output back (fp16 UNets, float32 sampling)

    def __init__(self, model: nn.Module, where: str) -> None:
        super().__init__()
        if not callable(model):
            raise fail(where, f"argument `unet` is {describe(model)}, expected a diffusers model.")
        self.model = model
        params = inspect.signature(model.forward if isinstance(model, nn.Module) else model).parameters
        if "sample" in params:
            self.style = "unet"
        elif "hidden_states" in params and "timestep" in params:
            self.style = "transformer"
        else:
            raise fail(where, f"the model's forward takes {list(params)}; expected diffusers' UNet convention "
                       "(sample, timestep, encoder_hidden_states, ...) or the transformer one "
                       "(hidden_states, encoder_hidden_states, timestep, ...).",
                       "wrap other models with localscore.denoisers.DiscreteDDPMDenoiser directly.")
        self.where = where

    def _dtype(self, like: Tensor) -> torch.dtype:
        p = next(iter(self.model.parameters()), None) if isinstance(self.model, nn.Module) else None
        return p.dtype if p is not None and p.is_floating_point() else like.dtype

    def forward(self, x_in: Tensor, t: Tensor, cond: PromptConditions) -> Tensor:
        dtype = self._dtype(x_in)
        kwargs: dict[str, Any] = {"encoder_hidden_states": cond.effective_embeds().to(dtype), "return_dict": False}
        if cond.added_cond_kwargs:
            kwargs["added_cond_kwargs"] = {k: v.to(dtype) if v.is_floating_point() else v
                                           for k, v in cond.added_cond_kwargs.items()}
        if cond.attention_mask is not None:
            kwargs["encoder_attention_mask"] = cond.attention_mask
        if cond.regions is not None:
            if not _has_regional(self.model):
                raise fail(self.where, "the prompt carries `regions` but the model has no regional attention "
                           "processor installed, so the regions would be ignored.",
                           "install it first: `with regional_attention(unet): ...` (or "
                           "`install_regional_attention(unet)`), or drop the regions with `with_regions(None)`.")
            regions = cond.regions
            if tuple(regions.shape[-2:]) != tuple(x_in.shape[-2:]):
                raise fail(self.where, f"the prompt's regions are {tuple(regions.shape[-2:])} pixels but the latents "
                           f"are {tuple(x_in.shape[-2:])}; expected the latent resolution.",
                           "build region masks at the latent size (image size / VAE factor, e.g. / 8).")
            kwargs["cross_attention_kwargs"] = {REGIONS_KWARG: _RegionSpec(cond.groups, regions, x_in.shape[-2:])}
        if self.style == "unet":
            out = self.model(x_in.to(dtype), t.to(dtype), **kwargs)
        else:
            out = self.model(hidden_states=x_in.to(dtype), timestep=t.to(dtype), **kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        if not isinstance(out, torch.Tensor):
            raise fail(self.where, f"the model returned {describe(out)}, expected a tensor.")
        C = x_in.shape[1]
        if out.dim() == 4 and out.shape[1] == 2 * C:  # learned variance: the first half is the prediction
            out = out[:, :C]
        return out.to(x_in.dtype)


class DiffusersDenoiser(DiscreteDDPMDenoiser):
    r"""A diffusers UNet (or transformer denoiser) and its scheduler as a localscore denoiser.

    ``D(x [B, C, H, W], sigma [B], prompt) -> x0_hat [B, C, H, W]`` in localscore's variance-exploding
    variables, by :class:`~localscore.denoisers.DiscreteDDPMDenoiser` on the scheduler's
    ``alphas_cumprod`` ``a_t``:

    * ``sigma_t = sqrt((1 - a_t) / a_t)``; the timestep ``t(sigma)`` interpolates ``log sigma_t``;
    * the model sees ``x_in = x / sqrt(sigma**2 + 1)`` (diffusers' latents) and ``t(sigma)``;
    * ``epsilon``: ``D = x - sigma * out``; ``v_prediction``:
      ``D = x / (sigma**2 + 1) - sigma / sqrt(sigma**2 + 1) * out``; ``sample``: ``D = out``.

    The prompt's :meth:`~PromptConditions.effective_embeds` go in as ``encoder_hidden_states``, its
    ``added_cond_kwargs`` (SDXL's pooled text embeddings and size ids) and ``attention_mask`` as given,
    and its ``regions`` (if any) to the regional attention processor. A model that predicts a learned
    variance too (``2 C`` output channels) is read from its first ``C`` channels. The model runs in its
    own dtype (e.g. float16); the result is returned in ``x``'s dtype.

    Args:
        unet: a ``UNet2DConditionModel`` (called as ``unet(sample, timestep, encoder_hidden_states=...)``)
            or a transformer denoiser called as ``model(hidden_states=..., timestep=...,
            encoder_hidden_states=...)``.
        scheduler: the pipeline's scheduler (any with ``alphas_cumprod``), its config dict, or an
            ``alphas_cumprod`` tensor ``[T]``.
        prediction_type: overrides ``scheduler.config.prediction_type``.
        null_prompt: the prompt used when ``cond is None`` (for instance the empty prompt); without it,
            ``cond`` is required.
        quantize: round timesteps to integers (as the model was trained); default fractional.

    Examples:
        >>> import torch
        >>> class Eps(torch.nn.Module):            # a stand-in with diffusers' UNet signature
        ...     def forward(self, sample, timestep, encoder_hidden_states, return_dict=False):
        ...         return (torch.zeros_like(sample),)
        >>> ac = torch.linspace(0.999, 0.01, 1000)
        >>> D = DiffusersDenoiser(Eps(), ac)
        >>> p = PromptConditions(torch.zeros(1, 4, 8), [[1]])
        >>> x = torch.ones(1, 4, 2, 2)
        >>> torch.equal(D(x, 1.0, p), x)          # predicts no noise, so D = x
        True
    """

    _where = "DiffusersDenoiser"

    def __init__(self, unet: nn.Module, scheduler: Any, *, prediction_type: str | None = None,
                 null_prompt: PromptConditions | None = None, quantize: bool = False) -> None:
        where = self._where
        if not isinstance(quantize, bool):
            raise fail(where, f"`quantize` is {describe(quantize)}, expected True or False.")
        if null_prompt is not None and not isinstance(null_prompt, PromptConditions):
            raise fail(where, f"`null_prompt` is {describe(null_prompt)}, expected a PromptConditions (the empty "
                       "prompt's embeddings) or None.", "wrap the embeddings: PromptConditions(embeds, []).")
        ac = _alphas_cumprod(scheduler, where)
        if isinstance(ac, torch.Tensor) and ac.numel() and float(ac.min()) <= 0:
            raise fail(where, "the scheduler's alphas_cumprod reaches 0 (infinite noise at the last timestep, "
                       "e.g. rescale_betas_zero_snr=True); localscore's variables need a finite sigma_max.",
                       "use the scheduler without zero-SNR rescaling, or pass alphas_cumprod[:-1] explicitly.")
        pred = _prediction_type(scheduler, prediction_type, where)
        super().__init__(_ModelCall(unet, where), ac.detach().cpu(), prediction=cast(Prediction, pred),
                         quantize=quantize)
        if null_prompt is not None:
            _check_prompt(null_prompt, where, "null_prompt")
        self.null_prompt = null_prompt

    @property
    def model(self) -> nn.Module:
        """The wrapped diffusers model."""
        return cast(_ModelCall, self.inner).model

    @classmethod
    def from_pretrained(cls, path: str, *, subfolder: str = "unet", scheduler_subfolder: str = "scheduler",
                        torch_dtype: torch.dtype | None = None, **kwargs: Any) -> DiffusersDenoiser:
        """Load ``UNet2DConditionModel`` and the scheduler config from a local pipeline folder.

        Only ``from_pretrained(path)`` is called: pass a local path (for example an SDXL checkpoint
        folder) to stay offline. Extra ``kwargs`` go to the constructor.
        """
        diffusers = _require_diffusers("DiffusersDenoiser.from_pretrained")
        unet = diffusers.UNet2DConditionModel.from_pretrained(path, subfolder=subfolder, torch_dtype=torch_dtype)
        sched = diffusers.DDPMScheduler.from_pretrained(path, subfolder=scheduler_subfolder)
        return cls(unet, sched, **kwargs)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: ConditionSet | None = None) -> Tensor:
        x = check_image(x, self._where)
        config = getattr(self.model, "config", None)
        want = config.get("in_channels") if isinstance(config, Mapping) else getattr(config, "in_channels", None)
        if isinstance(want, int) and not isinstance(want, bool) and x.shape[1] != want:
            raise fail(self._where, f"`x` has {x.shape[1]} channels (shape {tuple(x.shape)}), but the model takes "
                       f"in_channels = {want}; expected latents [B, {want}, H, W].",
                       "pass the VAE latents of the images (not the images), with the model's channel count.")
        if cond is None:
            if self.null_prompt is None:
                raise fail(self._where, "`cond` is None and no `null_prompt` was given; a text-conditioned model "
                           "needs embeddings.",
                           "pass a PromptConditions, or build the denoiser with null_prompt= (the empty "
                           "prompt's embeddings) for unconditional calls.")
            cond = self.null_prompt
        cond = _check_prompt(cond, self._where).for_batch(x.shape[0], self._where)
        if cond.device != x.device:
            raise fail(self._where, f"the prompt is on {cond.device} but x is on {x.device}.",
                       "move it with `prompt.to(x.device)`.")
        return super().forward(x, sigma, cast(Any, cond))


class PromptBound(BoundDenoiser):
    """Deprecated: :class:`localscore.denoisers.BoundDenoiser` (built by :func:`localscore.bind`), which binds
    prompts as it binds any conditioner set. ``prompt`` is its ``cond``."""

    def __init__(self, denoiser: Denoiser, prompt: PromptConditions, *, _warn: bool = True) -> None:
        if _warn:
            warn_moved("localscore.adapters.diffusers.PromptBound",
                       "localscore.denoisers.BoundDenoiser (localscore.bind)")
        super().__init__(denoiser, _check_prompt(prompt, "bind_prompt", "prompt"))

    @property
    def prompt(self) -> PromptConditions:
        """The bound prompt (``cond``)."""
        return cast(PromptConditions, self.cond)


def bind_prompt(denoiser: Denoiser, prompt: PromptConditions) -> PromptBound:
    """Deprecated: :func:`localscore.bind` (``bind(D, p)(x, sigma) == D(x, sigma, p)``)."""
    warn_moved("localscore.adapters.diffusers.bind_prompt", "localscore.bind")
    return PromptBound(denoiser, prompt, _warn=False)


def concept_composition(denoiser: Denoiser, prompt: PromptConditions, weights: Any = None,
                        **options: Any) -> Composition:
    r"""Projective composition of a prompt's concepts, through :func:`localscore.compose.projective`.

    ``D_hat(x, sigma) = D(x, sigma, none) + sum_g w_g * (D(x, sigma, p_g) - D(x, sigma, none))``

    with ``none = prompt.drop_all()`` (context tokens only) and ``p_g = prompt.select(g)``, bound with
    :func:`localscore.bind`: it is ``compose.projective_from(denoiser, prompt, weights, ...)``, so the
    ``batched`` strategy evaluates the background and every concept in one model call. It is
    exact when the concepts' conditionals factorize over disjoint regions (CPC); with regional
    attention (``prompt.regions``) each component acts only through its region.

    Args:
        denoiser: ``D(x, sigma, prompt)``, e.g. a :class:`DiffusersDenoiser`.
        prompt: the concepts to compose (``G`` groups).
        weights: per-concept weights, as :func:`localscore.compose.projective` takes them.
        options: passed to :func:`localscore.compose.projective` (``strategy``, ``max_batch``, ...).

    Returns:
        A denoiser ``D_hat(x [B, C, H, W], sigma) -> [B, C, H, W]`` (prompt bound).
    """
    from ... import compose

    prompt = _check_prompt(prompt, "concept_composition", "prompt")
    if prompt.num_groups == 0:
        raise fail("concept_composition", "the prompt has no token group (G = 0): there is nothing to compose.",
                   "group the tokens of each concept when building PromptConditions.")
    components = [bind(denoiser, p) for p in prompt.singletons()]
    return compose.projective(bind(denoiser, prompt.drop_all()), components, weights, **options)

