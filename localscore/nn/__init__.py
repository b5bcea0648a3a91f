"""Local conditional score networks, the global U-Net baseline, and the locality intervention."""

from __future__ import annotations

from ..masks import BoxRule, DiscRule, GaussianRule, MaskRule, box_masks, disc_masks, gaussian_masks, union
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
from .config import LocalNetConfig, UNetConfig
from .encoders import ConditionerEncoder, FourierFeatures, SigmaEmbedding, rotate_features
from .local import LocalConditionalDenoiser, LocalScoreNet
from .unet import GlobalConditionalDenoiser, PooledSetEmbedding, TokenEncoder, UNet, UNetResBlock

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
    "disc_masks",
    "gaussian_masks",
    "make_norm",
    "pool_mask",
    "rotate_features",
    "union",
]
