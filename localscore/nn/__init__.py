"""Local conditional score networks, the global U-Net baseline, and the locality intervention.

* :class:`LocalConditionalDenoiser`: local in pixels and in conditioners by construction; declares integer
  ``receptive_radius`` and ``conditioner_radius`` (Chebyshev pixels) computed from the architecture.
* :class:`GlobalConditionalDenoiser`: the U-Net baseline (downsampling, full cross-attention, pooled token
  embedding, optional token encoder); declares no radii.
* :func:`enforce_locality`: masks a model's cross-attention by a :class:`MaskRule` (reversible, weight
  sharing, with a report); :func:`localize`: the sampling-time form, exactly conditionally local for any
  denoiser.
* Building blocks: :class:`MaskedCrossAttention` (with a null token), :class:`RenderedConditioning`,
  :class:`LocalResBlock`, :class:`ChannelNorm`, :class:`NeighborhoodSelfAttention`, encoders.
* Configs: :class:`LocalNetConfig`, :class:`UNetConfig`, :func:`config_to_dict`, :func:`build_denoiser`.

Masks and mask rules live in :mod:`localscore.masks` (0.1.0 re-exported them here too; those names still
resolve, with a ``DeprecationWarning``, until 0.3). See the "Networks" docs page for the maths and the
guarantees.
"""

from __future__ import annotations

from .._moved import moved_getattr
from .attention import (
    CondContext,
    ConditioningLayer,
    GlobalSelfAttention,
    MaskedCrossAttention,
    NeighborhoodSelfAttention,
    NeighborList,
    RenderedConditioning,
    choose_sparse,
    neighbor_list,
    pool_mask,
)
from .blocks import ChannelNorm, LocalResBlock, make_norm
from .config import LocalNetConfig, UNetConfig, config_from_dict, config_to_dict
from .encoders import ConditionerEncoder, FourierFeatures, SigmaEmbedding, rotate_features
from .intervention import (
    LocalityEnforced,
    LocalityReport,
    LocalizedDenoiser,
    enforce_locality,
    localize,
    register_locality_patch,
    share_weights_copy,
)
from .local import LocalConditionalDenoiser, LocalScoreNet
from .unet import (
    GlobalConditionalDenoiser,
    PooledSetEmbedding,
    TokenEncoder,
    UNet,
    UNetResBlock,
    build_denoiser,
)

__all__ = [
    "ChannelNorm",
    "CondContext",
    "ConditionerEncoder",
    "ConditioningLayer",
    "FourierFeatures",
    "GlobalConditionalDenoiser",
    "GlobalSelfAttention",
    "LocalConditionalDenoiser",
    "LocalNetConfig",
    "LocalResBlock",
    "LocalScoreNet",
    "LocalityEnforced",
    "LocalityReport",
    "LocalizedDenoiser",
    "MaskedCrossAttention",
    "NeighborList",
    "NeighborhoodSelfAttention",
    "PooledSetEmbedding",
    "RenderedConditioning",
    "SigmaEmbedding",
    "TokenEncoder",
    "UNet",
    "UNetConfig",
    "UNetResBlock",
    "build_denoiser",
    "choose_sparse",
    "config_from_dict",
    "config_to_dict",
    "enforce_locality",
    "localize",
    "make_norm",
    "neighbor_list",
    "pool_mask",
    "register_locality_patch",
    "rotate_features",
    "share_weights_copy",
]

# 0.1.0 re-exports of localscore.masks (two names for one thing); they warn until 0.3.
__getattr__ = moved_getattr(__name__, {name: f"localscore.masks.{name}" for name in (
    "BoxRule", "DiscRule", "GaussianRule", "MaskRule", "box_masks", "disc_masks", "gaussian_masks",
    "nearest_conditioner", "union", "voronoi_masks")})
