r"""diffusers models and schedulers in the localscore protocol, and the tools to analyse them.

The pieces, in the order an analysis uses them, by module:

* :mod:`~localscore.adapters.diffusers.prompts`: :class:`PromptConditions`, a batch of prompts as a
  conditioner set. The conditioners are *token groups* (concepts, e.g. the tokens of "red hat");
  ``select`` / ``ablate`` / ``drop_all`` / ``singletons`` / ``cat`` / ``pad_to`` are the slot and batch
  operations of :class:`~localscore.Conditions`, and an absent group's tokens are replaced by the null
  (empty-prompt) embeddings at the same positions.
* :mod:`~localscore.adapters.diffusers.denoiser`: :class:`DiffusersDenoiser`, a ``UNet2DConditionModel``
  (or a transformer denoiser with the same call convention) plus its scheduler's ``alphas_cumprod`` as a
  denoiser ``D(x, sigma, prompt)`` in the EDM (variance-exploding) variables of localscore (a
  :class:`~localscore.denoisers.DiscreteDDPMDenoiser`, which does the maths); :func:`vp_to_ve` /
  :func:`ve_to_vp`; :func:`concept_composition`, the projective composition of a prompt's concepts
  through :mod:`localscore.compose`.
* :mod:`~localscore.adapters.diffusers.schedulers`: :func:`scheduler_sigmas`, :func:`scheduler_start`
  and :func:`sample_with_scheduler`, to sample any localscore denoiser with a diffusers scheduler or a
  diffusers model with localscore's samplers.
* :mod:`~localscore.adapters.diffusers.regional`: :func:`install_regional_attention`,
  :func:`regional_attention` and :class:`RegionalAttnProcessor`: the intervention. Cross-attention is
  masked so that each token group reaches only its region (``PromptConditions.regions``).
* :mod:`~localscore.adapters.diffusers.features`: :class:`FeatureRecorder`, :func:`list_blocks`,
  :class:`FeatureMap` (forward hooks on named blocks), :func:`concept_feature_means` /
  :func:`concept_orthogonality` (the feature-orthogonality test) and :func:`vae_decoder`. The
  context manager that forces the math attention kernel (for forward-mode Jacobians) is
  :func:`localscore.metrics.math_attention`.
* :mod:`~localscore.adapters.diffusers.influence`: :func:`concept_locality`, the locality index of
  per-concept influence maps. The maps are :func:`localscore.metrics.ablation_influence` and
  :func:`localscore.metrics.gradient_influence` (squared norms), which take a prompt as they take any
  conditioner set.

A prompt is bound like any conditioner set, with :func:`localscore.bind` (a
:class:`~localscore.denoisers.BoundDenoiser`), so samplers and :mod:`localscore.compose` treat it as they
treat objects.

Deprecated since 0.1.0, removed in 0.3 (each warns, naming its replacement): ``bind_prompt`` and
``PromptBound`` (:func:`localscore.bind`, :class:`~localscore.denoisers.BoundDenoiser`),
``ablation_influence`` and ``gradient_influence`` of this package (the square roots of the metrics' maps),
``resize_regions`` (:func:`localscore.nn.pool_mask`), ``PromptConditions.drop`` (``ablate``) and
``math_attention`` of this package and of ``features`` (:func:`localscore.metrics.math_attention`).

Nothing here imports diffusers at import time: the model and the scheduler are used through their
public attributes, and only :meth:`DiffusersDenoiser.from_pretrained` and scheduler configs given as
plain dicts import the library (install it with ``pip install "localscore[diffusers]"``).
"""

from __future__ import annotations

from ..._moved import moved_getattr
from .denoiser import DiffusersDenoiser, concept_composition, ve_to_vp, vp_to_ve
from .denoiser import PromptBound as PromptBound  # deprecated, warns when built
from .denoiser import bind_prompt as bind_prompt  # deprecated, warns when called
from .features import (
    FeatureMap,
    FeatureRecorder,
    concept_feature_means,
    concept_orthogonality,
    list_blocks,
    vae_decoder,
)
from .influence import ablation_influence as ablation_influence  # deprecated, warns when called
from .influence import concept_locality
from .influence import gradient_influence as gradient_influence  # deprecated, warns when called
from .prompts import PromptConditions
from .regional import REGIONS_KWARG as REGIONS_KWARG
from .regional import RegionalAttention, RegionalAttnProcessor, install_regional_attention, regional_attention
from .regional import resize_regions as resize_regions  # deprecated, warns when called
from .schedulers import sample_with_scheduler, scheduler_sigmas, scheduler_start

__all__ = [
    "DiffusersDenoiser",
    "FeatureMap",
    "FeatureRecorder",
    "PromptConditions",
    "RegionalAttention",
    "RegionalAttnProcessor",
    "concept_composition",
    "concept_feature_means",
    "concept_locality",
    "concept_orthogonality",
    "install_regional_attention",
    "list_blocks",
    "regional_attention",
    "sample_with_scheduler",
    "scheduler_sigmas",
    "scheduler_start",
    "vae_decoder",
    "ve_to_vp",
    "vp_to_ve",
]


# 0.1.0 re-export of localscore.metrics.math_attention (two names for one thing); it warns until 0.3.
__getattr__ = moved_getattr(__name__, {"math_attention": "localscore.metrics.math_attention"})
