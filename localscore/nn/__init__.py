"""Local conditional score networks, the global U-Net baseline, and the locality intervention."""

from __future__ import annotations

from ..masks import (
    BoxRule,
    DiscRule,
    GaussianRule,
    MaskRule,
    box_masks,
    disc_masks,
    gaussian_masks,
    nearest_conditioner,
    union,
    voronoi_masks,
)
from .attention import (
    CondContext,
    ConditioningLayer,
    GlobalSelfAttention,
    MaskedCrossAttention,
    NeighborhoodSelfAttention,
    RenderedConditioning,
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
    "BoxRule",
    "ChannelNorm",
    "CondContext",
    "ConditionerEncoder",
    "ConditioningLayer",
    "DiscRule",
    "FourierFeatures",
    "GaussianRule",
    "GlobalConditionalDenoiser",
    "GlobalSelfAttention",
    "LocalConditionalDenoiser",
    "LocalNetConfig",
    "LocalResBlock",
    "LocalScoreNet",
    "LocalityEnforced",
    "LocalityReport",
    "LocalizedDenoiser",
    "MaskRule",
    "MaskedCrossAttention",
    "NeighborhoodSelfAttention",
    "PooledSetEmbedding",
    "RenderedConditioning",
    "SigmaEmbedding",
    "TokenEncoder",
    "UNet",
    "UNetConfig",
    "UNetResBlock",
    "box_masks",
    "build_denoiser",
    "config_from_dict",
    "config_to_dict",
    "disc_masks",
    "enforce_locality",
    "gaussian_masks",
    "localize",
    "make_norm",
    "nearest_conditioner",
    "pool_mask",
    "register_locality_patch",
    "rotate_features",
    "share_weights_copy",
    "union",
    "voronoi_masks",
]
